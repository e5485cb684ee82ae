// Package clustersim brings a whole fogo cluster up on one Linux machine, for people to try cluster mode
// (`fogo try-cluster`) and for the cluster benchmark (`fogo bench failover --mode cluster`): six network
// namespaces on a private bridge (internal/testutil/netns), three etcd members (h1-h3), an agent in region eastus
// (east-1 on h4) and one in westus (west-1 on h5), both with host certificates from internal/pki, and one
// controller, `fogo serve`, on h6 with its API, endpoints and listeners on h6's address.
//
// Everything runs as the fogo binary given (the agents start PostgreSQL as the postgres OS user). Nothing listens
// outside the namespaces: the root namespace reaches them through the bridge's address only, and the hosts have no
// route beyond their /24. Close removes everything: processes, instances, namespaces, links, files.
package clustersim

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/fogo-db/fogo/internal/agent"
	"github.com/fogo-db/fogo/internal/cli"
	"github.com/fogo-db/fogo/internal/pki"
	"github.com/fogo-db/fogo/internal/postgres/pgbin"
	"github.com/fogo-db/fogo/internal/testutil/netns"
)

// Prefix is the etcd prefix of the cluster's state.
const Prefix = "/fogo"

// APIPort is the controller's API port on its host's address.
const APIPort = 7400

// Options configure a cluster.
type Options struct {
	// Bin is the fogo binary every process runs (required).
	Bin string
	// Env is added to every fogo process's environment.
	Env []string
	// Dir is where the cluster's directory is made ("" the system's temporary directory); Close removes it.
	Dir string
	// PGBin is the PostgreSQL 15 binaries' directory ("" discovers them).
	PGBin string
	// LeaseTTL is the agents' --lease-ttl (default 10s, fogo's default).
	LeaseTTL time.Duration
	// GraceUnit is the controller's --grace-period-unit, the length of one minute of a group's grace period
	// (0: fogo's default, a minute).
	GraceUnit time.Duration
	// Token is the API token (default a random one).
	Token string
	// LogLevel is the fogo processes' --log-level (default info).
	LogLevel string
	// Progress gets one line per step; nil discards.
	Progress io.Writer
}

// Cluster is a running cluster. Close it on every path.
type Cluster struct {
	Net  *netns.Net
	Etcd []*netns.EtcdMember
	// Endpoints are etcd's client URLs.
	Endpoints []string
	// Controller is `fogo serve` on h6.
	Controller *Proc
	// East and West are the agents east-1 (eastus, h4) and west-1 (westus, h5).
	East, West *Proc
	// URL is the controller's API, http://<h6>:7400.
	URL string
	// Token is the API token.
	Token string
	// Dir holds every file of the cluster: certificates, the secrets key, etcd's and fogo's data and logs.
	Dir string
	// CertDir holds the CA and the agents' certificates.
	CertDir string

	bin       *pgbin.Bin
	etcd      *clientv3.Client
	closeOnce sync.Once
}

