package link_test

import (
	"context"
	"fmt"
	"path/filepath"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/fogo-db/fogo/internal/link"
	"github.com/fogo-db/fogo/internal/link/target"
	"github.com/fogo-db/fogo/internal/postgres/instance"
	"github.com/fogo-db/fogo/internal/testutil/pgtest"
)

func dsn(pg *instance.Instance) string {
	return fmt.Sprintf("host=127.0.0.1 port=%d user=%s password=%s dbname=postgres sslmode=disable", pg.Port, pg.SuperUser, pg.SuperPassword)
}

func exec(t *testing.T, conn *pgx.Conn, sql string) {
	t.Helper()
	if _, err := conn.Exec(context.Background(), sql); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
}

// runLink runs a link in the background and returns a function that stops it and waits.
func runLink(t *testing.T, l *link.Link) func() {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- l.Run(ctx) }()
	stopped := false
	stop := func() {
		if stopped {
			return
		}
		stopped = true
		cancel()
		if err := <-done; err != nil && err != context.Canceled {
			t.Errorf("link ended with: %v", err)
		}
	}
	t.Cleanup(stop)
	return stop
}

// converge waits until query gives the same single text value on source and target.
func converge(t *testing.T, src *pgx.Conn, dst *target.Store, srcQuery, dstQuery string) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		var want string
		if err := src.QueryRow(context.Background(), srcQuery).Scan(&want); err != nil {
			t.Fatal(err)
		}
		var got string
		err := dst.DB().QueryRow(dstQuery).Scan(&got)
		if err == nil && got == want {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("target did not converge: want %q, got %q (%v)", want, got, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

const digest = `SELECT coalesce(md5(string_agg(id::text || ':' || coalesce(note, '~') || ':' || coalesce(length(big)::text, '~') ||
	':' || coalesce(n::text, '~') || ':' || coalesce(flag::text, '~'), ',' ORDER BY id)), 'empty') FROM `

func TestLinkToDuckDB(t *testing.T) {
	pg := pgtest.NewPrimary(t)
	ctx := context.Background()
	src, err := pg.Connect(ctx, "postgres")
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close(ctx)
	exec(t, src, `CREATE TABLE items(id int PRIMARY KEY, note text, big text, n numeric(20,6), flag boolean,
		at timestamptz, day date, u uuid, doc jsonb, raw bytea, tags int[])`)
	exec(t, src, `INSERT INTO items SELECT i, 'note ' || i, NULL, i * 1.5, i % 2 = 0, '2026-11-22 10:00+00', '2026-11-22',
		gen_random_uuid(), '{"a": 1}', '\xdeadbeef', ARRAY[i, i+1] FROM generate_series(1, 1000) i`)
	exec(t, src, "CREATE TABLE nokey(x int)")

	store, err := target.OpenDuckDB(filepath.Join(t.TempDir(), "link.duckdb"))
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()

	bad := link.New(link.Config{Name: "bad", Source: dsn(pg), Target: store, Tables: []link.TableMapping{{SourceTable: "nokey"}}})
	if err := bad.Run(ctx); err == nil || bad.Status().Phase != "Failed" {
		t.Fatalf("a table without a key must be refused: %v", err)
	}

	l := link.New(link.Config{Name: "items", Source: dsn(pg), Target: store,
		Tables: []link.TableMapping{{SourceTable: "items", TargetSchema: "analytics"}}})
	stop := runLink(t, l)
	converge(t, src, store, digest+"items", "SELECT coalesce(md5(string_agg(CAST(id AS VARCHAR) || ':' || coalesce(note, '~') || ':' || coalesce(CAST(length(big) AS VARCHAR), '~') || ':' || coalesce(CAST(n AS VARCHAR), '~') || ':' || coalesce(CAST(flag AS VARCHAR), '~'), ',' ORDER BY id)), 'empty') FROM analytics.items")

	exec(t, src, "UPDATE items SET big = (SELECT string_agg(md5(i::text), '') FROM generate_series(1, 2000) i) WHERE id = 5")
	exec(t, src, "UPDATE items SET note = 'toast kept' WHERE id = 5") // big is unchanged and TOASTed: not sent
	exec(t, src, "DELETE FROM items WHERE id BETWEEN 10 AND 19")
	exec(t, src, "INSERT INTO items(id, note, flag) VALUES (5000, NULL, NULL)")
	var big int
	deadline := time.Now().Add(30 * time.Second)
	for {
		var note string
		err := store.DB().QueryRow("SELECT note, length(big) FROM analytics.items WHERE id = 5").Scan(&note, &big)
		if err == nil && note == "toast kept" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("update not applied: %v", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if big != 64000 {
		t.Fatalf("an update that left a TOASTed value unchanged overwrote it: length %d", big)
	}
	var n, raw, tags, doc string
	if err := store.DB().QueryRow(`SELECT CAST(n AS VARCHAR), hex(raw), tags, doc FROM analytics.items WHERE id = 3`).Scan(&n, &raw, &tags, &doc); err != nil {
		t.Fatal(err)
	}
	if n != "4.500000" || raw != "DEADBEEF" || tags != "{3,4}" || doc != `{"a": 1}` {
		t.Fatalf("types: n=%s raw=%s tags=%s doc=%s", n, raw, tags, doc)
	}
	// Every row, every type, compared with the source.
	converge(t, src, store, `SELECT md5(string_agg(id::text || ':' || coalesce(extract(epoch FROM at)::bigint::text, '~') || ':' ||
			coalesce(day::text, '~') || ':' || coalesce(u::text, '~') || ':' || coalesce(encode(raw, 'hex'), '~') || ':' ||
			coalesce(tags::text, '~') || ':' || coalesce(doc::text, '~') || ':' || coalesce(n::text, '~'), ',' ORDER BY id)) FROM items`,
		`SELECT md5(string_agg(CAST(id AS VARCHAR) || ':' || coalesce(CAST(CAST(epoch("at") AS BIGINT) AS VARCHAR), '~') || ':' ||
			coalesce(CAST(day AS VARCHAR), '~') || ':' || coalesce(CAST(u AS VARCHAR), '~') || ':' || coalesce(lower(hex(raw)), '~') || ':' ||
			coalesce(CAST(tags AS VARCHAR), '~') || ':' || coalesce(CAST(doc AS VARCHAR), '~') || ':' || coalesce(CAST(n AS VARCHAR), '~'), ',' ORDER BY id)) FROM analytics.items`)
	// Schema changes follow: ADD COLUMN and DROP COLUMN.
	exec(t, src, "ALTER TABLE items ADD COLUMN extra varchar(20)")
	exec(t, src, "INSERT INTO items(id, note, extra) VALUES (6000, 'with extra', 'hello')")
	exec(t, src, "ALTER TABLE items DROP COLUMN day")
	exec(t, src, "UPDATE items SET extra = 'later' WHERE id = 1")
	deadline = time.Now().Add(30 * time.Second)
	for {
		var extra string
		err := store.DB().QueryRow("SELECT extra FROM analytics.items WHERE id = 1").Scan(&extra)
		if err == nil && extra == "later" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("schema change not followed: %v", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	var extra string
	if err := store.DB().QueryRow("SELECT extra FROM analytics.items WHERE id = 6000").Scan(&extra); err != nil || extra != "hello" {
		t.Fatalf("added column: %q %v", extra, err)
	}
	items := func(sql string) (*target.QueryResult, error) {
		return store.Query(ctx, target.QueryRequest{SQL: sql, Link: "test/link", Tables: []target.TableName{{Schema: "analytics", Name: "items"}}})
	}
	if _, err := items("SELECT day FROM analytics.items"); err == nil {
		t.Fatal("the dropped column is still in the target")
	}
	if _, err := items("DELETE FROM analytics.items"); err == nil {
		t.Fatal("a write ran through the read-only query of a DuckDB target")
	}
	if res, err := items("SELECT count(*) AS n FROM analytics.items"); err != nil || res.Columns[0] != "n" || len(res.Rows) != 1 {
		t.Fatalf("query: %+v %v", res, err)
	}
	stop()
	st := l.Status()
	if st.Phase != "Streaming" || st.Applied < 4 || st.Checkpoint == 0 {
		t.Fatalf("status: %+v", st)
	}

	exec(t, src, "TRUNCATE items")
	stop2 := runLink(t, link.New(link.Config{Name: "items", Source: dsn(pg), Target: store,
		Tables: []link.TableMapping{{SourceTable: "items", TargetSchema: "analytics"}}}))
	defer stop2()
	converge(t, src, store, "SELECT count(*)::text FROM items", "SELECT CAST(count(*) AS VARCHAR) FROM analytics.items")
}

// TestLinkExactlyOnceAcrossRestarts: a PostgreSQL target, writers committing while the link is stopped and
// started again several times; afterwards the target holds exactly the source's rows.
func TestLinkExactlyOnceAcrossRestarts(t *testing.T) {
	pg := pgtest.NewPrimary(t)
	dst := pgtest.NewPrimary(t)
	ctx := context.Background()
	src, err := pg.Connect(ctx, "postgres")
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close(ctx)
	exec(t, src, "CREATE TABLE ledger(id bigserial PRIMARY KEY, note text, amount numeric)")
	store, err := target.OpenPostgres(dsn(dst))
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()

	cfg := link.Config{Name: "ledger", Source: dsn(pg), Target: store, Tables: []link.TableMapping{{SourceTable: "ledger"}}}
	for round := 0; round < 4; round++ {
		stop := runLink(t, link.New(cfg))
		for i := 0; i < 50; i++ {
			exec(t, src, fmt.Sprintf("INSERT INTO ledger(note, amount) VALUES ('r%d', %d.25)", round, i))
			if i%10 == 0 {
				exec(t, src, fmt.Sprintf("UPDATE ledger SET amount = amount + 1 WHERE id %% 7 = %d", i%7))
			}
		}
		time.Sleep(time.Duration(round*150) * time.Millisecond) // stop at different points of the stream
		stop()
	}
	stop := runLink(t, link.New(cfg))
	defer stop()
	sum := "SELECT count(*)::text || ':' || sum(amount)::text || ':' || md5(string_agg(id::text || note || amount::text, ',' ORDER BY id)) FROM ledger"
	converge(t, src, store, sum, `SELECT count(*)::text || ':' || sum(amount)::text || ':' || md5(string_agg(id::text || note || amount::text, ',' ORDER BY id)) FROM public.ledger`)
	if _, err := store.Query(ctx, target.QueryRequest{SQL: "DELETE FROM public.ledger", Link: "test/link", Tables: []target.TableName{{Schema: "public", Name: "ledger"}}}); err == nil {
		t.Fatal("a write ran through the read-only query of a PostgreSQL target")
	}
}
