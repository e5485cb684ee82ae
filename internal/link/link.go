// Package link runs a link connection: a consistent initial snapshot of the linked tables (from the slot's
// exported snapshot), then their changes by logical decoding (pgoutput), applied to the target exactly once.
//
// Each source transaction is applied to the target in one target transaction together with the link's checkpoint
// (the transaction's end LSN); on start the link reads the checkpoint back and skips everything at or below it,
// so restarts of fogo, of the source or of the target never duplicate or skip a change. A link without a
// checkpoint starts over: a fresh slot, a fresh snapshot, the target tables emptied (or dropped and recreated
// with DropExistingOnStart) in the same way.
//
// Steps of Run: describe the source tables, ensure the publication, read the checkpoint, snapshot if there is
// none, then stream.
package link

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/fogo-db/fogo/internal/link/target"
	"github.com/fogo-db/fogo/internal/postgres/logrepl"
	"github.com/fogo-db/fogo/internal/postgres/lsn"
)

// TableMapping links one source table to one target table.
type TableMapping struct {
	SourceSchema, SourceTable string
	TargetSchema, TargetTable string
}

// Config is a link.
type Config struct {
	Name                string
	Source              string // libpq connection string of the source database
	Tables              []TableMapping
	Target              *target.Store
	DropExistingOnStart bool
	Logger              *slog.Logger
	// StatusInterval is how often the applied position is reported to the source (default 1s).
	StatusInterval time.Duration
	// SnapshotBatch is the number of rows per target transaction while snapshotting (default 5000).
	SnapshotBatch int
	// Gate, if set, is waited on before anything up to a source position is committed to the target (the
	// failover-safe gate: the geo-secondary has flushed it).
	Gate func(ctx context.Context, upTo lsn.LSN) error
}

// Status is what the link knows from facts.
type Status struct {
	Phase       string // Starting, Snapshotting, Streaming, Failed
	Checkpoint  lsn.LSN
	LastCommit  time.Time // commit time of the last applied source transaction
	LastApplied time.Time // when it was applied
	Applied     int64     // source transactions applied since start
	Err         string
}

// Link is a running link connection.
type Link struct {
	cfg    Config
	slot   string
	mu     sync.Mutex
	status Status
}

var nonIdent = regexp.MustCompile(`[^a-z0-9_]+`)

// New returns a link; Run runs it.
func New(cfg Config) *Link {
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.StatusInterval <= 0 {
		cfg.StatusInterval = time.Second
	}
	if cfg.SnapshotBatch <= 0 {
		cfg.SnapshotBatch = 5000
	}
	slot := "fogo_link_" + nonIdent.ReplaceAllString(strings.ToLower(cfg.Name), "_")
	return &Link{cfg: cfg, slot: slot, status: Status{Phase: "Starting"}}
}

// SlotName is the link's replication slot (and publication) on the source.
func (l *Link) SlotName() string { return l.slot }

// Status returns the current status.
func (l *Link) Status() Status {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.status
}

func (l *Link) setStatus(fn func(*Status)) {
	l.mu.Lock()
	fn(&l.status)
	l.mu.Unlock()
}

// source is a described source table and its target.
type source struct {
	m      TableMapping
	target *target.Table
}

// Run runs the link until ctx ends or an error stops it.
func (l *Link) Run(ctx context.Context) error {
	err := l.run(ctx)
	if ctx.Err() != nil {
		return ctx.Err() // stopped: whatever was interrupted resumes from the checkpoint
	}
	if err != nil {
		l.setStatus(func(s *Status) { s.Phase, s.Err = "Failed", err.Error() })
	}
	return err
}

