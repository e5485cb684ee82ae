package failover

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/fogo-db/fogo/internal/controlplane/armid"
	"github.com/fogo-db/fogo/internal/controlplane/cluster"
	"github.com/fogo-db/fogo/internal/controlplane/model"
	"github.com/fogo-db/fogo/internal/controlplane/operations"
	"github.com/fogo-db/fogo/internal/controlplane/store"
	"github.com/fogo-db/fogo/internal/errcatalog"
)

// Pair is one database of the group: the instance that loses the primary role and the one that gains it.
type Pair struct {
	Database   string `json:"database"`
	OldPrimary string `json:"oldPrimary"`
	NewPrimary string `json:"newPrimary"`
}

// Plan is the recorded intent of a failover operation.
type Plan struct {
	Group string         `json:"group"`
	From  armid.ServerID `json:"from"`
	To    armid.ServerID `json:"to"`
	Pairs []Pair         `json:"pairs"`
	Epoch int64          `json:"epoch"`
	// Mode is the kind of the operation: planned, forced, or tryPlanned.
	Mode string `json:"mode"`
	// Intent markers, recorded before the step acts.
	Fenced    bool `json:"fenced,omitempty"`
	Demoting  bool `json:"demoting,omitempty"`
	Promoting bool `json:"promoting,omitempty"`
	Recorded  bool `json:"recorded,omitempty"`
	// InitiatedBy says who asked: "user" (the API) or "Automatic policy" (the monitor).
	InitiatedBy string `json:"initiatedBy,omitempty"`
	// FellBackToForced is set when a tryPlanned operation gave up on the planned path.
	FellBackToForced bool `json:"fellBackToForced,omitempty"`
}

// NewPlan builds the plan for moving g's primary role to server `to`.
func NewPlan(g *model.FailoverGroup, to armid.ServerID, mode string) Plan {
	p := Plan{Group: g.Key(), From: g.Primary, To: to, Epoch: g.Epoch + 1, Mode: mode}
	for _, d := range g.Databases {
		p.Pairs = append(p.Pairs, Pair{Database: d.Name, OldPrimary: d.Primary, NewPrimary: d.Secondary})
	}
	return p
}

// Hooks let the gateway follow a failover.
type Hooks struct {
	Hold func(group string)
	// Release ends the hold; recorded tells whether the failover recorded its targets as the primaries.
	Release func(group string, recorded bool)
}

// Config bounds the waits of a failover.
type Config struct {
	// CatchUpTimeout bounds the wait for the secondaries to replay the primary's last LSN (planned).
	CatchUpTimeout time.Duration
	// TryPlannedTimeout bounds the planned attempt of tryPlannedBeforeForcedFailover.
	TryPlannedTimeout time.Duration
	// Logger receives what an operator should know; nil means slog.Default().
	Logger *slog.Logger
}

// Orchestrator runs failover operations.
type Orchestrator struct {
	cfg   Config
	st    *store.Store
	cl    *cluster.Manager
	hooks Hooks
	log   *slog.Logger
}

