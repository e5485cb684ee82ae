package main

import (
	"bytes"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

func TestParseHostFlag(t *testing.T) {
	h, err := parseHostFlag("db1=10.0.0.1, db1.example.com")
	if err != nil || h.Name != "db1" || !slices.Equal(h.Addrs, []string{"10.0.0.1", "db1.example.com"}) {
		t.Fatalf("%+v %v", h, err)
	}
	for _, bad := range []string{"db1", "=10.0.0.1", "db1=", "db1=10.0.0.1,,x", "db1=10.0.0.1,"} {
		if _, err := parseHostFlag(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

func TestCertsCommand(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "certs")
	run := func(args ...string) (string, error) {
		cmd := certsCommand()
		var out bytes.Buffer
		cmd.SetOut(&out)
		cmd.SetErr(&out)
		cmd.SetArgs(args)
		err := cmd.Execute()
		return out.String(), err
	}
	out, err := run("--out", dir, "--host", "db1=10.0.0.1", "--host", "db2=10.0.0.2,db2.example.com")
	if err != nil || strings.Count(out, "created") != 3 {
		t.Fatalf("%s %v", out, err)
	}
	out, err = run("--out", dir, "--host", "db1=10.0.0.1,10.0.1.1", "--host", "db2=10.0.0.2,db2.example.com")
	if err != nil || strings.Count(out, "kept") != 2 || !strings.Contains(out, "reissued") ||
		!strings.Contains(out, "10.0.1.1") {
		t.Fatalf("%s %v", out, err)
	}
	if _, err := run("--out", dir, "--host", "../x=10.0.0.1"); err == nil || !strings.Contains(err.Error(), "../x") {
		t.Fatalf("hostile name: %v", err)
	}
	if _, err := run("--out", dir, "--host", "db1"); err == nil || !strings.Contains(err.Error(), "NAME=ADDR") {
		t.Fatalf("bad syntax: %v", err)
	}
}
