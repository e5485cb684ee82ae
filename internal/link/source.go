package link

// The source side: describing the linked tables (columns, key, replica identity) and the publication.

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/fogo-db/fogo/internal/link/target"
)

// sourceError marks a failure to read the source (as opposed to one of the target).
type sourceError struct{ error }

func (e sourceError) Unwrap() error { return e.error }

// selectAll reads every column of a source table as text.
func selectAll(t *source) string {
	cols := make([]string, len(t.target.Columns))
	for i, c := range t.target.Columns {
		cols[i] = pgx.Identifier{c.Name}.Sanitize() + "::text"
	}
	return "SELECT " + strings.Join(cols, ", ") + " FROM " + pgx.Identifier{t.m.SourceSchema, t.m.SourceTable}.Sanitize()
}

// scanText scans one row of text columns into target values.
func scanText(rows pgx.Rows, n int) ([]target.Value, error) {
	vals := make([]*string, n)
	ptrs := make([]any, n)
	for i := range vals {
		ptrs[i] = &vals[i]
	}
	if err := rows.Scan(ptrs...); err != nil {
		return nil, err
	}
	row := make([]target.Value, n)
	for i, v := range vals {
		if v == nil {
			row[i] = target.Value{Null: true}
		} else {
			row[i] = target.Value{Text: *v}
		}
	}
	return row, nil
}

// describe reads the columns, types and key of every linked table. A table that cannot be linked (it does not
// exist, it has no key) is returned failed, with the reason; the others are linked regardless.
func (l *Link) describe(ctx context.Context, db *pgx.Conn) (map[string]*source, error) {
	out := map[string]*source{}
	for _, m := range l.cfg.Tables {
		m = m.WithDefaults()
		t := &target.Table{Schema: m.TargetSchema, Name: m.TargetTable}
		rows, err := db.Query(ctx, `SELECT a.attname, format_type(a.atttypid, a.atttypmod),
				coalesce(a.attnum = ANY(i.indkey::int2[]), false), c.relreplident, a.atttypid, a.atttypmod, c.oid
			FROM pg_attribute a
			JOIN pg_class c ON c.oid = a.attrelid
			JOIN pg_namespace n ON n.oid = c.relnamespace
			LEFT JOIN pg_index i ON i.indrelid = c.oid AND i.indisprimary
			WHERE n.nspname = $1 AND c.relname = $2 AND a.attnum > 0 AND NOT a.attisdropped
			ORDER BY a.attnum`, m.SourceSchema, m.SourceTable)
		if err != nil {
			return nil, fmt.Errorf("describe %s.%s: %w", m.SourceSchema, m.SourceTable, err)
		}
		var ident string
		var oid uint32
		var types []colType
		for rows.Next() {
			var c target.Column
			var key bool
			var ct colType
			if err := rows.Scan(&c.Name, &c.SourceType, &key, &ident, &ct.oid, &ct.mod, &oid); err != nil {
				rows.Close()
				return nil, err
			}
			t.Columns, types = append(t.Columns, c), append(types, ct)
			if key {
				t.Key = append(t.Key, c.Name)
			}
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return nil, err
		}
		src := &source{key: m.SourceSchema + "." + m.SourceTable, m: m, target: t, types: types, oid: oid}
		switch {
		case len(t.Columns) == 0:
			src.failed, src.missing = fmt.Sprintf("source table %s does not exist", src.key), true
		case len(t.Key) == 0 && ident != "f":
			src.failed = fmt.Sprintf("source table %s: %v", src.key, target.ErrNoKey)
		case len(t.Key) == 0:
			t.Keyless = true // REPLICA IDENTITY FULL: rows match on every column, one at a time
		}
		if src.failed != "" {
			l.cfg.Logger.Warn("link table cannot be linked", "link", l.cfg.Name, "table", src.key, "err", src.failed)
			l.setTable(src.key, func(s *TableStatus) { s.Status, s.Err = TableFailed, src.failed })
		}
		out[src.key] = src
	}
	return out, nil
}

func (l *Link) ensurePublication(ctx context.Context, db *pgx.Conn, tables map[string]*source) error {
	names := make([]string, 0, len(tables))
	for _, t := range tables {
		names = append(names, pgx.Identifier{t.m.SourceSchema, t.m.SourceTable}.Sanitize())
	}
	list := strings.Join(names, ", ")
	var exists bool
	if err := db.QueryRow(ctx, "SELECT EXISTS (SELECT 1 FROM pg_publication WHERE pubname = $1)", l.slot).Scan(&exists); err != nil {
		return fmt.Errorf("link %s: read publication: %w", l.cfg.Name, err)
	}
	// Another session may create or drop the publication between the check and the statement (an earlier run's
	// statement still finishing, a second fogo): CREATE then finds it (42710, or 23505 when both created it at
	// once) and ALTER misses it (42704); the other statement follows. Two links publishing the same table at once
	// can deadlock on its catalog entries (40P01, the statement was rolled back): it is run again.
	for attempt := 0; ; attempt++ {
		sql := "CREATE PUBLICATION " + pgx.Identifier{l.slot}.Sanitize() + " FOR TABLE " + list
		if exists {
			sql = "ALTER PUBLICATION " + pgx.Identifier{l.slot}.Sanitize() + " SET TABLE " + list
		}
		_, err := db.Exec(ctx, sql)
		if err == nil {
			return nil
		}
		var pgErr *pgconn.PgError
		if attempt < 3 && errors.As(err, &pgErr) {
			switch pgErr.Code {
			case "42710", "23505", "42704":
				exists = pgErr.Code != "42704"
				continue
			case "40P01":
				time.Sleep(time.Duration(10+rand.IntN(40)) * time.Millisecond) // not in step with the other session
				continue
			}
		}
		return fmt.Errorf("link %s: publication: %w", l.cfg.Name, err)
	}
}
