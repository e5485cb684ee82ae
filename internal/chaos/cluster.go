package chaos

import (
	"context"
	"fmt"
	"io"
	"net"
	"path/filepath"
	"time"

	"github.com/fogo-db/fogo/internal/cli"
	"github.com/fogo-db/fogo/internal/clustersim"
)

// clustered runs the campaign against a cluster in network namespaces (package clustersim): three etcd members,
// the agents east-1 (eastus) and west-1 (westus), and one controller. Killing fogo kills the controller; the agents
// and the instances they run keep running, and the listeners stay served by the agents.
type clustered struct {
	cfg      Config
	progress io.Writer
	c        *clustersim.Cluster
}

// agentLeaseTTL is the agents' lease: a host loss costs about that before a failover may promote.
const agentLeaseTTL = 6 * time.Second

func (w *clustered) start(ctx context.Context) (*cli.Client, error) {
	sctx, cancel := context.WithTimeout(ctx, 3*time.Minute)
	defer cancel()
	c, err := clustersim.Start(sctx, clustersim.Options{Bin: w.cfg.Fogo, Progress: w.progress, LogLevel: "warn",
		LeaseTTL: agentLeaseTTL})
	if err != nil {
		return nil, err
	}
	w.c = c
	return c.Client(), nil
}

func (w *clustered) killFogo() { w.c.Controller.Kill() }

func (w *clustered) startFogo(ctx context.Context) error { return w.c.Controller.Start(ctx) }

func (w *clustered) close() {
	if w.c != nil {
		w.c.Close()
	}
}

func (w *clustered) dataDirs() map[string]string {
	out := map[string]string{}
	for _, a := range []*clustersim.Proc{w.c.East, w.c.West} {
		out[filepath.Join(a.DataDir, "instances")] = a.Host.Addr().String()
	}
	return out
}

// sslmode: the instances take logins over TLS only; through the endpoints, whose TLS ends at the gateway, SCRAM's
// channel binding cannot hold, and a session falls back to plain TCP on the private bridge (as the cluster tests do).
func (w *clustered) sslmode() string { return "prefer" }

func (w *clustered) logTail() string { return w.c.Controller.LogTail() }

// cutHostOf cuts the agent's host that runs the instance at addr. Healing waits for the agent to exit (it does once
// its lease lapsed, after fencing its primaries), or stops it, and starts it again.
func (w *clustered) cutHostOf(addr string) (func(ctx context.Context) error, string, error) {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, "", err
	}
	for _, a := range []*clustersim.Proc{w.c.East, w.c.West} {
		if a.Host.Addr().String() != host {
			continue
		}
		if err := a.Host.Cut(); err != nil {
			return nil, "", err
		}
		return func(ctx context.Context) error {
			if err := a.Host.Heal(); err != nil {
				return err
			}
			select {
			case <-a.Exited():
			case <-time.After(agentLeaseTTL + 10*time.Second):
				a.Stop()
			case <-ctx.Done():
				return ctx.Err()
			}
			return a.Start(ctx)
		}, a.Name, nil
	}
	return nil, "", fmt.Errorf("no agent's host has the address %s", host)
}
