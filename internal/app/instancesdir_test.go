package app

import (
	"bytes"
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/fogo-db/fogo/internal/testutil/pgtest"
)

// TestInstancesDirBelowAClosedDirectory: as root, a data directory below one the postgres OS user may not pass
// (as /root is) is not opened up; the instances live in the fallback directory instead, which postgres reaches,
// and the log says so. A reachable data directory keeps DATA-DIR/instances; --instances-dir is taken as given.
func TestInstancesDirBelowAClosedDirectory(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("only as root: PostgreSQL then runs as the postgres OS user")
	}
	bin := pgtest.Bin(t)
	reachable := func(dir string) bool {
		_, err := bin.Run(context.Background(), nil, "/usr/bin/test", "-x", dir)
		return err == nil
	}
	var logs bytes.Buffer
	log := slog.New(slog.NewTextHandler(&logs, nil))

	closed := filepath.Join(t.TempDir(), "home") // stands for /root
	if err := os.MkdirAll(filepath.Join(closed, "fogo-data"), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(closed, 0o700); err != nil {
		t.Fatal(err)
	}
	open := pgtest.TempDir(t)
	old := fallbackInstancesRoot
	fallbackInstancesRoot = filepath.Join(open, "var-lib-fogo")
	defer func() { fallbackInstancesRoot = old }()

	got, err := instancesDir(bin, filepath.Join(closed, "fogo-data"), "", log)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(got, fallbackInstancesRoot+"/instances-") || !reachable(got) {
		t.Errorf("instances dir %s (reachable %v), want a reachable one below %s", got, reachable(got), fallbackInstancesRoot)
	}
	if st, err := os.Stat(closed); err != nil || st.Mode().Perm() != 0o700 {
		t.Errorf("the closed directory was opened up: %v %v", st.Mode(), err)
	}
	if !strings.Contains(logs.String(), "instance data directories live elsewhere") {
		t.Errorf("the log does not say where the instances went: %s", logs.String())
	}
	again, err := instancesDir(bin, filepath.Join(closed, "fogo-data"), "", log)
	if err != nil || again != got {
		t.Errorf("a restart chose %s (%v), want the same %s", again, err, got)
	}

	data := filepath.Join(open, "fogo-data")
	if got, err := instancesDir(bin, data, "", log); err != nil || got != filepath.Join(data, "instances") || !reachable(got) {
		t.Errorf("reachable data directory: %s %v", got, err)
	}
	given := filepath.Join(open, "elsewhere")
	if got, err := instancesDir(bin, data, given, log); err != nil || got != given || !reachable(got) {
		t.Errorf("--instances-dir: %s %v", got, err)
	}
}
