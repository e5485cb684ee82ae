package links

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/fogo-db/fogo/internal/controlplane/store"
	"github.com/fogo-db/fogo/internal/postgres/instance"
	"github.com/fogo-db/fogo/internal/secrets"
	"github.com/fogo-db/fogo/internal/testutil/pgtest"
)

// catalogWithLink starts a source with a table a, and a catalog with a link connection w/L1 of it into DuckDB,
// started and streaming.
func catalogWithLink(t *testing.T) (*instance.Instance, *pgx.Conn, *Catalog) {
	t.Helper()
	ctx := context.Background()
	pg := pgtest.NewPrimary(t)
	src, err := pg.Connect(ctx, "postgres")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { src.Close(context.Background()) })
	if _, err := src.Exec(ctx, "CREATE TABLE a(id int PRIMARY KEY, note text); INSERT INTO a VALUES (1, 'x')"); err != nil {
		t.Fatal(err)
	}
	st := testStore(t)
	dirs, _, _, _ := targetDirsFixture(t)
	m := New(st, nil, slog.Default())
	t.Cleanup(m.StopAll)
	c := NewCatalog(m, dirs)
	conn := fmt.Sprintf("host=127.0.0.1 port=%d user=%s password=%s dbname=postgres sslmode=disable", pg.Port, pg.SuperUser, pg.SuperPassword)
	for _, ls := range []LinkedService{{Workspace: "w", Name: "src", Type: TypePostgreSQL, ConnectionString: conn},
		{Workspace: "w", Name: "dst", Type: TypeDuckDB, Path: "t.duckdb"}} {
		if err := c.PutLinkedService(ls); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := c.PutConnection(LinkConnection{Workspace: "w", Name: "L1", SourceService: "src", TargetService: "dst"}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.EditTables("w", "L1", []LinkTable{{ID: "a", SourceTable: "a"}}, []string{"add"}); err != nil {
		t.Fatal(err)
	}
	if err := c.Start("w", "L1"); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		s, ok := c.Status("w", "L1")
		if ok && s.Phase == "Streaming" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the link never streamed: %+v", s)
		}
		time.Sleep(50 * time.Millisecond)
	}
	return pg, src, c
}

// TestDeleteDropsSlotAndPublication: deleting a link connection drops its replication slot and publication on the
// source (they would otherwise retain WAL for ever); deleting it again, or a link whose source is gone, succeeds.
func TestDeleteDropsSlotAndPublication(t *testing.T) {
	ctx := context.Background()
	pg, src, c := catalogWithLink(t)
	lc, err := c.Connection("w", "L1")
	if err != nil || lc.Slot == "" {
		t.Fatalf("the link's slot name: %q %v", lc.Slot, err)
	}
	owned := func() (slots, pubs int) {
		if err := src.QueryRow(ctx, "SELECT (SELECT count(*) FROM pg_replication_slots WHERE slot_name = $1), "+
			"(SELECT count(*) FROM pg_publication WHERE pubname = $1)", lc.Slot).Scan(&slots, &pubs); err != nil {
			t.Fatal(err)
		}
		return slots, pubs
	}
	if s, p := owned(); s != 1 || p != 1 {
		t.Fatalf("a streaming link has %d slots and %d publications", s, p)
	}
	if err := c.Delete("w", "L1"); err != nil {
		t.Fatal(err)
	}
	if s, p := owned(); s != 0 || p != 0 {
		t.Fatalf("after the delete the source still has %d slots and %d publications of the link", s, p)
	}
	if err := c.Delete("w", "L1"); err != nil {
		t.Fatalf("deleting again: %v", err)
	}

	// A link whose source cannot be reached is deleted all the same (the log says what is left).
	if _, err := c.PutConnection(LinkConnection{Workspace: "w", Name: "L2", SourceService: "src", TargetService: "dst"}); err != nil {
		t.Fatal(err)
	}
	if err := pg.Stop(ctx, instance.ShutdownFast); err != nil {
		t.Fatal(err)
	}
	if err := c.Delete("w", "L2"); err != nil {
		t.Fatalf("deleting a link whose source is down: %v", err)
	}
	if _, err := c.Connection("w", "L2"); err == nil {
		t.Fatal("the link whose source is down was not deleted")
	}
}

