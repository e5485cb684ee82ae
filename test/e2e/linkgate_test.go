package e2e

import (
	"context"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/fogo-db/fogo/internal/controlplane/links"
	"github.com/fogo-db/fogo/internal/link"
	"github.com/fogo-db/fogo/internal/link/target"
	"github.com/fogo-db/fogo/internal/proctree"
)

// freezeTree stops (SIGSTOP) a postmaster and every process it started, and returns what resumes them; the test's
// cleanup resumes them too.
func freezeTree(t *testing.T, pid int) (resume func()) {
	t.Helper()
	pids := proctree.Signal(pid, syscall.SIGSTOP)
	var once sync.Once
	resume = func() {
		once.Do(func() {
			for _, p := range pids {
				_ = syscall.Kill(p, syscall.SIGCONT)
			}
		})
	}
	t.Cleanup(resume)
	return resume
}

// TestLinkGivesUpOnAFrozenSourceAtTheGate (found by the fault campaign): a link waits at the failover-safe gate
// for a geo-secondary that does not receive (its WAL receiver is stopped), and then its primary freezes (every
// process stopped). The link reads nothing while it waits, so its own silence timeout cannot fire; before the fix
// it read Running for as long as the primary stayed frozen. Now the gate asks the primary now and then and ends
// the run once it has been silent past the link's patience (shortened to 3 s here): the status says Failed with
// the reason, and the link catches up once everything runs again.
func TestLinkGivesUpOnAFrozenSourceAtTheGate(t *testing.T) {
	f := startFogo(t)
	f.app.Links.SourceSilence = 3 * time.Second
	f.groupWithLedger("gz-east", "gz-west", "gz-fg", "shop")
	mustExec(t, f, "gz-east", "shop", "INSERT INTO ledger(note) SELECT 'seed ' || i FROM generate_series(1, 50) i")
	store, err := target.OpenDuckDB(filepath.Join(t.TempDir(), "lk.duckdb"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { store.Close() })
	if err := f.app.Links.Start(links.Def{Name: "lk", Group: "gz-fg", Database: "shop", Target: store,
		Tables: []link.TableMapping{{SourceTable: "ledger"}}}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.app.Links.Stop("lk") })
	rw := f.listenerOf("gz-east", "gz-fg", "readWriteEndpoint")
	convergeLink(t, f, rw, store)

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	standby, err := f.app.Cluster.Handle(f.instanceOf(t, "gz-west", "shop")).Connect(ctx, "postgres")
	if err != nil {
		t.Fatal(err)
	}
	defer standby.Close(context.Background())
	var receiver int
	if err := standby.QueryRow(ctx, "SELECT pid FROM pg_stat_wal_receiver").Scan(&receiver); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Kill(receiver, syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = syscall.Kill(receiver, syscall.SIGCONT) })
	insertRowsAt(t, rw, "shop", 5)
	waitLink := func(what string, within time.Duration, ok func(link.Status) bool) link.Status {
		t.Helper()
		var st link.Status
		for deadline := time.Now().Add(within); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
			if st, _ = f.app.Links.Status("lk"); ok(st) {
				return st
			}
		}
		t.Fatalf("the link is not %s after %s: %+v", what, within, st)
		return st
	}
	waitLink("waiting at the gate", 30*time.Second, func(st link.Status) bool {
		return st.Phase == "Streaming" && strings.Contains(st.Err, "waiting for the geo-secondary")
	})

	pid, _ := f.app.Cluster.Handle(f.instanceOf(t, "gz-east", "shop")).Running()
	resume := freezeTree(t, pid)
	frozen := time.Now()
	st := waitLink("failed", 30*time.Second, func(st link.Status) bool { return st.Phase != "Streaming" })
	if !strings.Contains(st.Err, "has not answered") {
		t.Fatalf("the link gave up for another reason: %+v", st)
	}
	t.Logf("the link left Running %s after the primary froze: %s", time.Since(frozen).Round(100*time.Millisecond), st.Err)

	resume()
	_ = syscall.Kill(receiver, syscall.SIGCONT)
	insertRowsAt(t, rw, "shop", 5)
	convergeLink(t, f, rw, store)
}
