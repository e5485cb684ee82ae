package e2e

import (
	"context"
	"fmt"
	"net/http"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/fogo-db/fogo/internal/controlplane/links"
	"github.com/fogo-db/fogo/internal/link"
	"github.com/fogo-db/fogo/internal/link/target"
)

// TestLinkFollowsFailovers: a link from a failover group's database into DuckDB keeps running through a planned
// and a forced failover while clients write through the read-write listener, with no manual step: afterwards the
// target equals the new primary exactly (nothing lost, nothing duplicated, no row the new primary lacks).
func TestLinkFollowsFailovers(t *testing.T) {
	f, rw, store := groupLink(t, "lk", 500, nil)
	convergeLink(t, f, rw, store)
	waitSlotCopy(t, f, "lk-west", "shop", "fogo_link_lk")

	// Planned failover to west while clients write through the listener: two commit single inserts as fast as
	// they can, one keeps transactions of several statements open across the failover's checkpoints.
	ctx, stop := context.WithCancel(context.Background())
	var w listenerWriters
	wg := w.run(ctx, rw, "shop", 2)
	longTransactions(ctx, wg, rw)
	time.Sleep(500 * time.Millisecond)
	f.mustSucceed(f.do(http.MethodPost, fgPath("lk-west", "lk-fg")+"/failover", nil), 202)
	time.Sleep(700 * time.Millisecond)
	stop()
	wg.Wait()
	convergeLink(t, f, rw, store)
	f.waitGroupState("lk-west", "lk-fg", "CATCH_UP")
	waitSlotCopy(t, f, "lk-east", "shop", "fogo_link_lk")

	// Forced failover back to east after kill -9 of west's primary instance, writers still running.
	ctx, stop = context.WithCancel(context.Background())
	wg = w.run(ctx, rw, "shop", 2)
	longTransactions(ctx, wg, rw)
	time.Sleep(500 * time.Millisecond)
	f.killPrimaryInstances(t, "lk-west")
	f.mustSucceed(f.do(http.MethodPost, fgPath("lk-east", "lk-fg")+"/forceFailoverAllowDataLoss", nil), 202)
	time.Sleep(700 * time.Millisecond)
	stop()
	wg.Wait()
	convergeLink(t, f, rw, store)
	st, _ := f.app.Links.Status("lk")
	if st.Phase != "Streaming" || st.Applied == 0 {
		t.Fatalf("link status after the failovers: %+v", st)
	}
	t.Logf("link after a planned and a forced failover: %d acknowledged writes, status %+v", len(w.acked), st)
}

// longTransactions runs a client whose transactions insert, wait, update an earlier row and insert again before
// they commit, until ctx ends; failed transactions (the failover) are retried on a new session.
func longTransactions(ctx context.Context, wg *sync.WaitGroup, rw string) {
	wg.Add(1)
	go func() {
		defer wg.Done()
		for ctx.Err() == nil {
			conn, err := dial(ctx, rw, "shop")
			if err != nil {
				continue
			}
			for ctx.Err() == nil {
				_, err := conn.Exec(ctx, `BEGIN;
					INSERT INTO ledger(note) VALUES ('long 1');
					SELECT pg_sleep(0.05);
					UPDATE ledger SET note = note || ' touched' WHERE id = (SELECT max(id) - 3 FROM ledger);
					INSERT INTO ledger(note) VALUES ('long 2');
					COMMIT`)
				if err != nil {
					break
				}
			}
			conn.Close(context.Background())
		}
	}()
}

const ledgerDigest = "md5(string_agg(CAST(id AS VARCHAR) || ':' || note, ',' ORDER BY id))"

// groupLink starts fogo with a failover group P-fg of servers P-east and P-west whose database shop holds a ledger
// of seed rows, and a link "lk" of the ledger into a DuckDB file (mod, if set, adjusts its definition); it returns
// fogo, the group's read-write listener and the target. The link stops at the end of the test.
func groupLink(t *testing.T, p string, seed int, mod func(*links.Def)) (*fogo, string, *target.Store) {
	t.Helper()
	f := startFogo(t)
	f.groupWithLedger(p+"-east", p+"-west", p+"-fg", "shop")
	mustExec(t, f, p+"-east", "shop", fmt.Sprintf("INSERT INTO ledger(note) SELECT 'seed ' || i FROM generate_series(1, %d) i", seed))
	store, err := target.OpenDuckDB(filepath.Join(t.TempDir(), "lk.duckdb"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { store.Close() })
	def := links.Def{Name: "lk", Group: p + "-fg", Database: "shop", Target: store, Tables: []link.TableMapping{{SourceTable: "ledger"}}}
	if mod != nil {
		mod(&def)
	}
	if err := f.app.Links.Start(def); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.app.Links.Stop("lk") })
	return f, f.listenerOf(p+"-east", p+"-fg", "readWriteEndpoint"), store
}

