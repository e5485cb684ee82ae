package lostxact_test

import (
	"context"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/fogo-db/fogo/internal/postgres/instance"
	"github.com/fogo-db/fogo/internal/postgres/lostxact"
	"github.com/fogo-db/fogo/internal/testutil/pgtest"
)

// BenchmarkKeepUpkeep measures one upkeep of the lost-transaction slot as the observer runs it on a primary with
// a streaming geo-secondary and a light write load (100 rows between two upkeeps): a new connection, Keep (read
// progress, advance), close; and, apart, the connection alone.
// Its result sizes the observer's keepEvery: `go test -run '^$' -bench KeepUpkeep ./internal/postgres/lostxact`.
func BenchmarkKeepUpkeep(b *testing.B) {
	ctx := context.Background()
	primary := pgtest.NewPrimary(b)
	pgtest.NewStandby(b, primary, "keep_bench")
	w, err := primary.Connect(ctx, "postgres")
	if err != nil {
		b.Fatal(err)
	}
	defer w.Close(ctx)
	if _, err := w.Exec(ctx, "CREATE TABLE t(id bigserial PRIMARY KEY, v text)"); err != nil {
		b.Fatal(err)
	}
	b.Run("connect-only", func(b *testing.B) {
		for b.Loop() {
			c, err := primary.Connect(ctx, "postgres")
			if err != nil {
				b.Fatal(err)
			}
			c.Close(ctx)
		}
	})
	b.Run("upkeep", func(b *testing.B) { benchKeep(b, primary, w) })
}

func benchKeep(b *testing.B, primary *instance.Instance, w *pgx.Conn) {
	ctx := context.Background()
	for b.Loop() {
		b.StopTimer()
		if _, err := w.Exec(ctx, "INSERT INTO t(v) SELECT 'x' FROM generate_series(1, 100)"); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
		c, err := primary.Connect(ctx, "postgres")
		if err != nil {
			b.Fatal(err)
		}
		if _, err := lostxact.Keep(ctx, c); err != nil {
			b.Fatal(err)
		}
		c.Close(ctx)
	}
}
