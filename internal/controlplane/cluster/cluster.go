package cluster

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/fogo-db/fogo/internal/agent"
	"github.com/fogo-db/fogo/internal/controlplane/armid"
	"github.com/fogo-db/fogo/internal/controlplane/model"
	"github.com/fogo-db/fogo/internal/controlplane/store"
	"github.com/fogo-db/fogo/internal/postgres/instance"
	"github.com/fogo-db/fogo/internal/postgres/lostxact"
	"github.com/fogo-db/fogo/internal/postgres/pgbin"
)

// SuperUser is the name of fogo's internal superuser in every instance (management and replication).
const SuperUser = "fogo"

// Config is what the manager needs to know about the machine.
type Config struct {
	DataDir string
	// InstancesDir holds new instances' data directories (default DataDir/instances).
	InstancesDir       string
	PortLow, PortHigh  int
	Bin                *pgbin.Bin
	SuperPassword      string
	Logger             *slog.Logger
	ExtraInstanceConfs map[string]string
	// LostLimits bound what one lost-transaction report keeps (zero: lostxact.DefaultLimits).
	LostLimits lostxact.Limits
	// Agents, when set, is cluster mode: servers are placed on the agents' hosts and their instances reached
	// through the agents.
	Agents *Agents
}

// Manager acts on instances.
type Manager struct {
	cfg   Config
	store *store.Store
	log   *slog.Logger

	mu     sync.Mutex
	locks  map[string]*groupLock
	silent map[string]silence // agent name -> its last failure to answer (see HostAnswers)

	startHook atomic.Pointer[StartHook]
	agents    agentDirectory
}

// StartHook is called before EnsureRunning starts an instance (tests only: a start that hangs or fails).
type StartHook func(ctx context.Context, rec *model.Instance) error

// SetStartHook installs (or, with nil, removes) the start hook.
func (m *Manager) SetStartHook(h StartHook) {
	if h == nil {
		m.startHook.Store(nil)
		return
	}
	m.startHook.Store(&h)
}

// instancesDir is where new instances' data directories go.
func (m *Manager) instancesDir() string {
	if m.cfg.InstancesDir != "" {
		return m.cfg.InstancesDir
	}
	return filepath.Join(m.cfg.DataDir, "instances")
}

// New returns a manager over st.
func New(cfg Config, st *store.Store) *Manager {
	return &Manager{cfg: cfg, store: st, log: cfg.Logger, locks: map[string]*groupLock{}}
}

// Logger is the manager's logger.
func (m *Manager) Logger() *slog.Logger { return m.log }

// Bin returns the PostgreSQL binaries in use.
func (m *Manager) Bin() *pgbin.Bin { return m.cfg.Bin }

// SuperPassword is the internal superuser's password (for fogo's own connections, e.g. link workers).
func (m *Manager) SuperPassword() string { return m.cfg.SuperPassword }

// Handle returns the instance handle for a record.
func (m *Manager) Handle(rec *model.Instance) *instance.Instance {
	i := &instance.Instance{
		Dir: rec.Dir, Bin: m.cfg.Bin, Host: "127.0.0.1", Port: rec.Port,
		SuperUser: SuperUser, SuperPassword: m.cfg.SuperPassword,
	}
	if rec.Host != "" {
		cl, ag := m.hostClient(rec.Host)
		i.On, i.Host = cl, ag.Address
		if ag.TLS && m.cfg.Agents != nil {
			i.RootCert = m.cfg.Agents.RootCert
		}
	}
	return i
}

// HandleWithin is Handle whose questions to an agent's host that take no context (is it running, is it a
// standby) also end with ctx: background work that yields its lock stops at once.
func (m *Manager) HandleWithin(ctx context.Context, rec *model.Instance) *instance.Instance {
	h := m.Handle(rec)
	if cl, ok := h.On.(*agent.Client); ok {
		h.On = cl.Within(ctx)
	}
	return h
}

// NewInstanceRecord allocates an ID, a data directory and a port for a new instance, and stores the record.
func (m *Manager) NewInstanceRecord(tx *store.Tx, server armid.ServerID, database, role string) (*model.Instance, error) {
	id := "i" + randomHex(5)
	var srv model.Server
	if err := tx.MustGet(store.Servers, server.Key(), &srv); err != nil {
		return nil, fmt.Errorf("server %s: %w", server.Name, err)
	}
	home, ag, err := m.instanceHome(tx, srv.Host, id)
	if err != nil {
		return nil, err
	}
	var port int
	if ag != nil {
		port, err = m.allocateHostPort(tx, ag, "instance:"+id)
	} else {
		port, err = m.AllocatePort(tx, "instance:"+id)
	}
	if err != nil {
		return nil, err
	}
	rec := &model.Instance{
		ID: id, Server: server, Database: database, Role: role, Port: port, Host: srv.Host,
		Dir:      filepath.Join(home, "pgdata"),
		SlotName: "fogo_" + id,
	}
	return rec, tx.Put(store.Instances, id, rec)
}

