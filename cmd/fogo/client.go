package main

import (
	"github.com/spf13/cobra"

	"github.com/fogo-db/fogo/internal/app"
	"github.com/fogo-db/fogo/internal/cli"
)

func addClientCommands(root *cobra.Command) {
	cli.AddCommands(root, func(dataDir, keyFile string) (any, error) {
		return app.RotateKeyOffline(dataDir, keyFile, nil)
	})
}
