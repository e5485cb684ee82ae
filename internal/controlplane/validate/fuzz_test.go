package validate

import (
	"errors"
	"testing"
	"unicode/utf8"

	"github.com/fogo-db/fogo/internal/controlplane/armid"
	"github.com/fogo-db/fogo/internal/errcatalog"
)

// The ARM request validators take whatever body a caller sends. For any body: no panic, and either a spec or an
// error of the catalogue with a 4xx status (a malformed body is the caller's fault: never a 500, never an error
// the API would have to turn into one). Seeds: the bodies of the tests and of the specs' examples; the corpus the
// fuzzer found interesting is in testdata/fuzz. A short run of each is in the test command (make fuzz-short).

// requestError fails the test unless err is nil or a catalogue error with a 4xx status and a message.
func requestError(t *testing.T, body []byte, err error) {
	t.Helper()
	if err == nil {
		return
	}
	var e *errcatalog.Error
	if !errors.As(err, &e) {
		t.Fatalf("body %q: an error outside the catalogue (the API would answer 500): %v", body, err)
	}
	if e.Status < 400 || e.Status > 499 {
		t.Fatalf("body %q: %s with status %d, want a 4xx", body, e.Code, e.Status)
	}
	if e.Message == "" || !utf8.ValidString(e.Message) {
		t.Fatalf("body %q: %s with an empty or invalid message %q", body, e.Code, e.Message)
	}
}

func addBodies(f *testing.F, bodies ...string) {
	for _, b := range append(bodies, ``, `{}`, `null`, `[]`, `{"properties":null}`, `{"properties":{}}`, `"x"`, `{"properties":`) {
		f.Add([]byte(b))
	}
}

func FuzzServerPut(f *testing.F) {
	addBodies(f,
		`{"location":"eastus","properties":{"administratorLogin":"dbadmin","administratorLoginPassword":"Str0ng!Passw0rd","version":"12.0"}}`,
		`{"location":"westus","tags":{"a":"b"},"properties":{"administratorLogin":"x","administratorLoginPassword":"p","minimalTlsVersion":"1.2","publicNetworkAccess":"Enabled"}}`,
		`{"location":"","properties":{"administratorLogin":"sa","administratorLoginPassword":"Passw0rd!Passw0rd"}}`,
		`{"location":"eastus","properties":{"administratorLogin":7}}`)
	f.Fuzz(func(t *testing.T, body []byte) {
		for _, existing := range []bool{false, true} {
			_, err := ServerPut(body, existing)
			requestError(t, body, err)
		}
	})
}

func FuzzDatabasePut(f *testing.F) {
	addBodies(f,
		`{"location":"eastus","properties":{"collation":"SQL_Latin1_General_CP1_CI_AS","maxSizeBytes":1073741824}}`,
		`{"location":"eastus","sku":{"name":"S0","tier":"Standard"},"properties":{}}`,
		`{"location":"eastus","properties":{"createMode":"Copy","sourceDatabaseId":"/x"}}`,
		`{"location":"eastus","properties":{"maxSizeBytes":-1}}`)
	f.Fuzz(func(t *testing.T, body []byte) {
		_, err := DatabasePut(body)
		requestError(t, body, err)
	})
}

func FuzzFailoverGroupPut(f *testing.F) {
	addBodies(f,
		`{"properties":{"readWriteEndpoint":{"failoverPolicy":"Manual"},"partnerServers":[{"id":"`+testPartner+`"}]}}`,
		`{"properties":{"readWriteEndpoint":{"failoverPolicy":"Automatic","failoverWithDataLossGracePeriodMinutes":60},"readOnlyEndpoint":{"failoverPolicy":"Enabled"},"partnerServers":[{"id":"`+testPartner+`"}],"databases":["`+testPrimary+`/databases/db1"]}}`,
		`{"properties":{"readWriteEndpoint":{"failoverPolicy":"Automatic","failoverWithDataLossGracePeriodMinutes":-60},"partnerServers":[{"id":"`+testPartner+`"}]}}`,
		`{"properties":{"readWriteEndpoint":{"failoverPolicy":"Automatic","failoverWithDataLossGracePeriodMinutes":"60"}}}`,
		`{"properties":{"replicationRole":"Secondary","readWriteEndpoint":{"failoverPolicy":"Manual"},"partnerServers":[{"id":"`+testPartner+`"},{"id":"`+testPrimary+`"}]}}`)
	primary, err := armid.ParseServerID(testPrimary)
	if err != nil {
		f.Fatal(err)
	}
	current, err := FailoverGroupPut([]byte(`{"properties":{"readWriteEndpoint":{"failoverPolicy":"Manual"},"partnerServers":[{"id":"`+testPartner+`"}]}}`), primary, 60)
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		_, err := FailoverGroupPut(body, primary, 60)
		requestError(t, body, err)
		_, err = FailoverGroupUpdate(body, primary, current, 60)
		requestError(t, body, err)
	})
}
