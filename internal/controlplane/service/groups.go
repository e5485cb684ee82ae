package service

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"

	"github.com/fogo-db/fogo/internal/controlplane/armid"
	"github.com/fogo-db/fogo/internal/controlplane/cluster"
	"github.com/fogo-db/fogo/internal/controlplane/failover"
	"github.com/fogo-db/fogo/internal/controlplane/model"
	"github.com/fogo-db/fogo/internal/controlplane/operations"
	"github.com/fogo-db/fogo/internal/controlplane/store"
	"github.com/fogo-db/fogo/internal/controlplane/validate"
	"github.com/fogo-db/fogo/internal/errcatalog"
)

func jsonUnmarshal(raw []byte, v any) error { return json.Unmarshal(raw, v) }

// groupChange is the recorded intent of an upsert: databases to seed and databases to detach.
type groupChange struct {
	Group  string   `json:"group"`
	Add    []string `json:"add,omitempty"`
	Remove []string `json:"remove,omitempty"`
	Delete bool     `json:"delete,omitempty"`
}

func errGroupNotFound(server armid.ServerID, name string) error {
	return errcatalog.Newf("ResourceNotFound", "The Resource 'Microsoft.Sql/servers/%s/failoverGroups/%s' under resource group '%s' was not found.", server.Name, name, server.ResourceGroup)
}

// GetGroup returns the group as seen from server (which must be one of its two servers).
func (s *Service) GetGroup(server armid.ServerID, name string) (*model.FailoverGroup, error) {
	var g *model.FailoverGroup
	err := s.st.View(func(tx *store.Tx) error {
		if _, err := getServer(tx, server); err != nil {
			return err
		}
		var ok bool
		var err error
		if g, ok, err = getGroup(tx, name); err != nil {
			return err
		}
		if !ok || g.RoleOf(server) == "" {
			return errGroupNotFound(server, name)
		}
		return nil
	})
	return g, err
}

// ListGroups returns the groups a server takes part in.
func (s *Service) ListGroups(server armid.ServerID) ([]model.FailoverGroup, error) {
	var out []model.FailoverGroup
	err := s.st.View(func(tx *store.Tx) error {
		if _, err := getServer(tx, server); err != nil {
			return err
		}
		all, err := store.List[model.FailoverGroup](tx, store.Groups, "")
		for _, g := range all {
			if g.RoleOf(server) != "" {
				out = append(out, g)
			}
		}
		return err
	})
	return out, err
}

// CurrentSpec returns the writable part of a group, for PATCH merging.
func CurrentSpec(g *model.FailoverGroup) validate.FailoverGroupSpec {
	spec := validate.FailoverGroupSpec{
		Tags: g.Tags, ReadWritePolicy: g.ReadWritePolicy, GracePeriodMinutes: g.GraceMinutes,
		ReadOnlyPolicy: g.ReadOnlyPolicy, ReadOnlyTargetServer: g.ReadOnlyTarget, SecondaryType: g.SecondaryType,
		PartnerServers: []armid.ServerID{g.Secondary},
	}
	for _, d := range g.Databases {
		spec.Databases = append(spec.Databases, armid.DatabaseID{Server: g.Primary, Name: d.Name})
	}
	return spec
}

// PutGroup creates a failover group on primary, or updates it (PUT and PATCH both end here).
func (s *Service) PutGroup(primary armid.ServerID, name string, spec validate.FailoverGroupSpec) (*model.FailoverGroup, Result, error) {
	var res Result
	var g *model.FailoverGroup
	var op *model.Operation
	err := s.st.Update(func(tx *store.Tx) error {
		res, g, op = Result{}, nil, nil // fn may run again (the etcd store retries a conflicting update)
		srv, err := getServer(tx, primary)
		if err != nil {
			return err
		}
		existing, exists, err := getGroup(tx, name)
		if err != nil {
			return err
		}
		if exists {
			if err := checkExistingGroup(existing, primary, spec); err != nil {
				return err
			}
			if err := checkNotBusy(tx, existing); err != nil {
				return err
			}
		}
		partner, err := s.checkPartner(tx, srv, spec)
		if err != nil {
			return err
		}
		if !exists {
			if err := s.checkGroupLimit(tx, srv.ID, partner.ID); err != nil {
				return err
			}
			existing = &model.FailoverGroup{Name: name, Primary: srv.ID, Secondary: partner.ID, CreatedAt: now()}
			if err := s.leaseListenerPorts(tx, existing); err != nil {
				return err
			}
			res.Created = true
		}
		g = existing
		applySpec(g, spec)
		change, err := s.planDatabases(tx, g, spec)
		if err != nil {
			return err
		}
		if op, err = operations.NewOperation(model.OpUpsertGroup, groupID(primary, name), "failoverGroup", regionKey(srv.Location), change); err != nil {
			return err
		}
		g.Operation = op.ID
		if err := operations.Create(tx, op); err != nil {
			return err
		}
		return tx.Put(store.Groups, g.Key(), g)
	})
	if err != nil {
		return nil, res, err
	}
	res.Op = op
	if res.Created {
		if err := s.ep.OpenGroup(g); err != nil {
			s.log.Error("open failover group listeners", "group", g.Name, "err", err)
		}
	}
	s.ops.Launch(op.ID)
	return g, res, nil
}