func (l *Link) run(ctx context.Context) error {
	db, err := pgx.Connect(ctx, l.cfg.Source)
	if err != nil {
		return fmt.Errorf("link %s: connect to source: %w", l.cfg.Name, err)
	}
	defer db.Close(context.Background())
	tables, err := l.describe(ctx, db)
	if err != nil {
		return err
	}
	if err := l.ensurePublication(ctx, db, tables); err != nil {
		return err
	}
	cp, err := l.cfg.Target.Checkpoint(ctx, l.cfg.Name)
	if err != nil {
		return err
	}
	rc, err := logrepl.Connect(ctx, l.cfg.Source)
	if err != nil {
		return fmt.Errorf("link %s: %w", l.cfg.Name, err)
	}
	defer rc.Close(context.Background())
	if cp == 0 {
		if cp, err = l.snapshot(ctx, db, rc, tables); err != nil {
			return err
		}
	} else {
		for _, t := range tables {
			if err := l.cfg.Target.EnsureTable(ctx, t.target, false); err != nil {
				return err
			}
		}
	}
	l.setStatus(func(s *Status) { s.Phase, s.Checkpoint = "Streaming", cp })
	return l.stream(ctx, db, rc, tables, cp)
}

// describe reads the columns, types and key of every linked table.
func (l *Link) describe(ctx context.Context, db *pgx.Conn) (map[string]*source, error) {
	out := map[string]*source{}
	for _, m := range l.cfg.Tables {
		if m.SourceSchema == "" {
			m.SourceSchema = "public"
		}
		if m.TargetTable == "" {
			m.TargetTable = m.SourceTable
		}
		if m.TargetSchema == "" {
			m.TargetSchema = m.SourceSchema
		}
		t := &target.Table{Schema: m.TargetSchema, Name: m.TargetTable}
		rows, err := db.Query(ctx, `SELECT a.attname, format_type(a.atttypid, a.atttypmod),
				coalesce(a.attnum = ANY(i.indkey::int2[]), false), c.relreplident
			FROM pg_attribute a
			JOIN pg_class c ON c.oid = a.attrelid
			JOIN pg_namespace n ON n.oid = c.relnamespace
			LEFT JOIN pg_index i ON i.indrelid = c.oid AND i.indisprimary
			WHERE n.nspname = $1 AND c.relname = $2 AND a.attnum > 0 AND NOT a.attisdropped
			ORDER BY a.attnum`, m.SourceSchema, m.SourceTable)
		if err != nil {
			return nil, fmt.Errorf("describe %s.%s: %w", m.SourceSchema, m.SourceTable, err)
		}
		var ident string
		for rows.Next() {
			var c target.Column
			var key bool
			if err := rows.Scan(&c.Name, &c.SourceType, &key, &ident); err != nil {
				rows.Close()
				return nil, err
			}
			t.Columns = append(t.Columns, c)
			if key {
				t.Key = append(t.Key, c.Name)
			}
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return nil, err
		}
		if len(t.Columns) == 0 {
			return nil, fmt.Errorf("link %s: source table %s.%s does not exist", l.cfg.Name, m.SourceSchema, m.SourceTable)
		}
		if len(t.Key) == 0 {
			if ident != "f" {
				return nil, fmt.Errorf("link %s: source table %s.%s: %w", l.cfg.Name, m.SourceSchema, m.SourceTable, target.ErrNoKey)
			}
			for _, c := range t.Columns {
				t.Key = append(t.Key, c.Name)
			}
		}
		out[m.SourceSchema+"."+m.SourceTable] = &source{m: m, target: t}
	}
	return out, nil
}

func (l *Link) ensurePublication(ctx context.Context, db *pgx.Conn, tables map[string]*source) error {
	names := make([]string, 0, len(tables))
	for _, t := range tables {
		names = append(names, pgx.Identifier{t.m.SourceSchema, t.m.SourceTable}.Sanitize())
	}
	list := strings.Join(names, ", ")
	var exists bool
	if err := db.QueryRow(ctx, "SELECT EXISTS (SELECT 1 FROM pg_publication WHERE pubname = $1)", l.slot).Scan(&exists); err != nil {
		return fmt.Errorf("link %s: read publication: %w", l.cfg.Name, err)
	}
	sql := "CREATE PUBLICATION " + pgx.Identifier{l.slot}.Sanitize() + " FOR TABLE " + list
	if exists {
		sql = "ALTER PUBLICATION " + pgx.Identifier{l.slot}.Sanitize() + " SET TABLE " + list
	}
	if _, err := db.Exec(ctx, sql); err != nil {
		return fmt.Errorf("link %s: publication: %w", l.cfg.Name, err)
	}
	return nil
}

