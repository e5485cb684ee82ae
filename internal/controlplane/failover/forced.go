package failover

import (
	"context"
	"fmt"
	"time"

	"github.com/fogo-db/fogo/internal/controlplane/model"
)

// forced promotes the geo-secondaries at once; the old primaries are fenced and rejoin later.
func (x *execution) forced(ctx context.Context) error {
	olds, news, err := x.instances()
	if err != nil {
		return err
	}
	if err := x.run.Step("hold"); err != nil {
		return err
	}
	x.o.hooks.Hold(x.plan.Group)
	defer x.o.hooks.Release(x.plan.Group)

	if err := x.run.Step("fence"); err != nil {
		return err
	}
	if err := x.fenceForced(ctx, olds); err != nil {
		return err
	}
	if err := x.promoteAll(ctx, news, nil); err != nil {
		return err
	}
	return x.recordReleaseRejoin(ctx, "Forced", false)
}

// fenceForced marks every old primary NeedsRejoin first (so nothing restarts it as a primary), then stops it if it
// runs. A stop that fails is not fatal: the instance stays fenced in the store and the reconciler stops it when it
// can reach it.
func (x *execution) fenceForced(ctx context.Context, olds []*model.Instance) error {
	if !x.plan.Fenced {
		for _, o := range olds {
			o.NeedsRejoin = true
			if err := x.o.cl.SaveInstance(o); err != nil {
				return fmt.Errorf("fence %s: %w", o.Database, err)
			}
		}
		x.plan.Fenced = true
		if err := x.save(); err != nil {
			return err
		}
	}
	_ = eachInstance(olds, func(o *model.Instance) error {
		h := x.o.cl.Handle(o)
		if _, running := h.Running(); running {
			sctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			defer cancel()
			_ = h.TryShuttingDownFastImmediate(sctx, time.Second)
		}
		return nil
	})
	return nil
}
