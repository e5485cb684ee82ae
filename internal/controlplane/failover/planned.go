package failover

import (
	"context"
	"encoding/json"
	"fmt"
	"sync"
	"time"

	"github.com/fogo-db/fogo/internal/controlplane/model"
	"github.com/fogo-db/fogo/internal/errcatalog"
	"github.com/fogo-db/fogo/internal/postgres/instance"
)

func jsonParams(op *model.Operation, v any) error { return json.Unmarshal(op.Params, v) }

// planned runs the planned failover steps; catchUp bounds each wait for a geo-secondary.
//
// Writes stop only for the demote and promote steps: the catch-up step waits, with the primary still
// writable, until each geo-secondary has replayed what its primary had flushed when the step began (and asks
// the primary for a checkpoint so its shutdown checkpoint is short). The demote step then shuts the old
// primary down fast, which ends its sessions and makes its walsender ship everything up to the shutdown
// checkpoint; the failover proceeds only once the geo-secondary has replayed that checkpoint, so no
// acknowledged commit can be lost. If it does not arrive in time (or the old primary did not shut down
// cleanly) the old primary is started again as the primary and the failover fails with
// PlannedFailoverTimedOutForDatabase, roles unchanged.
//
// Once demoted, the failover only goes forward: the new roles are recorded before anything is promoted.
func (x *execution) planned(ctx context.Context, catchUp time.Duration) error {
	olds, news, err := x.instances()
	if err != nil {
		return err
	}
	resumed := x.plan.Demoting || x.plan.Recorded
	if !resumed {
		if err := x.checkPreconditions(ctx, olds, news); err != nil {
			x.primaryDown = isPrimaryDown(err) // nothing was changed: tryPlanned goes on with a forced failover
			return err
		}
		if err := x.run.Step("catch-up"); err != nil {
			return err
		}
		if err := eachPair(olds, news, func(o, n *model.Instance) error { return x.catchUp(ctx, o, n, catchUp) }); err != nil {
			x.rolledBack = true // nothing was changed yet
			return err
		}
	}
	// The sessions to the new primaries are opened before the hold: across regions a new TLS session takes
	// several round trips, which the clients would otherwise wait for.
	sessions, err := x.openSessions(ctx, news)
	if err != nil && !x.plan.Recorded {
		return err
	}
	defer closeSessions(sessions)
	// New read-write sessions wait from here on only: during the catch-up the primary still takes them. The hold
	// is written with the decision to demote: the listeners of every other host hold as they read it, and no
	// write of its own is left in the window where the clients wait.
	x.run.Begin("hold")
	if !resumed {
		x.plan.Demoting = true
		if err := x.save(); err != nil {
			return err
		}
	}
	x.o.hooks.Hold(x.plan.Group)
	defer x.release()
	if resumed {
		if err := x.run.Step("demote"); err != nil { // tells the other hosts to hold again
			return err
		}
	} else {
		x.run.Begin("demote") // nothing to write: the plan's Demoting, written with the hold, says it all
	}
	if !x.plan.Recorded && !x.plan.Promoting {
		if err := eachPair(olds, news, func(o, n *model.Instance) error { return x.demote(ctx, o, sessions[n.ID], catchUp) }); err != nil {
			return x.undoDemote(ctx, olds, err)
		}
	}
	// The point of no return: every acknowledged commit is on the geo-secondaries. The new roles are recorded
	// (a compare-and-swap on the epoch) before anything is promoted, so whatever happens from here on (a
	// promotion that fails, fogo killed, the operation given up after too many restarts) the store names one
	// primary per database, the old primaries are fenced (NeedsRejoin: never started as primaries again), and
	// the reconciler finishes what this operation could not. Promoting first and recording after left a window
	// where a failed operation kept the old roles next to a promoted secondary: two writable primaries.
	if err := x.recordRoles("Planned"); err != nil {
		return err
	}
	if err := x.promoteAll(ctx, news, sessions); err != nil {
		_ = x.releaseRejoin(ctx, false) // the databases that were promoted get their old primary back as a standby
		return promotionUnfinished(err)
	}
	return x.releaseRejoin(ctx, false)
}

