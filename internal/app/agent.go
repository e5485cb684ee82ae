package app

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/fogo-db/fogo/internal/agent"
	"github.com/fogo-db/fogo/internal/controlplane/cluster"
	"github.com/fogo-db/fogo/internal/controlplane/leader"
	"github.com/fogo-db/fogo/internal/controlplane/model"
	"github.com/fogo-db/fogo/internal/controlplane/service"
	"github.com/fogo-db/fogo/internal/controlplane/store"
	"github.com/fogo-db/fogo/internal/lease"
	"github.com/fogo-db/fogo/internal/postgres/instance"
	"github.com/fogo-db/fogo/internal/postgres/pgbin"
)

// AgentOptions are the settings of `fogo agent`.
type AgentOptions struct {
	Name   string
	Region string
	// AdvertiseHost is the host's address on the network between fogo's hosts: its instances listen on it and
	// its host API is reached on it.
	AdvertiseHost string
	// Listen is the host API's address (default AdvertiseHost:7500).
	Listen            string
	DataDir           string
	InstancesDir      string
	PGBin             string
	PortLow, PortHigh int
	// TLSCert and TLSKey are the host's certificate (see fogo certs): the host API and the instances serve TLS
	// with it (required unless AllowPlaintext). TLSCA is the cluster's CA: the instances' own connections to
	// other hosts (replication, rewind) verify against it.
	TLSCert, TLSKey, TLSCA string
	// AllowFrom are networks, besides the fogo hosts, whose clients may log in to the instances directly.
	AllowFrom []netip.Prefix
	// AllowPlaintext serves the host API without TLS: for a host API on loopback, or a network already private.
	AllowPlaintext bool
	SecretsKeyFile string
	Etcd           *store.EtcdConfig
	// TTL is the agent's lease (default agent.DefaultTTL).
	TTL time.Duration
	// ServeEndpoints makes the agent serve every server's endpoint and every group's listeners on AdvertiseHost,
	// as every controller does (fogo agent: on unless --serve-endpoints=false).
	ServeEndpoints bool
	// GatewayTLSCert and GatewayTLSKey, when set, make those endpoints answer clients' SSLRequest with TLS.
	GatewayTLSCert, GatewayTLSKey string
	// ListenerHoldTimeout bounds how long a new read-write session waits during a failover (default 30s).
	ListenerHoldTimeout time.Duration
	Logger              *slog.Logger
}

// gatewayConfig is the agent's endpoints': on its address; the instances, on this host and the others, verified
// against the cluster's CA.
func (o AgentOptions) gatewayConfig() gatewayConfig {
	return gatewayConfig{ListenHost: o.AdvertiseHost, TLSCert: o.GatewayTLSCert, TLSKey: o.GatewayTLSKey,
		BackendCA: o.TLSCA, HoldTimeout: o.ListenerHoldTimeout, InstancePortLow: o.PortLow, InstancePortHigh: o.PortHigh}
}

// Agent is a running `fogo agent`.
type Agent struct {
	opts     AgentOptions
	log      *slog.Logger
	bin      *pgbin.Bin
	st       *store.Store
	token    string
	listener net.Listener
	http     *http.Server
	reg      *lease.Registration
	rec      model.Agent
	api      *agent.Server
	fenced   chan struct{} // closed once the primaries are fenced after the lease was lost
	gw       *gatewayEndpoints
	// stopServing stops following the state and closes the endpoints and their sessions (nil when not serving).
	stopServing func()
	bg          context.Context // the agent's background work (lease guard, leadership follower) runs until Close
	stop        context.CancelFunc
}

// StartAgent brings an agent up: it registers the host and serves its host API until Close.
func StartAgent(ctx context.Context, opts AgentOptions) (*Agent, error) {
	bg, stop := context.WithCancel(context.Background())
	a := &Agent{opts: opts, log: opts.Logger, fenced: make(chan struct{}), bg: bg, stop: stop}
	if a.log == nil {
		a.log = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
	}
	steps := []step{
		{"check options", a.checkOptions},
		{"prepare directories", a.prepareDirs},
		{"open state", a.openState},
		{"listen", a.listen},
		{"record the host", a.record},
		{"serve the endpoints", a.serveEndpoints},
		{"register", a.register},
		{"guard the lease", a.guard},
	}
	if err := runSteps(ctx, steps); err != nil {
		a.Close()
		return nil, fmt.Errorf("agent %s: %w", opts.Name, err)
	}
	a.log.Info("agent registered", "agent", a.rec.Name, "region", a.rec.Region, "url", a.rec.URL,
		"instances_dir", a.rec.InstancesDir, "ports", fmt.Sprintf("%d-%d", a.rec.PortLow, a.rec.PortHigh))
	return a, nil
}

