package service

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/fogo-db/fogo/internal/controlplane/cluster"
	"github.com/fogo-db/fogo/internal/controlplane/model"
	"github.com/fogo-db/fogo/internal/controlplane/operations"
	"github.com/fogo-db/fogo/internal/controlplane/store"
)

// Observer keeps the replication state of every group database, observed from PostgreSQL, and reconciles
// instances: it starts instances that should run (after a crash or a fogo restart) and rejoins fenced former
// primaries as standbys. It only takes locks with TryLock, so a running operation always has precedence.
type Observer struct {
	st  *store.Store
	cl  *cluster.Manager
	ops *operations.Runner

	mu     sync.RWMutex
	states map[string]string // instance ID of a geo-secondary -> replication state

	retry map[string]*retryState // instance ID -> backoff after a failed reconciliation (Tick's goroutine only)

	// The Automatic policy (Tick's goroutine only).
	graceUnit    time.Duration
	autoFailover func(g *model.FailoverGroup) error
	downSince    map[string]time.Time // group key -> when its primary was first seen unavailable
}

// retryState spaces out reconciliation attempts that keep failing, and keeps the log to one line per
// distinct error instead of one per tick.
type retryState struct {
	next    time.Time
	delay   time.Duration
	lastErr string
}

const (
	minRetryDelay = time.Second
	maxRetryDelay = 30 * time.Second
)

// NewObserver returns an observer.
func NewObserver(st *store.Store, cl *cluster.Manager, ops *operations.Runner) *Observer {
	return &Observer{st: st, cl: cl, ops: ops, states: map[string]string{}, retry: map[string]*retryState{},
		graceUnit: time.Minute, downSince: map[string]time.Time{}}
}

// Run observes and reconciles every interval until ctx ends.
func (o *Observer) Run(ctx context.Context, interval time.Duration, log func(msg string, args ...any)) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		o.Tick(ctx, log)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// Tick runs one observation and reconciliation pass.
func (o *Observer) Tick(ctx context.Context, log func(msg string, args ...any)) {
	var groups []model.FailoverGroup
	var insts []model.Instance
	var dbs []model.Database
	_ = o.st.View(func(tx *store.Tx) (err error) {
		if groups, err = store.List[model.FailoverGroup](tx, store.Groups, ""); err != nil {
			return err
		}
		if dbs, err = store.List[model.Database](tx, store.Databases, ""); err != nil {
			return err
		}
		insts, err = store.List[model.Instance](tx, store.Instances, "")
		return err
	})
	// An unfinished operation owns its group's instances, even before it has taken the group lock (right
	// after a restart, ResumeAll launches it concurrently with the first tick): starting an old primary that
	// a planned failover has just demoted would make two primaries.
	busy := map[string]bool{}
	for _, g := range groups {
		if g.Operation != "" {
			if op, err := o.ops.Get(g.Operation); err != nil || !op.Done() {
				busy[g.Key()] = true
			}
		}
	}
	lockOf := map[string]string{}
	for _, d := range dbs {
		lockOf[d.Instance] = "instance:" + d.Instance
		if d.Group != "" {
			lockOf[d.Instance] = d.Group
			if busy[d.Group] {
				delete(lockOf, d.Instance)
			}
		}
	}
	for i := range insts {
		rec := &insts[i]
		key, ok := lockOf[rec.ID]
		if !ok {
			continue
		}
		rs := o.retry[rec.ID]
		if rs != nil && time.Now().Before(rs.next) {
			continue
		}
		unlock, ok := o.cl.TryLock(key)
		if !ok {
			continue
		}
		err := o.reconcile(ctx, rec)
		unlock()
		o.noteResult(rec, err, log)
	}
	o.observe(ctx, groups, insts)
	o.automatic(ctx, groups, busy, log)
}

// automatic applies the Automatic read-write failover policy: a group whose primary has been unavailable for
// failoverWithDataLossGracePeriodMinutes (each minute lasting graceUnit) is failed over, forced, to its partner.
// Availability is probed, not assumed: every primary instance of the group must answer a query as a primary.
func (o *Observer) automatic(ctx context.Context, groups []model.FailoverGroup, busy map[string]bool, log func(msg string, args ...any)) {
	for i := range groups {
		g := &groups[i]
		key := g.Key()
		if g.ReadWritePolicy != "Automatic" || g.GraceMinutes == nil || busy[key] || o.autoFailover == nil {
			delete(o.downSince, key)
			continue
		}
		down := o.unavailablePrimary(ctx, g)
		if down == "" {
			if _, was := o.downSince[key]; was && log != nil {
				log("primary available again; automatic failover cancelled", "group", g.Name)
			}
			delete(o.downSince, key)
			continue
		}
		grace := time.Duration(*g.GraceMinutes) * o.graceUnit
		since, seen := o.downSince[key]
		if !seen {
			o.downSince[key] = time.Now()
			if log != nil {
				log("primary unavailable; automatic forced failover after the grace period", "group", g.Name,
					"database", down, "grace", grace.String())
			}
			continue
		}
		if time.Since(since) < grace {
			continue
		}
		if err := o.autoFailover(g); err != nil {
			if log != nil {
				log("automatic failover could not start", "group", g.Name, "err", err)
			}
			continue
		}
		delete(o.downSince, key)
	}
}

// unavailablePrimary returns the name of a database whose primary instance does not answer as a primary.
func (o *Observer) unavailablePrimary(ctx context.Context, g *model.FailoverGroup) string {
	for _, d := range g.Databases {
		rec, err := o.cl.GetInstance(d.Primary)
		if err != nil {
			return d.Name
		}
		h := o.cl.Handle(rec)
		if _, running := h.Running(); !running {
			return d.Name
		}
		pctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		inRecovery, err := h.IsInRecovery(pctx)
		cancel()
		if err != nil || inRecovery {
			return d.Name
		}
	}
	return ""
}

