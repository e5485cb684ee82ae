package cluster

import (
	"context"
	"fmt"
	"time"

	"github.com/fogo-db/fogo/internal/agent"
	"github.com/fogo-db/fogo/internal/controlplane/model"
	"github.com/fogo-db/fogo/internal/postgres/instance"
)

// How StopFenced stopped an instance.
const (
	StoppedAlready   = ""          // it was not running
	StoppedFast      = "fast"      // fast shutdown
	StoppedImmediate = "immediate" // immediate shutdown
	StoppedKilled    = "killed"    // SIGKILL of the postmaster and its processes
	// StoppedLeaseExpired: its host does not answer, and its agent's lease expired; an agent fences its
	// primaries before its lease can expire, so the instance takes no writes.
	StoppedLeaseExpired = "lease expired"
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
	if rec.Host != "" {
		if how, decided, err := m.fencedByLease(ctx, rec); decided {
			return how, err
		}
	}
	h := m.HandleWithin(ctx, rec)
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

// fencedByLease decides the fence of an instance on an agent's host that does not answer (the host is down or
// cut off): the instance may still take writes from clients that reach it, so it counts as stopped only once its
// agent's lease has expired — an agent stops its primaries before its lease can expire. It waits for that, up to
// the lease's TTL and a margin; decided is false when the host answers (stop it through the agent).
//
// A host that failed to answer within the last agentSilentRecently is not asked again: the monitor asked just
// before the failover started, and asking again would keep the failover waiting a whole agentPingTimeout past
// the lease's expiry (a lease expired means the same whether the host answers now or not: its agent stopped the
// primaries, see agent.Guard).
func (m *Manager) fencedByLease(ctx context.Context, rec *model.Instance) (how string, decided bool, err error) {
	perr := m.recentSilence(rec.Host)
	if perr == nil {
		perr = m.HostAnswers(ctx, rec)
	}
	if perr == nil || m.cfg.Agents == nil {
		return "", false, nil
	}
	a := m.cfg.Agents
	ttl, err := agent.LeaseTTL(ctx, a.Etcd, a.Prefix, rec.Host)
	if err != nil {
		return "", true, fmt.Errorf("stop %s: agent %s does not answer (%v), and its lease cannot be read: %w", rec.ID, rec.Host, perr, err)
	}
	deadline := time.Now().Add(ttl + agentLeaseSlack)
	for {
		live, err := m.LiveAgents(ctx)
		if err == nil && !live[rec.Host] {
			m.log.Warn("fenced by lease: the host does not answer and its agent's lease expired", "instance", rec.ID,
				"database", rec.Database, "agent", rec.Host)
			return StoppedLeaseExpired, true, nil
		}
		if time.Now().After(deadline) {
			return "", true, fmt.Errorf("stop %s: agent %s does not answer (%v) and still holds its lease: the instance may "+
				"still take writes, so nothing may replace it", rec.ID, rec.Host, perr)
		}
		select {
		case <-ctx.Done():
			return "", true, ctx.Err()
		case <-time.After(250 * time.Millisecond):
		}
	}
}

// agentPingTimeout bounds the question "does the agent answer?"; agentLeaseSlack is how long past its TTL an
// agent's lease is waited for (etcd expires leases on its own clock, checked every half second).
var (
	agentPingTimeout = 2 * time.Second
	agentLeaseSlack  = 3 * time.Second
)

// HostAnswers asks the agent of an instance's host whether it answers, within a short bound (nil for an instance
// on this machine). The reconciler asks first: every call to a host that is gone would otherwise wait its own
// timeout while holding the group's lock, which a failover needs.
func (m *Manager) HostAnswers(ctx context.Context, rec *model.Instance) error {
	if rec.Host == "" {
		return nil
	}
	cl, _ := m.hostClient(rec.Host)
	pctx, cancel := context.WithTimeout(ctx, agentPingTimeout)
	defer cancel()
	err := cl.Ping(pctx)
	m.mu.Lock()
	if m.silent == nil {
		m.silent = map[string]silence{}
	}
	if err != nil {
		m.silent[rec.Host] = silence{at: time.Now(), err: err}
	} else {
		delete(m.silent, rec.Host)
	}
	m.mu.Unlock()
	return err
}

// agentSilentRecently is how long a host's failure to answer stands for fencedByLease.
const agentSilentRecently = 3 * time.Second

// silence is a host's last failure to answer.
type silence struct {
	at  time.Time
	err error
}

// recentSilence returns the host's failure to answer if it came within agentSilentRecently.
func (m *Manager) recentSilence(host string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if s, ok := m.silent[host]; ok && time.Since(s.at) < agentSilentRecently {
		return s.err
	}
	return nil
}
