package links

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/fogo-db/fogo/internal/controlplane/armid"
	"github.com/fogo-db/fogo/internal/controlplane/model"
	"github.com/fogo-db/fogo/internal/controlplane/store"
	"github.com/fogo-db/fogo/internal/errcatalog"
	"github.com/fogo-db/fogo/internal/link"
	"github.com/fogo-db/fogo/internal/link/target"
)

// Linked service types.
const (
	TypePostgreSQL = "PostgreSql"
	TypeAzureSQL   = "AzureSqlDatabase" // accepted as a source: a PostgreSQL connection string
	TypeDuckDB     = "DuckDb"
)

// LinkedService is a named connection (Synapse linked service). ConnectionString is a secret: never returned.
type LinkedService struct {
	Workspace        string `json:"workspace"`
	Name             string `json:"name"`
	Type             string `json:"type"`
	ConnectionString string `json:"connectionString,omitempty"`
	Path             string `json:"path,omitempty"` // DuckDb
	// Host is, in cluster mode, the controller whose host holds a DuckDb target's file: links into it run only
	// in that controller, elected or not (the file is not on the others' hosts).
	Host string `json:"host,omitempty"`
}

// LinkTable is one linked table.
type LinkTable struct {
	ID                        string `json:"id"`
	SourceSchema, SourceTable string
	TargetSchema, TargetTable string
}

// LinkConnection is a link connection definition and its desired state.
type LinkConnection struct {
	Workspace, Name  string
	Description      string
	SourceService    string
	SourceResourceID string
	TargetService    string
	DropExisting     bool
	CrossTable       bool
	IntervalMinutes  int32
	Tables           []LinkTable
	Running          bool
	// Slot is the link's replication slot and publication on the source, fixed when the link is created
	// (link.SlotNameFor); "" for a link created before, whose slot keeps its old name (link.LegacySlotName).
	Slot      string    `json:",omitempty"`
	StartTime time.Time `json:",omitzero"`
	StopTime  time.Time `json:",omitzero"`
}

// validName is a link connection's name (ARM-style).
var validName = regexp.MustCompile(`^[A-Za-z0-9._-]{1,128}$`)

func key(workspace, name string) string {
	return strings.ToLower(workspace) + "/" + strings.ToLower(name)
}

// Catalog stores link definitions and runs them through the Manager.
type Catalog struct {
	m       *Manager
	targets *TargetDirs
	host    string // this controller's name in cluster mode ("" in the embedded mode)
	// runner, in cluster mode, runs the links whose candidate this process is, each under a lease (NewRunner).
	runner *Runner
}

// SetHost names this controller (cluster mode): DuckDb targets made here are pinned to its host.
func (c *Catalog) SetHost(name string) { c.host = name }

// Host is this controller's name in cluster mode ("" in the embedded mode).
func (c *Catalog) Host() string { return c.host }

// NewCatalog returns the catalog; DuckDB target files live in targets (relative paths under
// DATA-DIR/link-targets).
func NewCatalog(m *Manager, targets *TargetDirs) *Catalog { return &Catalog{m: m, targets: targets} }

// PutLinkedService validates and stores a linked service.
func (c *Catalog) PutLinkedService(ls LinkedService) error {
	switch ls.Type {
	case TypePostgreSQL, TypeAzureSQL:
		if ls.ConnectionString == "" {
			return errcatalog.Newf("InvalidParameterValue", "A %s linked service needs typeProperties.connectionString.", ls.Type).WithTarget("properties.typeProperties.connectionString")
		}
		// pgx's parser (a superset of pgconn's, used by the link and the target) so that no later parse can fail:
		// a parse error may quote the string, and pgx redacts the password in it only on a best-effort basis. This
		// message never quotes it.
		if _, err := pgx.ParseConfig(ls.ConnectionString); err != nil {
			return errcatalog.Newf("InvalidParameterValue", "typeProperties.connectionString is not a libpq connection string or URL.").WithTarget("properties.typeProperties.connectionString")
		}
	case TypeDuckDB:
		if ls.Path == "" {
			return errcatalog.Newf("InvalidParameterValue", "A DuckDb linked service needs typeProperties.path.").WithTarget("properties.typeProperties.path")
		}
		if _, err := c.targets.Resolve(ls.Path); err != nil {
			return c.pathError(err)
		}
	default:
		return errcatalog.Newf("InvalidParameterValue", "Linked service type '%s' is not supported: use PostgreSql, AzureSqlDatabase or DuckDb.", ls.Type).WithTarget("properties.type")
	}
	return c.m.st.Update(func(tx *store.Tx) error {
		if ls.Type == TypeDuckDB {
			ls.Host = c.host // the file is made on this controller's host...
			var old LinkedService
			if ok, err := tx.Get(store.LinkedServices, key(ls.Workspace, ls.Name), &old); err != nil {
				return err
			} else if ok && old.Type == TypeDuckDB && old.Path == ls.Path {
				ls.Host = old.Host // ...unless it already exists on another's
			}
		}
		return tx.Put(store.LinkedServices, key(ls.Workspace, ls.Name), &ls)
	})
}

