package agent

import (
	"context"
	"errors"
	"path/filepath"
	"strings"
	"testing"
)

// TestLeaderFence: only the leadership in force may change anything on the host; an older one is refused even
// after etcd moved on, and so is any call when the agent cannot confirm who leads.
func TestLeaderFence(t *testing.T) {
	current, failing := int64(7), false
	f := &LeaderFence{Current: func(context.Context) (int64, error) {
		if failing {
			return 0, errors.New("etcd unreachable")
		}
		return current, nil
	}}
	ctx := context.Background()
	for _, c := range []struct {
		rev     int64
		refused string
	}{
		{0, "needs the elected controller's"},
		{6, "not the one in force"},
		{7, ""},
		{8, "not the one in force"},
	} {
		err := f.Check(ctx, c.rev)
		if (c.refused == "") != (err == nil) || (err != nil && !strings.Contains(err.Error(), c.refused)) {
			t.Errorf("rev %d: %v, want %q", c.rev, err, c.refused)
		}
	}
	current = 9 // a new controller was elected; the old one (7) wakes up
	if err := f.Check(ctx, 9); err != nil {
		t.Fatalf("the new leadership: %v", err)
	}
	if err := f.Check(ctx, 7); err == nil || !strings.Contains(err.Error(), "older than one this agent has seen") {
		t.Errorf("the deposed leadership after the new one was seen: %v", err)
	}
	failing = true
	if err := f.Check(ctx, 9); err == nil || !strings.Contains(err.Error(), "cannot confirm") {
		t.Errorf("without etcd: %v, want a refusal", err)
	}
}

// TestHostAPIFencesStaleControllers: with a leader fence, a change from a stale leadership is refused (409) and
// nothing is done, a read needs no leadership, and the leadership in force acts.
func TestHostAPIFencesStaleControllers(t *testing.T) {
	c, root := hostAPI(t)
	srv := serverOf(t, c)
	srv.Leader = &LeaderFence{Current: func(context.Context) (int64, error) { return 5, nil }}
	dir := filepath.Join(root, "i1")
	stale := *c
	stale.LeaderRev = func() int64 { return 4 }
	if err := stale.MkdirAll(dir); err == nil || !strings.Contains(err.Error(), "stale controller") {
		t.Fatalf("a change from a stale leadership: %v", err)
	}
	if ok, err := stale.Exists(dir); err != nil || ok {
		t.Fatalf("a read from a stale leadership: %v %v (and the change must not have happened)", ok, err)
	}
	cur := *c
	cur.LeaderRev = func() int64 { return 5 }
	if err := cur.MkdirAll(dir); err != nil {
		t.Fatalf("the leadership in force: %v", err)
	}
}
