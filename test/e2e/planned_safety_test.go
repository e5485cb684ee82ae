package e2e

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/fogo-db/fogo/internal/controlplane/failover"
	"github.com/fogo-db/fogo/internal/controlplane/model"
	"github.com/fogo-db/fogo/internal/controlplane/operations"
	"github.com/fogo-db/fogo/internal/controlplane/store"
)

// The planned failover's safety windows (issue 10): a fault injected at a named step of the operation, through
// the runner's pause hook, and the facts checked on the instances themselves.

// onStep runs fn once, in the operation's goroutine, just before an operation of kind starts step.
func onStep(f *fogo, kind, step string, fn func(op *model.Operation)) {
	var once sync.Once
	f.app.Ops.PauseBeforeStep = func(op *model.Operation, name string) {
		if op.Kind == kind && name == step {
			once.Do(func() { fn(op) })
		}
	}
}

// writableOn reports whether server's instance of db runs and accepts writes (pg_is_in_recovery() is false on
// the instance's own port).
func (f *fogo) writableOn(t *testing.T, server, db string) bool {
	t.Helper()
	h := f.app.Cluster.Handle(f.instanceOf(t, server, db))
	if _, running := h.Running(); !running {
		return false
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	conn, err := h.Connect(ctx, "postgres")
	if err != nil {
		return false
	}
	defer conn.Close(context.Background())
	var inRecovery bool
	return conn.QueryRow(ctx, "SELECT pg_is_in_recovery()").Scan(&inRecovery) == nil && !inRecovery
}

// standbyOn reports whether server's instance of db runs as a standby.
func (f *fogo) standbyOn(t *testing.T, server, db string) bool {
	t.Helper()
	h := f.app.Cluster.Handle(f.instanceOf(t, server, db))
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	in, err := h.IsInRecovery(ctx)
	return err == nil && in
}

// onePrimaryAt polls (bounded) until db is writable on primary only and a standby on the other server, failing
// at once if both copies of db accept writes at any poll.
func (f *fogo) onePrimaryAt(t *testing.T, primary, other, db string, within time.Duration) {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		p, o := f.writableOn(t, primary, db), f.writableOn(t, other, db)
		if p && o {
			t.Fatalf("two writable primaries for %s: on %s and on %s", db, primary, other)
		}
		if p && f.standbyOn(t, other, db) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: writable on %s %v, on %s %v; want %s the only primary and %s a standby", db, primary, p,
				other, o, primary, other)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func killPostmaster(f *fogo, rec *model.Instance) error {
	pid, running := f.app.Cluster.Handle(rec).Running()
	if !running {
		return fmt.Errorf("instance %s is not running", rec.ID)
	}
	return syscall.Kill(pid, syscall.SIGKILL)
}

func opError(st map[string]any) string {
	e, _ := st["error"].(map[string]any)
	code, _ := e["code"].(string)
	return code
}

// TestPlannedFailoverGoesForwardWhenAPromotionFails: in a group of two databases, one geo-secondary dies (kill -9,
// its port taken) just before the promotion. The other database is promoted; the failover must not end with the
// old roles and its old primaries restarted next to the promoted copy. It records the new roles before
// promoting, reports the unfinished promotion (DatabaseUnavailable), never leaves two writable copies of a
// database, and the reconciler finishes the promotion and the rejoins once the instance can start. The same for
// tryPlannedBeforeForcedFailover: a planned attempt that recorded the new roles never falls back to a forced
// failover (whose undo would un-fence the old primaries the store no longer names).
func TestPlannedFailoverGoesForwardWhenAPromotionFails(t *testing.T) {
	for _, mode := range []struct{ kind, action, prefix string }{
		{model.OpPlanned, "/failover", "fwd"},
		{model.OpTryPlanned, "/tryPlannedBeforeForcedFailover", "tfwd"},
	} {
		t.Run(mode.action[1:], func(t *testing.T) { goesForwardWhenAPromotionFails(t, mode.kind, mode.action, mode.prefix) })
	}
}

func goesForwardWhenAPromotionFails(t *testing.T, kind, action, prefix string) {
	f := startFogo(t)
	east, west := prefix+"-east", prefix+"-west"
	f.createServer(east, "eastus")
	f.createServer(west, "westus")
	for _, db := range []string{"a", "b"} {
		f.createDB(east, db, "eastus")
		mustExec(t, f, east, db, "CREATE TABLE ledger(id bigserial PRIMARY KEY, note text)")
	}
	f.mustSucceed(f.createGroup(east, west, prefix+"-fg", "a", "b"), 201)
	f.waitGroupState(east, prefix+"-fg", "CATCH_UP")
	idsA, idsB := insertRows(t, f, east, "a", 20), insertRows(t, f, east, "b", 20)
	westB := f.instanceOf(t, west, "b")

	var blocker net.Listener
	var hookErr error
	onStep(f, kind, "promote", func(*model.Operation) {
		hookErr = killPostmaster(f, westB)
		blocker = occupy(t, westB.Port)
	})
	st := f.wait(f.do(http.MethodPost, fgPath(west, prefix+"-fg")+action, nil))
	if hookErr != nil || blocker == nil {
		t.Fatalf("fault injection: %v", hookErr)
	}
	if st["status"] != "Failed" || opError(st) != "DatabaseUnavailable" {
		t.Fatalf("planned failover with a promotion that fails: %v %v", st["status"], st["error"])
	}
	noteCode("DatabaseUnavailable", 503)
	if role(t, f, west, prefix+"-fg") != "Primary" || role(t, f, east, prefix+"-fg") != "Secondary" {
		t.Fatal("a failover past its demotion went back to the old roles")
	}
	// a was promoted: west's copy is the only writable one; b has no writable copy while its new primary is down.
	f.onePrimaryAt(t, west, east, "a", 30*time.Second)
	if f.writableOn(t, east, "b") {
		t.Fatal("b's old primary accepts writes after the failover recorded the new roles")
	}
	rw := f.listenerOf(west, prefix+"-fg", "readWriteEndpoint")
	if p, standby := whereIs(t, rw, "a"); p != f.instancePort(t, west, "a") || standby {
		t.Fatalf("rw listener routes a to port %d (standby %v), want west's primary", p, standby)
	}

	// The instance can start again: the reconciler finishes its promotion, and b's old primary rejoins.
	blocker.Close()
	f.onePrimaryAt(t, west, east, "b", 60*time.Second)
	f.waitGroupState(west, prefix+"-fg", "CATCH_UP")
	if p, standby := whereIs(t, rw, "b"); p != westB.Port || standby {
		t.Fatalf("rw listener routes b to port %d (standby %v), want %d", p, standby, westB.Port)
	}
	checkAllPresent(t, f, west, "a", idsA)
	checkAllPresent(t, f, west, "b", idsB)
	mustExec(t, f, west, "b", "INSERT INTO ledger(note) VALUES ('after-forward')")
	f.waitRowOn(t, east, "b", "after-forward")
}

// TestPlannedFailoverRefusesAPrimaryThatDidNotShutDownCleanly: after the catch-up, the geo-secondary is cut
// off (walsender ended, slot dropped so it cannot reconnect), the primary acknowledges one more commit and is
// killed (kill -9) before fogo demotes it. "Not running" must not pass for "demoted": its last checkpoint is an
// online one the secondary passed long ago. The failover rolls back (the old primary restarts as the primary,
// PlannedFailoverTimedOutForDatabase) and the acknowledged commit is still there.
func TestPlannedFailoverRefusesAPrimaryThatDidNotShutDownCleanly(t *testing.T) {
	f := startFogo(t)
	east, west := "unclean-east", "unclean-west"
	f.groupWithLedger(east, west, "unclean-fg", "bank")
	ids := insertRows(t, f, east, "bank", 20)
	eastRec, westRec := f.instanceOf(t, east, "bank"), f.instanceOf(t, west, "bank")

	var lastID int64
	var hookErr error
	onStep(f, model.OpPlanned, "demote", func(*model.Operation) {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		conn, err := f.app.Cluster.Handle(eastRec).Connect(ctx, "bank")
		if err != nil {
			hookErr = err
			return
		}
		defer conn.Close(context.Background())
		for {
			_, err = conn.Exec(ctx, "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots WHERE slot_name = $1 AND active_pid IS NOT NULL", westRec.SlotName)
			if err == nil {
				_, err = conn.Exec(ctx, "SELECT pg_drop_replication_slot($1)", westRec.SlotName)
			}
			if err == nil || ctx.Err() != nil {
				break
			}
			time.Sleep(20 * time.Millisecond)
		}
		if err != nil {
			hookErr = fmt.Errorf("cut off the geo-secondary: %w", err)
			return
		}
		if err := conn.QueryRow(ctx, "INSERT INTO ledger(note) VALUES ('unshipped') RETURNING id").Scan(&lastID); err != nil {
			hookErr = err
			return
		}
		hookErr = killPostmaster(f, eastRec)
	})
	r := f.do(http.MethodPost, fgPath(west, "unclean-fg")+"/failover", nil)
	st := f.wait(r)
	if hookErr != nil || lastID == 0 {
		t.Fatalf("fault injection: %v", hookErr)
	}
	if st["status"] != "Failed" || opError(st) != "PlannedFailoverTimedOutForDatabase" {
		t.Fatalf("planned failover after the old primary crashed: %v %v", st["status"], st["error"])
	}
	if loc := f.do(http.MethodGet, r.Header.Get("Location"), nil); loc.Status != 400 || loc.errCode() != "PlannedFailoverTimedOutForDatabase" {
		t.Fatalf("final result of the rolled-back failover: %d %s", loc.Status, loc.Raw)
	}
	if role(t, f, east, "unclean-fg") != "Primary" {
		t.Fatal("the roles changed")
	}
	f.onePrimaryAt(t, east, west, "bank", 30*time.Second)
	checkAllPresent(t, f, east, "bank", append(ids, lastID))
	rw := f.listenerOf(east, "unclean-fg", "readWriteEndpoint")
	if p, standby := whereIs(t, rw, "bank"); p != eastRec.Port || standby {
		t.Fatalf("rw listener routes to port %d (standby %v), want %d", p, standby, eastRec.Port)
	}

	// The group is usable again once the geo-secondary's slot exists: it catches up, the commit included.
	f.execOnInstance(t, east, "bank", fmt.Sprintf("SELECT pg_create_physical_replication_slot('%s', true)", westRec.SlotName))
	f.waitGroupState(east, "unclean-fg", "CATCH_UP")
	f.waitRowOn(t, west, "bank", "unshipped")
}

// TestPlannedFailoverSucceedsWhenOnlyTheRejoinFails: the roles are recorded and the new primary promoted, but the
// old primary cannot restart as a standby (its port is taken). The failover has happened, so the operation
// succeeds (an ARM client retrying a Failed one would get a 400), the status shows the old primary not streaming
// (SUSPENDED), and the reconciler rejoins it, with backoff, once it can start.
func TestPlannedFailoverSucceedsWhenOnlyTheRejoinFails(t *testing.T) {
	f := startFogo(t)
	east, west := "rejoin-east", "rejoin-west"
	f.groupWithLedger(east, west, "rejoin-fg", "acct")
	ids := insertRows(t, f, east, "acct", 20)
	eastRec := f.instanceOf(t, east, "acct")

	var blocker net.Listener
	onStep(f, model.OpPlanned, "rejoin", func(*model.Operation) { blocker = occupy(t, eastRec.Port) })
	st := f.wait(f.do(http.MethodPost, fgPath(west, "rejoin-fg")+"/failover", nil))
	if st["status"] != "Succeeded" {
		t.Fatalf("planned failover whose rejoin fails: %v %v", st["status"], st["error"])
	}
	if blocker == nil {
		t.Fatal("the rejoin step was never reached")
	}
	if role(t, f, west, "rejoin-fg") != "Primary" {
		t.Fatal("roles did not swap")
	}
	if got := f.groupProps(west, "rejoin-fg")["replicationState"]; got != "SUSPENDED" {
		t.Fatalf("replicationState while the old primary cannot rejoin: %v, want SUSPENDED", got)
	}
	if f.writableOn(t, east, "acct") || !f.writableOn(t, west, "acct") {
		t.Fatal("west must be the only writable copy")
	}
	checkAllPresent(t, f, west, "acct", ids)

	blocker.Close()
	f.waitGroupState(west, "rejoin-fg", "CATCH_UP")
	f.onePrimaryAt(t, west, east, "acct", 10*time.Second)
	mustExec(t, f, west, "acct", "INSERT INTO ledger(note) VALUES ('after-rejoin')")
	f.waitRowOn(t, east, "acct", "after-rejoin")
}

// TestFailoverRecordIsACompareAndSwapOnTheEpoch: another decision lands on the group (its epoch moves) while a
// planned failover runs; the failover must not overwrite it: it fails with OperationInterrupted, records nothing,
// and no copy is promoted. A stale operation (planned at an epoch the group has left) fails the same way before
// touching anything.
func TestFailoverRecordIsACompareAndSwapOnTheEpoch(t *testing.T) {
	f := startFogo(t)
	east, west := "epoch-east", "epoch-west"
	f.groupWithLedger(east, west, "epoch-fg", "inv")
	ids := insertRows(t, f, east, "inv", 20)
	getGroup := func() model.FailoverGroup {
		t.Helper()
		var g model.FailoverGroup
		if err := f.app.Store.View(func(tx *store.Tx) error { return tx.MustGet(store.Groups, "epoch-fg", &g) }); err != nil {
			t.Fatal(err)
		}
		return g
	}
	before := getGroup()

	var hookErr error
	onStep(f, model.OpPlanned, "record", func(*model.Operation) {
		hookErr = f.app.Store.Update(func(tx *store.Tx) error {
			var g model.FailoverGroup
			if err := tx.MustGet(store.Groups, "epoch-fg", &g); err != nil {
				return err
			}
			g.Epoch, g.LastFailoverOp = g.Epoch+1, "concurrent-decision"
			return tx.Put(store.Groups, g.Key(), &g)
		})
	})
	r := f.do(http.MethodPost, fgPath(west, "epoch-fg")+"/failover", nil)
	st := f.wait(r)
	if hookErr != nil {
		t.Fatal(hookErr)
	}
	if st["status"] != "Failed" || opError(st) != "OperationInterrupted" {
		t.Fatalf("failover whose group moved on meanwhile: %v %v", st["status"], st["error"])
	}
	if loc := f.do(http.MethodGet, r.Header.Get("Location"), nil); loc.Status != 409 || loc.errCode() != "OperationInterrupted" {
		t.Fatalf("final result: %d %s", loc.Status, loc.Raw)
	}
	noteCode("OperationInterrupted", 409)
	after := getGroup()
	if after.Epoch != before.Epoch+1 || after.LastFailoverOp != "concurrent-decision" || after.Primary.Name != east {
		t.Fatalf("the newer decision was overwritten: epoch %d (was %d), last op %q, primary %s", after.Epoch,
			before.Epoch, after.LastFailoverOp, after.Primary.Name)
	}
	for _, server := range []string{east, west} {
		if rec := f.instanceOf(t, server, "inv"); rec.NeedsRejoin || (rec.Role == model.RolePrimary) != (server == east) {
			t.Fatalf("instance records changed on %s: %+v", server, rec)
		}
	}
	f.onePrimaryAt(t, east, west, "inv", 30*time.Second)
	checkAllPresent(t, f, east, "inv", ids)

	// A stale operation: planned at the epoch before the concurrent decision.
	stale := after
	stale.Epoch--
	plan := failover.NewPlan(&stale, after.Secondary, model.OpPlanned)
	op, err := operations.NewOperation(model.OpPlanned, "/stale", "failoverGroup", "westus", plan)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.app.Store.Update(func(tx *store.Tx) error { return operations.Create(tx, op) }); err != nil {
		t.Fatal(err)
	}
	f.app.Ops.Launch(op.ID)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	done, err := f.app.Ops.WaitDone(ctx, op.ID)
	if err != nil {
		t.Fatal(err)
	}
	if done.Status != model.OpFailed || done.Error == nil || done.Error.Code != "OperationInterrupted" {
		t.Fatalf("stale operation: %s %+v", done.Status, done.Error)
	}
	if g := getGroup(); g.Epoch != after.Epoch || g.Primary.Name != east {
		t.Fatalf("a stale operation changed the group: %+v", g)
	}
	if !f.writableOn(t, east, "inv") || !f.standbyOn(t, west, "inv") {
		t.Fatal("a stale operation touched the instances")
	}
}
