// Package lostxact finds the transactions a forced failover lost: those the old primary committed after the point
// where the new primary's timeline forked off its own, with each of their changes, decoded from the old primary's
// own WAL before pg_rewind throws it away.
//
// The WAL is kept for it by a logical replication slot (the test_decoding plugin, which needs no publication, so
// it puts no replica-identity demand on the user's tables) on every primary that has a geo-secondary. fogo advances
// it to what the geo-secondary has replayed, never further (Keep): whatever the old primary committed that the new
// one did not receive lies past the slot. After the failover the old primary is started in isolation, the slot is
// moved to the divergence point read from the new primary's timeline history, and the rest is decoded (Read). A
// commit record starts at or past the divergence point exactly when the new primary never replayed it.
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

	"github.com/fogo-db/fogo/internal/postgres/lsn"
)

// Slot is the name of fogo's lost-transaction slot in each primary. It starts with "fogo_", so the slot files a
// base backup or a rewind copies are dropped with fogo's other slots.
const Slot = "fogo_lost_txns"

// Txn is one transaction the old primary committed that the new primary never received.
type Txn struct {
	XID uint32 `json:"xid"`
	// CommitLSN is the end of its commit record on the old primary's timeline.
	CommitLSN  lsn.LSN   `json:"commitLsn"`
	CommitTime time.Time `json:"commitTime"`
	// ChangeCount is the number of its changes; Changes holds them unless the read's limits were reached first.
	ChangeCount int      `json:"changeCount"`
	Changes     []Change `json:"changes,omitempty"`
}

// Change is one row change (or a truncate) of a lost transaction.
type Change struct {
	Schema string `json:"schema"`
	Table  string `json:"table"`
	Op     string `json:"op"` // insert, update, delete, truncate
	// Key names the table's replica identity columns (its primary key by default), read on the old primary; empty
	// when it has none.
	Key []string `json:"key,omitempty"`
	// Old is what the replica identity logged of the row before (its key, or the whole row with REPLICA IDENTITY
	// FULL); an update logs it only when the key changed. New is the row after.
	Old []Column `json:"old,omitempty"`
	New []Column `json:"new,omitempty"`
	// AlsoTruncated are the other tables one TRUNCATE statement emptied with this one (quoted and qualified);
	// TruncateFlags its "restart_seqs" or "cascade".
	AlsoTruncated []string `json:"alsoTruncated,omitempty"`
	TruncateFlags string   `json:"truncateFlags,omitempty"`
}

// Column is one column value in PostgreSQL's text form; a nil Value is NULL. Unchanged marks a TOASTed value an
// update did not change, which the WAL does not carry.
type Column struct {
	Name      string  `json:"name"`
	Type      string  `json:"type"`
	Value     *string `json:"value"`
	Unchanged bool    `json:"unchanged,omitempty"`
}

// Prepare makes the slot in conn's database when it is absent: from then on the primary keeps every WAL record
// past it. It must run on a primary. Making a logical slot waits for the transactions running at that moment to
// end, so ctx should be bounded.
func Prepare(ctx context.Context, conn *pgx.Conn) error {
	var slot bool
	if err := conn.QueryRow(ctx, "SELECT EXISTS (SELECT 1 FROM pg_replication_slots WHERE slot_name = $1)", Slot).Scan(&slot); err != nil {
		return fmt.Errorf("lost-transaction slot: %w", err)
	}
	if !slot {
		return create(ctx, conn)
	}
	return nil
}

// create makes the slot (one made meanwhile is fine).
func create(ctx context.Context, conn *pgx.Conn) error {
	if _, err := conn.Exec(ctx, "SELECT pg_create_logical_replication_slot($1, 'test_decoding')", Slot); err != nil && !isDuplicate(err) {
		return fmt.Errorf("create the lost-transaction slot: %w", err)
	}
	return nil
}

func isDuplicate(err error) bool {
	var pgErr *pgconn.PgError
	return errors.As(err, &pgErr) && pgErr.Code == "42710" // duplicate_object: made meanwhile
}

// Kept is what Keep did on one primary.
type Kept struct {
	// Standbys is the number of physical slots (geo-secondaries); Connected of them streamed.
	Standbys, Connected int
	// At is the slot's position after (0 without a slot).
	At lsn.LSN
	// Dropped: the primary has no standby any more, and its slot was dropped.
	Dropped bool
}

