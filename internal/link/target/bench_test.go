package target

import (
	"context"
	"fmt"
	"path/filepath"
	"testing"

	"github.com/fogo-db/fogo/internal/postgres/lsn"
)

// BenchmarkApply applies batches of 5000 inserts (the link's batch size) of the link benchmark's table, each with
// a checkpoint, through DuckDB's bulk path and through multi-row statements (PostgreSQL has only the latter).
func BenchmarkApply(b *testing.B) {
	for _, bulk := range []bool{true, false} {
		b.Run(fmt.Sprintf("duckdb/bulk=%v", bulk), func(b *testing.B) {
			s, err := OpenDuckDB(filepath.Join(b.TempDir(), "b.duckdb"))
			if err != nil {
				b.Fatal(err)
			}
			defer s.Close()
			benchApply(b, s, bulk)
		})
	}
	b.Run("postgres", func(b *testing.B) { benchApply(b, openPostgres(b), true) })
}

func benchApply(b *testing.B, s *Store, bulk bool) {
	if !bulk {
		s.dialect = statementsOnly{s.dialect}
	}
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

// BenchmarkQuery measures what containment costs a small analytical query of the query extension: the contained
// path (parse-tree checks, LIMIT wrapping, a read-only transaction; on PostgreSQL the reader's grants and rights
// check plus a connection of its own) against the same query run directly on the store's pool.
func BenchmarkQuery(b *testing.B) {
	const q = "SELECT n, count(*) AS c FROM public.bench_link GROUP BY n ORDER BY c DESC, n LIMIT 10"
	run := func(b *testing.B, s *Store) {
		ctx := context.Background()
		if _, err := s.Checkpoint(ctx, "l"); err != nil {
			b.Fatal(err)
		}
		t := &Table{Schema: "public", Name: "bench_link", Key: []string{"id"}, Columns: []Column{{"id", "bigint"}, {"n", "integer"}}}
		if err := s.EnsureTable(ctx, t, true); err != nil {
			b.Fatal(err)
		}
		var rows []Change
		for i := range 10000 {
			rows = append(rows, Change{Kind: Insert, Table: t, New: []Value{{Text: fmt.Sprint(i)}, {Text: fmt.Sprint(i % 100)}}})
		}
		if err := s.Apply(ctx, "l", rows, 1); err != nil {
			b.Fatal(err)
		}
		b.Run("contained", func(b *testing.B) {
			for b.Loop() {
				res, err := s.Query(ctx, QueryRequest{SQL: q, Link: "bench/l", Tables: []TableName{{"public", "bench_link"}}})
				if err != nil || len(res.Rows) != 10 {
					b.Fatal(res, err)
				}
			}
		})
		b.Run("direct", func(b *testing.B) {
			for b.Loop() {
				r, err := s.DB().QueryContext(ctx, q)
				if err != nil {
					b.Fatal(err)
				}
				n := 0
				for r.Next() {
					n++
				}
				r.Close()
				if n != 10 {
					b.Fatal(n)
				}
			}
		})
	}
	b.Run("duckdb", func(b *testing.B) {
		s, err := OpenDuckDB(filepath.Join(b.TempDir(), "q.duckdb"))
		if err != nil {
			b.Fatal(err)
		}
		defer s.Close()
		run(b, s)
	})
	b.Run("postgres", func(b *testing.B) { run(b, openPostgres(b)) })
}