// LinkedService reads one.
func (c *Catalog) LinkedService(workspace, name string) (*LinkedService, error) {
	var ls LinkedService
	var ok bool
	err := c.m.st.View(func(tx *store.Tx) (err error) {
		ok, err = tx.Get(store.LinkedServices, key(workspace, name), &ls)
		return err
	})
	if err == nil && !ok {
		err = errcatalog.Newf("ResourceNotFound", "Linked service '%s' does not exist.", name)
	}
	return &ls, err
}

// LinkedServices lists a workspace's linked services.
func (c *Catalog) LinkedServices(workspace string) ([]LinkedService, error) {
	var out []LinkedService
	err := c.m.st.View(func(tx *store.Tx) (err error) {
		out, err = store.List[LinkedService](tx, store.LinkedServices, strings.ToLower(workspace)+"/")
		return err
	})
	return out, err
}

// DeleteLinkedService removes one unless a link connection uses it.
func (c *Catalog) DeleteLinkedService(workspace, name string) error {
	conns, err := c.Connections(workspace)
	if err != nil {
		return err
	}
	for _, lc := range conns {
		if strings.EqualFold(lc.SourceService, name) || strings.EqualFold(lc.TargetService, name) {
			return errcatalog.Newf("ConflictingDatabaseOperation", "Linked service '%s' is used by link connection '%s'.", name, lc.Name)
		}
	}
	return c.m.st.Update(func(tx *store.Tx) error { return tx.Delete(store.LinkedServices, key(workspace, name)) })
}

// PutConnection validates and stores a link connection definition (its tables and running state are kept).
func (c *Catalog) PutConnection(lc LinkConnection) (*LinkConnection, error) {
	if !validName.MatchString(lc.Name) {
		return nil, errcatalog.Newf("InvalidParameterValue", "The link connection name '%s' is invalid: use 1 to 128 letters, digits, '-', '_' or '.'.", lc.Name).WithTarget("name")
	}
	if _, err := c.LinkedService(lc.Workspace, lc.SourceService); err != nil {
		return nil, err
	}
	tgt, err := c.LinkedService(lc.Workspace, lc.TargetService)
	if err != nil {
		return nil, err
	}
	if tgt.Type != TypeDuckDB && tgt.Type != TypePostgreSQL {
		return nil, errcatalog.Newf("InvalidParameterValue", "The target linked service must be DuckDb or PostgreSql.").WithTarget("properties.targetDatabase.linkedService")
	}
	if tgt.Type == TypeDuckDB {
		if _, err := c.targets.Resolve(tgt.Path); err != nil { // a definition an older fogo stored unchecked
			return nil, errcatalog.Newf("InvalidParameterValue", "The target linked service '%s' must be fixed first: %s", tgt.Name, c.pathMessage(err)).WithTarget("properties.targetDatabase.linkedService")
		}
	}
	if lc.IntervalMinutes < 0 || lc.IntervalMinutes > 24*60 {
		return nil, errcatalog.Newf("InvalidParameterValue", "compute.dataProcessIntervalMinutes must be 0 (continuous) or between 1 and 1440.").WithTarget("properties.compute.dataProcessIntervalMinutes")
	}
	if lc.SourceResourceID != "" {
		if _, err := armid.ParseFailoverGroupID(lc.SourceResourceID); err != nil {
			if _, err := armid.ParseServerID(lc.SourceResourceID); err != nil {
				return nil, errcatalog.Newf("InvalidParameterValue", "sourceDatabase.typeProperties.resourceId must be a server or a failover group resource id.").WithTarget("properties.sourceDatabase.typeProperties.resourceId")
			}
		}
	}
	var out LinkConnection
	err = c.m.st.Update(func(tx *store.Tx) error {
		var cur LinkConnection
		if ok, err := tx.Get(store.LinkConnections, key(lc.Workspace, lc.Name), &cur); err != nil {
			return err
		} else if ok {
			if cur.Running {
				return errcatalog.Newf("ConflictingDatabaseOperation", "Link connection '%s' is running; stop it before changing it.", lc.Name)
			}
			lc.Tables, lc.StartTime, lc.StopTime, lc.Slot = cur.Tables, cur.StartTime, cur.StopTime, cur.Slot
		} else {
			lc.Slot = link.SlotNameFor(key(lc.Workspace, lc.Name))
		}
		out = lc
		return tx.Put(store.LinkConnections, key(lc.Workspace, lc.Name), &lc)
	})
	return &out, err
}

