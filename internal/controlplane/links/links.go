// Package links runs fogo's link connections inside the control plane and makes them follow their failover
// group through planned and forced failovers (DESIGN.md, "The link, and why it survives failover on PostgreSQL 15"):
//
//   - The link reads from the instance the store names primary of the group's database; after any failover a
//     worker restarts it (with backoff) on the new primary, from its checkpoint.
//   - Slot copies: the keeper copies the link's logical slot from the primary to the geo-secondary (the slot's state
//     file and logical decoding's serialized snapshots, then one restart of the standby) and advances the copy with
//     pg_replication_slot_advance, never past the link's checkpoint. After a promotion the new primary already has
//     the slot; if it has none, the link resynchronises its tables by itself (package link).
//   - Failover-safe gate: a source transaction is applied only once the geo-secondary has flushed past its end, so
//     a forced failover can never leave rows in the target that the new primary lacks.
package links

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/fogo-db/fogo/internal/controlplane/cluster"
	"github.com/fogo-db/fogo/internal/controlplane/model"
	"github.com/fogo-db/fogo/internal/controlplane/store"
	"github.com/fogo-db/fogo/internal/link"
	"github.com/fogo-db/fogo/internal/link/target"
	"github.com/fogo-db/fogo/internal/postgres/instance"
	"github.com/fogo-db/fogo/internal/postgres/lsn"
)

// Def is a link connection on a failover group's database.
type Def struct {
	Name     string
	Slot     string // the source slot and publication; "" is link.LegacySlotName(Name)
	Group    string // failover group name; "" for a plain source
	Database string
	Source   string // with no Group: the source connection string
	// OwnTarget: Stop closes Target (the catalog opened it for this link).
	OwnTarget bool
	Tables    []link.TableMapping
	Target    *target.Store
	Drop      bool
	// Unprotected runs a group's link without a slot copy on the geo-secondary and without the failover-safe
	// gate: after a failover the new primary has no slot, and every table is resynchronised (merged by primary
	// key, which also removes anything the new primary lacks).
	Unprotected bool
	// Interval > 0 runs the link in batches (dataProcessIntervalMinutes): every Interval it applies what the
	// source committed until then, and is idle in between.
	Interval time.Duration
	// RemoteKeeper: another process keeps the slot copy (cluster mode: the elected controller, which alone may
	// restart a geo-secondary and holds the group locks), from the checkpoint this process publishes.
	RemoteKeeper bool
}

// Manager runs links.
type Manager struct {
	st  *store.Store
	cl  *cluster.Manager
	log *slog.Logger

	mu    sync.Mutex
	links map[string]*worker
	// walStatus is each link's slot's last seen wal_status (a warning is logged when it becomes unreserved).
	walStatus map[string]string
	// SpoolDir is where links spool source transactions too large for memory ("" is the system's temporary
	// directory); set before any link starts.
	SpoolDir string
	// Base, when set, bounds every link started from then on (SetBase): in cluster mode the lease the links run
	// under, so that a process whose lease is in doubt stops its links at once, before another process runs them.
	Base context.Context
	// SourceSilence is how long a link waiting at the failover-safe gate lets its primary go without answering
	// before it gives up the run (0: 30 s, the link's own source timeout); tests shorten it.
	SourceSilence time.Duration
}

// SetBase bounds the links started from now on by ctx (cluster mode: the lease they run under).
func (m *Manager) SetBase(ctx context.Context) {
	m.mu.Lock()
	m.Base = ctx
	m.mu.Unlock()
}

// New returns a manager.
func New(st *store.Store, cl *cluster.Manager, log *slog.Logger) *Manager {
	return &Manager{st: st, cl: cl, log: log, links: map[string]*worker{}, walStatus: map[string]string{}}
}

type worker struct {
	def     Def
	link    *link.Link
	cancel  context.CancelFunc
	done    chan struct{}
	mu      sync.Mutex
	lastErr string
	// notStarted: a link that should run but could not be started (Failed); no goroutine runs for it.
	notStarted bool
	// copyErr: why the last round of the slot copy keeper failed ("" when it did not).
	copyErr string
}

