package links

// Cluster mode: every controller, elected or waiting, runs link connections, and each link runs in exactly one
// process at a time. The process that runs a link holds its key <prefix>/_links/<workspace>/<name> under a lease of
// its own (created only if no other process holds it: an etcd transaction on the key's create revision), publishes
// the link's status there, and stops the link as soon as it cannot be sure of the lease any more (lease.Guard,
// before etcd can expire it), so that the next holder never overlaps with it.
//
// Who runs a link (its candidates): a link into a DuckDb file runs only on the controller whose host holds the
// file (LinkedService.Host); a link into PostgreSQL runs on the elected controller. When the process that ran a
// link stops, its lease is revoked (or expires, if it died) and the next candidate takes the link up from its
// checkpoint, which lives in the target with the rows (exactly once holds across processes as across restarts).
//
// The slot copy on the geo-secondary is kept by the elected controller for every running link, wherever the link
// runs: copying restarts the geo-secondary (only the elected controller may ask an agent for that) under the
// group's lock, which only the elected controller's operations take. It advances the copy to the checkpoint the
// link's runner publishes (never past what the link has durably applied: a published checkpoint is at most old).

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"

	"github.com/fogo-db/fogo/internal/controlplane/store"
	"github.com/fogo-db/fogo/internal/errcatalog"
	"github.com/fogo-db/fogo/internal/lease"
	"github.com/fogo-db/fogo/internal/link"
	"github.com/fogo-db/fogo/internal/postgres/lsn"
)

// RunnerConfig configures a cluster-mode link runner.
type RunnerConfig struct {
	Client *clientv3.Client
	Prefix string // the store's key prefix
	// TTL is the lease of the links this process runs (it stops them a third of it before it could expire).
	TTL time.Duration
	// Leads reports whether this process is the elected controller now (it runs the links into PostgreSQL and
	// keeps every link's slot copy).
	Leads func() bool
	// ControllersPrefix holds a key per live controller by name: a DuckDb link whose controller has none waits.
	ControllersPrefix string
	// Interval is how often the runner reads the links' desired state (default RunnerInterval).
	Interval time.Duration
	Logger   *slog.Logger
}

// RunnerInterval is how often a runner reads the links' desired state from the store.
const RunnerInterval = 300 * time.Millisecond

// releaseTimeout bounds how long a stop or a delete waits for the process running the link to let it go.
const releaseTimeout = 30 * time.Second

// retryStart is how long a link that could not be started here (its target could not be opened) waits before
// it is tried again: the process keeps it meanwhile, and its status says why it failed.
const retryStart = 5 * time.Second

// publishEvery is how often a running link's status is written to its key at most (a phase change at once).
const publishEvery = time.Second

// Runner runs, in cluster mode, the link connections whose candidate this process is (see the file comment).
type Runner struct {
	cfg RunnerConfig
	cat *Catalog
	log *slog.Logger

	stop context.CancelFunc
	done chan struct{}

	mu     sync.Mutex // one round at a time; Start, Stop and Delete run one of their own
	closed bool       // Close ran: no round takes a link up any more
	sess   *concurrency.Session
	gen    context.Context // the links' base: ended the moment the session's lease is in doubt
	endGen context.CancelFunc
	held   map[string]*heldLink // links this process runs, by key

	keepMu  sync.Mutex // guards keepers (the API reads their errors while a round may be long)
	keepers map[string]*remoteKeeper

	seenMu sync.Mutex
	seen   map[string]published // every running link's last published status, as read in the last round
}

// heldLink is a link whose key this process holds.
type heldLink struct {
	pinned        bool      // a DuckDb link whose file is on this host (else it runs here because this process leads)
	failedAt      time.Time // when starting it here last failed (it is tried again after retryStart)
	lastPublished time.Time
	lastPhase     string
	lastValue     string
}

// published is the value of a link's key: where it runs and its status there.
type published struct {
	RunsOn string      `json:"runsOn"`
	Status link.Status `json:"status"`
}

// remoteKeeper keeps one link's slot copy in the elected controller.
type remoteKeeper struct {
	cancel  context.CancelFunc
	done    chan struct{}
	mu      sync.Mutex
	copyErr string
}

