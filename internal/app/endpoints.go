package app

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/fogo-db/fogo/internal/controlplane/armid"
	"github.com/fogo-db/fogo/internal/controlplane/cluster"
	"github.com/fogo-db/fogo/internal/controlplane/model"
	"github.com/fogo-db/fogo/internal/controlplane/service"
	"github.com/fogo-db/fogo/internal/gateway"
	"github.com/fogo-db/fogo/internal/listener"
)

// gatewayEndpoints opens one gateway endpoint per logical server, which routes by database name to that
// server's instance of the database (primary or geo-secondary, whatever role it has now), and the listeners of
// every failover group (package listener). All share one gateway manager, so cancel requests work everywhere.
type gatewayEndpoints struct {
	mgr     *gateway.Manager
	svc     routeSource
	lis     *listener.Listeners
	host    string
	log     *slog.Logger
	cutting sync.Map // server name -> *atomic.Bool: a background cutFenced of the server runs

	mu   sync.Mutex // serialises opening with shutdown
	shut bool       // shutdown ran: nothing opens any more
	// instancePorts is the range of this host's instances' ports (an agent's), never taken by an endpoint.
	instancePorts [2]int
}

// usable checks that nothing stops opening an endpoint on port now (g.mu held).
func (g *gatewayEndpoints) usable(port int) error {
	if g.shut {
		return errShut
	}
	if low, high := g.instancePorts[0], g.instancePorts[1]; low > 0 && port >= low && port <= high {
		return fmt.Errorf("port %d is in this host's instance port range %d-%d: give the controllers a --port-range apart from it", port, low, high)
	}
	return nil
}

// errShut is the error of opening an endpoint after shutdown.
var errShut = errors.New("this host no longer serves endpoints")

// routeSource is where sessions go (service.Routes: the store's records as they are now).
type routeSource interface {
	ResolveDatabase(server armid.ServerID, name string) (addr, status string, err error)
	Servers() ([]model.Server, error)
	Groups() ([]model.FailoverGroup, error)
}

// gatewayConfig is what one host's endpoints and listeners need, on a controller (Options.gatewayConfig) or on
// an agent (AgentOptions.gatewayConfig).
type gatewayConfig struct {
	// ListenHost is the address they bind (default 127.0.0.1).
	ListenHost string
	// TLSCert and TLSKey, when set, make them answer clients' SSLRequest with TLS.
	TLSCert, TLSKey string
	// BackendCA verifies the instances on the agents' hosts, reached over TLS (cluster mode).
	BackendCA string
	// HoldTimeout bounds how long a new read-write session waits during a failover (default 30s).
	HoldTimeout time.Duration
	// InstancePortLow and InstancePortHigh, on an agent, are its instances' ports: an endpoint leased on one of
	// them is not opened there (it would keep an instance from starting).
	InstancePortLow, InstancePortHigh int
}

// gatewayConfig is the controller's.
func (o Options) gatewayConfig() gatewayConfig {
	return gatewayConfig{ListenHost: o.GatewayListenHost, TLSCert: o.GatewayTLSCert, TLSKey: o.GatewayTLSKey,
		BackendCA: o.ClusterCA, HoldTimeout: o.ListenerHoldTimeout}
}

// newGatewayEndpoints makes the endpoints and listeners of a host, routed by routes (until a controller is
// elected and routes through its service instead).
func newGatewayEndpoints(c gatewayConfig, routes *service.Routes, log *slog.Logger) (*gatewayEndpoints, error) {
	// fogo's internal superuser never logs in through an endpoint or listener: PostgreSQL sees every gateway
	// session come from 127.0.0.1, as fogo's own connections do, so pg_hba.conf cannot refuse it there.
	cfg := gateway.Config{Logger: log, ReservedUsers: []string{cluster.SuperUser}}
	// Routing a session includes the read-write listener's hold: it must never be cut short by the gateway's
	// own bound, or a held session would get the wrong error after the wrong time.
	cfg.ResolveTimeout = max(60*time.Second, c.HoldTimeout+30*time.Second)
	if c.TLSCert != "" || c.TLSKey != "" {
		cert, err := tls.LoadX509KeyPair(c.TLSCert, c.TLSKey)
		if err != nil {
			return nil, fmt.Errorf("gateway TLS certificate: %w", err)
		}
		cfg.TLS = &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
	}
	if c.BackendCA != "" {
		pool, err := loadCAPool(c.BackendCA)
		if err != nil {
			return nil, err
		}
		// Instances on the agents' hosts are reached over TLS, verified against the cluster's CA.
		cfg.BackendTLS = func(addr string) *tls.Config {
			h, _, err := net.SplitHostPort(addr)
			if ip := net.ParseIP(h); err != nil || (ip != nil && ip.IsLoopback()) {
				return nil
			}
			return &tls.Config{RootCAs: pool, ServerName: h, MinVersion: tls.VersionTLS12}
		}
	}
	host := c.ListenHost
	if host == "" {
		host = "127.0.0.1"
	}
	g := &gatewayEndpoints{mgr: gateway.NewManager(cfg), svc: routes, host: host, log: log,
		instancePorts: [2]int{c.InstancePortLow, c.InstancePortHigh}}
	g.lis = listener.New(listener.Config{ListenHost: host, HoldTimeout: c.HoldTimeout, Logger: log}, g.mgr, routes)
	return g, nil
}

