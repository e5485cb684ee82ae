package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"strings"

	"github.com/spf13/cobra"
)

// AddCommands adds the client commands (server, db, failover-group, link, secrets) to root, writing to stdout
// and stderr; rotateKeyOffline serves `secrets rotate-key --offline`.
func AddCommands(root *cobra.Command, rotateKeyOffline func(dataDir, keyFile string) (any, error)) {
	o := &Options{Stdout: os.Stdout, Stderr: os.Stderr, RotateKeyOffline: rotateKeyOffline}
	root.AddCommand(Commands(o)...)
}

// Commands returns the client commands bound to o (tests give their own writers).
func Commands(o *Options) []*cobra.Command {
	cmds := []*cobra.Command{serverCommand(o), databaseCommand(o), failoverGroupCommand(o), linkCommand(o), secretsCommand(o)}
	for _, c := range cmds {
		o.bind(c)
	}
	return cmds
}

// call runs fn with a client and a context bounded by --timeout.
func (o *Options) call(cmd *cobra.Command, fn func(ctx context.Context, c *Client) error) error {
	c, err := o.client()
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(cmd.Context(), o.Timeout)
	defer cancel()
	return fn(ctx, c)
}

// show GETs a resource or a list and prints it.
func (o *Options) show(ctx context.Context, c *Client, path string, cols []column) error {
	r, err := c.Do(ctx, http.MethodGet, path, nil)
	if err != nil {
		return err
	}
	return printResources(o.Stdout, o.Output, r.Body, cols)
}

// change sends a request that may start a long-running operation, follows it (unless --no-wait) and then
// shows the resource at showPath ("" for deletions).
func (o *Options) change(ctx context.Context, c *Client, what, method, path string, body any, showPath string, cols []column) error {
	r, err := c.Do(ctx, method, path, body)
	if err != nil {
		return err
	}
	if o.NoWait {
		if link := r.Header.Get("Azure-AsyncOperation"); link != "" {
			fmt.Fprintf(o.Stderr, "%s: started; follow it at %s\n", what, link)
		}
		return nil
	}
	if err := c.Wait(ctx, what, r); err != nil {
		return err
	}
	if showPath == "" {
		fmt.Fprintf(o.Stderr, "%s: done\n", what)
		return nil
	}
	return o.show(ctx, c, showPath, cols)
}

func required(cmd *cobra.Command, names ...string) {
	for _, n := range names {
		_ = cmd.MarkFlagRequired(n)
	}
}

func serverCommand(o *Options) *cobra.Command {
	cmd := &cobra.Command{Use: "server", Short: "Manage logical servers (az sql server)"}
	var name, location, admin, password string

	create := &cobra.Command{
		Use:   "create",
		Short: "Create a server in a location (long-running)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if password == "" {
				password = os.Getenv("FOGO_ADMIN_PASSWORD")
			}
			if password == "" {
				return errors.New("give the administrator password with --admin-password or FOGO_ADMIN_PASSWORD")
			}
			body := map[string]any{"location": location, "properties": map[string]any{
				"administratorLogin": admin, "administratorLoginPassword": password,
			}}
			return o.call(cmd, func(ctx context.Context, c *Client) error {
				p := o.serverPath(name)
				return o.change(ctx, c, "create server "+name, http.MethodPut, p, body, p, serverColumns)
			})
		},
	}
	create.Flags().StringVarP(&name, "name", "n", "", "server name")
	create.Flags().StringVarP(&location, "location", "l", "", "region, e.g. eastus")
	create.Flags().StringVarP(&admin, "admin-user", "u", "", "administrator login")
	create.Flags().StringVarP(&password, "admin-password", "p", "", "administrator password (or env FOGO_ADMIN_PASSWORD)")
	required(create, "name", "location", "admin-user")

	show := &cobra.Command{
		Use: "show", Short: "Show a server", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return o.call(cmd, func(ctx context.Context, c *Client) error {
				return o.show(ctx, c, o.serverPath(name), serverColumns)
			})
		},
	}
	show.Flags().StringVarP(&name, "name", "n", "", "server name")
	required(show, "name")

	list := &cobra.Command{
		Use: "list", Short: "List the servers of the resource group", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return o.call(cmd, func(ctx context.Context, c *Client) error {
				return o.show(ctx, c, o.groupPath()+"/servers", serverColumns)
			})
		},
	}

	del := &cobra.Command{
		Use: "delete", Short: "Delete a server (it must hold no database in a failover group)", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return o.call(cmd, func(ctx context.Context, c *Client) error {
				return o.change(ctx, c, "delete server "+name, http.MethodDelete, o.serverPath(name), nil, "", nil)
			})
		},
	}
	del.Flags().StringVarP(&name, "name", "n", "", "server name")
	required(del, "name")

	cmd.AddCommand(create, show, list, del)
	return cmd
}