// snapshot starts over: a fresh slot with an exported snapshot, the target tables emptied or recreated, every row
// as of the snapshot copied, and the slot's consistent point recorded as the checkpoint with the last batch.
func (l *Link) snapshot(ctx context.Context, db *pgx.Conn, rc *logrepl.Conn, tables map[string]*source) (lsn.LSN, error) {
	l.setStatus(func(s *Status) { s.Phase = "Snapshotting" })
	if _, err := db.Exec(ctx, "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = $1 AND NOT active", l.slot); err != nil {
		return 0, fmt.Errorf("link %s: drop old slot: %w", l.cfg.Name, err)
	}
	slot, err := rc.CreateSlot(ctx, l.slot, false, true)
	if err != nil {
		return 0, fmt.Errorf("link %s: %w", l.cfg.Name, err)
	}
	tx, err := db.BeginTx(ctx, pgx.TxOptions{IsoLevel: pgx.RepeatableRead, AccessMode: pgx.ReadOnly})
	if err != nil {
		return 0, err
	}
	defer tx.Rollback(context.Background())
	if _, err := tx.Exec(ctx, "SET TRANSACTION SNAPSHOT '"+slot.SnapshotName+"'"); err != nil {
		return 0, fmt.Errorf("link %s: use the slot's snapshot: %w", l.cfg.Name, err)
	}
	var batch []target.Change
	flush := func(cp lsn.LSN) error {
		err := l.cfg.Target.Apply(ctx, l.cfg.Name, batch, cp)
		batch = batch[:0]
		return err
	}
	for _, t := range tables {
		if err := l.cfg.Target.EnsureTable(ctx, t.target, l.cfg.DropExistingOnStart); err != nil {
			return 0, err
		}
		batch = append(batch, target.Clear(t.target))
		cols := make([]string, len(t.target.Columns))
		for i, c := range t.target.Columns {
			cols[i] = pgx.Identifier{c.Name}.Sanitize() + "::text"
		}
		rows, err := tx.Query(ctx, "SELECT "+strings.Join(cols, ", ")+" FROM "+pgx.Identifier{t.m.SourceSchema, t.m.SourceTable}.Sanitize())
		if err != nil {
			return 0, fmt.Errorf("link %s: read %s: %w", l.cfg.Name, t.m.SourceTable, err)
		}
		for rows.Next() {
			vals := make([]*string, len(cols))
			ptrs := make([]any, len(cols))
			for i := range vals {
				ptrs[i] = &vals[i]
			}
			if err := rows.Scan(ptrs...); err != nil {
				rows.Close()
				return 0, err
			}
			row := make([]target.Value, len(vals))
			for i, v := range vals {
				if v == nil {
					row[i] = target.Value{Null: true}
				} else {
					row[i] = target.Value{Text: *v}
				}
			}
			batch = append(batch, target.Change{Kind: target.Insert, Table: t.target, New: row})
			if len(batch) >= l.cfg.SnapshotBatch {
				if err := flush(0); err != nil {
					rows.Close()
					return 0, err
				}
			}
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return 0, err
		}
	}
	if err := l.waitGate(ctx, slot.ConsistentPoint); err != nil {
		return 0, err
	}
	if err := flush(slot.ConsistentPoint); err != nil {
		return 0, err
	}
	l.cfg.Logger.Info("link snapshot done", "link", l.cfg.Name, "consistent_point", slot.ConsistentPoint.String())
	return slot.ConsistentPoint, nil
}