// TestSlotWAL: the WAL a link's slot holds is reported whether the link runs or not, and a slot beyond
// max_slot_wal_keep_size reports wal_status unreserved (the next checkpoint may invalidate it).
func TestSlotWAL(t *testing.T) {
	ctx := context.Background()
	pg, src, c := catalogWithLink(t)
	lc, err := c.Connection("w", "L1")
	if err != nil {
		t.Fatal(err)
	}
	if w, err := c.SlotWAL(lc); err != nil || !w.Exists || w.WALStatus != "reserved" {
		t.Fatalf("a streaming link's slot: %+v %v", w, err)
	}
	if err := pg.Configure(instance.Settings{Port: pg.Port, Extra: map[string]string{"max_slot_wal_keep_size": "1MB", "wal_keep_size": "0"}}); err != nil {
		t.Fatal(err)
	}
	if err := c.Stop("w", "L1"); err != nil {
		t.Fatal(err)
	}
	for _, q := range []string{"SELECT pg_reload_conf()", "INSERT INTO a VALUES (2, 'y')", "SELECT pg_switch_wal()",
		"INSERT INTO a VALUES (3, 'y')", "SELECT pg_switch_wal()", "INSERT INTO a VALUES (4, 'y')", "SELECT pg_switch_wal()"} {
		if _, err := src.Exec(ctx, q); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
	var segment int64 // fogo's instances use 1 MB segments (faster promotions); older ones 16 MB
	if err := src.QueryRow(ctx, "SELECT setting::bigint FROM pg_settings WHERE name = 'wal_segment_size'").Scan(&segment); err != nil {
		t.Fatal(err)
	}
	w, err := c.SlotWAL(lc)
	if err != nil || w.WALStatus != "unreserved" || w.RetainedBytes < 2*segment {
		t.Fatalf("a stopped link's slot after three segments: %+v %v", w, err)
	}
	if all := c.SlotsWAL(); !all["w/l1"].Exists || all["w/l1"].WALStatus != "unreserved" {
		t.Fatalf("SlotsWAL: %+v, want w/l1 unreserved", all)
	}
}

// TestDuckDBTargetPinnedToItsHost: in cluster mode a DuckDb target is made on the host of the controller that
// stored it; a controller on another host does not open (and so does not create) a file of that name on its own
// host, and says where the file is; the same controller opens it.
func TestDuckDBTargetPinnedToItsHost(t *testing.T) {
	st := testStore(t)
	dirs, _, _, _ := targetDirsFixture(t)
	m := New(st, nil, slog.Default())
	a, b := NewCatalog(m, dirs), NewCatalog(m, dirs)
	a.SetHost("ctl-a")
	b.SetHost("ctl-b")
	if err := a.PutLinkedService(LinkedService{Workspace: "w", Name: "dst", Type: TypeDuckDB, Path: "pinned.duckdb"}); err != nil {
		t.Fatal(err)
	}
	// Stored again through the other controller (same path): it stays pinned to ctl-a.
	if err := b.PutLinkedService(LinkedService{Workspace: "w", Name: "dst", Type: TypeDuckDB, Path: "pinned.duckdb"}); err != nil {
		t.Fatal(err)
	}
	lc := &LinkConnection{Workspace: "w", Name: "L", TargetService: "dst"}
	if _, err := b.openTarget(lc); err == nil || !strings.Contains(err.Error(), `controller "ctl-a"`) {
		t.Fatalf("opening a DuckDb target pinned to ctl-a from ctl-b: %v", err)
	}
	real, err := dirs.Resolve("pinned.duckdb")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(real); !os.IsNotExist(err) {
		t.Fatalf("the refused open made a file: %v", err)
	}
	tg, err := a.openTarget(lc)
	if err != nil {
		t.Fatalf("opening it from ctl-a: %v", err)
	}
	tg.Close()
}

// testStore is a fresh bbolt store with its secrets key, closed at the test's end.
func testStore(t *testing.T) *store.Store {
	t.Helper()
	keys, err := secrets.Generate()
	if err != nil {
		t.Fatal(err)
	}
	st, err := store.Open(filepath.Join(t.TempDir(), "state.db"), keys)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	return st
}
