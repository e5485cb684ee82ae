package e2e

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/fogo-db/fogo/internal/app"
	"github.com/fogo-db/fogo/internal/controlplane/leader"
	"github.com/fogo-db/fogo/internal/controlplane/store"
	"github.com/fogo-db/fogo/internal/testutil/etcdtest"
	"github.com/fogo-db/fogo/internal/testutil/pgtest"
)

// TestControllersShareStateInEtcd: two fogo processes keep their state in one etcd. The first is elected the
// controller; the second waits in Start. A server and a database made through the first live in etcd (no
// state.db), with their secrets sealed under the key file both share. When the first stops, the second is
// elected within the lease, starts the database's instance again and serves the row written through the first.
// While it waits, its API forwards to the first.
func TestControllersShareStateInEtcd(t *testing.T) {
	etcd := etcdtest.Start(t)
	keyFile := filepath.Join(t.TempDir(), "secrets.key")
	onEtcd := func(name string) func(*app.Options) {
		return func(o *app.Options) {
			o.Etcd = &store.EtcdConfig{Endpoints: etcd.Endpoints(), Prefix: "/fogo-test"}
			o.SecretsKeyFile, o.ControllerName, o.LeaderTTL = keyFile, name, 4*time.Second
		}
	}
	first := startFogo(t, onEtcd("first"))
	agentOn := func(o *app.AgentOptions) {
		o.Etcd = &store.EtcdConfig{Endpoints: etcd.Endpoints(), Prefix: "/fogo-test"}
		o.SecretsKeyFile = keyFile
	}
	eastAgent := startAgent(t, "east-1", "East US", agentOn)
	startAgent(t, "west-1", "westus", agentOn)
	// No agent in a region: the server is refused with the catalogue's code, and nothing is created.
	r := first.do(http.MethodPut, serverPath("north"), map[string]any{"location": "northeurope",
		"properties": map[string]any{"administratorLogin": login, "administratorLoginPassword": password}})
	if r.Status != http.StatusBadRequest || r.errCode() != "RegionDoesNotAllowProvisioning" {
		t.Fatalf("a server in a region without agents: %d %s", r.Status, r.Raw)
	}
	noteCode("RegionDoesNotAllowProvisioning", 400)
	if got := first.do(http.MethodGet, serverPath("north"), nil); got.Status != http.StatusNotFound {
		t.Fatalf("the refused server exists: %d %s", got.Status, got.Raw)
	}
	first.createServer("east", "eastus")
	if got := first.do(http.MethodGet, serverPath("east"), nil); propString(got.Body, "host") != "east-1" {
		t.Fatalf("server east is not placed on the eastus agent: %s", got.Raw)
	}
	first.createDB("east", "shop", "eastus")
	if n := countDataDirs(eastAgent.InstancesDir()); n != 1 {
		t.Fatalf("the database's instance is not in the agent's directory (%d data directories there)", n)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	conn, err := first.connect(ctx, "east", "shop")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := conn.Exec(ctx, "CREATE TABLE t(v text); INSERT INTO t VALUES ('through the first')"); err != nil {
		t.Fatal(err)
	}
	conn.Close(ctx)

	opts := fogoOptions(t, onEtcd("second"))
	secondAddr := fmt.Sprintf("127.0.0.1:%d", pgtest.FreePort(t))
	opts.Listen = secondAddr
	started := make(chan error, 1)
	var second *app.App
	go func() {
		var err error
		second, err = app.Start(ctx, opts)
		started <- err
	}()
	select {
	case err := <-started:
		t.Fatalf("the second controller started while the first leads (err %v)", err)
	case <-time.After(5 * time.Second): // longer than the lease: the first renews it
	}
	// Meanwhile the second controller's API forwards to the first: reads, and a change with its long-running
	// operation, whose URLs name the address the client used.
	via := &fogo{t: t, url: "http://" + secondAddr, tok: first.tok}
	if got := via.do(http.MethodGet, serverPath("east"), nil); got.Status != http.StatusOK || got.Body["name"] != "east" {
		t.Fatalf("GET through the waiting controller: %d %s", got.Status, got.Raw)
	}
	r = via.do(http.MethodPut, serverPath("west"), map[string]any{"location": "westus",
		"properties": map[string]any{"administratorLogin": login, "administratorLoginPassword": password}})
	if loc := r.Header.Get("Azure-AsyncOperation"); loc != "" && !strings.Contains(loc, secondAddr) {
		t.Errorf("the operation URL %q does not name the address the client used (%s)", loc, secondAddr)
	}
	via.mustSucceed(r, 201)
	if got := first.do(http.MethodGet, serverPath("west"), nil); got.Status != http.StatusOK {
		t.Fatalf("the server made through the waiting controller is not on the leader: %d %s", got.Status, got.Raw)
	}
	if got := via.doRaw(http.MethodGet, serverPath("east"), nil, "wrong"); got.Status != http.StatusUnauthorized {
		t.Errorf("a wrong token through the waiting controller: %d, want 401", got.Status)
	}
	if _, err := os.Stat(filepath.Join(opts.DataDir, "state.db")); !os.IsNotExist(err) {
		t.Errorf("a controller on etcd made a state.db (%v)", err)
	}
	first.app.Close()
	select {
	case err := <-started:
		if err != nil {
			t.Fatalf("the second controller: %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the second controller was not elected after the first stopped")
	}
	f2 := ready(t, second)
	if f2.tok != first.tok {
		t.Errorf("the controllers answer to different API tokens")
	}
	deadline := time.Now().Add(time.Minute)
	for {
		conn, err := f2.connect(ctx, "east", "shop")
		var v string
		if err == nil {
			err = conn.QueryRow(ctx, "SELECT v FROM t").Scan(&v)
			conn.Close(ctx)
		}
		if err == nil && v == "through the first" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the second controller does not serve the database: %q %v", v, err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// TestControllerStopsWhenEtcdIsGone: a controller whose etcd is gone cannot renew its lease; it reports the
// leadership lost (serve exits then) and stops acting before etcd could expire the lease and elect another.
// etcd is killed right after a renewal (seen as the lease's remaining TTL going up), so the lease expires a TTL
// later; the controller must give up well before that (it does a third of the TTL before). Without that rule it
// noticed only after the expiry, and this test failed.
func TestControllerStopsWhenEtcdIsGone(t *testing.T) {
	etcd := etcdtest.Start(t)
	const ttl = 6 * time.Second
	f := startFogo(t, func(o *app.Options) {
		o.Etcd = &store.EtcdConfig{Endpoints: etcd.Endpoints(), Prefix: "/fogo-test"}
		o.LeaderTTL = ttl
	})
	cli, err := clientv3.New(clientv3.Config{Endpoints: etcd.Endpoints(), DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	keys, err := cli.Get(ctx, "/fogo-test/_leader/", clientv3.WithPrefix())
	if err != nil || len(keys.Kvs) != 1 {
		t.Fatalf("the election key: %v %v", keys, err)
	}
	lease := clientv3.LeaseID(keys.Kvs[0].Lease)
	remaining := func() int64 {
		r, err := cli.TimeToLive(ctx, lease)
		if err != nil {
			t.Fatal(err)
		}
		return r.TTL
	}
	// Wait for a renewal: the remaining TTL goes up, or is within a second of the whole TTL (renewals come every
	// sixth of the TTL, so the remaining TTL, in whole seconds, may never be seen to rise).
	prev := remaining()
	for deadline := time.Now().Add(3 * ttl); ; time.Sleep(20 * time.Millisecond) {
		cur := remaining()
		if cur > prev || cur >= int64(ttl/time.Second)-1 {
			break
		}
		prev = cur
		if time.Now().After(deadline) {
			t.Fatal("no renewal of the controller lease seen")
		}
	}
	select {
	case <-f.app.LostLeadership():
		t.Fatal("leadership lost while etcd runs")
	default:
	}
	etcd.Kill()
	killed := time.Now()
	select {
	case <-f.app.LostLeadership():
		took := time.Since(killed)
		t.Logf("leadership lost %s after etcd was killed right after a renewal (TTL %s: the lease expires about then + %s)", took.Round(10*time.Millisecond), ttl, ttl)
		if bound := ttl * 5 / 6; took >= bound {
			t.Errorf("the controller stopped acting %s after etcd died, right after a renewal: not clearly before its lease could expire (%s after; bound %s)", took, ttl, bound)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the controller still believes it leads 30s after etcd was killed")
	}
}

// TestWaitingControllerWithLeaderUnreachable: a waiting controller whose elected leader does not answer (a host
// gone, its lease not yet expired) answers 503 TooManyRequests with Retry-After, and takes over once the leader's
// leadership ends.
func TestWaitingControllerWithLeaderUnreachable(t *testing.T) {
	etcd := etcdtest.Start(t)
	cli, err := clientv3.New(clientv3.Config{Endpoints: etcd.Endpoints(), DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	// A leader whose API address nothing listens on.
	ghost, err := leader.Campaign(ctx, cli, "/fogo-test", `{"name":"ghost","api":"http://127.0.0.1:1"}`, 5*time.Second, nil)
	if err != nil {
		t.Fatal(err)
	}
	opts := fogoOptions(t, func(o *app.Options) {
		o.Etcd = &store.EtcdConfig{Endpoints: etcd.Endpoints(), Prefix: "/fogo-test"}
		o.Listen = fmt.Sprintf("127.0.0.1:%d", pgtest.FreePort(t))
	})
	started := make(chan error, 1)
	var waiting *app.App
	go func() {
		var err error
		waiting, err = app.Start(ctx, opts)
		started <- err
	}()
	via := &fogo{t: t, url: "http://" + opts.Listen}
	var r response
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		if conn, err := net.Dial("tcp", opts.Listen); err == nil { // listening: forwarding has begun
			conn.Close()
			r = via.do(http.MethodGet, serverPath("east"), nil)
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the waiting controller never listened")
		}
	}
	if r.Status != http.StatusServiceUnavailable || r.errCode() != "TooManyRequests" || r.Header.Get("Retry-After") == "" {
		t.Fatalf("through a controller whose leader is unreachable: %d %s (Retry-After %q): %s", r.Status, r.errCode(), r.Header.Get("Retry-After"), r.Raw)
	}
	noteCode("TooManyRequests", 503)
	if err := ghost.Resign(ctx); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-started:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the waiting controller was not elected after the leader resigned")
	}
	f := ready(t, waiting)
	if got := f.do(http.MethodGet, serverPath("east"), nil); got.Status != http.StatusNotFound {
		t.Errorf("the elected controller answers %d for a missing server, want 404", got.Status)
	}
}
