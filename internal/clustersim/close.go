package clustersim

import (
	"context"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"time"

	"github.com/fogo-db/fogo/internal/postgres/instance"
)

// Close removes everything Start made, in this order: the controller and the agents (SIGTERM, then SIGKILL),
// the PostgreSQL instances under the agents' directories (immediate shutdown), the etcd client, every process left
// in the hosts, the namespaces, links and bridge, and the cluster's directory. It is idempotent and bounded (each
// process and instance by its own timeout).
func (c *Cluster) Close() {
	c.closeOnce.Do(func() {
		for _, p := range []*Proc{c.Controller, c.East, c.West} {
			if p != nil {
				p.Stop()
			}
		}
		for _, p := range []*Proc{c.East, c.West} {
			if p != nil {
				c.stopInstancesUnder(filepath.Join(p.DataDir, "instances"))
			}
		}
		if c.etcd != nil {
			c.etcd.Close()
		}
		if c.Net != nil {
			c.Net.Close() // kills etcd and anything else left in the hosts
		}
		if c.Dir != "" {
			os.RemoveAll(c.Dir)
		}
	})
}

// stopInstancesUnder stops (immediate shutdown, 30 s each at most) every running PostgreSQL data directory under
// root: the agents leave their instances running when they stop.
func (c *Cluster) stopInstancesUnder(root string) {
	_ = filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() || d.Name() != "postmaster.pid" {
			return nil
		}
		in := &instance.Instance{Dir: filepath.Dir(path), Bin: c.bin}
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		_ = in.Stop(ctx, instance.ShutdownImmediate) // whatever is left is killed with its namespace
		return nil
	})
}

// Describe writes the hosts (namespace, address, bridge port) and what runs in each.
func (c *Cluster) Describe(w io.Writer) {
	role := map[int]string{1: "etcd m1", 2: "etcd m2", 3: "etcd m3", 4: "agent east-1 (eastus)",
		5: "agent west-1 (westus)", 6: "controller ctl-1 (fogo serve)"}
	fmt.Fprintf(w, "%-4s %-14s %-14s %-14s %s\n", "host", "namespace", "address", "bridge port", "runs")
	for i, h := range c.Net.Hosts {
		fmt.Fprintf(w, "h%-3d %-14s %-14s %-14s %s\n", i+1, h.Name(), h.Addr(), h.Veth(), role[i+1])
	}
	fmt.Fprintf(w, "bridge %s, %s; this machine is %s on it; files under %s\n", c.Net.Bridge, c.Net.Subnet,
		c.Net.BridgeAddr, c.Dir)
}
