package links

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/fogo-db/fogo/internal/controlplane/store"
	"github.com/fogo-db/fogo/internal/secrets"
	"github.com/fogo-db/fogo/internal/testutil/etcdtest"
	"github.com/fogo-db/fogo/internal/testutil/pgtest"
)

// The cluster-mode runner tests: two "controllers" (a store, a link manager, a catalog and a runner each, as two
// fogo processes have) on one real etcd, a real PostgreSQL 15 source and a PostgreSQL target (a database of the
// same instance). The source table has no key (REPLICA IDENTITY FULL), so its target table has none either, and a
// change applied twice would show as a duplicate row.

const runnerPrefix = "/fogo-test"

// runnerFixture is the shared part: etcd, the secrets key, the source and the target.
type runnerFixture struct {
	t        *testing.T
	etcd     *etcdtest.Server
	keys     *secrets.Keyring
	src      *pgx.Conn
	tgt      *pgx.Conn
	srcConn  string
	tgtConn  string
	writes   atomic.Int64 // rows the writer inserted (ids 1..writes)
	stopping chan struct{}
	stopped  chan struct{}
}

func newRunnerFixture(t *testing.T) *runnerFixture {
	t.Helper()
	ctx := context.Background()
	f := &runnerFixture{t: t, etcd: etcdtest.Start(t)}
	keys, err := secrets.Generate()
	if err != nil {
		t.Fatal(err)
	}
	f.keys = keys
	pg := pgtest.NewPrimary(t)
	conn := func(db string) string {
		return fmt.Sprintf("host=127.0.0.1 port=%d user=%s password=%s dbname=%s sslmode=disable", pg.Port, pg.SuperUser, pg.SuperPassword, db)
	}
	f.srcConn, f.tgtConn = conn("postgres"), conn("tgt")
	if f.src, err = pgx.Connect(ctx, f.srcConn); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.src.Close(context.Background()) })
	for _, q := range []string{"CREATE TABLE a(id int NOT NULL, note text)", "ALTER TABLE a REPLICA IDENTITY FULL", "CREATE DATABASE tgt"} {
		if _, err := f.src.Exec(ctx, q); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
	if f.tgt, err = pgx.Connect(ctx, f.tgtConn); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.tgt.Close(context.Background()) })
	return f
}

// testController is one fogo process's link machinery.
type testController struct {
	name   string
	st     *store.Store
	m      *Manager
	cat    *Catalog
	runner *Runner
	leads  atomic.Bool
}

// controller starts one on the given etcd endpoints (the fixture's, or a cuttable proxy's).
func (f *runnerFixture) controller(name string, endpoints []string, leads bool) *testController {
	t := f.t
	t.Helper()
	st, err := store.OpenEtcd(context.Background(), store.EtcdConfig{Endpoints: endpoints, Prefix: runnerPrefix}, f.keys)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	dirs, _, _, _ := targetDirsFixture(t)
	tc := &testController{name: name, st: st}
	tc.leads.Store(leads)
	tc.m = New(st, nil, slog.Default().With("controller", name))
	tc.cat = NewCatalog(tc.m, dirs)
	tc.cat.SetHost(name)
	cli, _ := st.Etcd()
	tc.runner = NewRunner(tc.cat, RunnerConfig{Client: cli, Prefix: runnerPrefix, TTL: 3 * time.Second, Leads: tc.leads.Load,
		ControllersPrefix: runnerPrefix + "/_controllers/", Interval: 100 * time.Millisecond, Logger: slog.Default().With("controller", name)})
	t.Cleanup(tc.runner.Close)
	return tc
}

// running says whether the link's worker runs in this process now (started, and its goroutine not returned).
func (tc *testController) running(name string) bool {
	tc.m.mu.Lock()
	w := tc.m.links[name]
	tc.m.mu.Unlock()
	if w == nil || w.notStarted {
		return false
	}
	select {
	case <-w.done:
		return false
	default:
		return true
	}
}

