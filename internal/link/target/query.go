package target

import (
	"context"
	"database/sql/driver"
	"fmt"
	"strings"
	"time"
	"unicode/utf8"
)

// The query extension runs one read-only statement a caller sends against a link's target. The caller may hold the
// API token, and nothing more: fogo often runs as root and its target connection may be a superuser, so a query
// is contained, not trusted. It reads the link's target tables and nothing else; on DuckDB (query_duckdb.go) on a
// database opened without any file, network or extension access and with its configuration locked, on
// PostgreSQL (query_postgres.go) as a role that can only read those tables. Both bound the rows, the bytes and
// the time a query may take.

// Query limits: the defaults, and the largest a caller may ask for.
const (
	DefaultQueryRows    = 1000
	MaxQueryRows        = 10000
	DefaultQueryTimeout = 30 * time.Second
	MaxQueryTimeout     = 5 * time.Minute
	// maxQueryBytes bounds the text of the values a query returns; beyond it the result is truncated.
	maxQueryBytes = 16 << 20
)

// TableName is a target table, as the link creates it.
type TableName struct{ Schema, Name string }

// QueryRequest is one query of a link's target.
type QueryRequest struct {
	SQL string
	// Link is the link's name: a PostgreSQL target's read-only role is named after it.
	Link string
	// Tables are the only tables the query may read: the link's target tables.
	Tables  []TableName
	MaxRows int           // 0: DefaultQueryRows
	Timeout time.Duration // 0: DefaultQueryTimeout
}

func (q *QueryRequest) withDefaults() QueryRequest {
	r := *q
	if r.MaxRows <= 0 {
		r.MaxRows = DefaultQueryRows
	}
	r.MaxRows = min(r.MaxRows, MaxQueryRows)
	if r.Timeout <= 0 {
		r.Timeout = DefaultQueryTimeout
	}
	r.Timeout = min(r.Timeout, MaxQueryTimeout)
	r.SQL = trimStatement(r.SQL)
	return r
}

// QueryResult is what a query returned; Truncated says it had more rows (or bytes) than the limits let through.
type QueryResult struct {
	Columns   []string
	Rows      [][]any
	Truncated bool
	MaxRows   int
	Timeout   time.Duration
}

// RefusedError is a query the extension does not run: Reason says what is not allowed.
type RefusedError struct{ Reason string }

func (e *RefusedError) Error() string { return "the query was refused: " + e.Reason }

func refused(format string, args ...any) error {
	return &RefusedError{Reason: fmt.Sprintf(format, args...)}
}

// TimeoutError is a query cancelled at its time limit.
type TimeoutError struct{ Limit time.Duration }

func (e *TimeoutError) Error() string {
	return fmt.Sprintf("the query ran longer than its limit of %s and was cancelled", e.Limit)
}

// Query runs one read-only query against the target (see the top of this file).
func (s *Store) Query(ctx context.Context, req QueryRequest) (*QueryResult, error) {
	r := req.withDefaults()
	if r.SQL == "" {
		return nil, refused("the query is empty")
	}
	qctx, cancel := context.WithTimeout(ctx, r.Timeout)
	defer cancel()
	res, err := s.dialect.query(qctx, s, r)
	if err != nil && qctx.Err() == context.DeadlineExceeded && ctx.Err() == nil {
		return nil, &TimeoutError{Limit: r.Timeout}
	}
	if err != nil {
		return nil, err
	}
	res.MaxRows, res.Timeout = r.MaxRows, r.Timeout
	return res, nil
}

// trimStatement drops surrounding white space and trailing semicolons.
func trimStatement(q string) string {
	q = strings.TrimSpace(q)
	for strings.HasSuffix(q, ";") {
		q = strings.TrimSpace(strings.TrimSuffix(q, ";"))
	}
	return q
}

// resultReader collects rows within the limits.
type resultReader struct {
	res     QueryResult
	maxRows int
	bytes   int
}

// add keeps a row and reports whether another may follow; the row past the limits marks the result truncated.
func (r *resultReader) add(vals []driver.Value) bool {
	if len(r.res.Rows) >= r.maxRows {
		r.res.Truncated = true
		return false
	}
	row := make([]any, len(vals))
	for i, v := range vals {
		row[i] = jsonValue(v)
		r.bytes += valueSize(row[i])
	}
	if r.bytes > maxQueryBytes && len(r.res.Rows) > 0 {
		r.res.Truncated = true
		return false
	}
	r.res.Rows = append(r.res.Rows, row)
	return true
}

// jsonValue turns a driver value into one that encodes well as JSON: bytes as text when they are UTF-8 (else as
// PostgreSQL's hex form), UUIDs in their usual form, other Valuers as their value.
func jsonValue(v any) any {
	switch x := v.(type) {
	case []byte:
		if utf8.Valid(x) {
			return string(x)
		}
		return fmt.Sprintf(`\x%x`, x)
	case [16]byte:
		return fmt.Sprintf("%x-%x-%x-%x-%x", x[0:4], x[4:6], x[6:8], x[8:10], x[10:16])
	case driver.Valuer:
		if dv, err := x.Value(); err == nil {
			return jsonValue(dv)
		}
	}
	return v
}

func valueSize(v any) int {
	switch x := v.(type) {
	case string:
		return len(x)
	case nil:
		return 4
	default:
		return len(fmt.Sprint(x))
	}
}
