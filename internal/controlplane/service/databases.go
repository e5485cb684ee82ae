package service

import (
	"context"
	"fmt"
	"strings"

	"github.com/google/uuid"

	"github.com/fogo-db/fogo/internal/controlplane/armid"
	"github.com/fogo-db/fogo/internal/controlplane/model"
	"github.com/fogo-db/fogo/internal/controlplane/operations"
	"github.com/fogo-db/fogo/internal/controlplane/store"
	"github.com/fogo-db/fogo/internal/controlplane/validate"
	"github.com/fogo-db/fogo/internal/errcatalog"
)

// PutDatabase creates a database (a new PostgreSQL instance on the server, long-running) or updates its tags.
func (s *Service) PutDatabase(id armid.DatabaseID, spec validate.DatabaseSpec) (*model.Database, Result, error) {
	var res Result
	var db *model.Database
	var op *model.Operation
	err := s.st.Update(func(tx *store.Tx) error {
		res, db, op = Result{}, nil, nil // fn may run again (the etcd store retries a conflicting update)
		srv, err := getServer(tx, id.Server)
		if err != nil {
			return errcatalog.Newf("ParentResourceNotFound", "Can not perform requested operation on nested resource. Parent resource '%s' not found.", id.Server.Name)
		}
		if regionKey(spec.Location) != regionKey(srv.Location) {
			return errcatalog.Newf("InvalidParameterValue", "The database location '%s' must be the location of its server '%s' ('%s').", spec.Location, srv.ID.Name, srv.Location)
		}
		existing, ok, err := getDatabase(tx, id)
		if err != nil {
			return err
		}
		if ok {
			if spec.Tags != nil {
				existing.Tags = spec.Tags
			}
			db = existing
			return tx.Put(store.Databases, model.DatabaseKey(id), existing)
		}
		count, err := countDatabases(tx, id.Server)
		if err != nil {
			return err
		}
		if count >= s.cfg.MaxDatabasesPerServer {
			return errcatalog.Newf("InvalidParameterValue", "Server '%s' already has %d databases, the most this fogo allows (--max-databases-per-server).", srv.ID.Name, count)
		}
		inst, err := s.cl.NewInstanceRecord(tx, id.Server, id.Name, model.RolePrimary)
		if err != nil {
			return err
		}
		db = &model.Database{
			ID: id, Location: srv.Location, Tags: spec.Tags, Status: model.DBCreating, DatabaseID: uuid.NewString(),
			Instance: inst.ID, Collation: spec.Collation, CreatedAt: now(),
		}
		if spec.SKU != nil {
			db.SKUName = spec.SKU.Name
		}
		if op, err = operations.NewOperation(model.OpCreateDatabase, id.String(), "database", regionKey(srv.Location), id); err != nil {
			return err
		}
		res.Created = true
		if err := operations.Create(tx, op); err != nil {
			return err
		}
		return tx.Put(store.Databases, model.DatabaseKey(id), db)
	})
	if err != nil {
		return nil, res, err
	}
	if op == nil {
		op, err = s.completedOp(model.OpCreateDatabase, id.String(), "database", db.Location)
		res.Op = op
		return db, res, err
	}
	res.Op = op
	s.ops.Launch(op.ID)
	return db, res, nil
}

func countDatabases(tx *store.Tx, server armid.ServerID) (int, error) {
	n := 0
	err := tx.Scan(store.Databases, server.Key()+"/", func(string, []byte) error { n++; return nil })
	return n, err
}

func (s *Service) runCreateDatabase(ctx context.Context, run *operations.Run) error {
	var id armid.DatabaseID
	if err := run.Params(&id); err != nil {
		return err
	}
	var db *model.Database
	var srv *model.Server
	var inst model.Instance
	err := s.st.View(func(tx *store.Tx) error {
		var err error
		var ok bool
		if srv, err = getServer(tx, id.Server); err != nil {
			return err
		}
		if db, ok, err = getDatabase(tx, id); err != nil || !ok {
			return fmt.Errorf("database %s vanished: %v", id.Name, err)
		}
		return tx.MustGet(store.Instances, db.Instance, &inst)
	})
	if err != nil {
		return err
	}
	unlock := s.cl.Lock("instance:" + inst.ID)
	defer unlock()
	if err := run.Step("provision instance"); err != nil {
		return err
	}
	if err := s.cl.Provision(ctx, &inst, srv.AdminLogin, srv.AdminVerifier); err != nil {
		return err
	}
	return s.setDatabaseStatus(id, model.DBOnline)
}

