package service

import (
	"context"
	"fmt"
	"strings"

	"github.com/fogo-db/fogo/internal/controlplane/armid"
	"github.com/fogo-db/fogo/internal/controlplane/cluster"
	"github.com/fogo-db/fogo/internal/controlplane/model"
	"github.com/fogo-db/fogo/internal/controlplane/operations"
	"github.com/fogo-db/fogo/internal/controlplane/store"
	"github.com/fogo-db/fogo/internal/controlplane/validate"
	"github.com/fogo-db/fogo/internal/errcatalog"
	"github.com/fogo-db/fogo/internal/postgres/scram"
)

// Result is what a create/update/delete returns to the REST layer.
type Result struct {
	Created bool
	Op      *model.Operation // nil when the change completed synchronously without an operation
}

// PutServer creates or updates a logical server. Creating one leases its gateway port and opens its endpoint.
func (s *Service) PutServer(ctx context.Context, id armid.ServerID, spec validate.ServerSpec) (*model.Server, Result, error) {
	var srv model.Server
	var res Result
	live, err := s.cl.LiveAgents(ctx)
	if err != nil {
		return nil, res, err
	}
	err = s.st.Update(func(tx *store.Tx) error {
		srv, res = model.Server{}, Result{} // fn may run again (the etcd store retries a conflicting update)
		ok, err := tx.Get(store.Servers, id.Key(), &srv)
		if err != nil {
			return err
		}
		if ok {
			return s.updateServer(ctx, tx, &srv, spec)
		}
		if err := checkServerNameFree(tx, id); err != nil {
			return err
		}
		host, err := s.cl.PlaceServer(tx, spec.Location, live)
		if err != nil {
			return err
		}
		port, err := s.cl.AllocatePort(tx, "server:"+id.Key())
		if err != nil {
			return err
		}
		srv = model.Server{
			ID: id, Location: spec.Location, Tags: spec.Tags, AdminLogin: spec.AdministratorLogin,
			AdminVerifier: scram.Verifier(spec.AdministratorLoginPassword), Version: "15",
			State: "Ready", GatewayPort: port, CreatedAt: now(), Host: host,
		}
		res.Created = true
		return tx.Put(store.Servers, id.Key(), &srv)
	})
	if err != nil {
		return nil, res, err
	}
	if res.Created {
		if err := s.ep.OpenServer(&srv); err != nil {
			s.log.Error("open server endpoint", "server", id.Name, "err", err)
		}
	}
	op, err := s.completedOp(model.OpCreateServer, id.String(), "server", srv.Location)
	res.Op = op
	return &srv, res, err
}

// completedOp records an operation that finished synchronously, so ARM clients can poll it like any other.
func (s *Service) completedOp(kind, resource, resultKind, location string) (*model.Operation, error) {
	op, err := operations.NewOperation(kind, resource, resultKind, regionKey(location), nil)
	if err != nil {
		return nil, err
	}
	op.Status, op.Step, op.Finished = model.OpSucceeded, "done", now()
	return op, s.st.Update(func(tx *store.Tx) error { return operations.Create(tx, op) })
}

// checkServerNameFree enforces that a server name is unique across resource groups: in Azure it is a DNS name.
func checkServerNameFree(tx *store.Tx, id armid.ServerID) error {
	servers, err := store.List[model.Server](tx, store.Servers, "")
	if err != nil {
		return err
	}
	for _, other := range servers {
		if strings.EqualFold(other.ID.Name, id.Name) {
			return errcatalog.Newf("NameAlreadyExists", "The server name '%s' is already in use (resource group '%s'). Server names must be unique.", id.Name, other.ID.ResourceGroup)
		}
	}
	return nil
}

func (s *Service) updateServer(ctx context.Context, tx *store.Tx, srv *model.Server, spec validate.ServerSpec) error {
	if !strings.EqualFold(regionKey(srv.Location), regionKey(spec.Location)) {
		return errcatalog.Newf("InvalidParameterValue", "The location of server '%s' is '%s' and cannot be changed to '%s'.", srv.ID.Name, srv.Location, spec.Location)
	}
	if spec.AdministratorLogin != "" && !strings.EqualFold(spec.AdministratorLogin, srv.AdminLogin) {
		return errcatalog.Newf("InvalidParameterValue", "The administratorLogin of server '%s' cannot be changed.", srv.ID.Name)
	}
	if spec.Tags != nil {
		srv.Tags = spec.Tags
	}
	if spec.AdministratorLoginPassword != "" {
		srv.AdminVerifier = scram.Verifier(spec.AdministratorLoginPassword)
		if err := s.applyAdminPassword(ctx, tx, srv); err != nil {
			return err
		}
	}
	return tx.Put(store.Servers, srv.ID.Key(), srv)
}

