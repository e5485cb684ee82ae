package lostxact_test

import (
	"context"
	"sort"
	"strconv"
	"strings"
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

// forceFailover kills the primary (kill -9), promotes the standby (connection s) and returns where its new
// timeline left oldTimeline.
func forceFailover(t *testing.T, ctx context.Context, primary, standby *instance.Instance, s *pgx.Conn, oldTimeline uint32) lsn.LSN {
	t.Helper()
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
	return divergence
}

// cutStream stops the standby (connection s) from receiving WAL and waits until its WAL receiver is gone.
func cutStream(t *testing.T, ctx context.Context, s *pgx.Conn) {
	t.Helper()
	exec(t, ctx, s, "ALTER SYSTEM SET primary_conninfo = ''")
	exec(t, ctx, s, "SELECT pg_reload_conf()")
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		var receivers int
		if err := s.QueryRow(ctx, "SELECT count(*) FROM pg_stat_wal_receiver").Scan(&receivers); err != nil {
			t.Fatal(err)
		}
		if receivers == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatal("the standby's WAL receiver did not stop")
		}
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
// slot follows what the standby replayed (Keep). Then the stream is cut, and the primary goes on acknowledging
// commits the standby never receives: small ones, an update and a delete, an update of a table without a key
// (which a slot must not forbid), names that need quoting, and one transaction of 50,000 rows that takes its WAL
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
	exec(t, ctx, p, "CREATE TABLE nokey(v text)")
	exec(t, ctx, p, `CREATE TABLE "Odd ""Name"""("a b" int PRIMARY KEY, "x]:y" text[], flag bool, n numeric)`)
	exec(t, ctx, p, "INSERT INTO nokey VALUES ('a')")
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
	replayed := scanLSN(t, ctx, s, "SELECT pg_last_wal_replay_lsn()::text")
	var slotAt lsn.LSN
	deadline := time.Now().Add(30 * time.Second)
	for slotAt < replayed { // the standby reports its replay position every second
		k, err := lostxact.Keep(ctx, p)
		if err != nil {
			t.Fatal(err)
		}
		if k.Standbys != 1 || k.Dropped {
			t.Fatalf("Keep: %+v, want one standby and a slot", k)
		}
		slotAt = k.At
		if time.Now().After(deadline) {
			t.Fatalf("the slot stayed at %s, the standby replayed %s", slotAt, replayed)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if at, err := lostxact.Advance(ctx, p, slotAt-1); err != nil || at != slotAt {
		t.Fatalf("Advance backwards: %s %v, want it left at %s", at, err, slotAt)
	}
	for id := 31; id <= 50; id++ {
		exec(t, ctx, p, "INSERT INTO ledger VALUES ($1, 'kept, past the slot')", id)
	}
	waitReplay()

	// The stream is cut: what the primary acknowledges from here on is lost.
	cutStream(t, ctx, s)
	if k, err := lostxact.Keep(ctx, p); err != nil || k.Connected != 0 || k.At != slotAt {
		t.Fatalf("Keep with the standby gone: %+v %v, want the slot left at %s", k, err, slotAt)
	}
	var oldTimeline uint32
	if err := p.QueryRow(ctx, "SELECT timeline_id FROM pg_control_checkpoint()").Scan(&oldTimeline); err != nil {
		t.Fatal(err)
	}
	acknowledged := map[string]bool{} // every lost change, as "table op key"
	for id := 51; id <= 60; id++ {
		exec(t, ctx, p, "INSERT INTO ledger VALUES ($1, 'lost')", id)
		acknowledged["ledger insert "+strconv.Itoa(id)] = true
	}
	exec(t, ctx, p, "UPDATE ledger SET note = 'lost update' WHERE id = 5")
	acknowledged["ledger update 5"] = true
	exec(t, ctx, p, "DELETE FROM ledger WHERE id = 6")
	acknowledged["ledger delete 6"] = true
	exec(t, ctx, p, "UPDATE nokey SET v = 'b'") // a publication of all tables would refuse this
	acknowledged["nokey update b"] = true
	exec(t, ctx, p, `INSERT INTO "Odd ""Name""" VALUES (7, ARRAY['it''s', 'a b'], true, 1.50)`)
	acknowledged[`Odd "Name" insert 7`] = true
	exec(t, ctx, p, "INSERT INTO ledger SELECT g, 'lost, far past' FROM generate_series(100001, 150000) g")
	for id := 100001; id <= 150000; id++ {
		acknowledged["ledger insert "+strconv.Itoa(id)] = true
	}
	end := scanLSN(t, ctx, p, "SELECT pg_current_wal_flush_lsn()::text")
	inFlight := connect(t, ctx, primary)
	exec(t, ctx, inFlight, "BEGIN")
	exec(t, ctx, inFlight, "INSERT INTO ledger VALUES (999, 'in flight')")
	divergence := forceFailover(t, ctx, primary, standby, s, oldTimeline)
	if divergence < slotAt || divergence >= end {
		t.Fatalf("divergence %s, want between the slot (%s) and the old primary's end (%s)", divergence, slotAt, end)
	}
	t.Logf("slot at %s, divergence at %s, the old primary's WAL ends past %s (%d kB beyond)", slotAt, divergence, end, (end-divergence)/1024)
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

	// The old primary again, alone: its slot still holds everything past the standby's last replay.
	if err := primary.Start(ctx); err != nil {
		t.Fatal(err)
	}
	old := connect(t, ctx, primary)
	res, err := lostxact.Read(ctx, old, divergence, lostxact.DefaultLimits)
	if err != nil {
		t.Fatal(err)
	}
	if res.Incomplete != "" || res.Truncated || res.SlotAt != slotAt || res.End < end {
		t.Fatalf("read: incomplete %q, truncated %v, slot at %s (want %s), end %s (want past %s)", res.Incomplete,
			res.Truncated, res.SlotAt, slotAt, res.End, end)
	}
	reported := map[string]bool{}
	var xids []uint32
	changes := 0
	for _, txn := range res.Transactions {
		if txn.CommitLSN <= divergence || txn.CommitTime.IsZero() || txn.ChangeCount != len(txn.Changes) {
			t.Fatalf("a reported transaction committed at %s (%s), not past the divergence %s, or with %d of %d changes",
				txn.CommitLSN, txn.CommitTime, divergence, len(txn.Changes), txn.ChangeCount)
		}
		if d := time.Since(txn.CommitTime); d < 0 || d > 5*time.Minute {
			t.Fatalf("commit time %s is not a time of this test", txn.CommitTime)
		}
		xids = append(xids, txn.XID)
		changes += txn.ChangeCount
		for _, c := range txn.Changes {
			reported[describe(t, c)] = true
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
	if len(res.Transactions) != 15 || res.TransactionCount != 15 || res.ChangeCount != changes {
		t.Fatalf("%d lost transactions (xids %v; counted %d, %d changes), want 15: ten inserts, an update, a delete, "+
			"the keyless update, the odd insert, one of 50,000 rows", len(res.Transactions), xids, res.TransactionCount, res.ChangeCount)
	}
	again, err := lostxact.Read(ctx, old, divergence, lostxact.DefaultLimits)
	if err != nil || again.TransactionCount != res.TransactionCount || again.ChangeCount != res.ChangeCount || again.Incomplete != "" {
		t.Fatalf("read again: %d transactions, %d changes, %q, %v; want the same %d (nothing consumed)",
			again.TransactionCount, again.ChangeCount, again.Incomplete, err, res.TransactionCount)
	}
	// A slot past the divergence point (made after the geo-secondary had fallen behind) cannot see what lies
	// between the two: the report says it may be incomplete.
	if inc, err := lostxact.Read(ctx, old, divergence-1, lostxact.DefaultLimits); err != nil || !strings.Contains(inc.Incomplete, "1 bytes past") {
		t.Fatalf("read with the slot past the divergence point: %q %v", inc.Incomplete, err)
	}
	small, err := lostxact.Read(ctx, old, divergence, lostxact.Limits{Transactions: 5, Changes: 3})
	if err != nil || !small.Truncated || len(small.Transactions) != 5 || small.TransactionCount != 15 || small.ChangeCount != changes {
		t.Fatalf("read within limits: %d listed of %d, %d changes, truncated %v, %v", len(small.Transactions),
			small.TransactionCount, small.ChangeCount, small.Truncated, err)
	}
	kept := 0
	for _, txn := range small.Transactions {
		kept += len(txn.Changes)
	}
	if kept != 3 {
		t.Fatalf("%d changes kept, want the limit of 3", kept)
	}

	// The SQL the report writes replays the lost changes on the new primary (all but the keyless update, which it
	// says it cannot address).
	var script strings.Builder
	if err := lostxact.WriteSQL(&script, "postgres", res.Transactions); err != nil {
		t.Fatal(err)
	}
	if n := strings.Count(script.String(), "-- cannot replay"); n != 1 {
		t.Fatalf("%d changes the script cannot replay, want the keyless update alone", n)
	}
	if _, err := s.PgConn().Exec(ctx, script.String()).ReadAll(); err != nil {
		t.Fatalf("replay the report's SQL: %v", err)
	}
	var count, lostUpdate, deleted int
	if err := s.QueryRow(ctx, `SELECT count(*), count(*) FILTER (WHERE id = 5 AND note = 'lost update'),
		(SELECT count(*) FROM ledger WHERE id = 6) FROM ledger`).Scan(&count, &lostUpdate, &deleted); err != nil {
		t.Fatal(err)
	}
	var odd string
	if err := s.QueryRow(ctx, `SELECT "x]:y"::text FROM "Odd ""Name""" WHERE "a b" = 7 AND flag AND n = 1.50`).Scan(&odd); err != nil {
		t.Fatalf("the odd insert was not replayed: %v", err)
	}
	if count != 50+10-1+50000 || lostUpdate != 1 || deleted != 0 || odd != `{it's,"a b"}` {
		t.Fatalf("after the replay: %d rows, lost update %d, id 6 present %d, odd %q", count, lostUpdate, deleted, odd)
	}
}

// describe names a reported change as the test's ledger does, checking what each kind must carry.
func describe(t *testing.T, c lostxact.Change) string {
	t.Helper()
	switch c.Table {
	case "ledger":
		if c.Schema != "public" || len(c.Key) != 1 || c.Key[0] != "id" {
			t.Fatalf("change %+v: not of public.ledger keyed by id", c)
		}
		row := c.New
		if c.Op == "delete" {
			row = c.Old
		}
		id := value(row, "id")
		if id == nil {
			t.Fatalf("change %+v without its id", c)
		}
		if c.Op == "update" && (value(c.New, "note") == nil || *value(c.New, "note") != "lost update") {
			t.Fatalf("the lost update reads %+v", c.New)
		}
		return "ledger " + c.Op + " " + *id
	case "nokey":
		if len(c.Key) != 0 || c.Old != nil || value(c.New, "v") == nil {
			t.Fatalf("the keyless update reads %+v", c)
		}
		return "nokey " + c.Op + " " + *value(c.New, "v")
	case `Odd "Name"`:
		want := map[string]string{"a b": "7", "x]:y": `{it's,"a b"}`, "flag": "t", "n": "1.50"}
		types := map[string]string{"a b": "integer", "x]:y": "text[]", "flag": "boolean", "n": "numeric"}
		for name, v := range want {
			if got := value(c.New, name); got == nil || *got != v {
				t.Fatalf("column %q of the odd insert reads %v, want %q (%+v)", name, got, v, c.New)
			}
		}
		for _, col := range c.New {
			if types[col.Name] != col.Type {
				t.Fatalf("column %q has type %q, want %q", col.Name, col.Type, types[col.Name])
			}
		}
		return `Odd "Name" ` + c.Op + " " + *value(c.New, "a b")
	}
	t.Fatalf("a change of a table the test never wrote: %+v", c)
	return ""
}

func value(cols []lostxact.Column, name string) *string {
	for _, c := range cols {
		if c.Name == name {
			return c.Value
		}
	}
	return nil
}

// TestKeepWithoutAStandby: a primary without a geo-secondary gets no slot, and one left from before is dropped,
// so it keeps no WAL.
func TestKeepWithoutAStandby(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	p := connect(t, ctx, pgtest.NewPrimary(t))
	k, err := lostxact.Keep(ctx, p)
	if err != nil || k.Standbys != 0 || k.Dropped || k.At != 0 {
		t.Fatalf("Keep: %+v %v, want nothing done", k, err)
	}
	if err := lostxact.Prepare(ctx, p); err != nil {
		t.Fatal(err)
	}
	if err := lostxact.Prepare(ctx, p); err != nil {
		t.Fatalf("Prepare again: %v", err)
	}
	if k, err := lostxact.Keep(ctx, p); err != nil || !k.Dropped {
		t.Fatalf("Keep: %+v %v, want the slot dropped", k, err)
	}
	var slots int
	if err := p.QueryRow(ctx, "SELECT count(*) FROM pg_replication_slots").Scan(&slots); err != nil || slots != 0 {
		t.Fatalf("%d slots (%v), want none", slots, err)
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
