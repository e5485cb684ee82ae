// Package lease tells the holder of an etcd lease when to stop acting on it: before etcd can expire it, not
// after. A controller holds one to lead; an agent holds one for the primaries on its host. Both must stop (the
// controller acting, the agent's primaries taking writes) while the lease is still theirs, so that whoever etcd
// lets act next never overlaps with them (Patroni's rule: demote before the leader lock can expire).
package lease

import (
	"context"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// Guard watches the renewals of a lease of ttl (held alive by a session whose end is done) and closes the
// returned channel once the lease may be about to expire: when the session ends, when the keep-alive ends, or when
// no renewal came for so long that the lease, by what etcd last said of it, has less than margin left. Stop it
// with ctx.
func Guard(ctx context.Context, cli *clientv3.Client, id clientv3.LeaseID, ttl, margin time.Duration, done <-chan struct{}) (<-chan struct{}, error) {
	wctx, stop := context.WithCancel(ctx)
	renewals, err := cli.KeepAlive(wctx, id) // a second listener on the session's own keep-alive
	if err != nil {
		stop()
		return nil, err
	}
	// Renew more often than the keep-alive's third of the TTL, so that one renewal lost to an etcd member going
	// away (the client moves to another) does not eat the whole margin.
	extra := make(chan time.Time, 1)
	go renewOften(wctx, cli, id, max(ttl/6, 500*time.Millisecond), extra)
	lost := make(chan struct{})
	go func() {
		defer stop()
		defer close(lost)
		expires := time.Now().Add(ttl) // the lease was granted or renewed at most now
		for {
			timer := time.NewTimer(time.Until(expires.Add(-margin)))
			select {
			case e := <-extra:
				timer.Stop()
				if e.After(expires) {
					expires = e
				}
			case r, ok := <-renewals:
				timer.Stop()
				if !ok {
					return // the keep-alive ended: the lease expired or was revoked
				}
				expires = time.Now().Add(time.Duration(r.TTL) * time.Second)
			case <-done:
				timer.Stop()
				return
			case <-wctx.Done():
				timer.Stop()
				return
			case <-timer.C:
				return // not renewed in time
			}
		}
	}()
	return lost, nil
}

// renewOften renews the lease every interval (each attempt bounded by it) and sends when it will expire by the
// answer; a lease that etcd says is gone ends it (the keep-alive's channel reports that).
func renewOften(ctx context.Context, cli *clientv3.Client, id clientv3.LeaseID, interval time.Duration, out chan<- time.Time) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		start := time.Now()
		rctx, cancel := context.WithTimeout(ctx, interval)
		r, err := cli.KeepAliveOnce(rctx, id)
		cancel()
		if err != nil {
			continue
		}
		select {
		case out <- start.Add(time.Duration(r.TTL) * time.Second): // counted from the request: etcd renewed it after
		default:
		}
	}
}
