package service

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/fogo-db/fogo/internal/controlplane/cluster"
	"github.com/fogo-db/fogo/internal/controlplane/failover"
	"github.com/fogo-db/fogo/internal/controlplane/lostreport"
	"github.com/fogo-db/fogo/internal/controlplane/model"
	"github.com/fogo-db/fogo/internal/controlplane/operations"
	"github.com/fogo-db/fogo/internal/controlplane/store"
)

// Observer keeps the replication state of every group database, observed from PostgreSQL, and reconciles
// instances: it starts instances that should run (after a crash or a fogo restart) and rejoins fenced former
// primaries as standbys. It only takes locks with TryLock, so a running operation always has precedence, and a
// failover preempts a reconciliation under way (cluster.Manager.LockNow).
//
// Groups are independent: each pass hands every group's (or standalone database's) reconciliation to a worker of
// its own and does not wait for it, and probes the groups concurrently with bounded queries. A slow or stuck
// instance (a start that hangs, a frozen postmaster) delays neither the other groups nor the Automatic policy,
// whose clock is read on every pass. A reconciliation holds its lock for at most its bound (reconcileTimeout;
// longer for a reseed or a lost-transaction report to read), and yields it to a failover at once, but in a rewind
// or a reseed's base backup.
type Observer struct {
	st  *store.Store
	cl  *cluster.Manager
	ops *operations.Runner

	mu     sync.RWMutex
	states map[string]string // instance ID of a geo-secondary -> replication state

	wmu      sync.Mutex
	retry    map[string]*retryState // instance ID -> backoff after a failed reconciliation
	inflight map[string]bool        // lock keys whose worker still runs
	keepErr  map[string]string      // instance ID -> the last failure of its lost-transaction slot's upkeep
	keptAt   map[string]time.Time   // instance ID -> its lost-transaction slot's last upkeep that succeeded
	workers  sync.WaitGroup

	// The Automatic policy (the pass's goroutine only).
	graceUnit    time.Duration
	autoFailover func(g *model.FailoverGroup) error
	downSince    map[string]time.Time // group key -> when its primary was first seen unavailable
	held         map[string]string    // group key -> why its due failover waits for the geo-secondary
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
	// reconcileTimeout bounds one instance's reconciliation (a start with crash recovery, a rejoin with pg_rewind),
	// and so how long it holds its group's lock.
	reconcileTimeout = 2 * time.Minute
	// lostReadTimeout bounds the rejoin of an old primary whose lost-transaction report is still to be read: the
	// decoding of everything it committed past the divergence (a minute or two for ten million rows), then the
	// rewind. Three reads that run it out give up on the report, and the old primary is rewound anyway.
	lostReadTimeout = 30 * time.Minute
	// settleTimeout bounds how long Tick waits for the reconciliations it started.
	settleTimeout = 30 * time.Second
	// probeTimeout bounds one question to an instance.
	probeTimeout = 2 * time.Second
)

// NewObserver returns an observer.
func NewObserver(st *store.Store, cl *cluster.Manager, ops *operations.Runner) *Observer {
	return &Observer{st: st, cl: cl, ops: ops, states: map[string]string{}, retry: map[string]*retryState{},
		inflight: map[string]bool{}, keepErr: map[string]string{}, keptAt: map[string]time.Time{}, graceUnit: time.Minute, downSince: map[string]time.Time{}, held: map[string]string{}}
}