// New returns an orchestrator.
func New(cfg Config, st *store.Store, cl *cluster.Manager, hooks Hooks) *Orchestrator {
	if cfg.CatchUpTimeout <= 0 {
		cfg.CatchUpTimeout = 30 * time.Second
	}
	if cfg.TryPlannedTimeout <= 0 {
		cfg.TryPlannedTimeout = 10 * time.Second
	}
	if hooks.Hold == nil {
		hooks.Hold = func(string) {}
	}
	if hooks.Release == nil {
		hooks.Release = func(string, bool) {}
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	return &Orchestrator{cfg: cfg, st: st, cl: cl, hooks: hooks, log: cfg.Logger}
}

// Register installs the failover handlers in the operations runner.
func (o *Orchestrator) Register(r *operations.Runner) {
	finish := operations.Handler{Finish: clearBusy}
	for _, kind := range []string{model.OpPlanned, model.OpForced, model.OpTryPlanned} {
		h := finish
		h.Run = o.run
		r.Register(kind, h)
	}
}

// clearBusy releases the group's busy marker when the operation ends, whatever its outcome.
func clearBusy(tx *store.Tx, op *model.Operation) error {
	var p Plan
	if err := jsonParams(op, &p); err != nil {
		return err
	}
	var g model.FailoverGroup
	ok, err := tx.Get(store.Groups, p.Group, &g)
	if err != nil || !ok {
		return err
	}
	if g.Operation == op.ID {
		g.Operation = ""
		return tx.Put(store.Groups, g.Key(), &g)
	}
	return nil
}

// run is the operation handler: it loads the plan and runs the mode's steps under the group lock.
func (o *Orchestrator) run(ctx context.Context, run *operations.Run) error {
	var p Plan
	if err := run.Params(&p); err != nil {
		return fmt.Errorf("read failover plan: %w", err)
	}
	unlock := o.cl.LockNow(p.Group)
	defer unlock()
	x := &execution{o: o, run: run, plan: &p}
	// A stale operation (planned at an epoch the group has left) must not touch an instance.
	if err := x.checkEpoch(); err != nil {
		return err
	}
	switch p.Mode {
	case model.OpForced:
		return x.forced(ctx)
	case model.OpTryPlanned:
		if p.FellBackToForced {
			return x.forced(ctx)
		}
		err := x.planned(ctx, o.cfg.TryPlannedTimeout)
		if err == nil || !(x.rolledBack || x.primaryDown) {
			return err
		}
		p.FellBackToForced = true
		if err := x.save(); err != nil {
			return err
		}
		return x.forced(ctx)
	default:
		return x.planned(ctx, o.cfg.CatchUpTimeout)
	}
}

// execution is one run of a plan.
type execution struct {
	o          *Orchestrator
	run        *operations.Run
	plan       *Plan
	rolledBack bool
	// primaryDown: the planned attempt was refused because a primary is not running (nothing was changed).
	primaryDown bool
	// released: this process ended its hold of the group (see release).
	released bool
}

// release ends this process's hold of the group, once: at the release step, or on the way out of a failover
// that ended before it (each release cuts the sessions left on an old primary, reading the store).
func (x *execution) release() {
	if !x.released {
		x.released = true
		x.o.hooks.Release(x.plan.Group, x.plan.Recorded)
	}
}

func (x *execution) save() error { return x.run.SetParams(x.plan) }

// instances loads the old and new primary records of every pair.
func (x *execution) instances() (olds, news []*model.Instance, err error) {
	for _, pr := range x.plan.Pairs {
		op, err := x.o.cl.GetInstance(pr.OldPrimary)
		if err != nil {
			return nil, nil, fmt.Errorf("database %s: old primary %s: %w", pr.Database, pr.OldPrimary, err)
		}
		np, err := x.o.cl.GetInstance(pr.NewPrimary)
		if err != nil {
			return nil, nil, fmt.Errorf("database %s: new primary %s: %w", pr.Database, pr.NewPrimary, err)
		}
		olds, news = append(olds, op), append(news, np)
	}
	return olds, news, nil
}

// checkEpoch reads the group's epoch before the operation acts: the epoch it was planned at lets it run, its own
// recorded epoch means it is resumed after recording its roles (Plan.Recorded is set from that fact), and any
// other epoch is a newer decision it must not act against.
func (x *execution) checkEpoch() error {
	return x.o.st.View(func(tx *store.Tx) error {
		var g model.FailoverGroup
		if err := tx.MustGet(store.Groups, x.plan.Group, &g); err != nil {
			return fmt.Errorf("read failover group %s: %w", x.plan.Group, err)
		}
		recorded, err := epochDecision(&g, x.plan, x.run.Op.ID)
		if recorded {
			x.plan.Recorded = true
		}
		return err
	})
}

// epochDecision compares the group's epoch with the plan's: (false, nil) when the group is still at the epoch
// the plan was made at, (true, nil) when this operation has already recorded its roles, and
// OperationInterrupted when anything else decided the roles in the meantime.
func epochDecision(g *model.FailoverGroup, p *Plan, opID string) (recorded bool, err error) {
	switch {
	case g.Epoch == p.Epoch-1:
		return false, nil
	case g.Epoch == p.Epoch && g.LastFailoverOp == opID:
		return true, nil
	}
	return false, errcatalog.Newf("OperationInterrupted", "Failover group '%s' changed while this failover was "+
		"pending or running: its epoch is %d (last failover operation %q), and this operation was planned at epoch "+
		"%d. A newer decision stands; this operation recorded nothing. Read the group's roles and retry if a "+
		"failover is still wanted.", g.Name, g.Epoch, g.LastFailoverOp, p.Epoch-1)
}

// record makes the new roles the truth in the store: group primary/secondary swap, epoch, instance roles. It is
// a compare-and-swap on the group's epoch (see epochDecision), in one transaction: either every role is
// recorded or, when another decision came first, nothing is. Recording again what this operation recorded is
// a no-op (it never re-fences an old primary the reconciler has rejoined since). The same transaction notes
// in the plan that the roles are recorded.
func (x *execution) record(kind string) error {
	next := *x.plan
	// Promoting (promotion may have begun) goes with the roles: from here on the failover only goes forward, so
	// the promote step needs no write of its own.
	next.Recorded, next.Promoting = true, true
	p := &next
	err := x.run.UpdateWith(p, func(tx *store.Tx) error {
		var g model.FailoverGroup
		if err := tx.MustGet(store.Groups, p.Group, &g); err != nil {
			return err
		}
		if recorded, err := epochDecision(&g, p, x.run.Op.ID); err != nil || recorded {
			return err
		}
		g.Primary, g.Secondary, g.Epoch = p.To, p.From, p.Epoch
		g.LastFailoverKind, g.LastFailoverAt, g.LastFailoverBy, g.LastFailoverOp = kind, time.Now().UTC(), p.InitiatedBy, x.run.Op.ID
		for i := range g.Databases {
			for _, pr := range p.Pairs {
				if g.Databases[i].Name == pr.Database {
					g.Databases[i].Primary, g.Databases[i].Secondary = pr.NewPrimary, pr.OldPrimary
				}
			}
		}
		if err := tx.Put(store.Groups, g.Key(), &g); err != nil {
			return err
		}
		for _, pr := range p.Pairs {
			var np, op model.Instance
			if err := tx.MustGet(store.Instances, pr.NewPrimary, &np); err != nil {
				return err
			}
			if err := tx.MustGet(store.Instances, pr.OldPrimary, &op); err != nil {
				return err
			}
			np.Role, np.Upstream, np.Epoch, np.NeedsRejoin = model.RolePrimary, "", p.Epoch, false
			// The old primary holds a whole copy: it is rewound, never reseeded (Seeded), and until it streams
			// again the group's replicationState reads SUSPENDED, not PENDING.
			op.Role, op.Upstream, op.NeedsRejoin, op.Seeded = model.RoleStandby, np.ID, true, true
			if err := tx.Put(store.Instances, np.ID, &np); err != nil {
				return err
			}
			if err := tx.Put(store.Instances, op.ID, &op); err != nil {
				return err
			}
			if err := swapGeoFlag(tx, p.To, pr.Database, false); err != nil {
				return err
			}
			if err := swapGeoFlag(tx, p.From, pr.Database, true); err != nil {
				return err
			}
		}
		return nil
	})
	if err == nil {
		x.plan.Recorded, x.plan.Promoting = true, true
	}
	return err
}

func swapGeoFlag(tx *store.Tx, server armid.ServerID, db string, geo bool) error {
	key := model.DatabaseKey(armid.DatabaseID{Server: server, Name: db})
	var d model.Database
	ok, err := tx.Get(store.Databases, key, &d)
	if err != nil || !ok {
		return err
	}
	d.GeoSecondary = geo
	return tx.Put(store.Databases, key, &d)
}

func timedOut(db string) error {
	return errcatalog.Newf("PlannedFailoverTimedOutForDatabase",
		"Planned failover timed out for database '%s': its geo-secondary did not catch up in time. The failover "+
			"was rolled back; no data was lost and the roles are unchanged. Retry, or use forceFailoverAllowDataLoss.", db)
}

func notShutDownCleanly(db, state string) error {
	return errcatalog.Newf("PlannedFailoverTimedOutForDatabase",
		"Planned failover could not confirm that database '%s' loses nothing: its primary stopped without a clean "+
			"shutdown (cluster state %q: it crashed or was stopped immediately), so commits it acknowledged may not "+
			"have reached the geo-secondary. The failover was rolled back: the old primary is started again as the "+
			"primary and the roles are unchanged. Retry, or use forceFailoverAllowDataLoss.", db, state)
}

func promotionUnfinished(err error) error {
	return errcatalog.Newf("DatabaseUnavailable",
		"The planned failover recorded the new roles (the partner server is the primary now and the old primaries "+
			"are fenced), but a geo-secondary could not be promoted yet: %v. fogo keeps promoting it in the "+
			"background; the database is unavailable until then.", err)
}

// startPromote is the promote step's start, for planned and forced failovers alike: the intent (Promoting) is
// saved in the plan before anything is promoted, so a resumed operation knows promotion may have begun (a
// planned failover saved it with its roles).
func (x *execution) startPromote() error {
	x.run.Begin("promote")
	if x.plan.Promoting {
		return nil
	}
	x.plan.Promoting = true
	return x.save() // the intent and the step, in one write
}
