package chaos

// The writers and their ledger: every commit the read-write listener acknowledged, and every commit whose outcome
// the writer could not know (the connection broke while it was on its way).

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
)

// ledger is what the writers know of their commits. Ids are made by the writers (writer<<40 | sequence), so an
// id is never used twice, not even after a forced failover lost it.
type ledger struct {
	mu      sync.Mutex
	acked   map[int64]bool
	inDoubt map[int64]bool
	lost    map[int64]bool // acknowledged, then lost by a forced failover as its report says
	paused  bool
	cond    *sync.Cond
	busy    int // writers inside a statement
}

func newLedger() *ledger {
	l := &ledger{acked: map[int64]bool{}, inDoubt: map[int64]bool{}, lost: map[int64]bool{}}
	l.cond = sync.NewCond(&l.mu)
	return l
}

// pause stops the writers between statements and waits until none is inside one; resume lets them go on.
func (l *ledger) pause() {
	l.mu.Lock()
	l.paused = true
	for l.busy > 0 {
		l.cond.Wait()
	}
	l.mu.Unlock()
}

func (l *ledger) resume() {
	l.mu.Lock()
	l.paused = false
	l.cond.Broadcast()
	l.mu.Unlock()
}

// enter waits while paused and counts the writer in; it returns false once ctx ends.
func (l *ledger) enter(ctx context.Context) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	for l.paused && ctx.Err() == nil {
		l.cond.Wait()
	}
	if ctx.Err() != nil {
		return false
	}
	l.busy++
	return true
}

func (l *ledger) leave(id int64, acked, doubt bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.busy--
	if acked {
		l.acked[id] = true
	} else if doubt {
		l.inDoubt[id] = true
	}
	l.cond.Broadcast()
}

// expected returns the acknowledged ids that must be on the primary: all but those a report said were lost.
func (l *ledger) expected() []int64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	out := make([]int64, 0, len(l.acked))
	for id := range l.acked {
		if !l.lost[id] {
			out = append(out, id)
		}
	}
	return out
}

func (l *ledger) counts() (acked, doubt, lost int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.acked), len(l.inDoubt), len(l.lost)
}

// write is one writer: it commits rows through the read-write listener until ctx ends, a few hundred a second,
// reconnecting whenever its session breaks.
func (c *campaign) write(ctx context.Context, writer int64) {
	seq := int64(0)
	var conn *pgx.Conn
	defer func() {
		if conn != nil {
			conn.Close(context.Background())
		}
	}()
	for ctx.Err() == nil {
		if conn == nil {
			cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			conn, _ = c.dial(cctx, c.rw)
			cancel()
			if conn == nil {
				sleep(ctx, 50*time.Millisecond)
				continue
			}
		}
		if !c.ledger.enter(ctx) {
			return
		}
		seq++
		id := writer<<40 | seq
		sctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
		_, err := conn.Exec(sctx, "INSERT INTO ledger(id, note) VALUES ($1, $2)", id, fmt.Sprintf("w%d-%d", writer, seq))
		cancel()
		// Any failure once the statement was sent leaves its outcome unknown: the commit may have happened.
		c.ledger.leave(id, err == nil, err != nil && !refusedBeforeCommit(err))
		if err != nil {
			conn.Close(context.Background())
			conn = nil
			sleep(ctx, 20*time.Millisecond)
			continue
		}
		sleep(ctx, 4*time.Millisecond)
	}
}

// refusedBeforeCommit reports an error that proves the insert did not commit: the server refused it (a
// read-only standby, an error before the commit), not a session that broke on its way.
func refusedBeforeCommit(err error) bool {
	s := err.Error()
	return strings.Contains(s, "SQLSTATE 25006") || strings.Contains(s, "SQLSTATE 23505") || strings.Contains(s, "SQLSTATE 57P03")
}

func sleep(ctx context.Context, d time.Duration) {
	select {
	case <-ctx.Done():
	case <-time.After(d):
	}
}