// convergeLink waits until the target's ledger equals the current primary's (read through the listener).
func convergeLink(t *testing.T, f *fogo, rw string, store *target.Store) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	var want, got string
	var n int
	for time.Now().Before(deadline) {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		conn, err := dial(ctx, rw, "shop")
		if err == nil {
			err = conn.QueryRow(ctx, "SELECT count(*), coalesce(md5(string_agg(id::text || ':' || note, ',' ORDER BY id)), '') FROM ledger").Scan(&n, &want)
			conn.Close(ctx)
		}
		cancel()
		if err == nil {
			var m int
			if qerr := store.DB().QueryRow("SELECT count(*), coalesce("+ledgerDigest+", '') FROM public.ledger").Scan(&m, &got); qerr == nil && got == want {
				return
			}
		}
		time.Sleep(200 * time.Millisecond)
	}
	// Say which rows differ: extra ones would be phantoms, missing ones lost changes.
	var diff []string
	if conn, err := dial(context.Background(), rw, "shop"); err == nil {
		src, dst := map[string]string{}, map[string]string{}
		if rows, err := conn.Query(context.Background(), "SELECT id::text, note FROM ledger"); err == nil {
			for rows.Next() {
				var id, note string
				if rows.Scan(&id, &note) == nil {
					src[id] = note
				}
			}
			rows.Close()
		}
		conn.Close(context.Background())
		if rows, err := store.DB().Query("SELECT CAST(id AS VARCHAR), note FROM public.ledger"); err == nil {
			for rows.Next() {
				var id, note string
				if rows.Scan(&id, &note) == nil {
					dst[id] = note
				}
			}
			rows.Close()
		}
		for id, n := range dst {
			if sn, ok := src[id]; !ok || sn != n {
				diff = append(diff, "target has "+id+"="+n)
			}
		}
		for id := range src {
			if _, ok := dst[id]; !ok {
				diff = append(diff, "target lacks "+id)
			}
		}
	}
	sort.Slice(diff, func(i, j int) bool {
		return len(diff[i]) < len(diff[j]) || len(diff[i]) == len(diff[j]) && diff[i] < diff[j]
	})
	if len(diff) > 40 {
		diff = append(diff[:20], append([]string{"…"}, diff[len(diff)-20:]...)...)
	}
	t.Logf("differences (%d rows on the primary): %v", n, diff)
	st, _ := f.app.Links.Status("lk")
	t.Fatalf("the target did not converge with the primary (%d rows there): %s vs %s; link %+v", n, got, want, st)
}

// waitSlotCopy waits until server's instance of db holds a copy of the link's slot.
func waitSlotCopy(t *testing.T, f *fogo, server, db, slot string) {
	t.Helper()
	h := f.app.Cluster.Handle(f.instanceOf(t, server, db))
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) {
		if c, err := h.SlotConfirmedLSN(context.Background(), slot); err == nil && c > 0 {
			return
		}
		time.Sleep(200 * time.Millisecond)
	}
	t.Fatalf("no copy of slot %s on %s", slot, server)
}

// TestLinkWithoutSlotCopyResyncs: a link whose new primary has no copy of its slot after a failover (here: a link
// run without slot copies) resynchronises its table from the new primary by itself, and the status says so.
func TestLinkWithoutSlotCopyResyncs(t *testing.T) {
	f, rw, store := groupLink(t, "rs", 500, func(d *links.Def) { d.Unprotected = true })
	convergeLink(t, f, rw, store)

	ctx, stop := context.WithCancel(context.Background())
	var w listenerWriters
	wg := w.run(ctx, rw, "shop", 2)
	time.Sleep(300 * time.Millisecond)
	f.mustSucceed(f.do(http.MethodPost, fgPath("rs-west", "rs-fg")+"/failover", nil), 202)
	time.Sleep(500 * time.Millisecond)
	stop()
	wg.Wait()
	convergeLink(t, f, rw, store)
	st, _ := f.app.Links.Status("lk")
	if len(st.Tables) != 1 || !strings.Contains(st.Tables[0].Resync, "no replication slot") {
		t.Fatalf("the status does not say the table was resynchronised: %+v", st)
	}
}

// TestLinkInBatches: a group's link with a data process interval applies what was committed in batches and is
// Idle in between (dataProcessIntervalMinutes, here in seconds). The test waits for facts — a batch finished (the
// link went Idle), a later batch finished — not for a moment of Idle: that lasts the interval minus the batch's
// duration, which a loaded machine can bring to nothing.
func TestLinkInBatches(t *testing.T) {
	f, rw, store := groupLink(t, "bt", 100, func(d *links.Def) { d.Interval = 3 * time.Second })
	convergeLink(t, f, rw, store)
	first := waitBatch(t, f, time.Time{})
	mustExec(t, f, "bt-east", "shop", "INSERT INTO ledger(note) SELECT 'next batch ' || i FROM generate_series(1, 50) i")
	convergeLink(t, f, rw, store)
	waitBatch(t, f, first)                                // the rows came with a later batch, and that one finished too
	waitSlotCopy(t, f, "bt-west", "shop", "fogo_link_lk") // kept between batches too
}

// waitBatch waits until the link reports a batch finished after the given time, and returns when it finished.
func waitBatch(t *testing.T, f *fogo, after time.Time) time.Time {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for {
		st, _ := f.app.Links.Status("lk")
		if st.LastBatch.After(after) {
			return st.LastBatch
		}
		if time.Now().After(deadline) {
			t.Fatalf("no batch finished after %s: %+v", after.Format(time.RFC3339Nano), st)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
