package failover

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/fogo-db/fogo/internal/controlplane/cluster"
	"github.com/fogo-db/fogo/internal/controlplane/lostreport"
	"github.com/fogo-db/fogo/internal/controlplane/model"
	"github.com/fogo-db/fogo/internal/controlplane/store"
	"github.com/fogo-db/fogo/internal/errcatalog"
	"github.com/fogo-db/fogo/internal/postgres/instance"
)

// Bounds of the forced failover's waits on a geo-secondary.
const (
	// secondaryStartTimeout bounds starting a geo-secondary that does not run (crash recovery included).
	secondaryStartTimeout = 60 * time.Second
	// probeTimeout bounds one question to a running instance.
	probeTimeout = 5 * time.Second
)

// forced promotes the geo-secondaries at once; the old primaries are fenced and rejoin later.
//
//  1. Hold     the read-write listener holds new sessions.
//  2. Check    every geo-secondary can enter the primary role: a seeded copy, running (started here if need
//     be) and in recovery. One that cannot is refused before anything is fenced.
//  3. Fence    the old primaries are marked NeedsRejoin (never routed to, never started as primaries), then
//     stopped: fast, immediate, then killed. One that still runs is reported in the operation's warnings; it
//     stays fenced and the reconciler keeps stopping it.
//  4. Promote  the geo-secondaries leave recovery. If one fails before any has left it, the failover is
//     undone: the old primaries are un-fenced and started again, the roles are unchanged.
//  5. Record, Release, Rejoin (best effort; the reconciler retries).
func (x *execution) forced(ctx context.Context) error {
	olds, news, err := x.instances()
	if err != nil {
		return err
	}
	x.run.Begin("hold") // written with the check or fence step, next
	x.o.hooks.Hold(x.plan.Group)
	defer x.release()

	if !x.plan.Promoting {
		if err := x.run.Step("check"); err != nil {
			return err
		}
		if err := eachInstance(news, func(n *model.Instance) error { return x.readyToPromote(ctx, n) }); err != nil {
			return x.undoForced(ctx, olds, news, err)
		}
	}
	if err := x.run.Step("fence"); err != nil {
		return err
	}
	if err := x.fenceForced(ctx, olds); err != nil {
		var ae *errcatalog.Error
		if errors.As(err, &ae) || x.plan.Promoting {
			return err
		}
		return x.undoForced(ctx, olds, news, fenceRefusal(err))
	}
	if err := x.promoteForced(ctx, news); err != nil {
		return x.undoForced(ctx, olds, news, err)
	}
	if err := x.recordReleaseRejoin(ctx, "Forced", false); err != nil {
		return err
	}
	return x.noteLost()
}

// noteLost adds to the operation's warnings what its lost-transaction reports say (the rejoin produced them, or
// they wait for an old primary that is not back), each once: a resumed operation does not repeat them.
func (x *execution) noteLost() error {
	reports, err := lostreport.OfOperation(x.o.st, x.run.Op.ID)
	if err != nil {
		return err
	}
	for _, r := range reports {
		note := r.Note()
		if note == "" || slices.Contains(x.run.Op.Warnings, note) {
			continue
		}
		if err := x.run.Warn(note); err != nil {
			return err
		}
	}
	return nil
}

// CannotBecomePrimary is the catalogue's refusal of a failover toward a geo-secondary that cannot enter the
// primary role.
func CannotBecomePrimary(db string, cause error) error {
	return errcatalog.Newf("GeoReplicationCannotBecomePrimaryDuringUndo", "The geo-secondary of database '%s' "+
		"cannot enter the primary role: %v.", db, cause)
}

// errNotPromotable is the cause wrapped by CannotBecomePrimary for a copy that is not a replica at all.
var errNotPromotable = errors.New("not a seeded standby copy")

// CheckCopy judges, from the record and the data directory alone (the instance may be stopped), whether rec is
// a copy that can become primary: seeded, with a data directory, configured as a standby.
func CheckCopy(rec *model.Instance, h *instance.Instance) error {
	if !rec.Seeded {
		return fmt.Errorf("%w: it was never seeded", errNotPromotable)
	}
	if ok, err := h.HasData(); err != nil {
		return fmt.Errorf("its data directory cannot be checked: %w", err)
	} else if !ok {
		return fmt.Errorf("%w: its data directory is missing", errNotPromotable)
	}
	if !h.IsStandby() {
		return fmt.Errorf("%w: its data directory is not configured as a standby", errNotPromotable)
	}
	return nil
}