// GetInstance reads an instance record.
func (m *Manager) GetInstance(id string) (*model.Instance, error) {
	var rec model.Instance
	err := m.store.View(func(tx *store.Tx) error { return tx.MustGet(store.Instances, id, &rec) })
	return &rec, err
}

// SaveInstance writes an instance record.
func (m *Manager) SaveInstance(rec *model.Instance) error {
	return m.store.Update(func(tx *store.Tx) error { return tx.Put(store.Instances, rec.ID, rec) })
}

// ErrNoFreePort says the port range is exhausted.
var ErrNoFreePort = errors.New("no free port in the configured range")

// AllocatePort leases the lowest free port in the range that nothing listens on, recording the owner. The port
// is one every host serves the endpoint on (cluster mode: the agents' hosts too), so a port an agent's host API
// or its instances use is never taken.
func (m *Manager) AllocatePort(tx *store.Tx, owner string) (int, error) {
	leased := map[string]bool{} // one read of the leases (on etcd, one range instead of a request per port)
	if err := tx.Scan(store.Ports, "", func(key string, _ []byte) error { leased[key] = true; return nil }); err != nil {
		return 0, fmt.Errorf("allocate port: %w", err)
	}
	agents, err := store.List[model.Agent](tx, store.Agents, "")
	if err != nil {
		return 0, fmt.Errorf("allocate port: %w", err)
	}
	for p := m.cfg.PortLow; p <= m.cfg.PortHigh; p++ {
		if leased[strconv.Itoa(p)] || usedOnAgentHost(agents, p) {
			continue
		}
		if !portFree(p) {
			continue
		}
		return p, tx.Put(store.Ports, strconv.Itoa(p), owner)
	}
	return 0, fmt.Errorf("allocate port %d-%d: %w", m.cfg.PortLow, m.cfg.PortHigh, ErrNoFreePort)
}

// usedOnAgentHost reports whether port is an agent's host API port or in its instances' range.
func usedOnAgentHost(agents []model.Agent, port int) bool {
	for _, a := range agents {
		if port >= a.PortLow && port <= a.PortHigh {
			return true
		}
		if u, err := url.Parse(a.URL); err == nil && u.Port() == strconv.Itoa(port) {
			return true
		}
	}
	return false
}

// ReleasePort returns a port to the pool.
func ReleasePort(tx *store.Tx, port int) error { return tx.Delete(store.Ports, strconv.Itoa(port)) }

func portFree(p int) bool {
	l, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(p)))
	if err != nil {
		return false
	}
	l.Close()
	return true
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// settings builds the configuration of an instance from its record.
func (m *Manager) settings(rec *model.Instance, upstream *model.Instance) instance.Settings {
	s := instance.Settings{Port: rec.Port, ListenAddresses: "127.0.0.1", Extra: m.cfg.ExtraInstanceConfs}
	if rec.Host != "" {
		m.hostSettings(rec.Host, &s)
	}
	if rec.Role == model.RoleStandby && upstream != nil {
		s.Standby = true
		s.PrimaryConnInfo = m.handleFrom(upstream, rec.Host).ReplicationConnInfo(rec.ID)
		s.PrimarySlotName = rec.SlotName
	}
	return s
}

// Provision makes rec a running primary holding database `database` owned by the login (idempotent).
func (m *Manager) Provision(ctx context.Context, rec *model.Instance, login, verifier string) error {
	h := m.Handle(rec)
	if err := h.MakeHome(); err != nil {
		return fmt.Errorf("provision %s: create directory: %w", rec.ID, err)
	}
	steps := []struct {
		name string
		do   func() error
	}{
		{"initdb", func() error { return h.Init(ctx) }},
		{"configure", func() error { return h.Configure(m.settings(rec, nil)) }},
		{"start", func() error { return h.Start(ctx) }},
		{"create login", func() error { return h.EnsureRole(ctx, login, verifier) }},
		{"create database", func() error { return h.EnsureDatabase(ctx, rec.Database, login) }},
	}
	for _, s := range steps {
		if err := s.do(); err != nil {
			return fmt.Errorf("provision %s (%s) %s: %w", rec.Database, rec.ID, s.name, err)
		}
	}
	return nil
}

