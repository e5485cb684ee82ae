package e2e

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/fogo-db/fogo/internal/app"
	"github.com/fogo-db/fogo/internal/controlplane/armid"
	"github.com/fogo-db/fogo/internal/controlplane/model"
)

// TestAutomaticFailoverAndFencing: with the Automatic policy and a grace period of 2 "minutes" of 1 s each,
// kill -9 of the primary instance (kept from restarting: its port is taken) leads to a forced failover by fogo
// itself, recorded as an operation; the read-write listener never routes to the old primary, neither while it is
// down nor when it comes back, until it has been rewound into a secondary. Health endpoints and metrics follow.
func TestAutomaticFailoverAndFencing(t *testing.T) {
	f := startFogo(t, func(o *app.Options) { o.GraceUnit = time.Second; o.MinGraceMinutes = 1 })
	f.createServer("auto-east", "eastus")
	f.createServer("auto-west", "westus")
	f.createDB("auto-east", "pay", "eastus")
	mustExec(t, f, "auto-east", "pay", "CREATE TABLE ledger(id bigserial PRIMARY KEY, note text)")
	f.mustSucceed(f.do(http.MethodPut, fgPath("auto-east", "auto-fg"), map[string]any{"properties": map[string]any{
		"readWriteEndpoint": map[string]any{"failoverPolicy": "Automatic", "failoverWithDataLossGracePeriodMinutes": 2},
		"readOnlyEndpoint":  map[string]any{"failoverPolicy": "Disabled"},
		"partnerServers":    []any{map[string]any{"id": serverPath("auto-west")}},
		"databases":         []any{dbPath("auto-east", "pay")},
	}}), 201)
	f.waitGroupState("auto-east", "auto-fg", "CATCH_UP")
	rw := f.listenerOf("auto-east", "auto-fg", "readWriteEndpoint")
	eastPort, westPort := f.instancePort(t, "auto-east", "pay"), f.instancePort(t, "auto-west", "pay")
	ids := insertRowsAt(t, rw, "pay", 100)
	f.waitRowOn(t, "auto-west", "pay", "row") // replicated before the crash

	expectHealth(t, f, "auto-fg", "auto-east", "primary", 200)
	expectHealth(t, f, "auto-fg", "auto-west", "replica", 200)
	expectHealth(t, f, "auto-fg", "auto-west", "primary", 503)

	// The primary's host "dies": kill -9, and its port is taken so it cannot come back.
	f.killPrimaryInstances(t, "auto-east")
	blocker := occupy(t, eastPort)
	deadline := time.Now().Add(60 * time.Second)
	for role(t, f, "auto-west", "auto-fg") != "Primary" {
		if time.Now().After(deadline) {
			t.Fatal("the Automatic policy did not fail over within 60s")
		}
		time.Sleep(200 * time.Millisecond)
	}
	last := f.groupProps("auto-west", "auto-fg")["lastFailover"].(map[string]any)
	if last["initiatedBy"] != "Automatic policy" || last["kind"] != "Forced" {
		t.Fatalf("lastFailover: %v", last)
	}
	opURL := fmt.Sprintf("/subscriptions/%s/resourceGroups/%s/providers/Microsoft.Sql/locations/westus/failoverGroupAzureAsyncOperation/%s", sub, rg, last["operationId"])
	waitOp := time.Now().Add(30 * time.Second)
	for {
		st := f.do(http.MethodGet, opURL, nil)
		if st.Status != 200 {
			t.Fatalf("the automatic failover's operation: %d %s", st.Status, st.Raw)
		}
		if st.Body["status"] == "Succeeded" {
			break
		}
		if st.Body["status"] != "InProgress" || time.Now().After(waitOp) {
			t.Fatalf("the automatic failover's operation: %s", st.Raw)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if p, standby := whereIs(t, rw, "pay"); p != westPort || standby {
		t.Fatalf("rw listener after the automatic failover: port %d standby %v, want %d", p, standby, westPort)
	}
	checkAllPresentAt(t, rw, "pay", ids)
	expectHealth(t, f, "auto-fg", "auto-west", "primary", 200)
	expectHealth(t, f, "auto-fg", "auto-east", "primary", 503)

	// The old primary's host comes back: it is rewound and rejoins as a secondary; no session reaches it as a
	// primary meanwhile.
	blocker.Close()
	rejoinBy := time.Now().Add(30 * time.Second)
	for f.groupProps("auto-west", "auto-fg")["replicationState"] != "CATCH_UP" {
		if p, standby := whereIs(t, rw, "pay"); p != westPort || standby {
			t.Fatalf("rw listener routed to port %d (standby %v) while the old primary came back", p, standby)
		}
		if time.Now().After(rejoinBy) {
			rec := f.instanceOf(t, "auto-east", "pay")
			raw, _ := os.ReadFile(filepath.Join(filepath.Dir(rec.Dir), "postgres.log"))
			var keep []string
			for _, l := range strings.Split(string(raw), "\n") {
				if !strings.Contains(l, "invalid record length") && !strings.Contains(l, "waiting for WAL to become") {
					keep = append(keep, l)
				}
			}
			t.Fatalf("the old primary did not rejoin: %+v\n%s", rec, strings.Join(keep, "\n"))
		}
		time.Sleep(100 * time.Millisecond)
	}
	rec := f.instanceOf(t, "auto-east", "pay")
	if rec.NeedsRejoin || !f.app.Cluster.Handle(rec).IsStandby() {
		t.Fatalf("old primary after rejoin: %+v", rec)
	}
	expectHealth(t, f, "auto-fg", "auto-east", "replica", 200)
	// The Automatic policy's failover is forced: the old primary was read before its rewind, once it could start
	// again, and nothing replicated was lost.
	f.expectNothingLost(t, "auto-west", "auto-fg", last["operationId"].(string))

	metrics := f.do(http.MethodGet, "/metrics", nil)
	if metrics.Status != 200 {
		t.Fatalf("/metrics: %d", metrics.Status)
	}
	for _, want := range []string{
		`fogo_failovers_total{initiated_by="Automatic policy",kind="ForcedFailover"} 1`,
		`fogo_instance_role{database="pay",group="auto-fg",role="primary",server="auto-west"} 1`,
		`fogo_replication_lag_bytes{database="pay",group="auto-fg"}`,
		`fogo_listener_connections_accepted_total{group="auto-fg",listener="rw"}`,
		`fogo_operation_duration_seconds_count{kind="ForcedFailover",status="Succeeded"} 1`,
	} {
		if !strings.Contains(string(metrics.Raw), want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
	if r := f.doRaw(http.MethodGet, "/metrics", nil, ""); r.Status != 401 {
		t.Errorf("/metrics without a token: %d", r.Status)
	}
}

func expectHealth(t *testing.T, f *fogo, fg, server, check string, want int) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		resp, err := http.Get(f.url + "/health/failoverGroups/" + fg + "/servers/" + server + "/" + check)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode == want {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("health %s/%s/%s: %d %s, want %d", fg, server, check, resp.StatusCode, body, want)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// occupy listens on 127.0.0.1:port so that nothing else can.
func occupy(t *testing.T, port int) net.Listener {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		ln, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", port))
		if err == nil {
			t.Cleanup(func() { ln.Close() })
			return ln
		}
		if time.Now().After(deadline) {
			t.Fatalf("occupy port %d: %v", port, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func (f *fogo) instanceOf(t *testing.T, server, db string) *model.Instance {
	t.Helper()
	d, err := f.app.Service.GetDatabase(armid.DatabaseID{Server: armid.ServerID{Subscription: sub, ResourceGroup: rg, Name: server}, Name: db})
	if err != nil {
		t.Fatal(err)
	}
	rec, err := f.app.Cluster.GetInstance(d.Instance)
	if err != nil {
		t.Fatal(err)
	}
	return rec
}

// insertRowsAt commits n rows through endpoint and returns their ids.
func insertRowsAt(t *testing.T, endpoint, db string, n int) []int64 {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	conn, err := dial(ctx, endpoint, db)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	ids := make([]int64, 0, n)
	for i := 0; i < n; i++ {
		var id int64
		if err := conn.QueryRow(ctx, "INSERT INTO ledger(note) VALUES ('row') RETURNING id").Scan(&id); err != nil {
			t.Fatal(err)
		}
		ids = append(ids, id)
	}
	return ids
}

// checkAllPresentAt asserts every id is in ledger, read through endpoint.
func checkAllPresentAt(t *testing.T, endpoint, db string, ids []int64) {
	t.Helper()
	if missing := missingAt(t, endpoint, db, ids); missing != 0 {
		t.Fatalf("%d of %d rows are missing", missing, len(ids))
	}
}

// missingAt counts the ids that are not in ledger, read through endpoint.
func missingAt(t *testing.T, endpoint, db string, ids []int64) int {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := dial(ctx, endpoint, db)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	var missing int
	if err := conn.QueryRow(ctx, "SELECT count(*) FROM unnest($1::bigint[]) AS a(id) WHERE NOT EXISTS (SELECT 1 FROM ledger l WHERE l.id = a.id)", ids).Scan(&missing); err != nil {
		t.Fatal(err)
	}
	return missing
}