// CheckRunningCopy is CheckCopy plus the live facts: the copy runs and answers as a standby.
func CheckRunningCopy(ctx context.Context, rec *model.Instance, h *instance.Instance) error {
	if err := CheckCopy(rec, h); err != nil {
		return err
	}
	if _, running := h.Running(); !running {
		return errors.New("it does not run")
	}
	pctx, cancel := context.WithTimeout(ctx, probeTimeout)
	defer cancel()
	inRecovery, err := h.IsInRecovery(pctx)
	if err != nil {
		return fmt.Errorf("it does not answer: %w", err)
	}
	if !inRecovery {
		return errors.New("it is not in recovery")
	}
	return nil
}

// readyToPromote is the Check step for one geo-secondary: a stopped copy is started (bounded) before it is judged.
func (x *execution) readyToPromote(ctx context.Context, n *model.Instance) error {
	h := x.o.cl.Handle(n)
	if err := CheckCopy(n, h); err != nil {
		return CannotBecomePrimary(n.Database, err)
	}
	if _, running := h.Running(); !running {
		sctx, cancel := context.WithTimeout(ctx, secondaryStartTimeout)
		err := h.Start(sctx)
		cancel()
		if err != nil {
			return CannotBecomePrimary(n.Database, fmt.Errorf("it does not start: %w", err))
		}
	}
	if err := CheckRunningCopy(ctx, n, h); err != nil {
		return CannotBecomePrimary(n.Database, err)
	}
	return nil
}

// fenceForced marks every old primary NeedsRejoin first (so nothing routes to it or restarts it as a primary),
// then stops it. A stop that needed SIGKILL, or that failed, is recorded in the operation's warnings; a failure
// does not stop the failover (the old primary is unroutable, and the reconciler keeps stopping it).
func (x *execution) fenceForced(ctx context.Context, olds []*model.Instance) error {
	if !x.plan.Fenced {
		for _, o := range olds {
			if err := x.fenceRecord(o); err != nil {
				return fmt.Errorf("fence %s: %w", o.Database, err)
			}
		}
		x.plan.Fenced = true
		if err := x.save(); err != nil {
			return err
		}
	}
	var mu sync.Mutex
	var warnings []string
	warn := func(w string) { mu.Lock(); warnings = append(warnings, w); mu.Unlock() }
	err := eachInstance(olds, func(o *model.Instance) error {
		cur, err := x.o.cl.GetInstance(o.ID)
		if err != nil || !cur.NeedsRejoin {
			return nil // rejoined already (a resumed operation): it is a standby now
		}
		how, err := x.o.cl.StopFenced(ctx, cur)
		switch {
		case err != nil && cur.Host != "":
			// On an agent's host the instance listens on the network: clients may reach it directly, so
			// being unroutable is no fence. Nothing is promoted while it may take writes.
			return fmt.Errorf("the old primary of database '%s' cannot be fenced: %w", o.Database, err)
		case how == cluster.StoppedLeaseExpired:
			warn(fmt.Sprintf("the old primary of database '%s' did not answer; its host's agent let its lease "+
				"expire, which it does only after stopping its primaries", o.Database))
		case err != nil:
			warn(fmt.Sprintf("the old primary of database '%s' could not be stopped (%v); it stays fenced and "+
				"unroutable, and fogo keeps trying to stop it", o.Database, err))
		case how == cluster.StoppedKilled:
			warn(fmt.Sprintf("the old primary of database '%s' did not shut down; its postmaster and backends "+
				"were killed", o.Database))
		}
		return nil
	})
	for _, w := range warnings {
		x.o.log.Warn("forced failover: "+w, "group", x.plan.Group)
		if err := x.run.Warn(w); err != nil {
			return err
		}
	}
	return err
}

// fenceRecord marks one old primary NeedsRejoin and opens its lost-transaction report, in one write: from here
// on it is never routed to nor started as a primary, and it is read for the report before it is rewound.
func (x *execution) fenceRecord(o *model.Instance) error {
	o.NeedsRejoin, o.LostReport = true, x.run.Op.ID
	r := lostreport.Report{Operation: x.run.Op.ID, Kind: x.run.Op.Kind, Group: x.plan.Group, Database: o.Database,
		Failover: x.run.Op.Created, OldPrimary: o.ID}
	for _, pr := range x.plan.Pairs {
		if pr.OldPrimary == o.ID {
			r.NewPrimary = pr.NewPrimary
		}
	}
	return x.o.st.Update(func(tx *store.Tx) error {
		if err := tx.Put(store.Instances, o.ID, o); err != nil {
			return err
		}
		return lostreport.Open(tx, r)
	})
}

// unfenceRecord lifts what fenceRecord wrote, when the failover is undone: the old primary lost nothing.
func (x *execution) unfenceRecord(id string) error {
	return x.o.st.Update(func(tx *store.Tx) error {
		var cur model.Instance
		if err := tx.MustGet(store.Instances, id, &cur); err != nil {
			return err
		}
		if cur.LostReport != "" {
			if err := lostreport.Discard(tx, cur.LostReport, cur.Database); err != nil {
				return err
			}
		}
		cur.NeedsRejoin, cur.LostReport = false, ""
		return tx.Put(store.Instances, id, &cur)
	})
}

