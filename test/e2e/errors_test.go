package e2e

import (
	"net/http"
	"strings"
	"testing"

	"github.com/fogo-db/fogo/internal/app"
)

// TestErrorCatalogue checks, case by case, the exact ARM error code and HTTP status fogo answers with. Every
// code the table of docs/error-codes.md claims is exercised here, in TestBusyAndRollback or in
// TestFailoverPreconditionsAndLimits.
func TestErrorCatalogue(t *testing.T) {
	f := startFogo(t, func(o *app.Options) { o.MinGraceMinutes = 60 })
	f.createServer("err-east", "eastus")
	f.createServer("err-west", "westus")
	f.createServer("err-east2", "eastus")
	f.createServer("err-north", "northeurope")
	f.createDB("err-east", "db1", "eastus")
	f.createDB("err-east", "db2", "eastus")
	f.createDB("err-west", "wdb", "westus")
	f.mustSucceed(f.createGroup("err-east", "err-west", "fg-ok", "db1"), 201)

	partner := func(ids ...string) []any {
		var out []any
		for _, id := range ids {
			out = append(out, map[string]any{"id": id})
		}
		return out
	}
	fg := func(props map[string]any) map[string]any {
		base := map[string]any{
			"readWriteEndpoint": map[string]any{"failoverPolicy": "Manual"},
			"partnerServers":    partner(serverPath("err-west")),
		}
		for k, v := range props {
			if v == nil {
				delete(base, k)
				continue
			}
			base[k] = v
		}
		return map[string]any{"properties": base}
	}
	cases := []struct {
		name         string
		method, path string
		token        string
		body         any
		status       int
		code         string
	}{
		{"no token", "GET", serverPath("err-east"), "-", nil, 401, "AuthenticationFailed"},
		{"bad token", "GET", serverPath("err-east"), "nope", nil, 401, "InvalidAuthenticationToken"},
		{"no api-version", "GET", serverPath("err-east") + "?x=1&api-version=", "", nil, 400, "MissingApiVersionParameter"},
		{"unknown api-version", "GET", serverPath("err-east") + "?api-version=1999-01-01", "", nil, 400, "InvalidApiVersionParameter"},
		{"missing server", "GET", serverPath("nosuch"), "", nil, 404, "ResourceNotFound"},
		{"missing group", "GET", fgPath("err-east", "nosuch"), "", nil, 404, "ResourceNotFound"},
		{"malformed json", "PUT", fgPath("err-east", "fg2"), "", `{"properties": {`, 400, "InvalidRequestContent"},
		{"wrong type", "PUT", fgPath("err-east", "fg2"), "", fg(map[string]any{"readWriteEndpoint": map[string]any{"failoverPolicy": "Automatic", "failoverWithDataLossGracePeriodMinutes": "abc"}}), 400, "InvalidRequestContent"},
		{"empty body", "PUT", fgPath("err-east", "fg2"), "", `{}`, 400, "FailoverGroupCreateOrUpdateRequestInvalid"},
		{"no readWriteEndpoint", "PUT", fgPath("err-east", "fg2"), "", fg(map[string]any{"readWriteEndpoint": nil}), 400, "FailoverGroupCreateOrUpdateRequestInvalidReadWriteEndpoint"},
		{"no policy", "PUT", fgPath("err-east", "fg2"), "", fg(map[string]any{"readWriteEndpoint": map[string]any{}}), 400, "FailoverGroupCreateOrUpdateRequestInvalidReadWriteFailoverPolicy"},
		{"automatic without grace", "PUT", fgPath("err-east", "fg2"), "", fg(map[string]any{"readWriteEndpoint": map[string]any{"failoverPolicy": "Automatic"}}), 400, "FailoverGroupCreateOrUpdateRequestInvalidReadWriteEndpointFields"},
		{"manual with grace", "PUT", fgPath("err-east", "fg2"), "", fg(map[string]any{"readWriteEndpoint": map[string]any{"failoverPolicy": "Manual", "failoverWithDataLossGracePeriodMinutes": 60}}), 400, "FailoverGroupCreateOrUpdateRequestInvalidReadWriteEndpointFieldsForManualPolicy"},
		{"negative grace", "PUT", fgPath("err-east", "fg2"), "", fg(map[string]any{"readWriteEndpoint": map[string]any{"failoverPolicy": "Automatic", "failoverWithDataLossGracePeriodMinutes": -5}}), 400, "FailoverGroupCreateOrUpdateRequestNegativeGracePeriodValues"},
		{"grace below minimum", "PUT", fgPath("err-east", "fg2"), "", fg(map[string]any{"readWriteEndpoint": map[string]any{"failoverPolicy": "Automatic", "failoverWithDataLossGracePeriodMinutes": 30}}), 400, "FailoverGroupCreateOrUpdateRequestLessThanMinimumGracePeriodValues"},
		{"no partner", "PUT", fgPath("err-east", "fg2"), "", fg(map[string]any{"partnerServers": []any{}}), 400, "FailoverGroupCreateOrUpdateRequestInvalidPartner"},
		{"two partners", "PUT", fgPath("err-east", "fg2"), "", fg(map[string]any{"partnerServers": partner(serverPath("err-west"), serverPath("err-north"))}), 400, "FailoverGroupCreateOrUpdateRequestUnsupportedPartnerCount"},
		{"partner is primary", "PUT", fgPath("err-east", "fg2"), "", fg(map[string]any{"partnerServers": partner(serverPath("err-east"))}), 400, "FailoverGroupCreateOrUpdateRequestDuplicatePartner"},
		{"partner other subscription", "PUT", fgPath("err-east", "fg2"), "", fg(map[string]any{"partnerServers": partner(strings.Replace(serverPath("err-west"), sub, "99999999-1111-2222-3333-444444444444", 1))}), 400, "FailoverGroupPartnerServerFromDifferentSubscription"},
		{"partner missing", "PUT", fgPath("err-east", "fg2"), "", fg(map[string]any{"partnerServers": partner(serverPath("nosuch"))}), 400, "ServerNotFound"},
		{"same region partner", "PUT", fgPath("err-east", "fg2"), "", fg(map[string]any{"partnerServers": partner(serverPath("err-east2"))}), 400, "InvalidFailoverGroupRegion"},
		{"malformed database id", "PUT", fgPath("err-east", "fg2"), "", fg(map[string]any{"databases": []any{"not-an-id"}}), 400, "FailoverGroupCreateOrUpdateRequestInvalidDatabases"},
		{"database not on primary", "PUT", fgPath("err-east", "fg2"), "", fg(map[string]any{"databases": []any{dbPath("err-west", "wdb")}}), 400, "FailoverGroupCreateOrUpdateRequestInvalidDatabaseServer"},
		{"database missing", "PUT", fgPath("err-east", "fg2"), "", fg(map[string]any{"databases": []any{dbPath("err-east", "nosuch")}}), 400, "FailoverGroupCreateOrUpdateRequestInvalidDatabaseServer"},
		{"database in other group", "PUT", fgPath("err-east", "fg2"), "", fg(map[string]any{"databases": []any{dbPath("err-east", "db1")}}), 409, "DatabaseBelongsToOtherFailoverGroup"},
		{"read-only property", "PUT", fgPath("err-east", "fg2"), "", fg(map[string]any{"replicationRole": "Secondary"}), 400, "FailoverGroupCreateOrUpdateRequestReadOnlyPropertyModified"},
		{"group exists elsewhere", "PUT", fgPath("err-north", "fg-ok"), "", fg(map[string]any{"partnerServers": partner(serverPath("err-east"))}), 409, "FailoverGroupAlreadyExists"},
		{"update on secondary", "PUT", fgPath("err-west", "fg-ok"), "", fg(map[string]any{"partnerServers": partner(serverPath("err-east"))}), 400, "FailoverGroupUpdateOrDeleteRequestOnSecondary"},
		{"patch negative grace", "PATCH", fgPath("err-east", "fg-ok"), "", `{"properties":{"readWriteEndpoint":{"failoverPolicy":"Automatic","failoverWithDataLossGracePeriodMinutes":-60}}}`, 400, "FailoverGroupCreateOrUpdateRequestNegativeGracePeriodValues"},
		{"patch manual with grace", "PATCH", fgPath("err-east", "fg-ok"), "", `{"properties":{"readWriteEndpoint":{"failoverPolicy":"Manual","failoverWithDataLossGracePeriodMinutes":60}}}`, 400, "FailoverGroupCreateOrUpdateRequestInvalidReadWriteEndpointFieldsForManualPolicy"},
		{"patch on secondary", "PATCH", fgPath("err-west", "fg-ok"), "", `{"properties":{}}`, 400, "FailoverGroupUpdateOrDeleteRequestOnSecondary"},
		{"delete on secondary", "DELETE", fgPath("err-west", "fg-ok"), "", nil, 400, "FailoverGroupUpdateOrDeleteRequestOnSecondary"},
		{"failover on primary", "POST", fgPath("err-east", "fg-ok") + "/failover", "", nil, 400, "FailoverGroupFailoverRequestOnPrimary"},
		{"failover missing group", "POST", fgPath("err-west", "nosuch") + "/failover", "", nil, 400, "FailoverGroupDoesNotExist"},
		{"invalid group name", "PUT", fgPath("err-east", "Bad_Name!"), "", fg(nil), 409, "InvalidFailoverGroupName"},
		{"invalid server name", "PUT", serverPath("Bad_Server"), "", map[string]any{"location": "eastus", "properties": map[string]any{"administratorLogin": login, "administratorLoginPassword": password}}, 400, "InvalidServerName"},
		{"reserved database name", "PUT", dbPath("err-east", "master"), "", map[string]any{"location": "eastus"}, 400, "CannotUseReservedDatabaseName"},
		{"database on missing server", "PUT", dbPath("nosuch", "x"), "", map[string]any{"location": "eastus"}, 404, "ParentResourceNotFound"},
		{"delete database in group", "DELETE", dbPath("err-east", "db1"), "", nil, 409, "InvalidDatabaseStateForOperation"},
		{"delete server in group", "DELETE", serverPath("err-west"), "", nil, 409, "ConflictingServerOperation"},
		{"server name taken in other rg", "PUT", strings.Replace(serverPath("err-east"), "/"+rg+"/", "/other-rg/", 1), "", map[string]any{"location": "eastus", "properties": map[string]any{"administratorLogin": login, "administratorLoginPassword": password}}, 409, "NameAlreadyExists"},
		{"weak password", "PUT", serverPath("weak-srv"), "", map[string]any{"location": "eastus", "properties": map[string]any{"administratorLogin": login, "administratorLoginPassword": "password"}}, 400, "PasswordNotComplex"},
		{"no location", "PUT", serverPath("noloc-srv"), "", map[string]any{"properties": map[string]any{"administratorLogin": login, "administratorLoginPassword": password}}, 400, "LocationRequired"},
		{"invalid subscription", "GET", "/subscriptions/not-a-guid/resourceGroups/rg/providers/Microsoft.Sql/servers/x", "", nil, 400, "InvalidSubscriptionId"},
		{"invalid login name", "PUT", serverPath("login-srv"), "", map[string]any{"location": "eastus", "properties": map[string]any{"administratorLogin": "admin", "administratorLoginPassword": password}}, 400, "InvalidLoginName"},
		{"invalid database name", "PUT", dbPath("err-east", "bad*db"), "", map[string]any{"location": "eastus"}, 400, "InvalidDatabaseName"},
		{"control character in a name", "GET", serverPath("bad%01name"), "", nil, 400, "InvalidIdentifier"},
		{"invalid resource group", "GET", "/subscriptions/" + sub + "/resourceGroups/bad*rg/providers/Microsoft.Sql/servers", "", nil, 400, "InvalidResourceGroupName"},
		{"unknown operation", "GET", "/subscriptions/" + sub + "/resourceGroups/" + rg + "/providers/Microsoft.Sql/locations/eastus/failoverGroupAzureAsyncOperation/00000000-0000-0000-0000-000000000000", "", nil, 404, "OperationIdNotFound"},
		{"unsupported method", "POST", serverPath("err-east"), "", nil, 405, "UnsupportedHttpMethod"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			tok := f.tok
			switch c.token {
			case "-":
				tok = ""
			case "":
			default:
				tok = c.token
			}
			ff := *f
			ff.t = t
			r := ff.doRaw(c.method, c.path, c.body, tok)
			if r.Status != c.status || r.errCode() != c.code {
				t.Fatalf("got %d %s, want %d %s: %s", r.Status, r.errCode(), c.status, c.code, r.Raw)
			}
			noteCode(c.code, c.status)
			if msg, _ := r.Body["error"].(map[string]any)["message"].(string); msg == "" {
				t.Fatalf("error without message: %s", r.Raw)
			}
		})
	}
	// Nothing was created by the refused requests.
	if r := f.do(http.MethodGet, fgPath("err-east", "fg2"), nil); r.Status != 404 {
		t.Fatalf("refused group exists: %d", r.Status)
	}
}
