package target

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// The query extension's containment: every probe of issue 9 and its neighbours is refused and reads nothing;
// analytical queries over the link's target tables still work; rows and time are bounded.

var itemsName = TableName{"analytics", "items"}

// containedStore returns a store holding the link's table analytics.items (12 rows) and a table of another link,
// public.other, holding a secret.
func containedStore(t *testing.T, s *Store) {
	t.Helper()
	ctx := context.Background()
	tb := itemsTable()
	if _, err := s.Checkpoint(ctx, "other/link"); err != nil { // creates the checkpoint table
		t.Fatal(err)
	}
	if err := s.EnsureTable(ctx, tb, true); err != nil {
		t.Fatal(err)
	}
	var changes []Change
	for i := 1; i <= 12; i++ {
		changes = append(changes, ins(tb, i, "n"))
	}
	if err := s.Apply(ctx, "other/link", changes, 0x100); err != nil {
		t.Fatal(err)
	}
	other := &Table{Schema: "public", Name: "other", Key: []string{"k"}, Columns: []Column{{"k", "text"}}}
	if err := s.EnsureTable(ctx, other, true); err != nil {
		t.Fatal(err)
	}
	if err := s.Apply(ctx, "other/link", []Change{{Kind: Insert, Table: other, New: []Value{{Text: "top-secret"}}}}, 0x200); err != nil {
		t.Fatal(err)
	}
}

func ask(s *Store, sql string) (*QueryResult, error) {
	return s.Query(context.Background(), QueryRequest{SQL: sql, Link: "ws/link", Tables: []TableName{itemsName}})
}

// mustRefuse checks that a query is refused (a RefusedError, or an error of the target) and returned nothing.
func mustRefuse(t *testing.T, s *Store, sql string, wantRefused bool, secrets ...string) {
	t.Helper()
	res, err := ask(s, sql)
	if err == nil {
		t.Errorf("%s: ran, returned %v", sql, res.Rows)
		return
	}
	var r *RefusedError
	if wantRefused && !errors.As(err, &r) {
		t.Errorf("%s: failed with %v, want a refusal that says what is not allowed", sql, err)
	}
	for _, secret := range secrets {
		if strings.Contains(err.Error(), secret) {
			t.Errorf("%s: the error shows %q: %v", sql, secret, err)
		}
	}
}

// legitimate runs analytical queries: joins, aggregates, window functions, CTEs.
func legitimate(t *testing.T, s *Store) {
	t.Helper()
	for q, want := range map[string]string{
		"SELECT count(*) AS n, sum(qty) AS q FROM analytics.items": "[[12 -234]]",
		`SELECT a.id, rank() OVER (ORDER BY a.amount DESC) AS r FROM analytics.items a
		   JOIN analytics.items b ON a.id = b.id + 1 WHERE a.id > 10 ORDER BY a.id`: "[[11 2] [12 1]]",
		`WITH big AS (SELECT id, amount FROM analytics.items WHERE amount > 9)
		   SELECT count(*), max(id) FROM big`: "[[4 12]]",
		"SELECT id FROM analytics.items ORDER BY id DESC LIMIT 2;": "[[12] [11]]",
	} {
		res, err := ask(s, q)
		if err != nil {
			t.Errorf("%s: %v", q, err)
			continue
		}
		got := fmt.Sprint(res.Rows)
		got = strings.ReplaceAll(got, "-234.00", "-234") // PostgreSQL's numeric sum of smallints is numeric
		if got != want {
			t.Errorf("%s: %s, want %s", q, got, want)
		}
	}
}

