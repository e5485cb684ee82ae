package logrepl_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/fogo-db/fogo/internal/postgres/logrepl"
	"github.com/fogo-db/fogo/internal/postgres/lsn"
	"github.com/fogo-db/fogo/internal/testutil/pgtest"
)

// TestStream runs the protocol against a real PostgreSQL 15: a slot with an exported snapshot, a stream of every
// kind of change (a TOASTed value left unchanged by an update included), a logical message, and a status update
// that advances the slot.
func TestStream(t *testing.T) {
	pg := pgtest.NewPrimary(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	sql, err := pg.Connect(ctx, "postgres")
	if err != nil {
		t.Fatal(err)
	}
	defer sql.Close(ctx)
	exec := func(q string) {
		t.Helper()
		if _, err := sql.Exec(ctx, q); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
	exec("CREATE TABLE t(id int PRIMARY KEY, note text, big text, n numeric, flag bool, at timestamptz, tags int[])")
	exec("CREATE PUBLICATION pub FOR TABLE t")
	exec("INSERT INTO t(id, note) VALUES (1, 'before the slot')")

	rc, err := logrepl.Connect(ctx, fmt.Sprintf("host=127.0.0.1 port=%d user=%s password=%s dbname=postgres sslmode=disable",
		pg.Port, pg.SuperUser, pg.SuperPassword))
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close(context.Background())
	sys, err := rc.IdentifySystem(ctx)
	if err != nil || sys.Timeline != 1 || sys.XLogPos == 0 || sys.DBName != "postgres" {
		t.Fatalf("IDENTIFY_SYSTEM: %+v %v", sys, err)
	}
	slot, err := rc.CreateSlot(ctx, "s1", false, true)
	if err != nil || slot.SnapshotName == "" || slot.ConsistentPoint == 0 {
		t.Fatalf("CREATE_REPLICATION_SLOT: %+v %v", slot, err)
	}

	// The exported snapshot sees exactly what was committed before the slot.
	exec("INSERT INTO t(id, note) VALUES (2, 'after the slot')")
	snap, err := pg.Connect(ctx, "postgres")
	if err != nil {
		t.Fatal(err)
	}
	var n int
	if _, err := snap.Exec(ctx, "BEGIN ISOLATION LEVEL REPEATABLE READ"); err != nil {
		t.Fatal(err)
	}
	if _, err := snap.Exec(ctx, "SET TRANSACTION SNAPSHOT '"+slot.SnapshotName+"'"); err != nil {
		t.Fatal(err)
	}
	if err := snap.QueryRow(ctx, "SELECT count(*) FROM t").Scan(&n); err != nil || n != 1 {
		t.Fatalf("rows in the exported snapshot: %d %v", n, err)
	}
	snap.Close(ctx)

	if err := rc.StartReplication(ctx, "s1", 0, []string{"pub"}, true); err != nil {
		t.Fatal(err)
	}
	exec(`INSERT INTO t VALUES (3, 'three', (SELECT string_agg(md5(i::text), '') FROM generate_series(1, 2000) i),
		12345.678901234567890, true, '2026-11-22 10:00:00+00', '{1,NULL,3}')`)
	exec("UPDATE t SET note = 'three, updated' WHERE id = 3")
	exec("DELETE FROM t WHERE id = 1")
	exec("TRUNCATE t")
	exec("SELECT pg_logical_emit_message(false, 'fogo', 'hello')")

	var got []any
	var lastEnd lsn.LSN
	deadline := time.Now().Add(30 * time.Second)
	for !sawAll(got) {
		if time.Now().After(deadline) {
			t.Fatalf("stream incomplete: %+v", got)
		}
		rctx, rcancel := context.WithTimeout(ctx, 5*time.Second)
		m, err := rc.Receive(rctx)
		rcancel()
		if err != nil {
			t.Fatal(err)
		}
		x, ok := m.(logrepl.XLogData)
		if !ok {
			continue
		}
		d, err := logrepl.Decode(x.Data)
		if err != nil {
			t.Fatal(err)
		}
		if c, ok := d.(logrepl.Commit); ok {
			lastEnd = c.EndLSN
		}
		got = append(got, d)
	}

	var rel logrepl.Relation
	var ins logrepl.Insert
	var up logrepl.Update
	var del logrepl.Delete
	for _, m := range got {
		switch v := m.(type) {
		case logrepl.Relation:
			rel = v
		case logrepl.Insert:
			ins = v
		case logrepl.Update:
			up = v
		case logrepl.Delete:
			del = v
		}
	}
	if rel.Name != "t" || len(rel.Columns) != 7 || !rel.Columns[0].Key || rel.Columns[1].Key {
		t.Fatalf("relation: %+v", rel)
	}
	if ins.RelationID != rel.ID || string(ins.New[0].Data) != "3" || len(ins.New[2].Data) != 64000 ||
		string(ins.New[3].Data) != "12345.678901234567890" || string(ins.New[4].Data) != "t" ||
		string(ins.New[6].Data) != "{1,NULL,3}" || ins.New[1].Kind != logrepl.Text {
		t.Fatalf("insert: %+v", ins)
	}
	if up.New[2].Kind != logrepl.Unchanged || string(up.New[1].Data) != "three, updated" {
		t.Fatalf("update: the unchanged TOASTed value must be marked Unchanged: %+v", up.New[2])
	}
	if del.OldKind != 'K' || string(del.Old[0].Data) != "1" || del.Old[1].Kind != logrepl.Null {
		t.Fatalf("delete: %+v", del)
	}

	// Confirming the last commit's end advances the slot.
	if err := rc.SendStandbyStatus(ctx, lastEnd, lastEnd, lastEnd, false); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(20 * time.Second); ; {
		var confirmed string
		if err := sql.QueryRow(ctx, "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = 's1'").Scan(&confirmed); err != nil {
			t.Fatal(err)
		}
		if c, _ := lsn.Parse(confirmed); c >= lastEnd {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("confirmed_flush_lsn %s did not reach %s", confirmed, lastEnd)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func sawAll(msgs []any) bool {
	seen := map[string]bool{}
	for _, m := range msgs {
		seen[strings.TrimPrefix(fmt.Sprintf("%T", m), "logrepl.")] = true
	}
	for _, k := range []string{"Begin", "Commit", "Relation", "Insert", "Update", "Delete", "Truncate", "LogicalMessage"} {
		if !seen[k] {
			return false
		}
	}
	return true
}
