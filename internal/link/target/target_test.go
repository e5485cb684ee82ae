package target

import (
	"context"
	"fmt"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/fogo-db/fogo/internal/postgres/lsn"
	"github.com/fogo-db/fogo/internal/testutil/pgtest"
)

// statementsOnly hides a dialect's bulk path: Apply falls back to multi-row statements.
type statementsOnly struct{ dialect }

func openDuck(t *testing.T, bulk bool) *Store {
	t.Helper()
	s, err := OpenDuckDB(filepath.Join(t.TempDir(), "t.duckdb"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	if _, ok := s.dialect.(bulkWriter); !ok {
		t.Fatal("the DuckDB dialect has no bulk path")
	}
	if !bulk {
		s.dialect = statementsOnly{s.dialect}
	}
	return s
}

func openPostgres(t testing.TB) *Store {
	t.Helper()
	pg := pgtest.NewPrimary(t)
	s, err := OpenPostgres(fmt.Sprintf("host=127.0.0.1 port=%d user=%s password=%s dbname=postgres sslmode=disable",
		pg.Port, pg.SuperUser, pg.SuperPassword))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func itemsTable() *Table {
	return &Table{Schema: "analytics", Name: "items", Key: []string{"id"}, Columns: []Column{
		{"id", "bigint"}, {"name", "text"}, {"amount", "numeric(12,2)"}, {"at", "timestamp with time zone"},
		{"day", "date"}, {"u", "uuid"}, {"raw", "bytea"}, {"tags", "integer[]"}, {"flag", "boolean"}, {"doc", "jsonb"},
		{"qty", "smallint"},
	}}
}

// row returns a full row for id whose values depend on tag; "null" gives NULL in every column but the key.
// Booleans come as the stream sends them (t/f) and as a snapshot's ::text reads them (true/false).
func row(id int, tag string) []Value {
	if tag == "null" {
		r := []Value{{Text: fmt.Sprint(id)}}
		for range 10 {
			r = append(r, Value{Null: true})
		}
		return r
	}
	return []Value{
		{Text: fmt.Sprint(id)}, {Text: tag + fmt.Sprint(id)}, {Text: fmt.Sprintf("%d.5", id)},
		{Text: fmt.Sprintf("2026-11-22 10:%02d:00.123456+02", id)}, {Text: fmt.Sprintf("2026-11-%02d", id)},
		{Text: fmt.Sprintf("a0eebc99-9c0b-4ef8-bb6d-6bb9bd3800%02d", id)}, {Text: fmt.Sprintf(`\xdead%02x`, id)},
		{Text: fmt.Sprintf("{%d,NULL,3}", id)}, {Text: []string{"false", "t", "true", "f"}[id%4]}, {Text: fmt.Sprintf(`{"k": "%s"}`, tag)},
		{Text: fmt.Sprint(-3 * id)},
	}
}

func ins(t *Table, id int, tag string) Change {
	return Change{Kind: Insert, Table: t, New: row(id, tag)}
}

func key(id int) []Value {
	r := []Value{{Text: fmt.Sprint(id)}}
	for range 10 {
		r = append(r, Value{Unchanged: true})
	}
	return r
}

func apply(t *testing.T, s *Store, cp lsn.LSN, changes ...Change) {
	t.Helper()
	if err := s.Apply(context.Background(), "l", changes, cp); err != nil {
		t.Fatal(err)
	}
}

// scenario applies a first batch, then one that mixes upserts conflicting with existing rows, duplicate keys
// within a run of inserts, NULLs, and updates, deletes and re-inserts of keys inserted earlier in the same batch.
func scenario(t *testing.T, s *Store) *Table {
	t.Helper()
	tb := itemsTable()
	if cp := checkpointOf(t, s); cp != 0 { // creates the checkpoint table, as a link's start does
		t.Fatalf("checkpoint %s in a new store", cp)
	}
	if err := s.EnsureTable(context.Background(), tb, true); err != nil {
		t.Fatal(err)
	}
	apply(t, s, 100, ins(tb, 1, "old"), ins(tb, 2, "old"), ins(tb, 3, "old"))
	renamed := row(6, "upd")
	renamed[6] = Value{Unchanged: true} // a TOASTed value the update did not send: kept
	moved := row(10, "moved")
	apply(t, s, 200,
		ins(tb, 1, "new"), ins(tb, 4, "first"), ins(tb, 5, "a"), ins(tb, 6, "a"), ins(tb, 4, "second"), ins(tb, 7, "null"),
		Change{Kind: Update, Table: tb, New: renamed},
		Change{Kind: Delete, Table: tb, Old: key(6)}, // inserted, updated and deleted in one batch: gone
		ins(tb, 8, "b"), ins(tb, 9, "b"),
		Change{Kind: Update, Table: tb, Old: key(9), New: moved}, // the key changes: 9 becomes 10
		Change{Kind: Delete, Table: tb, Old: key(2)},
		ins(tb, 2, "again"), ins(tb, 11, "b"), // deleted, then inserted again in the same batch
		ins(tb, 12, "c"), // a run of one insert
	)
	return tb
}

// readRows runs a query of the query extension that may read tables.
func readRows(s *Store, sql string, tables ...TableName) ([][]any, error) {
	res, err := s.Query(context.Background(), QueryRequest{SQL: sql, Link: "test/link", Tables: tables})
	if err != nil {
		return nil, err
	}
	return res.Rows, nil
}

// portable reads what both stores show the same way: id, name, amount, raw and flag.
func portable(t *testing.T, s *Store) []string {
	t.Helper()
	rows, err := readRows(s, `SELECT CAST(id AS VARCHAR) || ':' || coalesce(name, '~') || ':' ||
		coalesce(CAST(amount AS VARCHAR), '~') || ':' || coalesce(CAST(octet_length(raw) AS VARCHAR), '~') || ':' ||
		coalesce(CAST(flag AS VARCHAR), '~') FROM analytics.items ORDER BY id`, TableName{"analytics", "items"})
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, r := range rows {
		out = append(out, fmt.Sprint(r[0]))
	}
	return out
}

// everything reads every column as the store converted it.
func everything(t *testing.T, s *Store) [][]any {
	t.Helper()
	rows, err := readRows(s, "SELECT * FROM analytics.items ORDER BY id", TableName{"analytics", "items"})
	if err != nil {
		t.Fatal(err)
	}
	return rows
}

func checkpointOf(t *testing.T, s *Store) lsn.LSN {
	t.Helper()
	cp, err := s.Checkpoint(context.Background(), "l")
	if err != nil {
		t.Fatal(err)
	}
	return cp
}

var wantScenario = []string{
	"1:new1:1.50:3:true", "2:again2:2.50:3:true", "3:old3:3.50:3:false", "4:second4:4.50:3:false", "5:a5:5.50:3:true",
	"7:~:~:~:~", "8:b8:8.50:3:false", "10:moved10:10.50:3:true", "11:b11:11.50:3:false", "12:c12:12.50:3:false",
}

func TestApplyUpsertsInOrder(t *testing.T) {
	stores := map[string]*Store{"duckdb bulk": openDuck(t, true), "duckdb statements": openDuck(t, false)}
	if !testing.Short() {
		stores["postgres"] = openPostgres(t)
	}
	for name, s := range stores {
		scenario(t, s)
		if got := portable(t, s); !reflect.DeepEqual(got, wantScenario) {
			t.Errorf("%s: rows\n%s\nwant\n%s", name, strings.Join(got, "\n"), strings.Join(wantScenario, "\n"))
		}
		if cp := checkpointOf(t, s); cp != 200 {
			t.Errorf("%s: checkpoint %s, want 0/C8", name, cp)
		}
	}
	// The bulk path converts every type exactly as single statements do.
	bulk, stmts := everything(t, stores["duckdb bulk"]), everything(t, stores["duckdb statements"])
	if !reflect.DeepEqual(bulk, stmts) {
		t.Errorf("bulk path rows differ from statements:\n%v\n%v", bulk, stmts)
	}
	if len(bulk) != len(wantScenario) || bulk[0][6] == nil || fmt.Sprint(bulk[0][6]) != "\xde\xad\x01" {
		t.Errorf("bytea of row 1: %q", bulk[0][6])
	}
	if fmt.Sprint(bulk[0][7]) != "{1,NULL,3}" || fmt.Sprint(bulk[0][9]) != `{"k": "new"}` {
		t.Errorf("array or json kept as text: %q, %q", bulk[0][7], bulk[0][9])
	}
	if bulk[0][8] != true || bulk[0][10] != int16(-3) {
		t.Errorf("boolean or smallint of row 1: %#v, %#v", bulk[0][8], bulk[0][10])
	}
}

// A batch that fails part way leaves neither its data nor its checkpoint, whichever step fails: a cast in the
// bulk statement, a value the dialect rejects while appending, or a statement after bulk runs.
func TestApplyFailureLeavesNothing(t *testing.T) {
	stores := map[string]*Store{"duckdb bulk": openDuck(t, true), "duckdb statements": openDuck(t, false)}
	if !testing.Short() {
		stores["postgres"] = openPostgres(t)
	}
	for name, s := range stores {
		tb := scenario(t, s)
		before := everything(t, s)
		badDate := ins(tb, 24, "bad")
		badDate.New[4] = Value{Text: "not a date"}
		badSmallint := ins(tb, 26, "bad")
		badSmallint.New[10] = Value{Text: "40000"}
		badUpdate := Change{Kind: Update, Table: tb, New: key(3)}
		badUpdate.New[2] = Value{Text: "not a number"}
		run := []Change{ins(tb, 20, "ok"), ins(tb, 21, "ok"), ins(tb, 1, "overwritten"), {Kind: Delete, Table: tb, Old: key(4)}}
		bad := [][]Change{
			{ins(tb, 22, "ok"), badDate},
			{badDate, ins(tb, 22, "ok")},
			{ins(tb, 22, "ok"), badSmallint},
			{badUpdate},
		}
		if name != "postgres" { // PostgreSQL reads bytea in escape format too; DuckDB's param takes hex only
			badBytea := ins(tb, 25, "bad")
			badBytea.New[6] = Value{Text: "plain"}
			bad = append(bad, []Change{ins(tb, 22, "ok"), badBytea, ins(tb, 23, "ok")})
		}
		for i, b := range bad {
			batch := append(append([]Change{}, run...), b...)
			if err := s.Apply(context.Background(), "l", batch, 300); err == nil {
				t.Fatalf("%s, batch %d: a bad value was applied", name, i)
			}
			if after := everything(t, s); !reflect.DeepEqual(after, before) {
				t.Errorf("%s, batch %d: a failed batch left changes:\n%v", name, i, after)
			}
			if cp := checkpointOf(t, s); cp != 200 {
				t.Errorf("%s, batch %d: checkpoint %s after a failed batch, want 0/C8", name, i, cp)
			}
		}
		// The store is still usable: the good part of the batch applies.
		apply(t, s, 300, run...)
		if cp := checkpointOf(t, s); cp != 300 {
			t.Errorf("%s: checkpoint %s, want 0/12C", name, cp)
		}
		if got := portable(t, s); len(got) != len(wantScenario)+1 || got[0] != "1:overwritten1:1.50:3:true" {
			t.Errorf("%s: after the good batch: %v", name, got)
		}
	}
}

// Rows of a run with a key of several columns are told apart by every key column (12|3 is not 1|23), and a key
// repeated in the run keeps its last row.
func TestApplyCompositeKey(t *testing.T) {
	for _, bulk := range []bool{true, false} {
		s := openDuck(t, bulk)
		tb := &Table{Name: "pairs", Key: []string{"a", "b"}, Columns: []Column{{"a", "integer"}, {"b", "text"}, {"v", "text"}}}
		if err := s.EnsureTable(context.Background(), tb, true); err != nil {
			t.Fatal(err)
		}
		pair := func(a, b, v string) Change {
			return Change{Kind: Insert, Table: tb, New: []Value{{Text: a}, {Text: b}, {Text: v}}}
		}
		apply(t, s, 0, pair("12", "3", "first"), pair("1", "23", "other"), pair("12", "3", "second"), pair("1", "2", "x"))
		rows, err := readRows(s, "SELECT a || '|' || b || '=' || v FROM pairs ORDER BY a, b", TableName{"main", "pairs"})
		if err != nil {
			t.Fatal(err)
		}
		if got := fmt.Sprint(rows); got != "[[1|2=x] [1|23=other] [12|3=second]]" {
			t.Errorf("bulk=%v: %s", bulk, got)
		}
		// Deleted by both key columns: 12|3 and 1|2 go, 1|23 stays.
		gone := func(a, b string) Change {
			return Change{Kind: Delete, Table: tb, Old: []Value{{Text: a}, {Text: b}, {Null: true}}}
		}
		apply(t, s, 0, gone("12", "3"), gone("1", "2"), gone("1", "3"))
		rows, err = readRows(s, "SELECT a || '|' || b || '=' || v FROM pairs ORDER BY a, b", TableName{"main", "pairs"})
		if err != nil {
			t.Fatal(err)
		}
		if got := fmt.Sprint(rows); got != "[[1|23=other]]" {
			t.Errorf("bulk=%v, after deletes: %s", bulk, got)
		}
	}
}

// Runs of updates and deletes are written in bulk (an update that keeps its key and carries every column is an
// upsert of its new row; deletes by key go in one statement) and leave exactly what applying them one by one
// leaves: updates with an unchanged TOASTed value or a new key, a key deleted and inserted again, a key updated
// twice, deletes of absent keys.
func TestApplyRunsOfUpdatesAndDeletes(t *testing.T) {
	stores := map[string]*Store{"duckdb bulk": openDuck(t, true), "duckdb statements": openDuck(t, false)}
	if !testing.Short() {
		stores["postgres"] = openPostgres(t)
	}
	for name, s := range stores {
		tb := itemsTable()
		checkpointOf(t, s) // creates the checkpoint table, as a link's start does
		if err := s.EnsureTable(context.Background(), tb, true); err != nil {
			t.Fatal(err)
		}
		var first []Change
		for id := 1; id <= 20; id++ {
			first = append(first, ins(tb, id, "old"))
		}
		apply(t, s, 100, first...)
		upd := func(id int, tag string) Change { return Change{Kind: Update, Table: tb, New: row(id, tag)} }
		del := func(id int) Change { return Change{Kind: Delete, Table: tb, Old: key(id)} }
		toasted := row(11, "toast")
		toasted[1] = Value{Unchanged: true}
		var second []Change
		for id := 1; id <= 10; id++ {
			second = append(second, upd(id, "upd"))
		}
		second = append(second,
			upd(2, "twice"), // the same key twice in one run: the last wins
			Change{Kind: Update, Table: tb, New: toasted},
			Change{Kind: Update, Table: tb, Old: key(12), New: row(30, "moved")},
			Change{Kind: Update, Table: tb, Old: row(13, "old"), New: row(13, "full")}, // an old row that keeps the key
			del(14), del(15), del(16), del(99), del(15),
			ins(tb, 15, "back"),
			del(17), upd(18, "after"), del(19),
		)
		apply(t, s, 200, second...)
		want := []string{"1:upd1:1.50:3:true", "2:twice2:2.50:3:true", "3:upd3:3.50:3:false", "4:upd4:4.50:3:false",
			"5:upd5:5.50:3:true", "6:upd6:6.50:3:true", "7:upd7:7.50:3:false", "8:upd8:8.50:3:false", "9:upd9:9.50:3:true",
			"10:upd10:10.50:3:true", "11:old11:11.50:3:false", "13:full13:13.50:3:true", "15:back15:15.50:3:false",
			"18:after18:18.50:3:true", "20:old20:20.50:3:false", "30:moved30:30.50:3:true"}
		if got := portable(t, s); !reflect.DeepEqual(got, want) {
			t.Errorf("%s: rows\n%s\nwant\n%s", name, strings.Join(got, "\n"), strings.Join(want, "\n"))
		}
	}
	if bulk, stmts := everything(t, stores["duckdb bulk"]), everything(t, stores["duckdb statements"]); !reflect.DeepEqual(bulk, stmts) {
		t.Errorf("bulk path rows differ from statements:\n%v\n%v", bulk, stmts)
	}
}
