package service

import (
	"encoding/json"
	"errors"

	"github.com/fogo-db/fogo/internal/controlplane/armid"
	"github.com/fogo-db/fogo/internal/controlplane/cluster"
	"github.com/fogo-db/fogo/internal/controlplane/failover"
	"github.com/fogo-db/fogo/internal/controlplane/model"
	"github.com/fogo-db/fogo/internal/controlplane/store"
)

// Routing errors the gateway and the listeners turn into SQLSTATEs for the client.
var (
	// ErrUnknownDatabase: the server or group has no database of that name.
	ErrUnknownDatabase = errors.New("database does not exist on this server")
	// ErrUnknownGroup: the listener's group is gone.
	ErrUnknownGroup = errors.New("failover group does not exist")
	// ErrFenced: the instance is a former primary waiting to be rewound; it must not serve anything.
	ErrFenced = errors.New("the instance is fenced until it rejoins as a secondary")
	// ErrNoReadableSecondary: a read-only listener with policy Disabled has no running geo-secondary to use.
	ErrNoReadableSecondary = errors.New("no readable geo-secondary is available")
)

// Routes answers where sessions go: the store's records as they are now. Every controller routes with it, the
// elected one and those waiting (cluster mode: every controller serves the endpoints and listeners).
type Routes struct {
	st *store.Store
	cl *cluster.Manager
}

// NewRoutes returns routes over the store.
func NewRoutes(st *store.Store, cl *cluster.Manager) *Routes { return &Routes{st: st, cl: cl} }

// Servers lists the servers.
func (s *Routes) Servers() ([]model.Server, error) {
	var out []model.Server
	err := s.st.View(func(tx *store.Tx) (err error) {
		out, err = store.List[model.Server](tx, store.Servers, "")
		return err
	})
	return out, err
}

// Groups lists the failover groups.
func (s *Routes) Groups() ([]model.FailoverGroup, error) {
	var out []model.FailoverGroup
	err := s.st.View(func(tx *store.Tx) (err error) {
		out, err = store.List[model.FailoverGroup](tx, store.Groups, "")
		return err
	})
	return out, err
}

// Operation reads an operation.
func (s *Routes) Operation(id string) (*model.Operation, error) {
	var op model.Operation
	err := s.st.View(func(tx *store.Tx) error { return tx.MustGet(store.Operations, id, &op) })
	return &op, err
}

// ResolveDatabase returns the address (host:port) of the instance behind database `name` on a server, for the
// server's gateway endpoint, with the database's status. A fenced former primary is never routed to.
func (s *Routes) ResolveDatabase(server armid.ServerID, name string) (addr string, status string, err error) {
	err = s.st.View(func(tx *store.Tx) error {
		db, ok, err := getDatabase(tx, armid.DatabaseID{Server: server, Name: name})
		if err != nil {
			return err
		}
		if !ok {
			return ErrUnknownDatabase
		}
		status = db.Status
		var inst model.Instance
		if err := tx.MustGet(store.Instances, db.Instance, &inst); err != nil {
			return err
		}
		if inst.NeedsRejoin {
			return ErrFenced
		}
		addr = s.cl.Addr(&inst)
		return nil
	})
	return addr, status, err
}

// ResolveGroupDatabase returns the address (host:port) a group listener sends a session for `database` to: the
// primary instance now recorded in the store (read-write), or the geo-secondary when it runs as a standby
// (read-only; the primary instead when the read-only policy is Enabled and no secondary is available).
func (s *Routes) ResolveGroupDatabase(groupKey, database string, readOnly bool) (string, error) {
	var g model.FailoverGroup
	var primary, secondary model.Instance
	err := s.st.View(func(tx *store.Tx) error {
		ok, err := tx.Get(store.Groups, groupKey, &g)
		if err != nil {
			return err
		}
		if !ok {
			return ErrUnknownGroup
		}
		var d *model.GroupDatabase
		for i := range g.Databases {
			if g.Databases[i].Name == database {
				d = &g.Databases[i]
			}
		}
		if d == nil {
			return ErrUnknownDatabase
		}
		if err := tx.MustGet(store.Instances, d.Primary, &primary); err != nil {
			return err
		}
		if d.Secondary != "" {
			if _, err := tx.Get(store.Instances, d.Secondary, &secondary); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return "", err
	}
	if !readOnly {
		if primary.NeedsRejoin {
			return "", ErrFenced
		}
		return s.cl.Addr(&primary), nil
	}
	if secondary.ID != "" && secondary.Seeded && !secondary.NeedsRejoin {
		h := s.cl.Handle(&secondary)
		if _, running := h.Running(); running && h.IsStandby() {
			return s.cl.Addr(&secondary), nil
		}
	}
	if g.ReadOnlyPolicy == "Enabled" && !primary.NeedsRejoin {
		return s.cl.Addr(&primary), nil
	}
	return "", ErrNoReadableSecondary
}

// FailoverTargets returns, by database, the addresses of the instances a failover of the group makes primary:
// those its running failover operation planned, or else its geo-secondaries (from the records alone: nothing is
// asked of the hosts). Read in the middle of a failover whose roles are already recorded, the group's
// secondaries would be the old primaries: the plan names the new ones throughout.
func (s *Routes) FailoverTargets(groupKey string) (map[string]string, error) {
	out := map[string]string{}
	err := s.st.View(func(tx *store.Tx) error {
		var g model.FailoverGroup
		if err := tx.MustGet(store.Groups, groupKey, &g); err != nil {
			return err
		}
		targets := map[string]string{} // database -> instance ID
		for _, d := range g.Databases {
			targets[d.Name] = d.Secondary
		}
		if plan, ok, err := runningFailoverPlan(tx, &g); err != nil {
			return err
		} else if ok {
			for _, pr := range plan.Pairs {
				targets[pr.Database] = pr.NewPrimary
			}
		}
		for db, id := range targets {
			var inst model.Instance
			if id == "" {
				continue
			}
			if ok, err := tx.Get(store.Instances, id, &inst); err != nil {
				return err
			} else if ok && inst.Seeded && !inst.NeedsRejoin {
				out[db] = s.cl.Addr(&inst)
			}
		}
		return nil
	})
	return out, err
}

// runningFailoverPlan returns the plan of the group's failover operation when one runs.
func runningFailoverPlan(tx *store.Tx, g *model.FailoverGroup) (failover.Plan, bool, error) {
	var plan failover.Plan
	if g.Operation == "" {
		return plan, false, nil
	}
	var op model.Operation
	if ok, err := tx.Get(store.Operations, g.Operation, &op); err != nil || !ok || op.Done() || !op.IsFailover() {
		return plan, false, err
	}
	if len(op.Params) == 0 || json.Unmarshal(op.Params, &plan) != nil || plan.Group != g.Key() {
		return plan, false, nil
	}
	return plan, true, nil
}
