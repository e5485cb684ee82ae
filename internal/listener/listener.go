// Package listener runs each failover group's read-write and read-only listener endpoints: PostgreSQL
// wire-protocol gateways (package gateway) whose routing follows the roles recorded in the store.
//
// The read-write listener routes a session, by the database in its startup packet, to the instance that is the
// group's primary now. While a failover holds the group (Hold … Release), new read-write sessions wait, bounded
// by HoldTimeout, and are then routed to whichever instance is primary: they are not refused. The route is read
// from the store, where a failover records the new primary (and its epoch) before it releases the group, so a
// former primary is never routed to again, even if its instance comes back before it is rewound.
//
// Sessions already relayed to an instance that is no longer the group's primary are cut (their connections
// closed) when a failover releases the group, and when a new read-write session finds that the route of its
// database changed: a former primary that could not be stopped must not keep serving the sessions it had.
//
// The read-only listener routes to the geo-secondary when it runs as a standby; with the read-only policy
// Enabled it falls back to the primary while no secondary is available, with Disabled it refuses.
package listener

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/fogo-db/fogo/internal/controlplane/model"
	"github.com/fogo-db/fogo/internal/controlplane/service"
	"github.com/fogo-db/fogo/internal/gateway"
)

// Routes answers where a group's database lives now.
type Routes interface {
	ResolveGroupDatabase(groupKey, database string, readOnly bool) (addr string, err error)
	// FailoverTargets are the addresses of the group's geo-secondaries, by database.
	FailoverTargets(groupKey string) (map[string]string, error)
}

// Config tunes the listeners.
type Config struct {
	// ListenHost is the address listeners bind (default 127.0.0.1).
	ListenHost string
	// HoldTimeout bounds how long a new read-write session waits for a failover to finish (default 30s).
	HoldTimeout time.Duration
	Logger      *slog.Logger
}

// Kinds of listener.
const (
	ReadWrite = "rw"
	ReadOnly  = "ro"
)

// Stats are one listener's counters.
type Stats struct {
	Group, Kind                        string
	Active, Waiting, Accepted, Refused int64
}

// Listeners owns the group listeners.
type Listeners struct {
	cfg    Config
	gw     *gateway.Manager
	routes Routes

	mu      sync.Mutex
	gates   map[string]*gate
	waiting map[string]*atomic.Int64 // group key -> sessions waiting on the read-write listener
	open    map[string]bool          // group key -> listeners open
	routeOf map[string]string        // group key + "/" + database -> the read-write backend last routed to
	targets map[string]*targetSet    // group key -> what its last hold's failover makes primary
	cutting sync.Map                 // group key -> *atomic.Bool: a background CutStale of the group runs
}

