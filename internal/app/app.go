package app

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/fogo-db/fogo/internal/api/admin"
	"github.com/fogo-db/fogo/internal/api/arm"
	"github.com/fogo-db/fogo/internal/api/synapse"
	"github.com/fogo-db/fogo/internal/controlplane/cluster"
	"github.com/fogo-db/fogo/internal/controlplane/failover"
	"github.com/fogo-db/fogo/internal/controlplane/leader"
	"github.com/fogo-db/fogo/internal/controlplane/links"
	"github.com/fogo-db/fogo/internal/controlplane/lostreport"
	"github.com/fogo-db/fogo/internal/controlplane/model"
	"github.com/fogo-db/fogo/internal/controlplane/operations"
	"github.com/fogo-db/fogo/internal/controlplane/service"
	"github.com/fogo-db/fogo/internal/controlplane/store"
	"github.com/fogo-db/fogo/internal/lease"
	"github.com/fogo-db/fogo/internal/listener"
	"github.com/fogo-db/fogo/internal/metrics"
	"github.com/fogo-db/fogo/internal/postgres/instance"
	"github.com/fogo-db/fogo/internal/postgres/pgbin"
)

// Options are the settings of `fogo serve`.
type Options struct {
	DataDir           string
	Listen            string // API address, default 127.0.0.1:7400
	TLSCert, TLSKey   string
	PortLow, PortHigh int
	PGBin             string
	AdvertiseHost     string
	MinGraceMinutes   int32
	// MaxGroupsPerServer and MaxDatabasesPerServer are the per-server limits (default 100 each).
	MaxGroupsPerServer, MaxDatabasesPerServer int
	CatchUpTimeout                            time.Duration
	TryPlannedTimeout                         time.Duration
	// KeepInstancesOnExit leaves PostgreSQL running when fogo stops (default: stop them).
	KeepInstancesOnExit bool
	// ReconcileInterval is the observer period (default 1s).
	ReconcileInterval time.Duration
	Logger            *slog.Logger
	// GatewayListenHost is the address the server endpoints and group listeners bind (default 127.0.0.1).
	GatewayListenHost string
	// GatewayTLSCert and GatewayTLSKey, when set, make the endpoints and listeners answer SSLRequest with TLS.
	GatewayTLSCert, GatewayTLSKey string
	// ListenerHoldTimeout bounds how long new read-write sessions wait during a failover (default 30s).
	ListenerHoldTimeout time.Duration
	// GraceUnit is the length of one grace-period "minute" of the Automatic policy (default 1m; tests shorten it).
	GraceUnit time.Duration
	// PauseBeforeStep pauses before the named operation steps, comma-separated (tests only).
	PauseBeforeStep string
	// PauseFor is how long PauseBeforeStep pauses (default 30s).
	PauseFor time.Duration
	// LinkTargetDirs are absolute directories DuckDB link targets may live in besides DATA-DIR/link-targets.
	LinkTargetDirs []string
	// InstancesDir holds the instances' data directories (default DATA-DIR/instances; see instancesDir).
	InstancesDir string
	// SecretsKeyFile is the key file that seals the secrets in the store (default DATA-DIR/secrets.key).
	SecretsKeyFile string
	// MaxSlotWALKeepSize bounds the WAL a replication slot may hold on every instance (max_slot_wal_keep_size, a
	// PostgreSQL size such as "10GB"; "-1" is unbounded). Default DefaultMaxSlotWALKeepSize.
	MaxSlotWALKeepSize string
	// InstanceSettings are more PostgreSQL settings for every instance (tests: a tiny wal_keep_size).
	InstanceSettings map[string]string
	// Etcd, if set, keeps the control-plane state in etcd instead of DATA-DIR/state.db. Several fogo processes may
	// share it: one is elected the controller (ControllerName, LeaderTTL) and the others wait in Start to take over.
	Etcd           *store.EtcdConfig
	ControllerName string        // default host name and API address
	LeaderTTL      time.Duration // the controller lease (default leader.DefaultTTL)
	// ClusterCA is the CA file that signs the agents' host API certificates (cluster mode; default the system's
	// roots).
	ClusterCA string
}

// DefaultMaxSlotWALKeepSize is the default bound on the WAL one slot may hold: a geo-secondary or a link that
// stops consuming can fill at most this much of the disk every instance shares before its slot is invalidated
// (the geo-secondary is then seeded again by itself).
const DefaultMaxSlotWALKeepSize = "10GB"

