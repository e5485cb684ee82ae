package instance_test

import (
	"context"
	"testing"
	"time"

	"github.com/fogo-db/fogo/internal/postgres/instance"
	"github.com/fogo-db/fogo/internal/testutil/pgtest"
)

// TestStandbyInDirectoryWithSpace: primary_conninfo quotes its values (the passfile path among them), so a standby
// whose data directory's path holds a space and a quote streams.
func TestStandbyInDirectoryWithSpace(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	p := pgtest.NewPrimary(t)
	exec(t, p, "CREATE TABLE t(id int primary key)")
	exec(t, p, "INSERT INTO t SELECT generate_series(1,5)")
	s := pgtest.NewInstance(t, `standby with space and 'quote'`)
	s.SuperPassword = p.SuperPassword
	if err := p.EnsurePhysicalSlot(ctx, "fogo_sp"); err != nil {
		t.Fatal(err)
	}
	if err := s.BaseBackup(ctx, p.SourceConnInfo(), "fogo_sp"); err != nil {
		t.Fatal(err)
	}
	if err := s.Configure(instance.Settings{Port: s.Port, Standby: true, PrimaryConnInfo: p.ReplicationConnInfo("fogo_sp"), PrimarySlotName: "fogo_sp"}); err != nil {
		t.Fatal(err)
	}
	if err := s.Start(ctx); err != nil {
		t.Fatal(err)
	}
	exec(t, p, "INSERT INTO t VALUES (6)")
	waitCount(t, s, 6)
	deadline := time.Now().Add(20 * time.Second)
	for {
		w, err := s.WalReceiverStatus(ctx)
		if err == nil && w.Status == "streaming" {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("standby in %q does not stream: %+v %v; log: %s", s.Dir, w, err, s.LogTail(800))
		}
		time.Sleep(100 * time.Millisecond)
	}
}