// Start runs a link until Stop (restarting it after errors, e.g. a failover ending its connection).
func (m *Manager) Start(def Def) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if w, ok := m.links[def.Name]; ok && !w.notStarted {
		return fmt.Errorf("link %s is already running", def.Name)
	}
	for name, w := range m.links {
		if !w.notStarted && name != def.Name && sameSlot(w.def, def) {
			// Two links created before slot names were made unique whose names map to one slot: running both
			// would have them destroy each other's slot.
			return fmt.Errorf("link %s uses the same replication slot %s on the same source as running link %s; stop that one, or delete this link and create it again (a new link gets a slot of its own)",
				def.Name, slotOf(def), name)
		}
	}
	base := m.Base
	if base == nil {
		base = context.Background()
	}
	ctx, cancel := context.WithCancel(base)
	w := &worker{def: def, cancel: cancel, done: make(chan struct{})}
	m.links[def.Name] = w
	go m.supervise(ctx, w)
	if def.Group != "" && !def.Unprotected && !def.RemoteKeeper {
		go m.keepSlotCopy(ctx, def, w.progress, w.setCopyErr)
	}
	go m.watchSlot(ctx, def)
	return nil
}

// slotOf is a link's slot (and publication) name on its source.
func slotOf(d Def) string {
	if d.Slot != "" {
		return d.Slot
	}
	return link.LegacySlotName(d.Name)
}

// sameSlot: two links would use one slot on one source.
func sameSlot(a, b Def) bool {
	return slotOf(a) == slotOf(b) && a.Group == b.Group && a.Database == b.Database && a.Source == b.Source
}

// Failed records a link that should run but could not be started (e.g. its target cannot be opened): it reports
// Failed with err until it is stopped or started.
func (m *Manager) Failed(name string, err error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if _, ok := m.links[name]; ok {
		return
	}
	done := make(chan struct{})
	close(done)
	m.links[name] = &worker{def: Def{Name: name}, cancel: func() {}, done: done, lastErr: err.Error(), notStarted: true}
}

// Stop stops a link and waits for it.
func (m *Manager) Stop(name string) {
	m.mu.Lock()
	w := m.links[name]
	delete(m.links, name)
	m.mu.Unlock()
	if w != nil {
		w.cancel()
		<-w.done
		if w.def.Target != nil && w.def.OwnTarget {
			w.def.Target.Close()
		}
	}
}

// StopAll stops every link.
func (m *Manager) StopAll() {
	m.mu.Lock()
	names := make([]string, 0, len(m.links))
	for n := range m.links {
		names = append(names, n)
	}
	m.mu.Unlock()
	for _, n := range names {
		m.Stop(n)
	}
}

// Status is a link's status, from facts.
func (m *Manager) Status(name string) (link.Status, bool) {
	m.mu.Lock()
	w := m.links[name]
	m.mu.Unlock()
	if w == nil {
		return link.Status{}, false
	}
	w.mu.Lock()
	l, lastErr, copyErr := w.link, w.lastErr, w.copyErr
	w.mu.Unlock()
	if l == nil {
		if lastErr != "" {
			return link.Status{Phase: "Failed", Err: lastErr}, true // it could not even be started
		}
		return link.Status{Phase: "Starting"}, true
	}
	st := l.Status()
	if st.Phase == "Starting" && lastErr != "" {
		// A restarted run that has not got going yet: the link is still failed, for the reason the last run
		// ended (a link that keeps failing does not flicker between Failed and Starting).
		st = st.AsFailed(lastErr)
	}
	if st.Err == "" && !(st.Phase == "Streaming" && st.Applied > 0) {
		st.Err = lastErr // the last restart's cause, until the restarted link has applied something
	}
	if st.Err == "" {
		st.Err = copyErr // the link runs, but its slot copy is not kept: a failover would resynchronise it
	}
	return st, true
}

// topology is where the link's database lives now.
type topology struct {
	group              model.FailoverGroup
	primary, secondary model.Instance
}

func (m *Manager) topology(def Def) (*topology, error) {
	var t topology
	err := m.st.View(func(tx *store.Tx) error {
		if err := tx.MustGet(store.Groups, model.GroupKey(def.Group), &t.group); err != nil {
			return err
		}
		for _, d := range t.group.Databases {
			if d.Name != def.Database {
				continue
			}
			if err := tx.MustGet(store.Instances, d.Primary, &t.primary); err != nil {
				return err
			}
			if d.Secondary != "" {
				if _, err := tx.Get(store.Instances, d.Secondary, &t.secondary); err != nil {
					return err
				}
			}
			return nil
		}
		return fmt.Errorf("database %s is not in failover group %s", def.Database, def.Group)
	})
	return &t, err
}

