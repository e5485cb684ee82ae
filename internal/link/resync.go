package link

// Resynchronisation: resuming a run from its checkpoint, and merging tables afresh by primary key from a new
// slot's snapshot when the slot cannot serve the checkpoint (or a table was added, recreated or failed).

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/fogo-db/fogo/internal/link/target"
	"github.com/fogo-db/fogo/internal/postgres/logrepl"
	"github.com/fogo-db/fogo/internal/postgres/lsn"
)

// resume prepares streaming from checkpoint cp. If the source has no slot for the link (a failover to an
// instance that had no copy of it), or its slot was invalidated (it retained more WAL than
// max_slot_wal_keep_size), every table is synchronised again from a fresh slot's snapshot, merged by primary key;
// a resynchronisation that an earlier run started and did not finish (recorded in the target before the slot
// changed) is finished: every table not yet merged from the new slot's snapshot is merged now. Tables added
// since the last run (no recorded state) are synchronised from a temporary slot's snapshot. It returns the
// checkpoint to stream from.
func (l *Link) resume(ctx context.Context, db *pgx.Conn, rc *logrepl.Conn, tables map[string]*source, states map[string]target.TableState, cp lsn.LSN) (lsn.LSN, error) {
	exists := true
	var walStatus, confirmed *string
	err := db.QueryRow(ctx, "SELECT wal_status, confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = $1", l.slot).Scan(&walStatus, &confirmed)
	if errors.Is(err, pgx.ErrNoRows) {
		exists = false
	} else if err != nil {
		return 0, fmt.Errorf("link %s: read slots: %w", l.cfg.Name, err)
	}
	var confirmedAt lsn.LSN // the slot's confirmed_flush_lsn
	if confirmed != nil {
		if confirmedAt, err = lsn.Parse(*confirmed); err != nil {
			return 0, fmt.Errorf("link %s: slot's confirmed_flush_lsn: %w", l.cfg.Name, err)
		}
	}
	pending, pendingAt, pendingReason, err := l.cfg.Target.ResyncPending(ctx, l.cfg.Name)
	if err != nil {
		return 0, err
	}
	added := map[string]*source{}
	for k, t := range tables {
		_, known := states[k]
		if !known && exists {
			added[k] = t // a table added to the link (again) gets a target table of its current shape
		}
		if err := l.cfg.Target.EnsureTable(ctx, t.target, !known && exists); err != nil {
			return 0, err
		}
	}
	switch {
	case !exists:
		reason := fmt.Sprintf("the source had no replication slot %s (its copy was missing after a failover, or the slot was dropped)", l.slot)
		return l.resyncAll(ctx, db, rc, tables, reason)
	case walStatus != nil && *walStatus == "lost":
		reason := fmt.Sprintf("the replication slot %s was invalidated: it retained more WAL than the source's max_slot_wal_keep_size", l.slot)
		return l.resyncAll(ctx, db, rc, tables, reason)
	case pending && (pendingAt == 0 || confirmedAt != pendingAt):
		// Interrupted before the new slot's consistent point was recorded (the slot may still be the old one), or
		// the slot is not the one the resync created (which confirms nothing until the resync ends): after a
		// failover, the new primary's copy of the old slot. Start the resync over.
		return l.resyncAll(ctx, db, rc, tables, pendingReason)
	case pending:
		// The new slot exists (its consistent point is pendingAt): tables merged from its snapshot stream from
		// there; the others are merged now, from a temporary slot's snapshot, and skip their changes up to it.
		for k, t := range tables {
			if st, known := states[k]; known && st.SyncedAt < pendingAt {
				added[k] = t
			}
		}
		l.cfg.Logger.Warn("link finishes an interrupted resynchronisation", "link", l.cfg.Name, "tables", len(added), "reason", pendingReason)
		if len(added) > 0 {
			if err := l.syncTables(ctx, db, added, pendingReason); err != nil {
				return 0, err
			}
		}
		if err := l.cfg.Target.FinishResync(ctx, l.cfg.Name, pendingAt); err != nil {
			return 0, err
		}
		return max(cp, pendingAt), nil
	}
	if len(added) > 0 {
		if err := l.syncTables(ctx, db, added, "added to the link"); err != nil {
			return 0, err
		}
	}
	return cp, nil
}

// resyncAll starts over on a fresh slot without emptying the target: every table is merged with the slot's
// exported snapshot by primary key, then the checkpoint moves to the slot's consistent point. The target records
// the resynchronisation as pending before the slot changes, and from when the new slot exists its consistent
// point: a run interrupted in between (a restart, a failover, a target error) finishes it (resume) instead of
// streaming the new slot from the old checkpoint, which would skip every change of the tables not merged yet.
func (l *Link) resyncAll(ctx context.Context, db *pgx.Conn, rc *logrepl.Conn, tables map[string]*source, reason string) (lsn.LSN, error) {
	l.cfg.Logger.Warn("link resynchronises every table", "link", l.cfg.Name, "reason", reason)
	if err := l.cfg.Target.SetResyncPending(ctx, l.cfg.Name, 0, reason); err != nil {
		return 0, err
	}
	if err := l.dropSlot(ctx, db); err != nil {
		return 0, err
	}
	slot, err := rc.CreateSlot(ctx, l.slot, false, true)
	if err != nil {
		return 0, fmt.Errorf("link %s: %w", l.cfg.Name, err)
	}
	if err := l.cfg.Target.SetResyncPending(ctx, l.cfg.Name, slot.ConsistentPoint, reason); err != nil {
		return 0, err
	}
	if err := l.mergeSnapshot(ctx, db, slot, tables, reason); err != nil {
		return 0, err
	}
	if err := l.cfg.Target.FinishResync(ctx, l.cfg.Name, slot.ConsistentPoint); err != nil {
		return 0, err
	}
	return slot.ConsistentPoint, nil
}