// Seed makes rec a streaming standby of upstream: physical slot, base backup, configuration, start (idempotent).
func (m *Manager) Seed(ctx context.Context, rec, upstream *model.Instance) error {
	h, up := m.Handle(rec), m.Handle(upstream)
	if err := h.MakeHome(); err != nil {
		return fmt.Errorf("seed %s: create directory: %w", rec.ID, err)
	}
	if !rec.Seeded {
		if _, err := up.DropSlotIfLost(ctx, rec.SlotName); err != nil { // a reseed after max_slot_wal_keep_size
			return fmt.Errorf("seed %s: drop invalidated slot on %s: %w", rec.ID, upstream.ID, err)
		}
		if _, running := h.Running(); running {
			if err := h.Stop(ctx, instance.ShutdownImmediate); err != nil {
				return fmt.Errorf("seed %s: stop partial instance: %w", rec.ID, err)
			}
		}
		if err := up.EnsurePhysicalSlot(ctx, rec.SlotName); err != nil {
			return fmt.Errorf("seed %s: create slot on %s: %w", rec.ID, upstream.ID, err)
		}
		m.ensureLostSlot(ctx, upstream)
		if err := h.BaseBackup(ctx, m.handleFrom(upstream, rec.Host).SourceConnInfo(), rec.SlotName); err != nil {
			return fmt.Errorf("seed %s: base backup from %s: %w", rec.ID, upstream.ID, err)
		}
		// A copy of the primary must not keep the primary's physical slots: they would pin WAL here forever.
		if err := h.RemoveSlotDirsOffline("fogo_"); err != nil {
			return fmt.Errorf("seed %s: drop copied slots: %w", rec.ID, err)
		}
		rec.Seeded, rec.Reseed = true, false
		if err := m.SaveInstance(rec); err != nil {
			return err
		}
	}
	if err := h.Configure(m.settings(rec, upstream)); err != nil {
		return fmt.Errorf("seed %s: configure standby: %w", rec.ID, err)
	}
	if err := h.Start(ctx); err != nil {
		return fmt.Errorf("seed %s: start standby: %w", rec.ID, err)
	}
	return nil
}

// Rejoin turns a former primary into a standby of upstream: stop, report what a forced failover lost (see
// reportLost), rewind if diverged, configure, start.
func (m *Manager) Rejoin(ctx context.Context, rec, upstream *model.Instance) error {
	h, up := m.HandleWithin(ctx, rec), m.HandleWithin(ctx, upstream)
	if _, running := h.Running(); running {
		if err := h.TryShuttingDownFastImmediate(ctx, 10*time.Second); err != nil {
			return fmt.Errorf("rejoin %s: stop: %w", rec.ID, err)
		}
	}
	if rec.LostReport != "" {
		if err := m.reportLost(ctx, rec, upstream); err != nil {
			return fmt.Errorf("rejoin %s: %w", rec.ID, err)
		}
	}
	if err := up.EnsurePhysicalSlot(ctx, rec.SlotName); err != nil {
		return fmt.Errorf("rejoin %s: create slot on %s: %w", rec.ID, upstream.ID, err)
	}
	m.ensureLostSlot(ctx, upstream)
	if err := up.Checkpoint(ctx); err != nil {
		return fmt.Errorf("rejoin %s: checkpoint on %s: %w", rec.ID, upstream.ID, err)
	}
	// From the rewind on, a failover that wants the group's lock waits: a rewind cut short leaves a data
	// directory that neither starts nor rewinds again.
	ctx, cancel, err := Committed(ctx)
	defer cancel()
	if err != nil {
		return fmt.Errorf("rejoin %s: %w", rec.ID, err)
	}
	h = m.HandleWithin(ctx, rec)
	res, err := h.Rewind(ctx, m.handleFrom(upstream, rec.Host).SourceConnInfo())
	if err != nil {
		return fmt.Errorf("rejoin %s: rewind from %s: %w", rec.ID, upstream.ID, err)
	}
	if res.Rewound {
		m.log.Warn("former primary diverged and was rewound", "instance", rec.ID, "database", rec.Database,
			"diverged_at", res.DivergedAt.String(), "timeline", res.Timeline)
	}
	if err := h.RemoveSlotDirsOffline("fogo_"); err != nil {
		return fmt.Errorf("rejoin %s: drop stale slots: %w", rec.ID, err)
	}
	rec.Role, rec.Upstream, rec.NeedsRejoin, rec.Seeded = model.RoleStandby, upstream.ID, false, true
	if err := h.Configure(m.settings(rec, upstream)); err != nil {
		return fmt.Errorf("rejoin %s: configure standby: %w", rec.ID, err)
	}
	if err := h.Start(ctx); err != nil {
		return fmt.Errorf("rejoin %s: start standby: %w", rec.ID, err)
	}
	return m.SaveInstance(rec)
}

