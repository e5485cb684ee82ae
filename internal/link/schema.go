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

// followShape follows ADD COLUMN and DROP COLUMN on the source into the target table. A column whose type
// changed, or a dropped key column, cannot be followed: the link stops with that error.
func (l *Link) followShape(ctx context.Context, db *pgx.Conn, src *source, r logrepl.Relation) error {
	old := map[string]target.Column{}
	for _, c := range src.target.Columns {
		old[c.Name] = c
	}
	var cols, added []target.Column
	seen := map[string]bool{}
	for _, rc := range r.Columns {
		var typ string
		if err := db.QueryRow(ctx, "SELECT format_type($1, $2)", rc.TypeOID, rc.TypMod).Scan(&typ); err != nil {
			return fmt.Errorf("type of column %s: %w", rc.Name, err)
		}
		c := target.Column{Name: rc.Name, SourceType: typ}
		if prev, ok := old[rc.Name]; ok && prev.SourceType != typ {
			return fmt.Errorf("the type of column %s changed from %s to %s; this cannot be followed: remove the table from the link and add it again to recreate and resynchronise it", rc.Name, prev.SourceType, typ)
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
					return fmt.Errorf("key column %s was dropped; this cannot be followed: remove the table from the link and add it again to recreate and resynchronise it", c.Name)
				}
			}
			dropped = append(dropped, c.Name)
		}
	}
	if err := l.cfg.Target.AlterTable(ctx, src.target, added, dropped); err != nil {
		return err
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
	return nil
}