// Connection reads one.
func (c *Catalog) Connection(workspace, name string) (*LinkConnection, error) {
	var lc LinkConnection
	var ok bool
	err := c.m.st.View(func(tx *store.Tx) (err error) {
		ok, err = tx.Get(store.LinkConnections, key(workspace, name), &lc)
		return err
	})
	if err == nil && !ok {
		err = errcatalog.Newf("ResourceNotFound", "Link connection '%s' does not exist.", name)
	}
	return &lc, err
}

// Connections lists a workspace's link connections.
func (c *Catalog) Connections(workspace string) ([]LinkConnection, error) {
	var out []LinkConnection
	err := c.m.st.View(func(tx *store.Tx) (err error) {
		out, err = store.List[LinkConnection](tx, store.LinkConnections, strings.ToLower(workspace)+"/")
		return err
	})
	return out, err
}

func (c *Catalog) update(workspace, name string, fn func(*LinkConnection) error) (*LinkConnection, error) {
	var lc LinkConnection
	err := c.m.st.Update(func(tx *store.Tx) error {
		lc = LinkConnection{} // fn may run again (the etcd store retries a conflicting update)
		if err := tx.MustGet(store.LinkConnections, key(workspace, name), &lc); err != nil {
			if errors.Is(err, store.ErrNotFound) {
				return errcatalog.Newf("ResourceNotFound", "Link connection '%s' does not exist.", name)
			}
			return err
		}
		if err := fn(&lc); err != nil {
			return err
		}
		return tx.Put(store.LinkConnections, key(workspace, name), &lc)
	})
	return &lc, err
}

// EditTables adds or removes tables of a stopped link connection. A removed table's state in the target is
// forgotten, so that a table added again is synchronised afresh (its target table is kept).
func (c *Catalog) EditTables(workspace, name string, edits []LinkTable, ops []string) (*LinkConnection, error) {
	var removed []string
	lc, err := c.update(workspace, name, func(lc *LinkConnection) error {
		removed = removed[:0]
		if lc.Running {
			return errcatalog.Newf("ConflictingDatabaseOperation", "Link connection '%s' is running; stop it before editing its tables.", name)
		}
		for i, e := range edits {
			if e.SourceTable == "" {
				return errcatalog.Newf("InvalidParameterValue", "linkTables[%d].source.tableName is required.", i)
			}
			kept, gone := lc.Tables[:0], []LinkTable(nil)
			for _, t := range lc.Tables {
				if t.ID != e.ID && !(strings.EqualFold(t.SourceSchema, e.SourceSchema) && strings.EqualFold(t.SourceTable, e.SourceTable)) {
					kept = append(kept, t)
				} else {
					gone = append(gone, t)
				}
			}
			lc.Tables = kept
			switch strings.ToLower(ops[i]) {
			case "", "add", "update":
				lc.Tables = append(lc.Tables, e)
			case "remove", "delete":
				for _, t := range gone {
					m := link.TableMapping{SourceSchema: t.SourceSchema, SourceTable: t.SourceTable}.WithDefaults()
					removed = append(removed, m.SourceSchema+"."+m.SourceTable)
				}
			default:
				return errcatalog.Newf("InvalidParameterValue", "linkTables[%d].operationType '%s' must be add or remove.", i, ops[i])
			}
		}
		return nil
	})
	if err != nil || len(removed) == 0 {
		return lc, err
	}
	st, err := c.openTarget(lc)
	if err != nil {
		return lc, errcatalog.Newf("InvalidParameterValue", "The tables were removed, but the target cannot be opened to forget their state: %v", err)
	}
	defer st.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := st.ForgetTables(ctx, key(workspace, name), removed...); err != nil {
		return lc, errcatalog.Newf("InternalServerError", "The tables were removed, but their state in the target was not forgotten: %v", err)
	}
	return lc, nil
}

