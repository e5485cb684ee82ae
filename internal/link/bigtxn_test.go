package link_test

import (
	"context"
	"errors"
	"os"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/fogo-db/fogo/internal/link"
	"github.com/fogo-db/fogo/internal/link/target"
	"github.com/fogo-db/fogo/internal/postgres/lsn"
	"github.com/fogo-db/fogo/internal/testutil/pgtest"
)

const (
	bigSrcQ = "SELECT count(*)::text || ':' || md5(string_agg(id::text || ':' || coalesce(b, '~') || ':' || coalesce(c::text, '~'), ',' ORDER BY id)) FROM t"
	bigDstQ = "SELECT CAST(count(*) AS VARCHAR) || ':' || md5(string_agg(CAST(id AS VARCHAR) || ':' || coalesce(b, '~') || ':' || coalesce(CAST(c AS VARCHAR), '~'), ',' ORDER BY id)) FROM public.t"
	// bigTxn inserts, updates and deletes thousands of rows and changes the table's shape in the middle: far past
	// the spill bound the tests set, and a schema change (DuckDB: first in its target transaction) in the spool.
	bigTxn = `BEGIN;
		INSERT INTO t SELECT i, i * 10, repeat('x', 100) FROM generate_series(1, 4000) i;
		UPDATE t SET b = 'u' || id WHERE id % 3 = 0;
		ALTER TABLE t DROP COLUMN a;
		ALTER TABLE t ADD COLUMN c int;
		UPDATE t SET c = id WHERE id % 5 = 0;
		DELETE FROM t WHERE id % 7 = 0;
		INSERT INTO t(id, b, c) SELECT i, 'late', -i FROM generate_series(5001, 6000) i;
		COMMIT`
)

// TestLinkLargeTransactionSpooled: a source transaction larger than the link may hold in memory goes to a spool
// file and is applied from it in chunks, in one target transaction with its checkpoint, on DuckDB and on
// PostgreSQL, schema changes included; the link streams on after it.
func TestLinkLargeTransactionSpooled(t *testing.T) {
	defer link.SetSpill(32<<10, 100)()
	pg, src, duck := sourceAndDuckDB(t, "CREATE TABLE t(id int PRIMARY KEY, a int, b text)")
	dst := pgtest.NewPrimary(t)
	pgStore, err := target.OpenPostgres(dsn(dst))
	if err != nil {
		t.Fatal(err)
	}
	defer pgStore.Close()
	spool := t.TempDir()
	links := map[*target.Store]*link.Link{}
	for name, store := range map[string]*target.Store{"duck": duck, "pg": pgStore} {
		l := link.New(link.Config{Name: name, Source: dsn(pg), Target: store, SpoolDir: spool, Tables: []link.TableMapping{{SourceTable: "t"}}})
		links[store] = l
		defer runLink(t, l)()
	}
	waitStreaming(t, links[duck], links[pgStore])
	exec(t, src, bigTxn)
	exec(t, src, "INSERT INTO t(id, b, c) VALUES (9000, 'after', 1)")
	for _, store := range []*target.Store{duck, pgStore} {
		converge(t, src, store, bigSrcQ, bigDstQ)
		if st := links[store].Status(); st.Spooled != 1 || st.Phase != "Streaming" {
			t.Errorf("status after the big transaction: %d spooled (want 1), phase %s, err %q", st.Spooled, st.Phase, st.Err)
		}
	}
	if left, err := os.ReadDir(spool); err != nil || len(left) != 0 {
		t.Errorf("spool files left behind: %v %v", left, err)
	}
}

// TestLinkSpooledTransactionStoppedHalfWay: a link stopped while a spooled transaction waits for the gate leaves
// none of it in the target; the next run decodes it again and applies it exactly once.
func TestLinkSpooledTransactionStoppedHalfWay(t *testing.T) {
	defer link.SetSpill(32<<10, 100)()
	pg, src, duck := sourceAndDuckDB(t, "CREATE TABLE t(id int PRIMARY KEY, a int, b text)")
	var holding atomic.Bool // the gate holds back everything past the first run's start
	var held atomic.Int64
	var from atomic.Uint64
	gate := func(ctx context.Context, upTo lsn.LSN) error {
		if !holding.Load() || upTo <= lsn.LSN(from.Load()) {
			return nil
		}
		held.Add(1)
		<-ctx.Done()
		return ctx.Err()
	}
	cfg := link.Config{Name: "half", Source: dsn(pg), Target: duck, Gate: gate, Tables: []link.TableMapping{{SourceTable: "t"}}}
	l := link.New(cfg)
	stop := runLink(t, l)
	waitStreaming(t, l)
	var cur string
	if err := src.QueryRow(context.Background(), "SELECT pg_current_wal_lsn()::text").Scan(&cur); err != nil {
		t.Fatal(err)
	}
	at, _ := lsn.Parse(cur)
	from.Store(uint64(at))
	holding.Store(true)
	exec(t, src, bigTxn)
	for deadline := time.Now().Add(30 * time.Second); held.Load() == 0; time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the big transaction never reached the gate")
		}
	}
	stop()
	var n int
	if err := duck.DB().QueryRow("SELECT count(*) FROM public.t").Scan(&n); err != nil || n != 0 {
		t.Fatalf("the target holds %d rows of a transaction that never passed the gate (%v)", n, err)
	}
	holding.Store(false)
	l2 := link.New(cfg)
	defer runLink(t, l2)()
	converge(t, src, duck, bigSrcQ, bigDstQ)
	if st := l2.Status(); st.Spooled != 1 {
		t.Errorf("the second run spooled %d transactions, want 1", st.Spooled)
	}
}

