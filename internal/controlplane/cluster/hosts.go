package cluster

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/fogo-db/fogo/internal/agent"
	"github.com/fogo-db/fogo/internal/controlplane/model"
	"github.com/fogo-db/fogo/internal/controlplane/store"
	"github.com/fogo-db/fogo/internal/errcatalog"
	"github.com/fogo-db/fogo/internal/postgres/instance"
)

// Agents is how a controller in cluster mode reaches the agents of the database hosts.
type Agents struct {
	Etcd   *clientv3.Client
	Prefix string
	// Token authenticates the controller to every agent's host API.
	Token string
	// HTTP reaches the host APIs (it trusts the cluster's CA).
	HTTP *http.Client
	// RootCert is the cluster's CA file on this machine: connections to instances on TLS hosts verify their
	// certificate against it.
	RootCert string
	// LeaderRev gives this controller's leadership revision (0 while it waits): the agents act only on calls
	// from the leadership in force.
	LeaderRev func() int64
}

// agentCacheTTL is how long an agent's record is used before it is read again (an agent restarted with another
// address is followed within it).
const agentCacheTTL = 10 * time.Second

type cachedAgent struct {
	rec  model.Agent
	read time.Time
}

// agentDirectory caches agent records by name.
type agentDirectory struct {
	mu   sync.Mutex
	recs map[string]cachedAgent
}

// ClusterMode reports whether instances run on agents' hosts.
func (m *Manager) ClusterMode() bool { return m.cfg.Agents != nil }

// agent returns the record of the named agent (cached briefly).
func (m *Manager) agent(name string) (*model.Agent, error) {
	m.agents.mu.Lock()
	c, ok := m.agents.recs[name]
	m.agents.mu.Unlock()
	if ok && time.Since(c.read) < agentCacheTTL {
		return &c.rec, nil
	}
	var rec model.Agent
	if err := m.store.View(func(tx *store.Tx) error { return tx.MustGet(store.Agents, name, &rec) }); err != nil {
		return nil, fmt.Errorf("agent %s: %w", name, err)
	}
	m.agents.mu.Lock()
	if m.agents.recs == nil {
		m.agents.recs = map[string]cachedAgent{}
	}
	m.agents.recs[name] = cachedAgent{rec: rec, read: time.Now()}
	m.agents.mu.Unlock()
	return &rec, nil
}

// hostClient is the host API client of the named agent. An agent that is not known yields a client whose every
// call fails with the reason.
func (m *Manager) hostClient(name string) (*agent.Client, *model.Agent) {
	rec, err := m.agent(name)
	if err != nil || m.cfg.Agents == nil {
		return &agent.Client{Name: name, HTTP: unreachable(err)}, &model.Agent{Name: name}
	}
	return &agent.Client{Name: name, URL: rec.URL, Token: m.cfg.Agents.Token, HTTP: m.cfg.Agents.HTTP, LeaderRev: m.cfg.Agents.LeaderRev}, rec
}

// unreachable is an HTTP client that fails every request with err.
func unreachable(err error) *http.Client {
	if err == nil {
		err = errors.New("cluster mode is not configured")
	}
	return &http.Client{Transport: failingTransport{err}}
}

type failingTransport struct{ err error }

func (f failingTransport) RoundTrip(*http.Request) (*http.Response, error) { return nil, f.err }

// LiveAgents lists the agents whose lease is alive.
func (m *Manager) LiveAgents(ctx context.Context) (map[string]bool, error) {
	if m.cfg.Agents == nil {
		return nil, nil
	}
	return agent.Live(ctx, m.cfg.Agents.Etcd, m.cfg.Agents.Prefix)
}

// RegionKey is how regions compare: "East US" and "eastus" are one.
func RegionKey(location string) string { return strings.ReplaceAll(strings.ToLower(location), " ", "") }

// PlaceServer chooses the host of a new server in location: among the live agents registered in that region, the
// one running the fewest servers (then by name). live comes from LiveAgents, read before the transaction. In the
// embedded mode it returns "".
func (m *Manager) PlaceServer(tx *store.Tx, location string, live map[string]bool) (string, error) {
	if m.cfg.Agents == nil {
		return "", nil
	}
	agents, err := store.List[model.Agent](tx, store.Agents, "")
	if err != nil {
		return "", err
	}
	servers, err := store.List[model.Server](tx, store.Servers, "")
	if err != nil {
		return "", err
	}
	load := map[string]int{}
	for _, s := range servers {
		load[s.Host]++
	}
	var candidates, elsewhere []string
	for _, a := range agents {
		switch {
		case RegionKey(a.Region) != RegionKey(location):
			if live[a.Name] {
				elsewhere = append(elsewhere, a.Region)
			}
		case live[a.Name]:
			candidates = append(candidates, a.Name)
		}
	}
	if len(candidates) == 0 {
		sort.Strings(elsewhere)
		detail := "no fogo agent is registered and alive there"
		if len(elsewhere) > 0 {
			detail += "; live agents are in: " + strings.Join(slices.Compact(elsewhere), ", ")
		}
		return "", errcatalog.Newf("RegionDoesNotAllowProvisioning",
			"Location '%s' is not accepting creation of new servers at this time: %s. Start `fogo agent --region %s` on a host there.",
			location, detail, RegionKey(location))
	}
	sort.Slice(candidates, func(i, j int) bool {
		if load[candidates[i]] != load[candidates[j]] {
			return load[candidates[i]] < load[candidates[j]]
		}
		return candidates[i] < candidates[j]
	})
	return candidates[0], nil
}