// afterMerge, set by tests, runs after each table a snapshot was merged into (an error stops the merge there).
var afterMerge func(table string) error

// syncTables synchronises some tables from the snapshot of a temporary slot while the link's own slot stays
// where it is: each table's contents become those of the snapshot, and the stream skips its changes up to the
// temporary slot's consistent point (what PostgreSQL's own table synchronisation does).
func (l *Link) syncTables(ctx context.Context, db *pgx.Conn, tables map[string]*source, reason string) error {
	rc, err := logrepl.Connect(ctx, l.cfg.Source)
	if err != nil {
		return fmt.Errorf("link %s: %w", l.cfg.Name, err)
	}
	defer rc.Close(context.Background()) // drops the temporary slot: returns once it is gone
	// An earlier run's temporary slot goes with its walsender.
	if err := l.waitSlotFree(ctx, db, syncSlotName(l.slot)); err != nil {
		return err
	}
	slot, err := rc.CreateSlot(ctx, syncSlotName(l.slot), true, true)
	if err != nil {
		return fmt.Errorf("link %s: table synchronisation slot: %w", l.cfg.Name, err)
	}
	return l.mergeSnapshot(ctx, db, slot, tables, reason)
}

// mergeSnapshot merges each table's rows as of the slot's exported snapshot into its target table.
func (l *Link) mergeSnapshot(ctx context.Context, db *pgx.Conn, slot logrepl.Slot, tables map[string]*source, reason string) error {
	tx, err := db.BeginTx(ctx, pgx.TxOptions{IsoLevel: pgx.RepeatableRead, AccessMode: pgx.ReadOnly})
	if err != nil {
		return err
	}
	defer tx.Rollback(context.Background())
	if _, err := tx.Exec(ctx, "SET TRANSACTION SNAPSHOT '"+slot.SnapshotName+"'"); err != nil {
		return fmt.Errorf("link %s: use the slot's snapshot: %w", l.cfg.Name, err)
	}
	// Nothing of the snapshot may reach the target before the geo-secondary holds it.
	if err := l.waitGate(ctx, slot.ConsistentPoint); err != nil {
		return err
	}
	keys := make([]string, 0, len(tables))
	for k := range tables {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		t := tables[k]
		l.setTable(k, func(s *TableStatus) { s.Status, s.Resync = TableSnapshotting, reason })
		n, err := l.mergeTable(ctx, tx, t, slot.ConsistentPoint)
		if err != nil && ctx.Err() == nil && !errors.As(err, new(sourceError)) {
			// The target table no longer fits the source (its shape changed while the link could not follow):
			// recreate it and merge again; the merge is one target transaction, so nothing half-done remains.
			l.cfg.Logger.Warn("link recreates a target table that no longer fits its source", "link", l.cfg.Name, "table", k, "err", err)
			if err = l.cfg.Target.EnsureTable(ctx, t.target, true); err == nil {
				n, err = l.mergeTable(ctx, tx, t, slot.ConsistentPoint)
			}
		}
		if err != nil {
			return fmt.Errorf("link %s: resynchronise %s: %w", l.cfg.Name, k, err)
		}
		t.syncedAt = slot.ConsistentPoint
		l.setTable(k, func(s *TableStatus) { s.SyncedAt, s.LastApplied = slot.ConsistentPoint, time.Now() })
		l.cfg.Logger.Info("link table resynchronised", "link", l.cfg.Name, "table", k, "rows", n,
			"at", slot.ConsistentPoint.String(), "reason", reason)
		if afterMerge != nil {
			if err := afterMerge(k); err != nil {
				return err
			}
		}
	}
	return nil
}

// mergeTable merges a source table's rows, as the snapshot of tx shows them, into its target table.
func (l *Link) mergeTable(ctx context.Context, tx pgx.Tx, t *source, at lsn.LSN) (int, error) {
	rows, err := tx.Query(ctx, selectAll(t))
	if err != nil {
		return 0, sourceError{fmt.Errorf("read %s: %w", t.key, err)}
	}
	defer rows.Close()
	return l.cfg.Target.MergeTable(ctx, l.cfg.Name, t.key, t.target, at, func() ([]target.Value, error) {
		if !rows.Next() {
			if err := rows.Err(); err != nil {
				return nil, sourceError{fmt.Errorf("read %s: %w", t.key, err)}
			}
			return nil, nil
		}
		row, err := scanText(rows, len(t.target.Columns))
		if err != nil {
			return nil, sourceError{err}
		}
		return row, nil
	})
}
