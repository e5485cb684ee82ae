package cluster

// The lost-transaction report's two halves on instances: every primary keeps its lost-transaction slot, and a
// former primary a forced failover fenced is read in isolation before its rewind.

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/fogo-db/fogo/internal/controlplane/lostreport"
	"github.com/fogo-db/fogo/internal/controlplane/model"
	"github.com/fogo-db/fogo/internal/controlplane/store"
	"github.com/fogo-db/fogo/internal/postgres/lostxact"
)

// keepTimeout bounds one upkeep of a lost-transaction slot. Making the slot waits for the transactions running at
// that moment, so a long one makes it time out; it is made at a later pass.
const keepTimeout = 2 * time.Second

// KeepLostSlot keeps a running primary's lost-transaction slot at what its geo-secondaries replayed (see
// lostxact.Keep), in the primary's database. Anything else is left alone.
func (m *Manager) KeepLostSlot(ctx context.Context, rec *model.Instance) error {
	if rec.Role != model.RolePrimary || rec.NeedsRejoin {
		return nil
	}
	h := m.HandleWithin(ctx, rec)
	if _, running := h.Running(); !running || h.IsStandby() {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, keepTimeout)
	defer cancel()
	conn, err := h.Connect(ctx, rec.Database)
	if err != nil {
		return fmt.Errorf("keep the lost-transaction slot of %s: %w", rec.ID, err)
	}
	defer conn.Close(context.Background())
	if _, err := lostxact.Keep(ctx, conn); err != nil {
		return fmt.Errorf("keep the lost-transaction slot of %s: %w", rec.ID, err)
	}
	return nil
}

// prepareTimeout bounds making the slot when a geo-secondary is seeded or an old primary rejoins; the observer's
// upkeep makes it later if it timed out.
const prepareTimeout = 10 * time.Second

// ensureLostSlot makes the lost-transaction slot on the primary rec before a geo-secondary starts copying from it
// (a seed, a rejoin), so that the slot is never past what the geo-secondary will have. It does not fail the
// caller: a slot that cannot be made now (a long transaction delays it) is made by the observer's upkeep, and
// until the geo-secondary has replayed past it a forced failover's report reads Incomplete.
func (m *Manager) ensureLostSlot(ctx context.Context, rec *model.Instance) {
	ctx, cancel := context.WithTimeout(ctx, prepareTimeout)
	defer cancel()
	conn, err := m.Handle(rec).Connect(ctx, rec.Database)
	if err == nil {
		err = lostxact.Prepare(ctx, conn)
		conn.Close(context.Background())
	}
	if err != nil {
		m.log.Warn("the lost-transaction slot could not be made yet; the observer makes it later", "instance", rec.ID,
			"database", rec.Database, "err", err)
	}
}

// reportLost produces the lost-transaction report that waits for rec (a fenced former primary, stopped): it is
// started in isolation (only fogo's superuser may log in, read-only by default), read against upstream's
// timeline history, and stopped again. It returns nil once the report is stored, or once its attempts are spent
// (the report then reads Failed with the reason, and the rewind goes on): in both cases rec's mark is cleared. It
// returns an error while attempts remain, so that the rejoin is retried before anything is thrown away.
func (m *Manager) reportLost(ctx context.Context, rec, upstream *model.Instance) error {
	r, err := lostreport.Get(m.store, rec.LostReport, rec.Database)
	if errors.Is(err, store.ErrNotFound) {
		r = &lostreport.Report{Operation: rec.LostReport, Database: rec.Database, OldPrimary: rec.ID, NewPrimary: upstream.ID}
	} else if err != nil {
		return fmt.Errorf("lost-transaction report of %s: %w", rec.ID, err)
	}
	unmark := func(tx *store.Tx) error {
		var cur model.Instance
		if err := tx.MustGet(store.Instances, rec.ID, &cur); err != nil {
			return err
		}
		cur.LostReport = ""
		return tx.Put(store.Instances, rec.ID, &cur)
	}
	if r.Status != lostreport.Pending {
		rec.LostReport = ""
		return m.store.Update(unmark) // produced already; only the mark was left
	}
	res, readErr := m.readLost(ctx, rec, upstream)
	if readErr == nil {
		if err := lostreport.Save(m.store, r, res, unmark); err != nil {
			return fmt.Errorf("store the lost-transaction report of %s: %w", rec.ID, err)
		}
		rec.LostReport = ""
		m.log.Warn("forced failover: lost-transaction report", "database", rec.Database, "operation", r.Operation,
			"status", r.Status, "transactions", r.TransactionCount, "changes", r.ChangeCount)
		return nil
	}
	final, err := lostreport.Fail(m.store, r, readErr, failureKind(ctx, readErr), unmark)
	if err != nil {
		return fmt.Errorf("record the failed lost-transaction report of %s: %w (it failed: %v)", rec.ID, err, readErr)
	}
	if !final {
		return fmt.Errorf("lost-transaction report of %s (attempt %d of %d): %w", rec.ID, r.Attempts, lostreport.MaxAttempts, readErr)
	}
	rec.LostReport = ""
	m.log.Error("forced failover: the lost-transaction report could not be produced; rewinding anyway",
		"database", rec.Database, "operation", r.Operation, "err", readErr)
	return nil
}

