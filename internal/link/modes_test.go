package link_test

import (
	"context"
	"fmt"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/fogo-db/fogo/internal/link"
	"github.com/fogo-db/fogo/internal/link/target"
	"github.com/fogo-db/fogo/internal/testutil/pgtest"
)

// TestLinkBatchMode: in batch mode a run applies what the source committed before it started, then returns with
// the link Idle; the next run picks up what was committed meanwhile.
func TestLinkBatchMode(t *testing.T) {
	pg := pgtest.NewPrimary(t)
	ctx := context.Background()
	src, err := pg.Connect(ctx, "postgres")
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close(ctx)
	exec(t, src, "CREATE TABLE a(id int PRIMARY KEY, note text)")
	exec(t, src, "INSERT INTO a SELECT i, 'a' || i FROM generate_series(1, 100) i")
	store, err := target.OpenDuckDB(filepath.Join(t.TempDir(), "batch.duckdb"))
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	cfg := link.Config{Name: "b", Source: dsn(pg), Target: store, Batch: true, Tables: []link.TableMapping{{SourceTable: "a"}}}
	for round := 0; round < 3; round++ {
		for i := 0; i < 20; i++ {
			exec(t, src, fmt.Sprintf("INSERT INTO a VALUES (%d, 'round %d')", 1000*(round+1)+i, round))
		}
		exec(t, src, fmt.Sprintf("DELETE FROM a WHERE id = %d", round+1))
		rctx, cancel := context.WithTimeout(ctx, time.Minute)
		l := link.New(cfg)
		began := time.Now()
		err := l.Run(rctx)
		cancel()
		t.Logf("round %d: batch took %s", round, time.Since(began))
		if err != nil {
			t.Fatalf("round %d: batch run: %v", round, err)
		}
		if st := l.Status(); st.Phase != "Idle" {
			t.Fatalf("round %d: status after the batch: %+v", round, st)
		}
		// Nothing was written after the run started: the target equals the source exactly.
		var want, got string
		if err := src.QueryRow(ctx, srcDigest+"a").Scan(&want); err != nil {
			t.Fatal(err)
		}
		if err := store.DB().QueryRow(dstDigest + "public.a").Scan(&got); err != nil || got != want {
			t.Fatalf("round %d: target %s (%v), source %s", round, got, err, want)
		}
	}
}

// TestLinkSourceTransactionsLandAtomically: a source transaction that changes two tables is visible in the
// target in both or in neither, at every moment a reader looks (crossTableTransaction).
func TestLinkSourceTransactionsLandAtomically(t *testing.T) {
	pg := pgtest.NewPrimary(t)
	ctx := context.Background()
	src, err := pg.Connect(ctx, "postgres")
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close(ctx)
	exec(t, src, "CREATE TABLE orders(id int PRIMARY KEY, note text)")
	exec(t, src, "CREATE TABLE lines(id int PRIMARY KEY, note text)")
	store, err := target.OpenDuckDB(filepath.Join(t.TempDir(), "atomic.duckdb"))
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	l := link.New(link.Config{Name: "x", Source: dsn(pg), Target: store,
		Tables: []link.TableMapping{{SourceTable: "orders"}, {SourceTable: "lines"}}})
	defer runLink(t, l)()
	converge(t, src, store, "SELECT count(*)::text FROM orders", "SELECT CAST(count(*) AS VARCHAR) FROM public.orders")

	var wg sync.WaitGroup
	done := make(chan struct{})
	var looks, torn int
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			select {
			case <-done:
				return
			default:
			}
			var o, li int
			tx, err := store.DB().BeginTx(ctx, nil)
			if err != nil {
				continue
			}
			if tx.QueryRow("SELECT (SELECT count(*) FROM public.orders), (SELECT count(*) FROM public.lines)").Scan(&o, &li) == nil {
				looks++
				if o != li {
					torn++
				}
			}
			tx.Rollback()
		}
	}()
	for i := 1; i <= 300; i++ {
		exec(t, src, fmt.Sprintf("BEGIN; INSERT INTO orders VALUES (%d, 'o'); INSERT INTO lines VALUES (%d, 'l'); COMMIT", i, i))
	}
	converge(t, src, store, "SELECT count(*)::text FROM lines", "SELECT CAST(count(*) AS VARCHAR) FROM public.lines")
	close(done)
	wg.Wait()
	if looks == 0 || torn != 0 {
		t.Fatalf("%d of %d looks at the target saw a source transaction in one table and not the other", torn, looks)
	}
	t.Logf("%d looks, none torn", looks)
}
