package target

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"

	"github.com/fogo-db/fogo/internal/postgres/lsn"
)

// Per-table state of a link, kept in the target next to the checkpoint: the source position a table's contents
// were last synchronised at (the link skips that table's changes at or below it) or why the table failed.
const tablesTable = `"_fogo_link_tables"`

// TableState is what the target records about one linked table.
type TableState struct {
	SyncedAt lsn.LSN // contents equal the source as of this position
	Failed   string  // non-empty: the table stopped with this error; the link skips its changes
}

// ensureTableStates creates the table state table, once per store.
func (s *Store) ensureTableStates(ctx context.Context) error {
	if s.tableStatesReady.Load() {
		return nil
	}
	_, err := s.db.ExecContext(ctx, `CREATE TABLE IF NOT EXISTS `+tablesTable+` (link VARCHAR NOT NULL, source VARCHAR NOT NULL,
		synced_lsn VARCHAR NOT NULL, failed VARCHAR NOT NULL, updated_at VARCHAR NOT NULL, PRIMARY KEY (link, source))`)
	if err != nil {
		return fmt.Errorf("%s: table state table: %w", s.dialect.name(), err)
	}
	s.tableStatesReady.Store(true)
	return nil
}

// TableStates returns the recorded state of each of link's tables, by source table ("schema.table").
func (s *Store) TableStates(ctx context.Context, link string) (map[string]TableState, error) {
	if err := s.ensureTableStates(ctx); err != nil {
		return nil, err
	}
	rows, err := s.db.QueryContext(ctx, `SELECT source, synced_lsn, failed FROM `+tablesTable+` WHERE link = $1`, link)
	if err != nil {
		return nil, fmt.Errorf("%s: read table states: %w", s.dialect.name(), err)
	}
	defer rows.Close()
	out := map[string]TableState{}
	for rows.Next() {
		var src, at, failed string
		if err := rows.Scan(&src, &at, &failed); err != nil {
			return nil, err
		}
		if src == resyncKey {
			continue // not a table: see ResyncPending
		}
		l, err := lsn.Parse(at)
		if err != nil {
			return nil, fmt.Errorf("table state of %s: %w", src, err)
		}
		out[src] = TableState{SyncedAt: l, Failed: failed}
	}
	return out, rows.Err()
}

// SetTableStates records the state of some of link's tables in one transaction.
func (s *Store) SetTableStates(ctx context.Context, link string, states map[string]TableState) error {
	if err := s.ensureTableStates(ctx); err != nil {
		return err
	}
	tx, err := s.beginWrite(ctx, s.db)
	if err != nil {
		return err
	}
	defer tx.Rollback()
	for src, st := range states {
		if err := s.setTableState(ctx, tx, link, src, st); err != nil {
			return err
		}
	}
	return tx.Commit()
}

func (s *Store) setTableState(ctx context.Context, tx *sql.Tx, link, src string, st TableState) error {
	_, err := tx.ExecContext(ctx, `INSERT INTO `+tablesTable+` (link, source, synced_lsn, failed, updated_at)
		VALUES ($1, $2, $3, $4, CAST(now() AS VARCHAR))
		ON CONFLICT (link, source) DO UPDATE SET synced_lsn = excluded.synced_lsn, failed = excluded.failed,
			updated_at = excluded.updated_at`, link, src, st.SyncedAt.String(), st.Failed)
	if err != nil {
		return fmt.Errorf("%s: record the state of %s: %w", s.dialect.name(), src, err)
	}
	return nil
}

// ForgetTables removes link's recorded state of the given source tables (all of them with none given): a table
// added again later is synchronised afresh.
func (s *Store) ForgetTables(ctx context.Context, link string, sources ...string) error {
	if err := s.ensureTableStates(ctx); err != nil {
		return err
	}
	if len(sources) == 0 {
		_, err := s.db.ExecContext(ctx, `DELETE FROM `+tablesTable+` WHERE link = $1`, link)
		return err
	}
	for _, src := range sources {
		if _, err := s.db.ExecContext(ctx, `DELETE FROM `+tablesTable+` WHERE link = $1 AND source = $2`, link, src); err != nil {
			return fmt.Errorf("%s: forget the state of %s: %w", s.dialect.name(), src, err)
		}
	}
	return nil
}

