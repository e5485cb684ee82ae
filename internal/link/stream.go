package link

// The stream: decoding the slot's changes, batching whole source transactions, applying them with the
// checkpoint, and the reader that keeps the replication connection alive.

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/fogo-db/fogo/internal/link/target"
	"github.com/fogo-db/fogo/internal/postgres/logrepl"
	"github.com/fogo-db/fogo/internal/postgres/lsn"
)

// sourceTimeout is how long a replication connection may stay silent although the link asks for replies.
const sourceTimeout = 30 * time.Second

// errBatchDone ends a batch: everything the source had committed when it started is applied.
var errBatchDone = errors.New("batch done")

// stream applies the slot's changes after cp. Committed source transactions are applied in batches: a batch is
// written (with the checkpoint of its last transaction, in one target transaction) when it is large, or as soon as
// the stream pauses for a moment, so a busy source costs few target transactions and a quiet one sees its changes
// within milliseconds.
func (l *Link) stream(ctx context.Context, db *pgx.Conn, rc *logrepl.Conn, tables map[string]*source, cp lsn.LSN) error {
	var until lsn.LSN // in batch mode: the source's WAL end when the batch started
	if l.cfg.Batch {
		var v string
		if err := db.QueryRow(ctx, "SELECT pg_current_wal_flush_lsn()::text").Scan(&v); err != nil {
			return fmt.Errorf("link %s: read the source's WAL position: %w", l.cfg.Name, err)
		}
		var err error
		if until, err = lsn.Parse(v); err != nil {
			return err
		}
	}
	if err := l.waitSlotFree(ctx, db, l.slot); err != nil {
		return err
	}
	if err := rc.StartReplication(ctx, l.slot, cp, []string{l.slot}, false); err != nil {
		return fmt.Errorf("link %s: %w", l.cfg.Name, err)
	}
	const maxBatch = 5000
	var applied atomic.Uint64
	relations := map[uint32]*source{}
	byOID := map[uint32]*source{} // the linked tables by their OID: pgoutput names a renamed table by its new name
	for _, t := range tables {
		if t.oid != 0 {
			byOID[t.oid] = t
		}
	}
	var txn, batch []target.Change
	var txnSrc []*source              // the table of each change of txn
	touched := map[*source]struct{}{} // the tables the batch changes
	var batchEnd lsn.LSN
	var batchTxns int64
	var batchCommit time.Time
	// A reader goroutine owns the replication connection: it receives, acknowledges as written everything the
	// server sent (a walsender of a shutting-down primary waits for that, so a slow target must never hold up a
	// planned failover) and reports as flushed only what the target holds (the slot advances no further).
	// Once the reader fails (the source went away), nothing more is applied: waiting transactions are decoded
	// again by the next run, from the checkpoint.
	applied.Store(uint64(cp))
	msgs := make(chan any, 200000)
	rctx, stopReader := context.WithCancel(ctx)
	gctx, stopGate := context.WithCancel(ctx)
	defer stopGate()
	readerDone := make(chan struct{})
	var readerErr error
	var received atomic.Uint64 // how far the reader has received
	go func() {
		readerErr = l.read(rctx, rc, msgs, &applied, &received)
		stopGate()
		close(readerDone)
	}()
	defer func() {
		stopReader()
		<-readerDone
	}()
	streamErr := func() error {
		<-readerDone
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return fmt.Errorf("link %s: stream: %w", l.cfg.Name, readerErr)
	}
	flush := func() error {
		if batchEnd <= cp {
			return nil
		}
		if err := l.waitGate(gctx, batchEnd); err != nil {
			if gctx.Err() != nil && ctx.Err() == nil {
				return streamErr()
			}
			return err
		}
		if err := l.cfg.Target.Apply(ctx, l.cfg.Name, batch, batchEnd); err != nil {
			return err
		}
		cp, batch = batchEnd, batch[:0]
		applied.Store(uint64(cp))
		n, at, now := batchTxns, batchCommit, time.Now()
		batchTxns = 0
		l.setStatus(func(s *Status) {
			s.Checkpoint, s.LastCommit, s.LastApplied, s.Applied = cp, at, now, s.Applied+n
		})
		for src := range touched {
			l.setTable(src.key, func(s *TableStatus) { s.LastCommit, s.LastApplied = at, now })
			delete(touched, src)
		}
		return nil
	}
	for k, t := range tables {
		if t.failed == "" {
			l.setTable(k, func(s *TableStatus) { s.Status, s.Err = TableReplicating, "" })
		}
	}
	for {
		var msg any
		select {
		case msg = <-msgs: // the common case under load: no timer
		default:
			wait := time.Second
			if batchEnd > cp {
				wait = 10 * time.Millisecond
			}
			timer := time.NewTimer(wait)
			select {
			case <-ctx.Done():
				timer.Stop()
				return ctx.Err()
			case <-readerDone:
				timer.Stop()
				return streamErr()
			case <-timer.C:
				if err := flush(); err != nil {
					return err
				}
				// A batch is done once everything up to its end was received and nothing waits to be applied.
				if l.cfg.Batch && len(txn) == 0 && len(msgs) == 0 && lsn.LSN(received.Load()) >= until {
					return errBatchDone
				}
				continue
			case msg = <-msgs:
				timer.Stop()
			}
		}
		m, ok := msg.(logrepl.XLogData)
		if !ok {
			continue
		}
		d, err := logrepl.Decode(m.Data)
		if err != nil {
			return fmt.Errorf("link %s: %w", l.cfg.Name, err)
		}
		switch v := d.(type) {
		case logrepl.Relation:
			src := tables[v.Namespace+"."+v.Name]
			if prev := byOID[v.ID]; prev != nil && prev.key != v.Namespace+"."+v.Name {
				// The linked table was renamed: the stream names it by its new name, the link (and the next run's
				// description of it) by its old one. Its changes from here on are not applied: it fails, saying so.
				src = prev
				if src.failed == "" {
					if err := flush(); err != nil {
						return err
					}
					if err := l.failTable(ctx, src, renamedError(src.key, v.Namespace+"."+v.Name)); err != nil {
						return err
					}
				}
			} else if src == nil {
				// Changes decoded from before the table left the publication: not linked any more.
				src = &source{key: v.Namespace + "." + v.Name, failed: "not linked"}
			} else if src.failed == "" && !sameShape(src, v) {
				// The schema change is part of the transaction: applied with it, in its target transaction.
				c, err := l.followShape(ctx, db, src, v)
				if err != nil {
					if err := flush(); err != nil {
						return err
					}
					if err := l.failTable(ctx, src, err); err != nil {
						return err
					}
				} else {
					txn, txnSrc = append(txn, c), append(txnSrc, src)
				}
			}
			relations[v.ID] = src
		case logrepl.Begin:
			txn, txnSrc = txn[:0], txnSrc[:0]
		case logrepl.Insert, logrepl.Update, logrepl.Delete, logrepl.Truncate:
			if txn, txnSrc, err = appendChanges(txn, txnSrc, relations, v); err != nil {
				return fmt.Errorf("link %s: %w", l.cfg.Name, err)
			}
		case logrepl.Commit:
			if v.EndLSN <= cp {
				txn, txnSrc = txn[:0], txnSrc[:0]
				continue // applied before a restart
			}
			keep := func(src *source) bool {
				return src.failed == "" && v.EndLSN > src.syncedAt // not a failed table, nor one whose snapshot holds the change
			}
			reshapes := false
			for i, c := range txn {
				if c.Kind == target.Reshape && keep(txnSrc[i]) {
					reshapes = true
				}
			}
			if reshapes {
				// A transaction with schema changes starts a target transaction of its own, with its schema
				// changes first (DuckDB commits no ALTER of a table after an UPDATE or DELETE of its rows in the
				// same transaction) and its row changes in the table's new shape; the batch before it is applied
				// first, with the shape it was decoded with.
				if err := flush(); err != nil {
					return err
				}
				for i, c := range txn {
					if c.Kind == target.Reshape && keep(txnSrc[i]) {
						batch = append(batch, c)
					}
				}
			}
			for i, c := range txn {
				src := txnSrc[i]
				if !keep(src) || c.Kind == target.Reshape {
					continue
				}
				if reshapes {
					c = project(c, src.target)
				}
				batch = append(batch, c)
				touched[src] = struct{}{}
			}
			batchEnd, batchCommit = v.EndLSN, v.CommitTime
			batchTxns++
			txn, txnSrc = txn[:0], txnSrc[:0]
			if len(batch) >= maxBatch {
				if err := flush(); err != nil {
					return err
				}
			}
		}
	}
}