// supervise runs the link, restarting it with backoff; each run reads from the primary the store names then.
func (m *Manager) supervise(ctx context.Context, w *worker) {
	defer close(w.done)
	backoff := 200 * time.Millisecond
	for ctx.Err() == nil {
		src, gate, err := m.source(w.def)
		if err != nil {
			w.setErr(err)
		} else {
			l := link.New(link.Config{Name: w.def.Name, Slot: w.def.Slot, Source: src, Tables: w.def.Tables, Target: w.def.Target,
				DropExistingOnStart: w.def.Drop, Logger: m.log, Gate: gate, Batch: w.def.Interval > 0, SpoolDir: m.SpoolDir})
			w.mu.Lock()
			if w.link != nil {
				l.CarryOver(w.link.Status())
			}
			w.link = l
			w.mu.Unlock()
			start := time.Now()
			runCtx, stopRun := context.WithCancelCause(ctx)
			watchDone := m.followPrimary(runCtx, w.def, stopRun)
			err = l.Run(runCtx)
			stopRun(nil)
			<-watchDone
			if ctx.Err() != nil {
				return
			}
			if cause := context.Cause(runCtx); errors.Is(cause, errPrimaryMoved) {
				// Not an error: the group failed over, and the link reads from the new primary at once.
				m.log.Info("link follows the group's new primary", "link", w.def.Name)
				w.def.Drop, backoff = false, 200*time.Millisecond
				continue
			}
			if err == nil && w.def.Interval > 0 {
				// A batch is done: the next one starts an interval after this one started.
				w.def.Drop, backoff = false, 200*time.Millisecond
				m.log.Debug("link batch done", "link", w.def.Name, "took", time.Since(start).Round(time.Millisecond),
					"idle", time.Until(start.Add(w.def.Interval)).Round(time.Millisecond))
				select {
				case <-ctx.Done():
					return
				case <-time.After(time.Until(start.Add(w.def.Interval))):
				}
				continue
			}
			w.setErr(err)
			m.log.Warn("link stopped; restarting", "link", w.def.Name, "err", err)
			if time.Since(start) > 10*time.Second {
				backoff = 200 * time.Millisecond
			}
			w.def.Drop = false // only the first start drops
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 5*time.Second)
	}
}

// errPrimaryMoved ends a link's run when its group's primary is another instance than the one it reads from.
var errPrimaryMoved = errors.New("the group's primary moved")

// followPrimaryInterval is how often a running link checks that its group's primary is still its source.
const followPrimaryInterval = time.Second

// followPrimary ends the run (stop with errPrimaryMoved) once the group's primary recorded in the store is not the
// one the run started from: a failover whose old primary's host is gone leaves the link's connection hanging, not
// broken, and the link must not wait for its own silence timeout to follow. The returned channel is closed when the
// watch ends.
func (m *Manager) followPrimary(ctx context.Context, def Def, stop context.CancelCauseFunc) <-chan struct{} {
	done := make(chan struct{})
	if def.Group == "" {
		close(done)
		return done
	}
	t, err := m.topology(def)
	if err != nil {
		close(done)
		return done
	}
	from := t.primary.ID
	go func() {
		defer close(done)
		tick := time.NewTicker(followPrimaryInterval)
		defer tick.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
			}
			if now, err := m.topology(def); err == nil && now.primary.ID != from && !now.primary.NeedsRejoin {
				stop(errPrimaryMoved)
				return
			}
		}
	}()
	return done
}

// source is where the link reads: the primary instance of the group's database as the store names it now, with
// a failover-safe gate bound to that primary and its geo-secondary; or, with no group, a plain connection string.
func (m *Manager) source(def Def) (string, func(context.Context, lsn.LSN) error, error) {
	if def.Group == "" {
		return def.Source, nil, nil
	}
	t, err := m.topology(def)
	if err != nil {
		return "", nil, err
	}
	src := m.cl.Handle(&t.primary).ConnString(def.Database)
	if def.Unprotected {
		return src, nil, nil
	}
	return src, m.gate(def, t.primary.ID, t.secondary.ID), nil
}

// Target returns a running link's target store (nil if it does not run).
func (m *Manager) Target(name string) *target.Store {
	m.mu.Lock()
	defer m.mu.Unlock()
	if w := m.links[name]; w != nil {
		return w.def.Target
	}
	return nil
}

func (w *worker) setErr(err error) {
	if err == nil {
		return
	}
	w.mu.Lock()
	w.lastErr = err.Error()
	w.mu.Unlock()
}

// errSourceMoved ends a link run whose source is no longer the group's primary: the next run reads from the new
// primary, from the link's checkpoint on its slot copy.
var errSourceMoved = errors.New("the failover group's primary or geo-secondary changed; resuming from the new primary")

