package armid

import (
	"testing"

	"github.com/fogo-db/fogo/internal/errcatalog"
)

func TestParseAndFormat(t *testing.T) {
	id := "/subscriptions/00000000-1111-2222-3333-444444444444/resourceGroups/Default/providers/Microsoft.Sql/servers/srv-1"
	s, err := ParseServerID(id)
	if err != nil || s.Name != "srv-1" || s.ResourceGroup != "Default" || s.String() != id {
		t.Fatalf("%+v %v", s, err)
	}
	lower, _ := ParseServerID("/SUBSCRIPTIONS/00000000-1111-2222-3333-444444444444/resourcegroups/default/providers/microsoft.sql/servers/SRV-1")
	if !lower.Equal(s) {
		t.Fatal("ids must compare case-insensitively")
	}
	d, err := ParseDatabaseID(id + "/databases/db1")
	if err != nil || d.Name != "db1" || d.Server != s {
		t.Fatalf("%+v %v", d, err)
	}
	g, err := ParseFailoverGroupID(id + "/failoverGroups/fg")
	if err != nil || g.Name != "fg" || g.String() != id+"/failoverGroups/fg" {
		t.Fatalf("%+v %v", g, err)
	}
	for _, bad := range []string{"", "x", id + "/databases", id + "/failoverGroups/fg", "/subscriptions/s/resourceGroups/r/providers/Microsoft.Web/servers/x/databases/d"} {
		if _, err := ParseDatabaseID(bad); err == nil {
			t.Errorf("ParseDatabaseID(%q) accepted", bad)
		}
	}
}

func TestNameRules(t *testing.T) {
	code := func(err error) string {
		if e, ok := errcatalog.As(err); ok {
			return e.Code
		}
		return ""
	}
	cases := []struct {
		err  error
		want string
	}{
		{ValidateServerName("ok-name-1"), ""},
		{ValidateServerName("-bad"), "InvalidServerName"},
		{ValidateServerName("Upper"), "InvalidServerName"},
		{ValidateServerName("a\x00b"), "InvalidIdentifier"},
		{ValidateFailoverGroupName("Bad_Name!"), "InvalidFailoverGroupName"},
		{ValidateDatabaseName("sales"), ""},
		{ValidateDatabaseName("Master"), "CannotUseReservedDatabaseName"},
		{ValidateDatabaseName("postgres"), "CannotUseReservedDatabaseName"},
		{ValidateDatabaseName("a/b"), "InvalidDatabaseName"},
		{ValidateDatabaseName("trailing."), "InvalidDatabaseName"},
		{ValidateSubscription("not-a-guid"), "InvalidSubscriptionId"},
		{ValidateResourceGroup("rg_(1).x"), ""},
		{ValidateResourceGroup("rg."), "InvalidResourceGroupName"},
	}
	for i, c := range cases {
		if got := code(c.err); got != c.want {
			t.Errorf("case %d: got %q (%v), want %q", i, got, c.err, c.want)
		}
	}
	if e := New409(); e.Status != 409 {
		t.Fatal("InvalidFailoverGroupName is a 409 in the catalogue")
	}
}

func New409() *errcatalog.Error { return errcatalog.New("InvalidFailoverGroupName") }