func endpointName(id armid.ServerID) string { return "server:" + id.Key() }

// OpenServer opens the server's endpoint on its leased port (idempotent).
func (g *gatewayEndpoints) OpenServer(srv *model.Server) error {
	g.mu.Lock()
	defer g.mu.Unlock()
	if err := g.usable(srv.GatewayPort); err != nil {
		return fmt.Errorf("open endpoint of server %s: %w", srv.ID.Name, err)
	}
	addr := net.JoinHostPort(g.host, strconv.Itoa(srv.GatewayPort))
	_, err := g.mgr.Open(endpointName(srv.ID), addr, serverResolver{g: g, server: srv.ID})
	if err != nil {
		return fmt.Errorf("open endpoint of server %s on %s: %w", srv.ID.Name, addr, err)
	}
	return nil
}

// OpenGroup opens the group's read-write and read-only listeners.
func (g *gatewayEndpoints) OpenGroup(fg *model.FailoverGroup) error {
	g.mu.Lock()
	defer g.mu.Unlock()
	for _, port := range []int{fg.RWPort, fg.ROPort} {
		if err := g.usable(port); err != nil {
			return fmt.Errorf("open the listeners of group %s: %w", fg.Name, err)
		}
	}
	return g.lis.Open(fg)
}

// CloseGroup closes the group's listeners.
func (g *gatewayEndpoints) CloseGroup(fg *model.FailoverGroup) { g.lis.Close(fg) }

// CloseServer closes the server's endpoint and its sessions.
func (g *gatewayEndpoints) CloseServer(srv *model.Server) { g.mgr.Close(endpointName(srv.ID)) }

// CloseAll closes every endpoint.
func (g *gatewayEndpoints) CloseAll() { g.mgr.CloseAll() }

// shutdown closes every endpoint and its sessions for good: nothing opens after it, even from a follow pass
// that is still under way.
func (g *gatewayEndpoints) shutdown() {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.shut = true
	g.mgr.CloseAll()
}

// Released follows the end of a failover of group: the group's listeners let new sessions through and cut the
// read-write sessions still on a former primary, and every server endpoint cuts its sessions to a fenced
// instance (a former primary that could not be stopped would otherwise keep serving them).
func (g *gatewayEndpoints) Released(group string, recorded bool) {
	g.lis.ReleaseRecorded(group, recorded)
	servers, err := g.svc.Servers()
	if err != nil {
		g.log.Warn("cut sessions to fenced instances", "err", err)
		return
	}
	for i := range servers {
		g.cutFenced(servers[i].ID)
	}
}

// cutFenced ends the sessions of server's endpoint that are relayed to a fenced instance.
func (g *gatewayEndpoints) cutFenced(server armid.ServerID) {
	ep, ok := g.mgr.Get(endpointName(server))
	if !ok {
		return
	}
	n := ep.Cut(func(s gateway.SessionInfo) bool {
		_, _, err := g.svc.ResolveDatabase(server, s.Database)
		return errors.Is(err, service.ErrFenced)
	})
	if n > 0 {
		g.log.Warn("cut sessions relayed to a fenced former primary", "server", server.Name, "sessions", n)
	}
}

// cutFencedInBackground runs cutFenced for the server in the background unless one already runs: sessions
// refused in a loop start one scan at a time, not a goroutine each.
func (g *gatewayEndpoints) cutFencedInBackground(server armid.ServerID) {
	v, _ := g.cutting.LoadOrStore(server.Name, &atomic.Bool{})
	running := v.(*atomic.Bool)
	if !running.CompareAndSwap(false, true) {
		return
	}
	go func() {
		defer running.Store(false)
		g.cutFenced(server)
	}()
}

type serverResolver struct {
	g      *gatewayEndpoints
	server armid.ServerID
}

func (r serverResolver) Resolve(_ context.Context, database string) (string, error) {
	addr, status, err := r.g.svc.ResolveDatabase(r.server, database)
	switch {
	case errors.Is(err, service.ErrUnknownDatabase):
		return "", &gateway.RouteError{Code: "3D000", Message: fmt.Sprintf("database %q does not exist on server %q", database, r.server.Name)}
	case errors.Is(err, service.ErrFenced):
		r.g.cutFencedInBackground(r.server) // sessions relayed to it before it was fenced end too
		return "", &gateway.RouteError{Code: "57P03", Message: fmt.Sprintf("database %q on server %q is a former primary waiting to rejoin as a secondary", database, r.server.Name)}
	case err != nil:
		return "", &gateway.RouteError{Code: "58000", Message: "fogo could not resolve the database"}
	case status != model.DBOnline:
		return "", &gateway.RouteError{Code: "57P03", Message: fmt.Sprintf("database %q is %s", database, status)}
	}
	return addr, nil
}
