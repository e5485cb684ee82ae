package target

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/url"
	"regexp"
	"runtime"
	"strconv"
	"strings"

	"github.com/duckdb/duckdb-go/v2"
)

// duckSettings are the settings every DuckDB target is opened with. They hold for the whole database instance
// (the link writing into it and every query), and lock_configuration makes them final: no SET can undo them.
//   - No external access: no file other than the database's own (and its WAL and spill directory), no COPY,
//     ATTACH of files, file readers or globbing, no network, no INSTALL or LOAD of extensions, no persistent secrets.
//   - memory_limit: DuckDB's own bound (buffers, caches, indexes, sorts, joins; beyond it DuckDB evicts, spills to the
//     database's temporary directory, or fails the statement), so that neither a link applying a source
//     transaction of millions of rows nor a query can take the control plane's memory: fogo stays under about
//     512 MiB resident with one DuckDB target (docs/benchmarks.md, fogo bench link-memory). Each DuckDB target
//     file is a database instance with a bound of its own.
//   - threads: half the machine's CPUs, so that DuckDB leaves the control plane and PostgreSQL room.
var duckSettings = url.Values{
	"enable_external_access":       {"false"},
	"autoinstall_known_extensions": {"false"},
	"autoload_known_extensions":    {"false"},
	"allow_community_extensions":   {"false"},
	"allow_unsigned_extensions":    {"false"},
	"memory_limit":                 {"256MB"},
	"threads":                      {strconv.Itoa(max(1, runtime.NumCPU()/2))},
	"lock_configuration":           {"true"},
}

// duckDSN is the data source name that opens path with duckSettings. A path with '?' or '#' would smuggle settings
// of its own into the DSN, so it is refused.
func duckDSN(path string) (string, error) {
	if strings.ContainsAny(path, "?#\x00") {
		return "", fmt.Errorf("a DuckDB path may not contain '?', '#' or NUL")
	}
	return path + "?" + duckSettings.Encode(), nil
}

// explainRe splits EXPLAIN [ANALYZE] from the statement it explains.
var explainRe = regexp.MustCompile(`(?is)^\s*explain\s+(?:analyze\s+)?(.*)$`)

// query runs r in three steps:
//  1. check, on DuckDB's parse tree alone (json_serialize_sql: nothing is bound or run yet — binding a table
//     function already calls it): one statement, a SELECT — DESCRIBE, SUMMARIZE and SHOW are SELECTs too — or
//     EXPLAIN [ANALYZE] of one, that reads only the link's target tables (or its own CTEs) and calls only the table
//     functions of duckTableFunctions (query_table, arrow_scan, read_csv … are not);
//  2. a SELECT is wrapped in LIMIT MaxRows+1 (DuckDB materialises a result before the first row is read);
//  3. run it in a read-only transaction that is always rolled back, prepared with Prepare (PrepareContext would
//     run all but the last of several statements) and checked once more for its type; the context interrupts it
//     at its time limit.
func (d duckDialect) query(ctx context.Context, s *Store, r QueryRequest) (*QueryResult, error) {
	conn, err := s.db.Conn(ctx)
	if err != nil {
		return nil, fmt.Errorf("%s: connection: %w", d.name(), err)
	}
	defer conn.Close()
	explain, err := checkQuery(ctx, conn, r.SQL, r.Tables)
	if err != nil {
		return nil, err
	}
	run := r.SQL
	if !explain {
		run = fmt.Sprintf("SELECT * FROM (\n%s\n) AS fogo_query LIMIT %d", r.SQL, r.MaxRows+1)
	}
	var res *QueryResult
	err = conn.Raw(func(dc any) (err error) {
		c, ok := dc.(*duckdb.Conn)
		if !ok {
			return errors.New("unexpected DuckDB driver connection")
		}
		if _, err := c.ExecContext(ctx, "BEGIN TRANSACTION READ ONLY", nil); err != nil {
			return fmt.Errorf("begin a read-only transaction: %w", err)
		}
		defer func() {
			if _, rbErr := c.ExecContext(context.Background(), "ROLLBACK", nil); rbErr != nil && err == nil {
				err = driver.ErrBadConn // never hand this connection back with a transaction open
			}
		}()
		st, typ, err := prepareOne(c, run)
		if err != nil && !explain {
			// The text does not fit in a subquery (say it ends in a comment after a semicolon): run it as it
			// is and stop reading at the limit; DuckDB's memory limit and the time limit bound the rest.
			st, typ, err = prepareOne(c, r.SQL)
		}
		if err != nil {
			return err
		}
		defer st.Close()
		if typ != duckdb.STATEMENT_TYPE_SELECT && typ != duckdb.STATEMENT_TYPE_EXPLAIN {
			return refused("only a SELECT (or EXPLAIN of one) may run") // checkQuery let through something else
		}
		res, err = readDuckRows(ctx, st, r.MaxRows)
		return err
	})
	if err != nil {
		return nil, duckQueryError(err)
	}
	return res, nil
}

