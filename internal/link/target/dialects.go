package target

import (
	"context"
	"database/sql"
	"encoding/hex"
	"errors"
	"fmt"
	"regexp"
	"strings"

	"github.com/duckdb/duckdb-go/v2"   // registers "duckdb"
	_ "github.com/jackc/pgx/v5/stdlib" // registers "pgx"
)

// OpenDuckDB opens (creating it if needed) a DuckDB file.
func OpenDuckDB(path string) (*Store, error) {
	db, err := sql.Open("duckdb", path)
	if err != nil {
		return nil, fmt.Errorf("open DuckDB %s: %w", path, err)
	}
	if err := db.Ping(); err != nil {
		db.Close()
		return nil, fmt.Errorf("open DuckDB %s: %w", path, err)
	}
	return &Store{db: db, dialect: duckDialect{}}, nil
}

// OpenPostgres connects to a PostgreSQL target.
func OpenPostgres(connString string) (*Store, error) {
	db, err := sql.Open("pgx", connString)
	if err != nil {
		return nil, fmt.Errorf("open PostgreSQL target: %w", err)
	}
	if err := db.Ping(); err != nil {
		db.Close()
		return nil, fmt.Errorf("connect to PostgreSQL target: %w", err)
	}
	return &Store{db: db, dialect: pgDialect{}}, nil
}

// pgDialect keeps the source types as they are.
type pgDialect struct{}

func (pgDialect) name() string                      { return "postgres target" }
func (pgDialect) columnType(t string) string        { return t }
func (pgDialect) param(_, text string) (any, error) { return text, nil }
func (pgDialect) cast(placeholder, t string) string { return "CAST(" + placeholder + " AS " + t + ")" }

func (pgDialect) readOnly(ctx context.Context, db *sql.DB, _ string) (*sql.Tx, error) {
	return db.BeginTx(ctx, &sql.TxOptions{ReadOnly: true})
}

// duckDialect maps PostgreSQL types to DuckDB's.
type duckDialect struct{}

var numericRe = regexp.MustCompile(`^numeric\((\d+),(\d+)\)$`)

func (duckDialect) name() string { return "duckdb target" }

func (duckDialect) columnType(t string) string {
	switch {
	case strings.HasSuffix(t, "[]"):
		return "VARCHAR" // arrays keep PostgreSQL's text form, e.g. {1,NULL,3}
	case t == "smallint":
		return "SMALLINT"
	case t == "integer":
		return "INTEGER"
	case t == "bigint":
		return "BIGINT"
	case t == "real":
		return "REAL"
	case t == "double precision":
		return "DOUBLE"
	case t == "boolean":
		return "BOOLEAN"
	case t == "date":
		return "DATE"
	case strings.HasPrefix(t, "timestamp") && strings.Contains(t, "with time zone"):
		return "TIMESTAMPTZ"
	case strings.HasPrefix(t, "timestamp"):
		return "TIMESTAMP"
	case t == "uuid":
		return "UUID"
	case t == "bytea":
		return "BLOB"
	}
	if m := numericRe.FindStringSubmatch(t); m != nil {
		var p, s int
		fmt.Sscan(m[1], &p)
		fmt.Sscan(m[2], &s)
		if p <= 38 {
			return fmt.Sprintf("DECIMAL(%d,%d)", p, s)
		}
	}
	return "VARCHAR" // text, varchar, json, jsonb, unconstrained numeric (exact digits kept), and the rest
}

func (duckDialect) param(t, text string) (any, error) {
	if t == "bytea" {
		if !strings.HasPrefix(text, `\x`) {
			return nil, fmt.Errorf("bytea value is not in hex format")
		}
		return hex.DecodeString(text[2:])
	}
	return text, nil
}

// readOnly: DuckDB has no read-only transactions, so the statement's type is checked on a prepared statement:
// one SELECT (or EXPLAIN) only.
func (duckDialect) readOnly(ctx context.Context, db *sql.DB, query string) (*sql.Tx, error) {
	conn, err := db.Conn(ctx)
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	err = conn.Raw(func(dc any) error {
		c, ok := dc.(*duckdb.Conn)
		if !ok {
			return errors.New("unexpected DuckDB driver connection")
		}
		st, err := c.PrepareContext(ctx, query)
		if err != nil {
			return err
		}
		defer st.Close()
		typ, err := st.(*duckdb.Stmt).StatementType()
		if err != nil {
			return err
		}
		if typ != duckdb.STATEMENT_TYPE_SELECT && typ != duckdb.STATEMENT_TYPE_EXPLAIN {
			return errors.New("only a single SELECT query may run against the link's target")
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return db.BeginTx(ctx, nil)
}

func (d duckDialect) cast(placeholder, t string) string {
	ct := d.columnType(t)
	if ct == "VARCHAR" || ct == "BLOB" {
		return placeholder
	}
	return "CAST(" + placeholder + " AS " + ct + ")"
}
