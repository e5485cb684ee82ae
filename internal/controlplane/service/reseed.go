package service

import (
	"context"
	"fmt"
	"time"

	"github.com/fogo-db/fogo/internal/controlplane/cluster"
	"github.com/fogo-db/fogo/internal/controlplane/model"
)

// reseedTimeout bounds one reseeding attempt (stop, base backup, start); a failed attempt is retried with the
// observer's backoff, and each attempt starts from scratch (BaseBackup wipes a partial copy).
const reseedTimeout = 30 * time.Minute

// reseedIfLost seeds a geo-secondary again when its slot on the primary was invalidated: max_slot_wal_keep_size
// bounds the WAL a slot holds, so a secondary down for long (or a stuck rejoin) loses its slot instead of filling
// the disk, and can never stream again from where it stopped. The verdict is saved first (Reseed, Seeded false:
// replicationState SEEDING, no failover toward it), then the seeding step of group creation runs again (drop the
// lost slot, new slot, pg_basebackup, configure, start): it is idempotent and resumes after a crash of fogo.
// The slot is only looked at when the last pass did not see the secondary streaming.
func (o *Observer) reseedIfLost(ctx context.Context, cur *model.Instance) error {
	if cur.Role != model.RoleStandby || cur.NeedsRejoin || cur.Upstream == "" {
		return nil
	}
	// Never seeded, and no operation of its group runs (the reconciler only runs then): the operation that was to
	// seed it ended first (its host's agent was unreachable, fogo stopped). Seed it, or the group would stay
	// PENDING for good.
	neverSeeded := !cur.Seeded && !cur.Reseed
	if cur.Seeded && !cur.Reseed {
		o.mu.RLock()
		st, seen := o.states[cur.ID]
		o.mu.RUnlock()
		if seen && st == model.StateCatchUp {
			return nil
		}
	}
	up, err := o.cl.GetInstance(cur.Upstream)
	if err != nil {
		return nil
	}
	if o.cl.HostAnswers(ctx, up) != nil {
		// The primary's host is gone (cut off, down): nothing to seed from, and every question to it would hold
		// the group's lock, which the failover that is coming needs, for its whole timeout.
		return nil
	}
	uh := o.cl.HandleWithin(ctx, up)
	if _, running := uh.Running(); !running || uh.IsStandby() || up.Role != model.RolePrimary || up.NeedsRejoin {
		return nil // only a running primary can tell, and seed
	}
	if neverSeeded {
		o.cl.Logger().Warn("seeding a geo-secondary that its group's operation left unseeded", "instance", cur.ID,
			"database", cur.Database, "primary", up.ID)
	} else if !cur.Reseed {
		if !o.cl.HandleWithin(ctx, cur).IsStandby() {
			return nil // not a standby on disk: never wipe it
		}
		cctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		lost, err := uh.SlotLost(cctx, cur.SlotName)
		cancel()
		if err != nil || !lost {
			return nil
		}
		o.cl.Logger().Warn("geo-secondary's slot was invalidated (max_slot_wal_keep_size): seeding it again",
			"instance", cur.ID, "database", cur.Database, "slot", cur.SlotName, "primary", up.ID)
		cur.Seeded, cur.Reseed = false, true
		if err := o.cl.SaveInstance(cur); err != nil {
			return err
		}
		o.setState(cur.ID, model.StateSeeding)
		// The verdict is saved: the next pass reseeds under reseedTimeout, not this pass's reconcileTimeout.
		return nil
	}
	// A base backup under way is not thrown away for a failover, which could not promote this copy anyway: the
	// failover waits for it (bounded by reseedTimeout).
	sctx, cancel, err := cluster.Committed(ctx)
	defer cancel()
	if err != nil {
		return fmt.Errorf("reseed %s: %w", cur.ID, err)
	}
	if err := o.cl.Seed(sctx, cur, up); err != nil {
		return fmt.Errorf("reseed %s: %w", cur.ID, err)
	}
	o.cl.Logger().Info("geo-secondary seeded again", "instance", cur.ID, "database", cur.Database)
	o.setState(cur.ID, model.StateSuspended) // observed again at the end of this pass
	return nil
}

func (o *Observer) setState(id, st string) {
	o.mu.Lock()
	o.states[id] = st
	o.mu.Unlock()
}