// New returns listeners that open their endpoints in gw (shared with the server endpoints, so cancel requests
// work across them).
func New(cfg Config, gw *gateway.Manager, routes Routes) *Listeners {
	if cfg.ListenHost == "" {
		cfg.ListenHost = "127.0.0.1"
	}
	if cfg.HoldTimeout <= 0 {
		cfg.HoldTimeout = 30 * time.Second
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	return &Listeners{cfg: cfg, gw: gw, routes: routes, gates: map[string]*gate{},
		waiting: map[string]*atomic.Int64{}, open: map[string]bool{}, routeOf: map[string]string{}, targets: map[string]*targetSet{}}
}

func endpointName(kind, group string) string { return "listener-" + kind + ":" + group }

// Open opens the group's two listeners on their leased ports (idempotent).
func (l *Listeners) Open(g *model.FailoverGroup) error {
	key := g.Key()
	for _, ep := range []struct {
		kind string
		port int
	}{{ReadWrite, g.RWPort}, {ReadOnly, g.ROPort}} {
		if ep.port == 0 {
			return fmt.Errorf("failover group %s has no %s listener port", g.Name, ep.kind)
		}
		addr := net.JoinHostPort(l.cfg.ListenHost, strconv.Itoa(ep.port))
		r := resolver{l: l, group: key, readOnly: ep.kind == ReadOnly}
		if _, err := l.gw.Open(endpointName(ep.kind, key), addr, r); err != nil {
			return fmt.Errorf("open %s listener of %s on %s: %w", ep.kind, g.Name, addr, err)
		}
	}
	l.mu.Lock()
	l.open[key] = true
	l.mu.Unlock()
	return nil
}

// Close closes the group's listeners and their sessions.
func (l *Listeners) Close(g *model.FailoverGroup) {
	key := g.Key()
	l.gw.Close(endpointName(ReadWrite, key))
	l.gw.Close(endpointName(ReadOnly, key))
	l.mu.Lock()
	delete(l.open, key)
	for k := range l.routeOf {
		if strings.HasPrefix(k, key+"/") {
			delete(l.routeOf, k)
		}
	}
	l.mu.Unlock()
}

// Hold makes new read-write sessions of the group wait (a failover starts), and has the sessions that will follow
// it prepared meanwhile on the instances it makes primary (its targets): connections made ready (gateway's
// Prewarm) and sessions opened early (see ResolveEarly).
func (l *Listeners) Hold(group string) {
	ts := &targetSet{ready: make(chan struct{})}
	l.mu.Lock()
	prev := l.targets[group]
	l.targets[group] = ts
	l.mu.Unlock()
	if !l.gate(group).hold() { // a following host holds again at each pass of the failover
		l.mu.Lock()
		l.targets[group] = prev
		l.mu.Unlock()
		return
	}
	l.prewarm(group, ts)
}

// targetSet is what a hold's failover makes primary, by database; ready is closed once it is read (m is nil if
// it could not be).
type targetSet struct {
	ready chan struct{}
	m     map[string]string
}

// prewarm reads the group's failover targets into ts, and asks the gateway for as many ready connections to each
// as the read-write sessions that will follow the failover: those relayed now and those waiting, and a few more.
func (l *Listeners) prewarm(group string, ts *targetSet) {
	defer close(ts.ready)
	n := int(l.waitingCounter(group).Load()) + 2
	if ep, ok := l.gw.Get(endpointName(ReadWrite, group)); ok {
		n += int(ep.Stats().Active)
	}
	targets, err := l.routes.FailoverTargets(group)
	if err != nil {
		l.cfg.Logger.Debug("listener: read the failover targets", "group", group, "err", err)
		return
	}
	ts.m = targets
	l.cfg.Logger.Debug("listener: held; early sessions and prewarmed connections go to the failover targets", "group", group, "targets", targets)
	for _, addr := range targets {
		l.gw.Prewarm(addr, min(n, maxPrewarm))
	}
}

// maxPrewarm bounds the ready connections a hold asks for per geo-secondary.
const maxPrewarm = 16

// Release lets them through to the primary recorded now (a failover ended, whatever its outcome), and cuts the
// read-write sessions still relayed to an instance that is not the primary now.
func (l *Listeners) Release(group string) { l.ReleaseRecorded(group, false) }

// ReleaseRecorded is Release, told whether the failover recorded the primaries it made (its plan's targets, read
// at the hold) before it ended. If it did, the sessions that waited go to those targets, and the early sessions
// are confirmed, without reading the store again: in cluster mode that read is several etcd round trips, which
// every client held by the failover would wait for.
func (l *Listeners) ReleaseRecorded(group string, recorded bool) {
	var routes map[string]string
	if recorded {
		l.mu.Lock()
		ts := l.targets[group]
		l.mu.Unlock()
		if ts != nil {
			select {
			case <-ts.ready:
				routes = ts.m
			default: // still being read: the sessions read the store
			}
		}
	}
	l.gate(group).release(routes)
	l.CutStale(group)
}

// CutStale ends the group's sessions relayed to an instance that is no longer where their listener routes their
// database: read-write sessions on a former primary (or one whose primary is fenced), read-only sessions on a
// geo-secondary that was promoted (they could write now) or that is no longer readable. It returns how many. A
// route that cannot be read now keeps its sessions.
func (l *Listeners) CutStale(group string) int {
	n := 0
	for _, kind := range []string{ReadWrite, ReadOnly} {
		ep, ok := l.gw.Get(endpointName(kind, group))
		if !ok {
			continue
		}
		readOnly := kind == ReadOnly
		cut := ep.Cut(func(s gateway.SessionInfo) bool {
			addr, err := l.routes.ResolveGroupDatabase(group, s.Database, readOnly)
			if err != nil {
				return errors.Is(err, service.ErrFenced) || (readOnly && errors.Is(err, service.ErrNoReadableSecondary))
			}
			return s.Backend != addr
		})
		if cut > 0 {
			l.cfg.Logger.Warn("listener: cut sessions relayed to an instance that no longer has their role", "group", group,
				"listener", kind, "sessions", cut)
		}
		n += cut
	}
	return n
}

// cutStaleInBackground runs CutStale for the group in the background unless one already runs: sessions refused
// in a loop while a primary is fenced start one scan at a time, not a goroutine each.
func (l *Listeners) cutStaleInBackground(group string) {
	v, _ := l.cutting.LoadOrStore(group, &atomic.Bool{})
	running := v.(*atomic.Bool)
	if !running.CompareAndSwap(false, true) {
		return
	}
	go func() {
		defer running.Store(false)
		l.CutStale(group)
	}()
}

// routed notes the backend a new read-write session of database goes to; when it changed, the sessions relayed
// to the previous one are cut (a failover recorded a new primary).
func (l *Listeners) routed(group, database, addr string) {
	key := group + "/" + database
	l.mu.Lock()
	prev, known := l.routeOf[key]
	l.routeOf[key] = addr
	l.mu.Unlock()
	if known && prev != addr {
		l.cutStaleInBackground(group)
	}
}

// Held reports whether the group is held.
func (l *Listeners) Held(group string) bool { return l.gate(group).isHeld() }

func (l *Listeners) gate(group string) *gate {
	l.mu.Lock()
	defer l.mu.Unlock()
	g, ok := l.gates[group]
	if !ok {
		g = &gate{}
		l.gates[group] = g
	}
	return g
}

func (l *Listeners) waitingCounter(group string) *atomic.Int64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	c, ok := l.waiting[group]
	if !ok {
		c = &atomic.Int64{}
		l.waiting[group] = c
	}
	return c
}

