package app

import (
	"context"
	"encoding/json"
	"os"
	"slices"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/fogo-db/fogo/internal/agent"
	"github.com/fogo-db/fogo/internal/controlplane/leader"
	"github.com/fogo-db/fogo/internal/lease"
)

// controllersPrefix holds one key per live controller (cluster mode), under its own lease: the hosts whose
// gateways serve every endpoint and listener. The agents that serve them too say so in their liveness key
// (agent.Register, under <prefix>/_agents/), with the same value.
func controllersPrefix(prefix string) string { return prefix + "/_controllers/" }

// endpointPresence is the value of a live controller's key, and part of a live agent's that serves the endpoints.
type endpointPresence struct {
	Host string `json:"host"` // the address clients reach its endpoints on (--advertise-host)
}

// controllerName is this controller's name in the election and among the live controllers.
func (a *App) controllerName() string {
	if a.opts.ControllerName != "" {
		return a.opts.ControllerName
	}
	host, _ := os.Hostname()
	return host + " " + a.opts.Listen
}

func (a *App) leaderTTL() time.Duration {
	if a.opts.LeaderTTL > 0 {
		return a.opts.LeaderTTL
	}
	return leader.DefaultTTL
}

// endpointHostsCache keeps the live controllers' hosts for a moment: every rendered resource asks.
type endpointHostsCache struct {
	mu    sync.Mutex
	hosts []string
	read  time.Time
}

// endpointHosts lists the hosts that serve every endpoint and listener: the live controllers' and the live
// agents' that serve them, sorted (this controller's included even if its key cannot be read now).
func (a *App) endpointHosts() []string {
	c := &a.hosts
	c.mu.Lock()
	defer c.mu.Unlock()
	if time.Since(c.read) < 2*time.Second && c.hosts != nil {
		return c.hosts
	}
	hosts := []string{a.opts.AdvertiseHost}
	if cli, prefix := a.Store.Etcd(); cli != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		hosts = append(hosts, servingHosts(ctx, cli, controllersPrefix(prefix), agent.LivenessPrefix(prefix))...)
		cancel()
	}
	slices.Sort(hosts)
	c.hosts, c.read = slices.Compact(hosts), time.Now()
	return c.hosts
}

// servingHosts reads the hosts named in the live registrations under the prefixes (a registration without one
// does not serve the endpoints); a prefix that cannot be read adds none.
func servingHosts(ctx context.Context, cli *clientv3.Client, prefixes ...string) []string {
	var hosts []string
	for _, p := range prefixes {
		regs, err := lease.Registered(ctx, cli, p)
		if err != nil {
			continue
		}
		for _, raw := range regs {
			var p endpointPresence
			if json.Unmarshal(raw, &p) == nil && p.Host != "" {
				hosts = append(hosts, p.Host)
			}
		}
	}
	return hosts
}
