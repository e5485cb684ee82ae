package link_test

import (
	"context"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/fogo-db/fogo/internal/link"
	"github.com/fogo-db/fogo/internal/link/target"
	"github.com/fogo-db/fogo/internal/testutil/pgtest"
)

// TestLinkDDLInsideTransaction: a source transaction that updates a column, drops it, inserts, adds a column and
// sets it lands whole in the target — on DuckDB (which refuses to commit an ALTER of a table after an UPDATE of
// its rows in one transaction) and on PostgreSQL — and the link streams on.
func TestLinkDDLInsideTransaction(t *testing.T) {
	pg, src, duck := sourceAndDuckDB(t,
		"CREATE TABLE t(id int PRIMARY KEY, a int, b int)",
		"INSERT INTO t SELECT i, i * 10, 0 FROM generate_series(1, 5) i",
	)
	dst := pgtest.NewPrimary(t)
	pgStore, err := target.OpenPostgres(dsn(dst))
	if err != nil {
		t.Fatal(err)
	}
	defer pgStore.Close()
	for name, store := range map[string]*target.Store{"duck": duck, "pg": pgStore} {
		defer runLink(t, link.New(link.Config{Name: name, Source: dsn(pg), Target: store, Tables: []link.TableMapping{{SourceTable: "t"}}}))()
	}
	const srcQ = "SELECT count(*)::text || ':' || md5(string_agg(id::text || ':' || coalesce(b::text, '~'), ',' ORDER BY id)) FROM t"
	const dstQ = "SELECT CAST(count(*) AS VARCHAR) || ':' || md5(string_agg(CAST(id AS VARCHAR) || ':' || coalesce(CAST(b AS VARCHAR), '~'), ',' ORDER BY id)) FROM public.t"
	for _, store := range []*target.Store{duck, pgStore} {
		converge(t, src, store, srcQ, dstQ)
	}
	exec(t, src, `BEGIN;
		UPDATE t SET b = a;
		ALTER TABLE t DROP COLUMN a;
		INSERT INTO t VALUES (100, 7);
		ALTER TABLE t ADD COLUMN c text;
		UPDATE t SET c = 'x' || id WHERE id <= 3;
		DELETE FROM t WHERE id = 4;
		COMMIT`)
	exec(t, src, "INSERT INTO t VALUES (200, 8, 'after')")
	const srcC = "SELECT count(*)::text || ':' || md5(string_agg(id::text || ':' || coalesce(b::text, '~') || ':' || coalesce(c, '~'), ',' ORDER BY id)) FROM t"
	const dstC = "SELECT CAST(count(*) AS VARCHAR) || ':' || md5(string_agg(CAST(id AS VARCHAR) || ':' || coalesce(CAST(b AS VARCHAR), '~') || ':' || coalesce(c, '~'), ',' ORDER BY id)) FROM public.t"
	for _, store := range []*target.Store{duck, pgStore} {
		converge(t, src, store, srcC, dstC)
		var n int
		if err := store.DB().QueryRowContext(context.Background(),
			"SELECT count(*) FROM information_schema.columns WHERE table_schema = 'public' AND table_name = 't' AND column_name = 'a'").Scan(&n); err != nil || n != 0 {
			t.Fatalf("the dropped column is still in the target (%d, %v)", n, err)
		}
	}
}

// TestLinkRenamedTableFails: a linked table renamed on the source fails by itself, saying it was renamed and to
// what, instead of reporting Replicating while its changes are dropped; the other table goes on.
func TestLinkRenamedTableFails(t *testing.T) {
	pg, src, store := sourceAndDuckDB(t,
		"CREATE TABLE a(id int PRIMARY KEY, note text)",
		"CREATE TABLE t(id int PRIMARY KEY, note text)",
		"INSERT INTO t VALUES (1, 'one')",
	)
	cfg := link.Config{Name: "rn", Source: dsn(pg), Target: store,
		Tables: []link.TableMapping{{SourceTable: "a"}, {SourceTable: "t"}}}
	l := link.New(cfg)
	stop := runLink(t, l)
	converge(t, src, store, srcDigest+"t", dstDigest+"public.t")
	exec(t, src, "ALTER TABLE t RENAME TO t2")
	exec(t, src, "INSERT INTO t2 VALUES (2, 'two')")
	exec(t, src, "INSERT INTO a VALUES (1, 'a')")
	ts := waitTable(t, l, "public.t", link.TableFailed)
	if !strings.Contains(ts.Err, "renamed to public.t2") {
		t.Fatalf("the failure does not name the rename: %+v", ts)
	}
	converge(t, src, store, srcDigest+"a", dstDigest+"public.a")
	if st := l.Status(); st.Phase != "Streaming" {
		t.Fatalf("the link stopped: %+v", st)
	}
	stop()
	// The next run does not find the table by its name: failed still, the other table streaming.
	l = link.New(cfg)
	defer runLink(t, l)()
	waitTable(t, l, "public.t", link.TableFailed)
	exec(t, src, "INSERT INTO a VALUES (2, 'b')")
	converge(t, src, store, srcDigest+"a", dstDigest+"public.a")
}

