package cli

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"

	"github.com/spf13/cobra"
)

// secretsCommand manages the key that seals the secrets in fogo's state.
func secretsCommand(o *Options) *cobra.Command {
	cmd := &cobra.Command{Use: "secrets", Short: "Manage the key that seals the secrets in fogo's state"}
	var offline bool
	var keyFile string
	rotate := &cobra.Command{
		Use:   "rotate-key",
		Short: "Seal every secret under a new key and retire the old one",
		Long: "Rotate the secrets key of the running fogo (through its API), or with --offline of a stopped fogo's\n" +
			"--data-dir. Each step is durable: a fogo stopped in the middle finishes the rotation when it starts.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if offline {
				if o.RotateKeyOffline == nil {
					return errors.New("--offline is not available in this build")
				}
				res, err := o.RotateKeyOffline(o.DataDir, keyFile)
				if err != nil {
					return err
				}
				raw, err := json.Marshal(res)
				if err != nil {
					return err
				}
				return printJSONOrFields(o, raw, "keyId", "retiredKeyIds", "resealed")
			}
			if keyFile != "" {
				return errors.New("--secrets-key-file goes with --offline; a running fogo uses its own key file")
			}
			return o.call(cmd, func(ctx context.Context, c *Client) error {
				r, err := c.Do(ctx, http.MethodPost, "/admin/secrets/rotate-key", nil)
				if err != nil {
					return err
				}
				return printJSONOrFields(o, r.Body, "keyId", "retiredKeyIds", "resealed")
			})
		},
	}
	rotate.Flags().BoolVar(&offline, "offline", false, "rotate the key of a fogo that is not running, in --data-dir")
	rotate.Flags().StringVar(&keyFile, "secrets-key-file", "", "with --offline: the key file, if not DATA-DIR/secrets.key")
	cmd.AddCommand(rotate)
	return cmd
}
