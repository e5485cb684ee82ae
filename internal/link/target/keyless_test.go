package target

import (
	"context"
	"testing"
)

// TestKeylessTableLosesAnEarlierKey: a keyless table's target table made by an earlier fogo (a primary key over
// every column) loses the key, rows kept; duplicates and NULLs then apply, and a delete removes one row of two.
func TestKeylessTableLosesAnEarlierKey(t *testing.T) {
	for name, s := range map[string]*Store{"duck": openDuck(t, true), "duck statements": openDuck(t, false), "pg": openPostgres(t)} {
		t.Run(name, func(t *testing.T) {
			ctx := context.Background()
			checkpointOf(t, s) // creates the checkpoint table, as a link's start does
			old := &Table{Schema: "analytics", Name: "n", Key: []string{"x", "y"}, Columns: []Column{{"x", "integer"}, {"y", "text"}}}
			if err := s.EnsureTable(ctx, old, true); err != nil {
				t.Fatal(err)
			}
			apply(t, s, 100, Change{Kind: Insert, Table: old, New: []Value{{Text: "1"}, {Text: "a"}}})
			tb := &Table{Schema: "analytics", Name: "n", Keyless: true, Columns: old.Columns}
			if err := s.EnsureTable(ctx, tb, false); err != nil {
				t.Fatal(err)
			}
			one := []Value{{Text: "1"}, {Text: "a"}}
			apply(t, s, 200,
				Change{Kind: Insert, Table: tb, New: one}, Change{Kind: Insert, Table: tb, New: one},
				Change{Kind: Insert, Table: tb, New: []Value{{Null: true}, {Null: true}}},
				Change{Kind: Delete, Table: tb, Old: one},
				Change{Kind: Update, Table: tb, Old: one, New: []Value{{Text: "2"}, {Text: "b"}}},
			)
			var got string
			if err := s.DB().QueryRowContext(ctx, `SELECT string_agg(coalesce(CAST(x AS VARCHAR), '~') || ':' || coalesce(y, '~'), ',' ORDER BY x NULLS LAST, y)
				FROM analytics.n`).Scan(&got); err != nil || got != "1:a,2:b,~:~" {
				t.Fatalf("rows %q (%v)", got, err)
			}
		})
	}
}