// gate waits until the geo-secondary has flushed past end. It is bound to the primary the link reads from and to
// that primary's geo-secondary: once the store names another primary or secondary (a failover, a rejoin), it
// fails, because another instance's WAL positions say nothing about the WAL the link received (a former primary
// rejoined after a forced failover reports positions of the new timeline, past transactions it lost). It asks the
// standby itself (pg_last_wal_receive_lsn): the standby stays reachable while a primary shuts down for a planned
// failover, when the primary accepts no new connection.
func (m *Manager) gate(def Def, primary, secondary string) func(ctx context.Context, end lsn.LSN) error {
	var mu sync.Mutex
	var flushed lsn.LSN // what the secondary reported last; it only grows
	silence := m.SourceSilence
	if silence <= 0 {
		silence = 30 * time.Second
	}
	return func(ctx context.Context, end lsn.LSN) error {
		// While it waits, the link reads nothing from its source, so it cannot tell a frozen or cut-off primary
		// from a slow geo-secondary: the primary is asked now and then, and a run whose primary stays silent
		// ends (its status then says so) instead of showing Running over a source that is gone.
		answered, asked := time.Now(), time.Now()
		for {
			mu.Lock()
			known := flushed >= end
			mu.Unlock()
			if known {
				return nil
			}
			t, err := m.topology(def)
			if err != nil {
				return err
			}
			if t.primary.ID != primary || t.secondary.ID != secondary {
				return errSourceMoved
			}
			if secondary == "" {
				return nil // no geo-secondary: no failover can lose what the link applied
			}
			if time.Since(asked) > 2*time.Second {
				asked = time.Now()
				pctx, cancel := context.WithTimeout(ctx, 2*time.Second)
				_, perr := m.cl.Handle(&t.primary).IsInRecovery(pctx)
				cancel()
				if perr == nil {
					answered = time.Now()
				} else if quiet := time.Since(answered); quiet > silence {
					return fmt.Errorf("the source has not answered for %s while the link waited for its geo-secondary: %w",
						quiet.Round(time.Second), perr)
				}
			}
			qctx, cancel := context.WithTimeout(ctx, 2*time.Second)
			got, err := m.cl.Handle(&t.secondary).ReceiveLSN(qctx)
			cancel()
			if err == nil {
				mu.Lock()
				flushed = max(flushed, got)
				mu.Unlock()
				if got >= end {
					return nil
				}
			}
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(5 * time.Millisecond):
			}
		}
	}
}

// progress is what the slot copy keeper needs of a running link: its phase and checkpoint (ok false while it has
// not started yet).
type progress func() (phase string, checkpoint lsn.LSN, ok bool)

// progress is the local link's phase and checkpoint.
func (w *worker) progress() (string, lsn.LSN, bool) {
	w.mu.Lock()
	l := w.link
	w.mu.Unlock()
	if l == nil {
		return "", 0, false
	}
	st := l.Status()
	return st.Phase, st.Checkpoint, true
}

// setCopyErr records why the last round of the slot copy keeper failed ("" when it did not).
func (w *worker) setCopyErr(msg string) {
	w.mu.Lock()
	w.copyErr = msg
	w.mu.Unlock()
}

// keepSlotCopy keeps a copy of the link's slot on the geo-secondary, advanced to the link's checkpoint (as
// progress reports it). A round that fails is retried with backoff, and setErr says why the copy is not kept.
func (m *Manager) keepSlotCopy(ctx context.Context, def Def, p progress, setErr func(string)) {
	lastErr := ""
	wait := time.Second
	var ks keeperState
	for {
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
		phase, checkpoint, ok := p()
		if !ok || (phase != "Streaming" && phase != "Idle") { // Idle: between two batches
			continue
		}
		err := m.syncCopy(ctx, def, checkpoint, &ks)
		if ctx.Err() != nil {
			return
		}
		if msg := fmt.Sprint(err); err != nil && msg != lastErr {
			m.log.Warn("link slot copy", "link", def.Name, "err", err)
		}
		lastErr = fmt.Sprint(err)
		if err != nil {
			setErr("slot copy on the geo-secondary: " + err.Error())
			wait = min(2*wait, maxCopyBackoff)
		} else {
			setErr("")
			wait = time.Second
		}
	}
}

// maxCopyBackoff bounds the wait between two failed rounds of the slot copy keeper.
const maxCopyBackoff = 30 * time.Second

