package instance

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

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

// CurrentWALLSN is a primary's flushed WAL position.
func (s *Session) CurrentWALLSN(ctx context.Context) (lsn.LSN, error) {
	return s.scanLSN(ctx, "SELECT pg_current_wal_flush_lsn()::text")
}

// Promote asks for the promotion on this session (pg_promote without waiting: no program to run on the instance's
// host, and no 100 ms polling as pg_ctl promote -w does; pg_ctl promote if that fails) and watches
// pg_is_in_recovery() on the session until the instance accepts writes.
func (s *Session) Promote(ctx context.Context) error {
	var signalled bool
	if err := s.conn.QueryRow(ctx, "SELECT pg_promote(false)").Scan(&signalled); err != nil || !signalled {
		if _, err := s.i.machine().Run(ctx, nil, "pg_ctl", "-D", s.i.Dir, "-W", "promote"); err != nil && s.i.IsStandby() {
			return fmt.Errorf("promote %s: %w", s.i.Dir, err)
		}
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

// Checkpoint runs CHECKPOINT.
func (s *Session) Checkpoint(ctx context.Context) error {
	_, err := s.conn.Exec(ctx, "CHECKPOINT")
	return err
}