func (a *Agent) checkOptions(context.Context) error {
	o := &a.opts
	if err := checkAgentName(o.Name); err != nil {
		return err
	}
	if o.Region == "" {
		return errors.New("--region is required: servers whose location is this region are placed on this host")
	}
	if o.AdvertiseHost == "" {
		return errors.New("--advertise-host is required: the address the other fogo hosts reach this one on")
	}
	if o.Etcd == nil {
		return errors.New("--etcd-endpoints is required: agents exist in cluster mode only")
	}
	if o.Listen == "" {
		o.Listen = net.JoinHostPort(o.AdvertiseHost, "7500")
	}
	if o.PortLow == 0 {
		o.PortLow, o.PortHigh = 6401, 6999 // apart from a controller's default 7401-7999 on the same host
	}
	if o.PortLow <= 0 || o.PortHigh < o.PortLow || o.PortHigh > 65535 {
		return fmt.Errorf("port range %d-%d is not valid", o.PortLow, o.PortHigh)
	}
	if (o.TLSCert == "") != (o.TLSKey == "") || (o.TLSCert == "") != (o.TLSCA == "") {
		return errors.New("--tls-cert, --tls-key and --tls-ca go together")
	}
	if o.TLSCert == "" && !o.AllowPlaintext {
		return errors.New("the host API carries the instances' files and commands: give --tls-cert and --tls-key (see `fogo certs`), or --allow-plaintext on a private network")
	}
	if o.DataDir == "" {
		o.DataDir = "./fogo-agent-data"
	}
	return nil
}

// checkAgentName accepts names that are safe as etcd key parts and in messages.
func checkAgentName(name string) error {
	if name == "" || len(name) > 63 {
		return errors.New("--name is required (1 to 63 characters)")
	}
	for _, r := range name {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_' || r == '.') {
			return fmt.Errorf("--name %q: use letters, digits, '-', '_' and '.' only", name)
		}
	}
	return nil
}

func (a *Agent) prepareDirs(context.Context) error {
	abs, err := filepath.Abs(a.opts.DataDir)
	if err != nil {
		return err
	}
	a.opts.DataDir = abs
	if err := os.MkdirAll(abs, 0o700); err != nil {
		return err
	}
	if a.bin, err = pgbin.Discover(a.opts.PGBin); err != nil {
		return err
	}
	if a.opts.InstancesDir, err = instancesDir(a.bin, abs, a.opts.InstancesDir, a.log); err != nil {
		return err
	}
	if a.opts.TLSCert != "" {
		// The instances serve TLS with the host's certificate, installed once where the postgres user reads it.
		_, err = instance.InstallHostTLS(instance.LocalHost{Bin: a.bin}, cluster.HostTLSDir(a.opts.InstancesDir),
			instance.TLSFiles{CertFile: a.opts.TLSCert, KeyFile: a.opts.TLSKey, CAFile: a.opts.TLSCA})
	}
	return err
}

// openState opens the shared state with the secrets key every fogo process of the cluster holds; an agent never
// creates the key (a controller does, on the first start).
func (a *Agent) openState(context.Context) error {
	keyFile := KeyFilePath(a.opts.DataDir, a.opts.SecretsKeyFile)
	if _, err := os.Stat(keyFile); errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("secrets key file %s is missing: copy the controllers' key file to this host (--secrets-key-file)", keyFile)
	}
	s, err := openSealedState(a.opts.DataDir, a.opts.SecretsKeyFile, a.opts.Etcd, a.log)
	if err != nil {
		return err
	}
	a.st = s.st
	a.token, err = sharedSecret(a.st, agentTokenKey)
	return err
}

func (a *Agent) listen(context.Context) error {
	ln, err := net.Listen("tcp", a.opts.Listen)
	if err != nil {
		return err
	}
	scheme := "http"
	cli, prefix := a.st.Etcd()
	fence := &agent.LeaderFence{Current: func(ctx context.Context) (int64, error) { return leader.CurrentRev(ctx, cli, prefix) }}
	go fence.Follow(a.bg, leader.Changes(a.bg, cli, prefix))
	a.api = &agent.Server{Name: a.opts.Name, Root: a.opts.InstancesDir, Host: instance.LocalHost{Bin: a.bin}, Token: a.token, Log: a.log,
		Leader: fence}
	a.http = &http.Server{ReadHeaderTimeout: 10 * time.Second, Handler: a.api}
	if a.opts.TLSCert != "" {
		cert, err := tls.LoadX509KeyPair(a.opts.TLSCert, a.opts.TLSKey)
		if err != nil {
			ln.Close()
			return fmt.Errorf("load tls certificate: %w", err)
		}
		a.http.TLSConfig = &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
		ln = tls.NewListener(ln, a.http.TLSConfig)
		scheme = "https"
	}
	a.listener = ln
	_, port, _ := net.SplitHostPort(ln.Addr().String())
	a.rec.URL = scheme + "://" + net.JoinHostPort(a.opts.AdvertiseHost, port)
	go func() {
		if err := a.http.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			a.log.Error("host api", "err", err)
		}
	}()
	return nil
}