func databaseCommand(o *Options) *cobra.Command {
	cmd := &cobra.Command{Use: "db", Short: "Manage databases (az sql db)"}
	var server, name string
	named := func(c *cobra.Command) {
		c.Flags().StringVarP(&server, "server", "s", "", "server name")
		c.Flags().StringVarP(&name, "name", "n", "", "database name")
		required(c, "server", "name")
	}

	create := &cobra.Command{
		Use: "create", Short: "Create a database on a server (long-running)", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return o.call(cmd, func(ctx context.Context, c *Client) error {
				location, err := serverLocation(ctx, c, o, server)
				if err != nil {
					return err
				}
				p := o.databasePath(server, name)
				return o.change(ctx, c, "create database "+name, http.MethodPut, p, map[string]any{"location": location}, p, databaseColumns)
			})
		},
	}
	named(create)

	show := &cobra.Command{
		Use: "show", Short: "Show a database", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return o.call(cmd, func(ctx context.Context, c *Client) error {
				return o.show(ctx, c, o.databasePath(server, name), databaseColumns)
			})
		},
	}
	named(show)

	list := &cobra.Command{
		Use: "list", Short: "List the databases of a server", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return o.call(cmd, func(ctx context.Context, c *Client) error {
				return o.show(ctx, c, o.serverPath(server)+"/databases", databaseColumns)
			})
		},
	}
	list.Flags().StringVarP(&server, "server", "s", "", "server name")
	required(list, "server")

	del := &cobra.Command{
		Use: "delete", Short: "Delete a database (remove it from its failover group first)", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return o.call(cmd, func(ctx context.Context, c *Client) error {
				return o.change(ctx, c, "delete database "+name, http.MethodDelete, o.databasePath(server, name), nil, "", nil)
			})
		},
	}
	named(del)

	cmd.AddCommand(create, show, list, del)
	return cmd
}

// serverLocation reads a server's location (a database is created in its server's location).
func serverLocation(ctx context.Context, c *Client, o *Options, server string) (string, error) {
	r, err := c.Do(ctx, http.MethodGet, o.serverPath(server), nil)
	if err != nil {
		return "", err
	}
	var s struct {
		Location string `json:"location"`
	}
	if err := json.Unmarshal(r.Body, &s); err != nil {
		return "", fmt.Errorf("decode server %s: %w", server, err)
	}
	return s.Location, nil
}

// groupFlags are the settings of a failover group given on the command line.
type groupFlags struct {
	server, name, partner, partnerRG string
	addDBs, removeDBs                []string
	policy                           string
	graceHours                       int
	allowDataLoss, tryPlanned        bool
}

