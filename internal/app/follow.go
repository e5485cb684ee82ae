package app

import (
	"context"
	"encoding/json"
	"fmt"
	"sync"
	"time"

	"github.com/fogo-db/fogo/internal/controlplane/failover"
	"github.com/fogo-db/fogo/internal/controlplane/model"
	"github.com/fogo-db/fogo/internal/controlplane/service"
	"github.com/fogo-db/fogo/internal/controlplane/store"
)

// followFallback is how often a host's endpoints read the shared state even when its watch reported nothing: the
// watch makes them follow each change at once, this pass only covers a watch that is slow to be set up again.
// A variable for tests.
var followFallback = 2 * time.Second

// holdSteps are the failover steps during which the elected controller holds new read-write sessions (between
// its "hold" and "release" steps): the listeners of every other host hold them too.
var holdSteps = map[string]bool{"hold": true, "demote": true, "check": true, "fence": true, "promote": true, "record": true}

// followState makes g follow the shared state in etcd (see follow) from a watch of st: a pass at each committed
// update (signals coalesce, so a burst costs a pass or two), and one every followFallback. Every host that serves
// the endpoints without running the operations does this: a waiting controller until it is elected, and every
// agent. It returns the function that stops following (the endpoints stay open).
func (g *gatewayEndpoints) followState(ctx context.Context, st *store.Store, r *service.Routes) (stop func()) {
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		g.follow(ctx, r, st.Changes(ctx), st.WatchBucket(ctx, store.Operations))
	}()
	return func() {
		cancel()
		<-done
	}
}

// follow keeps a host's endpoints and listeners in step with the shared state until ctx ends, with a pass at
// each signal of changes and every followFallback: every server's endpoint and every group's listeners are open
// on this host; new read-write sessions wait while a failover of their group holds them; and when a group's
// roles change, the sessions relayed to an instance that lost its role are cut. The elected controller does all
// this itself, from the operations it runs.
//
// ops, when given, carries every operation as it is written: a failover's hold and release are decided from it
// at once, without reading anything (a pass reads the groups and the operation, several etcd round trips that
// clients held by the failover would wait for), and passes leave them to it while it speaks about the group.
func (g *gatewayEndpoints) follow(ctx context.Context, r *service.Routes, changes <-chan struct{}, ops <-chan []byte) {
	f := &follower{g: g, r: r, servers: map[string]*model.Server{}, groups: map[string]*model.FailoverGroup{}, roles: map[string]string{},
		failed: map[string]time.Time{}, watched: map[string]time.Time{}}
	if ops != nil {
		go func() {
			for raw := range ops {
				f.operationWritten(raw)
			}
		}()
	}
	t := time.NewTicker(followFallback)
	defer t.Stop()
	for {
		if err := f.once(); err != nil {
			g.log.Debug("follow the shared state", "err", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-changes:
		}
	}
}

type follower struct {
	g       *gatewayEndpoints
	r       *service.Routes
	servers map[string]*model.Server
	groups  map[string]*model.FailoverGroup
	roles   map[string]string // group key -> its epoch and primaries, to see a failover's result
	// failed holds when an endpoint (server key, or "group:" + group key) last failed to open: it is tried again
	// after followRetry, and its failure logged once.
	failed map[string]time.Time

	mu sync.Mutex
	// watched holds when the operations' watch last decided a group's hold (see operationWritten).
	watched map[string]time.Time
}

// watchAuthority is how long the operations' watch decides a group's hold after it last spoke about it (twice the
// fallback pass's default interval); passes decide it again after that (a watch that was set up again may have
// missed a write).
const watchAuthority = 4 * time.Second

// operationWritten holds or releases the listeners of the group a failover operation acts on, from the
// operation as it was just written.
func (f *follower) operationWritten(raw []byte) {
	var op model.Operation
	if json.Unmarshal(raw, &op) != nil || !op.IsFailover() {
		return
	}
	var plan failover.Plan
	if json.Unmarshal(op.Params, &plan) != nil || plan.Group == "" {
		return
	}
	f.mu.Lock()
	f.watched[plan.Group] = time.Now()
	f.mu.Unlock()
	if holdsSessions(&op) {
		f.g.lis.Hold(plan.Group)
	} else if f.g.lis.Held(plan.Group) {
		// Recorded: the roles were written with the plan, before this write; the sessions that waited go to the
		// targets read at the hold without another read of the store.
		f.g.lis.ReleaseRecorded(plan.Group, plan.Recorded)
	}
}

// watchDecides reports whether the operations' watch decides group's hold now.
func (f *follower) watchDecides(group string) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	at, ok := f.watched[group]
	return ok && time.Since(at) < watchAuthority
}