// leaseListenerPorts gives a group ports for its read-write and read-only listeners (once).
func (s *Service) leaseListenerPorts(tx *store.Tx, g *model.FailoverGroup) error {
	var err error
	if g.RWPort == 0 {
		if g.RWPort, err = s.cl.AllocatePort(tx, "listener-rw:"+g.Key()); err != nil {
			return err
		}
	}
	if g.ROPort == 0 {
		if g.ROPort, err = s.cl.AllocatePort(tx, "listener-ro:"+g.Key()); err != nil {
			return err
		}
	}
	return nil
}

// OpenGroupListeners opens the listeners of every group, leasing ports for groups stored without them (at start).
func (s *Service) OpenGroupListeners() error {
	var groups []model.FailoverGroup
	err := s.st.Update(func(tx *store.Tx) error {
		all, err := store.List[model.FailoverGroup](tx, store.Groups, "")
		if err != nil {
			return err
		}
		for i := range all {
			if all[i].RWPort == 0 || all[i].ROPort == 0 {
				if err := s.leaseListenerPorts(tx, &all[i]); err != nil {
					return err
				}
				if err := tx.Put(store.Groups, all[i].Key(), &all[i]); err != nil {
					return err
				}
			}
		}
		groups = all
		return nil
	})
	if err != nil {
		return err
	}
	for i := range groups {
		if err := s.ep.OpenGroup(&groups[i]); err != nil {
			s.log.Error("open failover group listeners", "group", groups[i].Name, "err", err)
		}
	}
	return nil
}

func groupID(server armid.ServerID, name string) string {
	return server.String() + "/failoverGroups/" + name
}

// checkExistingGroup applies the rules for a PUT that names an existing group.
func checkExistingGroup(g *model.FailoverGroup, primary armid.ServerID, spec validate.FailoverGroupSpec) error {
	switch g.RoleOf(primary) {
	case "Secondary":
		return errcatalog.New("FailoverGroupUpdateOrDeleteRequestOnSecondary")
	case "":
		return errcatalog.New("FailoverGroupAlreadyExists")
	}
	if len(spec.PartnerServers) == 1 && spec.PartnerServers[0].Key() != g.Secondary.Key() {
		return errcatalog.New("FailoverGroupCreateOrUpdateRequestReadOnlyPropertyModified", "partnerServers")
	}
	return nil
}

// checkNotBusy refuses a change of a group whose operation still runs (FailoverGroupBusy).
func checkNotBusy(tx *store.Tx, g *model.FailoverGroup) error {
	if g.Operation == "" {
		return nil
	}
	// Read in tx: the decision "not busy" and the change it allows commit together (on etcd, a concurrent launch
	// of an operation makes this update run again).
	var op model.Operation
	if ok, err := tx.Get(store.Operations, g.Operation, &op); err != nil {
		return err
	} else if ok && !op.Done() {
		return errcatalog.New("FailoverGroupBusy")
	}
	return nil
}

// checkPartner resolves the partner server: it must exist, be in the same subscription and another region.
func (s *Service) checkPartner(tx *store.Tx, primary *model.Server, spec validate.FailoverGroupSpec) (*model.Server, error) {
	pid := spec.PartnerServers[0]
	var partner model.Server
	ok, err := tx.Get(store.Servers, pid.Key(), &partner)
	if err != nil {
		return nil, err
	}
	if !ok {
		return nil, errcatalog.Newf("ServerNotFound", "The requested partner server '%s' was not found.", pid.String())
	}
	if regionKey(partner.Location) == regionKey(primary.Location) {
		return nil, errcatalog.New("InvalidFailoverGroupRegion")
	}
	return &partner, nil
}