// Run observes and reconciles every interval until ctx ends, then waits for its workers.
func (o *Observer) Run(ctx context.Context, interval time.Duration, log func(msg string, args ...any)) {
	defer o.workers.Wait()
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		o.pass(ctx, log)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// Tick runs one observation and reconciliation pass and waits, at most settleTimeout, for the reconciliations it
// started (at start, instances are re-adopted before interrupted operations resume).
func (o *Observer) Tick(ctx context.Context, log func(msg string, args ...any)) {
	started := o.pass(ctx, log)
	done := make(chan struct{})
	go func() { started.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(settleTimeout):
	case <-ctx.Done():
	}
}

// pass starts the reconciliation workers, probes every group and applies the Automatic policy. It returns the
// workers it started, without waiting for them.
func (o *Observer) pass(ctx context.Context, log func(msg string, args ...any)) *sync.WaitGroup {
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
	byKey := map[string][]*model.Instance{}
	var keys []string
	for i := range insts {
		key, ok := lockOf[insts[i].ID]
		if !ok {
			continue
		}
		if byKey[key] == nil {
			keys = append(keys, key)
		}
		byKey[key] = append(byKey[key], &insts[i])
	}
	started := &sync.WaitGroup{}
	for _, key := range keys {
		o.launch(ctx, key, byKey[key], started, log)
	}
	probes := o.probe(ctx, groups, insts, busy)
	states := map[string]string{}
	for _, p := range probes {
		for id, st := range p.states {
			states[id] = st
		}
	}
	o.mu.Lock()
	o.states = states
	o.mu.Unlock()
	o.automatic(groups, busy, probes, log)
	return started
}

// launch reconciles the instances under one lock key in a worker of its own, unless the previous one still runs.
func (o *Observer) launch(ctx context.Context, key string, recs []*model.Instance, started *sync.WaitGroup, log func(msg string, args ...any)) {
	o.wmu.Lock()
	if o.inflight[key] {
		o.wmu.Unlock()
		return
	}
	o.inflight[key] = true
	o.wmu.Unlock()
	o.workers.Add(1)
	started.Add(1)
	go func() {
		defer o.workers.Done()
		defer started.Done()
		defer func() { o.wmu.Lock(); delete(o.inflight, key); o.wmu.Unlock() }()
		for _, rec := range recs {
			if ctx.Err() != nil || o.backingOff(rec.ID) {
				continue
			}
			lctx, unlock, ok := o.cl.TryLock(ctx, key)
			if !ok {
				return
			}
			bound := reconcileTimeout
			if rec.Reseed || (rec.Role == model.RoleStandby && !rec.Seeded) {
				bound = reseedTimeout // a base backup of a whole database: its own, longer bound
			}
			if rec.NeedsRejoin && rec.LostReport != "" {
				bound = lostReadTimeout // the old primary's WAL past the divergence is decoded first
			}
			rctx, cancel := context.WithTimeout(lctx, bound)
			err := o.reconcile(rctx, rec)
			preempted := cluster.Preempted(rctx)
			cancel()
			unlock()
			if preempted {
				return // a failover wants the lock: not a failure; the next pass tries again
			}
			o.noteResult(rec, err, log)
		}
	}()
}

func (o *Observer) backingOff(id string) bool {
	o.wmu.Lock()
	defer o.wmu.Unlock()
	rs := o.retry[id]
	return rs != nil && time.Now().Before(rs.next)
}

// groupProbe is what one pass observed of a group.
type groupProbe struct {
	states   map[string]string // geo-secondary instance ID -> replication state
	down     string            // a database whose primary does not answer as a primary ("" if none)
	notReady string            // why a geo-secondary cannot become primary now ("" if all can); only when down
}

// probe observes every group concurrently; each question is bounded, so a pass takes seconds at most.
func (o *Observer) probe(ctx context.Context, groups []model.FailoverGroup, insts []model.Instance, busy map[string]bool) []groupProbe {
	byID := map[string]*model.Instance{}
	for i := range insts {
		byID[insts[i].ID] = &insts[i]
	}
	out := make([]groupProbe, len(groups))
	var wg sync.WaitGroup
	for i := range groups {
		wg.Add(1)
		go func(g *model.FailoverGroup, p *groupProbe) {
			defer wg.Done()
			p.states = map[string]string{}
			for _, d := range g.Databases {
				p.states[d.Secondary] = o.stateOf(ctx, byID[d.Secondary], busy[g.Key()])
			}
			if g.ReadWritePolicy != model.PolicyAutomatic || busy[g.Key()] {
				return
			}
			if p.down = o.unavailablePrimary(ctx, g); p.down != "" {
				p.notReady = o.secondaryNotReady(ctx, g, byID)
			}
		}(&groups[i], &out[i])
	}
	wg.Wait()
	return out
}

// automatic applies the Automatic read-write failover policy: a group whose primary has been unavailable for
// failoverWithDataLossGracePeriodMinutes (each minute lasting graceUnit) is failed over, forced, to its partner.
// Availability is probed, not assumed: every primary instance of the group must answer a query as a primary. The
// failover waits while a geo-secondary cannot become primary (it would only fence the primary for nothing); the
// clock keeps running, so it happens as soon as the geo-secondary is ready.
func (o *Observer) automatic(groups []model.FailoverGroup, busy map[string]bool, probes []groupProbe, log func(msg string, args ...any)) {
	for i := range groups {
		g, p := &groups[i], &probes[i]
		key := g.Key()
		if g.ReadWritePolicy != model.PolicyAutomatic || g.GraceMinutes == nil || busy[key] || o.autoFailover == nil {
			delete(o.downSince, key)
			delete(o.held, key)
			continue
		}
		if p.down == "" {
			if _, was := o.downSince[key]; was && log != nil {
				log("primary available again; automatic failover cancelled", "group", g.Name)
			}
			delete(o.downSince, key)
			delete(o.held, key)
			continue
		}
		grace := time.Duration(*g.GraceMinutes) * o.graceUnit
		since, seen := o.downSince[key]
		if !seen {
			o.downSince[key] = time.Now()
			if log != nil {
				log("primary unavailable; automatic forced failover after the grace period", "group", g.Name,
					"database", p.down, "grace", grace.String())
			}
			continue
		}
		if time.Since(since) < grace {
			continue
		}
		if p.notReady != "" {
			if o.held[key] != p.notReady && log != nil {
				log("automatic failover due but held: the geo-secondary cannot become primary", "group", g.Name,
					"reason", p.notReady)
			}
			o.held[key] = p.notReady
			continue
		}
		delete(o.held, key)
		if err := o.autoFailover(g); err != nil {
			if log != nil {
				log("automatic failover could not start", "group", g.Name, "err", err)
			}
			continue
		}
		delete(o.downSince, key)
	}
}

// secondaryNotReady says why a geo-secondary of g could not become primary now, or "".
func (o *Observer) secondaryNotReady(ctx context.Context, g *model.FailoverGroup, byID map[string]*model.Instance) string {
	for _, d := range g.Databases {
		rec := byID[d.Secondary]
		if rec == nil {
			return fmt.Sprintf("database %s has no geo-secondary", d.Name)
		}
		if err := failover.CheckRunningCopy(ctx, rec, o.cl.Handle(rec)); err != nil {
			return fmt.Sprintf("the geo-secondary of %s: %v", d.Name, err)
		}
	}
	return ""
}

// unavailablePrimary returns the name of a database whose primary instance does not answer as a primary.
func (o *Observer) unavailablePrimary(ctx context.Context, g *model.FailoverGroup) string {
	for _, d := range g.Databases {
		rec, err := o.cl.GetInstance(d.Primary)
		if err != nil {
			return d.Name
		}
		// The query alone decides: an instance that answers runs, and asking its host first would only add a
		// wait when that host is gone.
		pctx, cancel := context.WithTimeout(ctx, probeTimeout)
		inRecovery, err := o.cl.Handle(rec).IsInRecovery(pctx)
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
	o.wmu.Lock()
	defer o.wmu.Unlock()
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
// running primary; a primary's admin login gets the rights fogo gives it (once per instance record), and its
// lost-transaction slot follows its geo-secondary.
func (o *Observer) reconcile(ctx context.Context, rec *model.Instance) error {
	// Re-read under the lock: an operation may have changed it since the list was taken.
	cur, err := o.cl.GetInstance(rec.ID)
	if err != nil {
		return nil
	}
	if err := o.cl.HostAnswers(ctx, cur); err != nil {
		return fmt.Errorf("its host does not answer: %w", err)
	}
	if cur.NeedsRejoin && cur.Upstream == "" {
		lifted, err := o.liftStaleFence(ctx, cur)
		if err != nil {
			return err
		}
		if lifted {
			cur.NeedsRejoin = false
		}
	}
	if cur.NeedsRejoin {
		// Fence first: a former primary that is running (it came back, or fogo could not stop it during the
		// failover) must not serve anything before it is rewound, whether or not it can rejoin yet. The stop is
		// bounded and ends with SIGKILL: a frozen postmaster's backends would go on serving their sessions.
		if _, err := o.cl.StopFenced(ctx, cur); err != nil {
			return fmt.Errorf("fence former primary %s: %w", cur.ID, err)
		}
		up, err := o.cl.GetInstance(cur.Upstream)
		if err != nil {
			return err
		}
		h := o.cl.HandleWithin(ctx, up)
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
	if err := o.cl.EnsureAdminRights(ctx, cur); err != nil {
		return err
	}
	// The slot's upkeep never holds the instance's reconciliation back: a failure (a long transaction delays
	// making the slot) is logged once and tried again at the next pass.
	if o.keepDue(cur.ID) {
		o.noteKeep(cur, o.cl.KeepLostSlot(ctx, cur))
	}
	return nil
}

// keepEvery spaces out the lost-transaction slot's upkeep on a primary (a connection and a query or two each
// time). A slot that follows its geo-secondary a few seconds late only keeps a few seconds more WAL: the report
// decodes from the point where the timelines diverged, whichever slot position before it it starts from.
const keepEvery = 5 * time.Second

// keepDue reports whether the instance's slot upkeep is due: keepEvery after the last one that succeeded, or at
// once after a failure.
func (o *Observer) keepDue(id string) bool {
	o.wmu.Lock()
	defer o.wmu.Unlock()
	_, failed := o.keepErr[id]
	return failed || time.Since(o.keptAt[id]) >= keepEvery
}

// noteKeep logs a lost-transaction slot's upkeep failing, once per distinct error, and its recovery.
func (o *Observer) noteKeep(rec *model.Instance, err error) {
	o.wmu.Lock()
	defer o.wmu.Unlock()
	last, failed := o.keepErr[rec.ID]
	if err == nil {
		o.keptAt[rec.ID] = time.Now()
	}
	switch {
	case err == nil && failed:
		delete(o.keepErr, rec.ID)
		o.cl.Logger().Info("lost-transaction slot kept again", "instance", rec.ID, "database", rec.Database)
	case err != nil && err.Error() != last:
		o.keepErr[rec.ID] = err.Error()
		o.cl.Logger().Warn("the lost-transaction slot could not be kept; a forced failover's report may then say "+
			"it is incomplete", "instance", rec.ID, "database", rec.Database, "err", err)
	}
}

// liftStaleFence un-fences a group primary that a forced failover fenced but that never lost its role: the
// operation ended (failed after too many restarts, or under an older fogo) without recording new roles and without
// undoing its fence, which left the group without a primary for good. Only when no operation runs on the group and
// every geo-secondary is still a standby (standby.signal; in recovery if it runs): then it cannot make two primaries.
func (o *Observer) liftStaleFence(ctx context.Context, cur *model.Instance) (bool, error) {
	var g *model.FailoverGroup
	var gd *model.GroupDatabase
	err := o.st.View(func(tx *store.Tx) error {
		groups, err := store.List[model.FailoverGroup](tx, store.Groups, "")
		for i := range groups {
			for j := range groups[i].Databases {
				if groups[i].Databases[j].Primary == cur.ID {
					g, gd = &groups[i], &groups[i].Databases[j]
				}
			}
		}
		return err
	})
	if err != nil || g == nil {
		return false, err
	}
	if g.Operation != "" {
		if op, err := o.ops.Get(g.Operation); err != nil || !op.Done() {
			return false, nil
		}
	}
	sec, err := o.cl.GetInstance(gd.Secondary)
	if err != nil {
		return false, fmt.Errorf("lift the fence of %s: %w", cur.ID, err)
	}
	h := o.cl.Handle(sec)
	if !h.IsStandby() {
		return false, fmt.Errorf("primary %s is fenced and its geo-secondary %s left recovery, but no failover "+
			"recorded the new roles: run a forced failover to finish it", cur.ID, sec.ID)
	}
	if _, running := h.Running(); running {
		pctx, cancel := context.WithTimeout(ctx, probeTimeout)
		inRecovery, err := h.IsInRecovery(pctx)
		cancel()
		if err != nil || !inRecovery {
			return false, fmt.Errorf("lift the fence of %s: geo-secondary %s in recovery: %v %v", cur.ID, sec.ID, inRecovery, err)
		}
	}
	// No failover happened: nothing was lost, and a pending lost-transaction report has nothing to say.
	err = o.st.Update(func(tx *store.Tx) error {
		if cur.LostReport != "" {
			if err := lostreport.Discard(tx, cur.LostReport, cur.Database); err != nil {
				return err
			}
		}
		cur.NeedsRejoin, cur.LostReport = false, ""
		return tx.Put(store.Instances, cur.ID, cur)
	})
	if err != nil {
		return false, fmt.Errorf("lift the fence of %s: %w", cur.ID, err)
	}
	o.cl.Logger().Warn("a forced failover ended without new roles and left the primary fenced; fence lifted",
		"instance", cur.ID, "database", cur.Database, "group", g.Name)
	return true, nil
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
	// One bound for every question, the host's too: an API read of the group observes here when the last pass did
	// not (the roles just swapped), and a host cut off must not hold it for an agent call's whole timeout.
	cctx, cancel := context.WithTimeout(ctx, probeTimeout)
	defer cancel()
	h := o.cl.HandleWithin(cctx, sec)
	if _, running := h.Running(); !running {
		return model.StateSuspended
	}
	st, err := h.WalReceiverStatus(cctx)
	if err != nil || st.Status != "streaming" {
		return model.StateSuspended
	}
	if sec.NeedsRejoin { // an old primary restarted as a standby, its rejoin not yet recorded: not caught up yet
		return model.StateSeeding
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
