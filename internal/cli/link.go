package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"
)

const (
	linkAPI          = "?api-version=2022-12-01-preview"
	linkedServiceAPI = "?api-version=2020-12-01"
)

// linkCommand is `fogo link …`: link connections through the Synapse-style API.
func linkCommand(o *Options) *cobra.Command {
	cmd := &cobra.Command{Use: "link", Short: "Manage link connections (continuous copies into DuckDB or PostgreSQL)"}
	var workspace string
	cmd.PersistentFlags().StringVarP(&workspace, "workspace", "w", envOr("FOGO_WORKSPACE", "default"), "workspace (env FOGO_WORKSPACE)")
	ws := func() string { return "/workspaces/" + workspace }

	var srcConn, srcResource, duckPath, tgtConn string
	var tables []string
	var drop bool
	create := &cobra.Command{
		Use:   "create NAME",
		Short: "Create a link connection (and its linked services NAME-source and NAME-target) with its tables",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			name := args[0]
			if srcConn == "" {
				srcConn = os.Getenv("FOGO_LINK_SOURCE")
			}
			if srcConn == "" || (duckPath == "") == (tgtConn == "") || len(tables) == 0 {
				return errors.New("give --source-connection (or FOGO_LINK_SOURCE), one of --target-duckdb or --target-connection, and at least one --table")
			}
			target := map[string]any{"type": "DuckDb", "typeProperties": map[string]any{"path": duckPath}}
			if tgtConn != "" {
				target = map[string]any{"type": "PostgreSql", "typeProperties": map[string]any{"connectionString": tgtConn}}
			}
			var edits []any
			for _, t := range tables {
				src, dst, _ := strings.Cut(t, ":")
				if dst == "" {
					dst = src
				}
				ss, st := splitTable(src)
				ds, dt := splitTable(dst)
				edits = append(edits, map[string]any{"source": map[string]any{"schemaName": ss, "tableName": st},
					"target": map[string]any{"schemaName": ds, "tableName": dt}, "operationType": "add"})
			}
			return o.call(cmd, func(ctx context.Context, c *Client) error {
				steps := []struct {
					method, path string
					body         any
				}{
					{http.MethodPut, ws() + "/linkedservices/" + name + "-source" + linkedServiceAPI, map[string]any{"properties": map[string]any{
						"type": "PostgreSql", "typeProperties": map[string]any{"connectionString": srcConn}}}},
					{http.MethodPut, ws() + "/linkedservices/" + name + "-target" + linkedServiceAPI, map[string]any{"properties": target}},
					{http.MethodPut, ws() + "/linkconnections/" + name + linkAPI, map[string]any{"properties": map[string]any{
						"sourceDatabase": map[string]any{"linkedService": map[string]any{"referenceName": name + "-source"},
							"typeProperties": map[string]any{"resourceId": srcResource}},
						"targetDatabase": map[string]any{"linkedService": map[string]any{"referenceName": name + "-target"},
							"typeProperties": map[string]any{"dropExistingTargetTableOnStart": drop}}}}},
					{http.MethodPost, ws() + "/linkconnections/" + name + "/edittables" + linkAPI, map[string]any{"linkTables": edits}},
				}
				for _, s := range steps {
					if _, err := c.Do(ctx, s.method, s.path, s.body); err != nil {
						return err
					}
				}
				fmt.Fprintf(o.Stderr, "link connection %s created; start it with: fogo link start %s\n", name, name)
				return nil
			})
		},
	}
	create.Flags().StringVar(&srcConn, "source-connection", "", "source connection string (or env FOGO_LINK_SOURCE; kept secret)")
	create.Flags().StringVar(&srcResource, "source-resource-id", "", "failover group resource id: the link follows the group through failovers")
	create.Flags().StringVar(&duckPath, "target-duckdb", "", "DuckDB file (relative paths live in fogo's data directory)")
	create.Flags().StringVar(&tgtConn, "target-connection", "", "PostgreSQL target connection string")
	create.Flags().StringSliceVar(&tables, "table", nil, "schema.table[:target_schema.target_table] (repeat)")
	create.Flags().BoolVar(&drop, "drop-existing", false, "drop and recreate existing target tables on the first start")

	simple := func(use, short, method, action string) *cobra.Command {
		return &cobra.Command{Use: use + " NAME", Short: short, Args: cobra.ExactArgs(1),
			RunE: func(cmd *cobra.Command, args []string) error {
				return o.call(cmd, func(ctx context.Context, c *Client) error {
					p := ws() + "/linkconnections/" + args[0]
					if action != "" {
						p += "/" + action
					}
					_, err := c.Do(ctx, method, p+linkAPI, nil)
					if err == nil {
						fmt.Fprintf(o.Stderr, "%s %s: done\n", use, args[0])
					}
					return err
				})
			}}
	}
	status := &cobra.Command{Use: "status NAME", Short: "Show a link connection's detailed status", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return o.call(cmd, func(ctx context.Context, c *Client) error {
				r, err := c.Do(ctx, http.MethodGet, ws()+"/linkconnections/"+args[0]+"/detailedstatus"+linkAPI, nil)
				if err != nil {
					return err
				}
				return printJSONOrFields(o, r.Body, "name", "status", "isApplyingChanges", "isPartiallyFailed", "checkpointLsn", "appliedTransactions", "lastSourceCommitTime", "lastAppliedTime", "error")
			})
		}}
	tablesCmd := &cobra.Command{Use: "tables NAME", Short: "Show each linked table's status (querytablestatus)", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return o.call(cmd, func(ctx context.Context, c *Client) error {
				r, err := c.Do(ctx, http.MethodPost, ws()+"/linkconnections/"+args[0]+"/querytablestatus"+linkAPI, map[string]any{})
				if err != nil {
					return err
				}
				return printJSONOrTable(o, r.Body, func(raw []byte) ([]string, [][]string, error) {
					var res struct {
						Value []map[string]any `json:"value"`
					}
					if err := json.Unmarshal(raw, &res); err != nil {
						return nil, nil, err
					}
					var rows [][]string
					for _, t := range res.Value {
						row := []string{}
						for _, k := range []string{"id", "status", "lastTransactionCommitTime", "resyncReason", "errorMessage"} {
							cell := "-"
							if v, ok := t[k]; ok && v != nil {
								cell = fmt.Sprint(v)
							}
							row = append(row, cell)
						}
						rows = append(rows, row)
					}
					return []string{"ID", "STATUS", "LAST COMMIT", "RESYNC", "ERROR"}, rows, nil
				})
			})
		}}
	var maxRows, timeoutSeconds int
	query := &cobra.Command{Use: "query NAME SQL", Short: "Run a read-only query against the link's target tables", Args: cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			return o.call(cmd, func(ctx context.Context, c *Client) error {
				body := map[string]any{"query": args[1]}
				if maxRows > 0 {
					body["maxRows"] = maxRows
				}
				if timeoutSeconds > 0 {
					body["timeoutSeconds"] = timeoutSeconds
				}
				r, err := c.Do(ctx, http.MethodPost, ws()+"/linkconnections/"+args[0]+"/query"+linkAPI, body)
				if err != nil {
					return err
				}
				return printJSONOrTable(o, r.Body, func(raw []byte) ([]string, [][]string, error) {
					var res struct {
						Columns   []string `json:"columns"`
						Rows      [][]any  `json:"rows"`
						Truncated bool     `json:"truncated"`
						MaxRows   int      `json:"maxRows"`
					}
					if err := json.Unmarshal(raw, &res); err != nil {
						return nil, nil, err
					}
					if res.Truncated {
						fmt.Fprintf(cmd.ErrOrStderr(), "(more rows than the limit of %d; showing the first %d: pass --max-rows)\n", res.MaxRows, len(res.Rows))
					}
					rows := make([][]string, len(res.Rows))
					for i, row := range res.Rows {
						for _, v := range row {
							rows[i] = append(rows[i], fmt.Sprint(v))
						}
					}
					return res.Columns, rows, nil
				})
			})
		}}
	cmd.AddCommand(create, simple("start", "Start a link connection", http.MethodPost, "start"),
		simple("stop", "Stop a link connection", http.MethodPost, "stop"),
		simple("pause", "Pause a link connection (it resumes from its checkpoint)", http.MethodPost, "pause"),
		simple("resume", "Resume a paused link connection", http.MethodPost, "resume"),
		simple("delete", "Delete a link connection", http.MethodDelete, ""), status, tablesCmd, query)
	query.Flags().IntVar(&maxRows, "max-rows", 0, "rows returned at most (default 1000, at most 10000)")
	query.Flags().IntVar(&timeoutSeconds, "timeout-seconds", 0, "cancel the query after this many seconds (default 30, at most 300)")
	return cmd
}

