package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/fogo-db/fogo/internal/app"
)

func serveCommand() *cobra.Command {
	var o app.Options
	var portRange, logLevel string
	var minGrace int
	var etcd etcdFlags
	cmd := &cobra.Command{
		Use:   "serve",
		Short: "Run fogo: the API, the gateway endpoints and the PostgreSQL instances, on this machine",
		RunE: func(cmd *cobra.Command, _ []string) error {
			low, high, err := parsePortRange(portRange)
			if err != nil {
				return err
			}
			o.PortLow, o.PortHigh, o.MinGraceMinutes = low, high, int32(minGrace)
			if o.Logger, err = newLogger(logLevel); err != nil {
				return err
			}
			o.PauseBeforeStep = os.Getenv("FOGO_TEST_PAUSE_BEFORE_STEP")
			if o.Etcd, err = etcd.config(); err != nil {
				return err
			}
			ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			a, err := app.Start(ctx, o)
			if err != nil {
				return err
			}
			defer a.Close()
			fmt.Fprintf(os.Stderr, "fogo is listening on %s\n", a.URL())
			if a.TokenFile != "" {
				fmt.Fprintf(os.Stderr, "API token: %s (send it as 'Authorization: Bearer <token>')\n", a.TokenFile)
			} else {
				fmt.Fprintln(os.Stderr, "API token: from FOGO_API_TOKEN")
			}
			select {
			case <-ctx.Done():
				fmt.Fprintln(os.Stderr, "fogo is stopping")
				return nil
			case <-a.LostLeadership():
				return errors.New("lost the controller lease (etcd unreachable or this process frozen for longer than its TTL): another controller may act now, so this one exits")
			}
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.DataDir, "data-dir", "./fogo-data", "directory for fogo's state and the PostgreSQL instances")
	f.StringVar(&o.Listen, "listen", "127.0.0.1:7400", "address of the REST API")
	f.StringVar(&o.TLSCert, "tls-cert", "", "TLS certificate for the API (with --tls-key); plain HTTP without")
	f.StringVar(&o.TLSKey, "tls-key", "", "TLS key for the API")
	f.StringVar(&portRange, "port-range", "7401-7999", "ports for PostgreSQL instances and gateway endpoints (LOW-HIGH)")
	f.StringVar(&o.PGBin, "pg-bin", "", "directory of the PostgreSQL 15 server binaries (default: discovered)")
	f.StringVar(&o.AdvertiseHost, "advertise-host", "127.0.0.1", "host name or address shown in endpoints")
	f.IntVar(&minGrace, "min-grace-period-minutes", 60, "smallest failoverWithDataLossGracePeriodMinutes a group may use")
	f.IntVar(&o.MaxGroupsPerServer, "max-groups-per-server", 100, "failover groups a server may be part of (LimitOfFailoverGroupsPerServerExceeded beyond)")
	f.IntVar(&o.MaxDatabasesPerServer, "max-databases-per-server", 100, "databases (each its own PostgreSQL instance) per server")
	f.DurationVar(&o.CatchUpTimeout, "planned-catch-up-timeout", 30*time.Second, "bound on a planned failover's catch-up; beyond it the failover rolls back")
	f.DurationVar(&o.TryPlannedTimeout, "try-planned-timeout", 10*time.Second, "bound on the planned attempt of tryPlannedBeforeForcedFailover")
	f.BoolVar(&o.KeepInstancesOnExit, "keep-instances-on-exit", false, "leave PostgreSQL instances running when fogo stops")
	f.StringVar(&o.GatewayListenHost, "gateway-listen-host", "127.0.0.1", "address the server endpoints and group listeners bind")
	f.StringVar(&o.GatewayTLSCert, "gateway-tls-cert", "", "TLS certificate for the endpoints and listeners (with --gateway-tls-key); without, SSLRequest is answered N")
	f.StringVar(&o.GatewayTLSKey, "gateway-tls-key", "", "TLS key for the endpoints and listeners")
	f.DurationVar(&o.ListenerHoldTimeout, "listener-hold-timeout", 30*time.Second, "how long new read-write sessions wait for a failover to finish")
	f.DurationVar(&o.GraceUnit, "grace-period-unit", time.Minute, "TESTING ONLY: the length of one minute of failoverWithDataLossGracePeriodMinutes")
	f.StringArrayVar(&o.LinkTargetDirs, "link-target-dir", nil, "absolute directory DuckDB link targets may live in besides DATA-DIR/link-targets (repeatable)")
	f.StringVar(&o.SecretsKeyFile, "secrets-key-file", "", "key file that seals the secrets in fogo's state, 0600 (default DATA-DIR/secrets.key, created on the first start); never written to the store")
	f.StringVar(&o.InstancesDir, "instances-dir", "", "directory of the instances' data directories, which the postgres OS user must reach (default DATA-DIR/instances; as root with a DATA-DIR the postgres user cannot reach, /var/lib/fogo/instances-HASH)")
	f.StringVar(&o.MaxSlotWALKeepSize, "max-slot-wal-keep-size", app.DefaultMaxSlotWALKeepSize, "most WAL one replication slot may hold on an instance (PostgreSQL size, -1 unbounded); beyond it the slot is invalidated and a geo-secondary is seeded again")
	f.StringVar(&logLevel, "log-level", "info", "debug, info, warn or error")
	etcd.register(f)
	f.StringVar(&o.ControllerName, "controller-name", "", "with --etcd-endpoints: this controller's name in the election (default host name and --listen)")
	f.DurationVar(&o.LeaderTTL, "leader-ttl", 10*time.Second, "with --etcd-endpoints: the controller lease; a controller that cannot renew it for this long is replaced")
	f.StringVar(&o.ClusterCA, "cluster-ca", "", "with --etcd-endpoints: CA certificate that signed the agents' host API certificates (see fogo certs; default the system's roots)")
	return cmd
}

func parsePortRange(s string) (int, int, error) {
	lo, hi, ok := strings.Cut(s, "-")
	low, err1 := strconv.Atoi(lo)
	high, err2 := strconv.Atoi(hi)
	if !ok || err1 != nil || err2 != nil || low < 1024 || high > 65535 || low > high {
		return 0, 0, fmt.Errorf("--port-range %q: want LOW-HIGH within 1024-65535", s)
	}
	return low, high, nil
}

// newLogger logs text to stderr at the level named by --log-level; it is slog's default logger too (what the
// packages without a logger of their own write, e.g. the 500s of errcatalog.Write).
func newLogger(logLevel string) (*slog.Logger, error) {
	var level slog.Level
	if err := level.UnmarshalText([]byte(logLevel)); err != nil {
		return nil, fmt.Errorf("--log-level: %w", err)
	}
	l := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
	slog.SetDefault(l)
	return l, nil
}