// recordRoles is the record step: it records the new roles and epoch (idempotent) and notes it in the plan.
func (x *execution) recordRoles(kind string) error {
	x.run.Begin("record") // written with the roles
	if err := x.record(kind); err != nil {
		return fmt.Errorf("record new roles: %w", err)
	}
	return nil
}

// recordReleaseRejoin ends the forced failover (which promotes before it records: its old primaries are fenced
// first): record the new roles and epoch, let the listeners route to the new primaries, rejoin the old ones.
func (x *execution) recordReleaseRejoin(ctx context.Context, kind string, mustRejoin bool) error {
	if err := x.recordRoles(kind); err != nil {
		return err
	}
	return x.releaseRejoin(ctx, mustRejoin)
}

// releaseRejoin lets the listeners route to the new primaries and rejoins the old primaries as standbys. Once the
// roles are recorded the failover has happened, so a rejoin that fails does not fail it (with mustRejoin false):
// the reconciler retries the rejoin with backoff, and the group's replicationState reads SUSPENDED until the old
// primary streams again.
func (x *execution) releaseRejoin(ctx context.Context, mustRejoin bool) error {
	// The release is written with the rejoin step: the other hosts release when they read it. This process's own
	// release (which also cuts the sessions left on an old primary, reading the store) runs meanwhile, so that
	// the write does not wait for it.
	x.run.Begin("release")
	released := make(chan struct{})
	go func() {
		defer close(released)
		x.release()
	}()
	err := x.run.Step("rejoin")
	<-released
	if err != nil {
		return err
	}
	return x.rejoinAll(ctx, mustRejoin)
}

// checkPreconditions refuses a planned failover that cannot be lossless: every old primary must run as a
// primary and every geo-secondary must be a running standby.
func (x *execution) checkPreconditions(ctx context.Context, olds, news []*model.Instance) error {
	return eachPair(olds, news, func(o, n *model.Instance) error {
		ho, hn := x.o.cl.Handle(o), x.o.cl.Handle(n)
		if _, running := ho.Running(); !running {
			return errcatalog.Newf("DatabaseUnavailable", "The primary of database '%s' is not running, so a "+
				"planned failover cannot guarantee no data loss. Use forceFailoverAllowDataLoss.", o.Database)
		}
		if _, running := hn.Running(); !running || !hn.IsStandby() {
			return errcatalog.Newf("IncorrectReplicationLinkState", "The geo-secondary of database '%s' is not "+
				"a running replica; a planned failover needs it streaming.", n.Database)
		}
		return nil
	})
}

// catchUp checkpoints the old primary and waits, bounded, until the secondary has replayed everything the
// primary had flushed when the wait began. The primary stays writable meanwhile.
func (x *execution) catchUp(ctx context.Context, old, nw *model.Instance, bound time.Duration) error {
	so, err := x.o.cl.Handle(old).OpenSession(ctx)
	if err != nil {
		return fmt.Errorf("catch up %s: %w", old.Database, err)
	}
	defer so.Close()
	sn, err := x.o.cl.Handle(nw).OpenSession(ctx)
	if err != nil {
		return fmt.Errorf("catch up %s: %w", old.Database, err)
	}
	defer sn.Close()
	deadline := time.Now().Add(bound)
	if err := so.Checkpoint(ctx); err != nil {
		return fmt.Errorf("catch up %s: checkpoint: %w", old.Database, err)
	}
	target, err := so.CurrentWALLSN(ctx)
	if err != nil {
		return fmt.Errorf("catch up %s: read primary lsn: %w", old.Database, err)
	}
	return pollUntil(ctx, deadline, 2*time.Millisecond, timedOut(old.Database), func() bool {
		replayed, err := sn.ReplayLSN(ctx)
		return err == nil && replayed >= target
	})
}

