package e2e

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/fogo-db/fogo/internal/controlplane/model"
)

// The forced failover's edge cases (issue 10, findings 5, 8 and 10): a forced failover never fences the only
// healthy copy for a copy that cannot become primary, tryPlannedBeforeForcedFailover falls back when the primary
// is down, an old primary that does not stop is stopped by force, and one stuck instance does not hold up the
// other groups.

// cannotPromote is the catalogue's answer when a geo-secondary cannot enter the primary role.
const cannotPromote = "GeoReplicationCannotBecomePrimaryDuringUndo"

// tryWhere is whereIs without failing the test: which instance port a session through endpoint lands on.
func tryWhere(endpoint, db string) (port int, standby bool, err error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	conn, err := dial(ctx, endpoint, db)
	if err != nil {
		return 0, false, err
	}
	defer conn.Close(ctx)
	err = conn.QueryRow(ctx, "SELECT inet_server_port(), pg_is_in_recovery()").Scan(&port, &standby)
	return port, standby, err
}

// waitWritableAt polls until a session through endpoint lands on the primary at port, then commits a row there.
func waitWritableAt(t *testing.T, endpoint, db string, port int, within time.Duration) {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		p, standby, err := tryWhere(endpoint, db)
		if err == nil && p == port && !standby {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s/%s does not reach a writable primary on port %d: port %d standby %v err %v", endpoint, db, port, p, standby, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	insertRowsAt(t, endpoint, db, 1)
}

// makeUnusable breaks server's copy of db for good (no pg_control: PostgreSQL cannot start on it) and kills it.
func (f *fogo) makeUnusable(t *testing.T, server, db string) {
	t.Helper()
	rec := f.instanceOf(t, server, db)
	if err := os.Remove(filepath.Join(rec.Dir, "global", "pg_control")); err != nil {
		t.Fatal(err)
	}
	f.killInstance(t, server, db)
}

// killInstance kill -9s server's instance of db and waits until it is gone.
func (f *fogo) killInstance(t *testing.T, server, db string) {
	t.Helper()
	h := f.app.Cluster.Handle(f.instanceOf(t, server, db))
	if pid, running := h.Running(); running {
		if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		if _, running := h.Running(); !running {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s/%s still runs after kill -9", server, db)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// expectOpCode waits for a failover operation and checks it failed with code, and that its final result (the
// Location URL) answers with the catalogue's status.
func (f *fogo) expectOpCode(t *testing.T, r response, code string, status int) {
	t.Helper()
	st := f.wait(r)
	if e, _ := st["error"].(map[string]any); st["status"] != "Failed" || e["code"] != code {
		t.Fatalf("operation: %v %v, want Failed %s", st["status"], st["error"], code)
	}
	if loc := f.do(http.MethodGet, r.Header.Get("Location"), nil); loc.Status != status || loc.errCode() != code {
		t.Fatalf("final result: %d %s, want %d %s", loc.Status, loc.Raw, status, code)
	}
	noteCode(code, status)
}

// TestForcedFailoverToUnusableSecondaryIsUndone (finding 5): a forced failover whose geo-secondary cannot start
// after the old primary was fenced (paused before the promote step, then the secondary's pg_control is removed)
// is undone: it fails with GeoReplicationCannotBecomePrimaryDuringUndo and the old primary serves again behind the
// read-write listener. Asked again, it is refused before anything is fenced (the primary keeps running, same
// postmaster), and a secondary without a data directory is refused at once (409).
func TestForcedFailoverToUnusableSecondaryIsUndone(t *testing.T) {
	f := startFogo(t)
	reached, release := make(chan string, 1), make(chan struct{})
	f.app.Ops.PauseBeforeStep = func(op *model.Operation, step string) {
		if op.Kind == model.OpForced && step == "promote" {
			select {
			case reached <- op.ID:
			default:
			}
			<-release
		}
	}
	t.Cleanup(func() {
		select {
		case <-release:
		default:
			close(release)
		}
	})
	f.groupWithLedger("und-east", "und-west", "und-fg", "und")
	rw := f.listenerOf("und-east", "und-fg", "readWriteEndpoint")
	eastPort := f.instancePort(t, "und-east", "und")

	// 1. Fenced, then the secondary turns out unusable before the promotion: undone.
	r := f.do(http.MethodPost, fgPath("und-west", "und-fg")+"/forceFailoverAllowDataLoss", nil)
	if r.Status != 202 {
		t.Fatalf("forced failover: %d %s", r.Status, r.Raw)
	}
	select {
	case <-reached:
	case <-time.After(60 * time.Second):
		t.Fatal("the forced failover never reached its promote step")
	}
	if !f.instanceOf(t, "und-east", "und").NeedsRejoin {
		t.Fatal("the old primary is not fenced before the promote step")
	}
	f.makeUnusable(t, "und-west", "und")
	close(release)
	f.expectOpCode(t, r, cannotPromote, 409)
	if rec := f.instanceOf(t, "und-east", "und"); rec.NeedsRejoin || rec.LostReport != "" || rec.Role != model.RolePrimary {
		t.Fatalf("old primary after the undone failover: %+v", rec)
	}
	// Nothing was lost, so the report the fence opened is gone.
	if l := f.do(http.MethodGet, fgPath("und-east", "und-fg")+"/lostTransactions", nil); l.Status != 200 || len(l.Body["value"].([]any)) != 0 {
		t.Fatalf("lost-transaction reports after the undone failover: %d %s", l.Status, l.Raw)
	}
	if role(t, f, "und-east", "und-fg") != "Primary" {
		t.Fatal("an undone failover changed the roles")
	}
	waitWritableAt(t, rw, "und", eastPort, 30*time.Second)

	// 2. Asked again with the secondary still unusable: refused before the primary is touched.
	pid, running := f.app.Cluster.Handle(f.instanceOf(t, "und-east", "und")).Running()
	if !running {
		t.Fatal("the primary does not run")
	}
	r = f.do(http.MethodPost, fgPath("und-west", "und-fg")+"/forceFailoverAllowDataLoss", nil)
	if r.Status == 202 {
		f.expectOpCode(t, r, cannotPromote, 409)
	} else if r.Status != 409 || r.errCode() != cannotPromote {
		t.Fatalf("forced failover to an unusable secondary: %d %s", r.Status, r.Raw)
	}
	if now, running := f.app.Cluster.Handle(f.instanceOf(t, "und-east", "und")).Running(); !running || now != pid {
		t.Fatalf("the refused failover stopped the primary (pid %d, now %d running %v)", pid, now, running)
	}
	waitWritableAt(t, rw, "und", eastPort, time.Second)

	// 3. No data directory at all (never seeded, or lost): refused at once.
	west := f.instanceOf(t, "und-west", "und")
	removeDir(t, west.Dir)
	for _, action := range []string{"forceFailoverAllowDataLoss", "tryPlannedBeforeForcedFailover"} {
		r = f.do(http.MethodPost, fgPath("und-west", "und-fg")+"/"+action, nil)
		if r.Status != 409 || r.errCode() != cannotPromote {
			t.Fatalf("%s to a secondary without data: %d %s", action, r.Status, r.Raw)
		}
	}
	noteCode(cannotPromote, 409)
	waitWritableAt(t, rw, "und", eastPort, time.Second)
}

// TestTryPlannedFallsBackWhenPrimaryIsDown (finding 8): the primary's postmaster is dead (kill -9, kept from
// restarting); tryPlannedBeforeForcedFailover does the forced failover the operation exists for.
func TestTryPlannedFallsBackWhenPrimaryIsDown(t *testing.T) {
	f := startFogo(t)
	f.groupWithLedger("tpd-east", "tpd-west", "tpd-fg", "tpd")
	rw := f.listenerOf("tpd-east", "tpd-fg", "readWriteEndpoint")
	ids := insertRowsAt(t, rw, "tpd", 20)
	f.waitGroupState("tpd-east", "tpd-fg", "CATCH_UP")
	f.waitRowOn(t, "tpd-west", "tpd", "row")
	eastPort, westPort := f.instancePort(t, "tpd-east", "tpd"), f.instancePort(t, "tpd-west", "tpd")

	f.killInstance(t, "tpd-east", "tpd")
	occupy(t, eastPort)
	st := f.wait(f.do(http.MethodPost, fgPath("tpd-west", "tpd-fg")+"/tryPlannedBeforeForcedFailover", nil))
	if st["status"] != "Succeeded" {
		t.Fatalf("tryPlannedBeforeForcedFailover with the primary down: %v %v", st["status"], st["error"])
	}
	if role(t, f, "tpd-west", "tpd-fg") != "Primary" {
		t.Fatal("west is not primary")
	}
	waitWritableAt(t, rw, "tpd", westPort, 10*time.Second)
	checkAllPresentAt(t, rw, "tpd", ids)
	// The fallback is a forced failover: it has its report, which waits for the old primary (it cannot start: its
	// port is taken, as when its host is down), and the operation says so.
	op := f.lastFailoverOp(t, "tpd-fg")
	r := f.do(http.MethodGet, fgPath("tpd-west", "tpd-fg")+"/lostTransactions/"+op, nil)
	db := r.Body["properties"].(map[string]any)["databases"].([]any)[0].(map[string]any)
	if db["status"] != "Pending" {
		t.Fatalf("lost-transaction report while the old primary cannot start: %s", r.Raw)
	}
	if w := fmt.Sprint(st["properties"].(map[string]any)["warnings"]); !strings.Contains(w, "waits for the old primary") {
		t.Fatalf("the operation does not say the report waits: %s", w)
	}
	// It keeps waiting: a port taken says nothing of the old primary's WAL, so the reconciler's retries (1, 2,
	// 4 s apart) do not count as attempts that would end the report Failed and rewind it.
	for deadline := time.Now().Add(12 * time.Second); time.Now().Before(deadline); time.Sleep(500 * time.Millisecond) {
		r := f.do(http.MethodGet, fgPath("tpd-west", "tpd-fg")+"/lostTransactions/"+op, nil)
		if st := r.Body["properties"].(map[string]any)["databases"].([]any)[0].(map[string]any)["status"]; st != "Pending" {
			t.Fatalf("the report of an old primary that cannot start yet became %v: %s", st, r.Raw)
		}
	}
}

// TestForcedFailoverStopsAStuckPrimary (finding 10): the old primary's postmaster is frozen (SIGSTOP), so the
// fast and immediate shutdowns of the fence cannot finish while its backends still serve their sessions. The
// forced failover stops it by force, says so in the operation status, and the session opened before the failover
// can no longer write; the read-write listener routes to the new primary.
func TestForcedFailoverStopsAStuckPrimary(t *testing.T) {
	f := startFogo(t)
	f.groupWithLedger("stk-east", "stk-west", "stk-fg", "stk")
	rw := f.listenerOf("stk-east", "stk-fg", "readWriteEndpoint")
	westPort := f.instancePort(t, "stk-west", "stk")
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	old, err := f.app.Cluster.Handle(f.instanceOf(t, "stk-east", "stk")).Connect(ctx, "stk")
	if err != nil {
		t.Fatal(err)
	}
	defer old.Close(context.Background())
	if _, err := old.Exec(ctx, "INSERT INTO ledger(note) VALUES ('before')"); err != nil {
		t.Fatal(err)
	}
	pid, _ := f.app.Cluster.Handle(f.instanceOf(t, "stk-east", "stk")).Running()
	if err := syscall.Kill(pid, syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = syscall.Kill(pid, syscall.SIGCONT) })

	r := f.do(http.MethodPost, fgPath("stk-west", "stk-fg")+"/forceFailoverAllowDataLoss", nil)
	if r.Status != 202 {
		t.Fatalf("forced failover: %d %s", r.Status, r.Raw)
	}
	st := f.wait(r)
	if st["status"] != "Succeeded" {
		t.Fatalf("forced failover with a frozen old primary: %v %v", st["status"], st["error"])
	}
	props, _ := st["properties"].(map[string]any)
	if w := fmt.Sprint(props["warnings"]); !strings.Contains(w, "stk") || !strings.Contains(w, "killed") {
		t.Errorf("the operation status does not report the forced stop: %v", props)
	}
	for deadline := time.Now().Add(15 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		ictx, icancel := context.WithTimeout(ctx, 2*time.Second)
		_, err := old.Exec(ictx, "INSERT INTO ledger(note) VALUES ('old-primary-after-failover')")
		icancel()
		if err != nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("a session on the fenced old primary still commits after the forced failover")
		}
	}
	if stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid)); err == nil && !strings.Contains(string(stat), ") Z") {
		t.Fatalf("the old postmaster %d still exists: %s", pid, stat)
	}
	waitWritableAt(t, rw, "stk", westPort, 10*time.Second)
}

// removeDir removes dir, retrying (bounded) while a process that is being stopped or started by the reconciler
// still writes into it ("directory not empty").
func removeDir(t *testing.T, dir string) {
	t.Helper()
	var err error
	for range 50 {
		if err = os.RemoveAll(dir); err == nil {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatal(err)
}