// applyAdminPassword sets the new verifier on every primary instance of the server (standbys get it by
// replication).
func (s *Service) applyAdminPassword(ctx context.Context, tx *store.Tx, srv *model.Server) error {
	insts, err := store.List[model.Instance](tx, store.Instances, "")
	if err != nil {
		return err
	}
	for i := range insts {
		in := &insts[i]
		if in.Server.Key() != srv.ID.Key() || in.Role != model.RolePrimary {
			continue
		}
		if err := s.cl.Handle(in).EnsureRole(ctx, srv.AdminLogin, srv.AdminVerifier); err != nil {
			return fmt.Errorf("set admin password on database %s: %w", in.Database, err)
		}
	}
	return nil
}

// GetServer returns one server.
func (s *Service) GetServer(id armid.ServerID) (*model.Server, error) {
	var srv *model.Server
	err := s.st.View(func(tx *store.Tx) (err error) { srv, err = getServer(tx, id); return err })
	return srv, err
}

// ListServers lists the servers of a subscription, optionally of one resource group.
func (s *Service) ListServers(subscription, resourceGroup string) ([]model.Server, error) {
	var out []model.Server
	err := s.st.View(func(tx *store.Tx) error {
		all, err := store.List[model.Server](tx, store.Servers, "")
		for _, srv := range all {
			if !strings.EqualFold(srv.ID.Subscription, subscription) {
				continue
			}
			if resourceGroup != "" && !strings.EqualFold(srv.ID.ResourceGroup, resourceGroup) {
				continue
			}
			out = append(out, srv)
		}
		return err
	})
	return out, err
}

// DeleteServer deletes a server and all its databases. A server in a failover group must leave it first.
func (s *Service) DeleteServer(id armid.ServerID) (Result, error) {
	var res Result
	var srv *model.Server
	err := s.st.View(func(tx *store.Tx) error {
		var err error
		if srv, err = getServer(tx, id); err != nil {
			return err
		}
		groups, err := store.List[model.FailoverGroup](tx, store.Groups, "")
		for _, g := range groups {
			if g.RoleOf(id) != "" {
				return errcatalog.Newf("ConflictingServerOperation", "Server '%s' is part of failover group '%s'. Delete the failover group first.", id.Name, g.Name)
			}
		}
		return err
	})
	if err != nil {
		return res, err
	}
	op, err := operations.NewOperation(model.OpDeleteServer, id.String(), "", regionKey(srv.Location), id)
	if err != nil {
		return res, err
	}
	res.Op = op
	return res, s.submit(op, func(tx *store.Tx) error {
		srv.State = "Deleting"
		return tx.Put(store.Servers, id.Key(), srv)
	})
}

func (s *Service) runDeleteServer(ctx context.Context, run *operations.Run) error {
	var id armid.ServerID
	if err := run.Params(&id); err != nil {
		return err
	}
	if err := run.Step("delete databases"); err != nil {
		return err
	}
	var dbs []model.Database
	var srv *model.Server
	err := s.st.View(func(tx *store.Tx) error {
		var err error
		if srv, err = getServer(tx, id); err != nil {
			return err
		}
		dbs, err = store.List[model.Database](tx, store.Databases, id.Key()+"/")
		return err
	})
	if err != nil {
		return err
	}
	for i := range dbs {
		if err := s.destroyDatabase(ctx, &dbs[i]); err != nil {
			return err
		}
	}
	if err := run.Step("close endpoint"); err != nil {
		return err
	}
	s.ep.CloseServer(srv)
	return s.st.Update(func(tx *store.Tx) error {
		if err := cluster.ReleasePort(tx, srv.GatewayPort); err != nil {
			return err
		}
		return tx.Delete(store.Servers, id.Key())
	})
}
