package instance

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/fogo-db/fogo/internal/postgres/lsn"
)

// Session is one superuser connection kept open across the polls of a time-critical procedure (a planned
// failover's demote and promote), so each poll costs a round trip instead of a new authenticated backend.
type Session struct {
	i    *Instance
	conn *pgx.Conn
}

// OpenSession connects to the instance's postgres database.
func (i *Instance) OpenSession(ctx context.Context) (*Session, error) {
	c, err := i.Connect(ctx, "postgres")
	if err != nil {
		return nil, fmt.Errorf("connect to %s: %w", i.Dir, err)
	}
	return &Session{i: i, conn: c}, nil
}

// Close ends the session; closing nil or twice is fine.
func (s *Session) Close() {
	if s != nil && s.conn != nil {
		_ = s.conn.Close(context.Background())
		s.conn = nil
	}
}

func (s *Session) scanLSN(ctx context.Context, sql string) (lsn.LSN, error) {
	var v *string
	if err := s.conn.QueryRow(ctx, sql).Scan(&v); err != nil {
		return 0, err
	}
	if v == nil {
		return 0, fmt.Errorf("%s: no value", sql)
	}
	return lsn.Parse(*v)
}

// ReceiveLSN is how far a standby has received and flushed WAL.
func (s *Session) ReceiveLSN(ctx context.Context) (lsn.LSN, error) {
	return s.scanLSN(ctx, "SELECT pg_last_wal_receive_lsn()::text")
}

// ReplayLSN is how far a standby has replayed.
func (s *Session) ReplayLSN(ctx context.Context) (lsn.LSN, error) {
	return s.scanLSN(ctx, "SELECT pg_last_wal_replay_lsn()::text")
}

// WaitReplayPast waits, on the server (one round trip however far the standby is), until the standby has
// replayed past target, at most about bound: reached is false when it did not in time. An error says nothing
// about the replay (the session failed).
func (s *Session) WaitReplayPast(ctx context.Context, target lsn.LSN, bound time.Duration) (reached bool, err error) {
	ctx, cancel := context.WithTimeout(ctx, bound+5*time.Second)
	defer cancel()
	loops := max(int64(bound/time.Millisecond), 1)
	_, err = s.conn.Exec(ctx, fmt.Sprintf(`DO $$
BEGIN
	FOR i IN 1..%d LOOP
		EXIT WHEN pg_last_wal_replay_lsn() > '%s'::pg_lsn;
		PERFORM pg_sleep(0.001);
	END LOOP;
	IF NOT pg_last_wal_replay_lsn() > '%s'::pg_lsn THEN
		RAISE EXCEPTION USING ERRCODE = 'P0001', MESSAGE = 'fogo: replay not reached';
	END IF;
END
$$`, loops, target, target))
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) && pgErr.Message == "fogo: replay not reached" {
		return false, nil
	}
	return err == nil, err
}

// CurrentWALLSN is a primary's flushed WAL position.
func (s *Session) CurrentWALLSN(ctx context.Context) (lsn.LSN, error) {
	return s.scanLSN(ctx, "SELECT pg_current_wal_flush_lsn()::text")
}

// Promote asks for the promotion on this session and waits until the instance accepts writes. The server itself
// promotes and watches (promoteAndWait: one round trip, however far the instance is, and no 100 ms polling as
// pg_ctl promote -w and pg_promote(true) do); if that fails, pg_ctl promote is run on the instance's host and
// pg_is_in_recovery() is watched from here.
func (s *Session) Promote(ctx context.Context) error {
	if _, err := s.conn.Exec(ctx, promoteAndWait); err == nil {
		return nil
	}
	if _, err := s.i.machine().Run(ctx, nil, "pg_ctl", "-D", s.i.Dir, "-W", "promote"); err != nil && s.i.IsStandby() {
		return fmt.Errorf("promote %s: %w", s.i.Dir, err)
	}
	deadline := time.Now().Add(120 * time.Second)
	for {
		var inRecovery bool
		if err := s.conn.QueryRow(ctx, "SELECT pg_is_in_recovery()").Scan(&inRecovery); err != nil {
			return fmt.Errorf("promote %s: watch recovery: %w", s.i.Dir, err)
		}
		if !inRecovery {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("promote %s: still in recovery after 120s", s.i.Dir)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(2 * time.Millisecond):
		}
	}
}

// promoteAndWait promotes a standby and returns once it has left recovery (pg_is_in_recovery() follows the
// shared state, also within one statement), at most about 120 s later; a primary already is left alone.
//
// It asks again every 20 ms while it waits: PostgreSQL 15's startup process can notice a promotion and then sleep
// out the rest of wal_retrieve_retry_interval before it acts on it (when the promotion arrives while the WAL
// receiver it asked for after a failed stream has not started yet: stopping that receiver wakes nobody). Each
// request wakes it; one asked after the promotion ended is refused with 55000, which is ignored.
const promoteAndWait = `DO $$
BEGIN
	IF pg_is_in_recovery() AND NOT pg_promote(false) THEN
		RAISE EXCEPTION 'pg_promote could not signal the postmaster';
	END IF;
	FOR i IN 1..60000 LOOP
		EXIT WHEN NOT pg_is_in_recovery();
		PERFORM pg_sleep(0.002);
		IF i % 10 = 0 THEN
			BEGIN
				PERFORM pg_promote(false);
			EXCEPTION WHEN object_not_in_prerequisite_state THEN
				NULL; -- the promotion ended meanwhile
			END;
		END IF;
	END LOOP;
	IF pg_is_in_recovery() THEN
		RAISE EXCEPTION 'still in recovery after 120 s';
	END IF;
END
$$`

// Checkpoint runs CHECKPOINT.
func (s *Session) Checkpoint(ctx context.Context) error {
	_, err := s.conn.Exec(ctx, "CHECKPOINT")
	return err
}
