package e2e

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/to"
	"github.com/Azure/azure-sdk-for-go/sdk/resourcemanager/sql/armsql"
	"github.com/fogo-db/fogo/internal/agent"
	"github.com/fogo-db/fogo/internal/app"
	"github.com/fogo-db/fogo/internal/controlplane/links"
	"github.com/fogo-db/fogo/internal/controlplane/store"
	"github.com/fogo-db/fogo/internal/link/target"
	"github.com/fogo-db/fogo/internal/pki"
	"github.com/fogo-db/fogo/internal/postgres/instance"
	"github.com/fogo-db/fogo/internal/testutil/netns"
	"github.com/fogo-db/fogo/internal/testutil/pgtest"
	"github.com/jackc/pgx/v5"
)

// clusterPrefix is the etcd prefix of the cluster tests' state.
const clusterPrefix = "/fogo"

// hostProc is a fogo process (an agent or a controller) inside a namespace "host".
type hostProc struct {
	t       *testing.T
	host    *netns.Host
	name    string
	bin     string
	args    []string
	env     []string
	dataDir string
	logFile string
	cmd     *exec.Cmd
	exited  chan struct{}
	// ready reports whether the started process is up (an agent: its lease is live; a controller: it answers).
	ready func() error
}

// clusterHosts is a cluster on one machine: three etcd members (h1-h3), agents on h4 (eastus) and h5 (westus),
// all TLS with certificates from fogo certs, and a controller in the test process (on the bridge's address).
type clusterHosts struct {
	nw         *netns.Net
	ctl        *fogo
	east, west *hostProc
	cli        *clientv3.Client
	certDir    string
	members    []*netns.EtcdMember
	endpoints  []string
	keyFile    string
	bin        string
	// ctlOptions start another controller on the same state (after the first lost its leadership).
	ctlOptions func(*app.Options)
}

func startCluster(t *testing.T, agentTTL time.Duration, mod func(*app.Options)) *clusterHosts {
	t.Helper()
	c := newClusterBase(t)
	c.ctlOptions = func(o *app.Options) {
		o.Etcd = &store.EtcdConfig{Endpoints: c.endpoints, Prefix: clusterPrefix}
		o.SecretsKeyFile, o.ClusterCA, o.LeaderTTL = c.keyFile, c.caFile(), 6*time.Second
		if mod != nil {
			mod(o)
		}
	}
	c.ctl = startFogo(t, c.ctlOptions)
	c.startAgents(t, agentTTL, c.nw.BridgeAddr.String()+"/32")
	return c
}

// newClusterBase makes the hosts, etcd on h1-h3, the certificates of the agents' hosts (h4, h5) and a client.
func newClusterBase(t *testing.T) *clusterHosts {
	t.Helper()
	netns.Require(t)
	pgtest.Bin(t)
	nw := netns.New(t, 5)
	members := netns.StartEtcd(t, nw.Host(1), nw.Host(2), nw.Host(3))
	c := &clusterHosts{nw: nw, certDir: t.TempDir(), members: members, endpoints: netns.Endpoints(members),
		keyFile: filepath.Join(t.TempDir(), "secrets.key"), bin: buildFogo(t)}
	if _, err := pki.EnsureCluster(c.certDir, []pki.Host{
		{Name: "east-1", Addrs: []string{nw.Host(4).Addr().String()}},
		{Name: "west-1", Addrs: []string{nw.Host(5).Addr().String()}},
	}); err != nil {
		t.Fatal(err)
	}
	cli, err := clientv3.New(clientv3.Config{Endpoints: c.endpoints, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cli.Close() })
	c.cli = cli
	return c
}

func (c *clusterHosts) caFile() string { return filepath.Join(c.certDir, pki.CACertName) }

// startAgents starts east-1 (eastus) on h4 and west-1 (westus) on h5; their instances admit allowFrom.
func (c *clusterHosts) startAgents(t *testing.T, agentTTL time.Duration, allowFrom ...string) {
	t.Helper()
	common := []string{
		"--etcd-endpoints", strings.Join(c.endpoints, ","), "--etcd-prefix", clusterPrefix,
		"--secrets-key-file", c.keyFile, "--tls-ca", c.caFile(),
		"--allow-from", strings.Join(allowFrom, ","), "--lease-ttl", agentTTL.String(), "--log-level", "warn",
	}
	c.east = c.newAgent(t, c.nw.Host(4), c.bin, "east-1", "eastus", common)
	c.west = c.newAgent(t, c.nw.Host(5), c.bin, "west-1", "westus", common)
	c.east.start()
	c.west.start()
}