func splitTable(s string) (schema, table string) {
	if sc, t, ok := strings.Cut(s, "."); ok {
		return sc, t
	}
	return "public", s
}

// printJSONOrFields prints a JSON object as indented JSON or as "field: value" lines.
// printJSONOrTable prints a response as it came (-o json) or as the table toTable makes of it.
func printJSONOrTable(o *Options, raw []byte, toTable func([]byte) (header []string, rows [][]string, err error)) error {
	if o.Output == "json" {
		_, err := o.Stdout.Write(raw)
		return err
	}
	header, rows, err := toTable(raw)
	if err != nil {
		return err
	}
	tw := tabwriter.NewWriter(o.Stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, strings.Join(header, "\t"))
	for _, row := range rows {
		fmt.Fprintln(tw, strings.Join(row, "\t"))
	}
	return tw.Flush()
}

func printJSONOrFields(o *Options, raw []byte, fields ...string) error {
	var m map[string]any
	if err := json.Unmarshal(raw, &m); err != nil {
		return err
	}
	if o.Output == "json" {
		enc := json.NewEncoder(o.Stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(m)
	}
	tw := tabwriter.NewWriter(o.Stdout, 0, 4, 2, ' ', 0)
	for _, f := range fields {
		if v, ok := m[f]; ok {
			fmt.Fprintf(tw, "%s:\t%v\n", f, v)
		}
	}
	return tw.Flush()
}
