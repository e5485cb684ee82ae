// Package armid parses, validates and formats the ARM resource IDs of fogo's resources (servers, databases,
// failover groups). ARM matches fixed segments and names case-insensitively: IDs keep the user's casing for
// display, and Key() gives the lower-cased form used for lookups.
package armid

import (
	"fmt"
	"regexp"
	"strings"
	"unicode"
	"unicode/utf8"

	"github.com/fogo-db/fogo/internal/errcatalog"
)

// ServerID names a logical server.
type ServerID struct {
	Subscription  string `json:"subscription"`
	ResourceGroup string `json:"resourceGroup"`
	Name          string `json:"name"`
}

// String is the ARM resource ID.
func (s ServerID) String() string {
	return fmt.Sprintf("/subscriptions/%s/resourceGroups/%s/providers/Microsoft.Sql/servers/%s", s.Subscription, s.ResourceGroup, s.Name)
}

// Key is the canonical (lower-case) form for lookups.
func (s ServerID) Key() string {
	return strings.ToLower(s.Subscription + "/" + s.ResourceGroup + "/" + s.Name)
}

// Equal compares case-insensitively.
func (s ServerID) Equal(o ServerID) bool { return s.Key() == o.Key() }

// DatabaseID names a database on a server.
type DatabaseID struct {
	Server ServerID `json:"server"`
	Name   string   `json:"name"`
}

// String is the ARM resource ID.
func (d DatabaseID) String() string { return d.Server.String() + "/databases/" + d.Name }

// FailoverGroupID names a failover group as seen from one server.
type FailoverGroupID struct {
	Server ServerID
	Name   string
}

// String is the ARM resource ID.
func (f FailoverGroupID) String() string { return f.Server.String() + "/failoverGroups/" + f.Name }

// ParseServerID parses "/subscriptions/{s}/resourceGroups/{rg}/providers/Microsoft.Sql/servers/{name}".
func ParseServerID(id string) (ServerID, error) {
	seg, err := split(id, 8)
	if err != nil {
		return ServerID{}, err
	}
	return serverFrom(seg, id)
}

// ParseDatabaseID parses a server ID followed by "/databases/{name}".
func ParseDatabaseID(id string) (DatabaseID, error) {
	seg, err := split(id, 10)
	if err != nil {
		return DatabaseID{}, err
	}
	s, err := serverFrom(seg[:8], id)
	if err != nil {
		return DatabaseID{}, err
	}
	if !strings.EqualFold(seg[8], "databases") || seg[9] == "" {
		return DatabaseID{}, fmt.Errorf("%q is not a database resource id", id)
	}
	return DatabaseID{Server: s, Name: seg[9]}, nil
}

// ParseFailoverGroupID parses a server ID followed by "/failoverGroups/{name}".
func ParseFailoverGroupID(id string) (FailoverGroupID, error) {
	seg, err := split(id, 10)
	if err != nil {
		return FailoverGroupID{}, err
	}
	s, err := serverFrom(seg[:8], id)
	if err != nil {
		return FailoverGroupID{}, err
	}
	if !strings.EqualFold(seg[8], "failoverGroups") || seg[9] == "" {
		return FailoverGroupID{}, fmt.Errorf("%q is not a failover group resource id", id)
	}
	return FailoverGroupID{Server: s, Name: seg[9]}, nil
}

func split(id string, n int) ([]string, error) {
	if !strings.HasPrefix(id, "/") {
		return nil, fmt.Errorf("resource id %q must start with '/'", id)
	}
	seg := strings.Split(strings.TrimPrefix(strings.TrimSuffix(id, "/"), "/"), "/")
	if len(seg) != n {
		return nil, fmt.Errorf("resource id %q has %d segments, want %d", id, len(seg), n)
	}
	return seg, nil
}