// followRetry is how long a following host waits before trying again to open an endpoint that failed (its port is
// taken on this host).
const followRetry = 10 * time.Second

// tryOpen opens an endpoint unless it failed less than followRetry ago; it reports whether it is open.
func (f *follower) tryOpen(key, what string, open func() error) bool {
	if at, ok := f.failed[key]; ok && time.Since(at) < followRetry {
		return false
	}
	if err := open(); err != nil {
		if _, ok := f.failed[key]; !ok {
			f.g.log.Warn("open "+what+" (retried every "+followRetry.String()+")", "key", key, "err", err)
		}
		f.failed[key] = time.Now()
		return false
	}
	delete(f.failed, key)
	return true
}

func (f *follower) once() error {
	// The groups first: a failover's hold and release reach the listeners before anything else is read.
	groups, err := f.r.Groups()
	if err != nil {
		return err
	}
	rolesChanged := f.followGroups(groups)
	servers, err := f.r.Servers()
	if err != nil {
		return err
	}
	f.followServers(servers)
	if rolesChanged {
		for _, s := range f.servers {
			f.g.cutFenced(s.ID)
		}
	}
	return nil
}

// followServers opens the endpoints of new servers and closes those of deleted ones.
func (f *follower) followServers(servers []model.Server) {
	now := map[string]bool{}
	for i := range servers {
		s := &servers[i]
		now[s.ID.Key()] = true
		if f.servers[s.ID.Key()] == nil && f.tryOpen(s.ID.Key(), "server endpoint", func() error { return f.g.OpenServer(s) }) {
			f.servers[s.ID.Key()] = s
		}
	}
	for key, s := range f.servers {
		if !now[key] {
			f.g.CloseServer(s)
			delete(f.servers, key)
		}
	}
}

// followGroups opens the listeners of new groups and closes those of deleted ones, holds and releases them with
// their failovers, and cuts the sessions on instances that lost their role; it reports whether a group's roles
// changed.
func (f *follower) followGroups(groups []model.FailoverGroup) (rolesChanged bool) {
	now := map[string]bool{}
	for i := range groups {
		g := &groups[i]
		key := g.Key()
		now[key] = true
		if f.groups[key] == nil {
			if g.RWPort == 0 || g.ROPort == 0 {
				continue // the elected controller leases its ports
			}
			if !f.tryOpen("group:"+key, "group listeners", func() error { return f.g.OpenGroup(g) }) {
				continue
			}
			f.groups[key] = g
		}
		switch {
		case f.watchDecides(key): // the operations' watch holds and releases this group's listeners now
		case f.holds(g):
			f.g.lis.Hold(key)
		case f.g.lis.Held(key):
			f.g.lis.Release(key)
		}
		roles := fmt.Sprint(g.Epoch, g.Databases)
		if prev, ok := f.roles[key]; ok && prev != roles {
			f.g.lis.CutStale(key)
			rolesChanged = true
		}
		f.roles[key] = roles
	}
	for key, g := range f.groups {
		if !now[key] {
			f.g.CloseGroup(g)
			delete(f.groups, key)
			delete(f.roles, key)
		}
	}
	return rolesChanged
}

// holds reports whether a failover of g holds new read-write sessions now.
func (f *follower) holds(g *model.FailoverGroup) bool {
	if g.Operation == "" {
		return false
	}
	op, err := f.r.Operation(g.Operation)
	return err == nil && holdsSessions(op)
}

// holdsSessions reports whether op is a failover that holds its group's new read-write sessions now.
func holdsSessions(op *model.Operation) bool {
	return op.IsFailover() && !op.Done() && holdSteps[op.Step]
}

// releaseFollowedHolds lets go of the holds a waiting controller mirrored, once it is elected: a failover it
// resumes holds its group again itself.
func (g *gatewayEndpoints) releaseFollowedHolds() {
	groups, err := g.svc.Groups()
	if err != nil {
		return
	}
	for i := range groups {
		if key := groups[i].Key(); g.lis.Held(key) {
			g.lis.Release(key)
		}
	}
}