// renamedError is the failure of a linked table renamed on the source.
func renamedError(from, to string) error {
	return fmt.Errorf("source table %s was renamed to %s; a link follows a table by its name, so its changes are no longer applied: remove %s from the link and add %s to link it under its new name", from, to, from, to)
}

// failTable stops linking one table (a schema change it cannot follow): recorded in the target so that later
// runs skip it too, and said in its status; the other tables go on.
func (l *Link) failTable(ctx context.Context, src *source, cause error) error {
	msg := cause.Error()
	src.failed = msg
	if err := l.cfg.Target.SetTableStates(ctx, l.cfg.Name, map[string]target.TableState{src.key: {SyncedAt: src.syncedAt, Failed: msg}}); err != nil {
		return fmt.Errorf("link %s: record the failure of %s: %w", l.cfg.Name, src.key, err)
	}
	l.setTable(src.key, func(s *TableStatus) { s.Status, s.Err = TableFailed, msg })
	l.cfg.Logger.Error("link table failed; the other tables go on", "link", l.cfg.Name, "table", src.key, "err", msg)
	return nil
}

// read receives the stream into msgs and sends standby status updates: written = everything received; flushed =
// what the target holds, or everything received once the target holds every transaction received so far (no
// transaction open, the last commit applied), as PostgreSQL's own apply worker reports. The latter lets the slot
// pass WAL with nothing to apply (checkpoints, other tables' transactions), and a walsender of a primary shutting
// down for a planned failover waits for exactly that: flushed = everything it sent.
func (l *Link) read(ctx context.Context, rc *logrepl.Conn, msgs chan<- any, applied, receivedUpTo *atomic.Uint64) error {
	received := lsn.LSN(applied.Load())
	var lastEnd lsn.LSN // end of the last commit handed to the applier
	inTxn := false
	next := time.Now()
	lastHeard := time.Now()
	var dl deadlines
	defer dl.stop()
	for {
		if time.Now().After(next) {
			cp := lsn.LSN(applied.Load())
			flushed := cp
			if !inTxn && cp >= lastEnd {
				flushed = max(received, cp)
			}
			// Silence is ambiguous (an idle source sends nothing): ask for a reply now and then, and give up on
			// a connection that stays silent, so the status never says Streaming over a dead one.
			silent := time.Since(lastHeard)
			if silent > sourceTimeout {
				return fmt.Errorf("no word from the source for %s", silent.Round(time.Second))
			}
			if err := rc.SendStandbyStatus(ctx, max(received, cp), flushed, flushed, silent > sourceTimeout/6); err != nil {
				return err
			}
			next = time.Now().Add(l.cfg.StatusInterval)
		}
		msg, err := rc.Receive(dl.until(ctx, next))
		if err != nil {
			if ctx.Err() == nil && errors.Is(err, context.DeadlineExceeded) {
				continue
			}
			return err
		}
		lastHeard = time.Now()
		l.heard.Store(lastHeard.UnixNano())
		switch m := msg.(type) {
		case logrepl.Keepalive:
			received = max(received, m.ServerWALEnd)
			receivedUpTo.Store(uint64(received))
			if m.ReplyRequested {
				next = time.Time{}
			}
		case logrepl.XLogData:
			received = max(received, m.ServerWALEnd, m.WALStart)
			m.Data = append([]byte(nil), m.Data...) // the connection reuses its buffer for the next message
			if len(m.Data) > 0 {
				switch m.Data[0] {
				case 'B':
					inTxn = true
				case 'C':
					if c, err := logrepl.Decode(m.Data); err == nil {
						inTxn, lastEnd = false, c.(logrepl.Commit).EndLSN
					}
				}
			}
			select {
			case msgs <- m:
			case <-ctx.Done():
				return ctx.Err()
			}
		}
	}
}