// pollUntil calls done every interval until it reports true (nil), the deadline passes (onTimeout) or ctx ends.
func pollUntil(ctx context.Context, deadline time.Time, interval time.Duration, onTimeout error, done func() bool) error {
	for {
		if done() {
			return nil
		}
		if time.Now().After(deadline) {
			return onTimeout
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(interval):
		}
	}
}

// openSessions connects to each new primary once for the polls of demote and promote.
func (x *execution) openSessions(ctx context.Context, news []*model.Instance) (map[string]*instance.Session, error) {
	out := map[string]*instance.Session{}
	for _, n := range news {
		h := x.o.cl.Handle(n)
		if _, running := h.Running(); !running {
			if err := h.Start(ctx); err != nil {
				closeSessions(out)
				return nil, fmt.Errorf("start the geo-secondary of %s: %w", n.Database, err)
			}
		}
		s, err := h.OpenSession(ctx)
		if err != nil {
			closeSessions(out)
			return nil, fmt.Errorf("connect to the geo-secondary of %s: %w", n.Database, err)
		}
		out[n.ID] = s
	}
	return out, nil
}

func closeSessions(m map[string]*instance.Session) {
	for _, s := range m {
		s.Close()
	}
}

// demote shuts the old primary down fast and waits, bounded, until the secondary has replayed its shutdown
// checkpoint: then every commit the old primary acknowledged is on the secondary.
//
// "Not running" is not "demoted" (Stop returns nil for an instance that is not running): an old primary that
// crashed after the catch-up, or that an undo stopped with an immediate shutdown before fogo died, ended
// without a shutdown checkpoint. Its last checkpoint is then an online one that the secondary passed long ago,
// while commits after it may never have been shipped, and pg_rewind would destroy them at the rejoin. So the
// cluster state must read "shut down": then the WAL ends with that checkpoint record.
func (x *execution) demote(ctx context.Context, old *model.Instance, sn *instance.Session, bound time.Duration) error {
	ho := x.o.cl.Handle(old)
	start := time.Now()
	sctx, cancel := context.WithTimeout(ctx, bound)
	err := ho.Stop(sctx, instance.ShutdownFast)
	cancel()
	if err != nil {
		return fmt.Errorf("demote %s: fast shutdown did not finish within %s: %w", old.Database, bound, err)
	}
	stopped := time.Now()
	cd, err := ho.ControlData(ctx)
	if err != nil {
		return fmt.Errorf("demote %s: read control data: %w", old.Database, err)
	}
	if cd.State != clusterShutDown {
		return notShutDownCleanly(old.Database, cd.State)
	}
	read := time.Now()
	// The replay position is the end of the last record replayed, so a replay position past the start of the
	// shutdown checkpoint means the whole record was received and replayed (a receive position can end inside
	// a record).
	// The secondary watches its own replay (one round trip); if the session fails, it is watched from here.
	reached, err := sn.WaitReplayPast(ctx, cd.CheckpointLSN, bound)
	switch {
	case err == nil && !reached:
		err = timedOut(old.Database)
	case err != nil:
		err = pollUntil(ctx, time.Now().Add(bound), time.Millisecond, timedOut(old.Database), func() bool {
			got, err := sn.ReplayLSN(ctx)
			return err == nil && got > cd.CheckpointLSN
		})
	}
	x.o.log.Debug("demoted", "database", old.Database, "stop", stopped.Sub(start).Round(time.Millisecond),
		"controldata", read.Sub(stopped).Round(time.Millisecond), "replayed", time.Since(read).Round(time.Millisecond))
	return err
}

// clusterShutDown is pg_controldata's "Database cluster state" of a primary stopped by a clean (smart or fast)
// shutdown; a crash or an immediate shutdown leaves "in production".
const clusterShutDown = "shut down"

