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
	"golang.org/x/sync/semaphore"

	"github.com/fogo-db/fogo/internal/link/target"
	"github.com/fogo-db/fogo/internal/postgres/logrepl"
	"github.com/fogo-db/fogo/internal/postgres/lsn"
)

// sourceTimeout is how long a replication connection may stay silent although the link asks for replies.
const sourceTimeout = 30 * time.Second

// afterPart, if set (tests), runs after each part of a transaction applied in parts was committed.
var afterPart func(done int) error

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
	// A source transaction an earlier run was applying in parts: skip what it applied.
	partEnd, partDone, err := l.cfg.Target.Part(ctx, l.cfg.Name)
	if err != nil {
		return fmt.Errorf("link %s: %w", l.cfg.Name, err)
	}
	txn := &txnBuffer{dir: l.cfg.SpoolDir} // the source transaction being decoded
	defer txn.reset()
	inTxn := false                    // between a Begin and its Commit
	skipping := false                 // the transaction was applied before a restart: its changes are not even kept
	var batch []target.Change         // committed source transactions waiting to be applied
	batchSize := 0                    // their estimated size
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
	budget := semaphore.NewWeighted(maxInFlight) // the bytes of msgs
	rctx, stopReader := context.WithCancel(ctx)
	gctx, stopGate := context.WithCancel(ctx)
	defer stopGate()
	readerDone := make(chan struct{})
	var readerErr error
	var received atomic.Uint64 // how far the reader has received
	go func() {
		readerErr = l.read(rctx, rc, msgs, budget, &applied, &received)
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
	// commit applies the batch, then whatever more writes (a spooled transaction's rows, read back in chunks), in
	// one target transaction with the checkpoint of the batch's last transaction, once the gate let it through.
	commit := func(more func(tx *target.Tx) error) error {
		if batchEnd <= cp {
			return nil
		}
		if err := l.waitGate(gctx, batchEnd); err != nil {
			if gctx.Err() != nil && ctx.Err() == nil {
				return streamErr()
			}
			return err
		}
		tx, err := l.cfg.Target.Begin(ctx)
		if err != nil {
			return err
		}
		defer tx.Rollback()
		if err := tx.Write(ctx, batch); err != nil {
			return err
		}
		if more != nil {
			if err := more(tx); err != nil {
				return err
			}
		}
		if err := tx.Commit(ctx, l.cfg.Name, batchEnd); err != nil {
			return err
		}
		clear(batch)
		cp, batch, batchSize = batchEnd, batch[:0], 0
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
	flush := func() error { return commit(nil) }
	// admit appends to out the row changes of a committed transaction (ending at end) that the target takes: not
	// those of failed tables, nor of tables whose snapshot already holds the transaction; in their table's new
	// shape when the transaction changed it.
	admit := func(out, rows []target.Change, srcs []*source, end lsn.LSN, reshaped bool) []target.Change {
		for i, c := range rows {
			src := srcs[i]
			if src.failed != "" || end <= src.syncedAt {
				continue
			}
			if reshaped {
				c = project(c, src.target)
			}
			out = append(out, c)
			touched[src] = struct{}{}
		}
		return out
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
				if l.cfg.Batch && !inTxn && len(msgs) == 0 && lsn.LSN(received.Load()) >= until {
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
		budget.Release(weight(m))
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
					txn.addReshape(c, src)
				}
			}
			relations[v.ID] = src
		case logrepl.Begin:
			txn.reset()
			inTxn, skipping = true, v.FinalLSN < cp // its commit record lies before the checkpoint
		case logrepl.Insert, logrepl.Update, logrepl.Delete, logrepl.Truncate:
			if skipping {
				continue
			}
			if err := addChanges(txn, relations, v); err != nil {
				return fmt.Errorf("link %s: %w", l.cfg.Name, err)
			}
		case logrepl.Commit:
			inTxn = false
			if v.EndLSN <= cp {
				txn.reset()
				continue // applied before a restart
			}
			if skipping {
				return fmt.Errorf("link %s: transaction %s..%s began before the checkpoint %s but ends after it", l.cfg.Name, v.CommitLSN, v.EndLSN, cp)
			}
			reshaped := false
			for _, src := range txn.reshapeSrcs {
				if src.failed == "" && v.EndLSN > src.syncedAt {
					reshaped = true
				}
			}
			if reshaped || txn.spilled() {
				// A transaction with schema changes starts a target transaction of its own, with its schema
				// changes first (DuckDB commits no ALTER of a table after an UPDATE or DELETE of its rows in the
				// same transaction) and its row changes in the table's new shape; the batch before it is applied
				// first, with the shape it was decoded with. So does a spooled one: the batch is applied before
				// its rows are read back.
				if err := flush(); err != nil {
					return err
				}
			}
			if reshaped {
				for i, c := range txn.reshapes {
					if src := txn.reshapeSrcs[i]; src.failed == "" && v.EndLSN > src.syncedAt {
						batch = append(batch, c)
					}
				}
			}
			batchEnd, batchCommit = v.EndLSN, v.CommitTime
			batchTxns++
			var err error
			if resumed := v.EndLSN == partEnd; txn.spilled() || resumed {
				// Read back in chunks, each written into the open target transaction: only a chunk is in memory.
				// A store that cannot hold it all in one transaction (PartBytes) gets it in parts, each committed
				// with how far it got: the gate let the whole transaction through already, and a restart resumes
				// after the last part.
				done := 0
				if resumed {
					done = int(partDone)
				}
				var chunk []target.Change
				parts, size, limit := 0, 0, l.cfg.Target.PartBytes()
				err = commit(func(tx *target.Tx) error {
					if resumed {
						tx.EndsParts()
					}
					return txn.each(done, func(rows []target.Change, srcs []*source) error {
						chunk = admit(chunk[:0], rows, srcs, v.EndLSN, reshaped)
						if err := tx.Write(ctx, chunk); err != nil {
							return err
						}
						done += len(rows)
						for _, c := range rows {
							size += changeSize(c)
						}
						if limit == 0 || size < limit || done >= txn.count {
							return nil
						}
						parts, size = parts+1, 0
						if err := tx.CommitPart(ctx, l.cfg.Name, v.EndLSN, int64(done)); err != nil {
							return err
						}
						if afterPart != nil {
							return afterPart(done)
						}
						return nil
					})
				})
				if err == nil {
					partEnd = 0
					l.setStatus(func(s *Status) { s.Spooled++ })
					if parts > 0 {
						l.cfg.Logger.Info("link applied a large source transaction in parts", "link", l.cfg.Name,
							"end", v.EndLSN, "changes", txn.count, "parts", parts+1)
					}
				}
			} else {
				err = txn.each(0, func(rows []target.Change, srcs []*source) error {
					batch = admit(batch, rows, srcs, v.EndLSN, reshaped)
					return nil
				})
				batchSize += txn.size
				if err == nil && (len(batch) >= maxBatch || batchSize >= spillAt) {
					err = flush()
				}
			}
			txn.reset()
			if err != nil {
				return err
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
func (l *Link) read(ctx context.Context, rc *logrepl.Conn, msgs chan<- any, budget *semaphore.Weighted, applied, receivedUpTo *atomic.Uint64) error {
	received := lsn.LSN(applied.Load())
	var lastEnd lsn.LSN // end of the last commit handed to the applier
	inTxn := false
	next := time.Now()
	lastHeard := time.Now()
	var dl deadlines
	defer dl.stop()
	status := func(replyRequested bool) error {
		cp := lsn.LSN(applied.Load())
		flushed := cp
		if !inTxn && cp >= lastEnd {
			flushed = max(received, cp)
		}
		next = time.Now().Add(l.cfg.StatusInterval)
		return rc.SendStandbyStatus(ctx, max(received, cp), flushed, flushed, replyRequested)
	}
	// hand passes m to the applier. While the applier is behind (a long gate wait, a slow target, a big
	// transaction read back from its spool) it waits for room, in bytes and in messages, and meanwhile keeps
	// sending status updates: the source must not take the link for dead (wal_sender_timeout) and restart it.
	hand := func(m logrepl.XLogData) error {
		n := weight(m)
		if !budget.TryAcquire(n) {
			for {
				wctx, cancel := context.WithDeadline(ctx, next)
				err := budget.Acquire(wctx, n)
				cancel()
				if err == nil {
					break
				}
				if ctx.Err() != nil {
					return ctx.Err()
				}
				if err := status(false); err != nil {
					return err
				}
			}
		}
		select {
		case msgs <- m:
			return nil
		default:
		}
		for {
			t := time.NewTimer(time.Until(next))
			select {
			case msgs <- m:
				t.Stop()
				return nil
			case <-ctx.Done():
				t.Stop()
				return ctx.Err()
			case <-t.C:
				if err := status(false); err != nil {
					return err
				}
			}
		}
	}
	for {
		if time.Now().After(next) {
			// Silence is ambiguous (an idle source sends nothing): ask for a reply now and then, and give up on
			// a connection that stays silent, so the status never says Streaming over a dead one.
			silent := time.Since(lastHeard)
			if silent > sourceTimeout {
				return fmt.Errorf("no word from the source for %s", silent.Round(time.Second))
			}
			if err := status(silent > sourceTimeout/6); err != nil {
				return err
			}
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
			if err := hand(m); err != nil {
				return err
			}
			lastHeard = time.Now() // waiting for the applier is not the source's silence
		}
	}
}

// maxInFlight bounds the bytes of received messages waiting for the applier (at most one larger message).
const maxInFlight = 64 << 20

// weight is what a message counts against maxInFlight.
func weight(m logrepl.XLogData) int64 { return min(int64(len(m.Data))+64, maxInFlight) }

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

// addChanges adds the target changes of one decoded change message to txn, one per relation, each with its table
// (the commit drops those of failed tables).
func addChanges(txn *txnBuffer, relations map[uint32]*source, msg any) error {
	one := func(id uint32, c target.Change) error {
		src := relations[id]
		if src == nil {
			return fmt.Errorf("change of relation %d before its description", id)
		}
		c.Table = src.target
		return txn.add(c, src)
	}
	switch v := msg.(type) {
	case logrepl.Insert:
		return one(v.RelationID, target.Change{Kind: target.Insert, New: values(v.New)})
	case logrepl.Update:
		return one(v.RelationID, target.Change{Kind: target.Update, Old: values(v.Old), New: values(v.New)})
	case logrepl.Delete:
		return one(v.RelationID, target.Change{Kind: target.Delete, Old: values(v.Old)})
	case logrepl.Truncate:
		for _, id := range v.RelationIDs {
			if err := one(id, target.Change{Kind: target.Truncate}); err != nil {
				return err
			}
		}
	}
	return nil
}
