package link_test

import (
	"context"
	"strings"
	"testing"

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
