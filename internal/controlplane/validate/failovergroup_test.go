package validate

import (
	"errors"
	"testing"

	"github.com/fogo-db/fogo/internal/controlplane/armid"
	"github.com/fogo-db/fogo/internal/errcatalog"
)

const (
	testPrimary = "/subscriptions/00000000-0000-0000-0000-000000000001/resourceGroups/rg/providers/Microsoft.Sql/servers/east"
	testPartner = "/subscriptions/00000000-0000-0000-0000-000000000001/resourceGroups/rg/providers/Microsoft.Sql/servers/west"
)

func mustServer(t *testing.T, id string) armid.ServerID {
	t.Helper()
	s, err := armid.ParseServerID(id)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func code(err error) string {
	var e *errcatalog.Error
	if errors.As(err, &e) {
		return e.Code
	}
	if err != nil {
		return "non-catalogue error: " + err.Error()
	}
	return ""
}

func TestFailoverGroupPut(t *testing.T) {
	primary := mustServer(t, testPrimary)
	cases := []struct {
		name, body, code string
	}{
		{"manual", `{"properties":{"readWriteEndpoint":{"failoverPolicy":"Manual"},"partnerServers":[{"id":"` + testPartner + `"}]}}`, ""},
		{"automatic", `{"properties":{"readWriteEndpoint":{"failoverPolicy":"Automatic","failoverWithDataLossGracePeriodMinutes":60},"partnerServers":[{"id":"` + testPartner + `"}]}}`, ""},
		{"automatic below minimum", `{"properties":{"readWriteEndpoint":{"failoverPolicy":"Automatic","failoverWithDataLossGracePeriodMinutes":59},"partnerServers":[{"id":"` + testPartner + `"}]}}`, "FailoverGroupCreateOrUpdateRequestLessThanMinimumGracePeriodValues"},
		{"automatic negative", `{"properties":{"readWriteEndpoint":{"failoverPolicy":"Automatic","failoverWithDataLossGracePeriodMinutes":-60},"partnerServers":[{"id":"` + testPartner + `"}]}}`, "FailoverGroupCreateOrUpdateRequestNegativeGracePeriodValues"},
		{"automatic without grace", `{"properties":{"readWriteEndpoint":{"failoverPolicy":"Automatic"},"partnerServers":[{"id":"` + testPartner + `"}]}}`, "FailoverGroupCreateOrUpdateRequestInvalidReadWriteEndpointFields"},
		{"manual with grace", `{"properties":{"readWriteEndpoint":{"failoverPolicy":"Manual","failoverWithDataLossGracePeriodMinutes":60},"partnerServers":[{"id":"` + testPartner + `"}]}}`, "FailoverGroupCreateOrUpdateRequestInvalidReadWriteEndpointFieldsForManualPolicy"},
		{"unknown policy", `{"properties":{"readWriteEndpoint":{"failoverPolicy":"Sometimes"},"partnerServers":[{"id":"` + testPartner + `"}]}}`, "InvalidRequestContent"},
		{"grace as string", `{"properties":{"readWriteEndpoint":{"failoverPolicy":"Automatic","failoverWithDataLossGracePeriodMinutes":"60"}}}`, "InvalidRequestContent"},
		{"malformed", `{"properties":`, "InvalidRequestContent"},
		{"empty", ``, "FailoverGroupCreateOrUpdateRequestInvalid"},
		{"role secondary", `{"properties":{"replicationRole":"Secondary","readWriteEndpoint":{"failoverPolicy":"Manual"},"partnerServers":[{"id":"` + testPartner + `"}]}}`, "FailoverGroupCreateOrUpdateRequestReadOnlyPropertyModified"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := FailoverGroupPut([]byte(c.body), primary, 60)
			if got := code(err); got != c.code {
				t.Fatalf("code %q, want %q (err %v)", got, c.code, err)
			}
		})
	}
}

func TestFailoverGroupUpdateMergesAndChecks(t *testing.T) {
	primary := mustServer(t, testPrimary)
	sixty := int32(60)
	cur := FailoverGroupSpec{ReadWritePolicy: "Automatic", GracePeriodMinutes: &sixty, ReadOnlyPolicy: "Disabled",
		PartnerServers: []armid.ServerID{mustServer(t, testPartner)}}

	spec, err := FailoverGroupUpdate([]byte(`{"properties":{"readWriteEndpoint":{"failoverPolicy":"Automatic","failoverWithDataLossGracePeriodMinutes":120}}}`), primary, cur, 60)
	if err != nil || spec.GracePeriodMinutes == nil || *spec.GracePeriodMinutes != 120 || len(spec.PartnerServers) != 1 {
		t.Fatalf("update grace: %+v %v", spec, err)
	}
	if _, err := FailoverGroupUpdate([]byte(`{"properties":{"readWriteEndpoint":{"failoverPolicy":"Automatic","failoverWithDataLossGracePeriodMinutes":-60}}}`), primary, cur, 60); code(err) != "FailoverGroupCreateOrUpdateRequestNegativeGracePeriodValues" {
		t.Fatalf("negative grace on update: %v", err)
	}
	if _, err := FailoverGroupUpdate([]byte(`{"properties":{"readWriteEndpoint":{"failoverPolicy":"Manual"}}}`), primary, cur, 60); err != nil {
		t.Fatalf("switch to Manual: %v", err)
	}
	if _, err := FailoverGroupUpdate([]byte(`{"properties":{"partnerServers":[{"id":"`+testPrimary+`2"}]}}`), primary, cur, 60); code(err) != "FailoverGroupCreateOrUpdateRequestReadOnlyPropertyModified" {
		t.Fatalf("partner change on update: %v", err)
	}
	if *cur.GracePeriodMinutes != 60 {
		t.Fatal("update modified the current spec")
	}
}
