package netns

import (
	"context"
	"testing"
	"time"

	"github.com/fogo-db/fogo/internal/testutil/etcdtest"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// etcdClient returns a client that talks to the given endpoints only; it is closed at cleanup.
func etcdClient(t *testing.T, endpoints ...string) *clientv3.Client {
	t.Helper()
	return etcdtest.Client(t, endpoints)
}

// TestEtcdThreeHosts runs a three-member etcd cluster, one member per host: a put on one member is read on
// another; with one host cut the other two still accept writes; healed, the cut member catches up.
func TestEtcdThreeHosts(t *testing.T) {
	t.Parallel()
	EtcdBin(t)
	nw := New(t, 3)
	members := StartEtcd(t, nw.Hosts...)
	m1, m2, m3 := etcdClient(t, members[0].Endpoint), etcdClient(t, members[1].Endpoint), etcdClient(t, members[2].Endpoint)

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := m1.Put(ctx, "k", "v1"); err != nil {
		t.Fatalf("put on m1: %v", err)
	}
	if resp, err := m2.Get(ctx, "k"); err != nil || len(resp.Kvs) != 1 || string(resp.Kvs[0].Value) != "v1" {
		t.Fatalf("get on m2: %v, %v", resp, err)
	}

	if err := nw.Host(3).Cut(); err != nil {
		t.Fatal(err)
	}
	// The two remaining members are a quorum; a write may wait for a leader election if m3 led.
	var last error
	if !waitUntil(20*time.Second, 200*time.Millisecond, 50, func() bool {
		wctx, wcancel := context.WithTimeout(ctx, 3*time.Second)
		defer wcancel()
		_, last = m1.Put(wctx, "k", "v2")
		return last == nil
	}) {
		t.Fatalf("put on m1 with h3 cut: %v", last)
	}
	if resp, err := m2.Get(ctx, "k"); err != nil || len(resp.Kvs) != 1 || string(resp.Kvs[0].Value) != "v2" {
		t.Fatalf("get on m2 with h3 cut: %v, %v", resp, err)
	}
	// The cut member cannot serve a linearizable read (no quorum).
	rctx, rcancel := context.WithTimeout(ctx, 2*time.Second)
	if _, err := m3.Get(rctx, "k"); err == nil {
		t.Error("linearizable get on the cut member m3 succeeded")
	}
	rcancel()

	if err := nw.Host(3).Heal(); err != nil {
		t.Fatal(err)
	}
	var got string
	if !waitUntil(20*time.Second, 200*time.Millisecond, 100, func() bool {
		gctx, gcancel := context.WithTimeout(ctx, 2*time.Second)
		defer gcancel()
		resp, err := m3.Get(gctx, "k", clientv3.WithSerializable())
		if err != nil || len(resp.Kvs) != 1 {
			last = err
			return false
		}
		got = string(resp.Kvs[0].Value)
		return got == "v2"
	}) {
		t.Fatalf("m3 did not catch up after Heal: value %q, %v", got, last)
	}
}