func (c *clusterHosts) newAgent(t *testing.T, h *netns.Host, bin, name, region string, common []string) *hostProc {
	dir := pgtest.TempDir(t)
	// Ports are per namespace: only the host's own range matters, and it must be apart from the controllers'
	// (portBase's 20000-31999, newController's 32000-32099), which the agents serve endpoints on.
	low := 10000 + 100*int(h.Addr().As4()[3])
	p := &hostProc{t: t, host: h, name: name, bin: bin, dataDir: dir, logFile: filepath.Join(dir, "agent.log")}
	p.ready = func() error {
		// Its host API answers (a killed agent's lease stays live for a while: live alone is not this process).
		conn, err := net.DialTimeout("tcp", net.JoinHostPort(h.Addr().String(), "7500"), time.Second)
		if err != nil {
			return err
		}
		conn.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		live, err := agent.Live(ctx, c.cli, clusterPrefix)
		if err == nil && !live[name] {
			err = fmt.Errorf("agent %s is not live", name)
		}
		return err
	}
	p.args = append([]string{"agent", "--name", name, "--region", region,
		"--advertise-host", h.Addr().String(), "--data-dir", dir,
		"--port-range", fmt.Sprintf("%d-%d", low, low+49),
		"--tls-cert", filepath.Join(c.certDir, name+".pem"), "--tls-key", filepath.Join(c.certDir, name+"-key.pem"),
	}, common...)
	t.Cleanup(func() {
		p.kill()
		if t.Failed() {
			t.Logf("agent %s log:\n%s", name, p.logTail())
		}
		stopInstancesUnder(t, pgtest.Bin(t), filepath.Join(dir, "instances"))
	})
	return p
}

