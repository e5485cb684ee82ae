package chaos

import (
	"context"
	"io"
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

func (w *clustered) start(ctx context.Context) (*cli.Client, error) {
	sctx, cancel := context.WithTimeout(ctx, 3*time.Minute)
	defer cancel()
	c, err := clustersim.Start(sctx, clustersim.Options{Bin: w.cfg.Fogo, Progress: w.progress, LogLevel: "warn"})
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
