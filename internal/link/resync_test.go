package link_test

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/fogo-db/fogo/internal/link"
	"github.com/fogo-db/fogo/internal/link/target"
	"github.com/fogo-db/fogo/internal/postgres/instance"
	"github.com/fogo-db/fogo/internal/testutil/pgtest"
)

const (
	srcDigest = "SELECT count(*)::text || ':' || coalesce(md5(string_agg(id::text || ':' || note, ',' ORDER BY id)), '') FROM "
	dstDigest = "SELECT CAST(count(*) AS VARCHAR) || ':' || coalesce(md5(string_agg(CAST(id AS VARCHAR) || ':' || note, ',' ORDER BY id)), '') FROM "
)

// sourceAndDuckDB starts a source instance, runs the given statements on it, and opens a DuckDB target; the
// connection and the store close at the end of the test.
func sourceAndDuckDB(t *testing.T, setup ...string) (*instance.Instance, *pgx.Conn, *target.Store) {
	t.Helper()
	pg := pgtest.NewPrimary(t)
	src, err := pg.Connect(context.Background(), "postgres")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { src.Close(context.Background()) })
	for _, sql := range setup {
		exec(t, src, sql)
	}
	store, err := target.OpenDuckDB(filepath.Join(t.TempDir(), "target.duckdb"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { store.Close() })
	return pg, src, store
}