// stream applies the slot's changes after cp. Committed source transactions are applied in batches: a batch is
// written (with the checkpoint of its last transaction, in one target transaction) when it is large, or as soon as
// the stream pauses for a moment, so a busy source costs few target transactions and a quiet one sees its changes
// within milliseconds.
func (l *Link) stream(ctx context.Context, db *pgx.Conn, rc *logrepl.Conn, tables map[string]*source, cp lsn.LSN) error {
	if err := rc.StartReplication(ctx, l.slot, cp, []string{l.slot}, false); err != nil {
		return fmt.Errorf("link %s: %w", l.cfg.Name, err)
	}
	const maxBatch = 5000
	var applied atomic.Uint64
	relations := map[uint32]*source{}
	var txn, batch []target.Change
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
	go func() {
		readerErr = l.read(rctx, rc, msgs, &applied)
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
		n, at := batchTxns, batchCommit
		batchTxns = 0
		l.setStatus(func(s *Status) {
			s.Checkpoint, s.LastCommit, s.LastApplied, s.Applied = cp, at, time.Now(), s.Applied+n
		})
		return nil
	}
	for {
		var msg any
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
			continue
		case msg = <-msgs:
			timer.Stop()
		}
		switch m := msg.(type) {
		case logrepl.XLogData:
			d, err := logrepl.Decode(m.Data)
			if err != nil {
				return fmt.Errorf("link %s: %w", l.cfg.Name, err)
			}
			switch v := d.(type) {
			case logrepl.Relation:
				src := tables[v.Namespace+"."+v.Name]
				if src == nil {
					return fmt.Errorf("link %s: change of table %s.%s that is not linked", l.cfg.Name, v.Namespace, v.Name)
				}
				if !sameShape(src.target, v) {
					// Committed changes were decoded with the old shape: apply them before the target changes.
					if err := flush(); err != nil {
						return err
					}
					if err := l.followShape(ctx, db, src, v); err != nil {
						return fmt.Errorf("link %s: table %s.%s: %w", l.cfg.Name, v.Namespace, v.Name, err)
					}
				}
				relations[v.ID] = src
			case logrepl.Begin:
				txn = txn[:0]
			case logrepl.Insert, logrepl.Update, logrepl.Delete, logrepl.Truncate:
				changes, err := toChanges(relations, v)
				if err != nil {
					return fmt.Errorf("link %s: %w", l.cfg.Name, err)
				}
				txn = append(txn, changes...)
			case logrepl.Commit:
				if v.EndLSN <= cp {
					txn = txn[:0]
					continue // applied before a restart
				}
				batch = append(batch, txn...)
				batchEnd, batchCommit = v.EndLSN, v.CommitTime
				batchTxns++
				txn = txn[:0]
				if len(batch) >= maxBatch {
					if err := flush(); err != nil {
						return err
					}
				}
			}
		}
	}
}

