package cli

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/cobra"
)

// Options are the connection and output settings shared by every client command. Each flag has an environment
// variable so a shell can set them once.
type Options struct {
	Endpoint      string // --endpoint, FOGO_ENDPOINT
	Token         string // --token, FOGO_API_TOKEN
	DataDir       string // --data-dir, FOGO_DATA_DIR: read DIR/api-token when no token is given
	Subscription  string // --subscription, FOGO_SUBSCRIPTION
	ResourceGroup string // --resource-group/-g, FOGO_RESOURCE_GROUP
	Output        string // --output/-o: table or json
	NoWait        bool   // --no-wait: start a long-running operation and return
	Timeout       time.Duration

	Stdout, Stderr io.Writer
	// RotateKeyOffline rotates the secrets key of a stopped fogo's data directory (nil: --offline unavailable).
	RotateKeyOffline func(dataDir, keyFile string) (any, error)
	pollInterval     time.Duration
}

// Defaults for the shared flags.
const (
	DefaultEndpoint      = "http://127.0.0.1:7400"
	DefaultSubscription  = "00000000-0000-0000-0000-000000000000"
	DefaultResourceGroup = "default"
)

func envOr(name, def string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return def
}

func (o *Options) bind(cmd *cobra.Command) {
	f := cmd.PersistentFlags()
	f.StringVar(&o.Endpoint, "endpoint", envOr("FOGO_ENDPOINT", DefaultEndpoint), "fogo API base URL (env FOGO_ENDPOINT)")
	f.StringVar(&o.Token, "token", "", "API bearer token (env FOGO_API_TOKEN; else read from DATA-DIR/api-token)")
	f.StringVar(&o.DataDir, "data-dir", envOr("FOGO_DATA_DIR", "./fogo-data"), "fogo data directory holding api-token (env FOGO_DATA_DIR)")
	f.StringVar(&o.Subscription, "subscription", envOr("FOGO_SUBSCRIPTION", DefaultSubscription), "subscription id (env FOGO_SUBSCRIPTION)")
	f.StringVarP(&o.ResourceGroup, "resource-group", "g", envOr("FOGO_RESOURCE_GROUP", DefaultResourceGroup), "resource group (env FOGO_RESOURCE_GROUP)")
	f.StringVarP(&o.Output, "output", "o", "table", "output format: table or json")
	f.BoolVar(&o.NoWait, "no-wait", false, "start a long-running operation and return without waiting for it")
	f.DurationVar(&o.Timeout, "timeout", 30*time.Minute, "give up waiting for a long-running operation after this long")
}

// client checks the shared options and returns an API client.
func (o *Options) client() (*Client, error) {
	if o.Output != "table" && o.Output != "json" {
		return nil, fmt.Errorf("--output must be table or json, not %q", o.Output)
	}
	tok, err := o.token()
	if err != nil {
		return nil, err
	}
	return &Client{Endpoint: o.Endpoint, Token: tok, Progress: o.Stderr, PollInterval: o.pollInterval}, nil
}

// token resolves the bearer token: --token, then FOGO_API_TOKEN, then DATA-DIR/api-token.
func (o *Options) token() (string, error) {
	if o.Token != "" {
		return o.Token, nil
	}
	if t := os.Getenv("FOGO_API_TOKEN"); t != "" {
		return t, nil
	}
	path := filepath.Join(o.DataDir, "api-token")
	raw, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return "", fmt.Errorf("no API token: give --token, set FOGO_API_TOKEN, or point --data-dir at fogo's data directory (%s does not exist)", path)
	}
	if err != nil {
		return "", fmt.Errorf("read API token: %w", err)
	}
	tok := strings.TrimSpace(string(raw))
	if tok == "" {
		return "", fmt.Errorf("API token file %s is empty", path)
	}
	return tok, nil
}

// Paths of the resources the commands manage.
func (o *Options) groupPath() string {
	return fmt.Sprintf("/subscriptions/%s/resourceGroups/%s/providers/Microsoft.Sql", o.Subscription, o.ResourceGroup)
}

func (o *Options) serverPath(name string) string { return o.groupPath() + "/servers/" + name }

func (o *Options) databasePath(server, name string) string {
	return o.serverPath(server) + "/databases/" + name
}

func (o *Options) failoverGroupPath(server, name string) string {
	return o.serverPath(server) + "/failoverGroups/" + name
}
