package app

import (
	"context"
	"log/slog"
	"net"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/fogo-db/fogo/internal/controlplane/armid"
	"github.com/fogo-db/fogo/internal/controlplane/cluster"
	"github.com/fogo-db/fogo/internal/controlplane/model"
	"github.com/fogo-db/fogo/internal/controlplane/service"
	"github.com/fogo-db/fogo/internal/controlplane/store"
	"github.com/fogo-db/fogo/internal/testutil/etcdtest"
	"github.com/fogo-db/fogo/internal/testutil/pgtest"
)

// followingHost starts a host following a state in etcd under prefix, with the fallback pass made too rare to
// matter (what it does comes from the watches); it stops with the test.
func followingHost(t *testing.T, prefix string) (*store.Store, *gatewayEndpoints) {
	t.Helper()
	fallback := followFallback
	followFallback = time.Hour
	srv := etcdtest.Start(t)
	log := slog.New(slog.DiscardHandler)
	s, err := openSealedState(t.TempDir(), "", &store.EtcdConfig{Endpoints: srv.Endpoints(), Prefix: prefix}, log)
	if err != nil {
		t.Fatal(err)
	}
	st := s.st
	routes := service.NewRoutes(st, cluster.New(cluster.Config{Logger: log}, st))
	g, err := newGatewayEndpoints(gatewayConfig{}, routes, log)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	stop := g.followState(ctx, st, routes)
	t.Cleanup(func() {
		g.shutdown()
		stop()
		cancel()
		st.Close()
		followFallback = fallback
	})
	return st, g
}

// TestFollowStateFromWatch: a host following a state in etcd opens a new server's endpoint, and closes a deleted
// one's, from the store's watch alone (the fallback pass is made too rare to matter). After shutdown nothing opens
// again.
func TestFollowStateFromWatch(t *testing.T) {
	st, g := followingHost(t, "/follow")
	time.Sleep(500 * time.Millisecond) // past the first pass: what follows comes from the watch

	put := func(name string, port int) {
		t.Helper()
		srv := model.Server{ID: armid.ServerID{Subscription: "s", ResourceGroup: "rg", Name: name}, State: "Ready", GatewayPort: port}
		if err := st.Update(func(tx *store.Tx) error { return tx.Put(store.Servers, srv.ID.Key(), &srv) }); err != nil {
			t.Fatal(err)
		}
	}
	// within waits up to limit for the endpoint on port to be open (or closed); it returns how long that took.
	within := func(port int, open bool, limit time.Duration) time.Duration {
		t.Helper()
		start := time.Now()
		for {
			c, err := net.DialTimeout("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)), 200*time.Millisecond)
			if err == nil {
				c.Close()
			}
			if (err == nil) == open {
				return time.Since(start)
			}
			if time.Since(start) > limit {
				t.Fatalf("endpoint on port %d open=%v: not within %s", port, open, limit)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	port := pgtest.FreePort(t)
	put("a", port)
	took := within(port, true, 5*time.Second)
	t.Logf("a new server's endpoint opened %s after its record was written", took)
	if err := st.Update(func(tx *store.Tx) error {
		return tx.Delete(store.Servers, armid.ServerID{Subscription: "s", ResourceGroup: "rg", Name: "a"}.Key())
	}); err != nil {
		t.Fatal(err)
	}
	within(port, false, 5*time.Second)

	g.shutdown()
	port = pgtest.FreePort(t)
	put("b", port)
	time.Sleep(time.Second)
	within(port, false, 0)
}

// TestEndpointsAvoidInstancePorts: an agent never opens an endpoint or listener on one of its instances' ports
// (the instance could not start on it); it says why.
func TestEndpointsAvoidInstancePorts(t *testing.T) {
	port := pgtest.FreePort(t)
	g, err := newGatewayEndpoints(gatewayConfig{InstancePortLow: port, InstancePortHigh: port + 1}, nil, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	defer g.shutdown()
	srv := &model.Server{ID: armid.ServerID{Name: "a"}, GatewayPort: port}
	if err := g.OpenServer(srv); err == nil || !strings.Contains(err.Error(), "instance port range") {
		t.Fatalf("an endpoint on an instance port: %v", err)
	}
	fg := &model.FailoverGroup{Name: "fg", RWPort: pgtest.FreePort(t), ROPort: port + 1}
	if err := g.OpenGroup(fg); err == nil || !strings.Contains(err.Error(), "instance port range") {
		t.Fatalf("a listener on an instance port: %v", err)
	}
	srv.GatewayPort = pgtest.FreePort(t)
	if err := g.OpenServer(srv); err != nil {
		t.Fatalf("an endpoint outside the instance ports: %v", err)
	}
}

// TestFollowHoldsFromTheOperations: a following host holds a group's read-write sessions when a failover of the
// group writes a step that holds them, and releases them when it writes one that does not, from the operations'
// watch alone: the group's record does not name the operation, so a pass would never hold it.
func TestFollowHoldsFromTheOperations(t *testing.T) {
	st, g := followingHost(t, "/holds")
	fg := model.FailoverGroup{Name: "fg",
		RWPort: pgtest.FreePort(t), ROPort: pgtest.FreePort(t)}
	if err := st.Update(func(tx *store.Tx) error { return tx.Put(store.Groups, fg.Key(), &fg) }); err != nil {
		t.Fatal(err)
	}
	op := model.Operation{ID: "op1", Kind: model.OpPlanned, Status: model.OpInProgress, Step: "catch-up",
		Params: []byte(`{"group":"` + fg.Key() + `"}`)}
	write := func(step string) {
		t.Helper()
		op.Step = step
		if err := st.Update(func(tx *store.Tx) error { return tx.Put(store.Operations, op.ID, &op) }); err != nil {
			t.Fatal(err)
		}
	}
	held := func(want bool) {
		t.Helper()
		deadline := time.Now().Add(5 * time.Second)
		for g.lis.Held(fg.Key()) != want {
			if time.Now().After(deadline) {
				t.Fatalf("held = %v after 5 s, want %v (step %s)", !want, want, op.Step)
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	write("catch-up")
	time.Sleep(300 * time.Millisecond)
	held(false)
	write("demote")
	held(true)
	write("record")
	time.Sleep(300 * time.Millisecond)
	held(true) // the passes the writes start leave the hold to the watch
	write("rejoin")
	held(false)
}
