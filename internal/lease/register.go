package lease

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

// ErrTaken says another live process holds the key.
var ErrTaken = errors.New("another live process holds this name")

// Registration is a key kept alive under a lease: its holder is live while the key exists.
type Registration struct {
	session *concurrency.Session
	key     string
}

// Register puts key (with value as JSON) under a lease of ttl that the client keeps alive. A key still held by
// another lease (a second process with the same name, or this one restarted before its old lease expired) is
// waited for, up to the TTL and a second, to end; then it is ErrTaken.
func Register(ctx context.Context, cli *clientv3.Client, key string, ttl time.Duration, value any) (*Registration, error) {
	raw, err := json.Marshal(value)
	if err != nil {
		return nil, err
	}
	s, err := concurrency.NewSession(cli, concurrency.WithTTL(int(ttl.Round(time.Second)/time.Second)), concurrency.WithContext(context.WithoutCancel(ctx)))
	if err != nil {
		return nil, fmt.Errorf("open a lease: %w", err)
	}
	deadline := time.Now().Add(ttl + time.Second)
	for {
		res, err := cli.Txn(ctx).
			If(clientv3.Compare(clientv3.CreateRevision(key), "=", 0)).
			Then(clientv3.OpPut(key, string(raw), clientv3.WithLease(s.Lease()))).
			Commit()
		if err != nil {
			s.Close()
			return nil, err
		}
		if res.Succeeded {
			return &Registration{session: s, key: key}, nil
		}
		if time.Now().After(deadline) {
			s.Close()
			return nil, ErrTaken
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

// Close deletes the key and ends the lease.
func (r *Registration) Close() error { return r.session.Close() }

// Registered returns the keys under prefix that are held (by the name after the prefix) with their raw values.
func Registered(ctx context.Context, cli *clientv3.Client, prefix string) (map[string][]byte, error) {
	res, err := cli.Get(ctx, prefix, clientv3.WithPrefix())
	if err != nil {
		return nil, err
	}
	out := map[string][]byte{}
	for _, kv := range res.Kvs {
		out[strings.TrimPrefix(string(kv.Key), prefix)] = kv.Value
	}
	return out, nil
}
