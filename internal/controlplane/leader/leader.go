// Package leader elects the one controller that acts on a store shared in etcd: it runs the long-running
// operations, the reconciler, the monitor and the Automatic policy; the others wait to take over.
//
// Leadership is an etcd election (go.etcd.io/etcd/client/v3/concurrency) under the store's prefix, held with a
// session lease of TTL seconds that the client keeps alive. If the lease cannot be renewed (etcd unreachable for
// longer than the TTL, or the leader frozen), etcd expires it and another controller is elected; the old leader
// learns it from Lost and must stop acting at once (fogo exits). Decisions themselves are still made with the
// store's serializable transactions, so a leader that has not yet noticed its loss cannot overwrite what the new
// one decided: leadership keeps the controllers from working against each other, the store keeps them correct.
package leader

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/fogo-db/fogo/internal/controlplane/store"
	"github.com/fogo-db/fogo/internal/lease"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"
)

// DefaultTTL is the leader lease's time to live.
const DefaultTTL = 10 * time.Second

// Leadership is a won election.
type Leadership struct {
	session  *concurrency.Session
	election *concurrency.Election
	lost     <-chan struct{} // closed by lease.Guard
	stop     context.CancelFunc
}

// margin is how long before its lease could expire a leader that has not renewed it gives up: the lease's
// remaining time as etcd last reported it, less a third of the TTL (for clock rate differences and the time the
// caller needs to stop acting).
func margin(ttl time.Duration) time.Duration { return ttl / 3 }

// electionKey is the election's prefix under the store's prefix.
func electionKey(prefix string) string { return prefix + "/_leader" }

// Campaign blocks until name leads (or ctx ends), then returns its leadership. waiting, if set, is called once
// with the current leader's name when another controller leads.
func Campaign(ctx context.Context, cli *clientv3.Client, prefix, name string, ttl time.Duration, waiting func(leader string)) (*Leadership, error) {
	if ttl <= 0 {
		ttl = DefaultTTL
	}
	s, err := concurrency.NewSession(cli, concurrency.WithTTL(int(ttl.Round(time.Second)/time.Second)), concurrency.WithContext(context.WithoutCancel(ctx)))
	if err != nil {
		return nil, fmt.Errorf("leader election: open a session: %w", err)
	}
	e := concurrency.NewElection(s, electionKey(prefix))
	if waiting != nil {
		if who, err := Current(ctx, cli, prefix); err == nil && who != "" && who != name {
			waiting(who)
		}
	}
	if err := e.Campaign(ctx, name); err != nil {
		s.Close()
		return nil, fmt.Errorf("leader election: %w", err)
	}
	wctx, stop := context.WithCancel(context.Background())
	lost, err := lease.Guard(wctx, cli, s.Lease(), ttl, margin(ttl), s.Done())
	if err != nil {
		stop()
		s.Close()
		return nil, fmt.Errorf("leader election: watch the lease: %w", err)
	}
	return &Leadership{session: s, election: e, lost: lost, stop: stop}, nil
}

// Lost is closed when the leader must stop acting: its lease was not renewed for so long that it could expire
// soon (before etcd expires it), or it is gone (expired, revoked, resigned).
func (l *Leadership) Lost() <-chan struct{} { return l.lost }

// Resign gives leadership up at once (another controller is elected without waiting for the lease to expire).
func (l *Leadership) Resign(ctx context.Context) error {
	err := l.election.Resign(ctx)
	l.stop()
	return errors.Join(err, l.session.Close())
}

// Rev is this leadership's revision (its election key's creation): every later leadership has a greater one,
// so it serves as a fencing token for what the leader asks of others (the agents refuse an older one).
func (l *Leadership) Rev() int64 { return l.election.Rev() }

// CurrentRev returns the revision of the leadership in force (0 if none): see Rev.
func CurrentRev(ctx context.Context, cli *clientv3.Client, prefix string) (int64, error) {
	s, err := cli.Get(ctx, electionKey(prefix)+"/", clientv3.WithFirstCreate()...)
	if err != nil {
		return 0, fmt.Errorf("leader election: %w", err)
	}
	if len(s.Kvs) == 0 {
		return 0, nil
	}
	return s.Kvs[0].CreateRevision, nil
}

// Changes signals, without blocking, every change of the election (a leader elected, resigned or expired) until
// ctx ends; also whenever its watch had to be set up again.
func Changes(ctx context.Context, cli *clientv3.Client, prefix string) <-chan struct{} {
	return store.WatchSignals(ctx, cli, electionKey(prefix)+"/", clientv3.WithPrefix())
}

// Current returns the name of the controller that leads ("" if none).
func Current(ctx context.Context, cli *clientv3.Client, prefix string) (string, error) {
	s, err := cli.Get(ctx, electionKey(prefix)+"/", clientv3.WithFirstCreate()...)
	if err != nil {
		return "", fmt.Errorf("leader election: %w", err)
	}
	if len(s.Kvs) == 0 {
		return "", nil
	}
	return string(s.Kvs[0].Value), nil
}
