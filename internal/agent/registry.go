package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"
)

// DefaultTTL is the agent lease's time to live: an agent that stops renewing it is taken for gone this long after.
const DefaultTTL = 10 * time.Second

// livenessPrefix holds one key per live agent, under its lease.
func livenessPrefix(prefix string) string { return prefix + "/_agents/" }

// ErrNameTaken says another live process holds the agent's name.
var ErrNameTaken = errors.New("another live agent holds this name")

// Registration is an agent's liveness key, kept alive under a lease.
type Registration struct {
	session *concurrency.Session
	key     string
}

// Register puts the agent's liveness key under a lease of ttl that the client keeps alive. A name whose key is
// still held by another lease (a second agent with the same name, or this one restarted before its old lease
// expired) waits, up to the TTL and a second, for that lease to end; then it is ErrNameTaken.
func Register(ctx context.Context, cli *clientv3.Client, prefix, name string, ttl time.Duration, value any) (*Registration, error) {
	if ttl <= 0 {
		ttl = DefaultTTL
	}
	raw, err := json.Marshal(value)
	if err != nil {
		return nil, err
	}
	s, err := concurrency.NewSession(cli, concurrency.WithTTL(int(ttl.Round(time.Second)/time.Second)), concurrency.WithContext(context.WithoutCancel(ctx)))
	if err != nil {
		return nil, fmt.Errorf("register agent %s: open a lease: %w", name, err)
	}
	key := livenessPrefix(prefix) + name
	deadline := time.Now().Add(ttl + time.Second)
	for {
		res, err := cli.Txn(ctx).
			If(clientv3.Compare(clientv3.CreateRevision(key), "=", 0)).
			Then(clientv3.OpPut(key, string(raw), clientv3.WithLease(s.Lease()))).
			Commit()
		if err != nil {
			s.Close()
			return nil, fmt.Errorf("register agent %s: %w", name, err)
		}
		if res.Succeeded {
			return &Registration{session: s, key: key}, nil
		}
		if time.Now().After(deadline) {
			s.Close()
			return nil, fmt.Errorf("register agent %s: %w", name, ErrNameTaken)
		}
		select {
		case <-ctx.Done():
			s.Close()
			return nil, ctx.Err()
		case <-time.After(500 * time.Millisecond):
		}
	}
}

// Lease is the registration's etcd lease.
func (r *Registration) Lease() clientv3.LeaseID { return r.session.Lease() }

// Done is closed when the lease could not be kept alive (it may have expired).
func (r *Registration) Done() <-chan struct{} { return r.session.Done() }

// Orphan stops renewing the lease without revoking it (it expires by itself).
func (r *Registration) Orphan() { r.session.Orphan() }

// Close deletes the liveness key and ends the lease.
func (r *Registration) Close() error { return r.session.Close() }

// Live returns the names of the agents whose liveness key exists: their lease has not expired.
func Live(ctx context.Context, cli *clientv3.Client, prefix string) (map[string]bool, error) {
	res, err := cli.Get(ctx, livenessPrefix(prefix), clientv3.WithPrefix(), clientv3.WithKeysOnly())
	if err != nil {
		return nil, fmt.Errorf("list live agents: %w", err)
	}
	live := map[string]bool{}
	for _, kv := range res.Kvs {
		live[strings.TrimPrefix(string(kv.Key), livenessPrefix(prefix))] = true
	}
	return live, nil
}

// LeaseTTL is the TTL the named agent's lease was granted with (0 when the agent is not live).
func LeaseTTL(ctx context.Context, cli *clientv3.Client, prefix, name string) (time.Duration, error) {
	res, err := cli.Get(ctx, livenessPrefix(prefix)+name)
	if err != nil {
		return 0, err
	}
	if len(res.Kvs) == 0 {
		return 0, nil
	}
	ttl, err := cli.TimeToLive(ctx, clientv3.LeaseID(res.Kvs[0].Lease))
	if err != nil {
		return 0, err
	}
	return time.Duration(ttl.GrantedTTL) * time.Second, nil
}
