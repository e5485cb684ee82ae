package agent

import (
	"context"
	"sync"
)

// leaderRevHeader carries the revision of the caller's leadership (leader.Leadership.Rev): the fencing token of
// a host API call that changes something.
const leaderRevHeader = "Fogo-Leader-Rev"

// readOnlyOps change nothing on the host: anyone with the token may ask them (a waiting controller routing
// sessions asks whether an instance runs).
var readOnlyOps = map[string]bool{opPing: true, opReadFile: true, opExists: true, opReadDir: true, opPostmaster: true}

// LeaderFence lets only the elected controller change anything on the host. A controller that lost its
// leadership without noticing yet (frozen past its lease, cut off from etcd) still holds the token and may still
// call; its calls carry its leadership's revision, which is no longer the one in force.
type LeaderFence struct {
	// Current reads the revision of the leadership in force from etcd (leader.CurrentRev).
	Current func(ctx context.Context) (int64, error)
	mu      sync.Mutex
	highest int64
}

// Check refuses rev unless it is the leadership in force now: never older than one seen before, and equal to
// what etcd says (a linearizable read: an agent that cannot confirm it acts on nothing).
func (f *LeaderFence) Check(ctx context.Context, rev int64) error {
	if rev <= 0 {
		return refuse("a change needs the elected controller's leadership revision (%s)", leaderRevHeader)
	}
	f.mu.Lock()
	highest := f.highest
	f.mu.Unlock()
	if rev < highest {
		return refuse("stale controller: its leadership (revision %d) is older than one this agent has seen (%d)", rev, highest)
	}
	cur, err := f.Current(ctx)
	if err != nil {
		return refuse("cannot confirm the caller leads (%v): acting on nothing", err)
	}
	if rev != cur {
		return refuse("stale controller: its leadership (revision %d) is not the one in force (%d)", rev, cur)
	}
	f.mu.Lock()
	f.highest = max(f.highest, rev)
	f.mu.Unlock()
	return nil
}