// rowsOf reads one text column of every row of a query, sorted.
func rowsOf(ctx context.Context, q func() ([]string, error)) (string, error) {
	rows, err := q()
	if err != nil {
		return "", err
	}
	sort.Strings(rows)
	return strings.Join(rows, ","), nil
}

// TestLinkKeylessFullIdentity: a table without a key but REPLICA IDENTITY FULL keeps duplicate rows and NULLs;
// a delete or an update of one of two identical rows changes exactly one — on DuckDB and PostgreSQL targets — and
// another table of the link goes on.
func TestLinkKeylessFullIdentity(t *testing.T) {
	ctx := context.Background()
	pg, src, duck := sourceAndDuckDB(t,
		"CREATE TABLE a(id int PRIMARY KEY, note text)",
		"CREATE TABLE n(x int, y text)",
		"ALTER TABLE n REPLICA IDENTITY FULL",
		"INSERT INTO n VALUES (1, 'one'), (1, 'one'), (2, NULL), (NULL, NULL), (NULL, NULL)",
	)
	dst := pgtest.NewPrimary(t)
	pgStore, err := target.OpenPostgres(dsn(dst))
	if err != nil {
		t.Fatal(err)
	}
	defer pgStore.Close()
	stores := map[string]*target.Store{"duck": duck, "pg": pgStore}
	start := func() (stops []func()) {
		for name, store := range stores {
			stops = append(stops, runLink(t, link.New(link.Config{Name: name, Source: dsn(pg), Target: store,
				Tables: []link.TableMapping{{SourceTable: "a"}, {SourceTable: "n"}}})))
		}
		return stops
	}
	stops := start()
	same := func(what string) {
		t.Helper()
		want, err := rowsOf(ctx, func() ([]string, error) {
			rows, err := src.Query(ctx, "SELECT coalesce(x::text, '~') || ':' || coalesce(y, '~') FROM n")
			if err != nil {
				return nil, err
			}
			return pgx.CollectRows(rows, pgx.RowTo[string])
		})
		if err != nil {
			t.Fatal(err)
		}
		for name, store := range stores {
			deadline := time.Now().Add(30 * time.Second)
			for {
				got, err := rowsOf(ctx, func() ([]string, error) {
					rows, err := store.DB().QueryContext(ctx, "SELECT coalesce(CAST(x AS VARCHAR), '~') || ':' || coalesce(y, '~') FROM public.n")
					if err != nil {
						return nil, err
					}
					defer rows.Close()
					var out []string
					for rows.Next() {
						var s string
						if err := rows.Scan(&s); err != nil {
							return nil, err
						}
						out = append(out, s)
					}
					return out, rows.Err()
				})
				if err == nil && got == want {
					break
				}
				if time.Now().After(deadline) {
					t.Fatalf("%s: %s: target %q (%v), source %q", what, name, got, err, want)
				}
				time.Sleep(50 * time.Millisecond)
			}
		}
	}
	same("snapshot")
	exec(t, src, "INSERT INTO n VALUES (3, 'three'), (3, 'three'), (NULL, 'z'), (4, NULL)")
	same("inserts")
	exec(t, src, "DELETE FROM n WHERE ctid = (SELECT ctid FROM n WHERE x = 1 LIMIT 1)")
	same("delete one of two identical rows")
	exec(t, src, "UPDATE n SET y = 'three again' WHERE ctid = (SELECT ctid FROM n WHERE x = 3 LIMIT 1)")
	same("update one of two identical rows")
	exec(t, src, "DELETE FROM n WHERE ctid = (SELECT ctid FROM n WHERE x IS NULL AND y IS NULL LIMIT 1)")
	exec(t, src, "UPDATE n SET x = 5 WHERE ctid = (SELECT ctid FROM n WHERE x IS NULL AND y IS NULL LIMIT 1)")
	exec(t, src, "UPDATE n SET y = 'two' WHERE x = 2")
	same("NULLs")
	exec(t, src, "INSERT INTO a VALUES (1, 'a')")
	for _, store := range stores {
		converge(t, src, store, srcDigest+"a", dstDigest+"public.a")
	}
	// Resynchronised without the slots: the keyless table is emptied and filled again in one transaction.
	for _, stop := range stops {
		stop()
	}
	exec(t, src, "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name LIKE 'fogo_link_%'")
	exec(t, src, "INSERT INTO n VALUES (3, 'three'), (NULL, NULL)")
	exec(t, src, "DELETE FROM n WHERE x = 5")
	start()
	same("resync")
}
