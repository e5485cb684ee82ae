package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/fogo-db/fogo/internal/cli"
	"github.com/fogo-db/fogo/internal/clustersim"
)

// tryClusterCommand is `fogo try-cluster`: a whole cluster on this machine, in network namespaces, until Ctrl-C
// (docs/try-cluster.md).
func tryClusterCommand() *cobra.Command {
	var o clustersim.Options
	cmd := &cobra.Command{
		Use:   "try-cluster",
		Short: "Run a cluster on this machine to try cluster mode: 3 etcd members, agents in eastus and westus, a controller (root, Linux; until Ctrl-C)",
		Long: `Builds six network namespaces on a private bridge: three etcd members, an agent in region eastus, one in
westus (TLS between hosts, certificates made on the fly) and a controller (fogo serve) whose API it prints with a
token and example commands. Ctrl-C (or SIGTERM) stops everything and removes the namespaces, instances and files.
A fenced agent (its host cut off, say with 'ip link set <bridge port> down') is started again, as a supervisor
would. Needs root, iproute2, nsenter, etcd (etcd-server) and PostgreSQL 15.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			exe, err := os.Executable()
			if err != nil {
				return fmt.Errorf("the fogo binary: %w", err)
			}
			o.Bin, o.Progress = exe, os.Stderr
			c, err := startTryCluster(ctx, o, os.Stdout)
			if err != nil {
				return err
			}
			defer func() {
				fmt.Fprintln(os.Stderr, "removing the cluster (processes, instances, namespaces, files)...")
				c.Close()
				fmt.Fprintln(os.Stderr, "done")
			}()
			wait := c.Supervise(ctx, os.Stderr)
			defer wait()
			select {
			case <-ctx.Done():
				return nil
			case <-c.Controller.Exited():
				stop() // ends the supervisor
				return errors.New("the controller exited; its log:\n" + c.Controller.LogTail())
			}
		},
	}
	f := cmd.Flags()
	f.DurationVar(&o.LeaseTTL, "lease-ttl", 10*time.Second, "the agents' lease: a cut-off host fences its primaries after half of it, and an Automatic failover waits for its end")
	f.DurationVar(&o.GraceUnit, "grace-period-unit", 250*time.Millisecond, "how long one minute of a group's grace period lasts here (a 1-hour grace period lasts 15 s by default)")
	f.StringVar(&o.Dir, "dir", "", "where the cluster's files go (default the system's temporary directory); removed at the end")
	f.StringVar(&o.PGBin, "pg-bin", "", "PostgreSQL 15 binaries (default: discovered)")
	f.StringVar(&o.LogLevel, "log-level", "info", "the fogo processes' log level (their logs are in the cluster's directory)")
	return cmd
}

// startTryCluster starts the cluster, checks that its API answers, and writes how to use it to out.
func startTryCluster(ctx context.Context, o clustersim.Options, out io.Writer) (*clustersim.Cluster, error) {
	c, err := clustersim.Start(ctx, o)
	if err != nil {
		return nil, fmt.Errorf("try-cluster: %w", err)
	}
	if _, err := c.Client().Do(ctx, "GET", "/subscriptions/"+defaultSubscription+"/providers/Microsoft.Sql/servers", nil); err != nil {
		c.Close()
		return nil, fmt.Errorf("try-cluster: the controller's API: %w", err)
	}
	printTryCluster(out, c, o)
	return c, nil
}

// defaultSubscription is the CLI's default subscription id.
const defaultSubscription = "00000000-0000-0000-0000-000000000000"

func printTryCluster(w io.Writer, c *clustersim.Cluster, o clustersim.Options) {
	fmt.Fprintln(w, "\nA fogo cluster runs on this machine:")
	c.Describe(w)
	east := c.East.Host.Veth()
	fmt.Fprintf(w, `
API   %s
Token %s

Try it (the fogo CLI, or curl):
  export FOGO_ENDPOINT=%s FOGO_API_TOKEN=%s
  fogo server create -n east -l eastus -u fogoadmin -p 'Try-Cluster-1!'    # placed on east-1
  fogo server create -n west -l westus -u fogoadmin -p 'Try-Cluster-1!'    # placed on west-1
  fogo db create -s east -n shop
  fogo fg create -n fg -s east --partner-server west --add-db shop --failover-policy Automatic --grace-period 1
  fogo fg show -n fg -s east -o json      # readWriteEndpoint.endpoint is the address applications use:
  PGPASSWORD='Try-Cluster-1!' psql "host=%s port=PORT user=fogoadmin dbname=shop sslmode=require"
  fogo fg set-primary -n fg -s west       # a planned failover to westus
  curl -s -H "Authorization: Bearer $FOGO_API_TOKEN" "$FOGO_ENDPOINT/subscriptions/%s/providers/Microsoft.Sql/servers?api-version=%s"

Lose a host: 'ip link set %s down' cuts east-1 (h4) off; its agent fences its primaries within half its lease
(%s) and exits, and once the lease has expired the controller fails an Automatic group over after its grace
period (1 hour lasts %s here). 'ip link set %s up' heals it: the agent is started again and the old primary
rejoins as the geo-secondary. The fence shows in the agent's log ("primaries fenced"), the decision in the
controller's ("automatic forced failover after the grace period"). Logs: %s/*/*.log.

Ctrl-C removes everything.
`, c.URL, c.Token, c.URL, c.Token, c.Controller.Host.Addr(), defaultSubscription, cli.APIVersion, east, o.LeaseTTL, 60*o.GraceUnit, east, c.Dir)
}
