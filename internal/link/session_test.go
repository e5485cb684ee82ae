package link_test

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/fogo-db/fogo/internal/link"
	"github.com/fogo-db/fogo/internal/link/target"
	"github.com/fogo-db/fogo/internal/testutil/pgtest"
)

// TestSourceSessionSettingsPinned: a source database in LATIN1, whose role has its own bytea_output, DateStyle,
// IntervalStyle and extra_float_digits, links bytea, timestamps, dates, intervals, floats and non-ASCII text
// correctly, from the snapshot and from the stream: every source connection of the link pins the formats.
func TestSourceSessionSettingsPinned(t *testing.T) {
	pg := pgtest.NewPrimary(t)
	ctx := context.Background()
	admin, err := pg.Connect(ctx, "postgres")
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close(ctx)
	exec(t, admin, "CREATE DATABASE latin ENCODING 'LATIN1' LC_COLLATE 'C' LC_CTYPE 'C' TEMPLATE template0")
	for _, s := range []string{"bytea_output = 'escape'", "DateStyle = 'SQL, DMY'", "IntervalStyle = 'sql_standard'", "extra_float_digits = 0"} {
		exec(t, admin, "ALTER ROLE "+pg.SuperUser+" SET "+s)
	}
	src, err := pg.Connect(ctx, "latin")
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close(ctx)
	exec(t, src, `CREATE TABLE odd(id int PRIMARY KEY, raw bytea, at timestamp, atz timestamptz, day date, span interval,
		f float8, note text)`)
	const row = `SELECT i, '\xdeadbe00ef'::bytea, '2026-01-02 03:04:05.678', '2026-01-02 03:04:05+00', '2026-01-02',
		'1 day 02:03:04', 0.1 + i, 'caf' || chr(233) || ' ' || i FROM generate_series(%d, %d) i`
	exec(t, src, "INSERT INTO odd "+fmt.Sprintf(row, 1, 10))

	store, err := target.OpenDuckDB(filepath.Join(t.TempDir(), "link.duckdb"))
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	srcDSN := strings.Replace(dsn(pg), "dbname=postgres", "dbname=latin", 1)
	l := link.New(link.Config{Name: "odd", Source: srcDSN, Target: store, Tables: []link.TableMapping{{SourceTable: "odd"}}})
	runLink(t, l)
	// Wait for the snapshot, then stream more rows.
	deadline := time.Now().Add(30 * time.Second)
	for {
		var n int
		if err := store.DB().QueryRow("SELECT count(*) FROM public.odd").Scan(&n); err == nil && n == 10 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("snapshot not applied: %+v", l.Status())
		}
		time.Sleep(100 * time.Millisecond)
	}
	exec(t, src, "INSERT INTO odd "+fmt.Sprintf(row, 11, 20))
	const want = "0:deadbe00ef:2026-01-02 03:04:05.678:1767323045:2026-01-02:1 day 02:03:04:café"
	deadline = time.Now().Add(30 * time.Second)
	for {
		rows, err := store.DB().Query(`SELECT id, lower(hex(raw)), CAST("at" AS VARCHAR), CAST(epoch(atz) AS BIGINT), CAST(day AS VARCHAR),
			CAST(span AS VARCHAR), f, note FROM public.odd ORDER BY id`)
		bad, n := "", 0
		for err == nil && rows.Next() {
			var id int
			var raw, at, day, note string
			var atz int64
			var span string
			var f float64
			if err = rows.Scan(&id, &raw, &at, &atz, &day, &span, &f, &note); err != nil {
				break
			}
			n++
			got := fmt.Sprintf("0:%s:%s:%d:%s:%s:%s", raw, at, atz, day, span, strings.TrimSuffix(note, fmt.Sprintf(" %d", id)))
			if got != want || f != 0.1+float64(id) {
				bad = fmt.Sprintf("row %d: %s f=%v, want %s f=%v", id, got, f, want, 0.1+float64(id))
			}
		}
		if rows != nil {
			rows.Close()
		}
		if err == nil && n == 20 && bad == "" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d rows (%v): %s; status %+v", n, err, bad, l.Status())
		}
		time.Sleep(100 * time.Millisecond)
	}
}