// finishCreateDatabase removes a database whose creation failed, so the name can be used again.
func (s *Service) finishCreateDatabase(tx *store.Tx, op *model.Operation) error {
	if op.Status == model.OpSucceeded {
		return nil
	}
	var id armid.DatabaseID
	if err := jsonUnmarshal(op.Params, &id); err != nil {
		return err
	}
	db, ok, err := getDatabase(tx, id)
	if err != nil || !ok {
		return err
	}
	db.Status = model.DBOffline
	return tx.Put(store.Databases, model.DatabaseKey(id), db)
}

func (s *Service) setDatabaseStatus(id armid.DatabaseID, status string) error {
	return s.st.Update(func(tx *store.Tx) error {
		db, ok, err := getDatabase(tx, id)
		if err != nil || !ok {
			return err
		}
		db.Status = status
		return tx.Put(store.Databases, model.DatabaseKey(id), db)
	})
}

// GetDatabase returns one database.
func (s *Service) GetDatabase(id armid.DatabaseID) (*model.Database, error) {
	var db *model.Database
	err := s.st.View(func(tx *store.Tx) error {
		if _, err := getServer(tx, id.Server); err != nil {
			return err
		}
		var ok bool
		var err error
		db, ok, err = getDatabase(tx, id)
		if err == nil && !ok {
			err = errcatalog.Newf("ResourceNotFound", "The Resource 'Microsoft.Sql/servers/%s/databases/%s' under resource group '%s' was not found.", id.Server.Name, id.Name, id.Server.ResourceGroup)
		}
		return err
	})
	return db, err
}

// ListDatabases lists a server's databases.
func (s *Service) ListDatabases(server armid.ServerID) ([]model.Database, error) {
	var out []model.Database
	err := s.st.View(func(tx *store.Tx) error {
		if _, err := getServer(tx, server); err != nil {
			return err
		}
		var err error
		out, err = store.List[model.Database](tx, store.Databases, server.Key()+"/")
		return err
	})
	return out, err
}

// DeleteDatabase deletes a database and its instance. A database in a failover group must leave it first.
func (s *Service) DeleteDatabase(id armid.DatabaseID) (Result, error) {
	var res Result
	var db *model.Database
	err := s.st.View(func(tx *store.Tx) error {
		if _, err := getServer(tx, id.Server); err != nil {
			return err
		}
		var ok bool
		var err error
		if db, ok, err = getDatabase(tx, id); err != nil {
			return err
		}
		if !ok {
			return errNoDatabase
		}
		if db.Group != "" {
			return errcatalog.Newf("InvalidDatabaseStateForOperation", "Database '%s' is in failover group '%s'. Remove it from the group (or delete the group) first.", id.Name, db.Group)
		}
		if db.Status == model.DBCreating {
			return errcatalog.Newf("ConflictingDatabaseOperation", "Database '%s' is still being created.", id.Name)
		}
		return nil
	})
	if err == errNoDatabase {
		return res, nil // ARM: deleting something absent answers 204
	}
	if err != nil {
		return res, err
	}
	op, err := operations.NewOperation(model.OpDeleteDatabase, id.String(), "", regionKey(db.Location), id)
	if err != nil {
		return res, err
	}
	res.Op = op
	return res, s.submit(op, func(tx *store.Tx) error {
		db.Status = model.DBDeleting
		return tx.Put(store.Databases, model.DatabaseKey(id), db)
	})
}

var errNoDatabase = fmt.Errorf("no such database")

func (s *Service) runDeleteDatabase(ctx context.Context, run *operations.Run) error {
	var id armid.DatabaseID
	if err := run.Params(&id); err != nil {
		return err
	}
	if err := run.Step("destroy instance"); err != nil {
		return err
	}
	var db *model.Database
	var ok bool
	err := s.st.View(func(tx *store.Tx) (err error) { db, ok, err = getDatabase(tx, id); return err })
	if err != nil || !ok {
		return err
	}
	return s.destroyDatabase(ctx, db)
}

// destroyDatabase stops and removes the instance behind a database, then the database record.
func (s *Service) destroyDatabase(ctx context.Context, db *model.Database) error {
	inst, err := s.cl.GetInstance(db.Instance)
	if err == nil {
		unlock := s.cl.Lock("instance:" + inst.ID)
		err = s.cl.Destroy(ctx, inst)
		unlock()
		if err != nil {
			return fmt.Errorf("delete database %s: %w", db.ID.Name, err)
		}
	}
	return s.st.Update(func(tx *store.Tx) error { return tx.Delete(store.Databases, model.DatabaseKey(db.ID)) })
}

func isReserved(name string) bool {
	switch strings.ToLower(name) {
	case "master", "tempdb", "model", "msdb", "resource", "postgres", "template0", "template1":
		return true
	}
	return false
}
