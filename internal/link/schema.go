package link

// Schema following: ADD COLUMN and DROP COLUMN on the source followed into the target; other changes fail the
// table alone.

import (
	"context"
	"fmt"

	"github.com/jackc/pgx/v5"

	"github.com/fogo-db/fogo/internal/link/target"
	"github.com/fogo-db/fogo/internal/postgres/logrepl"
)

// sameShape reports whether the stream's relation has the columns, with the types, the link's table has.
func sameShape(src *source, r logrepl.Relation) bool {
	if len(r.Columns) != len(src.target.Columns) || len(src.types) != len(r.Columns) {
		return false
	}
	for i, c := range r.Columns {
		if c.Name != src.target.Columns[i].Name || c.TypeOID != src.types[i].oid || c.TypMod != src.types[i].mod {
			return false
		}
	}
	return true
}

// followShape follows ADD COLUMN and DROP COLUMN on the source: it returns the target change that reshapes the
// target table, applied in the target transaction of its source transaction (applied at once, a transaction that
// updated a column and then dropped it could never commit in the target); stream places it before the
// transaction's row changes and projects those onto the new shape (project). src takes the new shape now: changes
// decoded before keep the old one. A column whose type changed, or a dropped key column, cannot be followed: an
// error.
func (l *Link) followShape(ctx context.Context, db *pgx.Conn, src *source, r logrepl.Relation) (target.Change, error) {
	old := map[string]target.Column{}
	for _, c := range src.target.Columns {
		old[c.Name] = c
	}
	var cols, added []target.Column
	seen := map[string]bool{}
	for _, rc := range r.Columns {
		var typ string
		if err := db.QueryRow(ctx, "SELECT format_type($1, $2)", rc.TypeOID, rc.TypMod).Scan(&typ); err != nil {
			return target.Change{}, fmt.Errorf("type of column %s: %w", rc.Name, err)
		}
		c := target.Column{Name: rc.Name, SourceType: typ}
		if prev, ok := old[rc.Name]; ok && prev.SourceType != typ {
			return target.Change{}, fmt.Errorf("the type of column %s changed from %s to %s; this cannot be followed: remove the table from the link and add it again to recreate and resynchronise it", rc.Name, prev.SourceType, typ)
		} else if !ok {
			added = append(added, c)
		}
		cols, seen[rc.Name] = append(cols, c), true
	}
	var dropped []string
	for _, c := range src.target.Columns {
		if !seen[c.Name] {
			for _, k := range src.target.Key {
				if k == c.Name {
					return target.Change{}, fmt.Errorf("key column %s was dropped; this cannot be followed: remove the table from the link and add it again to recreate and resynchronise it", c.Name)
				}
			}
			dropped = append(dropped, c.Name)
		}
	}
	l.cfg.Logger.Info("link follows a schema change", "link", l.cfg.Name, "table", src.target.Name,
		"added", len(added), "dropped", len(dropped))
	next := *src.target
	next.Columns = cols
	src.target = &next // changes decoded before keep the old shape
	src.types = src.types[:0:0]
	for _, rc := range r.Columns {
		src.types = append(src.types, colType{oid: rc.TypeOID, mod: rc.TypMod})
	}
	return target.Reshaped(src.target, added, dropped), nil
}

// project returns a row change decoded with an earlier shape of its table as a change of the table's shape to
// (the transaction's schema changes are applied before its row changes): values of columns to lacks are
// dropped; a column to has that the change lacks (added later in the transaction) is NULL in an inserted row and
// left as it is by an update or a delete.
func project(c target.Change, to *target.Table) target.Change {
	if c.Table == to || c.Kind == target.Reshape || c.Table == nil {
		return c
	}
	idx := make(map[string]int, len(c.Table.Columns))
	for i, col := range c.Table.Columns {
		idx[col.Name] = i
	}
	remap := func(row []target.Value, missing target.Value) []target.Value {
		if len(row) == 0 {
			return row // no old row: an update that kept its key
		}
		out := make([]target.Value, len(to.Columns))
		for j, col := range to.Columns {
			if i, ok := idx[col.Name]; ok && i < len(row) {
				out[j] = row[i]
			} else {
				out[j] = missing
			}
		}
		return out
	}
	newMissing := target.Value{Unchanged: true}
	if c.Kind == target.Insert {
		newMissing = target.Value{Null: true}
	}
	c.New, c.Old = remap(c.New, newMissing), remap(c.Old, target.Value{Unchanged: true})
	c.Table = to
	return c
}
