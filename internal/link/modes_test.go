package link_test

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/fogo-db/fogo/internal/link"
	"github.com/fogo-db/fogo/internal/link/target"
	"github.com/fogo-db/fogo/internal/postgres/instance"
	"github.com/fogo-db/fogo/internal/testutil/pgtest"
)

// TestLinkBatchMode: in batch mode a run applies what the source committed before it started, then returns with
// the link Idle; the next run picks up what was committed meanwhile.
func TestLinkBatchMode(t *testing.T) {
	ctx := context.Background()
	pg, src, store := sourceAndDuckDB(t,
		"CREATE TABLE a(id int PRIMARY KEY, note text)",
		"INSERT INTO a SELECT i, 'a' || i FROM generate_series(1, 100) i",
	)
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
	ctx := context.Background()
	pg, src, store := sourceAndDuckDB(t,
		"CREATE TABLE orders(id int PRIMARY KEY, note text)",
		"CREATE TABLE lines(id int PRIMARY KEY, note text)",
	)
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

// TestLinkSurvivesSourceAndTargetRestarts: the source and then the (PostgreSQL) target restart while clients
// write; the link, run again after each error as fogo's supervisor does, ends with exactly the source's rows.
func TestLinkSurvivesSourceAndTargetRestarts(t *testing.T) {
	pg, dst := pgtest.NewPrimary(t), pgtest.NewPrimary(t)
	ctx := context.Background()
	exec1 := func(sql string) {
		t.Helper()
		deadline := time.Now().Add(30 * time.Second)
		for {
			c, err := pg.Connect(ctx, "postgres")
			if err == nil {
				_, err = c.Exec(ctx, sql)
				c.Close(ctx)
			}
			if err == nil {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: %v", sql, err)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	exec1("CREATE TABLE a(id int PRIMARY KEY, note text)")
	store, err := target.OpenPostgres(dsn(dst))
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	cfg := link.Config{Name: "rr", Source: dsn(pg), Target: store, Tables: []link.TableMapping{{SourceTable: "a"}}}
	rctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	runs := 0
	go func() { // what the supervisor does: run again after an error
		defer close(done)
		for rctx.Err() == nil {
			runs++
			_ = link.New(cfg).Run(rctx)
			time.Sleep(100 * time.Millisecond)
		}
	}()
	defer func() { cancel(); <-done }()
	id := 0
	write := func(n int) {
		for i := 0; i < n; i++ {
			id++
			exec1(fmt.Sprintf("INSERT INTO a VALUES (%d, 'n%d')", id, id))
			if id%5 == 0 {
				exec1(fmt.Sprintf("UPDATE a SET note = note || '+' WHERE id = %d", id-3))
			}
		}
	}
	write(100)
	for _, in := range []*instance.Instance{pg, dst} {
		if err := in.Stop(ctx, instance.ShutdownFast); err != nil {
			t.Fatal(err)
		}
		time.Sleep(300 * time.Millisecond)
		if err := in.Start(ctx); err != nil {
			t.Fatal(err)
		}
		write(100)
	}
	src, err := pg.Connect(ctx, "postgres")
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close(ctx)
	converge(t, src, store, srcDigest+"a", dstDigest+"public.a")
	if runs < 3 {
		t.Fatalf("the link ran %d times: the restarts did not interrupt it", runs)
	}
}

// TestLinkHeartbeatOnIdleSource: on a source with nothing to send, the link asks for replies, so its status keeps
// a recent heartbeat (a silent dead connection would end the run instead of showing Streaming forever).
func TestLinkHeartbeatOnIdleSource(t *testing.T) {
	pg, _, store := sourceAndDuckDB(t,
		"CREATE TABLE a(id int PRIMARY KEY, note text)",
	)
	l := link.New(link.Config{Name: "hb", Source: dsn(pg), Target: store, Tables: []link.TableMapping{{SourceTable: "a"}}})
	defer runLink(t, l)()
	waitTable(t, l, "public.a", link.TableReplicating)
	idleFrom := time.Now()
	time.Sleep(9 * time.Second)
	if st := l.Status(); st.Phase != "Streaming" || !st.LastHeard.After(idleFrom.Add(3*time.Second)) {
		t.Fatalf("no heartbeat from an idle source: idle since %s, status %+v", idleFrom.Format(time.RFC3339Nano), st)
	}
}

// TestCarryOver: a new run of a link keeps what the previous one knew of its tables until it learns newer facts.
func TestCarryOver(t *testing.T) {
	at := time.Date(2026, 11, 23, 10, 0, 0, 0, time.UTC)
	l := link.New(link.Config{Name: "c", Tables: []link.TableMapping{{SourceTable: "a"}, {SourceTable: "b"}}})
	l.CarryOver(link.Status{LastCommit: at, Tables: []link.TableStatus{
		{Source: "public.a", LastCommit: at, LastApplied: at.Add(time.Second), Resync: "because"},
		{Source: "public.gone", LastCommit: at},
	}})
	st := l.Status()
	if !st.LastCommit.Equal(at) || len(st.Tables) != 2 {
		t.Fatalf("status: %+v", st)
	}
	a, b := st.Tables[0], st.Tables[1]
	if !a.LastCommit.Equal(at) || !a.LastApplied.Equal(at.Add(time.Second)) || a.Resync != "because" || !b.LastCommit.IsZero() {
		t.Fatalf("tables: %+v", st.Tables)
	}
}