// Start builds the cluster and waits until the controller answers and both agents are live. On error (ctx's end
// included) everything made so far is removed.
func Start(ctx context.Context, o Options) (c *Cluster, err error) {
	if o.Bin == "" {
		return nil, errors.New("clustersim: no fogo binary")
	}
	if o.LeaseTTL <= 0 {
		o.LeaseTTL = 10 * time.Second
	}
	if o.LogLevel == "" {
		o.LogLevel = "info"
	}
	if o.Progress == nil {
		o.Progress = io.Discard
	}
	if o.Token == "" {
		b := make([]byte, 16)
		_, _ = rand.Read(b)
		o.Token = "try-" + hex.EncodeToString(b)
	}
	if err := netns.Available(); err != nil {
		return nil, err
	}
	etcdBin, err := netns.FindEtcd()
	if err != nil {
		return nil, fmt.Errorf("etcd: %w (install etcd-server)", err)
	}
	bin, err := pgbin.Discover(o.PGBin)
	if err != nil {
		return nil, fmt.Errorf("PostgreSQL 15: %w", err)
	}
	dir, err := os.MkdirTemp(o.Dir, "fogo-cluster-")
	if err != nil {
		return nil, fmt.Errorf("cluster directory: %w", err)
	}
	c = &Cluster{Dir: dir, CertDir: filepath.Join(dir, "certs"), Token: o.Token, bin: bin}
	defer func() {
		if err != nil {
			c.Close()
			c = nil
		}
	}()
	step := func(format string, args ...any) { fmt.Fprintf(o.Progress, format+"\n", args...) }

	c.Net, err = netns.Create(6, func(err error) { step("netns: sweep of leftovers: %v", err) })
	if err != nil {
		return c, fmt.Errorf("network namespaces: %w", err)
	}
	step("hosts: bridge %s, %s (the bridge is %s)", c.Net.Bridge, c.Net.Subnet, c.Net.BridgeAddr)
	h := c.Net.Host
	if _, err := pki.EnsureCluster(c.CertDir, []pki.Host{
		{Name: "east-1", Addrs: []string{h(4).Addr().String()}},
		{Name: "west-1", Addrs: []string{h(5).Addr().String()}},
		{Name: "ctl-1", Addrs: []string{h(6).Addr().String()}},
	}); err != nil {
		return c, fmt.Errorf("certificates: %w", err)
	}
	etcdDir := filepath.Join(dir, "etcd")
	if err := os.Mkdir(etcdDir, 0o700); err != nil {
		return c, fmt.Errorf("etcd directory: %w", err)
	}
	if c.Etcd, err = netns.LaunchEtcd(etcdBin, etcdDir, h(1), h(2), h(3)); err != nil {
		return c, err
	}
	c.Endpoints = netns.Endpoints(c.Etcd)
	step("etcd: 3 members, %s", strings.Join(c.Endpoints, ","))
	c.etcd, err = clientv3.New(clientv3.Config{Endpoints: c.Endpoints, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		return c, fmt.Errorf("etcd client: %w", err)
	}

	keyFile := filepath.Join(dir, "secrets.key")
	common := []string{"--etcd-endpoints", strings.Join(c.Endpoints, ","), "--etcd-prefix", Prefix,
		"--secrets-key-file", keyFile, "--log-level", o.LogLevel}
	if c.Controller, err = c.newController(h(6), o, common); err != nil {
		return c, err
	}
	// The controller first: it creates the secrets key the agents need.
	if err := c.Controller.Start(ctx); err != nil {
		return c, err
	}
	step("controller: ctl-1 on %s, API %s", h(6).Addr(), c.URL)
	agentArgs := append([]string{"--tls-ca", filepath.Join(c.CertDir, pki.CACertName),
		"--allow-from", c.Net.Subnet.String(), "--lease-ttl", o.LeaseTTL.String()}, common...)
	if c.East, err = c.newAgent(h(4), "east-1", "eastus", o, agentArgs); err != nil {
		return c, err
	}
	if c.West, err = c.newAgent(h(5), "west-1", "westus", o, agentArgs); err != nil {
		return c, err
	}
	for _, a := range []*Proc{c.East, c.West} {
		if err := a.Start(ctx); err != nil {
			return c, err
		}
		step("agent: %s (%s) on %s, lease TTL %s", a.Name, a.Region, a.Host.Addr(), o.LeaseTTL)
	}
	return c, nil
}

// subdir makes dir/name, reachable (search permission only) by the postgres OS user.
func (c *Cluster) subdir(name string) (string, error) {
	d := filepath.Join(c.Dir, name)
	if err := os.Mkdir(d, 0o700); err != nil {
		return "", fmt.Errorf("directory %s: %w", name, err)
	}
	if err := c.bin.AllowTraverse(c.Dir, d); err != nil {
		return "", fmt.Errorf("directory %s: %w", name, err)
	}
	return d, nil
}

// newController describes `fogo serve` on h: API, endpoints and listeners on h's address.
func (c *Cluster) newController(h *netns.Host, o Options, common []string) (*Proc, error) {
	dir, err := c.subdir("ctl-1")
	if err != nil {
		return nil, err
	}
	addr := h.Addr().String()
	c.URL = fmt.Sprintf("http://%s:%d", addr, APIPort)
	p := &Proc{Name: "ctl-1", Host: h, DataDir: dir, LogFile: filepath.Join(dir, "serve.log"), bin: o.Bin,
		env: append([]string{"FOGO_API_TOKEN=" + c.Token}, o.Env...)}
	p.args = append([]string{"serve", "--data-dir", dir, "--listen", fmt.Sprintf("%s:%d", addr, APIPort),
		"--advertise-host", addr, "--gateway-listen-host", addr, "--port-range", "7401-7999",
		"--min-grace-period-minutes", "1", "--controller-name", "ctl-1",
		"--cluster-ca", filepath.Join(c.CertDir, pki.CACertName),
		// TLS on the endpoints and listeners too: PostgreSQL behind them serves TLS and offers SCRAM-SHA-256-PLUS,
		// which libpq refuses over a connection without TLS.
		"--gateway-tls-cert", filepath.Join(c.CertDir, "ctl-1.pem"), "--gateway-tls-key", filepath.Join(c.CertDir, "ctl-1-key.pem"),
	}, common...)
	if o.GraceUnit > 0 {
		p.args = append(p.args, "--grace-period-unit", o.GraceUnit.String())
	}
	hc := &http.Client{Timeout: 2 * time.Second}
	p.ready = func(ctx context.Context) error {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.URL+"/healthz", nil)
		if err != nil {
			return err
		}
		resp, err := hc.Do(req)
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("healthz: %s", resp.Status)
		}
		return nil
	}
	return p, nil
}