// undoDemote starts the old primaries again as primaries after a demote that could not be confirmed; the
// roles stay as they were.
func (x *execution) undoDemote(ctx context.Context, olds []*model.Instance, cause error) error {
	for _, o := range olds {
		h := x.o.cl.Handle(o)
		// A shutdown that did not finish in time is completed first (immediate), then the primary restarts.
		if err := h.TryShuttingDownFastImmediate(ctx, time.Second); err != nil {
			return fmt.Errorf("%w (and stopping the primary of %s failed: %v)", cause, o.Database, err)
		}
		if err := h.Start(ctx); err != nil {
			return fmt.Errorf("%w (and restarting the primary of %s failed: %v)", cause, o.Database, err)
		}
	}
	x.plan.Demoting = false
	if err := x.save(); err != nil {
		return fmt.Errorf("%w (and recording the rollback failed: %v)", cause, err)
	}
	x.rolledBack = true
	return cause
}

// promoteAll records the intent and promotes every new primary (idempotent). sessions, when given, are
// open connections to the new primaries used to watch the promotion closely.
func (x *execution) promoteAll(ctx context.Context, news []*model.Instance, sessions map[string]*instance.Session) error {
	if err := x.startPromote(); err != nil {
		return err
	}
	return eachInstance(news, func(n *model.Instance) error {
		h := x.o.cl.Handle(n)
		if s := sessions[n.ID]; s != nil { // it knows a copy promoted already (one round trip less)
			start := time.Now()
			if err := s.Promote(ctx); err == nil {
				x.o.log.Debug("promoted", "database", n.Database, "took", time.Since(start).Round(time.Millisecond))
				return nil
			}
		}
		if _, running := h.Running(); !running {
			if err := h.Start(ctx); err != nil {
				return fmt.Errorf("promote %s: start secondary: %w", n.Database, err)
			}
		}
		if err := h.Promote(ctx); err != nil {
			return fmt.Errorf("promote %s: %w", n.Database, err)
		}
		return nil
	})
}

// rejoinAll restarts every old primary as a standby of its new primary. With mustSucceed false (every failover
// since the roles are recorded first), a failure is left to the reconciler, which retries until the old primary
// is back.
func (x *execution) rejoinAll(ctx context.Context, mustSucceed bool) error {
	olds, news, err := x.instances()
	if err != nil {
		return err
	}
	err = eachPair(olds, news, func(o, n *model.Instance) error {
		if !o.NeedsRejoin {
			return nil
		}
		if !mustSucceed {
			// A host that does not answer (cut off, down) would hold the operation for its calls' timeouts; the
			// reconciler rejoins the old primary once its host is back.
			if err := x.o.cl.HostAnswers(ctx, o); err != nil {
				return fmt.Errorf("rejoin %s: its host does not answer: %w", o.ID, err)
			}
		}
		if err := x.o.cl.Rejoin(ctx, o, n); err != nil {
			return err
		}
		// The operation ends when replication runs again, so the group reads CATCH_UP, not a stale state.
		wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
		if err := x.o.cl.WaitStreaming(wctx, o); err != nil {
			x.o.log.Warn("rejoined old primary is not streaming yet", "database", o.Database, "err", err)
		}
		return nil
	})
	if err != nil && mustSucceed {
		return err
	}
	if err != nil {
		x.o.log.Warn("old primary could not rejoin yet; the reconciler retries", "group", x.plan.Group, "err", err)
	}
	return nil
}

// eachPair runs fn for all pairs in parallel and returns the first error.
func eachPair(olds, news []*model.Instance, fn func(o, n *model.Instance) error) error {
	errs := make([]error, len(olds))
	var wg sync.WaitGroup
	for i := range olds {
		wg.Add(1)
		go func(i int) { defer wg.Done(); errs[i] = fn(olds[i], news[i]) }(i)
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			return err
		}
	}
	return nil
}

func eachInstance(recs []*model.Instance, fn func(*model.Instance) error) error {
	return eachPair(recs, recs, func(o, _ *model.Instance) error { return fn(o) })
}
