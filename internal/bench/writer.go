package bench

import (
	"cmp"
	"context"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
)

// writer commits one-row transactions continuously to whichever of its targets accepts writes, and records
// the time of every acknowledged commit. A failed commit or connection moves it to the next target.
type writer struct {
	targets []string // connection strings
	table   string
	// timeout, when positive, bounds each connection attempt and each commit (a target that went silent, say a
	// host cut off, fails after it and the writer moves on); zero: 2 s per connection, commits unbounded.
	timeout time.Duration

	mu     sync.Mutex
	commit []time.Time
	errors int
}

func (w *writer) run(ctx context.Context) {
	var conn *pgx.Conn
	next := 0
	defer func() {
		if conn != nil {
			conn.Close(context.Background())
		}
	}()
	for ctx.Err() == nil {
		if conn == nil {
			cctx, cancel := context.WithTimeout(ctx, cmp.Or(w.timeout, 2*time.Second))
			c, err := pgx.Connect(cctx, w.targets[next%len(w.targets)])
			cancel()
			next++
			if err != nil {
				w.fail()
				time.Sleep(time.Millisecond)
				continue
			}
			conn = c
		}
		if err := w.insert(ctx, conn); err != nil {
			w.fail()
			conn.Close(context.Background())
			conn = nil
			continue
		}
		now := time.Now()
		w.mu.Lock()
		w.commit = append(w.commit, now)
		w.mu.Unlock()
	}
}

// insert commits one row, within w.timeout when set.
func (w *writer) insert(ctx context.Context, conn *pgx.Conn) error {
	if w.timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, w.timeout)
		defer cancel()
	}
	_, err := conn.Exec(ctx, "INSERT INTO "+w.table+" DEFAULT VALUES")
	return err
}

func (w *writer) fail() { w.mu.Lock(); w.errors++; w.mu.Unlock() }

// longestGap is the longest time between two consecutive acknowledged commits within [from, to].
func (w *writer) longestGap(from, to time.Time) time.Duration {
	w.mu.Lock()
	defer w.mu.Unlock()
	var gap time.Duration
	var prev time.Time
	for _, c := range w.commit {
		if c.Before(from) {
			prev = c
			continue
		}
		if !prev.IsZero() {
			gap = max(gap, c.Sub(prev))
		}
		prev = c
		if c.After(to) {
			break
		}
	}
	return gap
}

func (w *writer) commits() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return len(w.commit)
}

// during runs fn while a writer writes; the writer starts settle before fn and stops settle after it.
func during(ctx context.Context, w *writer, settle time.Duration, fn func() error) (from, to time.Time, err error) {
	wctx, stop := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { defer close(done); w.run(wctx) }()
	time.Sleep(settle)
	from = time.Now()
	err = fn()
	for i := 0; i < 100 && w.lastCommit().Before(from); i++ {
		time.Sleep(50 * time.Millisecond) // let the writer find the new primary
	}
	time.Sleep(settle)
	to = time.Now()
	stop()
	<-done
	return from, to, err
}

// firstAfter is the first acknowledged commit after t (zero if none yet).
func (w *writer) firstAfter(t time.Time) time.Time {
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, c := range w.commit {
		if c.After(t) {
			return c
		}
	}
	return time.Time{}
}

func (w *writer) lastCommit() time.Time {
	w.mu.Lock()
	defer w.mu.Unlock()
	if len(w.commit) == 0 {
		return time.Time{}
	}
	return w.commit[len(w.commit)-1]
}

func execDSN(ctx context.Context, dsn, sql string) error {
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		return err
	}
	defer conn.Close(ctx)
	_, err = conn.Exec(ctx, sql)
	return err
}
