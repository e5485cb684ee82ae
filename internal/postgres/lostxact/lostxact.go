// Package lostxact finds the transactions a forced failover lost: those the old primary committed after the point
// where the new primary's timeline forked off its own, with each of their changes, decoded from the old primary's
// own WAL before pg_rewind throws it away.
//
// The WAL is kept for it by a logical replication slot (pgoutput, over a publication of all tables) on the primary,
// which fogo advances to what the geo-secondary has flushed, never further: whatever the old primary committed
// that the new one did not receive lies past the slot. After the failover the old primary is started in isolation
// and the slot is peeked (nothing is consumed) from there to the end of its WAL; the transactions whose commit
// record ends past the divergence point are the lost ones (a commit the new primary replayed ends before it).
package lostxact

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/fogo-db/fogo/internal/postgres/logrepl"
	"github.com/fogo-db/fogo/internal/postgres/lsn"
)

// Slot and Publication are the names fogo's lost-transaction slot and its publication have in each database.
const (
	Slot        = "fogo_lost_txns"
	Publication = "fogo_lost_txns"
)

// Txn is one transaction the old primary committed that the new primary never received.
type Txn struct {
	XID        uint32    `json:"xid"`
	CommitLSN  lsn.LSN   `json:"commitLsn"`
	CommitTime time.Time `json:"commitTime"`
	Changes    []Change  `json:"changes"`
}

// Change is one row change (or a truncate) of a lost transaction. Values are PostgreSQL's text form; a nil value is
// NULL. Old holds what the replica identity logged (the key, or the whole row with REPLICA IDENTITY FULL).
type Change struct {
	Schema string             `json:"schema"`
	Table  string             `json:"table"`
	Op     string             `json:"op"` // insert, update, delete, truncate
	Key    []string           `json:"key,omitempty"`
	Old    map[string]*string `json:"old,omitempty"`
	New    map[string]*string `json:"new,omitempty"`
}

// Prepare makes the publication and the slot in conn's database when they are absent: from then on the primary
// keeps every WAL record past the slot. It must run on a primary.
func Prepare(ctx context.Context, conn *pgx.Conn) error {
	var pub bool
	if err := conn.QueryRow(ctx, "SELECT EXISTS (SELECT 1 FROM pg_publication WHERE pubname = $1)", Publication).Scan(&pub); err != nil {
		return fmt.Errorf("lost-transaction publication: %w", err)
	}
	if !pub {
		if _, err := conn.Exec(ctx, "CREATE PUBLICATION "+Publication+" FOR ALL TABLES"); err != nil && !isDuplicate(err) {
			return fmt.Errorf("create the lost-transaction publication: %w", err)
		}
	}
	var slot bool
	if err := conn.QueryRow(ctx, "SELECT EXISTS (SELECT 1 FROM pg_replication_slots WHERE slot_name = $1)", Slot).Scan(&slot); err != nil {
		return fmt.Errorf("lost-transaction slot: %w", err)
	}
	if !slot {
		if _, err := conn.Exec(ctx, "SELECT pg_create_logical_replication_slot($1, 'pgoutput')", Slot); err != nil && !isDuplicate(err) {
			return fmt.Errorf("create the lost-transaction slot: %w", err)
		}
	}
	return nil
}

func isDuplicate(err error) bool {
	var pgErr *pgconn.PgError
	return errors.As(err, &pgErr) && pgErr.Code == "42710" // duplicate_object: made meanwhile
}

// Advance moves the slot forward to upTo (what the geo-secondary has flushed); a position the slot has passed
// already leaves it where it is. It returns the slot's position after.
func Advance(ctx context.Context, conn *pgx.Conn, upTo lsn.LSN) (lsn.LSN, error) {
	var cur string
	if err := conn.QueryRow(ctx, "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = $1", Slot).Scan(&cur); err != nil {
		return 0, fmt.Errorf("read the lost-transaction slot: %w", err)
	}
	at, err := lsn.Parse(cur)
	if err != nil {
		return 0, err
	}
	if upTo <= at {
		return at, nil
	}
	var moved string
	if err := conn.QueryRow(ctx, "SELECT end_lsn::text FROM pg_replication_slot_advance($1, $2::text::pg_lsn)", Slot, upTo.String()).Scan(&moved); err != nil {
		return at, fmt.Errorf("advance the lost-transaction slot to %s: %w", upTo, err)
	}
	return lsn.Parse(moved)
}

