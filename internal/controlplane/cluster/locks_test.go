package cluster

import (
	"context"
	"errors"
	"testing"
	"time"
)

func newLockManager() *Manager { return &Manager{locks: map[string]*groupLock{}} }

// A failover (LockNow) ends the background holder's context with ErrPreempted and gets the lock once the holder
// lets go; background work cannot take the lock while the failover waits.
func TestLockNowPreemptsBackgroundHolder(t *testing.T) {
	m := newLockManager()
	ctx, unlock, ok := m.TryLock(context.Background(), "g")
	if !ok {
		t.Fatal("TryLock on a free lock failed")
	}
	got := make(chan struct{})
	go func() {
		u := m.LockNow("g")
		close(got)
		u()
	}()
	select {
	case <-ctx.Done():
	case <-time.After(10 * time.Second):
		t.Fatal("the holder's context did not end when a failover wanted the lock")
	}
	if !Preempted(ctx) || !errors.Is(context.Cause(ctx), ErrPreempted) {
		t.Fatalf("cause %v, want ErrPreempted", context.Cause(ctx))
	}
	select {
	case <-got:
		t.Fatal("the failover got the lock while the holder still held it")
	case <-time.After(50 * time.Millisecond):
	}
	if _, _, ok := m.TryLock(context.Background(), "g"); ok {
		t.Fatal("TryLock succeeded on a held lock")
	}
	unlock()
	select {
	case <-got:
	case <-time.After(10 * time.Second):
		t.Fatal("the failover did not get the lock once the holder let go")
	}
}

// Lock (any other operation) waits for the background holder without ending its context, and background work
// does not start while it waits.
func TestLockWaitsWithoutPreempting(t *testing.T) {
	m := newLockManager()
	ctx, unlock, ok := m.TryLock(context.Background(), "g")
	if !ok {
		t.Fatal("TryLock on a free lock failed")
	}
	got := make(chan func())
	go func() { got <- m.Lock("g") }()
	deadline := time.Now().Add(10 * time.Second)
	for {
		l := m.lockFor("g")
		l.state.Lock()
		waiting := l.wanted > 0
		l.state.Unlock()
		if waiting {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("Lock never waited")
		}
		time.Sleep(time.Millisecond)
	}
	if ctx.Err() != nil {
		t.Fatalf("Lock ended the holder's context: %v", context.Cause(ctx))
	}
	unlock()
	var u func()
	select {
	case u = <-got:
	case <-time.After(10 * time.Second):
		t.Fatal("Lock did not get the lock once the holder let go")
	}
	if _, _, ok := m.TryLock(context.Background(), "g"); ok {
		t.Fatal("TryLock succeeded while an operation holds the lock")
	}
	u()
	if _, u2, ok := m.TryLock(context.Background(), "g"); !ok {
		t.Fatal("TryLock failed on a free lock")
	} else {
		u2()
	}
}

// Committed work is not cut short by a preemption, but still ends with its deadline and with any other end of
// its parent (fogo stopping).
func TestCommittedIgnoresOnlyPreemption(t *testing.T) {
	m := newLockManager()
	ctx, unlock, _ := m.TryLock(context.Background(), "g")
	dctx, cancelD := context.WithTimeout(ctx, time.Hour)
	defer cancelD()
	c, cancel, err := Committed(dctx)
	if err != nil {
		t.Fatal(err)
	}
	defer cancel()
	if dl, ok := c.Deadline(); !ok || time.Until(dl) < 59*time.Minute {
		t.Fatalf("committed context lost the deadline: %v %v", dl, ok)
	}
	go func() { m.LockNow("g")() }()
	<-dctx.Done()
	time.Sleep(20 * time.Millisecond)
	if c.Err() != nil {
		t.Fatalf("committed work was preempted: %v", context.Cause(c))
	}
	unlock()

	parent, stop := context.WithCancelCause(context.Background())
	c2, cancel2, err := Committed(parent)
	if err != nil {
		t.Fatal(err)
	}
	defer cancel2()
	shutdown := errors.New("fogo stops")
	stop(shutdown)
	select {
	case <-c2.Done():
	case <-time.After(10 * time.Second):
		t.Fatal("committed work did not end with its parent")
	}
	if !errors.Is(context.Cause(c2), shutdown) {
		t.Fatalf("cause %v, want the parent's", context.Cause(c2))
	}
}