// EnsureRunning starts an instance that should run and does not (crash, host reboot, fogo restart).
// A former primary waiting for its rejoin is never started as a primary: that is the fence. A recorded primary
// that is still a standby is promoted: a failover recorded the roles but could not finish the promotion.
func (m *Manager) EnsureRunning(ctx context.Context, rec *model.Instance) error {
	if rec.NeedsRejoin || (rec.Role == model.RoleStandby && !rec.Seeded) {
		return nil
	}
	h := m.HandleWithin(ctx, rec)
	if rec.Role == model.RolePrimary && h.IsStandby() {
		return m.finishPromotion(ctx, rec)
	}
	if _, running := h.Running(); running {
		return nil
	}
	if provisioned, err := h.HasData(); err != nil {
		return fmt.Errorf("start %s: %w", rec.ID, err)
	} else if !provisioned {
		return nil // never provisioned: the owning operation will do it
	}
	var up *model.Instance
	if rec.Role == model.RoleStandby {
		var err error
		if up, err = m.GetInstance(rec.Upstream); err != nil {
			return fmt.Errorf("start %s: upstream %s: %w", rec.ID, rec.Upstream, err)
		}
	}
	if err := h.Configure(m.settings(rec, up)); err != nil {
		return fmt.Errorf("start %s: configure: %w", rec.ID, err)
	}
	if hook := m.startHook.Load(); hook != nil {
		if err := (*hook)(ctx, rec); err != nil {
			return fmt.Errorf("start %s: %w", rec.ID, err)
		}
	}
	m.log.Info("starting instance", "instance", rec.ID, "database", rec.Database, "role", rec.Role)
	return h.Start(ctx)
}

// finishPromotion starts a recorded primary that still holds standby.signal as the standby it is (so that its
// promotion opens a new timeline, as any promotion does) and promotes it, then writes its primary configuration.
func (m *Manager) finishPromotion(ctx context.Context, rec *model.Instance) error {
	h := m.HandleWithin(ctx, rec)
	m.log.Warn("finishing the promotion of a recorded primary", "instance", rec.ID, "database", rec.Database)
	if err := h.Start(ctx); err != nil {
		return fmt.Errorf("finish the promotion of %s: start: %w", rec.ID, err)
	}
	if err := h.Promote(ctx); err != nil {
		return fmt.Errorf("finish the promotion of %s: %w", rec.ID, err)
	}
	if err := h.Configure(m.settings(rec, nil)); err != nil {
		return fmt.Errorf("finish the promotion of %s: configure: %w", rec.ID, err)
	}
	return nil
}

// AdminRightsVersion is the version of the rights fogo gives a server's admin login; 1: REPLICATION (logical
// replication over a plain connection string, as managed services allow).
const AdminRightsVersion = 1

// EnsureAdminRights gives the admin login on a running primary the rights of AdminRightsVersion, once per instance
// record: new instances have them from EnsureRole already, instances of a server created by an older fogo get
// them here. A standby gets them by replication, and is checked again once it is a primary.
func (m *Manager) EnsureAdminRights(ctx context.Context, rec *model.Instance) error {
	if rec.AdminRights >= AdminRightsVersion || rec.Role != model.RolePrimary || rec.NeedsRejoin {
		return nil
	}
	h := m.HandleWithin(ctx, rec)
	if _, running := h.Running(); !running || h.IsStandby() {
		return nil
	}
	var srv model.Server
	if err := m.store.View(func(tx *store.Tx) error { return tx.MustGet(store.Servers, rec.Server.Key(), &srv) }); err != nil {
		return fmt.Errorf("admin rights on %s: %w", rec.ID, err)
	}
	granted, err := h.EnsureReplicationRight(ctx, srv.AdminLogin)
	if err != nil {
		return fmt.Errorf("grant REPLICATION to the admin login on %s: %w", rec.ID, err)
	}
	if granted {
		m.log.Info("granted the admin login REPLICATION (a server created by an older fogo)", "instance", rec.ID,
			"database", rec.Database, "login", srv.AdminLogin)
	}
	return m.store.Update(func(tx *store.Tx) error {
		var cur model.Instance
		if ok, err := tx.Get(store.Instances, rec.ID, &cur); err != nil || !ok {
			return err
		}
		cur.AdminRights = AdminRightsVersion
		return tx.Put(store.Instances, rec.ID, &cur)
	})
}

