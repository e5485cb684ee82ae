package instance

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"strings"

	"github.com/jackc/pgx/v5"

	"github.com/fogo-db/fogo/internal/postgres/lsn"
)

// SlotConfirmedLSN returns a logical slot's confirmed_flush_lsn, or 0 when the slot does not exist.
func (i *Instance) SlotConfirmedLSN(ctx context.Context, slot string) (lsn.LSN, error) {
	var v *string
	err := i.query(ctx, func(c *pgx.Conn) error {
		return c.QueryRow(ctx, "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = $1", slot).Scan(&v)
	})
	if errors.Is(err, pgx.ErrNoRows) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("read slot %s: %w", slot, err)
	}
	if v == nil {
		return 1, nil // exists, nothing confirmed yet
	}
	return lsn.Parse(*v)
}

// AdvanceSlot moves a logical slot of `database` forward to `to` (works on a standby during recovery; never
// moves it back).
func (i *Instance) AdvanceSlot(ctx context.Context, database, slot string, to lsn.LSN) error {
	c, err := i.Connect(ctx, database)
	if err != nil {
		return err
	}
	defer c.Close(context.Background())
	_, err = c.Exec(ctx, "SELECT pg_replication_slot_advance($1, $2::pg_lsn)", slot, to.String())
	return err
}

// SlotFiles is what a copy of a logical slot needs on another instance of the same cluster: the slot's state file
// and logical decoding's serialized snapshots (pg_logical/snapshots/*.snap). The slot's restart point is the
// position of such a snapshot; without it, decoding on the copy starts from scratch there and, if transactions were
// in progress at that point, becomes consistent only at a later running-transactions record, silently skipping
// transactions the slot had not yet confirmed (TestSlotCopyDecodesEverythingAfterPromotion).
type SlotFiles struct {
	State     []byte
	Snapshots map[string][]byte // file name -> content
}

// ReadSlotFiles reads a logical slot's state file and every serialized snapshot from its restart point on, on the
// primary (pg_read_binary_file, superuser).
func (i *Instance) ReadSlotFiles(ctx context.Context, slot string) (SlotFiles, error) {
	f := SlotFiles{Snapshots: map[string][]byte{}}
	err := i.query(ctx, func(c *pgx.Conn) error {
		var restart *string
		if err := c.QueryRow(ctx, "SELECT restart_lsn::text FROM pg_replication_slots WHERE slot_name = $1", slot).Scan(&restart); err != nil {
			return fmt.Errorf("slot %s: %w", slot, err)
		}
		if restart == nil {
			return fmt.Errorf("slot %s has no restart point", slot)
		}
		from, err := lsn.Parse(*restart)
		if err != nil {
			return err
		}
		if err := c.QueryRow(ctx, "SELECT pg_read_binary_file('pg_replslot/' || $1 || '/state')", slot).Scan(&f.State); err != nil {
			return fmt.Errorf("slot %s: read state: %w", slot, err)
		}
		rows, err := c.Query(ctx, `SELECT name, pg_read_binary_file('pg_logical/snapshots/' || name, 0, 1 << 29, true)
			FROM pg_ls_dir('pg_logical/snapshots') AS name WHERE name LIKE '%.snap'`)
		if err != nil {
			return fmt.Errorf("read serialized snapshots: %w", err)
		}
		defer rows.Close()
		for rows.Next() {
			var name string
			var data []byte
			if err := rows.Scan(&name, &data); err != nil {
				return err
			}
			at, err := lsn.Parse(strings.Replace(strings.TrimSuffix(name, ".snap"), "-", "/", 1))
			if err != nil || at < from || data == nil { // not a snapshot file, older than needed, or just removed
				continue
			}
			f.Snapshots[name] = data
		}
		return rows.Err()
	})
	return f, err
}

// WriteSlotFiles installs a slot copied with ReadSlotFiles into this stopped instance's data directory; the slot
// appears when the instance starts.
func (i *Instance) WriteSlotFiles(slot string, f SlotFiles) error {
	if _, running := i.Running(); running {
		return fmt.Errorf("copy slot %s into %s: instance is running", slot, i.Dir)
	}
	if len(f.State) == 0 {
		return errors.New("empty slot state")
	}
	snaps := filepath.Join(i.Dir, "pg_logical", "snapshots")
	for name, data := range f.Snapshots {
		if err := i.machine().WriteFile(filepath.Join(snaps, name), data, 0o600); err != nil {
			return err
		}
	}
	if err := i.machine().SyncDir(snaps); err != nil {
		return err
	}
	dir := filepath.Join(i.Dir, "pg_replslot", slot)
	if err := i.machine().MkdirAll(dir); err != nil {
		return err
	}
	if err := i.machine().WriteFile(filepath.Join(dir, "state"), f.State, 0o600); err != nil {
		return err
	}
	return i.machine().SyncDir(dir)
}

// SlotStatus is one replication slot's hold on WAL, from pg_replication_slots.
type SlotStatus struct {
	Name string
	Type string // physical | logical
	// WALStatus is reserved, extended, unreserved (beyond max_slot_wal_keep_size: kept only until the next
	// checkpoint) or lost (invalidated: the WAL its consumer needs is gone, and only a new copy can follow again).
	WALStatus string
	// RetainedBytes is the WAL kept for the slot: from its restart point to the current position (0 when lost).
	RetainedBytes int64
	// SafeWALBytes is how much more WAL can be written before the slot becomes lost; -1 when unbounded.
	SafeWALBytes int64
}

// Lost reports whether the slot was invalidated.
func (s SlotStatus) Lost() bool { return s.WALStatus == "lost" }

// SlotsStatus reads every replication slot's WAL retention (on a primary; on a standby, against its replay point).
func (i *Instance) SlotsStatus(ctx context.Context) ([]SlotStatus, error) {
	var out []SlotStatus
	err := i.query(ctx, func(c *pgx.Conn) error {
		rows, err := c.Query(ctx, `SELECT slot_name, slot_type, coalesce(wal_status, ''),
			coalesce(pg_wal_lsn_diff(CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn() ELSE pg_current_wal_lsn() END,
				restart_lsn), 0)::bigint,
			coalesce(safe_wal_size, -1)::bigint
			FROM pg_replication_slots ORDER BY slot_name`)
		if err != nil {
			return err
		}
		defer rows.Close()
		for rows.Next() {
			var s SlotStatus
			if err := rows.Scan(&s.Name, &s.Type, &s.WALStatus, &s.RetainedBytes, &s.SafeWALBytes); err != nil {
				return err
			}
			out = append(out, s)
		}
		return rows.Err()
	})
	return out, err
}

// SlotLost reports whether the slot name exists and was invalidated (wal_status lost).
func (i *Instance) SlotLost(ctx context.Context, name string) (bool, error) {
	var lost bool
	err := i.query(ctx, func(c *pgx.Conn) error {
		err := c.QueryRow(ctx, "SELECT wal_status = 'lost' FROM pg_replication_slots WHERE slot_name = $1", name).Scan(&lost)
		if errors.Is(err, pgx.ErrNoRows) {
			return nil
		}
		return err
	})
	return lost, err
}

// DropSlotIfLost drops the slot name if it was invalidated: a lost slot holds no WAL and can never serve its
// standby again; a new copy needs a new slot. It reports whether it dropped one.
func (i *Instance) DropSlotIfLost(ctx context.Context, name string) (bool, error) {
	lost, err := i.SlotLost(ctx, name)
	if err != nil || !lost {
		return false, err
	}
	return true, i.DropSlot(ctx, name)
}