// checkQuery checks q on its parse tree (see query) and reports whether it is an EXPLAIN.
func checkQuery(ctx context.Context, conn *sql.Conn, q string, allowed []TableName) (explain bool, err error) {
	tree, err := parseTree(ctx, conn, q)
	if err != nil {
		return false, err
	}
	if tree.Error {
		m := explainRe.FindStringSubmatch(q)
		if tree.ErrorType != "not implemented" {
			if m != nil {
				return false, refused("only EXPLAIN or EXPLAIN ANALYZE followed by a SELECT may run, without options")
			}
			return false, fmt.Errorf("%s", tree.ErrorMessage) // a syntax error
		}
		if m == nil && strings.Contains(q, ";") {
			return false, refused("only one statement, a SELECT (or EXPLAIN of one), may run against the link's target")
		}
		if m == nil {
			return false, refused("%s statements are not allowed: only one SELECT (or EXPLAIN of one) may run against the link's target", firstKeyword(q))
		}
		inner, err := parseTree(ctx, conn, m[1])
		if err != nil {
			return false, err
		}
		if inner.Error {
			if inner.ErrorType == "not implemented" {
				return false, refused("EXPLAIN of a %s statement is not allowed: only a SELECT may be explained", firstKeyword(m[1]))
			}
			return false, refused("only EXPLAIN or EXPLAIN ANALYZE followed by a SELECT may run, without options")
		}
		tree, explain = inner, true
	}
	if len(tree.Statements) != 1 {
		return false, refused("only one statement may run; this query has %d", len(tree.Statements))
	}
	var reads duckReads
	reads.collect(tree.Statements[0])
	for _, f := range reads.functions {
		if !duckTableFunctions[strings.ToLower(f)] {
			return false, refused("the table function %s is not allowed (it can read files, other tables or memory)", f)
		}
	}
	for _, t := range reads.tables {
		if t.catalog == "" && t.schema == "" && reads.ctes[strings.ToLower(t.name)] {
			continue
		}
		if t.catalog != "" || !linkTable(allowed, t.schema, t.name) {
			return false, refused("it reads %s, which is not one of the link's target tables (%s)", t, tableList(allowed))
		}
	}
	return explain, nil
}

// duckTree is what json_serialize_sql says of a query.
type duckTree struct {
	Error        bool   `json:"error"`
	ErrorType    string `json:"error_type"`
	ErrorMessage string `json:"error_message"`
	Statements   []any  `json:"statements"`
}

// parseTree parses q with DuckDB's parser (only SELECTs serialize; anything else says "not implemented").
func parseTree(ctx context.Context, conn *sql.Conn, q string) (*duckTree, error) {
	var raw string
	lit := "'" + strings.ReplaceAll(q, "'", "''") + "'"
	if err := conn.QueryRowContext(ctx, "SELECT CAST(json_serialize_sql("+lit+") AS VARCHAR)").Scan(&raw); err != nil {
		return nil, fmt.Errorf("parse the query: %w", err)
	}
	var t duckTree
	if err := json.Unmarshal([]byte(raw), &t); err != nil {
		return nil, fmt.Errorf("parse the query: %w", err)
	}
	return &t, nil
}

// duckTableFunctions are the table functions a query may call: generators and catalogue views. Everything else is
// refused, among them the ones that read another table by a computed name (query, query_table), run serialized
// SQL, read files, sample tables, change logging, or take raw memory pointers (arrow_scan).
var duckTableFunctions = map[string]bool{
	"range": true, "generate_series": true, "unnest": true, "repeat": true, "repeat_row": true,
	"json_each": true, "json_tree": true, "pg_timezone_names": true, "icu_calendar_names": true,
	"pragma_table_info": true, "pragma_show": true, "pragma_version": true, "pragma_platform": true,
	"pragma_database_size": true, "duckdb_columns": true, "duckdb_constraints": true, "duckdb_databases": true,
	"duckdb_functions": true, "duckdb_indexes": true, "duckdb_keywords": true, "duckdb_schemas": true,
	"duckdb_settings": true, "duckdb_tables": true, "duckdb_types": true, "duckdb_views": true,
	"duckdb_sequences": true, "duckdb_dependencies": true, "duckdb_optimizers": true, "duckdb_memory": true,
	"duckdb_extensions": true,
}

