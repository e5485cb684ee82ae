package service

import (
	"context"
	"log/slog"
	"strings"
	"time"

	"github.com/fogo-db/fogo/internal/controlplane/armid"
	"github.com/fogo-db/fogo/internal/controlplane/cluster"
	"github.com/fogo-db/fogo/internal/controlplane/model"
	"github.com/fogo-db/fogo/internal/controlplane/operations"
	"github.com/fogo-db/fogo/internal/controlplane/store"
	"github.com/fogo-db/fogo/internal/errcatalog"
)

// Config holds the service's settings.
type Config struct {
	// MinGraceMinutes is the server setting for the smallest allowed failoverWithDataLossGracePeriodMinutes.
	MinGraceMinutes int32
	// MaxGroupsPerServer is the LimitOfFailoverGroupsPerServerExceeded limit.
	MaxGroupsPerServer int
	// GraceUnit is the length of one minute of failoverWithDataLossGracePeriodMinutes (tests shorten it).
	GraceUnit time.Duration
	// MaxDatabasesPerServer bounds databases (each is a PostgreSQL instance) on one server.
	MaxDatabasesPerServer int
	AdvertiseHost         string
}

// Endpoints opens and closes the gateway endpoints of servers.
type Endpoints interface {
	OpenServer(srv *model.Server) error
	CloseServer(srv *model.Server)
	// OpenGroup opens a group's read-write and read-only listeners on its leased ports (idempotent).
	OpenGroup(g *model.FailoverGroup) error
	// CloseGroup closes a group's listeners and their sessions.
	CloseGroup(g *model.FailoverGroup)
}

// Service is the domain layer.
type Service struct {
	*Routes
	cfg Config
	st  *store.Store
	ops *operations.Runner
	cl  *cluster.Manager
	ep  Endpoints
	log *slog.Logger
	obs *Observer
}

// New returns the service and registers its operation handlers.
func New(cfg Config, st *store.Store, ops *operations.Runner, cl *cluster.Manager, ep Endpoints, obs *Observer, log *slog.Logger) *Service {
	if cfg.MinGraceMinutes == 0 {
		cfg.MinGraceMinutes = 60
	}
	if cfg.MaxGroupsPerServer == 0 {
		cfg.MaxGroupsPerServer = 100
	}
	if cfg.MaxDatabasesPerServer == 0 {
		cfg.MaxDatabasesPerServer = 100
	}
	s := &Service{Routes: NewRoutes(st, cl), cfg: cfg, st: st, ops: ops, cl: cl, ep: ep, log: log, obs: obs}
	obs.SetAutomatic(cfg.GraceUnit, s.automaticFailover)
	s.registerHandlers()
	return s
}

// Config returns the service settings.
func (s *Service) Config() Config { return s.cfg }

// Operation returns an operation record.
func (s *Service) Operation(id string) (*model.Operation, error) {
	op, err := s.ops.Get(id)
	if err != nil {
		return nil, errcatalog.New("OperationIdNotFound")
	}
	return op, nil
}

// submit stores op together with the caller's change (in fn) and launches it.
func (s *Service) submit(op *model.Operation, fn func(tx *store.Tx) error) error {
	err := s.st.Update(func(tx *store.Tx) error {
		if err := fn(tx); err != nil {
			return err
		}
		return operations.Create(tx, op)
	})
	if err != nil {
		return err
	}
	s.ops.Launch(op.ID)
	return nil
}

func now() time.Time { return time.Now().UTC() }

func regionKey(location string) string {
	return strings.ReplaceAll(strings.ToLower(location), " ", "")
}

func getServer(tx *store.Tx, id armid.ServerID) (*model.Server, error) {
	var srv model.Server
	ok, err := tx.Get(store.Servers, id.Key(), &srv)
	if err != nil {
		return nil, err
	}
	if !ok {
		return nil, errcatalog.Newf("ResourceNotFound", "The Resource 'Microsoft.Sql/servers/%s' under resource group '%s' was not found.", id.Name, id.ResourceGroup)
	}
	return &srv, nil
}

func getDatabase(tx *store.Tx, id armid.DatabaseID) (*model.Database, bool, error) {
	var db model.Database
	ok, err := tx.Get(store.Databases, model.DatabaseKey(id), &db)
	return &db, ok, err
}

func getGroup(tx *store.Tx, name string) (*model.FailoverGroup, bool, error) {
	var g model.FailoverGroup
	ok, err := tx.Get(store.Groups, model.GroupKey(name), &g)
	return &g, ok, err
}

// WaitOperation blocks until an operation finishes (tests, bench).
func (s *Service) WaitOperation(ctx context.Context, id string) (*model.Operation, error) {
	return s.ops.WaitDone(ctx, id)
}

// ReplicationState is the observed replication state of a group.
func (s *Service) ReplicationState(g *model.FailoverGroup) string { return s.obs.GroupState(g) }
