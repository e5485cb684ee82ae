package app

import (
	"context"
	"encoding/json"
	"os"
	"slices"
	"sync"
	"time"

	"github.com/fogo-db/fogo/internal/controlplane/leader"
	"github.com/fogo-db/fogo/internal/lease"
)

// controllersPrefix holds one key per live controller (cluster mode), under its own lease: the hosts whose
// gateways serve every endpoint and listener.
func controllersPrefix(prefix string) string { return prefix + "/_controllers/" }

// controllerPresence is a live controller's key's value.
type controllerPresence struct {
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

// endpointHosts lists the hosts of the live controllers, sorted (this one's included even if its key cannot be
// read now).
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
		regs, err := lease.Registered(ctx, cli, controllersPrefix(prefix))
		cancel()
		if err == nil {
			for _, raw := range regs {
				var p controllerPresence
				if json.Unmarshal(raw, &p) == nil && p.Host != "" {
					hosts = append(hosts, p.Host)
				}
			}
		}
	}
	slices.Sort(hosts)
	c.hosts, c.read = slices.Compact(hosts), time.Now()
	return c.hosts
}
