package e2e

import (
	"context"
	"net/http"
	"testing"
	"time"

	"github.com/fogo-db/fogo/internal/app"
)

// execOnInstance runs sql as fogo's superuser directly on server's instance of db (not through the gateway).
func (f *fogo) execOnInstance(t *testing.T, server, db, sql string) {
	t.Helper()
	rec := f.instanceOf(t, server, db)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := f.app.Cluster.Handle(rec).Connect(ctx, db)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, sql); err != nil {
		t.Fatalf("%s on %s/%s: %v", sql, server, db, err)
	}
}

// TestBusyAndRollback covers the operation-level answers: FailoverGroupBusy (409) while a failover runs, a
// planned failover whose catch-up cannot finish in time rolls back (PlannedFailoverTimedOutForDatabase) with
// the roles unchanged and the primary writable again, and tryPlannedBeforeForcedFailover falls back to a
// forced failover in that situation.
func TestBusyAndRollback(t *testing.T) {
	f := startFogo(t, func(o *app.Options) {
		o.PauseBeforeStep, o.PauseFor = "PlannedFailover:record", 3*time.Second
		o.CatchUpTimeout, o.TryPlannedTimeout = 2*time.Second, 2*time.Second
	})
	f.createServer("busy-east", "eastus")
	f.createServer("busy-west", "westus")
	f.createDB("busy-east", "acct", "eastus")
	mustExec(t, f, "busy-east", "acct", "CREATE TABLE ledger(id bigserial PRIMARY KEY, note text)")
	f.mustSucceed(f.createGroup("busy-east", "busy-west", "busy-fg", "acct"), 201)
	f.waitGroupState("busy-east", "busy-fg", "CATCH_UP")

	// Busy: the planned failover pauses before recording the roles; everything else on the group is refused.
	first := f.do(http.MethodPost, fgPath("busy-west", "busy-fg")+"/failover", nil)
	if first.Status != 202 {
		t.Fatalf("failover: %d %s", first.Status, first.Raw)
	}
	time.Sleep(300 * time.Millisecond)
	for _, r := range []response{
		f.do(http.MethodPost, fgPath("busy-west", "busy-fg")+"/failover", nil),
		f.do(http.MethodPost, fgPath("busy-west", "busy-fg")+"/forceFailoverAllowDataLoss", nil),
		f.do(http.MethodPatch, fgPath("busy-east", "busy-fg"), map[string]any{"properties": map[string]any{"databases": []any{}}}),
		f.do(http.MethodDelete, fgPath("busy-east", "busy-fg"), nil),
	} {
		if r.Status != 409 || r.errCode() != "FailoverGroupBusy" {
			t.Fatalf("request during a failover: %d %s, want 409 FailoverGroupBusy", r.Status, r.Raw)
		}
	}
	noteCode("FailoverGroupBusy", 409)
	if st := f.wait(first); st["status"] != "Succeeded" {
		t.Fatalf("first failover: %v", st)
	}
	f.waitGroupState("busy-west", "busy-fg", "CATCH_UP")

	// Rollback: east (now the geo-secondary) stops replaying, west commits more, a planned failover back to
	// east cannot catch up within the bound and rolls back.
	f.execOnInstance(t, "busy-east", "acct", "SELECT pg_wal_replay_pause()")
	mustExec(t, f, "busy-west", "acct", "INSERT INTO ledger(note) SELECT 'unreplayed' FROM generate_series(1, 100)")
	r := f.do(http.MethodPost, fgPath("busy-east", "busy-fg")+"/failover", nil)
	st := f.wait(r)
	errBody, _ := st["error"].(map[string]any)
	if st["status"] != "Failed" || errBody["code"] != "PlannedFailoverTimedOutForDatabase" {
		t.Fatalf("planned failover without catch-up: %v", st)
	}
	if loc := f.do(http.MethodGet, r.Header.Get("Location"), nil); loc.Status != 400 || loc.errCode() != "PlannedFailoverTimedOutForDatabase" {
		t.Fatalf("final result of the rolled-back failover: %d %s", loc.Status, loc.Raw)
	}
	noteCode("PlannedFailoverTimedOutForDatabase", 400)
	if role(t, f, "busy-west", "busy-fg") != "Primary" {
		t.Fatal("a rolled-back failover changed the roles")
	}
	mustExec(t, f, "busy-west", "acct", "INSERT INTO ledger(note) VALUES ('writable-after-rollback')")

	// tryPlannedBeforeForcedFailover: the planned attempt times out the same way, then a forced failover
	// promotes east (promotion replays what east received).
	r = f.do(http.MethodPost, fgPath("busy-east", "busy-fg")+"/tryPlannedBeforeForcedFailover", nil)
	if st := f.wait(r); st["status"] != "Succeeded" {
		t.Fatalf("tryPlannedBeforeForcedFailover: %v", st)
	}
	if role(t, f, "busy-east", "busy-fg") != "Primary" {
		t.Fatal("tryPlannedBeforeForcedFailover did not make east primary")
	}
	mustExec(t, f, "busy-east", "acct", "INSERT INTO ledger(note) VALUES ('east-primary')")
	f.waitGroupState("busy-east", "busy-fg", "CATCH_UP")
	f.waitRowOn(t, "busy-west", "acct", "east-primary")
}

