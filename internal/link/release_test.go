package link_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/fogo-db/fogo/internal/link"
	"github.com/fogo-db/fogo/internal/postgres/logrepl"
)

// waitFor polls cond (a fact) until it holds, for at most 30 seconds.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(30 * time.Second); !cond(); time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not after 30s", what)
		}
	}
}

// TestLinkStopReleasesItsSlot: once a run has returned, its walsender is gone, so the slot is free at once — for
// the next run, or for whoever stopped the link to drop it (before, the walsender was still exiting and held it).
func TestLinkStopReleasesItsSlot(t *testing.T) {
	pg, src, store := sourceAndDuckDB(t, "CREATE TABLE a(id int PRIMARY KEY, note text)")
	cfg := link.Config{Name: "rel", Source: dsn(pg), Target: store, Tables: []link.TableMapping{{SourceTable: "a"}}}
	for round := 0; round < 10; round++ {
		exec(t, src, "INSERT INTO a VALUES ("+strings.Repeat("1", round+1)+", 'r')")
		l := link.New(cfg)
		stop := runLink(t, l)
		converge(t, src, store, srcDigest+"a", dstDigest+"public.a")
		stop()
		var active bool
		if err := src.QueryRow(context.Background(), "SELECT active FROM pg_replication_slots WHERE slot_name = 'fogo_link_rel'").Scan(&active); err != nil {
			t.Fatal(err)
		}
		if active {
			t.Fatalf("round %d: the slot is still active after the link stopped", round)
		}
	}
}

// TestLinkPublicationCreatedMeanwhile: the publication appears between the link's check and its CREATE
// PUBLICATION (another session creates it and commits while the link's statement waits for it): the link
// uses it instead of failing with a duplicate.
func TestLinkPublicationCreatedMeanwhile(t *testing.T) {
	ctx := context.Background()
	pg, src, store := sourceAndDuckDB(t, "CREATE TABLE a(id int PRIMARY KEY, note text)", "INSERT INTO a VALUES (1, 'x')")
	other, err := pg.Connect(ctx, "postgres")
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close(ctx)
	tx, err := other.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(ctx)
	if _, err := tx.Exec(ctx, "CREATE PUBLICATION fogo_link_pub FOR TABLE a"); err != nil {
		t.Fatal(err)
	}
	l := link.New(link.Config{Name: "pub", Source: dsn(pg), Target: store, Tables: []link.TableMapping{{SourceTable: "a"}}})
	runCtx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- l.Run(runCtx) }()
	defer func() {
		cancel()
		<-done
	}()
	// The link's CREATE PUBLICATION waits for the other session's (uncommitted) one.
	waitFor(t, "the link's CREATE PUBLICATION waiting for the other one", func() bool {
		var n int
		err := src.QueryRow(ctx, `SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'
			AND query LIKE 'CREATE PUBLICATION%' AND pid <> $1`, other.PgConn().PID()).Scan(&n)
		return err == nil && n > 0
	})
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		t.Fatalf("the link stopped: %v", err)
	default:
	}
	waitTable(t, l, "public.a", link.TableReplicating)
	exec(t, src, "INSERT INTO a VALUES (2, 'streamed')")
	converge(t, src, store, srcDigest+"a", dstDigest+"public.a")
	if st := l.Status(); st.Phase != "Streaming" {
		t.Fatalf("status: %+v", st)
	}
}

// TestLinkWaitsForItsSlot: a walsender that still holds the link's slot (an earlier run's, still exiting, or one
// whose client vanished) makes the link wait, saying so, and go on once it is gone — not fail because the slot it
// means to recreate "already exists".
func TestLinkWaitsForItsSlot(t *testing.T) {
	ctx := context.Background()
	pg, src, store := sourceAndDuckDB(t, "CREATE TABLE a(id int PRIMARY KEY, note text)", "INSERT INTO a VALUES (1, 'x')")
	exec(t, src, "SELECT pg_create_logical_replication_slot('fogo_link_ws', 'pgoutput')")
	holder, err := logrepl.Connect(ctx, dsn(pg))
	if err != nil {
		t.Fatal(err)
	}
	defer holder.Close(ctx)
	if err := holder.StartReplication(ctx, "fogo_link_ws", 0, []string{"fogo_link_ws"}, false); err != nil {
		t.Fatal(err)
	}
	// A fresh target: the link starts over, dropping and creating the slot.
	l := link.New(link.Config{Name: "ws", Source: dsn(pg), Target: store, Tables: []link.TableMapping{{SourceTable: "a"}}})
	runCtx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- l.Run(runCtx) }()
	defer func() {
		cancel()
		<-done
	}()
	waitFor(t, "the link saying it waits for the slot", func() bool {
		if st := l.Status(); st.Phase == "Failed" {
			t.Fatalf("the link failed instead of waiting for its slot: %s", st.Err)
		}
		return strings.Contains(l.Status().Err, "to release replication slot fogo_link_ws")
	})
	holder.Close(ctx)
	waitTable(t, l, "public.a", link.TableReplicating)
	exec(t, src, "INSERT INTO a VALUES (2, 'streamed')")
	converge(t, src, store, srcDigest+"a", dstDigest+"public.a")
	if st := l.Status(); st.Phase != "Streaming" || st.Err != "" {
		t.Fatalf("status: %+v", st)
	}
	var n int
	if err := src.QueryRow(ctx, "SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'fogo_link_ws' AND active_pid <> $1", holder.PgConn().PID()).Scan(&n); err != nil || n != 1 {
		t.Fatalf("the link does not stream from its slot: %d %v", n, err)
	}
}