// resyncKey is the row of the table state table that records a resynchronisation in progress (no table's key:
// those are "schema.table").
const resyncKey = "*resync"

// ResyncPending reports whether a resynchronisation of link's tables was started and not finished, why, and the
// consistent point of the slot it started from (zero while that slot may not exist yet).
func (s *Store) ResyncPending(ctx context.Context, link string) (pending bool, at lsn.LSN, reason string, err error) {
	if err := s.ensureTableStates(ctx); err != nil {
		return false, 0, "", err
	}
	var v string
	err = s.db.QueryRowContext(ctx, `SELECT synced_lsn, failed FROM `+tablesTable+` WHERE link = $1 AND source = $2`, link, resyncKey).Scan(&v, &reason)
	if errors.Is(err, sql.ErrNoRows) {
		return false, 0, "", nil
	}
	if err != nil {
		return false, 0, "", fmt.Errorf("%s: read the pending resynchronisation: %w", s.dialect.name(), err)
	}
	at, err = lsn.Parse(v)
	return true, at, reason, err
}

// SetResyncPending records durably that link's tables are being resynchronised (reason) from a slot whose
// consistent point is at (zero before the slot exists): until FinishResync, a restart finishes it.
func (s *Store) SetResyncPending(ctx context.Context, link string, at lsn.LSN, reason string) error {
	return s.SetTableStates(ctx, link, map[string]TableState{resyncKey: {SyncedAt: at, Failed: reason}})
}

// FinishResync ends link's pending resynchronisation: the checkpoint becomes cp (it never moves back) and the
// record of the resynchronisation goes, in one transaction.
func (s *Store) FinishResync(ctx context.Context, link string, cp lsn.LSN) error {
	if err := s.ensureTableStates(ctx); err != nil {
		return err
	}
	if err := s.ensureParts(ctx); err != nil {
		return err
	}
	old, err := s.Checkpoint(ctx, link)
	if err != nil {
		return err
	}
	tx, err := s.beginWrite(ctx, s.db)
	if err != nil {
		return err
	}
	defer tx.Rollback()
	if cp > old {
		if err := writeCheckpoint(ctx, tx, link, cp); err != nil {
			return fmt.Errorf("%s: write checkpoint: %w", s.dialect.name(), err)
		}
	}
	if _, err := tx.ExecContext(ctx, `DELETE FROM `+tablesTable+` WHERE link = $1 AND source = $2`, link, resyncKey); err != nil {
		return fmt.Errorf("%s: end the resynchronisation: %w", s.dialect.name(), err)
	}
	if err := s.forgetPart(ctx, tx, link); err != nil { // every table was merged afresh
		return err
	}
	return tx.Commit()
}

var stagingSeq atomic.Int64

