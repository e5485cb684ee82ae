package leader_test

import (
	"context"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/fogo-db/fogo/internal/controlplane/leader"
	"github.com/fogo-db/fogo/internal/testutil/etcdtest"
)

// TestOneLeaderAtATime: of two campaigns on one prefix, one leads and the other waits (told who leads) until the
// first resigns; Current names the leader; another prefix has its own election.
func TestOneLeaderAtATime(t *testing.T) {
	etcd := etcdtest.Start(t)
	cli, err := clientv3.New(clientv3.Config{Endpoints: etcd.Endpoints(), DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	a, err := leader.Campaign(ctx, cli, "/p", "a", 5*time.Second, nil)
	if err != nil {
		t.Fatal(err)
	}
	if who, err := leader.Current(ctx, cli, "/p"); err != nil || who != "a" {
		t.Fatalf("current leader %q (%v), want a", who, err)
	}
	waitedFor := make(chan string, 1)
	won := make(chan *leader.Leadership, 1)
	go func() {
		b, err := leader.Campaign(ctx, cli, "/p", "b", 5*time.Second, func(current string) { waitedFor <- current })
		if err != nil {
			t.Error(err)
		}
		won <- b
	}()
	select {
	case who := <-waitedFor:
		if who != "a" {
			t.Errorf("b was told %q leads, want a", who)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("b was not told who leads")
	}
	select {
	case <-won:
		t.Fatal("b was elected while a leads")
	case <-time.After(time.Second):
	}
	other, err := leader.Campaign(ctx, cli, "/q", "c", 5*time.Second, nil) // another state: its own election
	if err != nil {
		t.Fatal(err)
	}
	defer other.Resign(ctx)
	if err := a.Resign(ctx); err != nil {
		t.Fatal(err)
	}
	select {
	case <-a.Lost():
	case <-time.After(5 * time.Second):
		t.Error("a resigned but Lost is not closed")
	}
	select {
	case b := <-won:
		defer b.Resign(ctx)
		if who, err := leader.Current(ctx, cli, "/p"); err != nil || who != "b" {
			t.Errorf("current leader %q (%v), want b", who, err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("b was not elected after a resigned")
	}
}