// record writes the host's durable record: what placement and the controller read.
func (a *Agent) record(context.Context) error {
	a.rec = model.Agent{
		Name: a.opts.Name, Region: a.opts.Region, Address: a.opts.AdvertiseHost, URL: a.rec.URL,
		InstancesDir: a.opts.InstancesDir, PortLow: a.opts.PortLow, PortHigh: a.opts.PortHigh, RegisteredAt: time.Now().UTC(),
		TLS: a.opts.TLSCert != "",
	}
	for _, p := range a.opts.AllowFrom {
		a.rec.AllowFrom = append(a.rec.AllowFrom, p.Masked().String())
	}
	return a.st.Update(func(tx *store.Tx) error {
		var old model.Agent
		if ok, err := tx.Get(store.Agents, a.rec.Name, &old); err != nil {
			return err
		} else if ok && old.InstancesDir != a.rec.InstancesDir {
			// The instances placed on this host live in the old directory: moving it is the operator's job.
			return fmt.Errorf("agent %s was registered with instances directory %s, not %s", a.rec.Name, old.InstancesDir, a.rec.InstancesDir)
		}
		return tx.Put(store.Agents, a.rec.Name, &a.rec)
	})
}

func (a *Agent) register(ctx context.Context) error {
	cli, prefix := a.st.Etcd()
	value := map[string]string{"url": a.rec.URL, "region": a.rec.Region}
	if a.gw != nil {
		value["host"] = a.opts.AdvertiseHost // as a controller's endpointPresence: shown in the endpoints' lists
	}
	reg, err := agent.Register(ctx, cli, prefix, a.opts.Name, a.opts.TTL, value)
	if err != nil {
		return err
	}
	a.reg = reg
	return nil
}

// guard fences the host's primaries once the agent's lease may be about to expire: it was not renewed for so
// long (etcd unreachable, the agent frozen) that less than a third of its TTL is left by what etcd last said
// (Patroni's defaults leave a third too: ttl 30 s, loop_wait and retry_timeout 10 s each). Half left it fenced
// healthy hosts: one etcd member of three killed under load, the election and the client's move to another member
// took more than half the TTL once. A third (2 s of a 6 s lease) is still ample to stop the primaries. The
// controller promotes another copy of a primary whose host does not answer only once this lease has expired, so
// the primaries here stop taking writes before that can happen. The host API refuses everything from then on,
// and Fenced is closed when the primaries are stopped (serve exits; a supervisor starts it again, and it
// registers once etcd is back).
func (a *Agent) guard(context.Context) error {
	cli, _ := a.st.Etcd()
	ctx := a.bg
	ttl := a.opts.TTL
	if ttl <= 0 {
		ttl = agent.DefaultTTL
	}
	lost, err := lease.Guard(ctx, cli, a.reg.Lease(), ttl, ttl/3, a.reg.Done())
	if err != nil {
		return err
	}
	go func() {
		<-lost
		if ctx.Err() != nil {
			return // Close
		}
		a.api.Fenced.Store(true)
		a.log.Error("the agent's lease could not be renewed: fencing the primaries on this host", "agent", a.opts.Name)
		// First no session reaches anything through this host any more: its routes may be stale from now on.
		if a.gw != nil {
			a.closeEndpoints()
			a.log.Warn("endpoints and listeners closed, their sessions ended", "agent", a.opts.Name)
		}
		fctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		stopped, err := agent.FencePrimaries(fctx, a.opts.InstancesDir, a.bin, a.log)
		cancel()
		if err != nil {
			a.log.Error("fence the primaries", "err", err)
		}
		a.log.Warn("primaries fenced", "stopped", len(stopped))
		close(a.fenced)
	}()
	return nil
}

// serveEndpoints opens every server's endpoint and every group's listeners on this host and keeps them in step
// with the shared state from its watch, as a waiting controller does (gatewayEndpoints.followState). Sessions are
// routed from the store's records; what is not in them (is the geo-secondary running as a standby, for the
// read-only listener) is asked of the agents' host APIs, with the token the agents share: no superuser
// password is needed.
func (a *Agent) serveEndpoints(context.Context) error {
	if !a.opts.ServeEndpoints {
		return nil
	}
	cli, prefix := a.st.Etcd()
	apis, err := hostAPIs(cli, prefix, a.token, a.opts.TLSCA, func() int64 { return 0 })
	if err != nil {
		return err
	}
	cl := cluster.New(cluster.Config{DataDir: a.opts.DataDir, InstancesDir: a.opts.InstancesDir, Bin: a.bin, Logger: a.log, Agents: apis}, a.st)
	routes := service.NewRoutes(a.st, cl)
	if a.gw, err = newGatewayEndpoints(a.opts.gatewayConfig(), routes, a.log); err != nil {
		return err
	}
	stop := a.gw.followState(a.bg, a.st, routes)
	var once sync.Once
	a.stopServing = func() {
		once.Do(func() {
			// Without waiting for a follow pass that may hang on an unreachable etcd: the fence must go on.
			go stop()
			a.gw.shutdown()
		})
	}
	return nil
}