func failoverGroupCommand(o *Options) *cobra.Command {
	cmd := &cobra.Command{Use: "failover-group", Aliases: []string{"fg"}, Short: "Manage failover groups (az sql failover-group)"}
	// Each command with defaults of its own gets its own flag values: cobra writes defaults when a flag is
	// defined, so shared variables would take the last definition's default.
	var f groupFlags
	fc, fu := &groupFlags{}, &groupFlags{}
	namedFor := func(c *cobra.Command, f *groupFlags) {
		c.Flags().StringVarP(&f.server, "server", "s", "", "server name")
		c.Flags().StringVarP(&f.name, "name", "n", "", "failover group name")
		required(c, "server", "name")
	}
	named := func(c *cobra.Command) { namedFor(c, &f) }
	policyFor := func(c *cobra.Command, f *groupFlags, def string, defGrace int) {
		c.Flags().StringVar(&f.policy, "failover-policy", def, "read-write failover policy: Automatic or Manual")
		c.Flags().IntVar(&f.graceHours, "grace-period", defGrace, "hours fogo waits before an automatic failover with data loss (Automatic only)")
	}

	create := &cobra.Command{
		Use: "create", Short: "Create a failover group on the primary server and seed its databases on the partner (long-running)",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			partnerRG := fc.partnerRG
			if partnerRG == "" {
				partnerRG = o.ResourceGroup
			}
			props := map[string]any{
				"readWriteEndpoint": readWriteEndpoint(fc.policy, fc.graceHours, cmd.Flags().Changed("grace-period")),
				"readOnlyEndpoint":  map[string]any{"failoverPolicy": "Disabled"},
				"partnerServers": []any{map[string]any{"id": fmt.Sprintf("/subscriptions/%s/resourceGroups/%s/providers/Microsoft.Sql/servers/%s",
					o.Subscription, partnerRG, fc.partner)}},
				"databases": o.databaseIDs(fc.server, fc.addDBs),
			}
			return o.call(cmd, func(ctx context.Context, c *Client) error {
				p := o.failoverGroupPath(fc.server, fc.name)
				return o.change(ctx, c, "create failover group "+fc.name, http.MethodPut, p, map[string]any{"properties": props}, p, failoverGroupColumns)
			})
		},
	}
	namedFor(create, fc)
	create.Flags().StringVar(&fc.partner, "partner-server", "", "the partner (geo-secondary) server")
	create.Flags().StringVar(&fc.partnerRG, "partner-resource-group", "", "resource group of the partner server (default: --resource-group)")
	create.Flags().StringSliceVar(&fc.addDBs, "add-db", nil, "databases of the primary server to replicate (repeat or comma-separate)")
	policyFor(create, fc, "Automatic", 1)
	required(create, "partner-server")

	show := &cobra.Command{
		Use: "show", Short: "Show a failover group as one of its servers sees it", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return o.call(cmd, func(ctx context.Context, c *Client) error {
				return o.show(ctx, c, o.failoverGroupPath(f.server, f.name), failoverGroupColumns)
			})
		},
	}
	named(show)

	list := &cobra.Command{
		Use: "list", Short: "List the failover groups of a server", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return o.call(cmd, func(ctx context.Context, c *Client) error {
				return o.show(ctx, c, o.serverPath(f.server)+"/failoverGroups", failoverGroupColumns)
			})
		},
	}
	list.Flags().StringVarP(&f.server, "server", "s", "", "server name")
	required(list, "server")

	update := &cobra.Command{
		Use: "update", Short: "Add or remove databases, change the failover policy (sent to the primary server)", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return o.call(cmd, func(ctx context.Context, c *Client) error {
				p := o.failoverGroupPath(fu.server, fu.name)
				props, err := o.updateProperties(ctx, c, cmd, p, fu)
				if err != nil {
					return err
				}
				return o.change(ctx, c, "update failover group "+fu.name, http.MethodPatch, p, map[string]any{"properties": props}, p, failoverGroupColumns)
			})
		},
	}
	namedFor(update, fu)
	update.Flags().StringSliceVar(&fu.addDBs, "add-db", nil, "databases to add (repeat or comma-separate)")
	update.Flags().StringSliceVar(&fu.removeDBs, "remove-db", nil, "databases to remove (repeat or comma-separate)")
	policyFor(update, fu, "", 0)

	del := &cobra.Command{
		Use: "delete", Short: "Delete a failover group (sent to the primary server); both copies of each database stay", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return o.call(cmd, func(ctx context.Context, c *Client) error {
				return o.change(ctx, c, "delete failover group "+f.name, http.MethodDelete, o.failoverGroupPath(f.server, f.name), nil, "", nil)
			})
		},
	}
	named(del)

	setPrimary := &cobra.Command{
		Use:   "set-primary",
		Short: "Fail over: make --server (the current secondary) the primary (planned unless --allow-data-loss)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			action, what := "failover", "planned failover of "+f.name
			switch {
			case f.allowDataLoss && f.tryPlanned:
				return errors.New("--allow-data-loss and --try-planned-before-forced exclude each other")
			case f.allowDataLoss:
				action, what = "forceFailoverAllowDataLoss", "forced failover of "+f.name
			case f.tryPlanned:
				action, what = "tryPlannedBeforeForcedFailover", "planned-then-forced failover of "+f.name
			}
			return o.call(cmd, func(ctx context.Context, c *Client) error {
				p := o.failoverGroupPath(f.server, f.name)
				return o.change(ctx, c, what, http.MethodPost, p+"/"+action, nil, p, failoverGroupColumns)
			})
		},
	}
	named(setPrimary)
	setPrimary.Flags().BoolVar(&f.allowDataLoss, "allow-data-loss", false, "forced failover: promote at once, transactions not yet replicated are lost")
	setPrimary.Flags().BoolVar(&f.tryPlanned, "try-planned-before-forced", false, "try a planned failover, fall back to a forced one if it cannot complete in time")

	cmd.AddCommand(create, show, list, update, del, setPrimary, lostTransactionsCommand(o))
	return cmd
}