// Stats returns the counters of every open listener.
func (l *Listeners) Stats() []Stats {
	l.mu.Lock()
	groups := make([]string, 0, len(l.open))
	for g := range l.open {
		groups = append(groups, g)
	}
	l.mu.Unlock()
	var out []Stats
	for _, g := range groups {
		for _, kind := range []string{ReadWrite, ReadOnly} {
			ep, ok := l.gw.Get(endpointName(kind, g))
			if !ok {
				continue
			}
			st := ep.Stats()
			s := Stats{Group: g, Kind: kind, Active: st.Active, Accepted: st.Accepted, Refused: st.Refused}
			if kind == ReadWrite {
				s.Waiting = l.waitingCounter(g).Load()
			}
			out = append(out, s)
		}
	}
	return out
}

// gate is a group's hold: closed channel = open gate.
type gate struct {
	mu       sync.Mutex
	held     bool
	released chan struct{}
	// routes are the primaries, by database, that the failover whose hold ended recorded (nil: read the store).
	routes map[string]string
}

// hold closes the gate; it reports whether it was open.
func (g *gate) hold() bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.held {
		return false
	}
	g.held, g.released, g.routes = true, make(chan struct{}), nil
	return true
}

// release opens the gate; routes are the primaries its failover recorded, given to the sessions that waited.
func (g *gate) release(routes map[string]string) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.held {
		g.held, g.routes = false, routes
		close(g.released)
	}
}

func (g *gate) isHeld() bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.held
}