// Start starts a link connection (and records that it should run, so a restarted fogo resumes it).
func (c *Catalog) Start(workspace, name string) error {
	lc, err := c.Connection(workspace, name)
	if err != nil {
		return err
	}
	if len(lc.Tables) == 0 {
		return errcatalog.Newf("InvalidParameterValue", "Link connection '%s' has no tables; add them with edittables.", name)
	}
	if c.runner != nil {
		return c.startInCluster(lc)
	}
	if err := c.run(lc); err != nil {
		return err
	}
	_, err = c.update(workspace, name, func(l *LinkConnection) error {
		l.Running, l.StartTime = true, time.Now().UTC()
		l.DropExisting = false // dropped once, on the first start
		return nil
	})
	return err
}

// startInCluster records that the link should run, then runs a round of this process's runner: if this process
// is its candidate the link starts here now, and a start that fails is undone and answered (as in the embedded
// mode); otherwise its candidate takes it up (a DuckDb link whose controller is gone waits for it, and its status
// says so). DropExisting stays recorded until the link is stopped: a process that takes the link over before
// it has a checkpoint drops the target tables as the first start would have.
func (c *Catalog) startInCluster(lc *LinkConnection) error {
	if _, err := c.def(lc); err != nil {
		return err
	}
	if _, err := c.update(lc.Workspace, lc.Name, func(l *LinkConnection) error {
		l.Running, l.StartTime = true, time.Now().UTC()
		return nil
	}); err != nil {
		return err
	}
	err := c.runner.startNow(key(lc.Workspace, lc.Name))
	if err == nil {
		return nil
	}
	if _, uerr := c.update(lc.Workspace, lc.Name, func(l *LinkConnection) error {
		l.Running = false
		return nil
	}); uerr != nil {
		return errors.Join(err, uerr)
	}
	if rerr := c.runner.stopNow(key(lc.Workspace, lc.Name)); rerr != nil {
		return errors.Join(err, rerr)
	}
	return err
}

// Stop stops it (in cluster mode: wherever it runs, and returns once no process runs it).
func (c *Catalog) Stop(workspace, name string) error {
	if _, err := c.Connection(workspace, name); err != nil {
		return err
	}
	if c.runner != nil {
		if _, err := c.update(workspace, name, func(l *LinkConnection) error {
			l.Running, l.StopTime = false, time.Now().UTC()
			l.DropExisting = false // it has started once
			return nil
		}); err != nil {
			return err
		}
		if err := c.runner.stopNow(key(workspace, name)); err != nil {
			return errcatalog.Newf("ConflictingDatabaseOperation", "Link connection '%s': %v", name, err)
		}
		return nil
	}
	c.m.Stop(key(workspace, name))
	_, err := c.update(workspace, name, func(l *LinkConnection) error {
		l.Running, l.StopTime = false, time.Now().UTC()
		return nil
	})
	return err
}

// dropOwnedTimeout bounds how long deleting a link tries to drop its slot, publication and slot copy.
const dropOwnedTimeout = 30 * time.Second