func serverFrom(seg []string, id string) (ServerID, error) {
	if !strings.EqualFold(seg[0], "subscriptions") || !strings.EqualFold(seg[2], "resourceGroups") ||
		!strings.EqualFold(seg[4], "providers") || !strings.EqualFold(seg[5], "Microsoft.Sql") ||
		!strings.EqualFold(seg[6], "servers") || seg[1] == "" || seg[3] == "" || seg[7] == "" {
		return ServerID{}, fmt.Errorf("%q is not a Microsoft.Sql server resource id", id)
	}
	return ServerID{Subscription: seg[1], ResourceGroup: seg[3], Name: seg[7]}, nil
}

var (
	guidRe       = regexp.MustCompile(`^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$`)
	serverNameRe = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$`)
)

// validIdentifier rejects NUL, control characters and invalid UTF-8 (InvalidIdentifier).
func validIdentifier(s string) error {
	if !utf8.ValidString(s) {
		return errcatalog.New("InvalidIdentifier")
	}
	for _, r := range s {
		if r == 0 || unicode.IsControl(r) || r == utf8.RuneError {
			return errcatalog.New("InvalidIdentifier")
		}
	}
	return nil
}

// ValidateSubscription requires a GUID.
func ValidateSubscription(s string) error {
	if !guidRe.MatchString(s) {
		return errcatalog.New("InvalidSubscriptionId", s)
	}
	return nil
}

// ValidateResourceGroup applies ARM's resource group rules: 1-90 of letters, digits, '_', '(', ')', '-', '.',
// not ending with '.'.
func ValidateResourceGroup(s string) error {
	if err := validIdentifier(s); err != nil {
		return err
	}
	if s == "" || utf8.RuneCountInString(s) > 90 || strings.HasSuffix(s, ".") {
		return errcatalog.New("InvalidResourceGroupName", s)
	}
	for _, r := range s {
		if !(unicode.IsLetter(r) || unicode.IsDigit(r) || strings.ContainsRune("_()-.", r)) {
			return errcatalog.New("InvalidResourceGroupName", s)
		}
	}
	return nil
}

// ValidateServerID validates subscription, resource group and server name.
func ValidateServerID(id ServerID) error {
	if err := ValidateSubscription(id.Subscription); err != nil {
		return err
	}
	if err := ValidateResourceGroup(id.ResourceGroup); err != nil {
		return err
	}
	return ValidateServerName(id.Name)
}

// ValidateServerName: 1-63 lower-case letters, digits and hyphens, not starting or ending with a hyphen.
func ValidateServerName(s string) error {
	if err := validIdentifier(s); err != nil {
		return err
	}
	if !serverNameRe.MatchString(s) {
		return errcatalog.Newf("InvalidServerName", "Invalid server name '%s': use 1-63 lower-case letters, digits and hyphens, not starting or ending with a hyphen.", s)
	}
	return nil
}

// ValidateFailoverGroupName applies the server name rules (a group name is a DNS label too).
func ValidateFailoverGroupName(s string) error {
	if err := validIdentifier(s); err != nil {
		return err
	}
	if !serverNameRe.MatchString(s) {
		return errcatalog.Newf("InvalidFailoverGroupName", "Invalid failover group name '%s': use 1-63 lower-case letters, digits and hyphens, not starting or ending with a hyphen.", s)
	}
	return nil
}

// Reserved database names (Azure's and PostgreSQL's own).
var reservedDatabases = map[string]bool{
	"master": true, "tempdb": true, "model": true, "msdb": true, "resource": true,
	"postgres": true, "template0": true, "template1": true,
}

// ValidateDatabaseName: 1-63 bytes (a PostgreSQL identifier), none of <>*%&:\/? , not ending with '.' or a
// space, not reserved.
func ValidateDatabaseName(s string) error {
	if err := validIdentifier(s); err != nil {
		return err
	}
	if reservedDatabases[strings.ToLower(s)] {
		return errcatalog.New("CannotUseReservedDatabaseName")
	}
	if s == "" || len(s) > 63 || strings.ContainsAny(s, `<>*%&:\/?"`) || strings.HasSuffix(s, ".") || strings.HasSuffix(s, " ") {
		return errcatalog.Newf("InvalidDatabaseName", "The database name '%s' is not valid: 1-63 bytes, none of <>*%%&:\\/?\" and not ending with '.' or a space.", s)
	}
	return nil
}