var pgSizeRe = regexp.MustCompile(`^(-1|[0-9]+(kB|MB|GB|TB)?)$`)

// instanceSettings are the settings fogo adds to every instance's configuration.
func (o *Options) instanceSettings() (map[string]string, error) {
	if !pgSizeRe.MatchString(o.MaxSlotWALKeepSize) {
		return nil, fmt.Errorf("max-slot-wal-keep-size %q: want a size such as 10GB, 512MB (kB, MB, GB, TB) or -1 for unbounded", o.MaxSlotWALKeepSize)
	}
	s := map[string]string{"max_slot_wal_keep_size": o.MaxSlotWALKeepSize}
	for k, v := range o.InstanceSettings {
		s[k] = v
	}
	return s, nil
}

// App is a running fogo.
type App struct {
	opts      Options
	Token     string
	TokenFile string
	Store     *store.Store
	sealed    *sealedState
	Service   *service.Service
	Cluster   *cluster.Manager
	Ops       *operations.Runner
	Links     *links.Manager
	// LinkCatalog holds the link connection definitions (the Synapse API's state).
	LinkCatalog *links.Catalog
	// linkRunner runs the links whose candidate this process is (cluster mode; nil on bbolt).
	linkRunner *links.Runner
	gw         *gatewayEndpoints
	metrics    *metrics.Metrics
	http       *http.Server
	listener   net.Listener
	cancel     context.CancelFunc
	done       chan struct{}
	ready      atomic.Bool
	closing    atomic.Bool // Close runs: a lost lease is expected
	closeOnce  sync.Once
	front      switchHandler      // what the API address answers with
	leadership *leader.Leadership // on etcd: this process is the controller while it holds it
	leading    context.Context    // everything that acts on the state runs under it: ended when leadership is lost
	// stopFollowing ends a waiting controller's following of the shared state's endpoints (cluster mode).
	stopFollowing context.CancelFunc
	presence      *lease.Registration // cluster mode: this controller serves the endpoints on its host
	leaderRev     atomic.Int64        // this controller's leadership revision (0 while it waits): the agents' fencing token
	hosts         endpointHostsCache
	log           *slog.Logger
	bin           *pgbin.Bin
}

// Start brings fogo up and returns once the API listens.
func Start(ctx context.Context, opts Options) (*App, error) {
	a := &App{opts: withDefaults(opts), done: make(chan struct{}), leading: context.Background()}
	a.log = a.opts.Logger
	steps := []step{
		{"prepare data directory", a.prepareDataDir},
		{"load api token", a.loadToken},
		{"open state", a.openState},
		{"share api token", a.shareToken},
		{"reach the instances", a.reachInstances},
		{"route sessions", a.routeSessions},
		{"listen", a.listen},
		{"run links", a.runLinks},
		{"become the controller", a.lead},
		{"build components", a.build},
		{"open server endpoints", a.openEndpoints},
		{"serve the api", a.serveAPI},
	}
	if err := runSteps(ctx, steps); err != nil {
		a.Close()
		return nil, err
	}
	return a, nil
}

// step is one named step of a start.
type step struct {
	name string
	fn   func(context.Context) error
}

// runSteps runs steps in order and stops at the first that fails, naming it.
func runSteps(ctx context.Context, steps []step) error {
	for _, s := range steps {
		if err := s.fn(ctx); err != nil {
			return fmt.Errorf("%s: %w", s.name, err)
		}
	}
	return nil
}

func withDefaults(o Options) Options {
	if o.DataDir == "" {
		o.DataDir = "./fogo-data"
	}
	if o.Listen == "" {
		o.Listen = "127.0.0.1:7400"
	}
	if o.PortLow == 0 {
		o.PortLow, o.PortHigh = 7401, 7999
	}
	if o.AdvertiseHost == "" {
		o.AdvertiseHost = "127.0.0.1"
	}
	if o.MaxSlotWALKeepSize == "" {
		o.MaxSlotWALKeepSize = DefaultMaxSlotWALKeepSize
	}
	if o.ReconcileInterval == 0 {
		o.ReconcileInterval = time.Second
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
	}
	return o
}