// closeEndpoints stops serving the endpoints and ends their sessions (idempotent).
func (a *Agent) closeEndpoints() {
	if a.stopServing != nil {
		a.stopServing()
	}
}

// URL is the host API's URL.
func (a *Agent) URL() string { return a.rec.URL }

// Fenced is closed once the agent, having lost its lease, has stopped the primaries on its host.
func (a *Agent) Fenced() <-chan struct{} { return a.fenced }

// Close stops serving and ends the registration. The instances keep running: an agent restart does not stop them.
func (a *Agent) Close() {
	a.closeEndpoints()
	if a.stop != nil {
		a.stop()
	}
	if a.reg != nil {
		select {
		case <-a.fenced:
			a.reg.Orphan() // etcd is unreachable: revoking the lease would only wait for it; it expires by itself
		default:
			_ = a.reg.Close()
		}
	}
	if a.http != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		_ = a.http.Shutdown(ctx)
		cancel()
	}
	if a.st != nil {
		a.st.Close()
	}
}

// agentDialTimeout bounds connecting to an agent's host API.
const agentDialTimeout = 2 * time.Second

// agentTokenKey is the secret that authenticates controllers to the agents' host APIs.
const agentTokenKey = "agent-token"

// sharedSecret returns the random secret kept sealed under key in the store, creating it on first use.
func sharedSecret(st *store.Store, key string) (string, error) {
	type sec struct {
		Value string `json:"value"`
	}
	var s sec
	err := st.Update(func(tx *store.Tx) error {
		s = sec{}
		if ok, err := tx.Get(store.Secrets, key, &s); err != nil || ok {
			return err
		}
		buf := make([]byte, 32)
		if _, err := rand.Read(buf); err != nil {
			return err
		}
		s.Value = hex.EncodeToString(buf)
		return tx.Put(store.Secrets, key, &s)
	})
	if err != nil {
		return "", fmt.Errorf("shared secret %s: %w", key, err)
	}
	return s.Value, nil
}

// agents is how the controller reaches the agents: in cluster mode (state in etcd) every server is placed on an
// agent's host; with bbolt there are none.
func (a *App) agents() (*cluster.Agents, error) {
	cli, prefix := a.Store.Etcd()
	if cli == nil {
		return nil, nil
	}
	token, err := sharedSecret(a.Store, agentTokenKey)
	if err != nil {
		return nil, err
	}
	return hostAPIs(cli, prefix, token, a.opts.ClusterCA, a.leaderRev.Load)
}

// hostAPIs reaches the agents' host APIs with the token they share, trusting caFile (default the system's roots);
// leaderRev is the caller's leadership revision (0: not the controller, reads only).
func hostAPIs(cli *clientv3.Client, prefix, token, caFile string, leaderRev func() int64) (*cluster.Agents, error) {
	tlsConf := &tls.Config{MinVersion: tls.VersionTLS12}
	if caFile != "" {
		pool, err := loadCAPool(caFile)
		if err != nil {
			return nil, err
		}
		tlsConf.RootCAs = pool
	}
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.TLSClientConfig = tlsConf
	// A host that is gone should cost seconds, not the default half minute per call.
	tr.DialContext = (&net.Dialer{Timeout: agentDialTimeout, KeepAlive: 15 * time.Second}).DialContext
	tr.TLSHandshakeTimeout = agentDialTimeout
	// Calls come in bursts (the reconciler, the monitor and an operation at once): keep enough connections to each
	// host open that a failover's calls do not pay a new TLS handshake (the default keeps 2).
	tr.MaxIdleConnsPerHost = 16
	return &cluster.Agents{Etcd: cli, Prefix: prefix, Token: token, HTTP: &http.Client{Transport: tr}, RootCert: caFile,
		LeaderRev: leaderRev}, nil
}

// InstancesDir is where the agent keeps its instances' data directories.
func (a *Agent) InstancesDir() string { return a.opts.InstancesDir }

// loadCAPool reads a CA certificate file into a pool.
func loadCAPool(path string) (*x509.CertPool, error) {
	pem, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("cluster CA: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("cluster CA %s: no PEM certificate in it", path)
	}
	return pool, nil
}
