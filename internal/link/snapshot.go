package link

// The initial snapshot: every table read from the slot's exported snapshot, in bounded batches.

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/fogo-db/fogo/internal/link/target"
	"github.com/fogo-db/fogo/internal/postgres/logrepl"
	"github.com/fogo-db/fogo/internal/postgres/lsn"
)

// snapshot starts over: a fresh slot with an exported snapshot, the target tables emptied or recreated, every row
// as of the snapshot copied, and the slot's consistent point recorded as the checkpoint with the last batch.
func (l *Link) snapshot(ctx context.Context, db *pgx.Conn, rc *logrepl.Conn, tables map[string]*source) (lsn.LSN, error) {
	l.setStatus(func(s *Status) { s.Phase = "Snapshotting" })
	if err := l.dropSlot(ctx, db); err != nil {
		return 0, err
	}
	slot, err := rc.CreateSlot(ctx, l.slot, false, true)
	if err != nil {
		return 0, fmt.Errorf("link %s: %w", l.cfg.Name, err)
	}
	tx, err := db.BeginTx(ctx, pgx.TxOptions{IsoLevel: pgx.RepeatableRead, AccessMode: pgx.ReadOnly})
	if err != nil {
		return 0, err
	}
	defer tx.Rollback(context.Background())
	if _, err := tx.Exec(ctx, "SET TRANSACTION SNAPSHOT '"+slot.SnapshotName+"'"); err != nil {
		return 0, fmt.Errorf("link %s: use the slot's snapshot: %w", l.cfg.Name, err)
	}
	var batch []target.Change
	flush := func(cp lsn.LSN) error {
		err := l.cfg.Target.Apply(ctx, l.cfg.Name, batch, cp)
		batch = batch[:0]
		return err
	}
	for k, t := range tables {
		l.setTable(k, func(s *TableStatus) { s.Status = TableSnapshotting })
		if err := l.cfg.Target.EnsureTable(ctx, t.target, l.cfg.DropExistingOnStart); err != nil {
			return 0, err
		}
		batch = append(batch, target.Clear(t.target))
		rows, err := tx.Query(ctx, selectAll(t))
		if err != nil {
			return 0, fmt.Errorf("link %s: read %s: %w", l.cfg.Name, k, err)
		}
		for rows.Next() {
			row, err := scanText(rows, len(t.target.Columns))
			if err != nil {
				rows.Close()
				return 0, err
			}
			batch = append(batch, target.Change{Kind: target.Insert, Table: t.target, New: row})
			if len(batch) >= l.cfg.SnapshotBatch {
				if err := flush(0); err != nil {
					rows.Close()
					return 0, err
				}
			}
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return 0, err
		}
	}
	if err := l.waitGate(ctx, slot.ConsistentPoint); err != nil {
		return 0, err
	}
	if err := flush(slot.ConsistentPoint); err != nil {
		return 0, err
	}
	// The tables' states, after the checkpoint: a crash between the two only makes the next run merge every
	// table again.
	states := map[string]target.TableState{}
	for k, t := range tables {
		t.syncedAt, states[k] = slot.ConsistentPoint, target.TableState{SyncedAt: slot.ConsistentPoint}
		l.setTable(k, func(s *TableStatus) { s.SyncedAt, s.LastApplied = slot.ConsistentPoint, time.Now() })
	}
	if err := l.cfg.Target.SetTableStates(ctx, l.cfg.Name, states); err != nil {
		return 0, err
	}
	l.cfg.Logger.Info("link snapshot done", "link", l.cfg.Name, "consistent_point", slot.ConsistentPoint.String())
	return slot.ConsistentPoint, nil
}