func (a *App) prepareDataDir(context.Context) error {
	abs, err := filepath.Abs(a.opts.DataDir)
	if err != nil {
		return err
	}
	a.opts.DataDir = abs
	bin, err := pgbin.Discover(a.opts.PGBin)
	if err != nil {
		return err
	}
	a.bin = bin
	dir, err := instancesDir(bin, abs, a.opts.InstancesDir, a.log)
	if err != nil {
		return err
	}
	a.opts.InstancesDir = dir
	return nil
}

// fallbackInstancesRoot holds the instance directories of a data directory the postgres OS user cannot reach.
var fallbackInstancesRoot = "/var/lib/fogo"

// instancesDir prepares the directory that holds the instances' data directories, which the postgres OS user must
// reach (it gets search permission, o+x, on fogo's own directories only): the one given, else DATA-DIR/instances.
// When fogo runs as root with a data directory below one the postgres user may not pass (say /root/fogo-data),
// fogo does not open that directory up: the instances live in /var/lib/fogo/instances-<hash of the data
// directory> instead, and the log says so. Everything else (state, token, key) stays in the data directory.
func instancesDir(bin *pgbin.Bin, dataDir, given string, log *slog.Logger) (string, error) {
	prepare := func(top, dir string) error {
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return err
		}
		return bin.AllowTraverse(top, dir)
	}
	if given != "" {
		abs, err := filepath.Abs(given)
		if err != nil {
			return "", err
		}
		if err := prepare(abs, abs); err != nil {
			return "", fmt.Errorf("make --instances-dir %s reachable for the postgres user: %w", abs, err)
		}
		return abs, nil
	}
	dir := filepath.Join(dataDir, "instances")
	err := prepare(dataDir, dir)
	if err == nil || os.Geteuid() != 0 {
		if err != nil {
			return "", fmt.Errorf("make %s reachable for the postgres user: %w", dataDir, err)
		}
		return dir, nil
	}
	sum := sha256.Sum256([]byte(dataDir))
	alt := filepath.Join(fallbackInstancesRoot, "instances-"+hex.EncodeToString(sum[:6]))
	if err2 := prepare(fallbackInstancesRoot, alt); err2 != nil {
		return "", fmt.Errorf("make %s reachable for the postgres user: %w (and %s: %v); pass --instances-dir", dataDir, err, alt, err2)
	}
	log.Warn("the postgres OS user cannot reach the data directory; instance data directories live elsewhere",
		"data_dir", dataDir, "instances_dir", alt, "why", err.Error())
	return alt, nil
}

// loadToken takes FOGO_API_TOKEN, or generates a token once into DIR/api-token (0600).
func (a *App) loadToken(context.Context) error {
	if t := os.Getenv("FOGO_API_TOKEN"); t != "" {
		a.Token = t
		return nil
	}
	a.TokenFile = filepath.Join(a.opts.DataDir, "api-token")
	tok, err := loadOrCreateSecret(a.TokenFile)
	a.Token = tok
	return err
}

func loadOrCreateSecret(path string) (string, error) {
	if b, err := os.ReadFile(path); err == nil && len(strings.TrimSpace(string(b))) > 0 {
		return strings.TrimSpace(string(b)), nil
	}
	buf := make([]byte, 24)
	if _, err := rand.Read(buf); err != nil {
		return "", err
	}
	tok := hex.EncodeToString(buf)
	if err := os.WriteFile(path, []byte(tok+"\n"), 0o600); err != nil {
		return "", fmt.Errorf("write %s: %w", path, err)
	}
	return tok, nil
}

func (a *App) openState(context.Context) error {
	s, err := openSealedState(a.opts.DataDir, a.opts.SecretsKeyFile, a.opts.Etcd, a.log)
	if err != nil {
		return err
	}
	a.sealed, a.Store = s, s.st
	return nil
}

// reachInstances prepares what acting on the instances needs: their superuser's password and, in cluster mode,
// the agents.
func (a *App) reachInstances(context.Context) error {
	superPassword, err := a.superPassword()
	if err != nil {
		return err
	}
	extra, err := a.opts.instanceSettings()
	if err != nil {
		return err
	}
	agents, err := a.agents()
	if err != nil {
		return err
	}
	a.Cluster = cluster.New(cluster.Config{
		DataDir: a.opts.DataDir, InstancesDir: a.opts.InstancesDir, PortLow: a.opts.PortLow, PortHigh: a.opts.PortHigh, Bin: a.bin,
		SuperPassword: superPassword, Logger: a.log, ExtraInstanceConfs: extra, Agents: agents,
	}, a.Store)
	return nil
}

