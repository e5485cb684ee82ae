package errcatalog

// platformEntries are ARM platform codes (the resource manager's own, and the Microsoft.Sql ones for servers and
// databases) that fogo needs and the failover group reference does not list.
var platformEntries = []Entry{
	{Code: "AuthenticationFailed", Status: 401, Template: "Authentication failed. The 'Authorization' header is missing or malformed."},
	{Code: "InvalidAuthenticationToken", Status: 401, Template: "The access token is invalid."},
	{Code: "MissingApiVersionParameter", Status: 400, Template: "The api-version query parameter (?api-version=) is required for all requests."},
	{Code: "InvalidApiVersionParameter", Status: 400, Template: "The api-version '{0}' is invalid. The supported versions are '{1}'."},
	{Code: "InvalidRequestContent", Status: 400, Template: "The request content was invalid and could not be deserialized: '{0}'."},
	{Code: "InvalidSubscriptionId", Status: 400, Template: "The provided subscription identifier '{0}' is malformed or invalid."},
	{Code: "InvalidResourceGroupName", Status: 400, Template: "Resource group name '{0}' is invalid."},
	{Code: "RegionDoesNotAllowProvisioning", Status: 400, Template: "Location '{0}' is not accepting creation of new Windows Azure SQL Database servers at this time."},
	{Code: "LocationRequired", Status: 400, Template: "The location property is required for this definition."},
	{Code: "InvalidParameterValue", Status: 400, Template: "Invalid value given for parameter {0}. Specify a valid parameter value."},
	{Code: "InvalidLoginName", Status: 400, Template: "The login name '{0}' is not valid: it must start with a letter or underscore, contain only letters, digits and underscores, be at most 63 characters, and not be a reserved name."},
	{Code: "PasswordNotComplex", Status: 400, Template: "Password validation failed. The password does not meet policy requirements because it is not complex enough."},
	{Code: "InvalidDatabaseName", Status: 400, Template: "The database name '{0}' is not valid."},
	{Code: "ParentResourceNotFound", Status: 404, Template: "Can not perform requested operation on nested resource. Parent resource '{0}' not found."},
	{Code: "NameAlreadyExists", Status: 409, Template: "The name '{0}' already exists. Choose a different name."},
	{Code: "ConflictingDatabaseOperation", Status: 409, Template: "There is an operation in progress on the database '{0}'."},
	{Code: "UnsupportedHttpMethod", Status: 405, Template: "The HTTP method '{0}' is not supported for this resource."},
	{Code: "InternalServerError", Status: 500, Template: "An unexpected error occurred while processing the request."},
}
