package instance

import (
	"context"
	"fmt"
	"strings"

	"github.com/jackc/pgx/v5"

	"github.com/fogo-db/fogo/internal/postgres/lsn"
)

// query runs fn on a short-lived superuser session.
func (i *Instance) query(ctx context.Context, fn func(*pgx.Conn) error) error {
	c, err := i.Connect(ctx, "postgres")
	if err != nil {
		return err
	}
	defer c.Close(context.Background())
	return fn(c)
}

// withSession runs fn on a short-lived session.
func (i *Instance) withSession(ctx context.Context, fn func(*Session) error) error {
	s, err := i.OpenSession(ctx)
	if err != nil {
		return err
	}
	defer s.Close()
	return fn(s)
}

func (i *Instance) lsnOf(ctx context.Context, read func(*Session, context.Context) (lsn.LSN, error)) (lsn.LSN, error) {
	var l lsn.LSN
	err := i.withSession(ctx, func(s *Session) (err error) {
		l, err = read(s, ctx)
		return err
	})
	return l, err
}

// CurrentWALLSN is a primary's flushed WAL position (every acknowledged commit is at or before it).
func (i *Instance) CurrentWALLSN(ctx context.Context) (lsn.LSN, error) {
	return i.lsnOf(ctx, (*Session).CurrentWALLSN)
}

// ReplayLSN is how far a standby has replayed.
func (i *Instance) ReplayLSN(ctx context.Context) (lsn.LSN, error) {
	return i.lsnOf(ctx, (*Session).ReplayLSN)
}

// ReceiveLSN is how far a standby has received and flushed WAL.
func (i *Instance) ReceiveLSN(ctx context.Context) (lsn.LSN, error) {
	return i.lsnOf(ctx, (*Session).ReceiveLSN)
}

// IsInRecovery asks the running server whether it is a standby.
func (i *Instance) IsInRecovery(ctx context.Context) (bool, error) {
	var b bool
	err := i.query(ctx, func(c *pgx.Conn) error { return c.QueryRow(ctx, "SELECT pg_is_in_recovery()").Scan(&b) })
	return b, err
}

// WalReceiver is a standby's WAL receiver, from pg_stat_wal_receiver. Status is "" when none runs.
type WalReceiver struct {
	Status     string
	FlushedLSN lsn.LSN
	SenderPort int
}

// WalReceiverStatus reads pg_stat_wal_receiver.
func (i *Instance) WalReceiverStatus(ctx context.Context) (WalReceiver, error) {
	var w WalReceiver
	err := i.query(ctx, func(c *pgx.Conn) error {
		var flushed *string
		var port *int32
		err := c.QueryRow(ctx, "SELECT status, flushed_lsn::text, sender_port FROM pg_stat_wal_receiver").Scan(&w.Status, &flushed, &port)
		if err == pgx.ErrNoRows {
			return nil
		}
		if flushed != nil {
			w.FlushedLSN, _ = lsn.Parse(*flushed)
		}
		if port != nil {
			w.SenderPort = int(*port)
		}
		return err
	})
	return w, err
}

// Replica is one row of pg_stat_replication.
type Replica struct {
	ApplicationName string
	State           string
	ReplayLSN       lsn.LSN
	// FlushLSN is how far the standby has flushed WAL to disk.
	FlushLSN lsn.LSN
	// LagBytes is how much WAL the primary has written that the standby has not replayed.
	LagBytes int64
	// ReplayLagSeconds is pg_stat_replication.replay_lag (0 when the standby is idle and caught up).
	ReplayLagSeconds float64
}

// ReplicationStatus reads pg_stat_replication on a primary.
func (i *Instance) ReplicationStatus(ctx context.Context) ([]Replica, error) {
	var out []Replica
	err := i.query(ctx, func(c *pgx.Conn) error {
		rows, err := c.Query(ctx, `SELECT application_name, state, coalesce(replay_lsn::text, '0/0'), coalesce(flush_lsn::text, '0/0'),
			coalesce(pg_wal_lsn_diff(pg_current_wal_lsn(), replay_lsn), 0)::bigint,
			coalesce(extract(epoch FROM replay_lag), 0)::float8 FROM pg_stat_replication`)
		if err != nil {
			return err
		}
		defer rows.Close()
		for rows.Next() {
			var r Replica
			var replay, flush string
			if err := rows.Scan(&r.ApplicationName, &r.State, &replay, &flush, &r.LagBytes, &r.ReplayLagSeconds); err != nil {
				return err
			}
			r.ReplayLSN, _ = lsn.Parse(replay)
			r.FlushLSN, _ = lsn.Parse(flush)
			out = append(out, r)
		}
		return rows.Err()
	})
	return out, err
}

