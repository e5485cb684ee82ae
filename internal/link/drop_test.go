package link_test

import (
	"context"
	"testing"

	"github.com/fogo-db/fogo/internal/link"
	"github.com/fogo-db/fogo/internal/postgres/instance"
	"github.com/fogo-db/fogo/internal/testutil/pgtest"
)

// TestDropOwned: what a deleted link owns goes — its slot copy on a standby (PostgreSQL 15 drops a logical slot
// during recovery), its slot and publication on the primary — and dropping again is a no-op.
func TestDropOwned(t *testing.T) {
	ctx := context.Background()
	p := pgtest.NewPrimary(t)
	src, err := p.Connect(ctx, "postgres")
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close(ctx)
	s := pgtest.NewStandby(t, p, "fogo_s1")
	exec(t, src, "CREATE TABLE a(id int PRIMARY KEY)")
	exec(t, src, "CREATE PUBLICATION fogo_link_x FOR TABLE a")
	exec(t, src, "SELECT pg_create_logical_replication_slot('fogo_link_x', 'pgoutput')")
	exec(t, src, "CHECKPOINT")
	files, err := p.ReadSlotFiles(ctx, "fogo_link_x")
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Stop(ctx, instance.ShutdownFast); err != nil {
		t.Fatal(err)
	}
	if err := s.WriteSlotFiles("fogo_link_x", files); err != nil {
		t.Fatal(err)
	}
	if err := s.Start(ctx); err != nil {
		t.Fatal(err)
	}
	if got, err := s.SlotConfirmedLSN(ctx, "fogo_link_x"); err != nil || got == 0 {
		t.Fatalf("no slot copy on the standby: %v %v", got, err)
	}
	for i := 0; i < 2; i++ { // the second time finds nothing to drop
		if err := link.DropOwned(ctx, dsn(s), "x", "", false); err != nil {
			t.Fatalf("drop the copy on the standby: %v", err)
		}
		if err := link.DropOwned(ctx, dsn(p), "x", "", true); err != nil {
			t.Fatalf("drop on the primary: %v", err)
		}
	}
	if got, err := s.SlotConfirmedLSN(ctx, "fogo_link_x"); err != nil || got != 0 {
		t.Fatalf("the standby still has the slot copy: %v %v", got, err)
	}
	var n int
	if err := src.QueryRow(ctx, "SELECT (SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'fogo_link_x') + "+
		"(SELECT count(*) FROM pg_publication WHERE pubname = 'fogo_link_x')").Scan(&n); err != nil || n != 0 {
		t.Fatalf("the primary still has %d of the slot and publication (%v)", n, err)
	}
}