// start runs the process and waits until it is ready.
func (p *hostProc) start() {
	p.t.Helper()
	logf, err := os.OpenFile(p.logFile, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o600)
	if err != nil {
		p.t.Fatal(err)
	}
	p.cmd = p.host.Command(context.Background(), p.bin, p.args...)
	p.cmd.Env = append(os.Environ(), p.env...)
	p.cmd.Stdout, p.cmd.Stderr = logf, logf
	if err := p.cmd.Start(); err != nil {
		logf.Close()
		p.t.Fatalf("start agent %s: %v", p.name, err)
	}
	logf.Close()
	p.exited = make(chan struct{})
	go func(cmd *exec.Cmd, done chan struct{}) { _ = cmd.Wait(); close(done) }(p.cmd, p.exited)
	deadline := time.Now().Add(60 * time.Second)
	for {
		err := p.ready()
		if err == nil {
			return
		}
		select {
		case <-p.exited:
			p.t.Fatalf("%s exited at start:\n%s", p.name, p.logTail())
		default:
		}
		if time.Now().After(deadline) {
			p.t.Fatalf("%s never became ready (%v):\n%s", p.name, err, p.logTail())
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// logHas reports whether the process's log holds s.
func (p *hostProc) logHas(s string) bool {
	b, _ := os.ReadFile(p.logFile)
	return strings.Contains(string(b), s)
}

func (p *hostProc) kill() {
	if p.cmd == nil || p.exited == nil {
		return
	}
	_ = p.host.Kill9(p.cmd)
	select {
	case <-p.exited:
	case <-time.After(10 * time.Second):
	}
}

func (p *hostProc) logTail() string {
	b, _ := os.ReadFile(p.logFile)
	if len(b) > 4000 {
		b = b[len(b)-4000:]
	}
	return string(b)
}

// prober tries a write on one instance every 100 ms from inside a host (psql over TLS as the admin login) and
// records when writes succeeded.
type prober struct {
	cmd    *exec.Cmd
	out    string
	exited chan struct{}
}

func startProber(t *testing.T, h *netns.Host, addr string, port int, db string) *prober {
	t.Helper()
	psql := pgtest.Bin(t).Path("psql")
	script := fmt.Sprintf(`while :; do
  if %s -X -q -t -A -c "INSERT INTO probe(at) VALUES (clock_timestamp())" >/dev/null 2>&1; then date +%%s.%%N; fi
  sleep 0.1
done`, psql)
	out := filepath.Join(t.TempDir(), "probe.out")
	f, err := os.Create(out)
	if err != nil {
		t.Fatal(err)
	}
	cmd := h.Command(context.Background(), "bash", "-c", script)
	cmd.Env = append(os.Environ(), "PGHOST="+addr, "PGPORT="+strconv.Itoa(port), "PGUSER="+login, "PGPASSWORD="+password,
		"PGDATABASE="+db, "PGSSLMODE=require", "PGCONNECT_TIMEOUT=1")
	cmd.Stdout = f
	if err := cmd.Start(); err != nil {
		f.Close()
		t.Fatal(err)
	}
	f.Close()
	p := &prober{cmd: cmd, out: out, exited: make(chan struct{})}
	go func() { _ = cmd.Wait(); close(p.exited) }()
	t.Cleanup(func() { _ = h.Kill9(cmd); <-p.exited })
	return p
}

// successes returns the times of the writes that succeeded.
func (p *prober) successes(t *testing.T) []time.Time {
	f, err := os.Open(p.out)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out []time.Time
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		v, err := strconv.ParseFloat(strings.TrimSpace(sc.Text()), 64)
		if err == nil {
			out = append(out, time.Unix(0, int64(v*1e9)))
		}
	}
	return out
}

// TestClusterFailoverAcrossHosts: a failover group whose copies run on two hosts (network namespaces) of a cluster:
// three etcd members, an agent per region, a controller. Everything between hosts is TLS: the controller's host
// API calls, its SQL, the gateway's sessions and replication. Servers are placed by region; a planned failover
// moves the primary to the other host with every committed row. Then the new primary's host is cut off: its
// agent cannot renew its lease and stops the primary before the lease expires — a client on that host, writing
// straight to the instance every 100 ms, is refused from then on — and the Automatic policy fails over once the
// lease is gone. No direct write on the old primary ever comes after the first write on the new one. Healed and
// its agent started again, the old primary is rewound and rejoins as the geo-secondary.
func TestClusterFailoverAcrossHosts(t *testing.T) {
	const agentTTL = 6 * time.Second
	c := startCluster(t, agentTTL, func(o *app.Options) { o.GraceUnit = time.Second })
	f := c.ctl
	east := f.createServer("east", "eastus")
	if propString(east, "host") != "east-1" {
		t.Fatalf("server east placed on %q, want east-1", propString(east, "host"))
	}
	if west := f.createServer("west", "westus"); propString(west, "host") != "west-1" {
		t.Fatalf("server west placed on %q, want west-1", propString(west, "host"))
	}
	f.createDB("east", "shop", "eastus")
	mustExec(t, f, "east", "shop", "CREATE TABLE ledger(id bigserial PRIMARY KEY, note text); CREATE TABLE probe(at timestamptz)")
	mustExec(t, f, "east", "shop", "INSERT INTO ledger(note) VALUES ('before')")
	f.putAutomaticGroup("east", "west", "fg", 1, "shop")
	if n := countDataDirs(filepath.Join(c.east.dataDir, "instances")); n != 1 {
		t.Fatalf("east-1 holds %d data directories, want the primary's", n)
	}
	if n := countDataDirs(filepath.Join(c.west.dataDir, "instances")); n != 1 {
		t.Fatalf("west-1 holds %d data directories, want the geo-secondary's", n)
	}
	// Replication between the hosts is TLS, verified.
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	prim := f.app.Cluster.Handle(f.instanceOf(t, "east", "shop"))
	conn, err := prim.Connect(ctx, "postgres")
	if err != nil {
		t.Fatal(err)
	}
	var ssl bool
	err = conn.QueryRow(ctx, `SELECT s.ssl FROM pg_stat_replication r JOIN pg_stat_ssl s USING (pid)`).Scan(&ssl)
	conn.Close(ctx)
	if err != nil || !ssl {
		t.Fatalf("the geo-secondary's replication connection: ssl=%v err=%v", ssl, err)
	}

	// libpq (psql, its defaults) logs in through the gateway, whose hop to the instance is TLS: the instance's
	// offer of channel binding is not passed on (libpq refuses it over a plain connection).
	host, port := hostsAndPorts(f.endpointOf("east"))
	psql := exec.Command(pgtest.Bin(t).Path("psql"), "-X", "-A", "-t", "-c", "SELECT count(*) FROM ledger",
		fmt.Sprintf("host=%s port=%s user=%s dbname=shop connect_timeout=5", host, port, login))
	psql.Env = append(os.Environ(), "PGPASSWORD="+password)
	if out, err := psql.CombinedOutput(); err != nil || strings.TrimSpace(string(out)) == "" {
		t.Fatalf("psql through the gateway: %v: %s", err, out)
	}

	// Every agent serves every endpoint and listener too: the lists name both agents' hosts, a session through
	// the west agent's read-write listener writes on the primary (east), and its read-only listener reaches
	// the geo-secondary.
	eastAddr, westAddr := c.east.host.Addr().String(), c.west.host.Addr().String()
	rw := f.listenerOf("east", "fg", "readWriteEndpoint")
	for _, ep := range []string{f.endpointOf("east"), rw, f.listenerOf("east", "fg", "readOnlyEndpoint")} {
		if !strings.Contains(ep, eastAddr+":") || !strings.Contains(ep, westAddr+":") {
			t.Fatalf("endpoint list %q does not name both agents' hosts (%s, %s)", ep, eastAddr, westAddr)
		}
	}
	rwOnWest := onHost(rw, westAddr)
	before := agentSession(t, ctx, rwOnWest, eastAddr, "via-west-agent")
	defer before.Close(ctx)
	roOnWest := onHost(f.listenerOf("east", "fg", "readOnlyEndpoint"), westAddr)
	waitFor(t, 10*time.Second, "a read-only session through the west agent's listener on the geo-secondary", func() bool {
		cctx, ccancel := context.WithTimeout(ctx, 3*time.Second)
		defer ccancel()
		conn, err := dial(cctx, roOnWest, "shop")
		if err != nil {
			return false
		}
		defer conn.Close(cctx)
		var at string
		var standby bool
		err = conn.QueryRow(cctx, "SELECT host(inet_server_addr()), pg_is_in_recovery()").Scan(&at, &standby)
		return err == nil && at == westAddr && standby
	})

	// Planned failover to west: every committed row is there.
	mustExec(t, f, "east", "shop", "INSERT INTO ledger(note) VALUES ('before-planned')")
	f.mustSucceed(f.do(http.MethodPost, fgPath("west", "fg")+"/failover", nil), 200, 202)
	f.onePrimaryAt(t, "west", "east", "shop", 60*time.Second)
	f.waitRowOn(t, "west", "shop", "before-planned")
	f.waitRowOn(t, "west", "shop", "via-west-agent")
	f.waitGroupState("west", "fg", "CATCH_UP")
	// The session opened through the agent's listener before the failover, on the old primary, is ended; a new
	// one through the same listener writes on the new primary.
	cctx, ccancel := context.WithTimeout(ctx, 5*time.Second)
	_, err = before.Exec(cctx, "INSERT INTO ledger(note) VALUES ('old-session-after-failover')")
	ccancel()
	if err == nil {
		t.Fatal("a session through the west agent's read-write listener to the old primary survived the failover")
	}
	agentSession(t, ctx, onHost(rw, eastAddr), westAddr, "via-east-agent-after-planned").Close(ctx)

	// Cut west off while a client on west writes straight to its instance.
	wrec := f.instanceOf(t, "west", "shop")
	direct := startProber(t, c.west.host, c.west.host.Addr().String(), wrec.Port, "shop")
	waitFor(t, 30*time.Second, "the direct prober's first write on west", func() bool { return len(direct.successes(t)) > 0 })
	cutAt := time.Now()
	if err := c.west.host.Cut(); err != nil {
		t.Fatal(err)
	}
	healed := false
	defer func() {
		if !healed {
			_ = c.west.host.Heal()
		}
	}()
	// The agent on west fences its primary and exits.
	select {
	case <-c.west.exited:
	case <-time.After(agentTTL + 10*time.Second):
		t.Fatalf("the agent on the cut-off host did not fence and exit within its TTL:\n%s", c.west.logTail())
	}
	exitedAt := time.Now()
	// It closed its endpoints and listeners before it stopped its primary.
	if b, _ := os.ReadFile(c.west.logFile); !strings.Contains(string(b), "endpoints and listeners closed") ||
		strings.Index(string(b), "endpoints and listeners closed") > strings.Index(string(b), "primaries fenced") {
		t.Fatalf("the fenced agent did not close its endpoints before fencing its primaries:\n%s", b)
	}
	// The Automatic policy fails over to east once the lease is gone; the first write accepted there comes after
	// every direct write on west.
	var firstEast time.Time
	waitFor(t, 90*time.Second, "a write accepted on east after the cut", func() bool {
		cctx, ccancel := context.WithTimeout(ctx, 3*time.Second)
		defer ccancel()
		conn, err := f.connect(cctx, "east", "shop")
		if err != nil {
			return false
		}
		defer conn.Close(cctx)
		if _, err := conn.Exec(cctx, "INSERT INTO ledger(note) VALUES ('after-cut')"); err != nil {
			return false
		}
		firstEast = time.Now()
		return true
	})
	time.Sleep(2 * time.Second) // the prober goes on: a write on west now would be a second writable primary
	succ := direct.successes(t)
	lastWest := succ[len(succ)-1]
	t.Logf("cut at %s: west's last direct write +%s, its agent exited +%s, first write on east +%s",
		cutAt.Format(time.StampMilli), lastWest.Sub(cutAt), exitedAt.Sub(cutAt), firstEast.Sub(cutAt))
	if !lastWest.Before(firstEast) {
		t.Fatalf("two writable primaries: a direct write on west at %s, after the first write on east at %s", lastWest, firstEast)
	}
	// The lease is renewed every sixth of its TTL, so its last renewal was at most that long before the cut and
	// etcd can expire it from 5/6 TTL after the cut on: the primary must have stopped taking writes by then.
	if d := lastWest.Sub(cutAt); d >= 5*agentTTL/6 {
		t.Fatalf("west took a direct write %s after the cut, when its lease may already have expired (TTL %s)", d, agentTTL)
	}

	// Heal, and start west's agent again (a supervisor would): the old primary is rewound and rejoins.
	if err := c.west.host.Heal(); err != nil {
		t.Fatal(err)
	}
	healed = true
	c.west.start()
	f.waitGroupState("east", "fg", "CATCH_UP")
	f.waitRowOn(t, "west", "shop", "after-cut")
	if f.writableOn(t, "west", "shop") {
		t.Fatal("the old primary on west accepts writes after rejoining")
	}
}

// onHost is the address of list (a multi-host endpoint list, h1:p,h2:p) on host.
func onHost(list, host string) string {
	for _, ep := range strings.Split(list, ",") {
		if h, _, _ := strings.Cut(ep, ":"); h == host {
			return ep
		}
	}
	return ""
}

// agentSession opens a session through a read-write listener at addr (one host's), waiting for it to open, and
// writes note in it, on the primary at primaryAddr: it returns the session, still open.
func agentSession(t *testing.T, ctx context.Context, addr, primaryAddr, note string) *pgx.Conn {
	t.Helper()
	if addr == "" {
		t.Fatal("no such host in the endpoint list")
	}
	var conn *pgx.Conn
	var at string
	waitFor(t, 20*time.Second, "a write through the read-write listener at "+addr+" on "+primaryAddr, func() bool {
		cctx, ccancel := context.WithTimeout(ctx, 3*time.Second)
		defer ccancel()
		c, err := dial(cctx, addr, "shop")
		if err != nil {
			return false
		}
		err = c.QueryRow(cctx, "INSERT INTO ledger(note) VALUES ($1) RETURNING host(inet_server_addr())", note).Scan(&at)
		if err != nil || at != primaryAddr {
			c.Close(cctx)
			return false
		}
		conn = c
		return true
	})
	return conn
}

// waitFor polls cond every 200 ms up to limit.
func waitFor(t *testing.T, limit time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(limit)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %s", what, limit)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// TestClusterEtcdLoss: losing one etcd member of three changes nothing (a planned failover goes through);
// losing the majority stops every primary within the agents' lease — no instance takes writes, none is promoted,
// the controller gives up its leadership: the documented price of never having two writable primaries. With the
// majority back and the agents started again (a supervisor would), a new controller brings the primary back and
// every write acknowledged before the loss is there.
func TestClusterEtcdLoss(t *testing.T) {
	const agentTTL = 6 * time.Second
	c := startCluster(t, agentTTL, nil)
	f := c.ctl
	eastWestShop(f)
	mustExec(t, f, "east", "shop", "CREATE TABLE ledger(id bigserial PRIMARY KEY, note text); CREATE TABLE probe(at timestamptz)")
	f.mustSucceed(f.createGroup("east", "west", "fg", "shop"), 201)
	f.waitGroupState("east", "fg", "CATCH_UP")

	// One member lost: a planned failover still goes through.
	c.members[2].Kill()
	mustExec(t, f, "east", "shop", "INSERT INTO ledger(note) VALUES ('one-member-down')")
	f.mustSucceed(f.do(http.MethodPost, fgPath("west", "fg")+"/failover", nil), 200, 202)
	f.onePrimaryAt(t, "west", "east", "shop", 60*time.Second)
	f.waitRowOn(t, "west", "shop", "one-member-down")
	mustExec(t, f, "west", "shop", "INSERT INTO ledger(note) VALUES ('before-majority-loss')")

	// The majority lost: the primary on west stops taking writes before any lease can expire.
	primary := f.app.Cluster.Handle(f.instanceOf(t, "west", "shop"))
	standby := f.app.Cluster.Handle(f.instanceOf(t, "east", "shop"))
	direct := startProber(t, c.west.host, c.west.host.Addr().String(), primary.Port, "shop")
	waitFor(t, 30*time.Second, "the direct prober's first write on west", func() bool { return len(direct.successes(t)) > 0 })
	lostAt := time.Now()
	c.members[1].Kill()
	for _, a := range []*hostProc{c.west, c.east} {
		select {
		case <-a.exited:
		case <-time.After(agentTTL + 10*time.Second):
			t.Fatalf("agent %s did not fence and exit without etcd:\n%s", a.name, a.logTail())
		}
	}
	select {
	case <-f.app.LostLeadership():
	case <-time.After(agentTTL + 10*time.Second):
		t.Fatal("the controller kept its leadership without an etcd majority")
	}
	time.Sleep(2 * time.Second)
	succ := direct.successes(t)
	// As for a cut, the agent fences with a third of its lease left after its last renewal (renewals every sixth
	// of the TTL); but here the last renewal can come after the loss: etcd renews leases on its leader alone, and a
	// leader that lost its majority goes on doing so until it steps down, an election timeout (1 s) later. No
	// lease can expire meanwhile (there is no majority to expire it; the next leader gives every lease its whole
	// TTL again), so the bound is that last renewal's earliest expiry: 5/6 TTL after the loss, plus the election
	// timeout. (With a fence at half the lease left this passed within 5/6 TTL; at a third, west's last write
	// came 5.25 s after the loss once.)
	const electionTimeout = time.Second // etcd's default, which the harness's members keep
	if d := succ[len(succ)-1].Sub(lostAt); d >= 5*agentTTL/6+electionTimeout {
		t.Fatalf("west took a direct write %s after the etcd majority was lost (lease TTL %s)", d, agentTTL)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	for _, h := range []*instance.Instance{primary, standby} {
		cctx, ccancel := context.WithTimeout(ctx, 3*time.Second)
		if in, err := h.IsInRecovery(cctx); err == nil && !in {
			t.Fatalf("the instance on %s:%d accepts writes without an etcd majority", h.Host, h.Port)
		}
		ccancel()
	}
	t.Logf("etcd majority lost: west's last direct write +%s", succ[len(succ)-1].Sub(lostAt))

	// The majority back, the agents started again, a new controller: the primary is back on west.
	c.members[1].Restart(t)
	c.members[2].Restart(t)
	c.members[1].WaitHealthy(t)
	c.east.start()
	c.west.start()
	f.app.Close() // its endpoints' ports are the state's: the new controller opens them
	f2 := startFogo(t, c.ctlOptions)
	f2.onePrimaryAt(t, "west", "east", "shop", 90*time.Second)
	mustExec(t, f2, "west", "shop", "INSERT INTO ledger(note) VALUES ('after-majority-back')")
	f2.waitRowOn(t, "west", "shop", "before-majority-loss")
	f2.waitGroupState("west", "fg", "CATCH_UP")
	f2.waitRowOn(t, "east", "shop", "after-majority-back")
}

// newController makes a `fogo serve` controller on host h: its API, endpoints and listeners on h's address.
func (c *clusterHosts) newController(t *testing.T, h *netns.Host, name, token string, env ...string) *hostProc {
	dir := pgtest.TempDir(t)
	addr := h.Addr().String()
	p := &hostProc{t: t, host: h, name: name, bin: c.bin, dataDir: dir, logFile: filepath.Join(dir, "serve.log"),
		env: append([]string{"FOGO_API_TOKEN=" + token}, env...)}
	p.args = []string{"serve", "--data-dir", dir, "--listen", addr + ":7400", "--advertise-host", addr,
		"--gateway-listen-host", addr, "--port-range", "32000-32099", "--min-grace-period-minutes", "1",
		"--planned-catch-up-timeout", "20s", "--controller-name", name, "--leader-ttl", "6s",
		"--etcd-endpoints", strings.Join(c.endpoints, ","), "--etcd-prefix", clusterPrefix,
		"--secrets-key-file", c.keyFile, "--cluster-ca", c.caFile(), "--log-level", "info"}
	p.ready = func() error {
		hc := &http.Client{Timeout: 2 * time.Second}
		resp, err := hc.Get("http://" + addr + ":7400/healthz")
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("healthz: %s", resp.Status)
		}
		return nil
	}
	t.Cleanup(func() {
		p.kill()
		if t.Failed() {
			t.Logf("controller %s log:\n%s", name, p.logTail())
		}
	})
	return p
}

// ledgerWriter commits rows through the first of addrs that takes them, every 50 ms, and remembers the ids of
// the acknowledged ones.
type ledgerWriter struct {
	mu    sync.Mutex
	acked []int64
	stop  context.CancelFunc
	done  chan struct{}
}

func startLedgerWriter(addrs []string, db string) *ledgerWriter {
	ctx, cancel := context.WithCancel(context.Background())
	w := &ledgerWriter{stop: cancel, done: make(chan struct{})}
	go func() {
		defer close(w.done)
		for ctx.Err() == nil {
			for _, a := range addrs {
				cctx, ccancel := context.WithTimeout(ctx, 2*time.Second)
				conn, err := dial(cctx, a, db)
				if err == nil {
					var id int64
					err = conn.QueryRow(cctx, "INSERT INTO ledger(note) VALUES ('writer') RETURNING id").Scan(&id)
					conn.Close(cctx)
					if err == nil {
						w.mu.Lock()
						w.acked = append(w.acked, id)
						w.mu.Unlock()
					}
				}
				ccancel()
				if err == nil {
					break
				}
			}
			select {
			case <-ctx.Done():
			case <-time.After(50 * time.Millisecond):
			}
		}
	}()
	return w
}

func (w *ledgerWriter) finish() []int64 {
	w.stop()
	<-w.done
	w.mu.Lock()
	defer w.mu.Unlock()
	return append([]int64(nil), w.acked...)
}

// TestClusterLeaderKilledMidFailover: two controllers (processes on h1 and h2) and two agents; everything is
// made through the official Azure SDK talking to the waiting controller, which forwards to the leader. A planned
// failover is started while a writer commits through the read-write listener; the leader is killed (-9) right
// before the promotion, after it demoted the old primary. The other controller is elected, resumes the operation
// and completes it: the SDK's poller (still on the second controller) sees it succeed, the new primary holds every
// acknowledged write, and the old primary rejoins.
func TestClusterLeaderKilledMidFailover(t *testing.T) {
	c := newClusterBase(t)
	token := "cluster-token-" + strconv.FormatInt(time.Now().UnixNano(), 36)
	h1, h2 := c.nw.Host(1), c.nw.Host(2)
	ctl1 := c.newController(t, h1, "ctl-1", token, "FOGO_TEST_PAUSE_BEFORE_STEP="+"PlannedFailover:promote")
	ctl1.start() // first: it creates the secrets key
	ctl2 := c.newController(t, h2, "ctl-2", token)
	ctl2.start()
	c.startAgents(t, 6*time.Second, h1.Addr().String()+"/32", h2.Addr().String()+"/32", c.nw.BridgeAddr.String()+"/32")
	via2 := &fogo{t: t, url: "http://" + h2.Addr().String() + ":7400", tok: token}

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	opts := sdkOptions(via2)
	opts.Retry = policy.RetryOptions{MaxRetries: 20, RetryDelay: 500 * time.Millisecond, MaxRetryDelay: 2 * time.Second,
		StatusCodes: []int{http.StatusServiceUnavailable, http.StatusBadGateway, http.StatusGatewayTimeout}}
	cred := staticToken(token)
	servers, _ := armsql.NewServersClient(sub, cred, opts)
	dbs, _ := armsql.NewDatabasesClient(sub, cred, opts)
	groups, _ := armsql.NewFailoverGroupsClient(sub, cred, opts)
	for name, loc := range map[string]string{"east": "eastus", "west": "westus"} {
		p, err := servers.BeginCreateOrUpdate(ctx, rg, name, armsql.Server{Location: to.Ptr(loc),
			Properties: &armsql.ServerProperties{AdministratorLogin: to.Ptr(login), AdministratorLoginPassword: to.Ptr(password)}}, nil)
		if err == nil {
			_, err = p.PollUntilDone(ctx, fastPoll)
		}
		if err != nil {
			t.Fatalf("create server %s: %v", name, err)
		}
	}
	dp, err := dbs.BeginCreateOrUpdate(ctx, rg, "east", "shop", armsql.Database{Location: to.Ptr("eastus")}, nil)
	if err == nil {
		_, err = dp.PollUntilDone(ctx, fastPoll)
	}
	if err != nil {
		t.Fatalf("create database: %v", err)
	}
	mustExec(t, via2, "east", "shop", "CREATE TABLE ledger(id bigserial PRIMARY KEY, note text)")
	gp, err := groups.BeginCreateOrUpdate(ctx, rg, "east", "fg", armsql.FailoverGroup{Properties: &armsql.FailoverGroupProperties{
		ReadWriteEndpoint: &armsql.FailoverGroupReadWriteEndpoint{FailoverPolicy: to.Ptr(armsql.ReadWriteEndpointFailoverPolicyManual)},
		PartnerServers:    []*armsql.PartnerInfo{{ID: to.Ptr(serverPath("west"))}},
		Databases:         []*string{to.Ptr(dbPath("east", "shop"))},
	}}, nil)
	if err == nil {
		_, err = gp.PollUntilDone(ctx, fastPoll)
	}
	if err != nil {
		t.Fatalf("create group: %v", err)
	}
	via2.waitGroupState("east", "fg", "CATCH_UP")

	// Every controller serves every endpoint and listener: they are shown as libpq multi-host lists, and the
	// waiting controller's own endpoint routes sessions too.
	ep := via2.endpointOf("east")
	if onHost(ep, h1.Addr().String()) == "" || onHost(ep, h2.Addr().String()) == "" {
		t.Fatalf("server east's endpoint %q does not name both controllers' hosts", ep)
	}
	_, port, _ := strings.Cut(strings.Split(ep, ",")[0], ":")
	var onH2 int
	waitFor(t, 10*time.Second, "a session through the waiting controller's endpoint", func() bool {
		cctx, ccancel := context.WithTimeout(ctx, 3*time.Second)
		defer ccancel()
		conn, err := dial(cctx, h2.Addr().String()+":"+port, "shop")
		if err != nil {
			return false
		}
		defer conn.Close(cctx)
		return conn.QueryRow(cctx, "SELECT count(*) FROM ledger").Scan(&onH2) == nil
	})
	// The writer uses the read-write listener's list as given: libpq goes to the next host when one is gone.
	rw := via2.listenerOf("east", "fg", "readWriteEndpoint")
	for _, h := range []string{h1.Addr().String(), h2.Addr().String(), c.nw.Host(4).Addr().String(), c.nw.Host(5).Addr().String()} {
		if onHost(rw, h) == "" {
			t.Fatalf("the read-write listener's endpoint %q does not name %s: want both controllers' and both agents' hosts", rw, h)
		}
	}
	w := startLedgerWriter([]string{rw}, "shop")
	defer w.finish()
	waitFor(t, 30*time.Second, "the writer's first commit", func() bool { w.mu.Lock(); defer w.mu.Unlock(); return len(w.acked) > 0 })
	fp, err := groups.BeginFailover(ctx, rg, "west", "fg", nil)
	if err != nil {
		t.Fatalf("begin failover: %v", err)
	}
	waitFor(t, 60*time.Second, "the leader pausing before the promotion", func() bool { return ctl1.logHas("pausing before step") })
	// A new session through an agent's read-write listener is held while the failover holds the group (the agent
	// follows the operation's steps), and then goes to the new primary.
	westAddr := c.nw.Host(5).Addr().String()
	held := make(chan error, 1)
	var heldOn string
	go func() {
		hctx, hcancel := context.WithTimeout(ctx, 50*time.Second)
		defer hcancel()
		host, port := hostsAndPorts(onHost(rw, c.nw.Host(4).Addr().String()))
		conn, err := pgx.Connect(hctx, fmt.Sprintf("host=%s port=%s user=%s password=%s dbname=shop sslmode=prefer connect_timeout=45",
			host, port, login, password))
		if err == nil {
			err = conn.QueryRow(hctx, "INSERT INTO ledger(note) VALUES ('held') RETURNING host(inet_server_addr())").Scan(&heldOn)
			conn.Close(hctx)
		}
		held <- err
	}()
	select {
	case err := <-held:
		t.Fatalf("a session through the east agent's read-write listener was not held during the failover: %v (on %s)", err, heldOn)
	case <-time.After(time.Second):
	}
	killedAt := time.Now()
	ctl1.kill()
	if _, err := fp.PollUntilDone(ctx, fastPoll); err != nil {
		t.Fatalf("the failover, after its controller was killed: %v\ncontroller ctl-2:\n%s", err, ctl2.logTail())
	}
	if err := <-held; err != nil || heldOn != westAddr {
		t.Fatalf("the session held by the east agent's listener: %v, on %q, want the new primary on %s", err, heldOn, westAddr)
	}
	t.Logf("the session held by the east agent's listener went to the new primary %s after the leader was killed", time.Since(killedAt))
	t.Logf("the failover completed %s after the leader was killed", time.Since(killedAt))
	if role := via2.groupProps("west", "fg")["replicationRole"]; role != "Primary" {
		t.Fatalf("west's role after the failover: %v", role)
	}
	time.Sleep(time.Second)
	acked := w.finish()
	checkAllPresentAt(t, via2.endpointOf("west"), "shop", acked)
	t.Logf("%d acknowledged writes, all on the new primary", len(acked))
	via2.waitGroupState("west", "fg", "CATCH_UP")
}

// TestClusterLinkAcrossHostLoss: a link of the group's ledger into a PostgreSQL target keeps the target equal to
// the source through the loss of the primary's host: writes go on through the read-write listener, the host is
// cut off, the Automatic policy fails over to the other host, and the link resumes there from its slot copy.
// While the group has no geo-secondary that could take over (the old primary is gone), the failover-safe gate
// holds the link's new transactions back: applied, they could become phantoms if the new primary were lost right
// after the old one rejoined. Once the host is back and the old primary has rejoined, the target converges:
// nothing of what the old primary had not shipped, nothing missing, nothing applied twice.
func TestClusterLinkAcrossHostLoss(t *testing.T) {
	c := startCluster(t, 6*time.Second, func(o *app.Options) { o.GraceUnit = time.Second })
	f := c.ctl
	eastWestShop(f)
	mustExec(t, f, "east", "shop", "CREATE TABLE ledger(id bigserial PRIMARY KEY, note text); "+
		"INSERT INTO ledger(note) SELECT 'seed ' || i FROM generate_series(1, 300) i")
	f.putAutomaticGroup("east", "west", "fg", 1, "shop")
	tgt := pgtest.NewPrimary(t)
	store, err := target.OpenPostgres(tgt.ConnString("postgres"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { store.Close() })
	// Through the catalog, as the API does: the link runs under its own lease (on the elected controller, a
	// PostgreSQL target), and the elected controller keeps its slot copy from the checkpoint it publishes.
	cat := f.app.LinkCatalog
	for _, ls := range []links.LinkedService{{Workspace: "w", Name: "src", Type: links.TypePostgreSQL, ConnectionString: "dbname=shop"},
		{Workspace: "w", Name: "dst", Type: links.TypePostgreSQL, ConnectionString: tgt.ConnString("postgres")}} {
		if err := cat.PutLinkedService(ls); err != nil {
			t.Fatal(err)
		}
	}
	lc, err := cat.PutConnection(links.LinkConnection{Workspace: "w", Name: "lk", SourceService: "src", TargetService: "dst",
		SourceResourceID: fgPath("east", "fg")})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cat.EditTables("w", "lk", []links.LinkTable{{ID: "ledger", SourceTable: "ledger"}}, []string{"add"}); err != nil {
		t.Fatal(err)
	}
	if err := cat.Start("w", "lk"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cat.Stop("w", "lk") })
	rw := f.listenerOf("east", "fg", "readWriteEndpoint")
	convergeLink(t, f, rw, store)
	waitSlotCopy(t, f, "west", "shop", lc.Slot)

	// One host at a time: a connection attempt to the cut-off host hangs until the writer's timeout, which a
	// whole list would spend on it alone.
	w := startLedgerWriter(strings.Split(rw, ","), "shop")
	defer w.finish()
	time.Sleep(time.Second)
	if err := c.east.host.Cut(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = c.east.host.Heal() }()
	waitFor(t, 90*time.Second, "the Automatic failover to west", func() bool {
		return f.groupProps("west", "fg")["replicationRole"] == "Primary"
	})
	time.Sleep(2 * time.Second) // writes on the new primary
	acked := w.finish()
	if err := c.east.host.Heal(); err != nil {
		t.Fatal(err)
	}
	c.east.start()
	f.waitGroupState("west", "fg", "CATCH_UP")
	convergeLink(t, f, rw, store)
	lost := missingAt(t, rw, "shop", acked)
	st, on, _ := cat.StatusAt("w", "lk")
	t.Logf("%d acknowledged writes, %d lost with the cut-off host (forced failover), target equal to the new primary; link %s on %s applied %d",
		len(acked), lost, st.Phase, on, st.Applied)
}

// TestClusterAgentKilled: kill -9 of an agent is not the loss of its instances. The primary's agent killed while a
// writer commits through the read-write listener: the primary goes on taking the writes (PostgreSQL runs in its own
// session, outside the agent's process group), and the agent started again takes up its host. The geo-secondary's
// agent killed while the group is being created (its copy being seeded): started again, the group's creation
// converges to a streaming copy.
func TestClusterAgentKilled(t *testing.T) {
	c := startCluster(t, 6*time.Second, nil)
	f := c.ctl
	eastWestShop(f)
	mustExec(t, f, "east", "shop", "CREATE TABLE ledger(id bigserial PRIMARY KEY, note text); "+
		"INSERT INTO ledger(note) SELECT repeat('x', 200) FROM generate_series(1, 20000)")

	// The geo-secondary's agent dies while the group is being created.
	r := f.createGroup("east", "west", "fg", "shop")
	if r.Status != http.StatusCreated && r.Status != http.StatusAccepted && r.Status != http.StatusOK {
		t.Fatalf("create group: %d %s", r.Status, r.Raw)
	}
	c.west.kill()
	time.Sleep(3 * time.Second)
	c.west.start()
	f.wait(r)
	f.waitGroupState("east", "fg", "CATCH_UP")

	// The primary's agent dies under writes: the writes go on.
	rw := f.listenerOf("east", "fg", "readWriteEndpoint")
	w := startLedgerWriter([]string{rw}, "shop")
	defer w.finish()
	acked := func() int { w.mu.Lock(); defer w.mu.Unlock(); return len(w.acked) }
	waitFor(t, 30*time.Second, "the writer's first commit", func() bool { return acked() > 0 })
	c.east.kill()
	before := acked()
	time.Sleep(3 * time.Second)
	if during := acked() - before; during == 0 {
		t.Fatal("no write was acknowledged while the primary's agent was dead")
	}
	c.east.start()
	f.mustSucceed(f.do(http.MethodPost, fgPath("west", "fg")+"/failover", nil), 200, 202)
	f.onePrimaryAt(t, "west", "east", "shop", 60*time.Second)
	f.waitGroupState("west", "fg", "CATCH_UP")
	checkAllPresentAt(t, rw, "shop", w.finish())
}

// eastWestShop creates servers east (eastus) and west (westus) and database shop on east.
func eastWestShop(f *fogo) {
	f.t.Helper()
	f.createServer("east", "eastus")
	f.createServer("west", "westus")
	f.createDB("east", "shop", "eastus")
}