// Keep is the slot's upkeep on a primary, run periodically: with a geo-secondary (a physical slot), the slot exists
// and follows what every geo-secondary has replayed (the end of a whole record, reported by its walsender); while
// one is not connected, it stays where it is. Without one, there is no failover to report on, and a slot left
// from before is dropped so that it keeps no WAL.
func Keep(ctx context.Context, conn *pgx.Conn) (Kept, error) {
	var k Kept
	var replayed, slot *string // slot: the lost-transaction slot's wal_status, NULL when it does not exist
	err := conn.QueryRow(ctx, `SELECT count(*), count(r.replay_lsn), min(r.replay_lsn)::text,
			(SELECT coalesce(wal_status, '') FROM pg_replication_slots WHERE slot_name = $1)
		FROM pg_replication_slots s LEFT JOIN pg_stat_replication r ON r.pid = s.active_pid
		WHERE s.slot_type = 'physical'`, Slot).Scan(&k.Standbys, &k.Connected, &replayed, &slot)
	if err != nil {
		return k, fmt.Errorf("read the geo-secondaries' progress: %w", err)
	}
	drop := func() (bool, error) {
		var dropped bool
		err := conn.QueryRow(ctx, `SELECT count(pg_drop_replication_slot(slot_name)) > 0 FROM pg_replication_slots
			WHERE slot_name = $1 AND NOT active`, Slot).Scan(&dropped)
		if err != nil {
			return false, fmt.Errorf("drop the lost-transaction slot: %w", err)
		}
		return dropped, nil
	}
	switch {
	case k.Standbys == 0:
		if slot != nil {
			k.Dropped, err = drop()
		}
		return k, err
	case slot != nil && *slot == "lost":
		// A slot max_slot_wal_keep_size invalidated keeps nothing: it is made again from here.
		if dropped, err := drop(); err != nil {
			return k, err
		} else if dropped {
			slot = nil
		}
	}
	if slot == nil {
		if err := create(ctx, conn); err != nil {
			return k, err
		}
	}
	if k.Connected < k.Standbys || replayed == nil {
		at, err := slotAt(ctx, conn)
		k.At = at
		return k, err
	}
	upTo, err := lsn.Parse(*replayed)
	if err != nil {
		return k, err
	}
	k.At, err = Advance(ctx, conn, upTo)
	return k, err
}

// slotAt is the slot's confirmed position.
func slotAt(ctx context.Context, conn *pgx.Conn) (lsn.LSN, error) {
	var cur *string
	if err := conn.QueryRow(ctx, "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = $1", Slot).Scan(&cur); err != nil {
		if errors.Is(err, pgx.ErrNoRows) {
			return 0, ErrNoSlot
		}
		return 0, fmt.Errorf("read the lost-transaction slot: %w", err)
	}
	if cur == nil {
		return 0, errors.New("the lost-transaction slot has no position (it was invalidated: its WAL is gone)")
	}
	return lsn.Parse(*cur)
}

// ErrNoSlot: the instance has no lost-transaction slot (it was a primary without a geo-secondary, or its slot was
// never made).
var ErrNoSlot = errors.New("the old primary has no lost-transaction slot")