// routeSessions makes the server endpoints and the group listeners. In cluster mode every controller serves them,
// the waiting ones too: they open them from the shared state and follow it (see follow) until elected.
func (a *App) routeSessions(ctx context.Context) error {
	routes := service.NewRoutes(a.Store, a.Cluster)
	gw, err := newGatewayEndpoints(a.opts.gatewayConfig(), routes, a.log)
	if err != nil {
		return err
	}
	a.gw = gw
	if cli, prefix := a.Store.Etcd(); cli != nil {
		// Present as a host serving every endpoint: the endpoints are shown as lists of every such host's.
		reg, err := lease.Register(ctx, cli, controllersPrefix(prefix)+a.controllerName(), a.leaderTTL(),
			endpointPresence{Host: a.opts.AdvertiseHost})
		if err != nil {
			return fmt.Errorf("register this controller's endpoints: %w", err)
		}
		a.presence = reg
		a.stopFollowing = a.gw.followState(context.WithoutCancel(ctx), a.Store, routes)
	}
	return nil
}

func (a *App) build(ctx context.Context) error {
	if a.stopFollowing != nil {
		a.stopFollowing() // elected: the service opens, holds and releases from now on
		a.gw.releaseFollowedHolds()
	}
	runCtx, cancel := context.WithCancel(a.leading)
	a.cancel = cancel
	a.Ops = operations.New(runCtx, a.Store, a.log)
	if a.opts.PauseBeforeStep != "" {
		a.Ops.PauseBeforeStep = pauseHook(a.opts.PauseBeforeStep, a.opts.PauseFor, a.log)
	}
	obs := service.NewObserver(a.Store, a.Cluster, a.Ops)
	a.metrics = metrics.New(metricsSource{a})
	a.Ops.AfterFinish = func(op *model.Operation) {
		obs.Invalidate()
		a.metrics.ObserveOperation(op, initiatedBy(op))
	}
	hooks := failover.Hooks{
		Hold:    func(group string) { a.gw.lis.Hold(group) },
		Release: func(group string, recorded bool) { a.gw.Released(group, recorded) },
	}
	orch := failover.New(failover.Config{CatchUpTimeout: a.opts.CatchUpTimeout, TryPlannedTimeout: a.opts.TryPlannedTimeout, Logger: a.log},
		a.Store, a.Cluster, hooks)
	orch.Register(a.Ops)
	a.Service = service.New(service.Config{MinGraceMinutes: a.opts.MinGraceMinutes, AdvertiseHost: a.opts.AdvertiseHost,
		MaxGroupsPerServer: a.opts.MaxGroupsPerServer, MaxDatabasesPerServer: a.opts.MaxDatabasesPerServer,
		GraceUnit: a.opts.GraceUnit},
		a.Store, a.Ops, a.Cluster, a.gw, obs, a.log)
	a.gw.svc = a.Service
	go func() {
		defer close(a.done)
		// Re-adopt instances first (one reconcile pass), then resume interrupted operations.
		obs.Tick(runCtx, a.logWarn)
		if err := a.Ops.ResumeAll(); err != nil {
			a.log.Error("resume operations", "err", err)
		}
		if a.linkRunner == nil {
			a.LinkCatalog.Resume() // cluster mode: the runner takes the links up once this controller is ready
		}
		a.ready.Store(true)
		obs.Run(runCtx, a.opts.ReconcileInterval, a.logWarn)
	}()
	return nil
}

// runLinks prepares the link connections. In the embedded mode the controller resumes them once built. In cluster
// mode every controller runs links from now on, the waiting ones too (links.Runner): each link in one process
// at a time, under a lease of that process; the elected controller runs the links into PostgreSQL, and each
// controller the DuckDb links whose file is on its host.
func (a *App) runLinks(context.Context) error {
	targets, err := links.NewTargetDirs(a.opts.DataDir, a.opts.LinkTargetDirs)
	if err != nil {
		return err
	}
	a.Links = links.New(a.Store, a.Cluster, a.log)
	// A source transaction too large for memory waits for its commit in a spool file here (unlinked at once).
	a.Links.SpoolDir = filepath.Join(a.opts.DataDir, "link-spool")
	if err := os.MkdirAll(a.Links.SpoolDir, 0o700); err != nil {
		return fmt.Errorf("link spool directory: %w", err)
	}
	a.LinkCatalog = links.NewCatalog(a.Links, targets)
	cli, prefix := a.Store.Etcd()
	if cli == nil {
		return nil
	}
	a.LinkCatalog.SetHost(a.controllerName())
	a.linkRunner = links.NewRunner(a.LinkCatalog, links.RunnerConfig{Client: cli, Prefix: prefix, TTL: a.leaderTTL(),
		Leads: a.leadsReady, ControllersPrefix: controllersPrefix(prefix), Logger: a.log})
	return nil
}