// waitTable waits until the link reports table (schema.table) in the given status and returns it.
func waitTable(t *testing.T, l *link.Link, table, status string) link.TableStatus {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		for _, ts := range l.Status().Tables {
			if ts.Source == table && ts.Status == status {
				return ts
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("table %s never became %s: %+v", table, status, l.Status())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestLinkResyncsTablesWithoutItsSlot: when the source has no slot for the link any more (what a failover to an
// instance without a slot copy looks like), the next run merges every table with a fresh snapshot by primary key
// — rows changed, added and deleted meanwhile all end right, nothing is duplicated, the target table is kept —
// says so in each table's status, and streams on.
func TestLinkResyncsTablesWithoutItsSlot(t *testing.T) {
	pg, src, store := sourceAndDuckDB(t,
		"CREATE TABLE a(id int PRIMARY KEY, note text)",
		"INSERT INTO a SELECT i, 'a' || i FROM generate_series(1, 2000) i",
	)
	cfg := link.Config{Name: "rs", Source: dsn(pg), Target: store, Tables: []link.TableMapping{{SourceTable: "a"}}}
	stop := runLink(t, link.New(cfg))
	converge(t, src, store, srcDigest+"a", dstDigest+"public.a")
	stop()
	oid := tableOID(t, store, "a") // the same table afterwards: merged into, not replaced

	exec(t, src, "SELECT pg_drop_replication_slot('fogo_link_rs')")
	exec(t, src, "UPDATE a SET note = note || ' changed' WHERE id % 10 = 0")
	exec(t, src, "DELETE FROM a WHERE id BETWEEN 100 AND 199")
	exec(t, src, "INSERT INTO a SELECT i, 'new ' || i FROM generate_series(3001, 3100) i")

	l := link.New(cfg)
	stop = runLink(t, l)
	ts := waitTable(t, l, "public.a", link.TableReplicating)
	if !strings.Contains(ts.Resync, "no replication slot") || ts.SyncedAt == 0 {
		t.Fatalf("the table's status does not say it was resynchronised: %+v", ts)
	}
	converge(t, src, store, srcDigest+"a", dstDigest+"public.a")
	exec(t, src, "UPDATE a SET note = 'after' WHERE id = 1")
	converge(t, src, store, srcDigest+"a", dstDigest+"public.a")
	if got := tableOID(t, store, "a"); got != oid {
		t.Fatalf("the target table was replaced (oid %d, was %d)", got, oid)
	}

	stop()

	// A column added while the link could not follow (its slot gone again): the target table no longer fits the
	// source, and the resync recreates it.
	exec(t, src, "SELECT pg_drop_replication_slot('fogo_link_rs')")
	exec(t, src, "ALTER TABLE a ADD COLUMN extra int DEFAULT 7")
	l = link.New(cfg)
	defer runLink(t, l)()
	waitTable(t, l, "public.a", link.TableReplicating)
	converge(t, src, store, "SELECT count(*)::text || ':' || sum(extra)::text FROM a",
		"SELECT CAST(count(*) AS VARCHAR) || ':' || CAST(sum(extra) AS VARCHAR) FROM public.a")
	converge(t, src, store, srcDigest+"a", dstDigest+"public.a")
}

// tableOID is a DuckDB table's oid (a table dropped and created again gets a new one).
func tableOID(t *testing.T, store *target.Store, name string) int64 {
	t.Helper()
	var oid int64
	if err := store.DB().QueryRow("SELECT table_oid FROM duckdb_tables() WHERE schema_name = 'public' AND table_name = $1", name).Scan(&oid); err != nil {
		t.Fatal(err)
	}
	return oid
}

// TestLinkTableAddedLaterAndFailedAlone: a table added to a link that already streams gets its existing rows
// (from a snapshot) and then its changes, without the other table starting over; a schema change on one table
// that cannot be followed fails that table only, for good, while the other goes on.
func TestLinkTableAddedLaterAndFailedAlone(t *testing.T) {
	ctx := context.Background()
	pg, src, store := sourceAndDuckDB(t,
		"CREATE TABLE a(id int PRIMARY KEY, note text)",
		"CREATE TABLE b(id int PRIMARY KEY, note text)",
		"INSERT INTO a SELECT i, 'a' || i FROM generate_series(1, 500) i",
		"INSERT INTO b SELECT i, 'b' || i FROM generate_series(1, 700) i",
	)
	cfg := link.Config{Name: "ab", Source: dsn(pg), Target: store, Tables: []link.TableMapping{{SourceTable: "a"}}}
	stop := runLink(t, link.New(cfg))
	converge(t, src, store, srcDigest+"a", dstDigest+"public.a")
	stop()
	exec(t, src, "INSERT INTO a VALUES (501, 'while stopped')")
	exec(t, src, "UPDATE b SET note = 'b changed' WHERE id < 50")

	cfg.Tables = append(cfg.Tables, link.TableMapping{ID: "tb", SourceTable: "b"})
	l := link.New(cfg)
	stop = runLink(t, l)
	ts := waitTable(t, l, "public.b", link.TableReplicating)
	if ts.ID != "tb" || ts.Resync != "added to the link" {
		t.Fatalf("status of the added table: %+v", ts)
	}
	converge(t, src, store, srcDigest+"b", dstDigest+"public.b")
	converge(t, src, store, srcDigest+"a", dstDigest+"public.a")
	exec(t, src, "INSERT INTO b VALUES (701, 'streamed')")
	exec(t, src, "DELETE FROM b WHERE id = 1")
	converge(t, src, store, srcDigest+"b", dstDigest+"public.b")

	// A type change cannot be followed: b fails, a goes on.
	exec(t, src, "ALTER TABLE b ALTER COLUMN note TYPE varchar(100)")
	exec(t, src, "INSERT INTO b VALUES (702, 'after the type change')")
	exec(t, src, "INSERT INTO a VALUES (502, 'a goes on')")
	ts = waitTable(t, l, "public.b", link.TableFailed)
	if !strings.Contains(ts.Err, "type of column note changed") {
		t.Fatalf("failed table's error: %+v", ts)
	}
	converge(t, src, store, srcDigest+"a", dstDigest+"public.a")
	if st := l.Status(); st.Phase != "Streaming" {
		t.Fatalf("the link stopped with one table failed: %+v", st)
	}
	stop()

	// The failure holds across restarts; the other table still streams.
	l = link.New(cfg)
	stop = runLink(t, l)
	ts = waitTable(t, l, "public.b", link.TableFailed)
	if !strings.Contains(ts.Err, "type of column note changed") {
		t.Fatalf("failed table after a restart: %+v", ts)
	}
	exec(t, src, "INSERT INTO a VALUES (503, 'still')")
	converge(t, src, store, srcDigest+"a", dstDigest+"public.a")
	var n int
	if err := store.DB().QueryRow("SELECT count(*) FROM public.b WHERE id = 702").Scan(&n); err != nil || n != 0 {
		t.Fatalf("a change of the failed table was applied: %d %v", n, err)
	}
	stop()

	// Removing the table and adding it again (what edittables does to the target's state) recreates it with
	// the new type and synchronises it.
	if err := store.ForgetTables(ctx, "ab", "public.b"); err != nil {
		t.Fatal(err)
	}
	l = link.New(cfg)
	defer runLink(t, l)()
	waitTable(t, l, "public.b", link.TableReplicating)
	converge(t, src, store, srcDigest+"b", dstDigest+"public.b")
	exec(t, src, "INSERT INTO b VALUES (703, 'streams again')")
	converge(t, src, store, srcDigest+"b", dstDigest+"public.b")
}

// TestLinkSourceTableDroppedAndRecreated: a linked table that disappears from the source fails alone; recreated,
// it is synchronised afresh rather than trusted to continue.
func TestLinkSourceTableDroppedAndRecreated(t *testing.T) {
	pg, src, store := sourceAndDuckDB(t,
		"CREATE TABLE a(id int PRIMARY KEY, note text)",
		"CREATE TABLE c(id int PRIMARY KEY, note text)",
		"INSERT INTO c SELECT i, 'old ' || i FROM generate_series(1, 300) i",
	)
	cfg := link.Config{Name: "dc", Source: dsn(pg), Target: store, Tables: []link.TableMapping{{SourceTable: "a"}, {SourceTable: "c"}}}
	stop := runLink(t, link.New(cfg))
	converge(t, src, store, srcDigest+"c", dstDigest+"public.c")
	stop()

	exec(t, src, "DROP TABLE c")
	l := link.New(cfg)
	stop = runLink(t, l)
	if ts := waitTable(t, l, "public.c", link.TableFailed); !strings.Contains(ts.Err, "does not exist") {
		t.Fatalf("status of the dropped table: %+v", ts)
	}
	exec(t, src, "INSERT INTO a VALUES (1, 'a goes on')")
	converge(t, src, store, srcDigest+"a", dstDigest+"public.a")
	stop()

	exec(t, src, "CREATE TABLE c(id int PRIMARY KEY, note text)")
	exec(t, src, "INSERT INTO c SELECT i, 'new ' || i FROM generate_series(100, 150) i")
	l = link.New(cfg)
	defer runLink(t, l)()
	if ts := waitTable(t, l, "public.c", link.TableReplicating); ts.Resync != "added to the link" {
		t.Fatalf("status of the recreated table: %+v", ts)
	}
	converge(t, src, store, srcDigest+"c", dstDigest+"public.c")
}

// TestLinkInterruptedResyncFinishes: a resynchronisation interrupted after the new slot was created and one table
// merged (a restart, a failover, a target error) is finished by the next run — the table not merged yet gets
// every change made to it before and during the interruption, rather than streaming on from the new slot.
func TestLinkInterruptedResyncFinishes(t *testing.T) {
	pg, src, store := sourceAndDuckDB(t,
		"CREATE TABLE a(id int PRIMARY KEY, note text)",
		"CREATE TABLE b(id int PRIMARY KEY, note text)",
		"INSERT INTO a SELECT i, 'a' || i FROM generate_series(1, 300) i",
		"INSERT INTO b SELECT i, 'b' || i FROM generate_series(1, 300) i",
	)
	cfg := link.Config{Name: "ir", Source: dsn(pg), Target: store, Tables: []link.TableMapping{{SourceTable: "a"}, {SourceTable: "b"}}}
	stop := runLink(t, link.New(cfg))
	converge(t, src, store, srcDigest+"a", dstDigest+"public.a")
	converge(t, src, store, srcDigest+"b", dstDigest+"public.b")
	stop()

	exec(t, src, "SELECT pg_drop_replication_slot('fogo_link_ir')")
	exec(t, src, "UPDATE b SET note = note || ' before' WHERE id % 3 = 0")
	exec(t, src, "INSERT INTO b SELECT i, 'b new ' || i FROM generate_series(301, 350) i")
	exec(t, src, "DELETE FROM b WHERE id BETWEEN 10 AND 19")

	// The resync stops after merging a (tables merge in order): b is not merged yet.
	stopErr := errors.New("interrupted after merging a")
	link.SetAfterMerge(func(table string) error {
		if table == "public.a" {
			return stopErr
		}
		return nil
	})
	t.Cleanup(func() { link.SetAfterMerge(nil) })
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := link.New(cfg).Run(ctx); !errors.Is(err, stopErr) {
		t.Fatalf("the interrupted run ended with %v", err)
	}
	link.SetAfterMerge(nil)
	exec(t, src, "UPDATE b SET note = note || ' during' WHERE id % 5 = 0")
	exec(t, src, "INSERT INTO a VALUES (1001, 'during')")

	l := link.New(cfg)
	stop = runLink(t, l)
	waitTable(t, l, "public.b", link.TableReplicating)
	converge(t, src, store, srcDigest+"b", dstDigest+"public.b")
	converge(t, src, store, srcDigest+"a", dstDigest+"public.a")
	exec(t, src, "UPDATE b SET note = 'after' WHERE id = 1")
	exec(t, src, "UPDATE a SET note = 'after' WHERE id = 1")
	converge(t, src, store, srcDigest+"b", dstDigest+"public.b")
	converge(t, src, store, srcDigest+"a", dstDigest+"public.a")
	if pending, _, _, err := store.ResyncPending(ctx, "ir"); err != nil || pending {
		t.Fatalf("the resynchronisation is still recorded as pending: %v %v", pending, err)
	}
	stop()

	// Interrupted again, and the slot is then not the one the resync created (what a failover to an instance with
	// a copy of the old slot looks like): the resync starts over, and both tables get every change all the same.
	exec(t, src, "SELECT pg_drop_replication_slot('fogo_link_ir')")
	exec(t, src, "UPDATE b SET note = note || ' again' WHERE id % 4 = 0")
	link.SetAfterMerge(func(table string) error {
		if table == "public.a" {
			return stopErr
		}
		return nil
	})
	if err := link.New(cfg).Run(ctx); !errors.Is(err, stopErr) {
		t.Fatalf("the second interrupted run ended with %v", err)
	}
	link.SetAfterMerge(nil)
	exec(t, src, "SELECT pg_drop_replication_slot('fogo_link_ir')")
	exec(t, src, "UPDATE b SET note = note || ' between' WHERE id % 6 = 0")
	exec(t, src, "UPDATE a SET note = note || ' between' WHERE id % 6 = 0") // a was merged before: its changes count
	exec(t, src, "SELECT pg_create_logical_replication_slot('fogo_link_ir', 'pgoutput')")
	exec(t, src, "UPDATE b SET note = note || ' later' WHERE id % 9 = 0")
	l = link.New(cfg)
	defer runLink(t, l)()
	waitTable(t, l, "public.b", link.TableReplicating)
	converge(t, src, store, srcDigest+"b", dstDigest+"public.b")
	converge(t, src, store, srcDigest+"a", dstDigest+"public.a")
}

// TestLinkInvalidatedSlotResyncs: a link's slot invalidated while the link was stopped (it retained more WAL than
// max_slot_wal_keep_size; PostgreSQL then answers "cannot read from logical replication slot") is resynchronised
// like a missing one, the table's status says why, and every row ends right.
func TestLinkInvalidatedSlotResyncs(t *testing.T) {
	ctx := context.Background()
	pg, src, store := sourceAndDuckDB(t,
		"CREATE TABLE a(id int PRIMARY KEY, note text)",
		"INSERT INTO a SELECT i, 'a' || i FROM generate_series(1, 500) i",
	)
	// 1MB is less than a segment: nothing beyond the current segment is kept for a slot.
	if err := pg.Configure(instance.Settings{Port: pg.Port, Extra: map[string]string{"max_slot_wal_keep_size": "1MB", "wal_keep_size": "0"}}); err != nil {
		t.Fatal(err)
	}
	exec(t, src, "SELECT pg_reload_conf()")
	cfg := link.Config{Name: "inv", Source: dsn(pg), Target: store, Tables: []link.TableMapping{{SourceTable: "a"}}}
	stop := runLink(t, link.New(cfg))
	converge(t, src, store, srcDigest+"a", dstDigest+"public.a")
	stop()

	exec(t, src, "UPDATE a SET note = note || ' changed' WHERE id % 7 = 0")
	exec(t, src, "DELETE FROM a WHERE id BETWEEN 50 AND 80")
	for k := 0; k < 3; k++ { // three segments of WAL
		exec(t, src, fmt.Sprintf("INSERT INTO a VALUES (%d, 'while stopped')", 1000+k))
		exec(t, src, "SELECT pg_switch_wal()")
	}
	exec(t, src, "CHECKPOINT")
	var status string
	if err := src.QueryRow(ctx, "SELECT wal_status FROM pg_replication_slots WHERE slot_name = 'fogo_link_inv'").Scan(&status); err != nil || status != "lost" {
		t.Fatalf("the slot was not invalidated: %q %v", status, err)
	}

	l := link.New(cfg)
	defer runLink(t, l)()
	ts := waitTable(t, l, "public.a", link.TableReplicating)
	if !strings.Contains(ts.Resync, "invalidated") {
		t.Fatalf("the table's status does not say its slot was invalidated: %+v", ts)
	}
	converge(t, src, store, srcDigest+"a", dstDigest+"public.a")
	exec(t, src, "UPDATE a SET note = 'after' WHERE id = 1")
	converge(t, src, store, srcDigest+"a", dstDigest+"public.a")
}
