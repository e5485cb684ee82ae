package target

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/duckdb/duckdb-go/v2"
)

// upsertRows writes rows through DuckDB's query appender: the rows are appended, as the text (or bytes, for
// bytea) the dialect's param gives, to a temporary relation, and one INSERT ... SELECT with the same casts as a
// single-row upsert and the same ON CONFLICT clause moves them into the table. The appender runs on the
// connection's client context, so it writes inside the transaction open on conn: it commits or rolls back with
// the rest of the batch and the checkpoint. Closing it flushes, so the rows are in the table before the next
// change of the batch is applied.
func (d duckDialect) upsertRows(ctx context.Context, conn *sql.Conn, t *Table, rows [][]Value) error {
	types, err := d.stagingTypes(t)
	if err != nil {
		return fmt.Errorf("%s: %s: %w", d.name(), t.qualified(), err)
	}
	names := stagingNames(t)
	query := d.stagingUpsert(t, names)
	err = conn.Raw(func(dc any) error {
		c, ok := dc.(*duckdb.Conn)
		if !ok {
			return errors.New("unexpected DuckDB driver connection")
		}
		a, err := duckdb.NewQueryAppender(c, query, stagingTable, types, names)
		if err != nil {
			return err
		}
		if err := d.appendRows(a, t, rows); err != nil {
			a.Close() // the rows appended so far are abandoned with the transaction
			return err
		}
		return a.Close()
	})
	if err != nil {
		return fmt.Errorf("%s: apply to %s: %w", d.name(), t.qualified(), err)
	}
	return nil
}

// stagingTable names the appender's temporary relation in its query.
const stagingTable = "_fogo_rows"

// stagingNames returns the staging relation's column names, c1..cN (source column names may be anything).
func stagingNames(t *Table) []string {
	names := make([]string, len(t.Columns))
	for i := range t.Columns {
		names[i] = "c" + strconv.Itoa(i+1)
	}
	return names
}

// stagingTypes returns the staging relation's column types: BLOB for columns stored as BLOB (param gives
// bytes), VARCHAR for the rest (the text is cast in the query, as a single-row upsert casts its parameter).
func (d duckDialect) stagingTypes(t *Table) ([]duckdb.TypeInfo, error) {
	varchar, err := duckdb.NewTypeInfo(duckdb.TYPE_VARCHAR)
	if err != nil {
		return nil, err
	}
	blob, err := duckdb.NewTypeInfo(duckdb.TYPE_BLOB)
	if err != nil {
		return nil, err
	}
	types := make([]duckdb.TypeInfo, len(t.Columns))
	for i, c := range t.Columns {
		types[i] = varchar
		if d.columnType(c.SourceType) == "BLOB" {
			types[i] = blob
		}
	}
	return types, nil
}

// stagingUpsert returns the query that upserts the staged rows into t.
func (d duckDialect) stagingUpsert(t *Table, names []string) string {
	cols := make([]string, len(t.Columns))
	exprs := make([]string, len(t.Columns))
	for i, c := range t.Columns {
		cols[i] = qi(c.Name)
		exprs[i] = d.cast(names[i], c.SourceType)
	}
	return "INSERT INTO " + t.qualified() + " (" + strings.Join(cols, ", ") + ") SELECT " + strings.Join(exprs, ", ") +
		" FROM " + stagingTable + upsertClause(t)
}

// appendRows appends rows (a missing trailing value is NULL) converted by the dialect's param.
func (d duckDialect) appendRows(a *duckdb.Appender, t *Table, rows [][]Value) error {
	vals := make([]driver.Value, len(t.Columns))
	for _, row := range rows {
		for k, c := range t.Columns {
			if k >= len(row) || row[k].Null {
				vals[k] = nil
				continue
			}
			p, err := d.param(c.SourceType, row[k].Text)
			if err != nil {
				return fmt.Errorf("column %s: %w", c.Name, err)
			}
			vals[k] = p
		}
		if err := a.AppendRow(vals...); err != nil {
			return err
		}
	}
	return nil
}