// read receives the stream into msgs and sends standby status updates: written = everything received; flushed =
// what the target holds, or everything received once the target holds every transaction received so far (no
// transaction open, the last commit applied), as PostgreSQL's own apply worker reports. The latter lets the slot
// pass WAL with nothing to apply (checkpoints, other tables' transactions), and a walsender of a primary shutting
// down for a planned failover waits for exactly that: flushed = everything it sent.
func (l *Link) read(ctx context.Context, rc *logrepl.Conn, msgs chan<- any, applied *atomic.Uint64) error {
	received := lsn.LSN(applied.Load())
	var lastEnd lsn.LSN // end of the last commit handed to the applier
	inTxn := false
	next := time.Now()
	for {
		if time.Now().After(next) {
			cp := lsn.LSN(applied.Load())
			flushed := cp
			if !inTxn && cp >= lastEnd {
				flushed = max(received, cp)
			}
			if err := rc.SendStandbyStatus(ctx, max(received, cp), flushed, flushed, false); err != nil {
				return err
			}
			next = time.Now().Add(l.cfg.StatusInterval)
		}
		rctx, cancel := context.WithDeadline(ctx, next)
		msg, err := rc.Receive(rctx)
		cancel()
		if err != nil {
			if ctx.Err() == nil && errors.Is(err, context.DeadlineExceeded) {
				continue
			}
			return err
		}
		switch m := msg.(type) {
		case logrepl.Keepalive:
			received = max(received, m.ServerWALEnd)
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

// sameShape reports whether the stream's relation has the columns the link's target table has, in order.
func sameShape(t *target.Table, r logrepl.Relation) bool {
	if len(r.Columns) != len(t.Columns) {
		return false
	}
	for i, c := range r.Columns {
		if c.Name != t.Columns[i].Name {
			return false
		}
	}
	return true
}

// followShape follows ADD COLUMN and DROP COLUMN on the source into the target table. A column whose type
// changed, or a dropped key column, cannot be followed: the link stops with that error.
func (l *Link) followShape(ctx context.Context, db *pgx.Conn, src *source, r logrepl.Relation) error {
	old := map[string]target.Column{}
	for _, c := range src.target.Columns {
		old[c.Name] = c
	}
	var cols, added []target.Column
	seen := map[string]bool{}
	for _, rc := range r.Columns {
		var typ string
		if err := db.QueryRow(ctx, "SELECT format_type($1, $2)", rc.TypeOID, rc.TypMod).Scan(&typ); err != nil {
			return fmt.Errorf("type of column %s: %w", rc.Name, err)
		}
		c := target.Column{Name: rc.Name, SourceType: typ}
		if prev, ok := old[rc.Name]; ok && prev.SourceType != typ {
			return fmt.Errorf("the type of column %s changed from %s to %s; this cannot be followed, restart the link with dropExistingTargetTableOnStart", rc.Name, prev.SourceType, typ)
		} else if !ok {
			added = append(added, c)
		}
		cols, seen[rc.Name] = append(cols, c), true
	}
	var dropped []string
	for _, c := range src.target.Columns {
		if !seen[c.Name] {
			for _, k := range src.target.Key {
				if k == c.Name {
					return fmt.Errorf("key column %s was dropped; this cannot be followed", c.Name)
				}
			}
			dropped = append(dropped, c.Name)
		}
	}
	if err := l.cfg.Target.AlterTable(ctx, src.target, added, dropped); err != nil {
		return err
	}
	l.cfg.Logger.Info("link follows a schema change", "link", l.cfg.Name, "table", src.target.Name,
		"added", len(added), "dropped", len(dropped))
	next := *src.target
	next.Columns = cols
	src.target = &next // changes decoded before keep the old shape
	return nil
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

func toChanges(relations map[uint32]*source, msg any) ([]target.Change, error) {
	rel := func(id uint32) (*target.Table, error) {
		src := relations[id]
		if src == nil {
			return nil, fmt.Errorf("change of relation %d before its description", id)
		}
		return src.target, nil
	}
	switch v := msg.(type) {
	case logrepl.Insert:
		t, err := rel(v.RelationID)
		return []target.Change{{Kind: target.Insert, Table: t, New: values(v.New)}}, err
	case logrepl.Update:
		t, err := rel(v.RelationID)
		return []target.Change{{Kind: target.Update, Table: t, Old: values(v.Old), New: values(v.New)}}, err
	case logrepl.Delete:
		t, err := rel(v.RelationID)
		return []target.Change{{Kind: target.Delete, Table: t, Old: values(v.Old)}}, err
	case logrepl.Truncate:
		var out []target.Change
		for _, id := range v.RelationIDs {
			t, err := rel(id)
			if err != nil {
				return nil, err
			}
			out = append(out, target.Change{Kind: target.Truncate, Table: t})
		}
		return out, nil
	}
	return nil, nil
}