// Checkpoint runs CHECKPOINT. After a promotion it writes the new timeline into pg_control, which pg_rewind
// reads to learn the source's timeline: without it a rewind can pick the old timeline and leave a target whose
// minimum recovery point lies on a timeline the source never had.
func (i *Instance) Checkpoint(ctx context.Context) error {
	return i.query(ctx, func(c *pgx.Conn) error {
		_, err := c.Exec(ctx, "CHECKPOINT")
		return err
	})
}

// EnsurePhysicalSlot creates a physical slot that reserves WAL at once, unless it exists.
func (i *Instance) EnsurePhysicalSlot(ctx context.Context, name string) error {
	return i.query(ctx, func(c *pgx.Conn) error {
		_, err := c.Exec(ctx, `SELECT pg_create_physical_replication_slot($1, true)
			WHERE NOT EXISTS (SELECT 1 FROM pg_replication_slots WHERE slot_name = $1)`, name)
		return err
	})
}

// DropSlot drops a slot if it exists, ending the walsender that uses it first.
func (i *Instance) DropSlot(ctx context.Context, name string) error {
	return i.query(ctx, func(c *pgx.Conn) error {
		if _, err := c.Exec(ctx, `SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots WHERE slot_name = $1 AND active_pid IS NOT NULL`, name); err != nil {
			return err
		}
		var err error
		for attempt := 0; attempt < 50; attempt++ {
			_, err = c.Exec(ctx, `SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = $1`, name)
			if err == nil {
				return nil
			}
			c.Exec(ctx, "SELECT pg_sleep(0.1)")
		}
		return err
	})
}

// TerminateClientBackends ends every client session except this one.
func (i *Instance) TerminateClientBackends(ctx context.Context) error {
	return i.query(ctx, func(c *pgx.Conn) error {
		_, err := c.Exec(ctx, `SELECT pg_terminate_backend(pid) FROM pg_stat_activity
			WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()`)
		return err
	})
}

func quoteLiteral(s string) string { return "'" + strings.ReplaceAll(s, "'", "''") + "'" }

// EnsureRole creates (or updates) a server's admin login: a login role whose password is given as a SCRAM
// verifier, with REPLICATION, as managed PostgreSQL services give their admin, so that it can run logical
// replication (a link, a subscriber elsewhere) over a plain connection string. It stays no superuser, and physical
// replication stays reserved to fogo's superuser: pg_hba.conf has replication lines for that user only, and a
// logical walsender session reaches the instance through the gateway, which refuses physical replication
// commands (package gateway).
func (i *Instance) EnsureRole(ctx context.Context, name, scramVerifier string) error {
	return i.query(ctx, func(c *pgx.Conn) error {
		var exists bool
		if err := c.QueryRow(ctx, "SELECT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = $1)", name).Scan(&exists); err != nil {
			return err
		}
		verb := "CREATE"
		if exists {
			verb = "ALTER"
		}
		_, err := c.Exec(ctx, fmt.Sprintf("%s ROLE %s LOGIN REPLICATION PASSWORD %s", verb, pgx.Identifier{name}.Sanitize(), quoteLiteral(scramVerifier)))
		return err
	})
}

// EnsureReplicationRight grants an existing role REPLICATION unless it has it (an admin login created by an older
// fogo); it reports whether it granted it. A role that does not exist is left alone.
func (i *Instance) EnsureReplicationRight(ctx context.Context, name string) (bool, error) {
	granted := false
	err := i.query(ctx, func(c *pgx.Conn) error {
		var lacks bool
		err := c.QueryRow(ctx, "SELECT NOT rolreplication FROM pg_roles WHERE rolname = $1", name).Scan(&lacks)
		if err == pgx.ErrNoRows || (err == nil && !lacks) {
			return nil
		}
		if err != nil {
			return err
		}
		if _, err := c.Exec(ctx, "ALTER ROLE "+pgx.Identifier{name}.Sanitize()+" REPLICATION"); err != nil {
			return err
		}
		granted = true
		return nil
	})
	return granted, err
}

// EnsureDatabase creates database name owned by owner unless it exists.
func (i *Instance) EnsureDatabase(ctx context.Context, name, owner string) error {
	return i.query(ctx, func(c *pgx.Conn) error {
		var exists bool
		if err := c.QueryRow(ctx, "SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)", name).Scan(&exists); err != nil {
			return err
		}
		if exists {
			return nil
		}
		_, err := c.Exec(ctx, fmt.Sprintf("CREATE DATABASE %s OWNER %s", pgx.Identifier{name}.Sanitize(), pgx.Identifier{owner}.Sanitize()))
		return err
	})
}
