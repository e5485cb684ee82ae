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
	lost := make(chan struct{})
	go func() {
		defer stop()
		defer close(lost)
		expires := time.Now().Add(ttl) // the lease was granted or renewed at most now
		for {
			timer := time.NewTimer(time.Until(expires.Add(-margin)))
			select {
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