// readWriteEndpoint builds the readWriteEndpoint property; the grace period is sent with Automatic only, unless
// the user gave it explicitly (then the server says what is wrong with it).
func readWriteEndpoint(policy string, graceHours int, graceGiven bool) map[string]any {
	rw := map[string]any{"failoverPolicy": policy}
	if strings.EqualFold(policy, "Automatic") || graceGiven {
		rw["failoverWithDataLossGracePeriodMinutes"] = graceHours * 60
	}
	return rw
}

func (o *Options) databaseIDs(server string, names []string) []string {
	ids := make([]string, 0, len(names))
	for _, n := range names {
		ids = append(ids, o.databasePath(server, strings.TrimSpace(n)))
	}
	return ids
}

// updateProperties reads the group and returns the properties to PATCH for the flags given.
func (o *Options) updateProperties(ctx context.Context, c *Client, cmd *cobra.Command, path string, f *groupFlags) (map[string]any, error) {
	r, err := c.Do(ctx, http.MethodGet, path, nil)
	if err != nil {
		return nil, err
	}
	var cur struct {
		Properties struct {
			ReadWriteEndpoint struct {
				FailoverPolicy string `json:"failoverPolicy"`
				Grace          *int   `json:"failoverWithDataLossGracePeriodMinutes"`
			} `json:"readWriteEndpoint"`
			Databases []string `json:"databases"`
		} `json:"properties"`
	}
	if err := json.Unmarshal(r.Body, &cur); err != nil {
		return nil, fmt.Errorf("decode failover group: %w", err)
	}
	props := map[string]any{}
	if len(f.addDBs) > 0 || len(f.removeDBs) > 0 {
		remove := map[string]bool{}
		for _, n := range f.removeDBs {
			remove[strings.ToLower(strings.TrimSpace(n))] = true
		}
		dbs := []string{}
		seen := map[string]bool{}
		for _, id := range cur.Properties.Databases {
			n := strings.ToLower(id[strings.LastIndexByte(id, '/')+1:])
			if !remove[n] {
				dbs, seen[n] = append(dbs, id), true
			}
		}
		for _, id := range o.databaseIDs(f.server, f.addDBs) {
			if n := strings.ToLower(id[strings.LastIndexByte(id, '/')+1:]); !seen[n] {
				dbs, seen[n] = append(dbs, id), true
			}
		}
		props["databases"] = dbs
	}
	policyGiven, graceGiven := cmd.Flags().Changed("failover-policy"), cmd.Flags().Changed("grace-period")
	if policyGiven || graceGiven {
		pol := cur.Properties.ReadWriteEndpoint.FailoverPolicy
		if policyGiven {
			pol = f.policy
		}
		hours := f.graceHours
		if !graceGiven {
			hours = 1
			if g := cur.Properties.ReadWriteEndpoint.Grace; g != nil {
				hours = *g / 60
			}
		}
		props["readWriteEndpoint"] = readWriteEndpoint(pol, hours, graceGiven)
	}
	if len(props) == 0 {
		return nil, errors.New("nothing to update: give --add-db, --remove-db, --failover-policy or --grace-period")
	}
	return props, nil
}