// MergeTable makes t equal to a snapshot of its source table, merged by primary key in one target transaction:
// every row of the snapshot (read with next until it returns nil) is upserted, every row whose key the snapshot
// lacks is deleted, and the table's state becomes "synchronised at syncedAt". Readers see the table before or
// after, never emptied; rows that did not change stay as they were. A keyless table is emptied and filled again,
// in the same one transaction.
func (s *Store) MergeTable(ctx context.Context, link, source string, t *Table, syncedAt lsn.LSN, next func() ([]Value, error)) (int, error) {
	if err := s.ensureTableStates(ctx); err != nil {
		return 0, err
	}
	conn, err := s.db.Conn(ctx) // one connection: the bulk path and the staging table live in the transaction
	if err != nil {
		return 0, fmt.Errorf("%s: connection: %w", s.dialect.name(), err)
	}
	defer conn.Close()
	tx, err := s.beginWrite(ctx, conn)
	if err != nil {
		return 0, err
	}
	defer tx.Rollback()
	staging := qi(fmt.Sprintf("_fogo_sync_keys_%d", stagingSeq.Add(1)))
	idx := keyIndexes(t) // the staging table's columns, in this order
	keys := make([]string, len(idx))
	for i, k := range idx {
		keys[i] = qi(t.Columns[k].Name)
	}
	if t.Keyless {
		// No key to merge by: the table's rows become the snapshot's, in this one transaction.
		if _, err := tx.ExecContext(ctx, "DELETE FROM "+t.qualified()); err != nil {
			return 0, fmt.Errorf("%s: empty %s: %w", s.dialect.name(), t.qualified(), err)
		}
	} else if _, err := tx.ExecContext(ctx, "CREATE TEMP TABLE "+staging+" AS SELECT "+strings.Join(keys, ", ")+" FROM "+t.qualified()+" WHERE 1 = 0"); err != nil {
		return 0, fmt.Errorf("%s: staging table for %s: %w", s.dialect.name(), t.qualified(), err)
	}
	n := 0
	var batch []Change
	flush := func() error {
		if len(batch) == 0 {
			return nil
		}
		if err := s.applyAll(ctx, conn, tx, batch); err != nil {
			return err
		}
		if t.Keyless {
			batch = batch[:0]
			return nil
		}
		if err := s.stageKeys(ctx, tx, staging, t, idx, batch); err != nil {
			return err
		}
		batch = batch[:0]
		return nil
	}
	for {
		row, err := next()
		if err != nil {
			return n, err
		}
		if row == nil {
			break
		}
		n++
		batch = append(batch, Change{Kind: Insert, Table: t, New: row})
		if len(batch) >= insertChunk {
			if err := flush(); err != nil {
				return n, err
			}
		}
	}
	if err := flush(); err != nil {
		return n, err
	}
	if !t.Keyless {
		match := make([]string, len(keys))
		for i, k := range keys {
			match[i] = "k." + k + " IS NOT DISTINCT FROM " + t.qualified() + "." + k
		}
		if _, err := tx.ExecContext(ctx, "DELETE FROM "+t.qualified()+" WHERE NOT EXISTS (SELECT 1 FROM "+staging+" k WHERE "+strings.Join(match, " AND ")+")"); err != nil {
			return n, fmt.Errorf("%s: delete rows of %s the source no longer has: %w", s.dialect.name(), t.qualified(), err)
		}
		if _, err := tx.ExecContext(ctx, "DROP TABLE "+staging); err != nil {
			return n, fmt.Errorf("%s: drop staging table: %w", s.dialect.name(), err)
		}
	}
	if err := s.setTableState(ctx, tx, link, source, TableState{SyncedAt: syncedAt}); err != nil {
		return n, err
	}
	if err := tx.Commit(); err != nil {
		return n, fmt.Errorf("%s: commit the merge into %s: %w", s.dialect.name(), t.qualified(), err)
	}
	return n, nil
}

// stageKeys records the keys (the columns at idx) of a batch of snapshot rows in the staging table.
func (s *Store) stageKeys(ctx context.Context, tx *sql.Tx, staging string, t *Table, idx []int, batch []Change) error {
	var rows []string
	var args []any
	for _, c := range batch {
		vals := make([]string, len(idx))
		for j, i := range idx {
			v := Value{Null: true}
			if i < len(c.New) {
				v = c.New[i]
			}
			ph, err := s.arg(&args, t.Columns[i], v)
			if err != nil {
				return fmt.Errorf("%s: %w", t.qualified(), err)
			}
			vals[j] = ph
		}
		rows = append(rows, "("+strings.Join(vals, ", ")+")")
	}
	if _, err := tx.ExecContext(ctx, "INSERT INTO "+staging+" VALUES "+strings.Join(rows, ", "), args...); err != nil {
		return fmt.Errorf("%s: stage keys of %s: %w", s.dialect.name(), t.qualified(), err)
	}
	return nil
}