// duckReads is what a parse tree reads: base tables, table functions, and the names of its CTEs.
type duckReads struct {
	tables    []tableRef
	functions []string
	ctes      map[string]bool
}

type tableRef struct{ catalog, schema, name string }

func (t tableRef) String() string {
	return strings.TrimLeft(strings.Join([]string{t.catalog, t.schema, t.name}, "."), ".")
}

// collect walks a parse tree.
func (r *duckReads) collect(n any) {
	switch v := n.(type) {
	case map[string]any:
		switch v["type"] {
		case "BASE_TABLE":
			str := func(k string) string { s, _ := v[k].(string); return s }
			r.tables = append(r.tables, tableRef{str("catalog_name"), str("schema_name"), str("table_name")})
		case "TABLE_FUNCTION":
			name := "?"
			if f, ok := v["function"].(map[string]any); ok {
				if s, ok := f["function_name"].(string); ok {
					name = s
				}
			}
			r.functions = append(r.functions, name)
		}
		if cm, ok := v["cte_map"].(map[string]any); ok {
			entries, _ := cm["map"].([]any)
			for _, e := range entries {
				if em, ok := e.(map[string]any); ok {
					if k, ok := em["key"].(string); ok {
						if r.ctes == nil {
							r.ctes = map[string]bool{}
						}
						r.ctes[strings.ToLower(k)] = true
					}
				}
			}
		}
		for _, c := range v {
			r.collect(c)
		}
	case []any:
		for _, c := range v {
			r.collect(c)
		}
	}
}

// linkTable reports whether schema.name (schema "" or main: DuckDB's default) is one of the link's tables.
func linkTable(allowed []TableName, schema, name string) bool {
	if schema == "" {
		schema = "main"
	}
	for _, t := range allowed {
		ts := t.Schema
		if ts == "" {
			ts = "main"
		}
		if strings.EqualFold(ts, schema) && strings.EqualFold(t.Name, name) {
			return true
		}
	}
	return false
}

// firstKeyword is a statement's first word, upper-cased, for an error message.
func firstKeyword(q string) string {
	if m := sqlKeywordRe.FindStringSubmatch(q); m != nil {
		return strings.ToUpper(m[1])
	}
	return "such"
}

// prepareOne prepares q, which must be a single statement: Prepare (unlike PrepareContext) refuses several
// instead of running all but the last.
func prepareOne(c *duckdb.Conn, q string) (*duckdb.Stmt, duckdb.StmtType, error) {
	ds, err := c.Prepare(q)
	if err != nil {
		if strings.Contains(err.Error(), "multi-statement") {
			return nil, 0, refused("only one statement may run; this query has several")
		}
		return nil, 0, err
	}
	st := ds.(*duckdb.Stmt)
	typ, err := st.StatementType()
	if err != nil {
		st.Close()
		return nil, 0, err
	}
	return st, typ, nil
}

// readDuckRows executes st and reads at most maxRows rows.
func readDuckRows(ctx context.Context, st *duckdb.Stmt, maxRows int) (*QueryResult, error) {
	rows, err := st.QueryContext(ctx, nil)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	rr := resultReader{maxRows: maxRows}
	rr.res.Columns = rows.Columns()
	vals := make([]driver.Value, len(rr.res.Columns))
	for {
		if err := rows.Next(vals); err == io.EOF {
			break
		} else if err != nil {
			return nil, err
		}
		if !rr.add(vals) {
			break
		}
	}
	return &rr.res, nil
}

// duckQueryError says plainly when DuckDB refused access to something outside the target.
func duckQueryError(err error) error {
	var de *duckdb.Error
	if errors.As(err, &de) && de.Type == duckdb.ErrorTypePermission {
		return refused("it reaches outside the link's target (files, the network, extensions or settings), which is not allowed: %s", firstLine(de.Msg))
	}
	return err
}

func tableList(ts []TableName) string {
	if len(ts) == 0 {
		return "none"
	}
	out := make([]string, len(ts))
	for i, t := range ts {
		out[i] = t.Schema + "." + t.Name
	}
	return strings.Join(out, ", ")
}

func firstLine(s string) string {
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		return strings.TrimSpace(s[:i])
	}
	return s
}