// transient marks a failure that says nothing of the old primary's WAL.
type transient struct{ error }

func (t transient) Unwrap() error { return t.error }

// failureKind judges a failed read: a missing slot fails again for sure; a failure marked transient, one cut short
// (fogo stopping, a failover preempting the reconciliation) or one of an inner bound (a start's) is retried without
// counting. A read that ran out its caller's whole bound counts: retried for ever, a lost WAL too large to decode
// within it would keep the old primary from rejoining for good.
func failureKind(ctx context.Context, err error) lostreport.Failure {
	var tr transient
	switch {
	case errors.Is(err, lostxact.ErrNoSlot):
		return lostreport.Lasting
	case errors.As(err, &tr):
		return lostreport.Transient
	case errors.Is(ctx.Err(), context.DeadlineExceeded):
		return lostreport.Counted
	case ctx.Err() != nil, errors.Is(err, context.DeadlineExceeded):
		return lostreport.Transient
	}
	return lostreport.Counted
}

// portTaken reports a start that failed because something else listens on the instance's port (in the embedded
// mode, how a host that is not back looks).
func portTaken(err error) bool {
	s := err.Error()
	return strings.Contains(s, "Address already in use") || strings.Contains(s, "could not create any TCP/IP sockets")
}

// readLost is the read itself: isolated start, divergence, decode, stop.
func (m *Manager) readLost(ctx context.Context, rec, upstream *model.Instance) (lostxact.Result, error) {
	h := m.HandleWithin(ctx, rec)
	s := m.settings(rec, nil)
	s.Standby, s.Isolated = false, true
	if err := h.Configure(s); err != nil {
		return lostxact.Result{}, fmt.Errorf("configure the old primary in isolation: %w", err)
	}
	if err := h.Start(ctx); err != nil {
		err = fmt.Errorf("start the old primary in isolation: %w", err)
		if portTaken(err) {
			return lostxact.Result{}, transient{err}
		}
		return lostxact.Result{}, err
	}
	defer func() {
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
		defer cancel()
		if err := m.HandleWithin(sctx, rec).TryShuttingDownFastImmediate(sctx, 10*time.Second); err != nil {
			m.log.Warn("stop the old primary after its lost-transaction report", "instance", rec.ID, "err", err)
		}
	}()
	old, err := h.Connect(ctx, rec.Database)
	if err != nil {
		return lostxact.Result{}, fmt.Errorf("connect to the old primary: %w", err)
	}
	defer old.Close(context.Background())
	var timeline uint32
	if err := old.QueryRow(ctx, "SELECT timeline_id FROM pg_control_checkpoint()").Scan(&timeline); err != nil {
		return lostxact.Result{}, fmt.Errorf("read the old primary's timeline: %w", err)
	}
	nw, err := m.Handle(upstream).Connect(ctx, upstream.Database)
	if err != nil {
		return lostxact.Result{}, transient{fmt.Errorf("connect to the new primary: %w", err)}
	}
	defer nw.Close(context.Background())
	divergence, err := lostxact.Divergence(ctx, nw, timeline)
	if err != nil {
		return lostxact.Result{}, err
	}
	limits := m.cfg.LostLimits
	if limits == (lostxact.Limits{}) {
		limits = lostxact.DefaultLimits
	}
	return lostxact.Read(ctx, old, divergence, limits)
}
