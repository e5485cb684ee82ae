package cluster

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/fogo-db/fogo/internal/controlplane/lostreport"
	"github.com/fogo-db/fogo/internal/postgres/lostxact"
)

// TestFailureKind: which failed reads of a lost-transaction report count toward its attempts. A read that ran out
// its whole bound counts (a lost WAL too large to decode in it must not keep the old primary from rejoining for
// ever); one cut short by a preemption or a stop, or by an inner bound, does not.
func TestFailureKind(t *testing.T) {
	live := context.Background()
	expired, cancel := context.WithDeadline(live, time.Now().Add(-time.Second))
	defer cancel()
	m := &Manager{locks: map[string]*groupLock{}}
	held, unlock, _ := m.TryLock(live, "g")
	go func() { m.LockNow("g")() }()
	<-held.Done()
	defer unlock()
	stopped, stop := context.WithCancel(live)
	stop()
	for _, c := range []struct {
		name string
		ctx  context.Context
		err  error
		want lostreport.Failure
	}{
		{"no slot", live, fmt.Errorf("read: %w", lostxact.ErrNoSlot), lostreport.Lasting},
		{"port taken", expired, transient{errors.New("could not create any TCP/IP sockets")}, lostreport.Transient},
		{"the whole bound spent", expired, fmt.Errorf("decode: %w", context.DeadlineExceeded), lostreport.Counted},
		{"preempted by a failover", held, context.Canceled, lostreport.Transient},
		{"fogo stopping", stopped, context.Canceled, lostreport.Transient},
		{"an inner bound", live, fmt.Errorf("start: %w", context.DeadlineExceeded), lostreport.Transient},
		{"a broken read", live, errors.New("invalid memory alloc request size"), lostreport.Counted},
	} {
		if got := failureKind(c.ctx, c.err); got != c.want {
			t.Errorf("%s: %v, want %v", c.name, got, c.want)
		}
	}
}
