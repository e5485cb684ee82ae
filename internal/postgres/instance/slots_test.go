package instance_test

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/fogo-db/fogo/internal/postgres/instance"
	"github.com/fogo-db/fogo/internal/testutil/pgtest"
)

// TestSlotCopyDecodesEverythingAfterPromotion: a logical slot copied to a standby, whose restart point lies where
// transactions were in progress, decodes after the standby's promotion every transaction the primary's slot had
// not confirmed, including one that began before the copy and committed after it.
func TestSlotCopyDecodesEverythingAfterPromotion(t *testing.T) {
	ctx := context.Background()
	p := pgtest.NewPrimary(t)
	exec(t, p, "CREATE TABLE t(id int primary key)")
	s := pgtest.NewStandby(t, p, "fogo_s1")
	exec(t, p, "SELECT pg_create_logical_replication_slot('fogo_link_x', 'test_decoding')")

	c1, c2 := connect(t, p), connect(t, p)
	// L1 runs across a running_xacts record (the checkpoint's), L2 begins after it; consuming everything up to
	// here leaves the slot's restart point at that record, with L1 in progress there.
	mustExecConn(t, c1, "BEGIN; INSERT INTO t VALUES (1)")
	exec(t, p, "CHECKPOINT")
	mustExecConn(t, c2, "BEGIN; INSERT INTO t VALUES (2)")
	mustExecConn(t, c1, "COMMIT")
	exec(t, p, "INSERT INTO t VALUES (3)")
	exec(t, p, "CHECKPOINT")
	exec(t, p, "INSERT INTO t VALUES (4)")
	got := changes(t, p, "pg_logical_slot_get_changes")
	if !equalIDs(got, 1, 3, 4) {
		t.Fatalf("primary decoded %v", got)
	}
	exec(t, p, "CHECKPOINT") // the slot's state on disk

	if err := copySlot(ctx, p, s, "fogo_link_x"); err != nil {
		t.Fatal(err)
	}
	// The copy is then advanced on the standby, as the link's keeper does, while L3 runs across checkpoints.
	mustExecConn(t, c1, "BEGIN; INSERT INTO t VALUES (7)")
	exec(t, p, "INSERT INTO t VALUES (5)")
	exec(t, p, "CHECKPOINT")
	mustExecConn(t, c2, "COMMIT")
	exec(t, p, "INSERT INTO t VALUES (6)")
	if got := changes(t, p, "pg_logical_slot_get_changes"); !equalIDs(got, 5, 2, 6) {
		t.Fatalf("primary decoded %v", got)
	}
	confirmed, err := p.SlotConfirmedLSN(ctx, "fogo_link_x")
	if err != nil {
		t.Fatal(err)
	}
	waitCount(t, s, 6)
	if err := s.AdvanceSlot(ctx, "postgres", "fogo_link_x", confirmed); err != nil {
		t.Fatalf("advance the copy on the standby: %v", err)
	}
	if got, err := s.SlotConfirmedLSN(ctx, "fogo_link_x"); err != nil || got != confirmed {
		t.Fatalf("the copy is at %s (%v), want %s", got, err, confirmed)
	}
	exec(t, p, "CHECKPOINT")
	mustExecConn(t, c1, "COMMIT")
	exec(t, p, "INSERT INTO t VALUES (8)")
	waitCount(t, s, 8)
	if err := p.Stop(ctx, instance.ShutdownImmediate); err != nil {
		t.Fatal(err)
	}
	if err := s.Promote(ctx); err != nil {
		t.Fatal(err)
	}
	if got := changes(t, s, "pg_logical_slot_peek_changes"); !equalIDs(got, 7, 8) {
		t.Fatalf("the promoted standby's slot copy decoded %v, want inserts 7, 8", got)
	}
}

func copySlot(ctx context.Context, p, s *instance.Instance, slot string) error {
	files, err := p.ReadSlotFiles(ctx, slot)
	if err != nil {
		return err
	}
	if err := s.Stop(ctx, instance.ShutdownFast); err != nil {
		return err
	}
	if err := s.WriteSlotFiles(slot, files); err != nil {
		return err
	}
	return s.Start(ctx)
}

func connect(t *testing.T, in *instance.Instance) *pgx.Conn {
	t.Helper()
	c, err := in.Connect(context.Background(), "postgres")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close(context.Background()) })
	return c
}