// leadsReady reports whether this process is the elected controller, built and ready (its leadership not lost).
func (a *App) leadsReady() bool {
	return a.ready.Load() && a.leading.Err() == nil // ready is stored after leading: reading it first orders them
}

func (a *App) logWarn(msg string, args ...any) { a.log.Warn(msg, args...) }

// pauseHook sleeps before the named steps: a test-only way to kill fogo at a known point of an operation.
// spec is a comma-separated list of "step" (any operation) or "Kind:step" (e.g. "ForcedFailover:record").
func pauseHook(spec string, pause time.Duration, log *slog.Logger) func(*model.Operation, string) {
	if pause <= 0 {
		pause = 30 * time.Second
	}
	return func(op *model.Operation, name string) {
		for _, one := range strings.Split(spec, ",") {
			kind, step, ok := strings.Cut(one, ":")
			if !ok {
				kind, step = "", one
			}
			if name == step && (kind == "" || kind == op.Kind) {
				log.Warn("pausing before step (test hook)", "op", op.ID, "kind", op.Kind, "step", name)
				time.Sleep(pause)
				return
			}
		}
	}
}

func (a *App) openEndpoints(context.Context) error {
	servers, err := a.Service.Servers()
	if err != nil {
		return err
	}
	for i := range servers {
		if err := a.gw.OpenServer(&servers[i]); err != nil {
			a.log.Error("open server endpoint", "server", servers[i].ID.Name, "err", err)
		}
	}
	return a.Service.OpenGroupListeners()
}

// listen opens the API's address. Until this process is the controller and has built everything, it answers
// through front: on a state shared in etcd by forwarding to the elected controller (followerProxy), else 503.
func (a *App) listen(context.Context) error {
	ln, err := net.Listen("tcp", a.opts.Listen)
	if err != nil {
		return err
	}
	a.listener = ln // its address, for followerProxy; the TLS listener replaces it below
	a.front.set(http.HandlerFunc(notYet))
	if cli, _ := a.Store.Etcd(); cli != nil {
		a.front.set(a.followerProxy())
	}
	a.http = &http.Server{Handler: &a.front, ReadHeaderTimeout: 10 * time.Second}
	if a.opts.TLSCert != "" || a.opts.TLSKey != "" {
		cert, err := tls.LoadX509KeyPair(a.opts.TLSCert, a.opts.TLSKey)
		if err != nil {
			ln.Close()
			return fmt.Errorf("load tls certificate: %w", err)
		}
		a.http.TLSConfig = &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
		ln = tls.NewListener(ln, a.http.TLSConfig)
	}
	a.listener = ln
	go func() {
		if err := a.http.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			a.log.Error("api server", "err", err)
		}
	}()
	return nil
}

// serveAPI answers the API itself from now on.
func (a *App) serveAPI(context.Context) error {
	var hosts func() []string
	if cli, _ := a.Store.Etcd(); cli != nil {
		hosts = a.endpointHosts
	}
	a.front.set(arm.New(arm.Config{Token: a.Token, AdvertiseHost: a.opts.AdvertiseHost, EndpointHosts: hosts, Logger: a.log, Ready: a.ready.Load,
		Metrics: a.metrics.Handler(), Workspaces: synapse.New(a.LinkCatalog),
		Admin: admin.New(admin.Config{RotateKey: func(ctx context.Context) (any, error) { return a.RotateSecretsKey(ctx) }})}, a.Service))
	return nil
}

// URL is the API base URL.
func (a *App) URL() string { return a.scheme() + "://" + a.listener.Addr().String() }

// scheme is the API's URL scheme.
func (a *App) scheme() string {
	if a.opts.TLSCert != "" {
		return "https"
	}
	return "http"
}

