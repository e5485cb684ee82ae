package lostxact

import (
	"fmt"
	"io"
	"strings"
)

// WriteSQL writes the statements that would replay txns, one transaction block each, in commit order. Rows are
// found by their key (the replica identity's old values when the WAL has them, else the key columns of the new
// row); a change that cannot be addressed that way (a table without a key) is written as a comment that says so,
// as is a change the report did not keep. Nothing is run: the statements are for a person to review.
func WriteSQL(w io.Writer, database string, txns []Txn) error {
	if _, err := io.WriteString(w, "SET standard_conforming_strings = on;\n\n"); err != nil {
		return err
	}
	for _, t := range txns {
		fmt.Fprintf(w, "-- database %s: transaction %d, committed on the old primary at %s (commit record ends at %s)\n",
			database, t.XID, t.CommitTime.UTC().Format("2006-01-02 15:04:05.999999Z07:00"), t.CommitLSN)
		if missing := t.ChangeCount - len(t.Changes); missing > 0 {
			fmt.Fprintf(w, "-- %d of its %d changes are not in the report (it keeps a bounded number): do not replay it as is\n",
				missing, t.ChangeCount)
		}
		io.WriteString(w, "BEGIN;\n")
		for _, c := range t.Changes {
			io.WriteString(w, statement(c))
			io.WriteString(w, "\n")
		}
		if _, err := io.WriteString(w, "COMMIT;\n\n"); err != nil {
			return err
		}
	}
	return nil
}

// statement is one change as SQL.
func statement(c Change) string {
	table := quoteIdent(c.Schema) + "." + quoteIdent(c.Table)
	switch c.Op {
	case "insert":
		var names, values []string
		for _, col := range c.New {
			if col.Unchanged {
				continue
			}
			names, values = append(names, quoteIdent(col.Name)), append(values, literal(col.Value))
		}
		return fmt.Sprintf("INSERT INTO %s (%s) VALUES (%s);", table, strings.Join(names, ", "), strings.Join(values, ", "))
	case "update":
		where, ok := c.where()
		if !ok {
			return fmt.Sprintf("-- cannot replay an update of %s: the table has no key, and the WAL did not log the old row", table)
		}
		var set []string
		for _, col := range c.New {
			if !col.Unchanged {
				set = append(set, quoteIdent(col.Name)+" = "+literal(col.Value))
			}
		}
		return fmt.Sprintf("UPDATE %s SET %s WHERE %s;", table, strings.Join(set, ", "), where)
	case "delete":
		where, ok := c.where()
		if !ok {
			return fmt.Sprintf("-- cannot replay a delete from %s: the table has no key, and the WAL did not log the old row", table)
		}
		return fmt.Sprintf("DELETE FROM %s WHERE %s;", table, where)
	case "truncate":
		tables := append([]string{table}, c.AlsoTruncated...) // already quoted
		s := "TRUNCATE " + strings.Join(tables, ", ")
		if strings.Contains(c.TruncateFlags, "restart_seqs") {
			s += " RESTART IDENTITY"
		}
		if strings.Contains(c.TruncateFlags, "cascade") {
			s += " CASCADE"
		}
		return s + ";"
	}
	return fmt.Sprintf("-- unknown change %q of %s", c.Op, table)
}

// where addresses the changed row: by the old values the WAL logged, else by the key columns of the new row.
func (c Change) where() (string, bool) {
	cols := c.Old
	if len(cols) == 0 && c.Op == "update" {
		for _, k := range c.Key {
			for _, col := range c.New {
				if col.Name == k && !col.Unchanged {
					cols = append(cols, col)
				}
			}
		}
		if len(cols) != len(c.Key) {
			cols = nil
		}
	}
	if len(cols) == 0 {
		return "", false
	}
	var conds []string
	for _, col := range cols {
		if col.Unchanged {
			continue
		}
		if col.Value == nil {
			conds = append(conds, quoteIdent(col.Name)+" IS NULL")
			continue
		}
		conds = append(conds, quoteIdent(col.Name)+" = "+literal(col.Value))
	}
	return strings.Join(conds, " AND "), len(conds) > 0
}

func quoteIdent(s string) string { return `"` + strings.ReplaceAll(s, `"`, `""`) + `"` }

// literal is a value as an SQL string literal (standard_conforming_strings), which PostgreSQL casts to the
// column's type; nil is NULL.
func literal(v *string) string {
	if v == nil {
		return "NULL"
	}
	return "'" + strings.ReplaceAll(*v, "'", "''") + "'"
}
