package link

// The failover-safe gate: a transaction is applied only once the geo-secondary has flushed past its end.

import (
	"context"
	"fmt"
	"time"

	"github.com/fogo-db/fogo/internal/postgres/lsn"
)

// waitGate waits for the failover-safe gate, saying so in the status while it waits.
func (l *Link) waitGate(ctx context.Context, upTo lsn.LSN) error {
	if l.cfg.Gate == nil {
		return nil
	}
	gctx, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
	err := l.cfg.Gate(gctx, upTo)
	cancel()
	if err == nil {
		return nil
	}
	l.setStatus(func(s *Status) { s.Err = "waiting for the geo-secondary to flush " + upTo.String() })
	if err := l.cfg.Gate(ctx, upTo); err != nil {
		return fmt.Errorf("link %s: failover-safe gate: %w", l.cfg.Name, err)
	}
	l.setStatus(func(s *Status) { s.Err = "" })
	return nil
}