// portKey is the store key of a leased port: the port alone on the controller's machine, host/port on an agent's.
func portKey(host string, port int) string {
	if host == "" {
		return strconv.Itoa(port)
	}
	return host + "/" + strconv.Itoa(port)
}

// allocateHostPort leases the lowest port of the agent's range that no instance record of that host holds.
// Whether something else listens on it is the agent's host to find out: the instance then fails to start, and
// its error says so.
func (m *Manager) allocateHostPort(tx *store.Tx, ag *model.Agent, owner string) (int, error) {
	leased := map[string]bool{}
	if err := tx.Scan(store.Ports, ag.Name+"/", func(key string, _ []byte) error { leased[key] = true; return nil }); err != nil {
		return 0, fmt.Errorf("allocate port on %s: %w", ag.Name, err)
	}
	for p := ag.PortLow; p <= ag.PortHigh; p++ {
		if !leased[portKey(ag.Name, p)] {
			return p, tx.Put(store.Ports, portKey(ag.Name, p), owner)
		}
	}
	return 0, fmt.Errorf("allocate port on %s %d-%d: %w", ag.Name, ag.PortLow, ag.PortHigh, ErrNoFreePort)
}

// instanceHome is where a new instance's directory goes: under the agent's instances directory for a server
// placed on an agent, under the controller's otherwise.
func (m *Manager) instanceHome(tx *store.Tx, host, id string) (string, *model.Agent, error) {
	if host == "" {
		return filepath.Join(m.instancesDir(), id), nil, nil
	}
	var ag model.Agent
	if err := tx.MustGet(store.Agents, host, &ag); err != nil {
		return "", nil, fmt.Errorf("agent %s: %w", host, err)
	}
	return filepath.Join(ag.InstancesDir, id), &ag, nil
}

// hostTLSDir is where an agent installs its host's TLS files for its instances.
func hostTLSDir(ag *model.Agent) string { return filepath.Join(ag.InstancesDir, ".tls") }

// HostTLSDir is where the agent with this instances directory installs its host's TLS files.
func HostTLSDir(instancesDir string) string {
	return hostTLSDir(&model.Agent{InstancesDir: instancesDir})
}

// hostSettings adds what an instance on an agent's host needs: it listens on the host's address too, serves
// TLS with the host's certificate when the host has one, and admits the fogo hosts and the agent's networks.
func (m *Manager) hostSettings(host string, s *instance.Settings) {
	_, ag := m.hostClient(host)
	if ag.Address != "" && ag.Address != "127.0.0.1" {
		s.ListenAddresses += "," + ag.Address // the other fogo hosts reach it there
	}
	if ag.TLS {
		dir := hostTLSDir(ag)
		s.TLS = &instance.TLSFiles{CertFile: filepath.Join(dir, "server.crt"), KeyFile: filepath.Join(dir, "server.key"),
			CAFile: filepath.Join(dir, "ca.crt"), InPlace: true}
	}
	s.AllowFrom = m.allowFrom(ag)
}

// allowFrom is who may log in to an instance on ag's host: every registered fogo host (the controllers run on
// agent hosts or are listed in an agent's networks) and the agent's own networks.
func (m *Manager) allowFrom(ag *model.Agent) []netip.Prefix {
	var agents []model.Agent
	_ = m.store.View(func(tx *store.Tx) (err error) {
		agents, err = store.List[model.Agent](tx, store.Agents, "")
		return err
	})
	seen := map[netip.Prefix]bool{}
	var out []netip.Prefix
	add := func(p netip.Prefix) {
		if p.IsValid() && !seen[p.Masked()] {
			seen[p.Masked()] = true
			out = append(out, p.Masked())
		}
	}
	for _, a := range agents {
		if addr, err := netip.ParseAddr(a.Address); err == nil && !addr.IsLoopback() {
			add(netip.PrefixFrom(addr, addr.BitLen()))
		}
	}
	for _, n := range ag.AllowFrom {
		if p, err := netip.ParsePrefix(n); err == nil {
			add(p)
		} else if m.log != nil {
			m.log.Warn("agent network ignored", "agent", ag.Name, "network", n, "err", err)
		}
	}
	return out
}

// handleFrom is instance up as reached from the named host: a TLS connection made there by PostgreSQL's own
// processes (the walreceiver, pg_basebackup, pg_rewind) verifies against the CA installed on that host.
func (m *Manager) handleFrom(up *model.Instance, host string) *instance.Instance {
	h := m.Handle(up)
	if h.RootCert == "" || host == "" {
		return h
	}
	_, ag := m.hostClient(host)
	h.RootCert = filepath.Join(hostTLSDir(ag), "ca.crt")
	return h
}

// Addr is where an instance is reached (host:port): loopback on this machine, the agent's address on its host.
func (m *Manager) Addr(rec *model.Instance) string {
	return net.JoinHostPort(m.Handle(rec).Host, strconv.Itoa(rec.Port))
}