// NewRunner attaches a runner to the catalog (whose Host names this controller) and starts it; Close stops it.
func NewRunner(cat *Catalog, cfg RunnerConfig) *Runner {
	if cfg.Interval <= 0 {
		cfg.Interval = RunnerInterval
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Leads == nil {
		cfg.Leads = func() bool { return false }
	}
	ctx, stop := context.WithCancel(context.Background())
	r := &Runner{cfg: cfg, cat: cat, log: cfg.Logger, stop: stop, done: make(chan struct{}),
		held: map[string]*heldLink{}, keepers: map[string]*remoteKeeper{}, seen: map[string]published{}}
	cat.runner = r
	go r.run(ctx)
	return r
}

// linksKey is the key of a link (by its catalog key "workspace/name") under the store's prefix.
func (r *Runner) linksKey(name string) string { return r.cfg.Prefix + "/_links/" + name }

func (r *Runner) run(ctx context.Context) {
	defer close(r.done)
	t := time.NewTicker(r.cfg.Interval)
	defer t.Stop()
	lastErr := ""
	for {
		err := r.round(ctx, "")
		if msg := fmt.Sprint(err); err != nil && msg != lastErr && ctx.Err() == nil {
			r.log.Warn("run link connections", "err", err)
		}
		lastErr = fmt.Sprint(err)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// Close stops every link this process runs and gives their keys up at once (the next candidates take them up
// without waiting for the lease to expire).
func (r *Runner) Close() {
	r.stop()
	<-r.done
	r.mu.Lock()
	defer r.mu.Unlock()
	r.closed = true
	r.dropSession(true)
	r.keepMu.Lock()
	names := make([]string, 0, len(r.keepers))
	for name := range r.keepers {
		names = append(names, name)
	}
	r.keepMu.Unlock()
	for _, name := range names {
		r.stopKeeper(name)
	}
}

// ensureSession opens the lease this process runs links under, and makes a fresh one when the last is in doubt:
// then every link it ran has already been stopped (their base ended with the guard), and their keys stay until
// the old lease expires, when the candidates (this one included) take them up again.
func (r *Runner) ensureSession(ctx context.Context) error {
	if r.sess != nil && r.gen.Err() == nil {
		return nil
	}
	if r.sess != nil {
		r.log.Warn("the lease of this process's link connections is in doubt: they stopped; taking them up again under a new lease")
		r.dropSession(false)
	}
	ttl := r.cfg.TTL
	if ttl <= 0 {
		ttl = 10 * time.Second
	}
	// Granted here, bounded (a session would wait for etcd for ever); the session only keeps it alive.
	gctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	granted, err := r.cfg.Client.Grant(gctx, int64(max(ttl.Round(time.Second)/time.Second, 1)))
	cancel()
	if err != nil {
		return fmt.Errorf("open the links' lease: %w", err)
	}
	s, err := concurrency.NewSession(r.cfg.Client, concurrency.WithLease(granted.ID), concurrency.WithContext(context.WithoutCancel(ctx)))
	if err != nil {
		return fmt.Errorf("open the links' lease: %w", err)
	}
	gen, endGen := context.WithCancel(context.Background())
	lost, err := lease.Guard(gen, r.cfg.Client, s.Lease(), ttl, ttl/3, s.Done())
	if err != nil {
		endGen()
		s.Close()
		return fmt.Errorf("watch the links' lease: %w", err)
	}
	go func() {
		<-lost
		endGen() // every link of this lease stops now, before etcd could expire it and let another process run them
	}()
	r.sess, r.gen, r.endGen = s, gen, endGen
	r.cat.m.SetBase(gen)
	return nil
}

// dropSession stops every link run under the current lease and ends it: revoked (their keys go at once) when
// revoke, else left to expire.
func (r *Runner) dropSession(revoke bool) {
	if r.sess == nil {
		return
	}
	r.endGen()
	for name := range r.held {
		r.cat.m.Stop(name)
		delete(r.held, name)
	}
	if revoke {
		_ = r.sess.Close()
	} else {
		r.sess.Orphan()
	}
	r.sess = nil
}

// desired is one link connection as the store has it, with what decides where it runs.
type desired struct {
	lc        LinkConnection
	target    LinkedService
	hasTarget bool
}

// readDesired lists every link connection and its target linked service.
func (r *Runner) readDesired() (map[string]desired, error) {
	out := map[string]desired{}
	err := r.cat.m.st.View(func(tx *store.Tx) error {
		all, err := store.List[LinkConnection](tx, store.LinkConnections, "")
		if err != nil {
			return err
		}
		for _, lc := range all {
			d := desired{lc: lc}
			d.hasTarget, err = tx.Get(store.LinkedServices, key(lc.Workspace, lc.TargetService), &d.target)
			if err != nil {
				return err
			}
			out[key(lc.Workspace, lc.Name)] = d
		}
		return nil
	})
	return out, err
}

// candidate says whether this process may run the link.
func (r *Runner) candidate(d desired) bool {
	if !d.hasTarget {
		return false
	}
	if d.target.Type == TypeDuckDB {
		return d.target.Host == r.cat.host
	}
	return r.cfg.Leads()
}

// holder is a link's key as read: its value and the lease it is held under.
type holder struct {
	value published
	lease clientv3.LeaseID
}

func (r *Runner) readHolders(ctx context.Context) (map[string]holder, error) {
	qctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	res, err := r.cfg.Client.Get(qctx, r.linksKey(""), clientv3.WithPrefix())
	if err != nil {
		return nil, fmt.Errorf("read which processes run the links: %w", err)
	}
	out := map[string]holder{}
	for _, kv := range res.Kvs {
		var h holder
		_ = json.Unmarshal(kv.Value, &h.value)
		h.lease = clientv3.LeaseID(kv.Lease)
		out[strings.TrimPrefix(string(kv.Key), r.linksKey(""))] = h
	}
	return out, nil
}

// round brings this process's links in step with the desired state: it gives up the links it should not run
// (stopped, deleted, no longer its own, or its key lost), takes up those it should run and nobody runs, publishes
// the status of those it runs, and, in the elected controller, keeps every running link's slot copy. It returns
// the error of starting the link named only (Start waits for it), else of the round.
func (r *Runner) round(ctx context.Context, only string) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return errors.New("this controller is stopping: it runs no link any more")
	}
	if err := r.ensureSession(ctx); err != nil {
		return err
	}
	if !r.cfg.Leads() {
		// Leadership lost (or not yet ready): the links run here as the leader's go at once, whether or not the
		// store can still be read (a deposed controller's store requests end with its leadership).
		for name, h := range r.held {
			if !h.pinned {
				r.release(ctx, name)
			}
		}
	}
	want, err := r.readDesired()
	if err != nil {
		return fmt.Errorf("read the link connections: %w", err)
	}
	holders, err := r.readHolders(ctx)
	if err != nil {
		return err
	}
	mine := r.sess.Lease()
	// Give up what this process should not run (first: a link moving between processes must be let go of).
	for name := range r.held {
		d, ok := want[name]
		h, held := holders[name]
		switch {
		case !held || h.lease != mine:
			r.log.Warn("a link's key is no longer held by this process (its lease was in doubt): stopping it here", "link", name)
			r.cat.m.Stop(name)
			delete(r.held, name)
		case !ok || !d.lc.Running || !r.candidate(d):
			r.release(ctx, name)
		}
	}
	var onlyErr error
	for name, d := range want {
		if !d.lc.Running || !r.candidate(d) {
			continue
		}
		if h, ok := r.held[name]; ok {
			if !h.failedAt.IsZero() && time.Since(h.failedAt) >= retryStart {
				r.retry(name, h, &d.lc)
			}
			r.publish(ctx, name, false)
			continue
		}
		if _, ok := holders[name]; ok {
			continue // another process runs it (or its lease has not expired yet)
		}
		if err := r.take(ctx, name, d); err != nil {
			if name == only {
				onlyErr = err
			}
			r.log.Error("take up link connection", "link", name, "err", err)
		}
	}
	r.remember(holders)
	r.keep(want, holders)
	return onlyErr
}

// take acquires a link's key (only if no process holds it) and starts the link here. A link that cannot be started
// (its target cannot be opened, say) stays held and shows Failed with the reason until it is stopped.
func (r *Runner) take(ctx context.Context, name string, d desired) error {
	val, err := json.Marshal(published{RunsOn: r.cat.host, Status: link.Status{Phase: "Starting"}})
	if err != nil {
		return err
	}
	k := r.linksKey(name)
	qctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	res, err := r.cfg.Client.Txn(qctx).
		If(clientv3.Compare(clientv3.CreateRevision(k), "=", 0)).
		Then(clientv3.OpPut(k, string(val), clientv3.WithLease(r.sess.Lease()))).
		Commit()
	cancel()
	if err != nil {
		return fmt.Errorf("acquire the link's key: %w", err)
	}
	if !res.Succeeded {
		return nil // another process was first
	}
	h := &heldLink{pinned: d.target.Type == TypeDuckDB}
	r.held[name] = h
	r.log.Info("running link connection here", "link", name, "controller", r.cat.host)
	if err := r.cat.run(&d.lc); err != nil {
		r.failed(name, h, err)
		r.publish(ctx, name, true)
		return err
	}
	return nil
}

// failed records that a held link could not be started here: it shows Failed with the reason until it is
// started on a later try (retry), stopped, or taken elsewhere.
func (r *Runner) failed(name string, h *heldLink, err error) {
	msg := err.Error()
	if e, ok := errcatalog.As(err); ok {
		msg = e.Message
	}
	r.cat.m.Stop(name) // a former failure's record, so that this one's reason shows
	r.cat.m.Failed(name, errors.New(msg))
	h.failedAt = time.Now()
}

// retry starts again a held link that could not be started (its target was unreachable, say).
func (r *Runner) retry(name string, h *heldLink, lc *LinkConnection) {
	r.cat.m.Stop(name)
	if err := r.cat.run(lc); err != nil {
		r.failed(name, h, err)
		return
	}
	h.failedAt = time.Time{}
	r.log.Info("link connection started here after a failed start", "link", name)
}

// release stops a link this process runs and deletes its key (if still held under this lease).
func (r *Runner) release(ctx context.Context, name string) {
	r.cat.m.Stop(name)
	delete(r.held, name)
	k := r.linksKey(name)
	qctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if _, err := r.cfg.Client.Txn(qctx).
		If(clientv3.Compare(clientv3.LeaseValue(k), "=", r.sess.Lease())).
		Then(clientv3.OpDelete(k)).
		Commit(); err != nil {
		r.log.Warn("give up a link's key (it goes with this process's lease)", "link", name, "err", err)
	}
	r.log.Info("link connection no longer runs here", "link", name, "controller", r.cat.host)
}

// publish writes the link's status to its key (at most every publishEvery unless its phase changed, or now).
func (r *Runner) publish(ctx context.Context, name string, now bool) {
	h := r.held[name]
	if h == nil {
		return
	}
	st, ok := r.cat.m.Status(name)
	if !ok {
		return
	}
	if !now && st.Phase == h.lastPhase && time.Since(h.lastPublished) < publishEvery {
		return
	}
	raw, err := json.Marshal(published{RunsOn: r.cat.host, Status: st})
	if err != nil || string(raw) == h.lastValue {
		return
	}
	k := r.linksKey(name)
	qctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if _, err := r.cfg.Client.Txn(qctx).
		If(clientv3.Compare(clientv3.LeaseValue(k), "=", r.sess.Lease())).
		Then(clientv3.OpPut(k, string(raw), clientv3.WithLease(r.sess.Lease()))).
		Commit(); err != nil {
		return
	}
	h.lastPublished, h.lastPhase, h.lastValue = time.Now(), st.Phase, string(raw)
}

// remember keeps the published statuses read in this round (for the slot copy keepers and the API).
func (r *Runner) remember(holders map[string]holder) {
	r.seenMu.Lock()
	defer r.seenMu.Unlock()
	r.seen = map[string]published{}
	for name, h := range holders {
		r.seen[name] = h.value
	}
}

// progressOf is the phase and checkpoint of a running link: from this process if it runs it, else as published.
func (r *Runner) progressOf(name string) progress {
	return func() (string, lsn.LSN, bool) {
		if st, ok := r.cat.m.Status(name); ok {
			return st.Phase, st.Checkpoint, true
		}
		r.seenMu.Lock()
		p, ok := r.seen[name]
		r.seenMu.Unlock()
		return p.Status.Phase, p.Status.Checkpoint, ok
	}
}

// keep runs, in the elected controller, a slot copy keeper for every running link of a failover group (wherever
// it runs), and stops those of links that stopped (or all of them in a controller that does not lead).
func (r *Runner) keep(want map[string]desired, holders map[string]holder) {
	leads := r.cfg.Leads()
	r.keepMu.Lock()
	var gone []string
	for name := range r.keepers {
		d, ok := want[name]
		if _, held := holders[name]; !leads || !ok || !d.lc.Running || !held {
			gone = append(gone, name)
		}
	}
	r.keepMu.Unlock()
	for _, name := range gone {
		r.stopKeeper(name)
	}
	if !leads {
		return
	}
	for name, d := range want {
		r.keepMu.Lock()
		_, ok := r.keepers[name]
		r.keepMu.Unlock()
		if ok || !d.lc.Running {
			continue
		}
		if _, held := holders[name]; !held {
			continue
		}
		def, err := r.cat.def(&d.lc)
		if err != nil || def.Group == "" || def.Unprotected {
			continue
		}
		ctx, cancel := context.WithCancel(context.Background())
		k := &remoteKeeper{cancel: cancel, done: make(chan struct{})}
		r.keepMu.Lock()
		r.keepers[name] = k
		r.keepMu.Unlock()
		go func() {
			defer close(k.done)
			r.cat.m.keepSlotCopy(ctx, def, r.progressOf(name), func(msg string) {
				k.mu.Lock()
				k.copyErr = msg
				k.mu.Unlock()
			})
		}()
	}
}

func (r *Runner) stopKeeper(name string) {
	r.keepMu.Lock()
	k := r.keepers[name]
	delete(r.keepers, name)
	r.keepMu.Unlock()
	if k == nil {
		return
	}
	k.cancel()
	<-k.done
}

// copyErr is why the elected controller's keeper of the link's slot copy failed last ("" if it did not).
func (r *Runner) copyErr(name string) string {
	r.keepMu.Lock()
	k := r.keepers[name]
	r.keepMu.Unlock()
	if k == nil {
		return ""
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.copyErr
}

// startNow runs a round at once and returns the error of starting the link there, if this process is its
// candidate (Start answers with it).
func (r *Runner) startNow(name string) error {
	return r.round(context.Background(), name)
}

// stopNow runs a round at once (a link this process runs and should not is stopped), then waits until no process
// runs the link.
func (r *Runner) stopNow(name string) error {
	if err := r.round(context.Background(), ""); err != nil {
		return err
	}
	deadline := time.Now().Add(releaseTimeout)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		res, err := r.cfg.Client.Get(ctx, r.linksKey(name))
		cancel()
		if err == nil && len(res.Kvs) == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			who := "another process"
			if err == nil {
				var p published
				if json.Unmarshal(res.Kvs[0].Value, &p) == nil && p.RunsOn != "" {
					who = "controller " + p.RunsOn
				}
			} else {
				who += fmt.Sprintf(" (%v)", err)
			}
			return fmt.Errorf("the link is recorded as stopped, but %s still runs it after %s", who, releaseTimeout)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// placement is where a link runs, from its key: its status and the controller that runs it (ok false when no
// process runs it).
func (r *Runner) placement(name string) (published, bool, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	res, err := r.cfg.Client.Get(ctx, r.linksKey(name))
	if err != nil {
		return published{}, false, fmt.Errorf("read where the link runs: %w", err)
	}
	if len(res.Kvs) == 0 {
		return published{}, false, nil
	}
	var p published
	if err := json.Unmarshal(res.Kvs[0].Value, &p); err != nil {
		return published{}, false, fmt.Errorf("read where the link runs: %w", err)
	}
	return p, true, nil
}

// waiting says why a running link runs nowhere now.
func (r *Runner) waiting(lc *LinkConnection) string {
	tgt, err := r.cat.LinkedService(lc.Workspace, lc.TargetService)
	if err != nil {
		return "The link waits: its target linked service cannot be read: " + err.Error()
	}
	if tgt.Type != TypeDuckDB {
		return "The link waits for the elected controller to take it up (the process that ran it may hold it until its lease expires)."
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	res, err := r.cfg.Client.Get(ctx, r.cfg.ControllersPrefix+tgt.Host)
	if err == nil && len(res.Kvs) == 0 {
		return fmt.Sprintf("The link waits for controller %q, whose host holds its DuckDb target file: that controller is not running. "+
			"It resumes from its checkpoint when that controller is back.", tgt.Host)
	}
	return fmt.Sprintf("The link waits for controller %q, whose host holds its DuckDb target file, to take it up.", tgt.Host)
}
