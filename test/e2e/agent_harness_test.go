package e2e

import (
	"context"
	"io/fs"
	"path/filepath"
	"testing"
	"time"

	"github.com/fogo-db/fogo/internal/app"
	"github.com/fogo-db/fogo/internal/postgres/instance"
	"github.com/fogo-db/fogo/internal/postgres/pgbin"
	"github.com/fogo-db/fogo/internal/testutil/pgtest"
)

// startAgent runs an in-process fogo agent on loopback with the given etcd state. The test's end closes it and
// stops every instance under its instances directory (an agent leaves them running when it stops).
func startAgent(t *testing.T, name, region string, mod func(*app.AgentOptions)) *app.Agent {
	t.Helper()
	bin := pgtest.Bin(t)
	dir := pgtest.TempDir(t)
	low := portBase()
	o := app.AgentOptions{
		Name: name, Region: region, AdvertiseHost: "127.0.0.1", Listen: "127.0.0.1:0", DataDir: dir,
		PortLow: low, PortHigh: low + 99, AllowPlaintext: true, TTL: 4 * time.Second,
		Logger: testLogger().With("agent", name),
	}
	mod(&o)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	a, err := app.StartAgent(ctx, o)
	if err != nil {
		t.Fatalf("start agent %s: %v", name, err)
	}
	t.Cleanup(func() {
		a.Close()
		stopInstancesUnder(t, bin, a.InstancesDir())
	})
	return a
}

// stopInstancesUnder stops (immediate) every PostgreSQL data directory found under root.
func stopInstancesUnder(t *testing.T, bin *pgbin.Bin, root string) {
	_ = filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() || d.Name() != "postmaster.pid" {
			return nil
		}
		h := &instance.Instance{Dir: filepath.Dir(path), Bin: bin}
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := h.Stop(ctx, instance.ShutdownImmediate); err != nil {
			t.Logf("stop %s: %v", h.Dir, err)
		}
		return nil
	})
}

// propString is a string property of an ARM resource body.
func propString(body map[string]any, name string) string {
	props, _ := body["properties"].(map[string]any)
	s, _ := props[name].(string)
	return s
}

// countDataDirs counts the PostgreSQL data directories (PG_VERSION files) under root.
func countDataDirs(root string) int {
	n := 0
	_ = filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err == nil && !d.IsDir() && d.Name() == "PG_VERSION" && filepath.Base(filepath.Dir(path)) == "pgdata" {
			n++
		}
		return nil
	})
	return n
}
