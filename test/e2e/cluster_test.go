package e2e

import (
	"bufio"
	"context"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/fogo-db/fogo/internal/agent"
	"github.com/fogo-db/fogo/internal/app"
	"github.com/fogo-db/fogo/internal/controlplane/store"
	"github.com/fogo-db/fogo/internal/pki"
	"github.com/fogo-db/fogo/internal/postgres/instance"
	"github.com/fogo-db/fogo/internal/testutil/netns"
	"github.com/fogo-db/fogo/internal/testutil/pgtest"
)

// clusterPrefix is the etcd prefix of the cluster tests' state.
const clusterPrefix = "/fogo"

// agentProc is a `fogo agent` process inside a namespace "host".
type agentProc struct {
	t       *testing.T
	host    *netns.Host
	name    string
	bin     string
	args    []string
	dataDir string
	logFile string
	cmd     *exec.Cmd
	exited  chan struct{}
	cli     *clientv3.Client
}

// clusterHosts is a cluster on one machine: three etcd members (h1-h3), agents on h4 (eastus) and h5 (westus),
// all TLS with certificates from fogo certs, and a controller in the test process (on the bridge's address).
type clusterHosts struct {
	nw         *netns.Net
	ctl        *fogo
	east, west *agentProc
	cli        *clientv3.Client
	certDir    string
	members    []*netns.EtcdMember
	// ctlOptions start another controller on the same state (after the first lost its leadership).
	ctlOptions func(*app.Options)
}

func startCluster(t *testing.T, agentTTL time.Duration, mod func(*app.Options)) *clusterHosts {
	t.Helper()
	netns.Require(t)
	pgtest.Bin(t)
	nw := netns.New(t, 5)
	members := netns.StartEtcd(t, nw.Host(1), nw.Host(2), nw.Host(3))
	endpoints := netns.Endpoints(members)
	c := &clusterHosts{nw: nw, certDir: t.TempDir(), members: members}
	if _, err := pki.EnsureCluster(c.certDir, []pki.Host{
		{Name: "east-1", Addrs: []string{nw.Host(4).Addr().String()}},
		{Name: "west-1", Addrs: []string{nw.Host(5).Addr().String()}},
	}); err != nil {
		t.Fatal(err)
	}
	cli, err := clientv3.New(clientv3.Config{Endpoints: endpoints, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cli.Close() })
	c.cli = cli
	keyFile := filepath.Join(t.TempDir(), "secrets.key")
	c.ctlOptions = func(o *app.Options) {
		o.Etcd = &store.EtcdConfig{Endpoints: endpoints, Prefix: clusterPrefix}
		o.SecretsKeyFile, o.ClusterCA, o.LeaderTTL = keyFile, filepath.Join(c.certDir, pki.CACertName), 6*time.Second
		if mod != nil {
			mod(o)
		}
	}
	c.ctl = startFogo(t, c.ctlOptions)
	bin := buildFogo(t)
	common := []string{
		"--etcd-endpoints", strings.Join(endpoints, ","), "--etcd-prefix", clusterPrefix,
		"--secrets-key-file", keyFile, "--tls-ca", filepath.Join(c.certDir, pki.CACertName),
		"--allow-from", nw.BridgeAddr.String() + "/32", "--lease-ttl", agentTTL.String(), "--log-level", "warn",
	}
	c.east = c.newAgent(t, nw.Host(4), bin, "east-1", "eastus", common)
	c.west = c.newAgent(t, nw.Host(5), bin, "west-1", "westus", common)
	c.east.start()
	c.west.start()
	return c
}

func (c *clusterHosts) newAgent(t *testing.T, h *netns.Host, bin, name, region string, common []string) *agentProc {
	dir := pgtest.TempDir(t)
	low := 30000 + 100*int(h.Addr().As4()[3]) // ports are per namespace: only the host's own range matters
	p := &agentProc{t: t, host: h, name: name, bin: bin, dataDir: dir, logFile: filepath.Join(dir, "agent.log"), cli: c.cli}
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

// start runs the agent and waits until its lease is live.
func (p *agentProc) start() {
	p.t.Helper()
	logf, err := os.OpenFile(p.logFile, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o600)
	if err != nil {
		p.t.Fatal(err)
	}
	p.cmd = p.host.Command(context.Background(), p.bin, p.args...)
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
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		live, err := agent.Live(ctx, p.cli, clusterPrefix)
		cancel()
		if err == nil && live[p.name] {
			return
		}
		select {
		case <-p.exited:
			p.t.Fatalf("agent %s exited at start:\n%s", p.name, p.logTail())
		default:
		}
		if time.Now().After(deadline) {
			p.t.Fatalf("agent %s never registered (%v):\n%s", p.name, err, p.logTail())
		}
		time.Sleep(200 * time.Millisecond)
	}
}

func (p *agentProc) kill() {
	if p.cmd == nil || p.exited == nil {
		return
	}
	_ = p.host.Kill9(p.cmd)
	select {
	case <-p.exited:
	case <-time.After(10 * time.Second):
	}
}

func (p *agentProc) logTail() string {
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

	// Planned failover to west: every committed row is there.
	mustExec(t, f, "east", "shop", "INSERT INTO ledger(note) VALUES ('before-planned')")
	f.mustSucceed(f.do(http.MethodPost, fgPath("west", "fg")+"/failover", nil), 200, 202)
	f.onePrimaryAt(t, "west", "east", "shop", 60*time.Second)
	f.waitRowOn(t, "west", "shop", "before-planned")
	f.waitGroupState("west", "fg", "CATCH_UP")

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
	// The lease was renewed at most a third of its TTL before the cut, so etcd can expire it from 2/3 TTL after
	// the cut on: the primary must have stopped taking writes by then.
	if d := lastWest.Sub(cutAt); d >= 2*agentTTL/3 {
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
	f.createServer("east", "eastus")
	f.createServer("west", "westus")
	f.createDB("east", "shop", "eastus")
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
	for _, a := range []*agentProc{c.west, c.east} {
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
	if d := succ[len(succ)-1].Sub(lostAt); d >= 2*agentTTL/3 {
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
