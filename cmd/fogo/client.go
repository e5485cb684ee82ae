package main

import (
	"github.com/spf13/cobra"

	"github.com/fogo-db/fogo/internal/cli"
)

func addClientCommands(root *cobra.Command) { cli.AddCommands(root) }