func TestQueryContainedDuckDB(t *testing.T) {
	dir := t.TempDir()
	s, err := OpenDuckDB(filepath.Join(dir, "target.duckdb"))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	containedStore(t, s)
	secretFile := filepath.Join(dir, "internal-secret")
	if err := os.WriteFile(secretFile, []byte("superuser-password-xyz\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	written := filepath.Join(dir, "written.csv")
	// The probes of issue 9, then their neighbours.
	for _, q := range []string{
		"select * from read_text('/etc/passwd')",
		"select * from glob('/root/*')",
		"select * from read_csv('" + secretFile + "', header=false)",
		"select * from read_csv_auto('" + secretFile + "')",
		"select * from read_parquet('" + dir + "/x.parquet')",
		"select * from read_json('" + secretFile + "')",
		"select * from read_blob('" + secretFile + "')",
		"select * from sniff_csv('" + secretFile + "')",
		"select * from '" + secretFile + "'",
		"EXPLAIN ANALYZE COPY (SELECT 1) TO '" + written + "'",
		"EXPLAIN ANALYZE DELETE FROM analytics.items",
		"EXPLAIN (FORMAT json) SELECT 1",
		"COPY analytics.items TO '" + written + "'",
		"COPY analytics.items FROM '" + secretFile + "'",
		"EXPORT DATABASE '" + dir + "/export'",
		"ATTACH '" + dir + "/other.duckdb' AS o",
		"ATTACH ':memory:' AS m",
		"INSTALL httpfs",
		"LOAD httpfs",
		"SET enable_external_access = true",
		"RESET lock_configuration",
		"SET GLOBAL memory_limit = '100GB'",
		"PRAGMA enable_profiling",
		"CREATE SECRET s (TYPE s3, KEY_ID 'a', SECRET 'b')",
		"SELECT 1; COPY (SELECT 1) TO '" + written + "'",
		"DELETE FROM analytics.items",
		"CHECKPOINT",
		"SELECT * FROM checkpoint()",
		"SELECT * FROM public.other",
		"SELECT * FROM _fogo_link_checkpoints",
		"SELECT (SELECT max(k) FROM public.other) FROM analytics.items",
		"SELECT * FROM query_table('public.other')",
		"SELECT * FROM query('sel' || 'ect * from public.other')",
		"SELECT * FROM json_execute_serialized_sql('{}')",
		"SELECT * FROM arrow_scan(1, 2, 3)",
		"SELECT * FROM duckdb_table_sample('public.other')",
		"SELECT * FROM enable_logging()",
	} {
		mustRefuse(t, s, q, true, "superuser-password-xyz", "top-secret")
	}
	if _, err := os.Stat(written); !os.IsNotExist(err) {
		t.Errorf("a refused query wrote %s", written)
	}
	if entries, _ := os.ReadDir(dir); len(entries) > 4 { // target.duckdb, its .wal (maybe), internal-secret
		var names []string
		for _, e := range entries {
			names = append(names, e.Name())
		}
		t.Errorf("files appeared in the target's directory: %v", names)
	}
	legitimate(t, s)
	for _, q := range []string{"DESCRIBE analytics.items", "SUMMARIZE analytics.items", "EXPLAIN SELECT count(*) FROM analytics.items",
		"EXPLAIN ANALYZE SELECT count(*) FROM analytics.items", "SELECT * FROM range(3)"} {
		if _, err := ask(s, q); err != nil {
			t.Errorf("%s: %v", q, err)
		}
	}
	res, err := ask(s, "SELECT name, value FROM duckdb_settings() WHERE name IN ('enable_external_access', 'lock_configuration', 'memory_limit', 'autoload_known_extensions') ORDER BY name")
	if err != nil {
		t.Fatal(err)
	}
	if got := fmt.Sprint(res.Rows); !strings.Contains(got, "[enable_external_access false]") || !strings.Contains(got, "[lock_configuration true]") ||
		!strings.Contains(got, "[autoload_known_extensions false]") || !strings.Contains(got, "[memory_limit 244.1 MiB]") {
		t.Errorf("settings: %s", got)
	}
	checkLimits(t, s, "SELECT * FROM range(10000000000)", "SELECT count(*) FROM range(1000000000000) a")

	// The link still writes after all of that: the settings do not get in its way.
	if err := s.Apply(context.Background(), "ws/link", []Change{ins(itemsTable(), 13, "late")}, 0x300); err != nil {
		t.Fatal(err)
	}
	if res, err := ask(s, "SELECT count(*) FROM analytics.items"); err != nil || fmt.Sprint(res.Rows) != "[[13]]" {
		t.Fatalf("after the probes: %v %v", res, err)
	}
}

func TestQueryContainedPostgres(t *testing.T) {
	s := openPostgres(t)
	containedStore(t, s)
	ctx := context.Background()
	for _, q := range []string{
		"SELECT pg_read_file('/etc/passwd')",
		"SELECT pg_read_binary_file('postgresql.conf')",
		"SELECT * FROM pg_ls_dir('.')",
		"SELECT lo_import('/etc/passwd')",
		"COPY (SELECT 1) TO PROGRAM 'touch /tmp/fogo-probe'",
		"WITH x AS (SELECT 1) SELECT * FROM pg_stat_file('postgresql.conf')",
		"SELECT * FROM public.other",
		"SELECT (SELECT max(k) FROM public.other) FROM analytics.items",
		"SELECT * FROM _fogo_link_checkpoints",
		"SELECT set_config('role', 'fogo', false)", // the target's login, a superuser
		"SELECT set_config('session_authorization', 'fogo', false)",
		"SET ROLE NONE",
		"RESET ROLE",
		"DELETE FROM analytics.items",
		"WITH d AS (DELETE FROM analytics.items RETURNING *) SELECT count(*) FROM d",
		"EXPLAIN ANALYZE DELETE FROM analytics.items",
		"SELECT 1; DELETE FROM analytics.items",
		"SELECT pg_reload_conf()",
		"SELECT pg_terminate_backend(pid) FROM pg_stat_activity",
		"CREATE TABLE analytics.x (a int)",
		"ALTER SYSTEM SET log_statement = 'all'",
	} {
		mustRefuse(t, s, q, false, "top-secret")
	}
	if _, err := os.Stat("/tmp/fogo-probe"); err == nil {
		t.Error("COPY … TO PROGRAM ran")
	}
	legitimate(t, s)
	checkLimits(t, s, "SELECT a.id FROM analytics.items a, analytics.items b, analytics.items c, analytics.items d", "SELECT pg_sleep(30)")

	// The reader is a role that can do nothing else.
	var super, createRole, repl, inherit bool
	var member int
	if err := s.DB().QueryRowContext(ctx, `SELECT rolsuper, rolcreaterole, rolreplication, rolinherit,
		(SELECT count(*) FROM pg_auth_members WHERE member = r.oid) FROM pg_roles r WHERE rolname = $1`, readerRole("ws/link")).
		Scan(&super, &createRole, &repl, &inherit, &member); err != nil {
		t.Fatal(err)
	}
	if super || createRole || repl || inherit || member != 0 {
		t.Errorf("reader role: super %v createrole %v replication %v inherit %v member of %d", super, createRole, repl, inherit, member)
	}

	// dblink callable by PUBLIC: fogo runs no query and says why; once revoked, queries run again.
	if _, err := s.DB().ExecContext(ctx, "CREATE EXTENSION dblink"); err != nil {
		t.Fatal(err)
	}
	_, err := ask(s, "SELECT dblink_connect('host=127.0.0.1 user=postgres')")
	var r *RefusedError
	if !errors.As(err, &r) || !strings.Contains(err.Error(), "dblink") {
		t.Errorf("with dblink callable: %v, want a refusal naming dblink", err)
	}
	if _, err := ask(s, "SELECT count(*) FROM analytics.items"); !errors.As(err, &r) {
		t.Errorf("with dblink callable, a plain query: %v, want a refusal", err)
	}
	if _, err := s.DB().ExecContext(ctx, "REVOKE EXECUTE ON ALL FUNCTIONS IN SCHEMA public FROM PUBLIC"); err != nil {
		t.Fatal(err)
	}
	if res, err := ask(s, "SELECT count(*) FROM analytics.items"); err != nil || fmt.Sprint(res.Rows) != "[[12]]" {
		t.Errorf("after the revoke: %v %v", res, err)
	}
	mustRefuse(t, s, "SELECT dblink_connect('host=127.0.0.1 user=postgres')", true)

	// A table removed from the link is no longer readable.
	if _, err := s.Query(ctx, QueryRequest{SQL: "SELECT count(*) FROM analytics.items", Link: "ws/link", Tables: []TableName{{"public", "other"}}}); err == nil {
		t.Error("a table no longer linked is still readable")
	}

	// A target login that cannot create roles: a clear refusal.
	if _, err := s.DB().ExecContext(ctx, "CREATE ROLE weak LOGIN PASSWORD 'weak-pw'"); err != nil {
		t.Fatal(err)
	}
	weak, err := OpenPostgres(strings.Replace(s.connString, "user=fogo", "user=weak", 1) + " password=weak-pw")
	if err != nil {
		t.Fatal(err)
	}
	defer weak.Close()
	_, err = weak.Query(ctx, QueryRequest{SQL: "SELECT 1", Link: "ws/weak", Tables: []TableName{itemsName}})
	if !errors.As(err, &r) || !strings.Contains(err.Error(), "CREATEROLE") {
		t.Errorf("a login without CREATEROLE: %v", err)
	}
}

// checkLimits runs a query with more rows than the limit (truncated at it, quickly) and one that runs too long
// (a TimeoutError).
func checkLimits(t *testing.T, s *Store, many, slow string) {
	t.Helper()
	res, err := s.Query(context.Background(), QueryRequest{SQL: many, Link: "ws/link", Tables: []TableName{itemsName}, MaxRows: 5})
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Rows) != 5 || !res.Truncated || res.MaxRows != 5 || res.Timeout != DefaultQueryTimeout {
		t.Errorf("%s: %d rows, truncated %v, limits %d %s", many, len(res.Rows), res.Truncated, res.MaxRows, res.Timeout)
	}
	res, err = s.Query(context.Background(), QueryRequest{SQL: "SELECT id FROM analytics.items", Link: "ws/link", Tables: []TableName{itemsName}, MaxRows: 12})
	if err != nil || len(res.Rows) != 12 || res.Truncated {
		t.Errorf("exactly the limit: %v %v", res, err)
	}
	start := time.Now()
	_, err = s.Query(context.Background(), QueryRequest{SQL: slow, Link: "ws/link", Tables: []TableName{itemsName}, Timeout: 300 * time.Millisecond})
	var te *TimeoutError
	if !errors.As(err, &te) || te.Limit != 300*time.Millisecond {
		t.Errorf("%s: %v after %s, want a TimeoutError", slow, err, time.Since(start))
	}
}
