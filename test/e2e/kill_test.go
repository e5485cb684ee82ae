package e2e

import (
	"syscall"
	"testing"
	"time"

	"github.com/fogo-db/fogo/internal/controlplane/armid"
	"github.com/fogo-db/fogo/internal/controlplane/model"
)

// killPrimaryInstances kill -9s the postmaster of every database on server that is a primary right now.
func (f *fogo) killPrimaryInstances(t *testing.T, server string) {
	t.Helper()
	sid := armid.ServerID{Subscription: sub, ResourceGroup: rg, Name: server}
	dbs, err := f.app.Service.ListDatabases(sid)
	if err != nil {
		t.Fatal(err)
	}
	killed := 0
	for _, d := range dbs {
		rec, err := f.app.Cluster.GetInstance(d.Instance)
		if err != nil || rec.Role != model.RolePrimary {
			continue
		}
		pid, running := f.app.Cluster.Handle(rec).Running()
		if !running {
			t.Fatalf("primary instance of %s is not running", d.ID.Name)
		}
		if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		killed++
	}
	if killed == 0 {
		t.Fatalf("no primary instance on %s", server)
	}
	time.Sleep(300 * time.Millisecond)
}
