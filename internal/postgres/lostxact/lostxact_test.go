package lostxact_test

import (
	"context"
	"sort"
	"strconv"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/fogo-db/fogo/internal/postgres/instance"
	"github.com/fogo-db/fogo/internal/postgres/lostxact"
	"github.com/fogo-db/fogo/internal/postgres/lsn"
	"github.com/fogo-db/fogo/internal/testutil/pgtest"
)

func connect(t *testing.T, ctx context.Context, in *instance.Instance) *pgx.Conn {
	t.Helper()
	c, err := in.Connect(ctx, "postgres")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close(context.Background()) })
	return c
}

func exec(t *testing.T, ctx context.Context, c *pgx.Conn, sql string, args ...any) {
	t.Helper()
	if _, err := c.Exec(ctx, sql, args...); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
}

func scanLSN(t *testing.T, ctx context.Context, c *pgx.Conn, sql string) lsn.LSN {
	t.Helper()
	var s string
	if err := c.QueryRow(ctx, sql).Scan(&s); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
	l, err := lsn.Parse(s)
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// TestLostTransactionsAfterAForcedFailover proves the method on PostgreSQL 15. A primary streams to a standby; the
// slot follows what the standby flushed. Then the stream is cut, and the primary goes on acknowledging commits the
// standby never receives: small ones, an update and a delete, and one transaction of 50,000 rows that takes its WAL
// far past the divergence point; one more transaction is in flight when the primary is killed (kill -9). The
// standby is promoted. The old primary, started again (crash recovery), has in its slot every acknowledged commit
// the new primary lacks, with their rows, and nothing else: not the commits the standby did receive after the
// slot's last advance, not the transaction in flight.
func TestLostTransactionsAfterAForcedFailover(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	primary := pgtest.NewPrimary(t)
	standby := pgtest.NewStandby(t, primary, "lost_standby")
	p := connect(t, ctx, primary)
	exec(t, ctx, p, "CREATE TABLE ledger(id int PRIMARY KEY, note text)")
	if err := lostxact.Prepare(ctx, p); err != nil {
		t.Fatal(err)
	}
	if err := lostxact.Prepare(ctx, p); err != nil { // idempotent
		t.Fatalf("Prepare again: %v", err)
	}
	s := connect(t, ctx, standby)
	waitReplay := func() {
		t.Helper()
		target := scanLSN(t, ctx, p, "SELECT pg_current_wal_flush_lsn()::text")
		deadline := time.Now().Add(30 * time.Second)
		for scanLSN(t, ctx, s, "SELECT coalesce(pg_last_wal_replay_lsn(), '0/0')::text") < target {
			if time.Now().After(deadline) {
				t.Fatal("the standby did not replay")
			}
			time.Sleep(10 * time.Millisecond)
		}
	}

	// Received by the standby: ids 1-30, then the slot follows it; ids 31-50 reach the standby past the slot.
	for id := 1; id <= 30; id++ {
		exec(t, ctx, p, "INSERT INTO ledger VALUES ($1, 'kept')", id)
	}
	waitReplay()
	flushed := scanLSN(t, ctx, s, "SELECT pg_last_wal_receive_lsn()::text")
	if at, err := lostxact.Advance(ctx, p, flushed); err != nil || at != flushed {
		t.Fatalf("Advance to %s: %s %v", flushed, at, err)
	}
	if at, err := lostxact.Advance(ctx, p, flushed-1); err != nil || at != flushed {
		t.Fatalf("Advance backwards: %s %v, want it left at %s", at, err, flushed)
	}
	for id := 31; id <= 50; id++ {
		exec(t, ctx, p, "INSERT INTO ledger VALUES ($1, 'kept, past the slot')", id)
	}
	waitReplay()

	// The stream is cut: what the primary acknowledges from here on is lost.
	exec(t, ctx, s, "ALTER SYSTEM SET primary_conninfo = ''")
	exec(t, ctx, s, "SELECT pg_reload_conf()")
	deadline := time.Now().Add(30 * time.Second)
	for {
		var receivers int
		if err := s.QueryRow(ctx, "SELECT count(*) FROM pg_stat_wal_receiver").Scan(&receivers); err != nil {
			t.Fatal(err)
		}
		if receivers == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the standby's WAL receiver did not stop")
		}
		time.Sleep(20 * time.Millisecond)
	}
	var oldTimeline uint32
	if err := p.QueryRow(ctx, "SELECT timeline_id FROM pg_control_checkpoint()").Scan(&oldTimeline); err != nil {
		t.Fatal(err)
	}
	acknowledged := map[string]bool{} // every lost change, as "op id"
	for id := 51; id <= 60; id++ {
		exec(t, ctx, p, "INSERT INTO ledger VALUES ($1, 'lost')", id)
		acknowledged["insert "+strconv.Itoa(id)] = true
	}
	exec(t, ctx, p, "UPDATE ledger SET note = 'lost update' WHERE id = 5")
	acknowledged["update 5"] = true
	exec(t, ctx, p, "DELETE FROM ledger WHERE id = 6")
	acknowledged["delete 6"] = true
	exec(t, ctx, p, "INSERT INTO ledger SELECT g, 'lost, far past' FROM generate_series(100001, 150000) g")
	for id := 100001; id <= 150000; id++ {
		acknowledged["insert "+strconv.Itoa(id)] = true
	}
	end := scanLSN(t, ctx, p, "SELECT pg_current_wal_flush_lsn()::text")
	inFlight := connect(t, ctx, primary)
	exec(t, ctx, inFlight, "BEGIN")
	exec(t, ctx, inFlight, "INSERT INTO ledger VALUES (999, 'in flight')")
	if err := primary.Kill(ctx, 30*time.Second); err != nil {
		t.Fatal(err)
	}

	if err := standby.Promote(ctx); err != nil {
		t.Fatal(err)
	}
	divergence, err := lostxact.Divergence(ctx, s, oldTimeline)
	if err != nil {
		t.Fatal(err)
	}
	if divergence < flushed || divergence >= end {
		t.Fatalf("divergence %s, want between the slot (%s) and the old primary's end (%s)", divergence, flushed, end)
	}
	t.Logf("slot at %s, divergence at %s, the old primary's WAL ends past %s (%d kB beyond)", flushed, divergence, end, (end-divergence)/1024)
	var onNew []int
	rows, err := s.Query(ctx, "SELECT id FROM ledger ORDER BY id")
	if err != nil {
		t.Fatal(err)
	}
	for rows.Next() {
		var id int
		if err := rows.Scan(&id); err != nil {
			t.Fatal(err)
		}
		onNew = append(onNew, id)
	}
	if rows.Err() != nil || len(onNew) != 50 || onNew[0] != 1 || onNew[49] != 50 {
		t.Fatalf("the new primary has %d rows (%v), want ids 1-50", len(onNew), rows.Err())
	}

	// The old primary again, alone: its slot still holds everything past the standby's last flush.
	if err := primary.Start(ctx); err != nil {
		t.Fatal(err)
	}
	old := connect(t, ctx, primary)
	lost, err := lostxact.Read(ctx, old, divergence)
	if err != nil {
		t.Fatal(err)
	}
	reported := map[string]bool{}
	var xids []uint32
	for _, txn := range lost {
		if txn.CommitLSN <= divergence || txn.CommitTime.IsZero() {
			t.Fatalf("a reported transaction committed at %s (%s), not past the divergence %s", txn.CommitLSN, txn.CommitTime, divergence)
		}
		xids = append(xids, txn.XID)
		for _, c := range txn.Changes {
			if c.Schema != "public" || c.Table != "ledger" || len(c.Key) != 1 || c.Key[0] != "id" {
				t.Fatalf("change %+v: not of public.ledger keyed by id", c)
			}
			row := c.New
			if c.Op == "delete" {
				row = c.Old
			}
			id := row["id"]
			if id == nil {
				t.Fatalf("change %+v without its id", c)
			}
			reported[c.Op+" "+*id] = true
			if c.Op == "update" && (c.New["note"] == nil || *c.New["note"] != "lost update") {
				t.Fatalf("the lost update reads %+v", c.New)
			}
		}
	}
	var missing, extra []string
	for k := range acknowledged {
		if !reported[k] {
			missing = append(missing, k)
		}
	}
	for k := range reported {
		if !acknowledged[k] {
			extra = append(extra, k)
		}
	}
	sort.Strings(missing)
	sort.Strings(extra)
	if len(missing) > 0 || len(extra) > 0 {
		t.Fatalf("the report lacks %d acknowledged lost changes (%v) and has %d it should not (%v)",
			len(missing), head(missing), len(extra), head(extra))
	}
	if len(lost) != 13 {
		t.Fatalf("%d lost transactions (xids %v), want 13: ten inserts, an update, a delete, one of 50,000 rows", len(lost), xids)
	}
	if again, err := lostxact.Read(ctx, old, divergence); err != nil || len(again) != len(lost) {
		t.Fatalf("read again: %d transactions, %v; want the same %d (nothing consumed)", len(again), err, len(lost))
	}
}

func head(s []string) []string { return s[:min(len(s), 5)] }

// TestSwitchPointOfATimeline: the switch point is read for the old primary's timeline only; a history without it
// is an error, not a guess.
func TestSwitchPointOfATimeline(t *testing.T) {
	for _, c := range []struct {
		history string
		tli     uint32
		want    string
	}{
		{"1\t0/3000158\tno recovery target specified\n", 1, "0/3000158"},
		{"1\t0/3000158\tno recovery target specified\n2\t0/5000A0\tno recovery target specified\n", 2, "0/5000A0"},
		{"1\t0/3000158\tno recovery target specified\n", 2, ""},
		{"", 1, ""},
	} {
		got, err := lostxact.SwitchPoint(c.history, c.tli)
		if c.want == "" {
			if err == nil {
				t.Fatalf("timeline %d in %q: %s, want an error", c.tli, c.history, got)
			}
			continue
		}
		if err != nil || got.String() != c.want {
			t.Fatalf("timeline %d in %q: %s %v, want %s", c.tli, c.history, got, err, c.want)
		}
	}
}