// Divergence reads, on the new primary, where its history left the old primary's timeline oldTimeline: the
// switch point its timeline history file records (what pg_rewind also reads).
func Divergence(ctx context.Context, newPrimary *pgx.Conn, oldTimeline uint32) (lsn.LSN, error) {
	// The timeline the new primary writes on: its WAL file's name starts with it (pg_control_checkpoint() names it
	// only after the first checkpoint following the promotion).
	var walFile string
	if err := newPrimary.QueryRow(ctx, "SELECT pg_walfile_name(pg_current_wal_lsn())").Scan(&walFile); err != nil {
		return 0, fmt.Errorf("read the new primary's timeline: %w", err)
	}
	t, err := strconv.ParseUint(walFile[:min(8, len(walFile))], 16, 32)
	if err != nil {
		return 0, fmt.Errorf("read the new primary's timeline from %q: %w", walFile, err)
	}
	tli := uint32(t)
	if tli <= oldTimeline {
		return 0, fmt.Errorf("the new primary is on timeline %d, not past the old primary's %d", tli, oldTimeline)
	}
	var history string
	if err := newPrimary.QueryRow(ctx, "SELECT pg_read_file($1)", fmt.Sprintf("pg_wal/%08X.history", tli)).Scan(&history); err != nil {
		return 0, fmt.Errorf("read the new primary's timeline history: %w", err)
	}
	return switchPoint(history, oldTimeline)
}

// switchPoint finds timeline's line ("tli<TAB>switchpoint<TAB>reason") in a timeline history file.
func switchPoint(history string, timeline uint32) (lsn.LSN, error) {
	for _, line := range strings.Split(history, "\n") {
		f := strings.Fields(line)
		if len(f) < 2 || strings.HasPrefix(f[0], "#") {
			continue
		}
		if t, err := strconv.ParseUint(f[0], 10, 32); err == nil && uint32(t) == timeline {
			return lsn.Parse(f[1])
		}
	}
	return 0, fmt.Errorf("timeline %d is not in the new primary's history", timeline)
}

// Read decodes, on the old primary, the transactions in the slot's WAL whose commit record ends past divergence,
// in commit order. Nothing is consumed: it can be read again.
func Read(ctx context.Context, conn *pgx.Conn, divergence lsn.LSN) ([]Txn, error) {
	rows, err := conn.Query(ctx, "SELECT data FROM pg_logical_slot_peek_binary_changes($1, NULL, NULL, "+
		"'proto_version', '1', 'publication_names', $2)", Slot, Publication)
	if err != nil {
		return nil, fmt.Errorf("read the lost-transaction slot: %w", err)
	}
	defer rows.Close()
	d := decoder{rels: map[uint32]logrepl.Relation{}}
	for rows.Next() {
		var data []byte
		if err := rows.Scan(&data); err != nil {
			return nil, err
		}
		m, err := logrepl.Decode(data)
		if err != nil {
			return nil, fmt.Errorf("decode the old primary's WAL: %w", err)
		}
		if err := d.add(m, divergence); err != nil {
			return nil, err
		}
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("read the lost-transaction slot: %w", err)
	}
	return d.lost, nil
}

// decoder assembles pgoutput messages into transactions.
type decoder struct {
	rels map[uint32]logrepl.Relation
	cur  *Txn
	lost []Txn
}

func (d *decoder) add(m any, divergence lsn.LSN) error {
	switch v := m.(type) {
	case logrepl.Relation:
		d.rels[v.ID] = v
	case logrepl.Begin:
		d.cur = &Txn{XID: v.XID, CommitLSN: v.FinalLSN, CommitTime: v.CommitTime}
	case logrepl.Commit:
		if d.cur == nil {
			return errors.New("decode the old primary's WAL: a commit without its begin")
		}
		if v.EndLSN > divergence {
			d.lost = append(d.lost, *d.cur)
		}
		d.cur = nil
	case logrepl.Insert:
		return d.change(v.RelationID, "insert", nil, v.New)
	case logrepl.Update:
		return d.change(v.RelationID, "update", v.Old, v.New)
	case logrepl.Delete:
		return d.change(v.RelationID, "delete", v.Old, nil)
	case logrepl.Truncate:
		for _, id := range v.RelationIDs {
			if err := d.change(id, "truncate", nil, nil); err != nil {
				return err
			}
		}
	}
	return nil
}

func (d *decoder) change(rel uint32, op string, old, new logrepl.Tuple) error {
	if d.cur == nil {
		return fmt.Errorf("decode the old primary's WAL: a %s outside a transaction", op)
	}
	r, ok := d.rels[rel]
	if !ok {
		return fmt.Errorf("decode the old primary's WAL: a %s of relation %d, never described", op, rel)
	}
	c := Change{Schema: r.Namespace, Table: r.Name, Op: op, Old: row(r, old), New: row(r, new)}
	for _, col := range r.Columns {
		if col.Key {
			c.Key = append(c.Key, col.Name)
		}
	}
	d.cur.Changes = append(d.cur.Changes, c)
	return nil
}

// row maps a tuple to its relation's column names (nil for no tuple). An unchanged TOASTed value is left out.
func row(r logrepl.Relation, t logrepl.Tuple) map[string]*string {
	if t == nil {
		return nil
	}
	out := map[string]*string{}
	for i, v := range t {
		if i >= len(r.Columns) || v.Kind == logrepl.Unchanged {
			continue
		}
		if v.Kind == logrepl.Null {
			out[r.Columns[i].Name] = nil
			continue
		}
		s := string(v.Data)
		out[r.Columns[i].Name] = &s
	}
	return out
}
