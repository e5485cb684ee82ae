package agent

import (
	"context"
	"errors"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/fogo-db/fogo/internal/postgres/instance"
	"github.com/fogo-db/fogo/internal/testutil/pgtest"
)

// hostAPI serves a Server over a fresh instances directory and returns a client with the right token.
func hostAPI(t *testing.T) (*Client, string) {
	t.Helper()
	root := t.TempDir()
	s := &Server{Name: "a1", Root: root, Token: "secret", Log: discard(), Host: instance.LocalHost{Bin: pgtest.Bin(t)}}
	srv := httptest.NewServer(s)
	t.Cleanup(srv.Close)
	servers.Store(srv.URL, s)
	return &Client{Name: "a1", URL: srv.URL, Token: "secret", HTTP: srv.Client()}, root
}

// servers maps a test host API's URL to its Server (to set its leader fence).
var servers sync.Map

func serverOf(t *testing.T, c *Client) *Server {
	s, ok := servers.Load(c.URL)
	if !ok {
		t.Fatal("no test server for", c.URL)
	}
	return s.(*Server)
}

// TestHostAPIFiles: files inside the instances directory round-trip; a missing one is os.ErrNotExist on the
// caller's side, so the instance code's "not there yet" checks work across the wire.
func TestHostAPIFiles(t *testing.T) {
	c, root := hostAPI(t)
	dir := filepath.Join(root, "i1", "pgdata")
	if err := c.MkdirAll(dir); err != nil {
		t.Fatal(err)
	}
	f := filepath.Join(dir, "fogo.conf")
	if err := c.WriteFile(f, []byte("port = 5432\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if b, err := c.ReadFile(f); err != nil || string(b) != "port = 5432\n" {
		t.Fatalf("read back: %q %v", b, err)
	}
	if fi, err := os.Stat(f); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("mode: %v %v", fi, err)
	}
	if ok, err := c.Exists(f); !ok || err != nil {
		t.Fatalf("exists: %v %v", ok, err)
	}
	if _, err := c.ReadFile(filepath.Join(dir, "missing")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("a missing file: %v, want os.ErrNotExist", err)
	}
	if _, err := c.ReadDir(filepath.Join(dir, "pg_replslot")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("a missing directory: %v, want os.ErrNotExist", err)
	}
	if err := c.Remove(filepath.Join(dir, "missing")); err != nil {
		t.Fatalf("removing a missing file: %v", err)
	}
	if names, err := c.ReadDir(filepath.Join(root, "i1")); err != nil || len(names) != 1 || names[0] != "pgdata" {
		t.Fatalf("read dir: %v %v", names, err)
	}
	pm, err := c.Postmaster(dir)
	if err != nil || pm.Owner != instance.OwnerNone {
		t.Fatalf("postmaster of a directory without one: %+v %v", pm, err)
	}
	if err := c.RemoveAll(filepath.Join(root, "i1")); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(root, "i1")); !os.IsNotExist(err) {
		t.Fatalf("remove all left %v", err)
	}
}

// TestHostAPIRefusesHostileRequests: the host API acts inside its instances directory and runs only fogo's
// programs with checked options, whoever holds the token.
func TestHostAPIRefusesHostileRequests(t *testing.T) {
	c, root := hostAPI(t)
	outside := filepath.Join(filepath.Dir(root), "elsewhere")
	for _, p := range []string{
		"/etc/passwd", root, root + "/../x", "relative/path", root + "x/file", root + "/a/../../b", "",
	} {
		if _, err := c.ReadFile(p); err == nil || !strings.Contains(err.Error(), "refused") {
			t.Errorf("read %q: %v, want a refusal", p, err)
		}
		if err := c.WriteFile(p, []byte("x"), 0o600); err == nil || !strings.Contains(err.Error(), "refused") {
			t.Errorf("write %q was not refused", p)
		}
		if err := c.RemoveAll(p); err == nil || !strings.Contains(err.Error(), "refused") {
			t.Errorf("remove all %q was not refused", p)
		}
	}
	ctx := context.Background()
	runs := []struct {
		program string
		args    []string
		env     []string
	}{
		{"bash", []string{"-c", "id"}, nil},
		{"psql", nil, nil},
		{"../../bin/sh", nil, nil},
		{"pg_ctl", []string{"-D", outside, "start"}, nil},
		{"pg_ctl", []string{"-D" + outside, "start"}, nil},
		{"pg_ctl", []string{"--pgdata=" + outside, "start"}, nil},
		{"pg_ctl", []string{"-D", root + "/i1/pgdata", "-o", "-c archive_command=id", "start"}, nil},
		{"pg_ctl", []string{"-D", root + "/i1/pgdata", "-l", "/tmp/log", "start"}, nil},
		{"pg_ctl", []string{"-D"}, nil},
		{"initdb", []string{"-D", root + "/i1/pgdata", "--pwfile=/etc/shadow"}, nil},
		{"pg_basebackup", []string{"-D", root + "/i1/pgdata", "-T", "/old=/new"}, nil},
		{"pg_basebackup", []string{"-D", root + "/i1/pgdata", "--tablespace-mapping=/old=/new"}, nil},
		{"pg_rewind", []string{"--target-pgdata=/var/lib/postgresql"}, nil},
		{"pg_controldata", []string{"-D", root + "/i1/pgdata"}, []string{"LD_PRELOAD=/tmp/x.so"}},
	}
	for _, r := range runs {
		if _, err := c.Run(ctx, r.env, r.program, r.args...); err == nil || !strings.Contains(err.Error(), "refused") {
			t.Errorf("run %s %v %v: %v, want a refusal", r.program, r.args, r.env, err)
		}
	}
	if err := c.Signal(root+"/i1/pgdata", syscall.SIGKILL); err == nil || !strings.Contains(err.Error(), "refused") {
		t.Errorf("SIGKILL through Signal: %v, want a refusal", err)
	}
	for _, sig := range []syscall.Signal{syscall.SIGKILL, syscall.SIGHUP, syscall.SIGSTOP} {
		if err := c.Shutdown(context.Background(), root+"/i1/pgdata", sig, time.Second); err == nil || !strings.Contains(err.Error(), "refused") {
			t.Errorf("signal %d through Shutdown: %v, want a refusal", sig, err)
		}
	}
	if err := c.Shutdown(context.Background(), outside, syscall.SIGINT, time.Second); err == nil || !strings.Contains(err.Error(), "refused") {
		t.Errorf("Shutdown of %s: %v, want a refusal", outside, err)
	}
}

// TestHostAPINeedsTheToken: without the agent token nothing is done.
func TestHostAPINeedsTheToken(t *testing.T) {
	c, root := hostAPI(t)
	for _, tok := range []string{"", "wrong", "secretx"} {
		bad := *c
		bad.Token = tok
		err := bad.MkdirAll(filepath.Join(root, "i2"))
		if err == nil || !strings.Contains(err.Error(), "token") {
			t.Errorf("token %q: %v, want 401", tok, err)
		}
	}
	if _, err := os.Stat(filepath.Join(root, "i2")); !os.IsNotExist(err) {
		t.Fatalf("a request without the token acted: %v", err)
	}
	res, err := c.HTTP.Get(c.URL + apiPrefix + opPing)
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	if res.StatusCode != http.StatusNotFound {
		t.Errorf("GET: %d, want 404", res.StatusCode)
	}
}

func discard() *slog.Logger { return slog.New(slog.DiscardHandler) }