// maxAdvanceFailures: a copy whose advance fails this many times in a row (a stale copy, say, whose WAL the
// standby removed) is replaced by a fresh copy of the primary's slot.
const maxAdvanceFailures = 5

// standbyHolds is how far a standby holds WAL: what it received and flushed, or (its WAL receiver not yet
// started after a restart) what it replayed.
func standbyHolds(ctx context.Context, hs *instance.Instance) (lsn.LSN, error) {
	recv, rerr := hs.ReceiveLSN(ctx)
	replay, perr := hs.ReplayLSN(ctx)
	if rerr != nil && perr != nil {
		return 0, fmt.Errorf("read the geo-secondary's flush position: %w", rerr)
	}
	return max(recv, replay), nil
}

// keeperState is what the slot copy keeper remembers between rounds.
type keeperState struct {
	advanceFailures int  // in a row
	restartStandby  bool // the keeper stopped the standby to copy the slot, and starting it again failed
}

func (m *Manager) syncCopy(ctx context.Context, def Def, checkpoint lsn.LSN, ks *keeperState) error {
	t, err := m.topology(def)
	if err != nil || t.secondary.ID == "" || !t.secondary.Seeded || t.secondary.NeedsRejoin {
		return err
	}
	slot := slotOf(def)
	hs := m.cl.Handle(&t.secondary)
	if _, running := hs.Running(); !running {
		if ks.restartStandby { // the keeper stopped it: starting it again is its job
			lctx, unlock, ok := m.cl.TryLock(ctx, t.group.Key())
			if !ok {
				return fmt.Errorf("the geo-secondary %s did not start after the slot copy; an operation runs", t.secondary.ID)
			}
			err := hs.Start(lctx)
			unlock()
			if err != nil {
				return fmt.Errorf("the geo-secondary %s did not start after the slot copy: %w", t.secondary.ID, err)
			}
			ks.restartStandby = false
			return nil
		}
		return fmt.Errorf("the geo-secondary %s is not running", t.secondary.ID)
	}
	if !hs.IsStandby() {
		return fmt.Errorf("the geo-secondary %s is not a standby", t.secondary.ID)
	}
	have, err := hs.SlotConfirmedLSN(ctx, slot)
	if err != nil {
		return err
	}
	if have == 0 {
		ks.advanceFailures = 0
		return m.copySlot(ctx, def, t, slot, ks)
	}
	// Never past what the standby holds: on a standby PostgreSQL would stop at its replay position anyway, but
	// the link's checkpoint may come from before the gate (a snapshot's consistent point).
	flushed, err := standbyHolds(ctx, hs)
	if err != nil {
		return err
	}
	to := min(checkpoint, flushed)
	if to <= have {
		ks.advanceFailures = 0
		return nil
	}
	if err := hs.AdvanceSlot(ctx, def.Database, slot, to); err != nil {
		ks.advanceFailures++
		if ks.advanceFailures < maxAdvanceFailures {
			return fmt.Errorf("advance the copy to %s (failure %d in a row): %w", to, ks.advanceFailures, err)
		}
		m.log.Warn("link slot copy cannot be advanced; replacing it", "link", def.Name, "slot", slot, "failures", ks.advanceFailures, "err", err)
		if cerr := m.copySlot(ctx, def, t, slot, ks); cerr != nil {
			return fmt.Errorf("advance the copy to %s failed %d times in a row (%v); replacing it failed: %w", to, ks.advanceFailures, err, cerr)
		}
		ks.advanceFailures = 0
		return nil
	}
	ks.advanceFailures = 0
	return nil
}

