// Command fogo runs self-hosted failover groups for PostgreSQL (`fogo serve`) and talks to a running fogo
// (server, db, failover-group commands), measures it (bench), creates a cluster's certificates (certs) and runs a whole cluster on one machine to try
// (try-cluster).
package main

import (
	"fmt"
	"os"

	"github.com/spf13/cobra"
)

func main() {
	root := &cobra.Command{
		Use:           "fogo",
		Short:         "Failover groups for PostgreSQL behind an ARM-compatible API",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.AddCommand(serveCommand(), agentCommand(), certsCommand(), benchCommand(), tryClusterCommand(), chaosCommand())
	addClientCommands(root)
	if err := root.Execute(); err != nil {
		fmt.Fprintln(os.Stderr, "ERROR:", err)
		os.Exit(1)
	}
}