// waitStreaming waits until every link streams.
func waitStreaming(t *testing.T, links ...*link.Link) {
	t.Helper()
	for _, l := range links {
		for deadline := time.Now().Add(30 * time.Second); l.Status().Phase != "Streaming"; time.Sleep(20 * time.Millisecond) {
			if time.Now().After(deadline) {
				st := l.Status()
				t.Fatalf("link not streaming: %s %s", st.Phase, st.Err)
			}
		}
	}
}

// TestLinkRepliesWhileApplierWaits: while the applier waits (here: the failover-safe gate, for seconds) and the
// received messages pile up to their bound, the link keeps answering the source, so a walsender with a short
// wal_sender_timeout keeps its connection: the same walsender streams everything once the gate opens, and the
// link never restarts.
func TestLinkRepliesWhileApplierWaits(t *testing.T) {
	pg, src, duck := sourceAndDuckDB(t, "CREATE TABLE t(id int PRIMARY KEY, a int, b text)")
	exec(t, src, "ALTER SYSTEM SET wal_sender_timeout = '1s'")
	exec(t, src, "SELECT pg_reload_conf()")
	var open atomic.Bool
	open.Store(true)
	release := make(chan struct{})
	gate := func(ctx context.Context, upTo lsn.LSN) error {
		if open.Load() {
			return nil
		}
		select {
		case <-release:
			return nil
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	l := link.New(link.Config{Name: "replies", Source: dsn(pg), Target: duck, Gate: gate, StatusInterval: 200 * time.Millisecond,
		Tables: []link.TableMapping{{SourceTable: "t"}}})
	defer runLink(t, l)()
	waitStreaming(t, l)
	walsender := func() int {
		var pid int
		if err := src.QueryRow(context.Background(), "SELECT coalesce(active_pid, 0) FROM pg_replication_slots WHERE slot_name = $1", link.LegacySlotName("replies")).Scan(&pid); err != nil {
			t.Fatal(err)
		}
		return pid
	}
	before := walsender()
	open.Store(false)
	exec(t, src, "INSERT INTO t VALUES (0, 0, 'first')") // held at the gate
	// More than the 200,000 messages the applier's queue takes: the reader has to wait for room.
	exec(t, src, "INSERT INTO t SELECT i, i, 'x' FROM generate_series(1, 250000) i")
	time.Sleep(6 * time.Second) // six times wal_sender_timeout with the queue full
	if after := walsender(); after != before {
		t.Errorf("the walsender changed while the gate held (%d, then %d): the source timed the link out", before, after)
	}
	open.Store(true)
	close(release)
	converge(t, src, duck, "SELECT count(*)::text FROM t", "SELECT CAST(count(*) AS VARCHAR) FROM public.t")
	if after := walsender(); after != before {
		t.Errorf("the walsender changed (%d, then %d): the link restarted", before, after)
	}
}

// TestLinkTransactionInParts: a source transaction larger than the target takes in one transaction (DuckDB's
// memory_limit) is applied in parts, each committed with how far it got. A link that stops after some parts
// resumes after the last one: the target ends equal to the source, and a keyless table (where applying a row
// twice would duplicate it) shows every row exactly once.
func TestLinkTransactionInParts(t *testing.T) {
	defer link.SetSpill(32<<10, 100)()
	pg, src, duck := sourceAndDuckDB(t,
		"CREATE TABLE t(id int PRIMARY KEY, a int, b text)",
		"CREATE TABLE k(v int, note text)",
		"ALTER TABLE k REPLICA IDENTITY FULL",
	)
	duck.SetPartBytes(16 << 10)
	cfg := link.Config{Name: "parts", Source: dsn(pg), Target: duck,
		Tables: []link.TableMapping{{SourceTable: "t"}, {SourceTable: "k"}}}
	var parts atomic.Int64
	link.SetAfterPart(func(done int) error {
		if parts.Add(1) == 3 {
			return errors.New("stopped after the third part")
		}
		return nil
	})
	defer link.SetAfterPart(nil)
	l := link.New(cfg)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ended := make(chan error, 1)
	go func() { ended <- l.Run(ctx) }()
	waitStreaming(t, l)
	exec(t, src, "BEGIN; INSERT INTO k SELECT i % 50, 'dup' FROM generate_series(1, 3000) i; "+bigTxn[len("BEGIN;"):])
	select {
	case err := <-ended:
		if err == nil || !strings.Contains(err.Error(), "third part") {
			t.Fatalf("the link ended with %v, want the hook's error", err)
		}
	case <-time.After(60 * time.Second):
		t.Fatal("the link never applied three parts")
	}
	var n int
	if err := duck.DB().QueryRow("SELECT count(*) FROM public.k").Scan(&n); err != nil || n == 0 || n >= 3000 {
		t.Fatalf("after three parts the target has %d rows of k (%v), want some, not all", n, err)
	}
	end, done, err := duck.Part(context.Background(), "parts")
	if err != nil || end == 0 || done == 0 {
		t.Fatalf("no record of the parts applied: %s %d %v", end, done, err)
	}
	link.SetAfterPart(nil)
	l2 := link.New(cfg)
	defer runLink(t, l2)()
	converge(t, src, duck, bigSrcQ, bigDstQ)
	converge(t, src, duck, "SELECT count(*)::text || ':' || sum(v)::text FROM k", "SELECT CAST(count(*) AS VARCHAR) || ':' || CAST(sum(v) AS VARCHAR) FROM public.k")
	if end, done, err := duck.Part(context.Background(), "parts"); err != nil || end != 0 || done != 0 {
		t.Errorf("the record of parts outlived the transaction: %s %d %v", end, done, err)
	}
}