// newAgent describes `fogo agent` name in region on h.
func (c *Cluster) newAgent(h *netns.Host, name, region string, o Options, common []string) (*Proc, error) {
	dir, err := c.subdir(name)
	if err != nil {
		return nil, err
	}
	p := &Proc{Name: name, Region: region, Host: h, DataDir: dir, LogFile: filepath.Join(dir, "agent.log"),
		bin: o.Bin, env: o.Env}
	p.args = append([]string{"agent", "--name", name, "--region", region, "--advertise-host", h.Addr().String(),
		// Its instances' ports apart from the controller's 7401-7999: the agent serves the endpoints and listeners
		// on those, as the controller does.
		"--data-dir", dir, "--port-range", "6401-6499",
		"--tls-cert", filepath.Join(c.CertDir, name+".pem"), "--tls-key", filepath.Join(c.CertDir, name+"-key.pem"),
		"--gateway-tls-cert", filepath.Join(c.CertDir, name+".pem"), "--gateway-tls-key", filepath.Join(c.CertDir, name+"-key.pem"),
	}, common...)
	if o.PGBin != "" {
		p.args = append(p.args, "--pg-bin", o.PGBin)
	}
	p.ready = func(ctx context.Context) error {
		// The liveness key alone could be a previous run's, still under its lease: this run must have registered.
		if !p.loggedSinceStart("serves its host API on") {
			return fmt.Errorf("agent %s has not registered yet", name)
		}
		live, err := agent.Live(ctx, c.etcd, Prefix)
		if err == nil && !live[name] {
			err = fmt.Errorf("agent %s is not live", name)
		}
		return err
	}
	return p, nil
}

// Agent returns the agent of region (eastus or westus), or nil.
func (c *Cluster) Agent(region string) *Proc {
	for _, a := range []*Proc{c.East, c.West} {
		if a != nil && a.Region == region {
			return a
		}
	}
	return nil
}

// Client is an API client of the controller.
func (c *Cluster) Client() *cli.Client {
	return &cli.Client{Endpoint: c.URL, Token: c.Token, PollInterval: 100 * time.Millisecond}
}
