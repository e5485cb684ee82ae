package cluster

// The group locks: operations wait for them, background work yields them to a failover.

import (
	"context"
	"errors"
	"sync"
)

// groupLock serialises work on one group. Operations take it with Lock and wait; background work (the
// reconciler, the link keeper) takes it with TryLock and yields it: a failover that wants it (LockNow) cancels
// the background holder's context, so a reconciliation stuck on a host that does not answer (a dial to a cut-off
// host waits for its context) never delays a failover.
type groupLock struct {
	mu sync.Mutex

	state   sync.Mutex
	wanted  int                     // operations waiting in Lock: TryLock refuses meanwhile
	preempt context.CancelCauseFunc // the background holder's, nil when none holds it
}

// ErrPreempted is the cause of a background holder's context once an operation wants its lock.
var ErrPreempted = errors.New("an operation needs the group's lock")

func (m *Manager) lockFor(key string) *groupLock {
	m.mu.Lock()
	defer m.mu.Unlock()
	l, ok := m.locks[key]
	if !ok {
		l = &groupLock{}
		m.locks[key] = l
	}
	return l
}

// Lock serialises work on one group (or one standalone database); it returns the unlock function. Background
// work (TryLock) does not start while it waits.
func (m *Manager) Lock(key string) func() { return m.lock(key, false) }

// LockNow is Lock for a failover: a background holder is asked to yield at once (its context ends), so that a
// reconciliation waiting on a host that does not answer cannot hold the failover back for its whole bound.
func (m *Manager) LockNow(key string) func() { return m.lock(key, true) }

func (m *Manager) lock(key string, preempt bool) func() {
	l := m.lockFor(key)
	l.state.Lock()
	l.wanted++
	if preempt && l.preempt != nil {
		l.preempt(ErrPreempted)
	}
	l.state.Unlock()
	l.mu.Lock()
	l.state.Lock()
	l.wanted--
	l.state.Unlock()
	return l.mu.Unlock
}

// TryLock takes the lock for background work, or gives up at once when someone holds it or an operation waits
// for it. The work must run under the returned context, which ends (cause ErrPreempted) as soon as an operation
// wants the lock, and release it with the returned function.
func (m *Manager) TryLock(ctx context.Context, key string) (context.Context, func(), bool) {
	l := m.lockFor(key)
	l.state.Lock()
	defer l.state.Unlock()
	if l.wanted > 0 || !l.mu.TryLock() {
		return ctx, nil, false
	}
	ctx, cancel := context.WithCancelCause(ctx)
	l.preempt = cancel
	return ctx, func() {
		l.state.Lock()
		l.preempt = nil
		l.state.Unlock()
		cancel(nil)
		l.mu.Unlock()
	}, true
}

// Preempted reports whether ctx (from TryLock) ended because an operation wants the lock.
func Preempted(ctx context.Context) bool { return errors.Is(context.Cause(ctx), ErrPreempted) }

// Committed returns a context for background work past its point of no return (a rewind, a reseed's base backup,
// a standby stopped for a slot copy): it keeps ctx's deadline and ends with ctx, except when ctx ends by
// preemption. The failover then waits for that work, which is bounded by the deadline. Work not begun yet does not
// begin: if ctx has already ended (preempted or not), Committed returns its cause.
func Committed(ctx context.Context) (context.Context, context.CancelFunc, error) {
	if ctx.Err() != nil {
		return ctx, func() {}, context.Cause(ctx)
	}
	base, cancelDeadline := context.WithoutCancel(ctx), context.CancelFunc(func() {})
	if dl, ok := ctx.Deadline(); ok {
		base, cancelDeadline = context.WithDeadline(base, dl)
	}
	c, cancel := context.WithCancelCause(base)
	stop := context.AfterFunc(ctx, func() {
		if !Preempted(ctx) {
			cancel(context.Cause(ctx))
		}
	})
	return c, func() { stop(); cancel(nil); cancelDeadline() }, nil
}