// copySlot copies the slot's state file from the primary into the standby and restarts the standby once, under
// the group lock so that no failover runs meanwhile. The copy confirms no more than the standby had flushed
// before it stopped: the primary's slot may confirm everything it received (a link with nothing pending reports
// all of it flushed), up to the primary's WAL end, and a copy confirming WAL the standby lacks would, after a
// forced failover, start decoding past the new timeline's fork point and skip the new primary's transactions
// in between. (Not capped at the link's checkpoint: an idle link's slot confirms, and moves its restart point,
// past its last checkpoint, and nothing the link needs lies between.)
func (m *Manager) copySlot(ctx context.Context, def Def, t *topology, slot string, ks *keeperState) error {
	ctx, unlock, ok := m.cl.TryLock(ctx, t.group.Key())
	if !ok {
		return nil // an operation runs; next time
	}
	defer unlock()
	hp, hs := m.cl.Handle(&t.primary), m.cl.Handle(&t.secondary)
	flushed, err := standbyHolds(ctx, hs)
	if err != nil {
		return err
	}
	files, err := hp.ReadSlotFiles(ctx, slot)
	if err != nil {
		return fmt.Errorf("read the slot on the primary: %w", err)
	}
	confirmed, err := files.CapConfirmedFlush(flushed)
	if err != nil {
		return fmt.Errorf("copy the slot: %w", err)
	}
	// Stopped, the standby must start again before a failover may have it: from here on a failover waits.
	ctx, cancel, err := cluster.Committed(ctx)
	defer cancel()
	if err != nil {
		return err
	}
	if err := hs.Stop(ctx, "fast"); err != nil {
		return err
	}
	werr := hs.WriteSlotFiles(slot, files)
	if err := hs.Start(ctx); err != nil {
		ks.restartStandby = true // the next rounds start it again
		return fmt.Errorf("restart the standby after copying the slot: %w", err)
	}
	if werr != nil {
		return fmt.Errorf("write slot copy: %w", werr)
	}
	m.log.Info("link slot copied to the geo-secondary", "link", def.Name, "slot", slot, "standby", t.secondary.ID, "confirmed", confirmed)
	return nil
}

// DropOwned drops what a deleted link owns on its source: its slot and publication on the primary and, for a
// group's link, the slot copy on the geo-secondary (under the group lock, so that no slot copy of the stopped
// link's keeper is being written meanwhile). Bounded by ctx; idempotent.
func (m *Manager) DropOwned(ctx context.Context, def Def) error {
	m.mu.Lock()
	delete(m.walStatus, def.Name)
	m.mu.Unlock()
	if def.Group == "" {
		return link.DropOwned(ctx, def.Source, def.Name, def.Slot, true)
	}
	t, err := m.topology(def)
	if err != nil {
		return err
	}
	var errs []error
	if err := link.DropOwned(ctx, m.cl.Handle(&t.primary).ConnString(def.Database), def.Name, def.Slot, true); err != nil {
		errs = append(errs, fmt.Errorf("on the primary: %w", err))
	}
	if t.secondary.ID != "" {
		for {
			lctx, unlock, ok := m.cl.TryLock(ctx, t.group.Key())
			if ok {
				hs := m.cl.Handle(&t.secondary)
				if _, running := hs.Running(); running {
					if err := link.DropOwned(lctx, hs.ConnString(def.Database), def.Name, def.Slot, false); err != nil {
						errs = append(errs, fmt.Errorf("its copy on the geo-secondary: %w", err))
					}
				}
				unlock()
				break
			}
			select {
			case <-ctx.Done():
				return errors.Join(append(errs, fmt.Errorf("its copy on the geo-secondary: %w", ctx.Err()))...)
			case <-time.After(50 * time.Millisecond):
			}
		}
	}
	return errors.Join(errs...)
}

// slotWatchInterval is how often a running link's slot is checked for the WAL it holds.
const slotWatchInterval = 30 * time.Second

// watchSlot checks the running link's slot every slotWatchInterval (SlotWAL logs when it is about to be lost).
func (m *Manager) watchSlot(ctx context.Context, def Def) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-time.After(slotWatchInterval):
		}
		qctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		_, _ = m.SlotWAL(qctx, def)
		cancel()
	}
}

// SlotWAL reads the WAL the link's slot holds on its source (the group's primary, or the plain source), whether
// the link runs or not, and logs a warning when the slot's wal_status becomes unreserved: it holds more than
// max_slot_wal_keep_size, and the next checkpoint may invalidate it (the link then resynchronises every table).
func (m *Manager) SlotWAL(ctx context.Context, def Def) (link.SlotWAL, error) {
	src := def.Source
	if def.Group != "" {
		t, err := m.topology(def)
		if err != nil {
			return link.SlotWAL{}, err
		}
		src = m.cl.Handle(&t.primary).ConnString(def.Database)
	}
	w, err := link.ReadSlotWAL(ctx, src, def.Name, slotOf(def))
	if err != nil {
		return w, err
	}
	m.mu.Lock()
	prev := m.walStatus[def.Name]
	m.walStatus[def.Name] = w.WALStatus
	m.mu.Unlock()
	if w.WALStatus == "unreserved" && prev != "unreserved" {
		m.log.Warn("link slot holds more WAL than max_slot_wal_keep_size and may be invalidated at the next checkpoint "+
			"(the link would then resynchronise every table)", "link", def.Name, "slot", slotOf(def), "retainedBytes", w.RetainedBytes)
	}
	return w, nil
}