// TestFailoverPreconditionsAndLimits: a planned failover needs a running primary and a running geo-secondary
// (DatabaseUnavailable, IncorrectReplicationLinkState), the per-server limits, and a geo-secondary name that is
// taken on the partner (RemoteDatabaseExists). The reconciler is slowed down so stopped instances stay stopped.
func TestFailoverPreconditionsAndLimits(t *testing.T) {
	f := startFogo(t, func(o *app.Options) {
		o.ReconcileInterval = time.Hour
		o.MaxGroupsPerServer, o.MaxDatabasesPerServer = 1, 2
	})
	f.createServer("pre-east", "eastus")
	f.createServer("pre-west", "westus")
	f.createDB("pre-east", "one", "eastus")
	f.createDB("pre-east", "two", "eastus")
	f.createDB("pre-west", "two", "westus")
	f.mustSucceed(f.createGroup("pre-east", "pre-west", "pre-fg", "one"), 201)

	expect := func(r response, status int, code string) {
		t.Helper()
		if r.Status != status || r.errCode() != code {
			t.Fatalf("got %d %s, want %d %s: %s", r.Status, r.errCode(), status, code, r.Raw)
		}
		noteCode(code, status)
	}
	expect(f.do(http.MethodPut, dbPath("pre-east", "three"), map[string]any{"location": "eastus"}), 400, "InvalidParameterValue")
	expect(f.createGroup("pre-east", "pre-west", "pre-fg2", "two"), 400, "LimitOfFailoverGroupsPerServerExceeded")
	// "two" exists on the partner already: adding it to the group would overwrite it.
	expect(f.do(http.MethodPatch, fgPath("pre-east", "pre-fg"), map[string]any{"properties": map[string]any{
		"databases": []any{dbPath("pre-east", "one"), dbPath("pre-east", "two")}}}), 409, "RemoteDatabaseExists")

	restart := f.stopInstance(t, "pre-west", "one")
	st := f.wait(f.do(http.MethodPost, fgPath("pre-west", "pre-fg")+"/failover", nil))
	if e, _ := st["error"].(map[string]any); st["status"] != "Failed" || e["code"] != "IncorrectReplicationLinkState" {
		t.Fatalf("planned failover with the geo-secondary down: %v", st)
	}
	noteCode("IncorrectReplicationLinkState", 400)
	restart()
	restart = f.stopInstance(t, "pre-east", "one")
	st = f.wait(f.do(http.MethodPost, fgPath("pre-west", "pre-fg")+"/failover", nil))
	if e, _ := st["error"].(map[string]any); st["status"] != "Failed" || e["code"] != "DatabaseUnavailable" {
		t.Fatalf("planned failover with the primary down: %v", st)
	}
	noteCode("DatabaseUnavailable", 503)
	restart()
	if role(t, f, "pre-east", "pre-fg") != "Primary" {
		t.Fatal("a refused failover changed the roles")
	}
}
