package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/fogo-db/fogo/internal/chaos"
)

func chaosCommand() *cobra.Command {
	var cfg chaos.Config
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "chaos",
		Short: "Run a seeded fault campaign against a fogo of its own and check fogo's promises after every fault",
		Long: `Starts fogo serve (the embedded mode) on a data directory of its own, with a failover group of one
database, two writers committing through the read-write listener and keeping a ledger of what was acknowledged,
and a link streaming the ledger into DuckDB. Then it injects --faults faults, drawn from --seed: kill -9 or
freeze of the primary, kill -9 of the geo-secondary, the WAL stream cut or blocked, planned, forced and
try-planned failovers, kill -9 of fogo in the middle of a planned or forced failover, a link target restart,
concurrent API calls. After each it checks: one writable primary, behind the listener; no acknowledged commit
lost but by a forced failover, and then exactly those in its lost-transaction report; the link target equal to
the source, without duplicates; no status claiming health past its heartbeat; the API answering. It prints a
table per fault kind (or JSON) and exits non-zero, with the seed, when an invariant broke. Run it as root:
fogo runs PostgreSQL as the postgres OS user.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if !cmd.Flags().Changed("seed") {
				cfg.Seed = time.Now().UnixNano() % 1_000_000_007
			}
			self, err := os.Executable()
			if err != nil {
				return err
			}
			cfg.Fogo, cfg.Progress = self, os.Stderr
			fmt.Fprintf(os.Stderr, "chaos: seed %d, %d faults\n", cfg.Seed, cfg.Faults)
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			res, err := chaos.Run(ctx, cfg)
			if err != nil {
				if errors.Is(err, context.Canceled) && res != nil {
					fmt.Fprintln(os.Stderr, "chaos: interrupted")
				} else {
					return err
				}
			}
			if asJSON {
				enc := json.NewEncoder(os.Stdout)
				enc.SetIndent("", "  ")
				if err := enc.Encode(res); err != nil {
					return err
				}
			} else if err := res.WriteTable(os.Stdout); err != nil {
				return err
			}
			if !res.Passed {
				return fmt.Errorf("an invariant broke; reproduce with: fogo chaos --seed %d --faults %d", cfg.Seed, cfg.Faults)
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.IntVar(&cfg.Faults, "faults", 50, "how many faults to inject")
	f.Int64Var(&cfg.Seed, "seed", 0, "the seed of the fault sequence (default: from the clock, printed)")
	f.StringSliceVar(&cfg.Kinds, "kinds", nil, "only these fault kinds (comma-separated; default all): "+fmt.Sprint(chaos.Kinds()))
	f.StringVar(&cfg.DataDir, "data-dir", "", "fogo's data directory (default: a temporary one, removed at the end)")
	f.BoolVar(&cfg.Keep, "keep", false, "keep the temporary data directory")
	f.IntVar(&cfg.PortLow, "port-low", 27000, "the first of 100 ports the campaign's fogo uses (instances, endpoints, API)")
	f.BoolVar(&asJSON, "json", false, "print the result as JSON")
	f.StringVar(&cfg.Mode, "mode", "embedded", "embedded (fogo serve alone) or cluster (etcd, an agent per region and a controller in network namespaces, as try-cluster makes them)")
	return cmd
}
