package instance_test

import (
	"context"
	"testing"

	"github.com/fogo-db/fogo/internal/postgres/instance"
	"github.com/fogo-db/fogo/internal/postgres/lsn"
	"github.com/fogo-db/fogo/internal/testutil/pgtest"
)

// TestSlotCopyCappedAtStandbyFlush: a primary slot that confirmed WAL its standby has not flushed is copied with
// its confirmed_flush capped at the standby's flush position (the state file's checksum rewritten: the standby
// starts and shows the copy there); a cap below the slot's restart point is refused.
func TestSlotCopyCappedAtStandbyFlush(t *testing.T) {
	ctx := context.Background()
	p := pgtest.NewPrimary(t)
	exec(t, p, "CREATE TABLE t(id int primary key)")
	s := pgtest.NewStandby(t, p, "fogo_s1")
	exec(t, p, "SELECT pg_create_logical_replication_slot('fogo_link_x', 'test_decoding')")
	exec(t, p, "INSERT INTO t VALUES (1)")
	waitCount(t, s, 1)
	flushed, err := s.ReceiveLSN(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Stop(ctx, instance.ShutdownFast); err != nil {
		t.Fatal(err)
	}
	// The primary goes on, and its slot confirms WAL the standby does not have.
	exec(t, p, "INSERT INTO t VALUES (2)")
	exec(t, p, "INSERT INTO t VALUES (3)")
	changes(t, p, "pg_logical_slot_get_changes")
	exec(t, p, "CHECKPOINT") // the slot's state on disk
	files, err := p.ReadSlotFiles(ctx, "fogo_link_x")
	if err != nil {
		t.Fatal(err)
	}
	restart, confirmed, err := files.Positions()
	if err != nil {
		t.Fatal(err)
	}
	onPrimary, err := p.SlotConfirmedLSN(ctx, "fogo_link_x")
	if err != nil || confirmed != onPrimary || restart == 0 || restart > confirmed {
		t.Fatalf("state file: restart %s confirmed %s; the primary's slot confirmed %s (%v)", restart, confirmed, onPrimary, err)
	}
	if confirmed <= flushed {
		t.Fatalf("premise: the primary's slot confirmed %s, not past the standby's %s", confirmed, flushed)
	}
	if restart > flushed {
		t.Fatalf("premise: the slot's restart point %s moved past the standby's flush %s", restart, flushed)
	}
	bad := files
	if _, err := bad.CapConfirmedFlush(restart - 1); err == nil {
		t.Fatal("a cap below the slot's restart point was accepted")
	}
	got, err := files.CapConfirmedFlush(flushed)
	if err != nil || got != flushed {
		t.Fatalf("cap: %s, %v", got, err)
	}
	if err := s.WriteSlotFiles("fogo_link_x", files); err != nil {
		t.Fatal(err)
	}
	if err := s.Start(ctx); err != nil {
		t.Fatal(err)
	}
	copyAt, err := s.SlotConfirmedLSN(ctx, "fogo_link_x")
	if err != nil || copyAt != flushed {
		t.Fatalf("the copy on the standby confirmed %s (%v), want the standby's flush %s", copyAt, err, flushed)
	}
}

// TestSlotCopyPastTheForkSkipsTransactions (three instances): a primary and two standbys stopped at the same
// point, while the primary goes on and its link slot confirms WAL neither standby has. One standby gets the
// slot's state file as it is, the other capped at its flush position (what the link's keeper installs); the
// primary dies and both are promoted, as a forced failover does, and each takes new transactions. The uncapped
// copy confirms past the new timeline's fork point and skips them (review finding 7, confirmed); the capped
// copy decodes every one.
func TestSlotCopyPastTheForkSkipsTransactions(t *testing.T) {
	ctx := context.Background()
	p := pgtest.NewPrimary(t)
	exec(t, p, "CREATE TABLE t(id int primary key)")
	capped, raw := pgtest.NewStandby(t, p, "fogo_s1"), pgtest.NewStandby(t, p, "fogo_s2")
	exec(t, p, "SELECT pg_create_logical_replication_slot('fogo_link_x', 'test_decoding')")
	exec(t, p, "INSERT INTO t VALUES (1)")
	flushed := map[*instance.Instance]lsn.LSN{}
	for _, s := range []*instance.Instance{capped, raw} {
		waitCount(t, s, 1)
		at, err := s.ReceiveLSN(ctx)
		if err != nil {
			t.Fatal(err)
		}
		flushed[s] = at
		if err := s.Stop(ctx, instance.ShutdownFast); err != nil {
			t.Fatal(err)
		}
	}
	// The primary goes on; its slot confirms all of it (a link with nothing pending does).
	exec(t, p, "INSERT INTO t SELECT generate_series(2, 500)")
	exec(t, p, "INSERT INTO t VALUES (501)")
	changes(t, p, "pg_logical_slot_get_changes")
	exec(t, p, "CHECKPOINT")
	for _, s := range []*instance.Instance{capped, raw} {
		files, err := p.ReadSlotFiles(ctx, "fogo_link_x")
		if err != nil {
			t.Fatal(err)
		}
		_, confirmed, err := files.Positions()
		if err != nil || confirmed <= flushed[s] {
			t.Fatalf("premise: the primary's slot confirmed %s, not past the standby's %s (%v)", confirmed, flushed[s], err)
		}
		if s == capped {
			if _, err := files.CapConfirmedFlush(flushed[s]); err != nil {
				t.Fatal(err)
			}
		}
		if err := s.WriteSlotFiles("fogo_link_x", files); err != nil {
			t.Fatal(err)
		}
	}
	// The primary dies before either standby catches up; both are promoted and take new transactions.
	if err := p.Stop(ctx, instance.ShutdownImmediate); err != nil {
		t.Fatal(err)
	}
	for _, s := range []*instance.Instance{capped, raw} {
		if err := s.Start(ctx); err != nil {
			t.Fatal(err)
		}
		if n := count(t, s); n != 1 {
			t.Fatalf("premise: the standby has %d rows, not just the first", n)
		}
		if err := s.Promote(ctx); err != nil {
			t.Fatal(err)
		}
		exec(t, s, "INSERT INTO t VALUES (1000)")
		exec(t, s, "INSERT INTO t VALUES (1001)")
	}
	if got := changes(t, raw, "pg_logical_slot_peek_changes"); len(got) != 0 {
		t.Errorf("premise: the uncapped copy decoded %v; the finding says it skips the new primary's transactions", got)
	}
	if got := changes(t, capped, "pg_logical_slot_peek_changes"); !equalIDs(got, 1000, 1001) {
		t.Fatalf("the capped copy decoded %v, want the new primary's inserts 1000, 1001", got)
	}
}