func mustExecConn(t *testing.T, c *pgx.Conn, sql string) {
	t.Helper()
	for _, q := range strings.Split(sql, ";") {
		if _, err := c.Exec(context.Background(), q); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
}

// changes returns the inserted ids a test_decoding slot yields, in order.
func changes(t *testing.T, in *instance.Instance, fn string) []string {
	t.Helper()
	c := connect(t, in)
	rows, err := c.Query(context.Background(), "SELECT data FROM "+fn+"('fogo_link_x', NULL, NULL)")
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	var out []string
	for rows.Next() {
		var d string
		if err := rows.Scan(&d); err != nil {
			t.Fatal(err)
		}
		if i := strings.Index(d, "id[integer]:"); i >= 0 {
			out = append(out, strings.TrimSpace(d[i+len("id[integer]:"):]))
		}
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

func equalIDs(got []string, want ...int) bool {
	if len(got) != len(want) {
		return false
	}
	for i, w := range want {
		if got[i] != strconv.Itoa(w) {
			return false
		}
	}
	return true
}

func slotStatus(t *testing.T, p *instance.Instance, name string) instance.SlotStatus {
	t.Helper()
	all, err := p.SlotsStatus(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range all {
		if s.Name == name {
			return s
		}
	}
	t.Fatalf("no slot %s in %+v", name, all)
	return instance.SlotStatus{}
}

// TestBoundedSlotBecomesLost: with max_slot_wal_keep_size, a stopped standby's slot stops holding WAL once the
// primary wrote more than the bound: SlotsStatus shows its retained WAL growing, then wal_status lost after a
// checkpoint, and DropSlotIfLost drops it (and only then).
func TestBoundedSlotBecomesLost(t *testing.T) {
	ctx := context.Background()
	p := pgtest.NewPrimary(t)
	// 1MB is less than a segment: nothing beyond the current segment is kept for a slot (wal_keep_size would
	// keep more, for every standby).
	if err := p.Configure(instance.Settings{Port: p.Port, Extra: map[string]string{"max_slot_wal_keep_size": "1MB", "wal_keep_size": "0"}}); err != nil {
		t.Fatal(err)
	}
	exec(t, p, "SELECT pg_reload_conf()")
	exec(t, p, "CREATE TABLE t(id int primary key)")
	s := pgtest.NewStandby(t, p, "fogo_s1")
	exec(t, p, "INSERT INTO t VALUES (1)")
	waitCount(t, s, 1)
	if st := slotStatus(t, p, "fogo_s1"); st.Lost() || st.Type != "physical" || st.SafeWALBytes < 0 {
		t.Fatalf("streaming standby's slot: %+v", st)
	}
	if dropped, err := p.DropSlotIfLost(ctx, "fogo_s1"); err != nil || dropped {
		t.Fatalf("DropSlotIfLost of a healthy slot: %v %v", dropped, err)
	}
	if err := s.Stop(ctx, instance.ShutdownFast); err != nil {
		t.Fatal(err)
	}
	for k := 2; k <= 4; k++ { // three segments of WAL
		exec(t, p, fmt.Sprintf("INSERT INTO t VALUES (%d)", k))
		exec(t, p, "SELECT pg_switch_wal()")
	}
	var segment int64 // 1 MB for fogo's instances (faster promotions)
	if c, err := p.Connect(ctx, "postgres"); err != nil {
		t.Fatal(err)
	} else {
		err = c.QueryRow(ctx, "SELECT setting::bigint FROM pg_settings WHERE name = 'wal_segment_size'").Scan(&segment)
		c.Close(ctx)
		if err != nil {
			t.Fatal(err)
		}
	}
	if st := slotStatus(t, p, "fogo_s1"); st.RetainedBytes < 2*segment || st.WALStatus != "unreserved" {
		t.Fatalf("stopped standby's slot after three segments: %+v", st)
	}
	exec(t, p, "CHECKPOINT")
	st := slotStatus(t, p, "fogo_s1")
	if !st.Lost() || st.RetainedBytes != 0 {
		t.Fatalf("after a checkpoint: %+v, want lost", st)
	}
	if lost, err := p.SlotLost(ctx, "fogo_s1"); err != nil || !lost {
		t.Fatalf("SlotLost: %v %v", lost, err)
	}
	if dropped, err := p.DropSlotIfLost(ctx, "fogo_s1"); err != nil || !dropped {
		t.Fatalf("DropSlotIfLost: %v %v", dropped, err)
	}
	if lost, err := p.SlotLost(ctx, "fogo_s1"); err != nil || lost {
		t.Fatalf("SlotLost after the drop: %v %v", lost, err)
	}
}