func (s *Service) checkGroupLimit(tx *store.Tx, servers ...armid.ServerID) error {
	all, err := store.List[model.FailoverGroup](tx, store.Groups, "")
	if err != nil {
		return err
	}
	for _, id := range servers {
		n := 0
		for _, g := range all {
			if g.RoleOf(id) != "" {
				n++
			}
		}
		if n >= s.cfg.MaxGroupsPerServer {
			return errcatalog.New("LimitOfFailoverGroupsPerServerExceeded")
		}
	}
	return nil
}

func applySpec(g *model.FailoverGroup, spec validate.FailoverGroupSpec) {
	g.Tags = spec.Tags
	g.ReadWritePolicy, g.GraceMinutes = spec.ReadWritePolicy, spec.GracePeriodMinutes
	g.ReadOnlyPolicy, g.ReadOnlyTarget = spec.ReadOnlyPolicy, spec.ReadOnlyTargetServer
	if g.ReadOnlyPolicy == "" {
		g.ReadOnlyPolicy = model.RODisabled
	}
	g.SecondaryType = spec.SecondaryType
}

// planDatabases compares the requested database list with the group's and prepares the records of databases to
// add (primary checks, geo-secondary instance and database records on the partner) and to remove.
func (s *Service) planDatabases(tx *store.Tx, g *model.FailoverGroup, spec validate.FailoverGroupSpec) (groupChange, error) {
	change := groupChange{Group: g.Key()}
	want := map[string]bool{}
	for _, id := range spec.Databases {
		want[strings.ToLower(id.Name)] = true
		if _, in := g.Database(id.Name); in {
			continue
		}
		if err := s.addDatabase(tx, g, id); err != nil {
			return change, err
		}
		change.Add = append(change.Add, id.Name)
	}
	for _, d := range g.Databases {
		if !want[strings.ToLower(d.Name)] {
			change.Remove = append(change.Remove, d.Name)
		}
	}
	return change, nil
}

// addDatabase checks that a database can join the group and creates its geo-secondary records.
func (s *Service) addDatabase(tx *store.Tx, g *model.FailoverGroup, id armid.DatabaseID) error {
	db, ok, err := getDatabase(tx, armid.DatabaseID{Server: g.Primary, Name: id.Name})
	if err != nil {
		return err
	}
	if !ok || db.GeoSecondary {
		return errcatalog.New("FailoverGroupCreateOrUpdateRequestInvalidDatabaseServer")
	}
	if db.Group != "" && db.Group != g.Key() {
		return errcatalog.New("DatabaseBelongsToOtherFailoverGroup")
	}
	if db.Status != model.DBOnline {
		return errcatalog.Newf("InvalidDatabaseStateForOperation", "Database '%s' is %s; only an Online database can join a failover group.", db.ID.Name, db.Status)
	}
	remoteID := armid.DatabaseID{Server: g.Secondary, Name: db.ID.Name}
	if _, exists, err := getDatabase(tx, remoteID); err != nil {
		return err
	} else if exists {
		return errcatalog.New("RemoteDatabaseExists")
	}
	var partner model.Server
	if err := tx.MustGet(store.Servers, g.Secondary.Key(), &partner); err != nil {
		return err
	}
	inst, err := s.cl.NewInstanceRecord(tx, g.Secondary, db.ID.Name, model.RoleStandby)
	if err != nil {
		return err
	}
	inst.Upstream = db.Instance
	if err := tx.Put(store.Instances, inst.ID, inst); err != nil {
		return err
	}
	remote := &model.Database{
		ID: remoteID, Location: partner.Location, Status: model.DBCreating, DatabaseID: db.DatabaseID,
		Instance: inst.ID, CreatedAt: now(), Group: g.Key(), GeoSecondary: true, SKUName: db.SKUName,
	}
	if err := tx.Put(store.Databases, model.DatabaseKey(remoteID), remote); err != nil {
		return err
	}
	db.Group = g.Key()
	if err := tx.Put(store.Databases, model.DatabaseKey(db.ID), db); err != nil {
		return err
	}
	g.Databases = append(g.Databases, model.GroupDatabase{Name: db.ID.Name, Primary: db.Instance, Secondary: inst.ID})
	return nil
}

