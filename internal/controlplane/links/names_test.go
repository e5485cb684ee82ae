package links

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/fogo-db/fogo/internal/controlplane/store"
	"github.com/fogo-db/fogo/internal/errcatalog"
	"github.com/fogo-db/fogo/internal/link"
	"github.com/fogo-db/fogo/internal/secrets"
	"github.com/fogo-db/fogo/internal/testutil/pgtest"
)

// testCatalog is a catalog over a fresh store, for links on plain sources (no cluster).
func testCatalogNames(t *testing.T) *Catalog {
	t.Helper()
	keys, err := secrets.Generate()
	if err != nil {
		t.Fatal(err)
	}
	data := t.TempDir()
	st, err := store.Open(filepath.Join(data, "state.db"), keys)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	dirs, err := NewTargetDirs(data, nil)
	if err != nil {
		t.Fatal(err)
	}
	m := New(st, nil, slog.New(slog.NewTextHandler(io.Discard, nil)))
	t.Cleanup(m.StopAll)
	return NewCatalog(m, dirs)
}

// TestLinkNames: a link name outside 1-128 letters, digits, '-', '_', '.' is refused with InvalidParameterValue;
// the slot names of links whose names collided before (x/y_z and x_y/z, a-b and a_b) differ, fit PostgreSQL's 63
// bytes, and a link stored without a slot name keeps the old one.
func TestLinkNames(t *testing.T) {
	for _, bad := range []string{"", "a/b", "a b", "é", strings.Repeat("a", 129)} {
		if validName.MatchString(bad) {
			t.Errorf("name %q is accepted", bad)
		}
	}
	seen := map[string]string{}
	for _, k := range []string{"x/y_z", "x_y/z", "w/a-b", "w/a_b", "w/a.b", "w/" + strings.Repeat("a", 128), "w/" + strings.Repeat("a", 127) + "b"} {
		s := link.SlotNameFor(k)
		if len(s) > 63 || strings.Trim(s, "abcdefghijklmnopqrstuvwxyz0123456789_") != "" {
			t.Errorf("slot name %q of %q is not a valid PostgreSQL name", s, k)
		}
		if o, ok := seen[s]; ok {
			t.Errorf("%q and %q share slot %s", o, k, s)
		}
		seen[s] = k
	}
	if got := link.New(link.Config{Name: "x/y_z"}).SlotName(); got != "fogo_link_x_y_z" {
		t.Errorf("a link without a stored slot name uses %s, not its old slot fogo_link_x_y_z", got)
	}
}

// TestCollidingLinkNames: two link connections whose names mapped to the same slot and publication before
// (workspace x, link y_z and workspace x_y, link z) run side by side on one source, each on its own slot; and a
// name that is not ARM-style is refused at PUT with a 400 InvalidParameterValue.
func TestCollidingLinkNames(t *testing.T) {
	pg := pgtest.NewPrimary(t)
	ctx := context.Background()
	src, err := pg.Connect(ctx, "postgres")
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close(ctx)
	for _, sql := range []string{
		"CREATE TABLE a (id int PRIMARY KEY, note text)", "CREATE TABLE b (id int PRIMARY KEY, note text)",
		"INSERT INTO a SELECT i, 'a' FROM generate_series(1, 10) i", "INSERT INTO b SELECT i, 'b' FROM generate_series(1, 20) i",
	} {
		if _, err := src.Exec(ctx, sql); err != nil {
			t.Fatal(err)
		}
	}
	c := testCatalogNames(t)
	dsn := fmt.Sprintf("host=127.0.0.1 port=%d user=%s password=%s dbname=postgres sslmode=disable", pg.Port, pg.SuperUser, pg.SuperPassword)
	type lk struct{ ws, name, table string }
	lks := []lk{{"x", "y_z", "a"}, {"x_y", "z", "b"}}
	for _, l := range lks {
		for _, ls := range []LinkedService{{Workspace: l.ws, Name: "src", Type: TypePostgreSQL, ConnectionString: dsn},
			{Workspace: l.ws, Name: "duck", Type: TypeDuckDB, Path: l.ws + ".duckdb"}} {
			if err := c.PutLinkedService(ls); err != nil {
				t.Fatal(err)
			}
		}
	}
	_, err = c.PutConnection(LinkConnection{Workspace: "x", Name: "y/z", SourceService: "src", TargetService: "duck"})
	if e, ok := err.(*errcatalog.Error); !ok || e.Code != "InvalidParameterValue" {
		t.Fatalf("PUT of link y/z: %v, want InvalidParameterValue", err)
	}
	for _, l := range lks {
		if _, err := c.PutConnection(LinkConnection{Workspace: l.ws, Name: l.name, SourceService: "src", TargetService: "duck"}); err != nil {
			t.Fatal(err)
		}
		if _, err := c.EditTables(l.ws, l.name, []LinkTable{{ID: l.table, SourceTable: l.table}}, []string{"add"}); err != nil {
			t.Fatal(err)
		}
		if err := c.Start(l.ws, l.name); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := src.Exec(ctx, "INSERT INTO a SELECT i, 'a' FROM generate_series(11, 15) i; INSERT INTO b SELECT i, 'b' FROM generate_series(21, 30) i"); err != nil {
		t.Fatal(err)
	}
	want := map[string]int{"a": 15, "b": 30}
	deadline := time.Now().Add(60 * time.Second)
	for _, l := range lks {
		for {
			var n int
			st := c.m.Target(key(l.ws, l.name))
			err := fmt.Errorf("link %s/%s is not running", l.ws, l.name)
			if st != nil {
				err = st.DB().QueryRow("SELECT count(*) FROM public." + l.table).Scan(&n)
			}
			if err == nil && n == want[l.table] {
				break
			}
			if time.Now().After(deadline) {
				s, _ := c.Status(l.ws, l.name)
				t.Fatalf("link %s/%s: %d rows of %s (%v), want %d; status %+v", l.ws, l.name, n, l.table, err, want[l.table], s)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	var slots int
	if err := src.QueryRow(ctx, "SELECT count(DISTINCT slot_name) FROM pg_replication_slots WHERE slot_name LIKE 'fogo_link_%'").Scan(&slots); err != nil || slots != 2 {
		t.Fatalf("%d link slots on the source (%v), want 2", slots, err)
	}
	for _, l := range lks { // the rows may all have come with the snapshot: streaming follows it
		for {
			s, _ := c.Status(l.ws, l.name)
			if s.Phase == "Streaming" && s.Err == "" {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("link %s/%s: %+v", l.ws, l.name, s)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
}

// TestLegacySlotCollisionRefused: two links stored before slot names were made unique (no stored slot name), whose
// names map to one slot on one source, are not run side by side: the second start is refused, naming the first.
func TestLegacySlotCollisionRefused(t *testing.T) {
	c := testCatalogNames(t)
	src := "host=127.0.0.1 port=1 dbname=postgres sslmode=disable connect_timeout=1" // never reached
	if err := c.m.Start(Def{Name: "x/y_z", Source: src}); err != nil {
		t.Fatal(err)
	}
	err := c.m.Start(Def{Name: "x_y/z", Source: src})
	if err == nil || !strings.Contains(err.Error(), "x/y_z") {
		t.Fatalf("second link on slot fogo_link_x_y_z: %v", err)
	}
	if err := c.m.Start(Def{Name: "x_y/z", Source: src, Slot: link.SlotNameFor("x_y/z")}); err != nil {
		t.Fatalf("a link with a slot of its own: %v", err)
	}
}
