package target

import (
	"database/sql"
	"encoding/hex"
	"fmt"
	"regexp"
	"strings"

	_ "github.com/duckdb/duckdb-go/v2" // registers "duckdb"
	_ "github.com/jackc/pgx/v5/stdlib" // registers "pgx"
)

// OpenDuckDB opens (creating it if needed) a DuckDB file, with the settings of duckSettings: no access to
// anything outside the file, a memory limit, and a configuration no statement can change.
func OpenDuckDB(path string) (*Store, error) {
	dsn, err := duckDSN(path)
	if err != nil {
		return nil, fmt.Errorf("open DuckDB %s: %w", path, err)
	}
	db, err := sql.Open("duckdb", dsn)
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
	return &Store{db: db, dialect: pgDialect{}, connString: connString}, nil
}

// pgDialect keeps the source types as they are.
type pgDialect struct{}

func (pgDialect) name() string                      { return "postgres target" }
func (pgDialect) rowID() string                     { return "ctid" }
func (pgDialect) columnType(t string) string        { return t }
func (pgDialect) param(_, text string) (any, error) { return text, nil }
func (pgDialect) cast(placeholder, t string) string { return "CAST(" + placeholder + " AS " + t + ")" }

// duckDialect maps PostgreSQL types to DuckDB's.
type duckDialect struct{}

var numericRe = regexp.MustCompile(`^numeric\((\d+),(\d+)\)$`)

func (duckDialect) name() string { return "duckdb target" }

func (duckDialect) rowID() string { return "rowid" }

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

func (d duckDialect) cast(placeholder, t string) string {
	ct := d.columnType(t)
	if ct == "VARCHAR" || ct == "BLOB" {
		return placeholder
	}
	return "CAST(" + placeholder + " AS " + ct + ")"
}