// Delete stops and removes it, and drops what it owns on its source (its replication slot and publication, and
// its slot copy on the geo-secondary), which would otherwise retain WAL for ever. A source that cannot be reached
// (or refuses) does not stop the delete: the log names what is left to drop by hand.
func (c *Catalog) Delete(workspace, name string) error {
	if c.runner != nil {
		// Wherever it runs, it stops first: its slot cannot be dropped while a process reads from it.
		if _, err := c.Connection(workspace, name); err == nil {
			if err := c.Stop(workspace, name); err != nil {
				return err
			}
		}
	}
	c.m.Stop(key(workspace, name))
	if lc, err := c.Connection(workspace, name); err == nil {
		slot := lc.Slot
		if slot == "" {
			slot = link.LegacySlotName(key(workspace, name))
		}
		def, err := c.def(lc)
		if err == nil {
			ctx, cancel := context.WithTimeout(context.Background(), dropOwnedTimeout)
			err = c.m.DropOwned(ctx, def)
			cancel()
		}
		if err != nil {
			c.m.log.Warn("link connection deleted, but what it owns on its source could not be dropped: drop its replication slot "+
				"(and the copy on the geo-secondary) and its publication by hand", "link", name, "slot", slot, "publication", slot, "err", err)
		} else {
			c.m.log.Info("link connection deleted with its slot and publication", "link", name, "slot", slot)
		}
	}
	return c.m.st.Update(func(tx *store.Tx) error { return tx.Delete(store.LinkConnections, key(workspace, name)) })
}

// slotWALTimeout bounds reading a link's slot on its source.
const slotWALTimeout = 2 * time.Second

// SlotWAL reads the WAL the link connection's slot holds on its source, whether the link runs or not.
func (c *Catalog) SlotWAL(lc *LinkConnection) (link.SlotWAL, error) {
	def, err := c.def(lc)
	if err != nil {
		return link.SlotWAL{}, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), slotWALTimeout)
	defer cancel()
	return c.m.SlotWAL(ctx, def)
}

// SlotsWAL reads the WAL every link connection's slot holds on its source, by link ("workspace/name"); links whose
// source cannot be read or that have no slot are left out.
func (c *Catalog) SlotsWAL() map[string]link.SlotWAL {
	var all []LinkConnection
	_ = c.m.st.View(func(tx *store.Tx) (err error) {
		all, err = store.List[LinkConnection](tx, store.LinkConnections, "")
		return err
	})
	out := map[string]link.SlotWAL{}
	for i := range all {
		if w, err := c.SlotWAL(&all[i]); err == nil && w.Exists {
			out[key(all[i].Workspace, all[i].Name)] = w
		}
	}
	return out
}

// Resume starts every link connection that should run (at fogo's start).
func (c *Catalog) Resume() {
	var all []LinkConnection
	_ = c.m.st.View(func(tx *store.Tx) (err error) {
		all, err = store.List[LinkConnection](tx, store.LinkConnections, "")
		return err
	})
	for i := range all {
		if all[i].Running {
			if err := c.run(&all[i]); err != nil {
				// E.g. a target path an older fogo accepted: the link shows Failed with the reason until it is
				// stopped (or started again once the cause is fixed).
				c.m.log.Error("resume link connection", "link", all[i].Name, "err", err)
				msg := err.Error()
				if e, ok := errcatalog.As(err); ok {
					msg = e.Message
				}
				c.m.Failed(key(all[i].Workspace, all[i].Name), errors.New(msg))
			}
		}
	}
}

// Status returns a running link's status (ok false when it does not run).
func (c *Catalog) Status(workspace, name string) (link.Status, bool) {
	st, _, ok := c.StatusAt(workspace, name)
	return st, ok
}

// StatusAt returns a running link's status and, in cluster mode, the controller whose process runs it (ok false
// when it does not run). In cluster mode a link that should run but runs nowhere now is Starting, and its error
// says what it waits for (a DuckDb link whose controller is gone says so).
func (c *Catalog) StatusAt(workspace, name string) (link.Status, string, bool) {
	k := key(workspace, name)
	if st, ok := c.m.Status(k); ok {
		if c.runner != nil && st.Err == "" {
			st.Err = c.runner.copyErr(k)
		}
		return st, c.host, true
	}
	if c.runner == nil {
		return link.Status{}, "", false
	}
	p, ok, err := c.runner.placement(k)
	if err != nil {
		return link.Status{Phase: "Starting", Err: err.Error()}, "", true
	}
	if ok {
		st := p.Status
		if st.Err == "" {
			st.Err = c.runner.copyErr(k)
		}
		return st, p.RunsOn, true
	}
	lc, err := c.Connection(workspace, name)
	if err != nil || !lc.Running {
		return link.Status{}, "", false
	}
	return link.Status{Phase: "Starting", Err: c.runner.waiting(lc)}, "", true
}

