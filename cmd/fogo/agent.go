package main

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/fogo-db/fogo/internal/app"
)

func agentCommand() *cobra.Command {
	var o app.AgentOptions
	var portRange, logLevel string
	var allowFrom []string
	var etcd etcdFlags
	cmd := &cobra.Command{
		Use:   "agent",
		Short: "Run fogo's agent on a database host (cluster mode): the PostgreSQL instances the controller places here",
		Long: `The agent registers this host in etcd under a lease (its liveness) and serves the host's side of the
instances placed on it to the elected controller: a server whose location is --region is placed on a live agent
of that region. Instances keep running when the agent stops or restarts. Unless --serve-endpoints=false it also
serves every server's endpoint and every failover group's listeners on --advertise-host, routed from a watch of
the state, and the endpoints' multi-host lists name this host.`,
		RunE: func(cmd *cobra.Command, _ []string) error {
			low, high, err := parsePortRange(portRange)
			if err != nil {
				return err
			}
			o.PortLow, o.PortHigh = low, high
			for _, n := range allowFrom {
				p, err := netip.ParsePrefix(n)
				if err != nil {
					return fmt.Errorf("--allow-from %q: want a network such as 10.1.0.0/16: %w", n, err)
				}
				o.AllowFrom = append(o.AllowFrom, p)
			}
			if o.Logger, err = newLogger(logLevel); err != nil {
				return err
			}
			if o.Etcd, err = etcd.config(); err != nil {
				return err
			}
			ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			a, err := app.StartAgent(ctx, o)
			if err != nil {
				return err
			}
			defer a.Close()
			fmt.Fprintf(os.Stderr, "fogo agent %s serves its host API on %s\n", o.Name, a.URL())
			select {
			case <-ctx.Done():
				fmt.Fprintln(os.Stderr, "fogo agent is stopping (its instances keep running)")
				return nil
			case <-a.Fenced():
				return errors.New("lost the agent lease (etcd unreachable, or this process frozen, for two thirds of its TTL): the primaries on this host were stopped, and the agent exits; start it again once etcd is reachable")
			}
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.Name, "name", "", "this host's name among fogo's agents (letters, digits, '-', '_', '.')")
	f.StringVar(&o.Region, "region", "", "the region this host is in: servers whose location is this region are placed here")
	f.StringVar(&o.AdvertiseHost, "advertise-host", "", "this host's address on the network between fogo's hosts (instances listen on it)")
	f.StringVar(&o.Listen, "listen", "", "address of the host API (default ADVERTISE-HOST:7500)")
	f.StringVar(&o.DataDir, "data-dir", "./fogo-agent-data", "directory for the agent's files and the instances")
	f.StringVar(&o.InstancesDir, "instances-dir", "", "directory of the instances' data directories (default DATA-DIR/instances)")
	f.StringVar(&o.PGBin, "pg-bin", "", "directory of the PostgreSQL 15 server binaries (default: discovered)")
	f.StringVar(&portRange, "port-range", "6401-6999", "ports for the PostgreSQL instances on this host (LOW-HIGH); disjoint from a controller's --port-range (7401-7999) on the same host")
	f.StringVar(&o.TLSCert, "tls-cert", "", "this host's TLS certificate (see fogo certs): the host API and the instances serve it (with --tls-key and --tls-ca)")
	f.StringVar(&o.TLSKey, "tls-key", "", "TLS key of this host's certificate")
	f.StringVar(&o.TLSCA, "tls-ca", "", "the cluster's CA certificate (fogo certs' ca.pem): instances here verify the other hosts against it")
	f.StringSliceVar(&allowFrom, "allow-from", nil, "networks (CIDR) whose clients may log in to this host's instances directly, besides the fogo hosts")
	f.BoolVar(&o.AllowPlaintext, "allow-plaintext", false, "serve the host API without TLS (loopback or an already private network only)")
	f.StringVar(&o.SecretsKeyFile, "secrets-key-file", "", "the controllers' secrets key file (default DATA-DIR/secrets.key); the agent never creates it")
	f.BoolVar(&o.ServeEndpoints, "serve-endpoints", true, "serve every server's endpoint and every failover group's listeners on ADVERTISE-HOST, as the controllers do (on the ports of the controllers' --port-range: keep them free here)")
	f.StringVar(&o.GatewayTLSCert, "gateway-tls-cert", "", "TLS certificate for the endpoints and listeners (with --gateway-tls-key); without, SSLRequest is answered N")
	f.StringVar(&o.GatewayTLSKey, "gateway-tls-key", "", "TLS key for the endpoints and listeners")
	f.DurationVar(&o.ListenerHoldTimeout, "listener-hold-timeout", 30*time.Second, "how long new read-write sessions wait for a failover to finish")
	f.DurationVar(&o.TTL, "lease-ttl", 10*time.Second, "the agent's lease in etcd: an agent that cannot renew it for this long is taken for gone")
	f.StringVar(&logLevel, "log-level", "info", "debug, info, warn or error")
	etcd.register(f)
	return cmd
}