// Advance moves the slot forward to upTo, which must be the end of a WAL record (a standby's replay position, or
// a timeline's switch point); a position the slot has passed already leaves it where it is. It returns the
// slot's position after.
func Advance(ctx context.Context, conn *pgx.Conn, upTo lsn.LSN) (lsn.LSN, error) {
	at, err := slotAt(ctx, conn)
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

// Limits bound what Read keeps in memory: past them, transactions and changes are counted, not kept.
type Limits struct {
	Transactions int // listed transactions
	Changes      int // kept changes, over all transactions
}

// DefaultLimits keep about 100,000 changes (some tens of MB).
var DefaultLimits = Limits{Transactions: 100_000, Changes: 100_000}

// Result is what Read found on the old primary.
type Result struct {
	// Divergence is where the new primary's timeline left the old primary's; SlotAt where the slot stood before
	// Read moved it there. End is the end of the old primary's WAL as it was read.
	Divergence lsn.LSN `json:"divergence"`
	SlotAt     lsn.LSN `json:"slotAt"`
	End        lsn.LSN `json:"end"`
	// Transactions are the lost transactions in commit order, up to the limits.
	Transactions []Txn `json:"transactions"`
	// TransactionCount and ChangeCount count every lost transaction and change, listed or not.
	TransactionCount int `json:"transactionCount"`
	ChangeCount      int `json:"changeCount"`
	// Truncated: the limits were reached, so some transactions or changes are counted but not listed.
	Truncated bool `json:"truncated,omitempty"`
	// Incomplete says why some lost transactions may be missing from the count (the slot had passed the
	// divergence point); "" when the report is whole.
	Incomplete string `json:"incomplete,omitempty"`
}

// Read decodes, on the old primary (running in isolation), the transactions whose commit record starts at or past
// divergence: the slot is moved to divergence first (an idempotent step, so a read that was interrupted can be
// done again with the same result), then its changes are peeked, in commit order.
func Read(ctx context.Context, conn *pgx.Conn, divergence lsn.LSN, limits Limits) (Result, error) {
	res := Result{Divergence: divergence, Transactions: []Txn{}}
	at, err := slotAt(ctx, conn)
	if err != nil {
		return res, err
	}
	res.SlotAt = at
	if at > divergence {
		res.Incomplete = fmt.Sprintf("the lost-transaction slot stood at %s, %d bytes past the divergence point %s, "+
			"so transactions that committed between the two are not listed", at, at-divergence, divergence)
	} else if _, err := Advance(ctx, conn, divergence); err != nil {
		return res, err
	}
	if _, err := conn.Exec(ctx, "SET TimeZone = 'UTC'"); err != nil {
		return res, err
	}
	rows, err := conn.Query(ctx, "SELECT lsn::text, xid::text::bigint, data FROM pg_logical_slot_peek_changes($1, NULL, NULL, "+
		"'include-xids', '1', 'include-timestamp', '1', 'skip-empty-xacts', '1')", Slot)
	if err != nil {
		return res, fmt.Errorf("read the lost-transaction slot: %w", err)
	}
	d := assembler{res: &res, limits: limits, divergence: divergence}
	for rows.Next() {
		var at, data string
		var xid int64
		if err := rows.Scan(&at, &xid, &data); err != nil {
			rows.Close()
			return res, err
		}
		if err := d.add(at, uint32(xid), data); err != nil {
			rows.Close()
			return res, err
		}
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return res, fmt.Errorf("read the lost-transaction slot: %w", err)
	}
	var end string
	if err := conn.QueryRow(ctx, "SELECT pg_current_wal_lsn()::text").Scan(&end); err != nil {
		return res, err
	}
	if res.End, err = lsn.Parse(end); err != nil {
		return res, err
	}
	return res, addKeys(ctx, conn, res.Transactions)
}

// assembler groups test_decoding's lines into transactions, within the limits.
type assembler struct {
	res        *Result
	limits     Limits
	divergence lsn.LSN
	cur        *Txn
	kept       int
}

func (d *assembler) add(at string, xid uint32, data string) error {
	ev, err := parseLine(data)
	if err != nil {
		return fmt.Errorf("decode the old primary's WAL: %w", err)
	}
	switch ev.kind {
	case "begin":
		d.cur = &Txn{XID: xid}
	case "change":
		if d.cur == nil {
			return errors.New("decode the old primary's WAL: a change outside a transaction")
		}
		d.cur.ChangeCount++
		if d.kept < d.limits.Changes && len(d.res.Transactions) < d.limits.Transactions {
			d.cur.Changes = append(d.cur.Changes, ev.change)
			d.kept++
		} else {
			d.res.Truncated = true
		}
	case "commit":
		if d.cur == nil {
			return errors.New("decode the old primary's WAL: a commit without its begin")
		}
		end, err := lsn.Parse(at)
		if err != nil {
			return err
		}
		d.cur.CommitLSN, d.cur.CommitTime = end, ev.time
		// The slot starts at the divergence point, so every commit decoded lies past it; the check guards the
		// one promise the report makes.
		if end > d.divergence {
			d.res.TransactionCount++
			d.res.ChangeCount += d.cur.ChangeCount
			if len(d.res.Transactions) < d.limits.Transactions {
				d.res.Transactions = append(d.res.Transactions, *d.cur)
			} else {
				d.res.Truncated = true
			}
		}
		d.cur = nil
	}
	return nil
}

// addKeys names each changed table's replica identity columns, read from the old primary's catalog.
func addKeys(ctx context.Context, conn *pgx.Conn, txns []Txn) error {
	keys := map[[2]string][]string{}
	for i := range txns {
		for j := range txns[i].Changes {
			c := &txns[i].Changes[j]
			name := [2]string{c.Schema, c.Table}
			k, ok := keys[name]
			if !ok {
				rows, err := conn.Query(ctx, `SELECT a.attname FROM pg_class c
					JOIN pg_index i ON i.indrelid = c.oid AND (i.indisreplident OR (i.indisprimary AND c.relreplident = 'd'))
					JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = ANY (i.indkey)
					WHERE c.oid = to_regclass(format('%I.%I', $1::text, $2::text))
					ORDER BY array_position(i.indkey::int2[], a.attnum)`, c.Schema, c.Table)
				if err != nil {
					return fmt.Errorf("read the key of %s.%s: %w", c.Schema, c.Table, err)
				}
				k, err = pgx.CollectRows(rows, pgx.RowTo[string])
				if err != nil {
					return fmt.Errorf("read the key of %s.%s: %w", c.Schema, c.Table, err)
				}
				keys[name] = k
			}
			if c.Op != "truncate" {
				c.Key = k
			}
		}
	}
	return nil
}