// Query runs a read-only query against the link's target: it may read the link's target tables and nothing else
// (package target, query.go). req.SQL, MaxRows and Timeout come from the caller; the rest is filled in here.
func (c *Catalog) Query(ctx context.Context, workspace, name string, req target.QueryRequest) (*target.QueryResult, error) {
	lc, err := c.Connection(workspace, name)
	if err != nil {
		return nil, err
	}
	st, closeFn, err := c.targetStore(lc)
	if err != nil {
		return nil, err
	}
	defer closeFn()
	req.Link, req.Tables = key(workspace, name), nil
	for _, t := range lc.Tables {
		m := link.TableMapping{SourceSchema: t.SourceSchema, SourceTable: t.SourceTable, TargetSchema: t.TargetSchema, TargetTable: t.TargetTable}.WithDefaults()
		req.Tables = append(req.Tables, target.TableName{Schema: m.TargetSchema, Name: m.TargetTable})
	}
	return st.Query(ctx, req)
}

// targetStore returns the running link's target store, or opens one.
func (c *Catalog) targetStore(lc *LinkConnection) (*target.Store, func(), error) {
	if st := c.m.Target(key(lc.Workspace, lc.Name)); st != nil {
		return st, func() {}, nil
	}
	st, err := c.openTarget(lc)
	if err != nil {
		return nil, nil, err
	}
	return st, func() { st.Close() }, nil
}

// pathError is the 400 for a refused DuckDB target path.
func (c *Catalog) pathError(err error) error {
	var pe *PathError
	if !errors.As(err, &pe) {
		return err
	}
	return errcatalog.Newf("InvalidParameterValue", "typeProperties.path is refused: %s", c.pathMessage(pe)).WithTarget("properties.typeProperties.path")
}

// pathMessage says why a DuckDB target path is refused and where target files may live.
func (c *Catalog) pathMessage(err error) string {
	return fmt.Sprintf("%v. A DuckDb target file must be %s, without '..' components or symbolic links that lead elsewhere.",
		err, c.targets.Allowed())
}

func (c *Catalog) openTarget(lc *LinkConnection) (*target.Store, error) {
	ls, err := c.LinkedService(lc.Workspace, lc.TargetService)
	if err != nil {
		return nil, err
	}
	if ls.Type == TypeDuckDB {
		if ls.Host != c.host {
			return nil, fmt.Errorf("the DuckDb target file is on the host of controller %q, and this controller is %q: "+
				"the link runs in that controller (a DuckDb target stays on the host that holds its file)", ls.Host, c.host)
		}
		return c.openDuckDB(ls.Path)
	}
	st, err := target.OpenPostgres(ls.ConnectionString)
	if err != nil {
		return nil, err
	}
	if admin := c.managedTarget(ls.ConnectionString); admin != "" {
		st.SetRoleAdmin(admin)
	}
	return st, nil
}

// managedTarget returns fogo's own superuser connection to the database a PostgreSQL target's connection string
// names when that is a database of a fogo server reached through the server's endpoint on this host ("" for any
// other target). The query extension creates its read-only reader role through it: a server's admin login may
// not create roles (on PostgreSQL 15, CREATEROLE could grant itself pg_execute_server_program).
func (c *Catalog) managedTarget(connString string) string {
	cfg, err := pgconn.ParseConfig(connString)
	if err != nil || cfg.Port == 0 {
		return ""
	}
	if ip := net.ParseIP(cfg.Host); cfg.Host != "localhost" && (ip == nil || !ip.IsLoopback()) {
		return ""
	}
	var conn string
	_ = c.m.st.View(func(tx *store.Tx) error {
		servers, err := store.List[model.Server](tx, store.Servers, "")
		if err != nil {
			return err
		}
		for _, srv := range servers {
			if srv.GatewayPort != int(cfg.Port) {
				continue
			}
			var db model.Database
			if ok, err := tx.Get(store.Databases, model.DatabaseKey(armid.DatabaseID{Server: srv.ID, Name: cfg.Database}), &db); err != nil || !ok {
				return err
			}
			var inst model.Instance
			if ok, err := tx.Get(store.Instances, db.Instance, &inst); err != nil || !ok {
				return err
			}
			conn = c.m.cl.Handle(&inst).ConnString(cfg.Database)
		}
		return nil
	})
	return conn
}