// wait returns when the gate is open, or ctx's error. A caller that waited gets the routes its release named
// (nil when it did not, or when the gate was open: the caller reads the store).
func (g *gate) wait(ctx context.Context) (map[string]string, error) {
	g.mu.Lock()
	held, ch := g.held, g.released
	g.mu.Unlock()
	if !held {
		return nil, nil
	}
	select {
	case <-ch:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.released != ch { // held again since: that hold's release will name its own routes
		return nil, nil
	}
	return g.routes, nil
}

// resolver routes one listener's sessions.
type resolver struct {
	l        *Listeners
	group    string
	readOnly bool
}

// ResolveEarly names, while a failover holds the group's read-write sessions, the geo-secondary of database (the
// primary the failover makes): the gateway opens the session there at once and holds back its answers until
// confirm, which waits for the release and checks that the route is that instance (see gateway.EarlyResolver).
func (r resolver) ResolveEarly(ctx context.Context, database string) (string, func(context.Context) error, bool) {
	if r.readOnly || !r.l.gate(r.group).isHeld() {
		return "", nil, false
	}
	r.l.mu.Lock()
	ts := r.l.targets[r.group]
	r.l.mu.Unlock()
	if ts == nil {
		return "", nil, false
	}
	select { // the hold has just begun: its targets are being read
	case <-ts.ready:
	case <-ctx.Done():
		return "", nil, false
	}
	addr := ts.m[database]
	if addr == "" {
		return "", nil, false
	}
	confirm := func(ctx context.Context) error {
		got, err := r.Resolve(ctx, database)
		if err != nil {
			return err
		}
		if got != addr {
			return &gateway.RouteError{Code: "57P03", Message: fmt.Sprintf(
				"fogo listener: the failover of group %q did not make the geo-secondary of %q its primary; connect again", r.group, database)}
		}
		return nil
	}
	return addr, confirm, true
}

func (r resolver) Resolve(ctx context.Context, database string) (string, error) {
	if !r.readOnly {
		wctx, cancel := context.WithTimeout(ctx, r.l.cfg.HoldTimeout)
		waiting := r.l.waitingCounter(r.group)
		waiting.Add(1)
		recorded, err := r.l.gate(r.group).wait(wctx)
		waiting.Add(-1)
		cancel()
		if err != nil {
			return "", &gateway.RouteError{Code: "57P03", Message: fmt.Sprintf(
				"fogo listener: a failover of group %q is still in progress after %s; retry", r.group, r.l.cfg.HoldTimeout)}
		}
		if addr := recorded[database]; addr != "" {
			r.l.routed(r.group, database, addr)
			return addr, nil
		}
	}
	addr, err := r.l.routes.ResolveGroupDatabase(r.group, database, r.readOnly)
	switch {
	case err == nil:
		if !r.readOnly {
			r.l.routed(r.group, database, addr)
		}
		return addr, nil
	case errors.Is(err, service.ErrUnknownDatabase):
		return "", &gateway.RouteError{Code: "3D000", Message: fmt.Sprintf("database %q is not in failover group %q", database, r.group)}
	case errors.Is(err, service.ErrNoReadableSecondary):
		return "", &gateway.RouteError{Code: "57P03", Message: fmt.Sprintf(
			"fogo listener: no readable geo-secondary of %q is available and the read-only failover policy is Disabled", database)}
	case errors.Is(err, service.ErrUnknownGroup):
		return "", &gateway.RouteError{Code: "08006", Message: fmt.Sprintf("failover group %q no longer exists", r.group)}
	case errors.Is(err, service.ErrFenced):
		if !r.readOnly {
			r.l.cutStaleInBackground(r.group) // the primary is fenced: nothing may stay relayed to it
		}
		return "", &gateway.RouteError{Code: "57P03", Message: fmt.Sprintf("database %q has no primary right now", database)}
	default:
		r.l.cfg.Logger.Error("listener route", "group", r.group, "database", database, "err", err)
		return "", &gateway.RouteError{Code: "58000", Message: "fogo listener could not resolve the database"}
	}
}