// Destroy stops an instance, removes its files and releases its port and record.
func (m *Manager) Destroy(ctx context.Context, rec *model.Instance) error {
	h := m.Handle(rec)
	if err := h.Stop(ctx, instance.ShutdownImmediate); err != nil {
		return fmt.Errorf("destroy %s: stop: %w", rec.ID, err)
	}
	if err := h.RemoveHome(); err != nil {
		return fmt.Errorf("destroy %s: remove files: %w", rec.ID, err)
	}
	return m.store.Update(func(tx *store.Tx) error {
		if err := tx.Delete(store.Ports, portKey(rec.Host, rec.Port)); err != nil {
			return err
		}
		return tx.Delete(store.Instances, rec.ID)
	})
}

// StopAll stops every instance on this machine (graceful shutdown of fogo).
func (m *Manager) StopAll(ctx context.Context) {
	var recs []model.Instance
	_ = m.store.View(func(tx *store.Tx) (err error) {
		recs, err = store.List[model.Instance](tx, store.Instances, "")
		return err
	})
	var wg sync.WaitGroup
	for i := range recs {
		if recs[i].Host != "" {
			continue // an agent's host owns its instances: they outlive any controller
		}
		wg.Add(1)
		go func(rec *model.Instance) {
			defer wg.Done()
			if err := m.Handle(rec).TryShuttingDownFastImmediate(ctx, 10*time.Second); err != nil {
				m.log.Warn("stop instance", "instance", rec.ID, "err", err)
			}
		}(&recs[i])
	}
	wg.Wait()
}

// Reconfigure rewrites an instance's configuration with extra settings (nil clears them) and reloads it.
func (m *Manager) Reconfigure(ctx context.Context, rec *model.Instance, extra map[string]string) error {
	var up *model.Instance
	if rec.Role == model.RoleStandby && rec.Upstream != "" {
		var err error
		if up, err = m.GetInstance(rec.Upstream); err != nil {
			return err
		}
	}
	s := m.settings(rec, up)
	merged := map[string]string{}
	for k, v := range s.Extra {
		merged[k] = v
	}
	for k, v := range extra {
		merged[k] = v
	}
	s.Extra = merged
	h := m.Handle(rec)
	if err := h.Configure(s); err != nil {
		return fmt.Errorf("configure: %w", err)
	}
	if _, running := h.Running(); !running {
		return nil
	}
	conn, err := h.Connect(ctx, "postgres")
	if err != nil {
		return fmt.Errorf("reload: %w", err)
	}
	defer conn.Close(context.Background())
	if _, err := conn.Exec(ctx, "SELECT pg_reload_conf()"); err != nil {
		return fmt.Errorf("reload: %w", err)
	}
	return nil
}

// ErrNotStreaming is the "not yet" of WaitStreaming.
var ErrNotStreaming = errors.New("standby is not streaming yet")

// WaitStreaming waits (bounded by ctx, at most 2 minutes) until a standby's WAL receiver streams.
func (m *Manager) WaitStreaming(ctx context.Context, rec *model.Instance) error {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	h := m.Handle(rec)
	for {
		st, err := h.WalReceiverStatus(ctx)
		if err == nil && st.Status == "streaming" {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("standby %s: %w (last: %v)", rec.ID, ErrNotStreaming, err)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// Detach ends replication from primary to standby: the standby is promoted into an independent database and the
// primary's slot for it is dropped. Idempotent.
func (m *Manager) Detach(ctx context.Context, standby, primary *model.Instance) error {
	h := m.Handle(standby)
	if standby.Seeded {
		if _, running := h.Running(); !running {
			if err := h.Start(ctx); err != nil {
				return fmt.Errorf("start %s: %w", standby.ID, err)
			}
		}
		if err := h.Promote(ctx); err != nil {
			return fmt.Errorf("promote %s: %w", standby.ID, err)
		}
	}
	standby.Role, standby.Upstream, standby.NeedsRejoin = model.RolePrimary, "", false
	if err := m.SaveInstance(standby); err != nil {
		return err
	}
	if err := m.Reconfigure(ctx, standby, nil); err != nil {
		return fmt.Errorf("reconfigure %s: %w", standby.ID, err)
	}
	if !standby.Seeded {
		// Never seeded: nothing worth keeping on the partner.
		return m.Destroy(ctx, standby)
	}
	if _, running := m.Handle(primary).Running(); running {
		if err := m.Handle(primary).DropSlot(ctx, standby.SlotName); err != nil {
			return fmt.Errorf("drop slot %s on %s: %w", standby.SlotName, primary.ID, err)
		}
	}
	return nil
}
