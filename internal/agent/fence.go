package agent

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"path/filepath"
	"sync"
	"time"

	"github.com/fogo-db/fogo/internal/postgres/instance"
	"github.com/fogo-db/fogo/internal/postgres/pgbin"
)

// Bounds of the agent's fence: it runs while the agent's lease may be about to expire, so it stops a primary the
// quickest way (immediate shutdown: no checkpoint, no waiting for clients) and kills it if even that stalls.
var (
	fenceImmediateTimeout = time.Second
	fenceKillTimeout      = 2 * time.Second
)

// FencePrimaries stops every running instance under root that is not a standby: the agent can no longer renew
// its lease, so a controller may soon promote another copy of each, and none of them may take a write after that.
// Standbys keep running (they take no writes). It returns the data directories it stopped.
func FencePrimaries(ctx context.Context, root string, bin *pgbin.Bin, log *slog.Logger) ([]string, error) {
	var dirs []string
	_ = filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return nil
		}
		if d.IsDir() && d.Name() == "pgdata" {
			dirs = append(dirs, path)
			return filepath.SkipDir
		}
		return nil
	})
	var mu sync.Mutex
	var stopped []string
	var errs []error
	var wg sync.WaitGroup
	for _, dir := range dirs {
		h := &instance.Instance{Dir: dir, Bin: bin}
		if _, running := h.Running(); !running || h.IsStandby() {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			err := fenceOne(ctx, h)
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				errs = append(errs, fmt.Errorf("fence %s: %w", dir, err))
				return
			}
			stopped = append(stopped, dir)
			log.Warn("fenced a primary: the agent's lease could not be renewed", "dir", dir)
		}()
	}
	wg.Wait()
	return stopped, errors.Join(errs...)
}

func fenceOne(ctx context.Context, h *instance.Instance) error {
	sctx, cancel := context.WithTimeout(ctx, fenceImmediateTimeout)
	err := h.Stop(sctx, instance.ShutdownImmediate)
	cancel()
	if _, running := h.Running(); err == nil || !running {
		return nil
	}
	return h.Kill(ctx, fenceKillTimeout)
}
