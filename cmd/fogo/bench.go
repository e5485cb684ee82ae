package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/fogo-db/fogo/internal/bench"
)

func benchCommand() *cobra.Command {
	cmd := &cobra.Command{Use: "bench", Short: "Measure fogo against the raw PostgreSQL limit on this machine"}
	var o bench.FailoverOptions
	var co bench.ClusterOptions
	var mode string
	var asJSON bool
	failover := &cobra.Command{
		Use:   "failover",
		Short: "Planned failover through fogo vs. raw pg_ctl stop -m fast + promote, in one run (--mode cluster: across hosts in network namespaces)",
		Long: `--mode embedded (the default): fogo's planned failover next to a raw pg_ctl stop + promote of a plain pair.
--mode cluster: a cluster in network namespaces on this machine (3 etcd members, agents in eastus and westus, a
controller; root, Linux): the planned failover's client commit gap, back and forth, and for a loss of the primary's
host (cut off, Automatic policy, the smallest grace period) the time from the cut to the first write on the new
primary. --mode both: the two in one run, side by side.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			switch mode {
			case "embedded":
				return benchRunE(&asJSON, func(ctx context.Context) (failoverReport, error) {
					o.Progress = os.Stderr
					res, err := bench.Failover(ctx, o)
					if err != nil {
						return failoverReport{}, err
					}
					return failoverReport{res, res.Ratio()}, nil
				})(cmd, args)
			case "cluster", "both":
				return benchRunE(&asJSON, func(ctx context.Context) (clusterReport, error) {
					return runClusterBench(ctx, mode == "both", o, co)
				})(cmd, args)
			}
			return fmt.Errorf("--mode %q: want embedded, cluster or both", mode)
		},
	}
	f := failover.Flags()
	f.IntVar(&o.Iterations, "iterations", 5, "failovers measured on each side")
	f.StringVar(&o.PGBin, "pg-bin", "", "PostgreSQL 15 binaries (default: discovered)")
	f.StringVar(&o.Dir, "dir", "", "scratch directory (default: a temporary one, removed afterwards)")
	f.IntVar(&o.PortLow, "port-low", 31000, "first of the 100 ports the benchmark uses")
	f.DurationVar(&o.Settle, "settle", 0, "writer warm-up before and after each failover (default 1s)")
	f.BoolVar(&asJSON, "json", false, "print the measurements as JSON")
	f.StringVar(&mode, "mode", "embedded", "embedded, cluster (hosts in network namespaces; root) or both, side by side")
	f.IntVar(&co.Unplanned, "unplanned-iterations", 3, "cluster: losses of the primary's host measured (negative: none)")
	f.DurationVar(&co.RegionLatency, "region-latency", 10*time.Millisecond, "cluster: added round trip between westus and the rest (negative: none)")
	f.DurationVar(&co.LeaseTTL, "lease-ttl", 6*time.Second, "cluster: the agents' lease TTL")
	f.DurationVar(&co.GraceUnit, "grace-period-unit", time.Second, "cluster: how long the group's grace period (the smallest, one minute) lasts")
	cmd.AddCommand(failover, proxyBenchCommand(), linkBenchCommand(), linkMemoryBenchCommand())
	return cmd
}

func proxyBenchCommand() *cobra.Command {
	var o bench.ProxyOptions
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "proxy",
		Short: "pgbench -S and -N directly vs. through fogo's read-write listener, pgbouncer and HAProxy, in one run",
		Args:  cobra.NoArgs,
		RunE: benchRunE(&asJSON, func(ctx context.Context) (*bench.ProxyResult, error) {
			o.Progress = os.Stderr
			return bench.Proxy(ctx, o)
		}),
	}
	f := cmd.Flags()
	f.IntSliceVar(&o.Clients, "clients", []int{1, 8, 32}, "pgbench client counts")
	f.DurationVar(&o.Duration, "duration", 5*time.Second, "length of each pgbench run")
	f.IntVar(&o.Scale, "scale", 10, "pgbench scale factor")
	f.IntVar(&o.Rounds, "rounds", 3, "runs per path and configuration, interleaved; the median is reported")
	f.StringVar(&o.PGBin, "pg-bin", "", "PostgreSQL 15 binaries (default: discovered)")
	f.StringVar(&o.Dir, "dir", "", "scratch directory (default: a temporary one, removed afterwards)")
	f.IntVar(&o.PortLow, "port-low", 32000, "first of the 100 ports the benchmark uses")
	f.BoolVar(&asJSON, "json", false, "print the measurements as JSON")
	return cmd
}

func linkBenchCommand() *cobra.Command {
	var o bench.LinkOptions
	var cpuProfile string
	cmd := &cobra.Command{
		Use:   "link",
		Short: "Link throughput vs pg_recvlogical, end-to-end latency at a steady rate, time to resume after a failover",
		Args:  cobra.NoArgs,
		RunE: benchRunE(nil, func(ctx context.Context) (*bench.LinkResult, error) {
			o.Progress = os.Stderr
			if cpuProfile != "" {
				f, err := os.Create(cpuProfile)
				if err != nil {
					return nil, fmt.Errorf("cpu profile: %w", err)
				}
				defer f.Close()
				o.CPUProfile = f
			}
			return bench.Link(ctx, o)
		}),
	}
	f := cmd.Flags()
	f.IntVar(&o.Rows, "rows", 100000, "rows of the throughput workload")
	f.IntVar(&o.Rate, "rate", 5000, "rows per second of the latency workload")
	f.DurationVar(&o.Duration, "duration", 10*time.Second, "length of the latency workload")
	f.StringVar(&o.PGBin, "pg-bin", "", "PostgreSQL 15 binaries (default: discovered)")
	f.StringVar(&o.Dir, "dir", "", "scratch directory (default: a temporary one, removed afterwards)")
	f.IntVar(&o.PortLow, "port-low", 30000, "first of the 100 ports the benchmark uses")
	f.StringVar(&o.Only, "only", "", `run only this phase: "throughput" (default: every phase)`)
	f.StringVar(&cpuProfile, "cpuprofile", "", "write a CPU profile of the link applying the throughput workload to this file")
	return cmd
}

func linkMemoryBenchCommand() *cobra.Command {
	var o bench.LinkMemoryOptions
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "link-memory",
		Short: "fogo's resident memory while a link applies one source transaction of many rows into DuckDB",
		Args:  cobra.NoArgs,
		RunE: benchRunE(&asJSON, func(ctx context.Context) (*bench.LinkMemoryResult, error) {
			o.Progress = os.Stderr
			return bench.LinkMemory(ctx, o)
		}),
	}
	f := cmd.Flags()
	f.IntVar(&o.Rows, "rows", 10_000_000, "rows of each transaction")
	f.StringSliceVar(&o.Phases, "phases", []string{"insert"}, "transactions to run in order, each over every row: insert, update, delete")
	f.StringVar(&o.PGBin, "pg-bin", "", "PostgreSQL 15 binaries (default: discovered)")
	f.StringVar(&o.Dir, "dir", "", "scratch directory (default: a temporary one, removed afterwards)")
	f.IntVar(&o.PortLow, "port-low", 29000, "first of the 100 ports the benchmark uses")
	f.BoolVar(&asJSON, "json", false, "print the measurements as JSON")
	return cmd
}

// benchRunE is the RunE of a bench command: run stops on SIGINT or SIGTERM; its result is printed as JSON when
// asJSON is set (nil: the command has no --json), else as its summary.
func benchRunE[R interface{ Summary() string }](asJSON *bool, run func(ctx context.Context) (R, error)) func(*cobra.Command, []string) error {
	return func(*cobra.Command, []string) error {
		ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
		defer stop()
		res, err := run(ctx)
		if err != nil {
			return err
		}
		if asJSON != nil && *asJSON {
			enc := json.NewEncoder(os.Stdout)
			enc.SetIndent("", "  ")
			return enc.Encode(res)
		}
		fmt.Print(res.Summary())
		return nil
	}
}

// runClusterBench runs the cluster mode, after the embedded one when both.
func runClusterBench(ctx context.Context, both bool, o bench.FailoverOptions, co bench.ClusterOptions) (clusterReport, error) {
	var r clusterReport
	if both {
		o.Progress = os.Stderr
		res, err := bench.Failover(ctx, o)
		if err != nil {
			return r, err
		}
		r.Embedded = &failoverReport{res, res.Ratio()}
	}
	exe, err := os.Executable()
	if err != nil {
		return r, fmt.Errorf("the fogo binary: %w", err)
	}
	co.Bin, co.Iterations, co.Settle, co.PGBin, co.Progress = exe, o.Iterations, o.Settle, o.PGBin, os.Stderr
	if co.Unplanned == 0 {
		co.Unplanned = -1 // --unplanned-iterations 0: none
	}
	if co.RegionLatency == 0 {
		co.RegionLatency = -1 // --region-latency 0: none
	}
	if r.Cluster, err = bench.Cluster(ctx, co); err != nil {
		return r, err
	}
	r.UnplannedTarget = r.Cluster.UnplannedTarget()
	if r.Embedded != nil {
		r.PlannedGapRatio = bench.PlannedGapRatio(r.Embedded.FailoverResult, r.Cluster)
	}
	return r, nil
}

// clusterReport is the cluster mode's result, with the embedded one's under --mode both.
type clusterReport struct {
	Embedded *failoverReport      `json:"embedded,omitempty"`
	Cluster  *bench.ClusterResult `json:"cluster"`
	// PlannedGapRatio is the cluster's median planned commit gap over the embedded one's (target <= 1.5).
	PlannedGapRatio float64 `json:"plannedGapRatio,omitempty"`
	// UnplannedTarget is the target of the cut-to-first-write time: the lease TTL + 2 s.
	UnplannedTarget time.Duration `json:"unplannedTarget"`
}

// Summary prints the embedded summary (under --mode both), the cluster's, and the two side by side.
func (r clusterReport) Summary() string {
	var b strings.Builder
	if r.Embedded != nil {
		b.WriteString(r.Embedded.Summary())
		b.WriteString("\n")
	}
	b.WriteString(r.Cluster.Summary())
	if r.Embedded != nil {
		b.WriteString("\n")
		b.WriteString(bench.SideBySide(r.Embedded.FailoverResult, r.Cluster))
	}
	return b.String()
}

// failoverReport is the failover benchmark's result with its ratio (in the JSON too).
type failoverReport struct {
	*bench.FailoverResult
	Ratio float64 `json:"ratio"`
}