// runUpsertGroup seeds added databases and detaches removed ones.
func (s *Service) runUpsertGroup(ctx context.Context, run *operations.Run) error {
	var ch groupChange
	if err := run.Params(&ch); err != nil {
		return err
	}
	unlock := s.cl.Lock(ch.Group)
	defer unlock()
	for _, name := range ch.Add {
		if err := run.Step("seed " + name); err != nil {
			return err
		}
		if err := s.seed(ctx, ch.Group, name); err != nil {
			return err
		}
	}
	for _, name := range ch.Remove {
		if err := run.Step("detach " + name); err != nil {
			return err
		}
		if err := s.detach(ctx, ch.Group, name); err != nil {
			return err
		}
	}
	if ch.Delete {
		if err := run.Step("delete group"); err != nil {
			return err
		}
		var g model.FailoverGroup
		err := s.st.Update(func(tx *store.Tx) error {
			g = model.FailoverGroup{} // fn may run again
			if ok, err := tx.Get(store.Groups, ch.Group, &g); err != nil || !ok {
				return err
			}
			for _, p := range []int{g.RWPort, g.ROPort} {
				if p != 0 {
					if err := cluster.ReleasePort(tx, p); err != nil {
						return err
					}
				}
			}
			return tx.Delete(store.Groups, ch.Group)
		})
		if err != nil {
			return err
		}
		s.ep.CloseGroup(&g)
	}
	return nil
}

// seed creates the geo-secondary of one database by base backup and waits until it streams.
func (s *Service) seed(ctx context.Context, groupKey, name string) error {
	var g model.FailoverGroup
	if err := s.st.View(func(tx *store.Tx) error { return tx.MustGet(store.Groups, groupKey, &g) }); err != nil {
		return err
	}
	gd, ok := g.Database(name)
	if !ok {
		return nil // removed meanwhile
	}
	sec, err := s.cl.GetInstance(gd.Secondary)
	if err != nil {
		return err
	}
	prim, err := s.cl.GetInstance(gd.Primary)
	if err != nil {
		return err
	}
	if err := s.cl.Seed(ctx, sec, prim); err != nil {
		return err
	}
	if err := s.cl.WaitStreaming(ctx, sec); err != nil {
		return fmt.Errorf("seed %s: %w", name, err)
	}
	return s.setDatabaseStatus(armid.DatabaseID{Server: g.Secondary, Name: name}, model.DBOnline)
}

// detach ends replication of one database: the geo-secondary copy is promoted and stays on the partner server as
// an independent database (nothing is deleted); the primary's slot for it is dropped.
func (s *Service) detach(ctx context.Context, groupKey, name string) error {
	var g model.FailoverGroup
	if err := s.st.View(func(tx *store.Tx) error { return tx.MustGet(store.Groups, groupKey, &g) }); err != nil {
		return err
	}
	gd, ok := g.Database(name)
	if !ok {
		return nil
	}
	sec, err := s.cl.GetInstance(gd.Secondary)
	if err != nil {
		return err
	}
	prim, err := s.cl.GetInstance(gd.Primary)
	if err != nil {
		return err
	}
	if err := s.cl.Detach(ctx, sec, prim); err != nil {
		return fmt.Errorf("detach %s: %w", name, err)
	}
	return s.st.Update(func(tx *store.Tx) error {
		var cur model.FailoverGroup
		if err := tx.MustGet(store.Groups, groupKey, &cur); err != nil {
			return err
		}
		kept := cur.Databases[:0]
		for _, d := range cur.Databases {
			if !strings.EqualFold(d.Name, name) {
				kept = append(kept, d)
			}
		}
		cur.Databases = kept
		for _, server := range []armid.ServerID{cur.Primary, cur.Secondary} {
			db, ok, err := getDatabase(tx, armid.DatabaseID{Server: server, Name: name})
			if err != nil {
				return err
			}
			if ok {
				db.Group, db.GeoSecondary, db.Status = "", false, model.DBOnline
				if err := tx.Put(store.Databases, model.DatabaseKey(db.ID), db); err != nil {
					return err
				}
			}
		}
		return tx.Put(store.Groups, cur.Key(), &cur)
	})
}

// DeleteGroup ends the group: every database is detached (see detach), then the group is removed.
func (s *Service) DeleteGroup(server armid.ServerID, name string) (Result, error) {
	var res Result
	var op *model.Operation
	err := s.st.Update(func(tx *store.Tx) error {
		srv, err := getServer(tx, server)
		if err != nil {
			return err
		}
		g, ok, err := getGroup(tx, name)
		if err != nil {
			return err
		}
		if !ok || g.RoleOf(server) == "" {
			return errNoGroup
		}
		if g.RoleOf(server) == "Secondary" {
			return errcatalog.New("FailoverGroupUpdateOrDeleteRequestOnSecondary")
		}
		if err := checkNotBusy(tx, g); err != nil {
			return err
		}
		ch := groupChange{Group: g.Key(), Delete: true}
		for _, d := range g.Databases {
			ch.Remove = append(ch.Remove, d.Name)
		}
		if op, err = operations.NewOperation(model.OpDeleteGroup, groupID(server, name), "", regionKey(srv.Location), ch); err != nil {
			return err
		}
		g.Operation = op.ID
		if err := operations.Create(tx, op); err != nil {
			return err
		}
		return tx.Put(store.Groups, g.Key(), g)
	})
	if err == errNoGroup {
		return res, nil
	}
	if err != nil {
		return res, err
	}
	res.Op = op
	s.ops.Launch(op.ID)
	return res, nil
}

