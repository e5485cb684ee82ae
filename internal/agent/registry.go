package agent

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/fogo-db/fogo/internal/lease"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// DefaultTTL is the agent lease's time to live: an agent that stops renewing it is taken for gone this long after.
const DefaultTTL = 10 * time.Second

// livenessPrefix holds one key per live agent, under its lease.
func livenessPrefix(prefix string) string { return prefix + "/_agents/" }

// LivenessPrefix is the etcd prefix of the live agents' keys in a state under prefix.
func LivenessPrefix(prefix string) string { return livenessPrefix(prefix) }

// ErrNameTaken says another live process holds the agent's name.
var ErrNameTaken = lease.ErrTaken

// Register puts the agent's liveness key under a lease of ttl that the client keeps alive (see lease.Register).
func Register(ctx context.Context, cli *clientv3.Client, prefix, name string, ttl time.Duration, value any) (*lease.Registration, error) {
	if ttl <= 0 {
		ttl = DefaultTTL
	}
	r, err := lease.Register(ctx, cli, livenessPrefix(prefix)+name, ttl, value)
	if err != nil {
		return nil, fmt.Errorf("register agent %s: %w", name, err)
	}
	return r, nil
}

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
