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

// durable makes tx commit durably on a target that needs to be told so.
func (s *Store) durable(ctx context.Context, tx *sql.Tx) error {
	d, ok := s.dialect.(durableCommitter)
	if !ok {
		return nil
	}
	if _, err := tx.ExecContext(ctx, d.durableCommit()); err != nil {
		return fmt.Errorf("%s: %w", s.dialect.name(), err)
	}
	return nil
}