// SetAutomatic installs the Automatic policy's failover action and the length of a grace-period minute.
func (o *Observer) SetAutomatic(graceUnit time.Duration, failover func(g *model.FailoverGroup) error) {
	if graceUnit > 0 {
		o.graceUnit = graceUnit
	}
	o.autoFailover = failover
}

// noteResult records the outcome of a reconciliation: a failure backs off exponentially and is logged
// when it first occurs or changes; a success after failures is logged once.
func (o *Observer) noteResult(rec *model.Instance, err error, log func(msg string, args ...any)) {
	rs := o.retry[rec.ID]
	if err == nil {
		if rs != nil && log != nil {
			log("reconcile instance recovered", "instance", rec.ID, "database", rec.Database)
		}
		delete(o.retry, rec.ID)
		return
	}
	if rs == nil {
		rs = &retryState{delay: minRetryDelay / 2}
		o.retry[rec.ID] = rs
	}
	rs.delay = min(2*rs.delay, maxRetryDelay)
	rs.next = time.Now().Add(rs.delay)
	if msg := err.Error(); msg != rs.lastErr {
		rs.lastErr = msg
		if log != nil {
			log("reconcile instance failed; retrying with backoff", "instance", rec.ID, "database", rec.Database,
				"retry_in", rs.delay.String(), "err", err)
		}
	}
}

// reconcile starts an instance that should run, or rejoins a fenced former primary once its upstream is a
// running primary; a primary's admin login gets the rights fogo gives it (once per instance record).
func (o *Observer) reconcile(ctx context.Context, rec *model.Instance) error {
	// Re-read under the lock: an operation may have changed it since the list was taken.
	cur, err := o.cl.GetInstance(rec.ID)
	if err != nil {
		return nil
	}
	if cur.NeedsRejoin {
		// Fence first: a former primary that is running (it came back, or fogo could not stop it during the
		// failover) must not serve anything before it is rewound, whether or not it can rejoin yet.
		if h := o.cl.Handle(cur); h != nil {
			if _, running := h.Running(); running {
				if err := h.TryShuttingDownFastImmediate(ctx, 2*time.Second); err != nil {
					return fmt.Errorf("fence former primary %s: %w", cur.ID, err)
				}
			}
		}
		up, err := o.cl.GetInstance(cur.Upstream)
		if err != nil {
			return err
		}
		h := o.cl.Handle(up)
		if _, running := h.Running(); !running || h.IsStandby() {
			return nil
		}
		return o.cl.Rejoin(ctx, cur, up)
	}
	if err := o.reseedIfLost(ctx, cur); err != nil {
		return err
	}
	if err := o.cl.EnsureRunning(ctx, cur); err != nil {
		return err
	}
	return o.cl.EnsureAdminRights(ctx, cur)
}

func (o *Observer) observe(ctx context.Context, groups []model.FailoverGroup, insts []model.Instance) {
	byID := map[string]*model.Instance{}
	for i := range insts {
		byID[insts[i].ID] = &insts[i]
	}
	states := map[string]string{}
	for _, g := range groups {
		busy := false
		if g.Operation != "" {
			if op, err := o.ops.Get(g.Operation); err == nil && !op.Done() {
				busy = true
			}
		}
		for _, d := range g.Databases {
			sec := byID[d.Secondary]
			states[d.Secondary] = o.stateOf(ctx, sec, busy)
		}
	}
	o.mu.Lock()
	o.states = states
	o.mu.Unlock()
}

func (o *Observer) stateOf(ctx context.Context, sec *model.Instance, busy bool) string {
	switch {
	case sec == nil:
		return model.StatePending
	case sec.Reseed: // its slot was lost; seeding again (reseedIfLost)
		return model.StateSeeding
	case !sec.Seeded && busy:
		return model.StateSeeding
	case !sec.Seeded:
		return model.StatePending
	}
	h := o.cl.Handle(sec)
	if _, running := h.Running(); !running {
		return model.StateSuspended
	}
	cctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	st, err := h.WalReceiverStatus(cctx)
	if err != nil || st.Status != "streaming" {
		return model.StateSuspended
	}
	return model.StateCatchUp
}

// Invalidate forgets every observed state (an operation changed roles or replication); the next read observes.
func (o *Observer) Invalidate() {
	o.mu.Lock()
	o.states = map[string]string{}
	o.mu.Unlock()
}

// GroupState returns the replication state of a group: the worst of its databases' states. A geo-secondary
// the last pass did not see (just seeded, or the roles just swapped) is observed now rather than reported as
// PENDING.
func (o *Observer) GroupState(g *model.FailoverGroup) string {
	rank := map[string]int{model.StateCatchUp: 0, model.StatePending: 1, model.StateSeeding: 2, model.StateSuspended: 3}
	worst := model.StateCatchUp
	for _, d := range g.Databases {
		o.mu.RLock()
		st, ok := o.states[d.Secondary]
		o.mu.RUnlock()
		if !ok {
			st = o.observeOne(g, d.Secondary)
		}
		if rank[st] > rank[worst] {
			worst = st
		}
	}
	return worst
}

func (o *Observer) observeOne(g *model.FailoverGroup, id string) string {
	busy := false
	if g.Operation != "" {
		if op, err := o.ops.Get(g.Operation); err == nil && !op.Done() {
			busy = true
		}
	}
	var sec *model.Instance
	if rec, err := o.cl.GetInstance(id); err == nil {
		sec = rec
	}
	st := o.stateOf(context.Background(), sec, busy)
	o.mu.Lock()
	o.states[id] = st
	o.mu.Unlock()
	return st
}
