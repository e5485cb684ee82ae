package cluster

import (
	"context"
	"fmt"
	"time"

	"github.com/fogo-db/fogo/internal/controlplane/model"
	"github.com/fogo-db/fogo/internal/postgres/instance"
)

// How StopFenced stopped an instance.
const (
	StoppedAlready   = ""          // it was not running
	StoppedFast      = "fast"      // fast shutdown
	StoppedImmediate = "immediate" // immediate shutdown
	StoppedKilled    = "killed"    // SIGKILL of the postmaster and its processes
)

// Bounds of the fence's stop escalation. A postmaster that does not act on SIGINT or SIGQUIT within them is
// frozen (SIGSTOP, a hung host) or wedged; its backends may still serve their sessions, so it is killed.
var (
	fenceFastTimeout      = time.Second
	fenceImmediateTimeout = 2 * time.Second
	fenceKillTimeout      = 5 * time.Second
)

// StopFenced stops a former primary that must not serve anything: fast shutdown, then immediate, then SIGKILL of
// the postmaster and of every process it started (a frozen postmaster never passes its shutdown on, while its
// backends keep committing for their clients). Each stage is bounded, so the whole call takes seconds, never
// minutes. It returns how the instance stopped; an error means it still runs.
func (m *Manager) StopFenced(ctx context.Context, rec *model.Instance) (string, error) {
	h := m.Handle(rec)
	if _, running := h.Running(); !running {
		return StoppedAlready, nil
	}
	for _, s := range []struct {
		mode    instance.ShutdownMode
		timeout time.Duration
	}{{instance.ShutdownFast, fenceFastTimeout}, {instance.ShutdownImmediate, fenceImmediateTimeout}} {
		sctx, cancel := context.WithTimeout(ctx, s.timeout)
		err := h.Stop(sctx, s.mode)
		cancel()
		if _, running := h.Running(); err == nil || !running {
			return string(s.mode), nil
		}
		if ctx.Err() != nil {
			return "", fmt.Errorf("stop %s: %w", rec.ID, ctx.Err())
		}
	}
	if err := h.Kill(ctx, fenceKillTimeout); err != nil {
		return "", fmt.Errorf("stop %s: fast and immediate shutdowns did not finish and %w", rec.ID, err)
	}
	m.log.Warn("fenced instance did not shut down; its postmaster and backends were killed", "instance", rec.ID,
		"database", rec.Database)
	return StoppedKilled, nil
}
