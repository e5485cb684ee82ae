package failover

import (
	"context"
	"encoding/json"
	"fmt"
	"sync"
	"time"

	"github.com/fogo-db/fogo/internal/api/errcatalog"
	"github.com/fogo-db/fogo/internal/controlplane/model"
	"github.com/fogo-db/fogo/internal/postgres/instance"
	"github.com/fogo-db/fogo/internal/postgres/lsn"
)

func jsonParams(op *model.Operation, v any) error { return json.Unmarshal(op.Params, v) }

// fenceSettings are the extra settings that make a primary refuse new read-write transactions.
var fenceSettings = map[string]string{"default_transaction_read_only": "on"}

// planned runs the planned failover steps; catchUp bounds step 3.
func (x *execution) planned(ctx context.Context, catchUp time.Duration) error {
	olds, news, err := x.instances()
	if err != nil {
		return err
	}
	if err := x.run.Step("hold"); err != nil {
		return err
	}
	x.o.hooks.Hold(x.plan.Group)
	defer x.o.hooks.Release(x.plan.Group)

	if !x.plan.Demoting {
		if err := x.checkPreconditions(ctx, olds, news); err != nil {
			return err
		}
		if err := x.run.Step("fence"); err != nil {
			return err
		}
		if err := eachPair(olds, news, func(o, _ *model.Instance) error { return x.fence(ctx, o) }); err != nil {
			return x.rollback(ctx, olds, err)
		}
		if err := x.run.Step("catch-up"); err != nil {
			return err
		}
		if err := eachPair(olds, news, func(o, n *model.Instance) error { return x.catchUp(ctx, o, n, catchUp) }); err != nil {
			return x.rollback(ctx, olds, err)
		}
		x.plan.Demoting = true
		if err := x.save(); err != nil {
			return err
		}
	}
	if err := x.run.Step("demote"); err != nil {
		return err
	}
	if err := eachPair(olds, news, func(o, n *model.Instance) error { return x.demote(ctx, o, n) }); err != nil {
		return err
	}
	if err := x.promoteAll(ctx, news); err != nil {
		return err
	}
	if err := x.run.Step("record"); err != nil {
		return err
	}
	if err := x.record("Planned"); err != nil {
		return fmt.Errorf("record new roles: %w", err)
	}
	if err := x.run.Step("release"); err != nil {
		return err
	}
	x.o.hooks.Release(x.plan.Group)
	if err := x.run.Step("rejoin"); err != nil {
		return err
	}
	return x.rejoinAll(ctx, true)
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

// fence makes the old primary read-only for new transactions and ends its client sessions.
func (x *execution) fence(ctx context.Context, old *model.Instance) error {
	h := x.o.cl.Handle(old)
	if err := x.o.cl.Reconfigure(ctx, old, fenceSettings); err != nil {
		return fmt.Errorf("fence %s: %w", old.Database, err)
	}
	if err := h.TerminateClientBackends(ctx); err != nil {
		return fmt.Errorf("fence %s: end client sessions: %w", old.Database, err)
	}
	return nil
}

// catchUp waits until the secondary replayed everything the fenced primary flushed.
func (x *execution) catchUp(ctx context.Context, old, nw *model.Instance, bound time.Duration) error {
	ho, hn := x.o.cl.Handle(old), x.o.cl.Handle(nw)
	target, err := ho.CurrentWALLSN(ctx)
	if err != nil {
		return fmt.Errorf("catch up %s: read primary lsn: %w", old.Database, err)
	}
	deadline := time.Now().Add(bound)
	for {
		replayed, err := hn.ReplayLSN(ctx)
		if err == nil && replayed >= target {
			return nil
		}
		if time.Now().After(deadline) {
			return timedOut(old.Database)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(5 * time.Millisecond):
		}
	}
}

// rollback undoes the fence after a failed planned attempt; the roles stay as they were.
func (x *execution) rollback(ctx context.Context, olds []*model.Instance, cause error) error {
	for _, o := range olds {
		if err := x.o.cl.Reconfigure(ctx, o, nil); err != nil {
			return fmt.Errorf("%w (and rolling back the fence of %s failed: %v)", cause, o.Database, err)
		}
	}
	x.rolledBack = true
	return cause
}

// demote shuts the old primary down cleanly and waits (briefly) for its shutdown checkpoint to reach the
// secondary. If it does not arrive, the rejoin step rewinds instead; nothing acknowledged is lost either way.
func (x *execution) demote(ctx context.Context, old, nw *model.Instance) error {
	ho, hn := x.o.cl.Handle(old), x.o.cl.Handle(nw)
	if err := ho.Stop(ctx, instance.ShutdownFast); err != nil {
		return fmt.Errorf("demote %s: fast shutdown: %w", old.Database, err)
	}
	cd, err := ho.ControlData(ctx)
	if err != nil {
		return fmt.Errorf("demote %s: read control data: %w", old.Database, err)
	}
	deadline := time.Now().Add(2 * time.Second)
	for time.Now().Before(deadline) {
		if got, err := hn.ReceiveLSN(ctx); err == nil && got > cd.CheckpointLSN {
			return nil
		}
		time.Sleep(2 * time.Millisecond)
	}
	return nil
}

// promoteAll records the intent and promotes every new primary (idempotent).
func (x *execution) promoteAll(ctx context.Context, news []*model.Instance) error {
	if !x.plan.Promoting {
		x.plan.Promoting = true
		if err := x.save(); err != nil {
			return err
		}
	}
	if err := x.run.Step("promote"); err != nil {
		return err
	}
	return eachInstance(news, func(n *model.Instance) error {
		h := x.o.cl.Handle(n)
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

// rejoinAll restarts every old primary as a standby of its new primary. With mustSucceed false (forced), a
// failure is left to the reconciler, which retries until the old primary is back.
func (x *execution) rejoinAll(ctx context.Context, mustSucceed bool) error {
	olds, news, err := x.instances()
	if err != nil {
		return err
	}
	err = eachPair(olds, news, func(o, n *model.Instance) error {
		if !o.NeedsRejoin {
			return nil
		}
		return x.o.cl.Rejoin(ctx, o, n)
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

var _ = lsn.LSN(0)
