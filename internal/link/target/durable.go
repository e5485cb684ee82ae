package target

import (
	"context"
	"database/sql"
	"fmt"
)

// durableCommitter is a dialect whose transactions must be told to commit durably.
type durableCommitter interface{ durableCommit() string }

// durableCommit: a PostgreSQL target running with synchronous_commit=off (its own default, its role's or its
// database's) acknowledges a commit before it is flushed, and a crash of the target then loses it after the link
// has moved its slot past it: gone for ever. Every transaction that carries a checkpoint or a table state commits
// with synchronous_commit on.
func (pgDialect) durableCommit() string { return "SET LOCAL synchronous_commit = on" }

// txBeginner is a *sql.DB or a *sql.Conn (a transaction a bulk path must write in too).
type txBeginner interface {
	BeginTx(ctx context.Context, opts *sql.TxOptions) (*sql.Tx, error)
}

// beginWrite begins a transaction that writes the target (rows, a checkpoint, table states), made to commit
// durably on a target that must be told so: every writer goes through it, so none can forget.
func (s *Store) beginWrite(ctx context.Context, on txBeginner) (*sql.Tx, error) {
	tx, err := on.BeginTx(ctx, nil)
	if err != nil {
		return nil, fmt.Errorf("%s: begin: %w", s.dialect.name(), err)
	}
	if d, ok := s.dialect.(durableCommitter); ok {
		if _, err := tx.ExecContext(ctx, d.durableCommit()); err != nil {
			tx.Rollback()
			return nil, fmt.Errorf("%s: %w", s.dialect.name(), err)
		}
	}
	return tx, nil
}
