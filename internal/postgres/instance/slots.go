package instance

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"

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

// ReadSlotState reads a slot's on-disk state file on the primary (pg_read_binary_file, superuser).
func (i *Instance) ReadSlotState(ctx context.Context, slot string) ([]byte, error) {
	var b []byte
	err := i.query(ctx, func(c *pgx.Conn) error {
		return c.QueryRow(ctx, "SELECT pg_read_binary_file('pg_replslot/' || $1 || '/state')", slot).Scan(&b)
	})
	return b, err
}

// WriteSlotState installs a slot state file copied from the primary into this (stopped) instance's directory;
// the slot appears when the instance starts.
func (i *Instance) WriteSlotState(dir string, state []byte) error {
	if len(state) == 0 {
		return errors.New("empty slot state")
	}
	if err := i.Bin.MkdirOwned(dir); err != nil {
		return err
	}
	if err := i.Bin.WriteFileOwned(filepath.Join(dir, "state"), state, 0o600); err != nil {
		return err
	}
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}