var errNoGroup = fmt.Errorf("no such group")

// Failover starts a failover of group `name` to `server` (which must be its secondary), asked through the API.
// kind is model.OpPlanned, model.OpForced or model.OpTryPlanned.
func (s *Service) Failover(server armid.ServerID, name, kind string) (Result, error) {
	return s.failover(server, name, kind, "user")
}

// automaticFailover is the Automatic policy's forced failover of a group whose primary stayed unavailable.
func (s *Service) automaticFailover(g *model.FailoverGroup) error {
	res, err := s.failover(g.Secondary, g.Name, model.OpForced, "Automatic policy")
	if err == nil && res.Op != nil {
		s.log.Warn("Automatic policy: forced failover started", "group", g.Name, "to", g.Secondary.Name, "op", res.Op.ID)
	}
	return err
}

func (s *Service) failover(server armid.ServerID, name, kind, initiatedBy string) (Result, error) {
	var res Result
	var op *model.Operation
	err := s.st.Update(func(tx *store.Tx) error {
		srv, err := getServer(tx, server)
		if err != nil {
			return err
		}
		g, ok, err := getGroup(tx, name)
		if err != nil {
			return err
		}
		if !ok || g.RoleOf(server) == "" {
			return errcatalog.New("FailoverGroupDoesNotExist")
		}
		if g.RoleOf(server) == "Primary" {
			return errcatalog.New("FailoverGroupFailoverRequestOnPrimary")
		}
		if err := checkNotBusy(tx, g); err != nil {
			return err
		}
		for _, d := range g.Databases {
			if d.Secondary == "" {
				return errcatalog.Newf("IncorrectReplicationLinkState", "Database '%s' has no geo-secondary yet.", d.Name)
			}
			// A copy that cannot become primary (never seeded, data directory lost) is refused before an
			// operation could fence the primary for it.
			var sec model.Instance
			if err := tx.MustGet(store.Instances, d.Secondary, &sec); err != nil {
				return err
			}
			if err := failover.CheckCopy(&sec, s.cl.Handle(&sec)); err != nil {
				return failover.CannotBecomePrimary(d.Name, err)
			}
		}
		plan := failover.NewPlan(g, server, kind)
		plan.InitiatedBy = initiatedBy
		if op, err = operations.NewOperation(kind, groupID(server, name), "failoverGroup", regionKey(srv.Location), plan); err != nil {
			return err
		}
		g.Operation = op.ID
		if err := operations.Create(tx, op); err != nil {
			return err
		}
		return tx.Put(store.Groups, g.Key(), g)
	})
	if err != nil {
		return res, err
	}
	res.Op = op
	s.ops.Launch(op.ID)
	return res, nil
}

// clearGroupBusy is the Finish hook of group operations.
func clearGroupBusy(tx *store.Tx, op *model.Operation) error {
	var ch groupChange
	if err := json.Unmarshal(op.Params, &ch); err != nil {
		return err
	}
	g, ok, err := getGroup(tx, ch.Group)
	if err != nil || !ok {
		return err
	}
	if g.Operation == op.ID {
		g.Operation = ""
		return tx.Put(store.Groups, g.Key(), g)
	}
	return nil
}

func (s *Service) registerHandlers() {
	s.ops.Register(model.OpDeleteServer, operations.Handler{Run: s.runDeleteServer})
	s.ops.Register(model.OpCreateDatabase, operations.Handler{Run: s.runCreateDatabase, Finish: s.finishCreateDatabase})
	s.ops.Register(model.OpDeleteDatabase, operations.Handler{Run: s.runDeleteDatabase})
	s.ops.Register(model.OpUpsertGroup, operations.Handler{Run: s.runUpsertGroup, Finish: clearGroupBusy})
	s.ops.Register(model.OpDeleteGroup, operations.Handler{Run: s.runUpsertGroup, Finish: clearGroupBusy})
}
