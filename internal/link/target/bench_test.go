package target

import (
	"context"
	"fmt"
	"path/filepath"
	"testing"

	"github.com/fogo-db/fogo/internal/postgres/lsn"
)

// BenchmarkApplyDuckDB applies batches of 5000 inserts (the link's batch size) of the link benchmark's table.
func BenchmarkApplyDuckDB(b *testing.B) {
	s, err := OpenDuckDB(filepath.Join(b.TempDir(), "b.duckdb"))
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	ctx := context.Background()
	if _, err := s.Checkpoint(ctx, "l"); err != nil {
		b.Fatal(err)
	}
	t := &Table{Schema: "public", Name: "bench_link", Key: []string{"id"}, Columns: []Column{
		{"id", "bigint"}, {"payload", "text"}, {"n", "integer"}, {"created_at", "timestamp with time zone"}}}
	if err := s.EnsureTable(ctx, t, true); err != nil {
		b.Fatal(err)
	}
	const batch = 5000
	changes := make([]Change, batch)
	id := 0
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		for k := range changes {
			id++
			changes[k] = Change{Kind: Insert, Table: t, New: []Value{{Text: fmt.Sprint(id)},
				{Text: fmt.Sprintf("%032x", id)}, {Text: fmt.Sprint(id % 1000)}, {Text: "2026-11-23 12:30:43.123456+00"}}}
		}
		if err := s.Apply(ctx, "l", changes, lsn.LSN(i+1)); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.N*batch)/b.Elapsed().Seconds(), "rows/s")
}