// deadlines hands out one context per deadline (a context per received message cost as much as decoding it).
type deadlines struct {
	at     time.Time
	ctx    context.Context
	cancel context.CancelFunc
}

func (d *deadlines) until(parent context.Context, at time.Time) context.Context {
	if d.ctx == nil || !d.at.Equal(at) {
		d.stop()
		d.ctx, d.cancel = context.WithDeadline(parent, at)
		d.at = at
	}
	return d.ctx
}

func (d *deadlines) stop() {
	if d.cancel != nil {
		d.cancel()
	}
}

func values(t logrepl.Tuple) []target.Value {
	out := make([]target.Value, len(t))
	for i, v := range t {
		switch v.Kind {
		case logrepl.Null:
			out[i] = target.Value{Null: true}
		case logrepl.Unchanged:
			out[i] = target.Value{Unchanged: true}
		default:
			out[i] = target.Value{Text: string(v.Data)}
		}
	}
	return out
}

// appendChanges appends the target changes of one decoded change message, one per relation, and the table of
// each to srcs (the commit drops those of failed tables).
func appendChanges(out []target.Change, srcs []*source, relations map[uint32]*source, msg any) ([]target.Change, []*source, error) {
	one := func(id uint32, c target.Change) error {
		src := relations[id]
		if src == nil {
			return fmt.Errorf("change of relation %d before its description", id)
		}
		c.Table = src.target
		out, srcs = append(out, c), append(srcs, src)
		return nil
	}
	var err error
	switch v := msg.(type) {
	case logrepl.Insert:
		err = one(v.RelationID, target.Change{Kind: target.Insert, New: values(v.New)})
	case logrepl.Update:
		err = one(v.RelationID, target.Change{Kind: target.Update, Old: values(v.Old), New: values(v.New)})
	case logrepl.Delete:
		err = one(v.RelationID, target.Change{Kind: target.Delete, Old: values(v.Old)})
	case logrepl.Truncate:
		for _, id := range v.RelationIDs {
			if err = one(id, target.Change{Kind: target.Truncate}); err != nil {
				break
			}
		}
	}
	return out, srcs, err
}
