package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/fogo-db/fogo/internal/bench"
)

func benchCommand() *cobra.Command {
	cmd := &cobra.Command{Use: "bench", Short: "Measure fogo against the raw PostgreSQL limit on this machine"}
	var o bench.FailoverOptions
	var asJSON bool
	failover := &cobra.Command{
		Use:   "failover",
		Short: "Planned failover through fogo vs. raw pg_ctl stop -m fast + promote, in one run",
		Args:  cobra.NoArgs,
		RunE: benchRunE(&asJSON, func(ctx context.Context) (failoverReport, error) {
			o.Progress = os.Stderr
			res, err := bench.Failover(ctx, o)
			if err != nil {
				return failoverReport{}, err
			}
			return failoverReport{res, res.Ratio()}, nil
		}),
	}
	f := failover.Flags()
	f.IntVar(&o.Iterations, "iterations", 5, "failovers measured on each side")
	f.StringVar(&o.PGBin, "pg-bin", "", "PostgreSQL 15 binaries (default: discovered)")
	f.StringVar(&o.Dir, "dir", "", "scratch directory (default: a temporary one, removed afterwards)")
	f.IntVar(&o.PortLow, "port-low", 31000, "first of the 100 ports the benchmark uses")
	f.DurationVar(&o.Settle, "settle", 0, "writer warm-up before and after each failover (default 1s)")
	f.BoolVar(&asJSON, "json", false, "print the measurements as JSON")
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

// failoverReport is the failover benchmark's result with its ratio (in the JSON too).
type failoverReport struct {
	*bench.FailoverResult
	Ratio float64 `json:"ratio"`
}