// openDuckDB opens a DuckDB target file after checking its path again (a definition stored by an older fogo was
// never checked, and a symbolic link can be planted after the PUT), and checks once more after the open: a link
// planted between the check and DuckDB's open makes the open fail instead of serving a file elsewhere.
func (c *Catalog) openDuckDB(path string) (*target.Store, error) {
	allowed := func(err error) error {
		var pe *PathError
		if errors.As(err, &pe) {
			return errors.New(c.pathMessage(pe))
		}
		return err
	}
	real, err := c.targets.Resolve(path)
	if err != nil {
		return nil, allowed(err)
	}
	if err := os.MkdirAll(filepath.Dir(real), 0o700); err != nil {
		return nil, fmt.Errorf("create the DuckDB target's directory: %s", bare(err))
	}
	if err := c.targets.CheckOpen(path, real); err != nil {
		return nil, allowed(err)
	}
	st, err := target.OpenDuckDB(real)
	if err != nil {
		return nil, err
	}
	if err := c.targets.CheckOpen(path, real); err != nil {
		st.Close()
		return nil, allowed(err)
	}
	return st, nil
}

// SourceGroup is the failover group a link connection follows ("" for none).
func (c *Catalog) SourceGroup(lc *LinkConnection) string {
	ls, err := c.LinkedService(lc.Workspace, lc.SourceService)
	if err != nil {
		return ""
	}
	cfg, err := pgconn.ParseConfig(ls.ConnectionString)
	if err != nil {
		return ""
	}
	return c.groupOf(lc.SourceResourceID, cfg.Database)
}

// groupOf is the failover group a link's source resource id makes it follow: the group it names, or the group that
// replicates the database on the server it names (either partner); "" for none.
func (c *Catalog) groupOf(resourceID, database string) string {
	if id, err := armid.ParseFailoverGroupID(resourceID); err == nil {
		return id.Name
	}
	srv, err := armid.ParseServerID(resourceID)
	if err != nil {
		return ""
	}
	var groups []model.FailoverGroup
	_ = c.m.st.View(func(tx *store.Tx) (err error) {
		groups, err = store.List[model.FailoverGroup](tx, store.Groups, "")
		return err
	})
	for _, g := range groups {
		if !strings.EqualFold(g.Primary.Name, srv.Name) && !strings.EqualFold(g.Secondary.Name, srv.Name) {
			continue
		}
		for _, d := range g.Databases {
			if strings.EqualFold(d.Name, database) {
				return g.Name
			}
		}
	}
	return ""
}

// def is the worker definition of a link connection (without its target).
func (c *Catalog) def(lc *LinkConnection) (Def, error) {
	src, err := c.LinkedService(lc.Workspace, lc.SourceService)
	if err != nil {
		return Def{}, err
	}
	cfg, err := pgconn.ParseConfig(src.ConnectionString)
	if err != nil {
		return Def{}, errcatalog.Newf("InvalidParameterValue", "The source linked service's connection string is invalid.")
	}
	def := Def{Name: key(lc.Workspace, lc.Name), Slot: lc.Slot, Database: cfg.Database, Drop: lc.DropExisting, Source: src.ConnectionString,
		Interval: time.Duration(lc.IntervalMinutes) * time.Minute}
	if group := c.groupOf(lc.SourceResourceID, cfg.Database); group != "" {
		def.Group, def.Source = group, ""
	}
	for _, t := range lc.Tables {
		def.Tables = append(def.Tables, link.TableMapping{ID: t.ID, SourceSchema: t.SourceSchema, SourceTable: t.SourceTable,
			TargetSchema: t.TargetSchema, TargetTable: t.TargetTable})
	}
	return def, nil
}

// run starts the worker for a definition.
func (c *Catalog) run(lc *LinkConnection) error {
	def, err := c.def(lc)
	if err != nil {
		return err
	}
	st, err := c.openTarget(lc)
	if err != nil {
		return errcatalog.Newf("InvalidParameterValue", "The target cannot be opened: %v", err)
	}
	def.Target, def.OwnTarget = st, true
	def.RemoteKeeper = c.runner != nil // cluster mode: the elected controller keeps the slot copy
	if err := c.m.Start(def); err != nil {
		st.Close()
		return errcatalog.Newf("ConflictingDatabaseOperation", "%v", err)
	}
	return nil
}