// createLink makes the link connection w/L (source table a into the target) through c and starts it.
func (f *runnerFixture) createLink(c *testController) {
	t := f.t
	t.Helper()
	for _, ls := range []LinkedService{{Workspace: "w", Name: "src", Type: TypePostgreSQL, ConnectionString: f.srcConn},
		{Workspace: "w", Name: "dst", Type: TypePostgreSQL, ConnectionString: f.tgtConn}} {
		if err := c.cat.PutLinkedService(ls); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := c.cat.PutConnection(LinkConnection{Workspace: "w", Name: "L", SourceService: "src", TargetService: "dst"}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.cat.EditTables("w", "L", []LinkTable{{ID: "a", SourceTable: "a"}}, []string{"add"}); err != nil {
		t.Fatal(err)
	}
	if err := c.cat.Start("w", "L"); err != nil {
		t.Fatal(err)
	}
}

// waitRunsOn waits until the link streams on controller want, as any controller's catalog reports it.
func waitRunsOn(t *testing.T, via *testController, want string, within time.Duration) {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		st, on, ok := via.cat.StatusAt("w", "L")
		if ok && on == want && st.Phase == "Streaming" {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("the link does not stream on %s after %s: runs on %q, %+v (ok %v)", want, within, on, st, ok)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// startWriter inserts a row into the source every 5 ms until stopWriter.
func (f *runnerFixture) startWriter() {
	f.stopping, f.stopped = make(chan struct{}), make(chan struct{})
	go func() {
		defer close(f.stopped)
		for i := 1; ; i++ {
			select {
			case <-f.stopping:
				return
			case <-time.After(5 * time.Millisecond):
			}
			if _, err := f.src.Exec(context.Background(), "INSERT INTO a VALUES ($1, 'row')", i); err != nil {
				f.t.Errorf("insert %d: %v", i, err)
				return
			}
			f.writes.Store(int64(i))
		}
	}()
}

func (f *runnerFixture) stopWriter() {
	close(f.stopping)
	<-f.stopped
}

// checkTargetEqualsSource waits until the target holds every row written, then checks it holds each exactly once.
func (f *runnerFixture) checkTargetEqualsSource() {
	t := f.t
	t.Helper()
	ctx := context.Background()
	want := f.writes.Load()
	var rows, distinct, low, high int64
	deadline := time.Now().Add(60 * time.Second)
	for {
		err := f.tgt.QueryRow(ctx, "SELECT count(*), count(DISTINCT id), coalesce(min(id), 0), coalesce(max(id), 0) FROM public.a").Scan(&rows, &distinct, &low, &high)
		if err == nil && rows >= want {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the target has %d rows (%d distinct) of %d after 60s (err %v)", rows, distinct, want, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	time.Sleep(500 * time.Millisecond) // anything applied twice would arrive by now
	if err := f.tgt.QueryRow(ctx, "SELECT count(*), count(DISTINCT id), min(id), max(id) FROM public.a").Scan(&rows, &distinct, &low, &high); err != nil {
		t.Fatal(err)
	}
	if rows != want || distinct != want || low != 1 || high != want {
		t.Fatalf("the target is not the source: %d rows, %d distinct ids from %d to %d; the source has ids 1 to %d once each", rows, distinct, low, high, want)
	}
	t.Logf("the target equals the source: %d rows, each once", rows)
}

// watchOverlap samples, every few milliseconds until the returned stop, whether the link runs in both
// controllers at once. The order of the two samples alternates: a process seen running after the other was seen
// running overlapped with it (a process runs a link for one interval, and the other cannot start it in between).
func watchOverlap(a, b *testController) (stop func() (samples, overlaps int)) {
	var done atomic.Bool
	finished := make(chan struct{})
	var n, bad int
	go func() {
		defer close(finished)
		for i := 0; !done.Load(); i++ {
			first, second := a, b
			if i%2 == 1 {
				first, second = b, a
			}
			if first.running("w/l") && second.running("w/l") {
				bad++
			}
			n++
			time.Sleep(2 * time.Millisecond)
		}
	}()
	return func() (int, int) {
		done.Store(true)
		<-finished
		return n, bad
	}
}

// TestClusterLinkTakenOverWhenItsProcessStops: the process running a link into PostgreSQL stops (Close, as serve
// does on exit) while rows are written; the next candidate takes the link over from its checkpoint at once, the
// status names the new process, and the target ends equal to the source with no row twice. The link never ran in
// both at once.
func TestClusterLinkTakenOverWhenItsProcessStops(t *testing.T) {
	f := newRunnerFixture(t)
	c1 := f.controller("ctl-1", f.etcd.Endpoints(), true)
	c2 := f.controller("ctl-2", f.etcd.Endpoints(), false)
	f.createLink(c1)
	waitRunsOn(t, c2, "ctl-1", 30*time.Second)
	if c2.running("w/l") {
		t.Fatal("the link runs in the controller that does not lead")
	}
	overlap := watchOverlap(c1, c2)
	f.startWriter()
	time.Sleep(time.Second)

	stopped := time.Now()
	c1.runner.Close()
	c1.leads.Store(false)
	c2.leads.Store(true) // elected
	waitRunsOn(t, c2, "ctl-2", 30*time.Second)
	t.Logf("taken over %s after the first process stopped", time.Since(stopped).Round(10*time.Millisecond))
	time.Sleep(time.Second)
	f.stopWriter()
	f.checkTargetEqualsSource()
	if n, bad := overlap(); bad > 0 {
		t.Fatalf("the link ran in both processes at once in %d of %d samples", bad, n)
	}
}

// TestClusterLinkNeverRunsTwice: the process running a link is cut off from etcd while it still believes it
// should run it (a leader that has not noticed it is deposed: both processes are candidates). It stops the link
// before its lease can expire, the other process takes the link up only once the lease is gone, and the link never
// runs in both at once; once the first is back it does not take the link again. The target ends equal to the
// source, no row twice.
func TestClusterLinkNeverRunsTwice(t *testing.T) {
	f := newRunnerFixture(t)
	proxy := newCutProxy(t, strings.TrimPrefix(f.etcd.Endpoint, "http://"))
	c1 := f.controller("ctl-1", []string{"http://" + proxy.addr()}, true)
	c2 := f.controller("ctl-2", f.etcd.Endpoints(), false)
	f.createLink(c1)
	waitRunsOn(t, c2, "ctl-1", 30*time.Second)
	c2.leads.Store(true) // both candidates from now on
	overlap := watchOverlap(c1, c2)
	f.startWriter()
	time.Sleep(time.Second)

	proxy.cut()
	cut := time.Now()
	var stoppedAfter time.Duration
	for c1.running("w/l") {
		if time.Since(cut) > 10*time.Second {
			t.Fatal("the process cut off from etcd still runs the link 10s after the cut (lease TTL 3s)")
		}
		time.Sleep(5 * time.Millisecond)
	}
	stoppedAfter = time.Since(cut)
	waitRunsOn(t, c2, "ctl-2", 30*time.Second)
	t.Logf("cut off: the link stopped %s after the cut, and streams on the other process %s after it",
		stoppedAfter.Round(10*time.Millisecond), time.Since(cut).Round(10*time.Millisecond))
	if stoppedAfter >= 3*time.Second {
		t.Errorf("the cut-off process stopped the link %s after the cut: not before its lease (3s) could expire", stoppedAfter)
	}
	proxy.heal()
	time.Sleep(2 * time.Second) // the first process has a new lease by now, and must leave the link where it is
	if _, on, _ := c2.cat.StatusAt("w", "L"); on != "ctl-2" || c1.running("w/l") {
		t.Fatalf("after the heal the link runs on %q (first process runs it: %v)", on, c1.running("w/l"))
	}
	f.stopWriter()
	f.checkTargetEqualsSource()
	if n, bad := overlap(); bad > 0 {
		t.Fatalf("the link ran in both processes at once in %d of %d samples", bad, n)
	}
	// Stop answers once no process runs the link, wherever it ran.
	if err := c1.cat.Stop("w", "L"); err != nil {
		t.Fatal(err)
	}
	if c1.running("w/l") || c2.running("w/l") {
		t.Fatal("the link still runs after Stop answered")
	}
}

// TestClusterLinkTakenOverOnceItsTargetIsReachable: the process that takes a link over cannot reach its target
// (it refuses connections): it keeps the link, whose status says why it fails and where, and starts it by itself
// once the target is back; the target ends equal to the source.
func TestClusterLinkTakenOverOnceItsTargetIsReachable(t *testing.T) {
	ctx := context.Background()
	f := newRunnerFixture(t)
	c1 := f.controller("ctl-1", f.etcd.Endpoints(), true)
	c2 := f.controller("ctl-2", f.etcd.Endpoints(), false)
	f.createLink(c1)
	waitRunsOn(t, c2, "ctl-1", 30*time.Second)
	admin, err := pgx.Connect(ctx, f.srcConn) // the writer has the fixture's connection
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close(ctx)
	f.startWriter()
	time.Sleep(500 * time.Millisecond)

	if _, err := admin.Exec(ctx, "ALTER DATABASE tgt ALLOW_CONNECTIONS false"); err != nil {
		t.Fatal(err)
	}
	c1.runner.Close()
	c1.leads.Store(false)
	c2.leads.Store(true)
	deadline := time.Now().Add(30 * time.Second)
	for {
		st, on, ok := c2.cat.StatusAt("w", "L")
		if ok && on == "ctl-2" && st.Phase == "Failed" && strings.Contains(st.Err, "tgt") {
			t.Logf("while the target refuses: %s on %s: %s", st.Phase, on, st.Err)
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the link's status does not say its target cannot be reached: %q %+v %v", on, st, ok)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if _, err := admin.Exec(ctx, "ALTER DATABASE tgt ALLOW_CONNECTIONS true"); err != nil {
		t.Fatal(err)
	}
	waitRunsOn(t, c2, "ctl-2", 30*time.Second)
	f.stopWriter()
	f.checkTargetEqualsSource()
}

// cutProxy forwards TCP connections to an address until cut: then it closes every connection and refuses new
// ones until healed (a process cut off from etcd while etcd and the others go on).
type cutProxy struct {
	ln     net.Listener
	target string
	mu     sync.Mutex
	isCut  bool
	conns  []net.Conn
}

func newCutProxy(t *testing.T, target string) *cutProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &cutProxy{ln: ln, target: target}
	t.Cleanup(func() { ln.Close(); p.cut() })
	go p.serve()
	return p
}

func (p *cutProxy) addr() string { return p.ln.Addr().String() }

func (p *cutProxy) serve() {
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		p.mu.Lock()
		if p.isCut {
			p.mu.Unlock()
			c.Close()
			continue
		}
		up, err := net.Dial("tcp", p.target)
		if err != nil {
			p.mu.Unlock()
			c.Close()
			continue
		}
		p.conns = append(p.conns, c, up)
		p.mu.Unlock()
		go func() { _, _ = io.Copy(up, c); up.Close() }()
		go func() { _, _ = io.Copy(c, up); c.Close() }()
	}
}

func (p *cutProxy) cut() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.isCut = true
	for _, c := range p.conns {
		c.Close()
	}
	p.conns = nil
}

func (p *cutProxy) heal() {
	p.mu.Lock()
	p.isCut = false
	p.mu.Unlock()
}