// promoteForced records the intent and promotes every geo-secondary (idempotent), starting it if it does not run.
func (x *execution) promoteForced(ctx context.Context, news []*model.Instance) error {
	if err := x.startPromote(); err != nil {
		return err
	}
	return eachInstance(news, func(n *model.Instance) error {
		h := x.o.cl.Handle(n)
		if _, running := h.Running(); !running {
			sctx, cancel := context.WithTimeout(ctx, secondaryStartTimeout)
			err := h.Start(sctx)
			cancel()
			if err != nil {
				return CannotBecomePrimary(n.Database, fmt.Errorf("it does not start: %w", err))
			}
		}
		if err := h.Promote(ctx); err != nil {
			return CannotBecomePrimary(n.Database, fmt.Errorf("promotion failed: %w", err))
		}
		return nil
	})
}

// undoForced puts the group back as it was after a forced failover failed before any geo-secondary left
// recovery: the old primaries are un-fenced and started again, so the group keeps its only healthy copy. A
// geo-secondary the promote step was sent to is stopped first, and the undo is done only when every one of them
// still carries standby.signal (PostgreSQL removes it when a promotion takes effect): then none can come back as
// a primary. Otherwise the failure is returned as is and the old primaries stay fenced.
func (x *execution) undoForced(ctx context.Context, olds, news []*model.Instance, cause error) error {
	if x.plan.Recorded {
		return cause // the store names the new primaries: the old ones stay fenced
	}
	if err := x.run.Step("undo"); err != nil {
		return errors.Join(cause, err)
	}
	if x.plan.Promoting {
		// Judge before stopping anything (a copy that did promote must keep running), then again once stopped.
		for _, n := range news {
			if !x.o.cl.Handle(n).IsStandby() {
				return fmt.Errorf("%w (and the failover cannot be undone: the geo-secondary of %s left recovery)", cause, n.Database)
			}
		}
		for _, n := range news {
			if _, err := x.o.cl.StopFenced(ctx, n); err != nil {
				return fmt.Errorf("%w (and the failover cannot be undone: stop the geo-secondary of %s: %v)", cause, n.Database, err)
			}
			if !x.o.cl.Handle(n).IsStandby() {
				return fmt.Errorf("%w (and the failover cannot be undone: the geo-secondary of %s may have left recovery)", cause, n.Database)
			}
			// A promotion asked for but not taken up must not happen at the next start.
			if err := x.o.cl.Handle(n).CancelPromote(); err != nil {
				return fmt.Errorf("%w (and the failover cannot be undone: %v)", cause, err)
			}
		}
	}
	if x.plan.Fenced {
		for _, o := range olds {
			if err := x.unfenceRecord(o.ID); err != nil {
				return fmt.Errorf("%w (and un-fencing the primary of %s failed: %v)", cause, o.Database, err)
			}
		}
	}
	x.plan.Fenced, x.plan.Promoting = false, false
	if err := x.save(); err != nil {
		return fmt.Errorf("%w (and recording the undo failed: %v)", cause, err)
	}
	// Serve again now if the primary can run; if it cannot (its host is down), the reconciler starts it later.
	for _, o := range olds {
		cur, err := x.o.cl.GetInstance(o.ID)
		if err != nil {
			continue
		}
		sctx, cancel := context.WithTimeout(ctx, secondaryStartTimeout)
		if err := x.o.cl.EnsureRunning(sctx, cur); err != nil {
			x.o.log.Warn("forced failover undone; the primary does not start yet (the reconciler retries)",
				"database", o.Database, "err", err)
		}
		cancel()
	}
	const undone = "The forced failover was undone: the roles are unchanged and the old primary is not fenced."
	if e, ok := errcatalog.As(cause); ok {
		return errcatalog.Newf(e.Code, "%s %s", e.Message, undone)
	}
	return fmt.Errorf("%w (%s)", cause, undone)
}

// isPrimaryDown reports a precondition refusal because a primary is not running (checkPreconditions' only
// DatabaseUnavailable): tryPlannedBeforeForcedFailover then goes on with the forced failover, the disaster case
// it exists for. Only the refusal counts: the same code after the roles were recorded (promotionUnfinished) must
// never fall back.
func isPrimaryDown(err error) bool {
	e, ok := errcatalog.As(err)
	return ok && e.Code == "DatabaseUnavailable"
}

// fenceRefusal is the catalogue's refusal of a forced failover whose old primary cannot be fenced.
func fenceRefusal(cause error) error {
	return errcatalog.Newf("DatabaseUnavailable", "The forced failover cannot go on: %v.", cause)
}