// WaitReady blocks until the first reconcile pass and operation resume are done.
func (a *App) WaitReady(ctx context.Context) error {
	for !a.ready.Load() {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
	return nil
}

// Close stops the API, operations, endpoints and (unless told otherwise) the PostgreSQL instances.
func (a *App) Close() { a.closeOnce.Do(a.close) }

func (a *App) close() {
	if a.stopFollowing != nil {
		a.stopFollowing()
	}
	if a.presence != nil {
		_ = a.presence.Close()
	}
	if a.http != nil {
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		_ = a.http.Shutdown(sctx)
		cancel()
	}
	if a.linkRunner != nil {
		a.linkRunner.Close() // its links stop, and their keys go at once: the next candidates take them up
	}
	if a.Links != nil {
		a.Links.StopAll()
	}
	if a.cancel != nil {
		a.cancel()
		<-a.done
		a.Ops.Wait()
	}
	if a.gw != nil {
		a.gw.CloseAll()
	}
	if a.Cluster != nil && !a.opts.KeepInstancesOnExit {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		a.Cluster.StopAll(ctx)
		cancel()
	}
	if a.leadership != nil {
		a.closing.Store(true)
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		if err := a.leadership.Resign(ctx); err != nil {
			a.log.Warn("resign the controller lease; another controller takes over when it expires", "err", err)
		}
		cancel()
	}
	if a.Store != nil {
		a.Store.Close()
	}
}

// lead, on a store in etcd, waits until this process is elected the controller: until then another fogo acts
// on the shared state and this one must not. A bbolt store needs no election (its file admits one process).
func (a *App) lead(ctx context.Context) error {
	cli, prefix := a.Store.Etcd()
	if cli == nil {
		return nil
	}
	name := a.controllerName()
	me, err := json.Marshal(controllerInfo{Name: name, API: a.advertisedURL()})
	if err != nil {
		return err
	}
	l, err := leader.Campaign(ctx, cli, prefix, string(me), a.opts.LeaderTTL, func(current string) {
		a.log.Info("waiting to become the controller; the API forwards to the leader meanwhile", "leader", parseControllerInfo(current).Name, "me", name)
	})
	if err != nil {
		return err
	}
	a.leadership = l
	a.leaderRev.Store(l.Rev())
	a.log.Info("elected the controller", "me", name, "leadership", l.Rev())
	leading, stop := context.WithCancel(context.Background())
	a.leading = leading
	a.Store.Bind(leading) // once leadership is lost, no store request of this process goes on
	go func() {
		<-l.Lost()
		// Another controller may be elected now: stop acting at once (serve exits, see LostLeadership).
		stop()
		if a.closing.Load() {
			return
		}
		a.log.Error("lost the controller lease: stopping", "me", name)
	}()
	return nil
}

// LostLeadership is closed when this process, the elected controller on a store in etcd, lost its lease; it
// then stops acting and must exit. Never closed for a bbolt store.
func (a *App) LostLeadership() <-chan struct{} {
	if a.leadership == nil {
		return nil
	}
	return a.leadership.Lost()
}

// metricsSource feeds the metrics collector from the running app.
type metricsSource struct{ a *App }

func (m metricsSource) Groups() ([]model.FailoverGroup, map[string]model.Instance, error) {
	return m.a.Service.GroupsWithInstances()
}

func (m metricsSource) Handle(rec *model.Instance) *instance.Instance { return m.a.Cluster.Handle(rec) }

func (m metricsSource) ListenerStats() []listener.Stats { return m.a.gw.lis.Stats() }

func (m metricsSource) LinkSlots() []metrics.LinkSlot {
	var out []metrics.LinkSlot
	for name, w := range m.a.LinkCatalog.SlotsWAL() {
		out = append(out, metrics.LinkSlot{Link: name, RetainedBytes: w.RetainedBytes, WALStatus: w.WALStatus})
	}
	return out
}

func (m metricsSource) LostReports() []metrics.LostReport {
	reports, err := lostreport.All(m.a.Store)
	if err != nil {
		return nil
	}
	out := make([]metrics.LostReport, 0, len(reports))
	for _, r := range reports {
		out = append(out, metrics.LostReport{Group: r.Group, Database: r.Database, Status: r.Status, Transactions: r.TransactionCount})
	}
	return out
}

// initiatedBy reads who asked for a failover operation from its recorded plan.
func initiatedBy(op *model.Operation) string {
	var p struct {
		InitiatedBy string `json:"initiatedBy"`
	}
	_ = json.Unmarshal(op.Params, &p)
	return p.InitiatedBy
}
