package cli

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/fogo-db/fogo/internal/postgres/lostxact"
)

// lostReport is the API's lost-transaction report (the extension resource of a failover group).
type lostReport struct {
	Name       string `json:"name"`
	Properties struct {
		Operation        string `json:"operation"`
		Kind             string `json:"kind"`
		FailoverTime     string `json:"failoverTime"`
		TransactionCount int    `json:"transactionCount"`
		Databases        []struct {
			Database         string         `json:"database"`
			Status           string         `json:"status"`
			Message          string         `json:"message"`
			DivergedAt       string         `json:"divergedAt"`
			TransactionCount int            `json:"transactionCount"`
			ChangeCount      int            `json:"changeCount"`
			Truncated        bool           `json:"truncated"`
			LinkTargets      string         `json:"linkTargets"`
			Transactions     []lostxact.Txn `json:"transactions"`
		} `json:"databases"`
	} `json:"properties"`
}

// lostTransactionsCommand is `failover-group lost-transactions`: the reports of a group's forced failovers, or
// one of them as a table, as JSON or as the SQL that would replay it.
func lostTransactionsCommand(o *Options) *cobra.Command {
	var server, name, operation string
	var asSQL bool
	cmd := &cobra.Command{
		Use:   "lost-transactions",
		Short: "Show what a forced failover lost: the reports of the group's forced failovers, or one with its transactions",
		Long: "Without --operation, lists the lost-transaction reports of the group's forced failovers, newest first.\n" +
			"With --operation, shows that failover's lost transactions and their changes (--output json for all of\n" +
			"it), or with --sql the statements that would replay them on the new primary, for review: nothing is run.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if asSQL && operation == "" {
				return fmt.Errorf("--sql needs --operation: which failover's transactions to write")
			}
			return o.call(cmd, func(ctx context.Context, c *Client) error {
				p := o.failoverGroupPath(server, name) + "/lostTransactions"
				if operation != "" {
					p += "/" + operation
				}
				r, err := c.Do(ctx, http.MethodGet, p, nil)
				if err != nil {
					return err
				}
				switch {
				case o.Output == "json" && !asSQL:
					return printResources(o.Stdout, "json", r.Body, nil)
				case operation == "":
					var l struct {
						Value []lostReport `json:"value"`
					}
					if err := json.Unmarshal(r.Body, &l); err != nil {
						return fmt.Errorf("decode the reports: %w", err)
					}
					return printLostReports(o.Stdout, l.Value)
				}
				var rep lostReport
				if err := json.Unmarshal(r.Body, &rep); err != nil {
					return fmt.Errorf("decode the report: %w", err)
				}
				if asSQL {
					for _, d := range rep.Properties.Databases {
						fmt.Fprintf(o.Stdout, "-- %s: %s\n", d.Database, d.Message)
						if err := lostxact.WriteSQL(o.Stdout, d.Database, d.Transactions); err != nil {
							return err
						}
					}
					return nil
				}
				return printLostTransactions(o.Stdout, &rep)
			})
		},
	}
	cmd.Flags().StringVarP(&server, "server", "s", "", "either server of the group")
	cmd.Flags().StringVarP(&name, "name", "n", "", "failover group name")
	cmd.Flags().StringVar(&operation, "operation", "", "the forced failover's operation ID (from the list)")
	cmd.Flags().BoolVar(&asSQL, "sql", false, "write the SQL statements that would replay the transactions (with --operation)")
	required(cmd, "server", "name")
	return cmd
}

func printLostReports(w io.Writer, reports []lostReport) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "OPERATION\tKIND\tFAILOVER TIME\tDATABASE\tSTATUS\tTRANSACTIONS\tCHANGES\tMESSAGE")
	for _, r := range reports {
		for _, d := range r.Properties.Databases {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%d\t%d\t%s\n", r.Properties.Operation, r.Properties.Kind,
				shortTime(r.Properties.FailoverTime), d.Database, d.Status, d.TransactionCount, d.ChangeCount, d.Message)
		}
	}
	return tw.Flush()
}

// printLostTransactions prints each database's statement, then one line per change.
func printLostTransactions(w io.Writer, rep *lostReport) error {
	for _, d := range rep.Properties.Databases {
		fmt.Fprintf(w, "%s (%s): %s\n", d.Database, d.Status, d.Message)
		if d.LinkTargets != "" {
			fmt.Fprintln(w, d.LinkTargets)
		}
		if len(d.Transactions) == 0 {
			fmt.Fprintln(w)
			continue
		}
		tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "XID\tCOMMIT TIME\tCOMMIT LSN\tOP\tTABLE\tROW")
		for _, t := range d.Transactions {
			for _, c := range t.Changes {
				row := c.New
				if c.Op == "delete" {
					row = c.Old
				}
				fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s.%s\t%s\n", t.XID, t.CommitTime.UTC().Format(time.RFC3339Nano),
					t.CommitLSN, c.Op, c.Schema, c.Table, rowText(row))
			}
			if n := t.ChangeCount - len(t.Changes); n > 0 {
				fmt.Fprintf(tw, "%d\t%s\t%s\t…\t\t%d more change(s) not kept in the report\n", t.XID,
					t.CommitTime.UTC().Format(time.RFC3339Nano), t.CommitLSN, n)
			}
		}
		if err := tw.Flush(); err != nil {
			return err
		}
		fmt.Fprintln(w)
	}
	return nil
}

// rowText is a row as name=value pairs on one line (values shortened, tabs and newlines escaped).
func rowText(cols []lostxact.Column) string {
	parts := make([]string, 0, len(cols))
	for _, c := range cols {
		v := "NULL"
		switch {
		case c.Unchanged:
			v = "(unchanged)"
		case c.Value != nil:
			v = *c.Value
			if r := []rune(v); len(r) > 60 {
				v = string(r[:60]) + "…"
			}
			v = strings.NewReplacer("\t", `\t`, "\n", `\n`, "\r", `\r`).Replace(v)
		}
		parts = append(parts, c.Name+"="+v)
	}
	return strings.Join(parts, " ")
}

func shortTime(s string) string {
	if t, err := time.Parse(time.RFC3339Nano, s); err == nil {
		return t.UTC().Format("2006-01-02 15:04:05Z")
	}
	return s
}
