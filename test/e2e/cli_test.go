package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/spf13/cobra"

	"github.com/fogo-db/fogo/internal/cli"
)

// runCLI runs one fogo client command against f and returns its stdout, stderr and error.
func (f *fogo) runCLI(args ...string) (string, string, error) {
	var stdout, stderr bytes.Buffer
	root := &cobra.Command{Use: "fogo", SilenceUsage: true, SilenceErrors: true}
	root.AddCommand(cli.Commands(&cli.Options{Stdout: &stdout, Stderr: &stderr})...)
	root.SetArgs(append(args, "--endpoint", f.url, "--token", f.tok, "--subscription", sub, "-g", rg))
	root.SetOut(&stderr)
	root.SetErr(&stderr)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	err := root.ExecuteContext(ctx)
	return stdout.String(), stderr.String(), err
}

func (f *fogo) mustCLI(t *testing.T, args ...string) string {
	t.Helper()
	out, errOut, err := f.runCLI(args...)
	if err != nil {
		t.Fatalf("fogo %s: %v\nstderr: %s", strings.Join(args, " "), err, errOut)
	}
	return out
}

// TestCLI drives servers, databases and a failover group through the fogo CLI only: tables, JSON, progress of
// long-running operations, planned and forced set-primary, and ARM errors as failing commands.
func TestCLI(t *testing.T) {
	f := startFogo(t)
	t.Setenv("FOGO_ADMIN_PASSWORD", password)
	out := f.mustCLI(t, "server", "create", "-n", "cli-east", "-l", "eastus", "-u", login)
	if !strings.Contains(out, "cli-east") || !strings.Contains(out, "Ready") {
		t.Fatalf("server create output:\n%s", out)
	}
	f.mustCLI(t, "server", "create", "-n", "cli-west", "-l", "westus", "-u", login)
	out = f.mustCLI(t, "server", "list")
	if !strings.Contains(out, "cli-east") || !strings.Contains(out, "cli-west") || !strings.HasPrefix(out, "NAME") {
		t.Fatalf("server list:\n%s", out)
	}
	if strings.Contains(out, password) {
		t.Fatal("the password is printed")
	}

	_, progress, err := f.runCLI("db", "create", "-s", "cli-east", "-n", "sales")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(progress, "create database sales: Succeeded") {
		t.Fatalf("no progress for a long-running operation:\n%s", progress)
	}
	var db map[string]any
	if err := json.Unmarshal([]byte(f.mustCLI(t, "db", "show", "-s", "cli-east", "-n", "sales", "-o", "json")), &db); err != nil {
		t.Fatal(err)
	}
	if db["properties"].(map[string]any)["status"] != "Online" || db["location"] != "eastus" {
		t.Fatalf("db show json: %v", db)
	}

	out = f.mustCLI(t, "failover-group", "create", "-n", "cli-fg", "-s", "cli-east", "--partner-server", "cli-west",
		"--add-db", "sales", "--failover-policy", "Manual")
	if !strings.Contains(out, "Primary") || !strings.Contains(out, "sales") {
		t.Fatalf("failover-group create:\n%s", out)
	}
	f.waitGroupState("cli-east", "cli-fg", "CATCH_UP")

	// An ARM error is a failing command that carries the catalogue's code.
	_, _, err = f.runCLI("failover-group", "set-primary", "-n", "cli-fg", "-s", "cli-east")
	var armErr *cli.ARMError
	if !errors.As(err, &armErr) || armErr.Code != "FailoverGroupFailoverRequestOnPrimary" || armErr.Status != 400 {
		t.Fatalf("set-primary on the primary: %v", err)
	}
	_, _, err = f.runCLI("failover-group", "update", "-n", "cli-fg", "-s", "cli-east", "--failover-policy", "Automatic", "--grace-period", "-1")
	if !errors.As(err, &armErr) || armErr.Code != "FailoverGroupCreateOrUpdateRequestNegativeGracePeriodValues" {
		t.Fatalf("negative grace period: %v", err)
	}

	// Planned failover to west, then forced back to east.
	out = f.mustCLI(t, "failover-group", "set-primary", "-n", "cli-fg", "-s", "cli-west")
	if !strings.Contains(out, "Primary") {
		t.Fatalf("set-primary output:\n%s", out)
	}
	if role(t, f, "cli-west", "cli-fg") != "Primary" {
		t.Fatal("west is not primary after set-primary")
	}
	f.mustCLI(t, "failover-group", "set-primary", "-n", "cli-fg", "-s", "cli-east", "--allow-data-loss")
	if role(t, f, "cli-east", "cli-fg") != "Primary" {
		t.Fatal("east is not primary after a forced set-primary")
	}
	f.waitGroupState("cli-east", "cli-fg", "CATCH_UP")

	// Update: policy change and removing the database; list; delete.
	out = f.mustCLI(t, "failover-group", "update", "-n", "cli-fg", "-s", "cli-east", "--failover-policy", "Automatic", "--grace-period", "2")
	if !strings.Contains(out, "Automatic 120m") {
		t.Fatalf("update policy:\n%s", out)
	}
	f.mustCLI(t, "failover-group", "update", "-n", "cli-fg", "-s", "cli-east", "--remove-db", "sales")
	var groups []map[string]any
	if err := json.Unmarshal([]byte(f.mustCLI(t, "failover-group", "list", "-s", "cli-west", "-o", "json")), &groups); err != nil {
		t.Fatal(err)
	}
	if len(groups) != 1 || len(groups[0]["properties"].(map[string]any)["databases"].([]any)) != 0 {
		t.Fatalf("list after removing the database: %v", groups)
	}
	// The removed database's geo-secondary copy stays on the partner as an independent read-write database.
	var west map[string]any
	if err := json.Unmarshal([]byte(f.mustCLI(t, "db", "show", "-s", "cli-west", "-n", "sales", "-o", "json")), &west); err != nil {
		t.Fatal(err)
	}
	if p := west["properties"].(map[string]any); p["failoverGroupId"] != nil || p["secondaryType"] != nil {
		t.Fatalf("west copy still linked after removal: %v", p)
	}
	mustExec(t, f, "cli-west", "sales", "CREATE TABLE independent(x int)")
	mustExec(t, f, "cli-east", "sales", "CREATE TABLE independent(x int)") // no conflict: replication has ended
	f.mustCLI(t, "failover-group", "delete", "-n", "cli-fg", "-s", "cli-east")
	if _, _, err := f.runCLI("failover-group", "show", "-n", "cli-fg", "-s", "cli-east"); !errors.As(err, &armErr) || armErr.Status != 404 {
		t.Fatalf("show after delete: %v", err)
	}
	f.mustCLI(t, "db", "delete", "-s", "cli-east", "-n", "sales")

	// No token anywhere: a clear local error, no request.
	t.Setenv("FOGO_API_TOKEN", "")
	root := &cobra.Command{Use: "fogo"}
	root.AddCommand(cli.Commands(&cli.Options{Stdout: &bytes.Buffer{}, Stderr: &bytes.Buffer{}})...)
	root.SetArgs([]string{"server", "list", "--endpoint", f.url, "--data-dir", t.TempDir()})
	root.SetOut(&bytes.Buffer{})
	root.SetErr(&bytes.Buffer{})
	if err := root.Execute(); err == nil || !strings.Contains(err.Error(), "no API token") {
		t.Fatalf("without a token: %v", err)
	}
}
