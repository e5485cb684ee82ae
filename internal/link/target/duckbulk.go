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

// upsertRows writes rows through DuckDB's query appender: the rows are appended to a temporary relation (see
// stagingColumns), and one INSERT ... SELECT with the same casts as a single-row upsert and the same ON CONFLICT
// clause moves them into the table. The appender runs on the
// connection's client context, so it writes inside the transaction open on conn: it commits or rolls back with
// the rest of the batch and the checkpoint. Closing it flushes, so the rows are in the table before the next
// change of the batch is applied.
func (d duckDialect) upsertRows(ctx context.Context, conn *sql.Conn, t *Table, rows [][]Value) error {
	return d.appendThrough(ctx, conn, t, t, d.stagingUpsert(t), rows)
}

// deleteRows deletes the rows of t with the given keys (values of t's key columns, in the table's column order)
// the same way: the keys are appended to the staging relation, and one DELETE removes their rows.
func (d duckDialect) deleteRows(ctx context.Context, conn *sql.Conn, t *Table, keys [][]Value) error {
	kt := keyTable(t)
	query := "DELETE FROM " + t.qualified() + " WHERE (" + kt.columnList() + ") IN (SELECT " + d.stagedValues(kt) + " FROM " + stagingTable + ")"
	return d.appendThrough(ctx, conn, t, kt, query, keys)
}

// appendThrough appends rows (of staged's columns) to the staging relation of a query appender running query,
// inside the transaction open on conn.
func (d duckDialect) appendThrough(ctx context.Context, conn *sql.Conn, t, staged *Table, query string, rows [][]Value) error {
	cols := d.stagingColumns(staged)
	types, err := stagingTypes(cols)
	if err != nil {
		return fmt.Errorf("%s: %s: %w", d.name(), t.qualified(), err)
	}
	names := stagingNames(staged)
	err = conn.Raw(func(dc any) error {
		c, ok := dc.(*duckdb.Conn)
		if !ok {
			return errors.New("unexpected DuckDB driver connection")
		}
		a, err := duckdb.NewQueryAppender(c, query, stagingTable, types, names)
		if err != nil {
			return err
		}
		if err := appendRows(a, staged, cols, rows); err != nil {
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

// stagingColumn is how a column's values travel through the appender.
type stagingColumn struct {
	typ duckdb.Type
	// value converts a non-NULL text value for the appender.
	value func(text string) (driver.Value, error)
}

// stagingColumns returns, per column of t, the staging type and conversion: integers as BIGINT (PostgreSQL's text
// for them is plain digits, read exactly; appended natively they skip a string copy and a cast), bytea as the
// bytes param gives, and the rest as the text itself, cast in the query exactly as a single-row upsert casts its
// parameter (booleans among them: the stream sends t/f, a snapshot's ::text true/false).
func (d duckDialect) stagingColumns(t *Table) []stagingColumn {
	cols := make([]stagingColumn, len(t.Columns))
	for i, c := range t.Columns {
		switch d.columnType(c.SourceType) {
		case "SMALLINT", "INTEGER", "BIGINT":
			cols[i] = stagingColumn{duckdb.TYPE_BIGINT, parseInteger}
		case "BLOB":
			sourceType := c.SourceType
			cols[i] = stagingColumn{duckdb.TYPE_BLOB, func(text string) (driver.Value, error) { return d.param(sourceType, text) }}
		default:
			cols[i] = stagingColumn{duckdb.TYPE_VARCHAR, func(text string) (driver.Value, error) { return text, nil }}
		}
	}
	return cols
}

func parseInteger(text string) (driver.Value, error) {
	n, err := strconv.ParseInt(text, 10, 64)
	if err != nil {
		return nil, fmt.Errorf("integer value %q: %w", text, err)
	}
	return n, nil
}

// stagingTypes returns the appender's column types.
func stagingTypes(cols []stagingColumn) ([]duckdb.TypeInfo, error) {
	types := make([]duckdb.TypeInfo, len(cols))
	for i, c := range cols {
		ti, err := duckdb.NewTypeInfo(c.typ)
		if err != nil {
			return nil, err
		}
		types[i] = ti
	}
	return types, nil
}

// stagingUpsert returns the query that upserts the staged rows into t.
func (d duckDialect) stagingUpsert(t *Table) string {
	return "INSERT INTO " + t.qualified() + " (" + t.columnList() + ") SELECT " + d.stagedValues(t) +
		" FROM " + stagingTable + upsertClause(t)
}

// stagedValues is the staging relation's columns (stagingNames) cast to t's columns, as a select list.
func (d duckDialect) stagedValues(t *Table) string {
	names := stagingNames(t)
	exprs := make([]string, len(t.Columns))
	for i, c := range t.Columns {
		exprs[i] = d.cast(names[i], c.SourceType)
	}
	return strings.Join(exprs, ", ")
}

// appendRows appends rows (a missing trailing value is NULL) converted for the staging columns.
func appendRows(a *duckdb.Appender, t *Table, cols []stagingColumn, rows [][]Value) error {
	vals := make([]driver.Value, len(cols))
	for _, row := range rows {
		for k, c := range cols {
			if k >= len(row) || row[k].Null {
				vals[k] = nil
				continue
			}
			v, err := c.value(row[k].Text)
			if err != nil {
				return fmt.Errorf("column %s: %w", t.Columns[k].Name, err)
			}
			vals[k] = v
		}
		if err := a.AppendRow(vals...); err != nil {
			return err
		}
	}
	return nil
}
