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
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/fogo-db/fogo/internal/link/target"
	"github.com/fogo-db/fogo/internal/postgres/logrepl"
	"github.com/fogo-db/fogo/internal/postgres/lsn"
)

// TableMapping links one source table to one target table.
type TableMapping struct {
	ID                        string // the client's id of the linked table (status reports it)
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
	// Batch: Run applies what the source committed until Run started, then returns nil with the link Idle
	// (dataProcessIntervalMinutes runs one batch per interval).
	Batch bool
}

// Status is what the link knows from facts.
type Status struct {
	Phase       string // Starting, Snapshotting, Streaming, Idle (between batches), Failed
	Checkpoint  lsn.LSN
	LastCommit  time.Time // commit time of the last applied source transaction
	LastApplied time.Time // when it was applied
	Applied     int64     // source transactions applied since start
	Err         string
	LastHeard   time.Time // when the source last sent anything on the replication connection (a heartbeat)
	// LastBatch (batch mode) is when the last batch finished: everything the source had committed when it
	// started was applied then, and the link went Idle until the next one.
	LastBatch time.Time
	Tables    []TableStatus
}

// Table statuses (the Synapse link table states).
const (
	TableSnapshotting = "Snapshotting"
	TableReplicating  = "Replicating"
	TableFailed       = "Failed"
)

// TableStatus is one linked table's status, from facts.
type TableStatus struct {
	ID, Source  string // Source is "schema.table"
	Status      string
	Err         string
	Resync      string    // why the table was last synchronised again from a fresh snapshot, if it was
	SyncedAt    lsn.LSN   // its contents were last copied from a snapshot at this source position
	LastCommit  time.Time // commit time of the last applied source transaction that changed it
	LastApplied time.Time
}

// Link is a running link connection.
type Link struct {
	cfg    Config
	slot   string
	mu     sync.Mutex
	status Status
	tables map[string]*TableStatus // by source table
	heard  atomic.Int64            // when the source last sent anything (Unix nanoseconds)
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
	l := &Link{cfg: cfg, slot: slot, status: Status{Phase: "Starting"}, tables: map[string]*TableStatus{}}
	for _, m := range cfg.Tables {
		m = m.WithDefaults()
		key := m.SourceSchema + "." + m.SourceTable
		l.tables[key] = &TableStatus{ID: m.ID, Source: key, Status: "Starting"}
	}
	return l
}

// WithDefaults fills in the public schema and the target names.
func (m TableMapping) WithDefaults() TableMapping {
	if m.SourceSchema == "" {
		m.SourceSchema = "public"
	}
	if m.TargetTable == "" {
		m.TargetTable = m.SourceTable
	}
	if m.TargetSchema == "" {
		m.TargetSchema = m.SourceSchema
	}
	if m.ID == "" {
		m.ID = m.SourceSchema + "." + m.SourceTable
	}
	return m
}

// SlotName is the link's replication slot (and publication) on the source.
func (l *Link) SlotName() string { return l.slot }

// Status returns the current status.
func (l *Link) Status() Status {
	l.mu.Lock()
	defer l.mu.Unlock()
	st := l.status
	if h := l.heard.Load(); h != 0 {
		st.LastHeard = time.Unix(0, h)
	}
	st.Tables = make([]TableStatus, 0, len(l.tables))
	for _, t := range l.tables {
		st.Tables = append(st.Tables, *t)
	}
	sort.Slice(st.Tables, func(i, j int) bool { return st.Tables[i].Source < st.Tables[j].Source })
	if st.Phase == "Failed" {
		st = st.AsFailed(st.Err)
	}
	return st
}

// AsFailed is st as a link that failed with err reports it: the tables of a link that does not run are not
// starting, snapshotting or replicating, so each table that has not failed by itself reports the link's failure.
func (st Status) AsFailed(err string) Status {
	st.Phase, st.Err = "Failed", err
	tables := make([]TableStatus, len(st.Tables))
	for i, t := range st.Tables {
		if t.Status != TableFailed {
			t.Status, t.Err = TableFailed, err
		}
		tables[i] = t
	}
	st.Tables = tables
	return st
}

// CarryOver takes what an earlier run of the same link knew from facts — when it last applied a change and the
// source commit time of it, per table and overall, and why a table was last resynchronised — so that a restart
// (a failover, a lost connection) does not blank the status.
func (l *Link) CarryOver(prev Status) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.status.LastCommit.IsZero() {
		l.status.LastCommit, l.status.LastApplied = prev.LastCommit, prev.LastApplied
	}
	if l.status.LastBatch.IsZero() {
		l.status.LastBatch = prev.LastBatch
	}
	for _, p := range prev.Tables {
		if t := l.tables[p.Source]; t != nil {
			if t.LastCommit.IsZero() {
				t.LastCommit, t.LastApplied = p.LastCommit, p.LastApplied
			}
			if t.Resync == "" {
				t.Resync = p.Resync
			}
		}
	}
}

func (l *Link) setTable(key string, fn func(*TableStatus)) {
	l.mu.Lock()
	if t := l.tables[key]; t != nil {
		fn(t)
	}
	l.mu.Unlock()
}

func (l *Link) setStatus(fn func(*Status)) {
	l.mu.Lock()
	fn(&l.status)
	l.mu.Unlock()
}

// source is a described source table and its target.
type source struct {
	key      string // "schema.table"
	m        TableMapping
	target   *target.Table
	types    []colType // the source type of each target column
	failed   string    // the table failed: its changes are skipped
	missing  bool      // the source table does not exist
	syncedAt lsn.LSN   // its changes at or below this position are in the target already
}

// colType is a column's type as pg_attribute and pgoutput's Relation message name it.
type colType struct {
	oid uint32
	mod int32
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
	// A run ends only once its source backends have: a statement it interrupted (CREATE PUBLICATION, say) must not
	// commit under the next run, nor its walsender hold the slot the next run (or whoever stopped the link) uses.
	defer logrepl.CloseAndWait(context.Background(), db.PgConn())
	tables, err := l.describe(ctx, db)
	if err != nil {
		return err
	}
	cp, err := l.cfg.Target.Checkpoint(ctx, l.cfg.Name)
	if err != nil {
		return err
	}
	states, err := l.cfg.Target.TableStates(ctx, l.cfg.Name)
	if err != nil {
		return err
	}
	if cp == 0 {
		states = nil // starting over: earlier failures and positions do not count
	}
	for key, st := range states {
		if t := tables[key]; t != nil {
			t.syncedAt = st.SyncedAt
			if st.Failed != "" && t.failed == "" {
				t.failed = st.Failed
			}
			l.setTable(key, func(s *TableStatus) {
				s.SyncedAt = st.SyncedAt
				if t.failed != "" {
					s.Status, s.Err = TableFailed, t.failed
				}
			})
		}
	}
	// A source table that is gone forgets its state: if it comes back (recreated), nothing of its past changes
	// can be trusted, and it is synchronised as an added table.
	var gone []string
	for key, t := range tables {
		if _, ok := states[key]; ok && t.missing {
			gone = append(gone, key)
		}
	}
	if len(gone) > 0 {
		if err := l.cfg.Target.ForgetTables(ctx, l.cfg.Name, gone...); err != nil {
			return err
		}
	}
	healthy := l.healthy(tables)
	if len(healthy) == 0 {
		return fmt.Errorf("link %s: no table can be linked (%s)", l.cfg.Name, l.failures(tables))
	}
	if err := l.ensurePublication(ctx, db, healthy); err != nil {
		return err
	}
	rc, err := logrepl.Connect(ctx, l.cfg.Source)
	if err != nil {
		return fmt.Errorf("link %s: %w", l.cfg.Name, err)
	}
	defer rc.Close(context.Background()) // waits until the walsender has released the slot
	if cp == 0 {
		if cp, err = l.snapshot(ctx, db, rc, healthy); err != nil {
			return err
		}
	} else if cp, err = l.resume(ctx, db, rc, healthy, states, cp); err != nil {
		return err
	}
	l.setStatus(func(s *Status) { s.Phase, s.Checkpoint = "Streaming", cp })
	err = l.stream(ctx, db, rc, tables, cp)
	if errors.Is(err, errBatchDone) {
		l.setStatus(func(s *Status) { s.Phase, s.LastBatch = "Idle", time.Now() })
		return nil
	}
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) && pgErr.Code == "58P01" && strings.Contains(pgErr.Message, "WAL segment") {
		// The slot cannot serve the checkpoint any more (e.g. a slot copy older than its server's WAL): drop it,
		// so that the next run resynchronises every table from a fresh slot.
		l.cfg.Logger.Error("link slot cannot be read; dropping it to resynchronise", "link", l.cfg.Name, "err", err)
		dctx, cancel := context.WithTimeout(context.Background(), slotFreeTimeout+5*time.Second)
		defer cancel()
		if derr := l.dropSlot(dctx, db); derr != nil { // once the walsender released it
			return fmt.Errorf("%w; dropping the slot failed too: %v", err, derr)
		}
	}
	return err
}

// dropSlot drops the link's slot on the source, once no walsender uses it.
func (l *Link) dropSlot(ctx context.Context, db *pgx.Conn) error {
	if err := l.waitSlotFree(ctx, db, l.slot); err != nil {
		return err
	}
	if _, err := db.Exec(ctx, "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = $1", l.slot); err != nil {
		return fmt.Errorf("link %s: drop the slot: %w", l.cfg.Name, err)
	}
	return nil
}

// slotFreeTimeout bounds how long a run waits for another walsender to release a slot it needs: that of an
// earlier run still exiting, or of a connection whose client went away without closing it (PostgreSQL ends that
// one after wal_sender_timeout). The run fails after it, and is retried.
const slotFreeTimeout = 30 * time.Second

// waitSlotFree waits, bounded by slotFreeTimeout, until no walsender uses the slot (or it does not exist), saying
// so in the status while it waits.
func (l *Link) waitSlotFree(ctx context.Context, db *pgx.Conn, slot string) error {
	deadline := time.Now().Add(slotFreeTimeout)
	waiting := false
	defer func() {
		if waiting {
			l.setStatus(func(s *Status) { s.Err = "" })
		}
	}()
	for {
		var pid *int32
		err := db.QueryRow(ctx, "SELECT active_pid FROM pg_replication_slots WHERE slot_name = $1", slot).Scan(&pid)
		if errors.Is(err, pgx.ErrNoRows) || (err == nil && pid == nil) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("link %s: read slot %s: %w", l.cfg.Name, slot, err)
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("link %s: replication slot %s is still in use by process %d after %s", l.cfg.Name, slot, *pid, slotFreeTimeout)
		}
		if !waiting {
			waiting = true
			msg := fmt.Sprintf("waiting for process %d to release replication slot %s", *pid, slot)
			l.setStatus(func(s *Status) { s.Err = msg })
			l.cfg.Logger.Info("link waits for its slot", "link", l.cfg.Name, "slot", slot, "pid", *pid)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// healthy returns the tables that have not failed.
func (l *Link) healthy(tables map[string]*source) map[string]*source {
	out := map[string]*source{}
	for k, t := range tables {
		if t.failed == "" {
			out[k] = t
		}
	}
	return out
}

func (l *Link) failures(tables map[string]*source) string {
	var msgs []string
	for k, t := range tables {
		if t.failed != "" {
			msgs = append(msgs, k+": "+t.failed)
		}
	}
	sort.Strings(msgs)
	return strings.Join(msgs, "; ")
}

// resume prepares streaming from checkpoint cp. If the source has no slot for the link (a failover to an
// instance that had no copy of it) or the slot cannot serve cp any more, every table is synchronised again from a
// fresh slot's snapshot, merged by primary key; tables added since the last run (no recorded state) are
// synchronised from a temporary slot's snapshot. It returns the checkpoint to stream from.
func (l *Link) resume(ctx context.Context, db *pgx.Conn, rc *logrepl.Conn, tables map[string]*source, states map[string]target.TableState, cp lsn.LSN) (lsn.LSN, error) {
	var exists bool
	if err := db.QueryRow(ctx, "SELECT EXISTS (SELECT 1 FROM pg_replication_slots WHERE slot_name = $1)", l.slot).Scan(&exists); err != nil {
		return 0, fmt.Errorf("link %s: read slots: %w", l.cfg.Name, err)
	}
	added := map[string]*source{}
	for k, t := range tables {
		_, known := states[k]
		if !known && exists {
			added[k] = t // a table added to the link (again) gets a target table of its current shape
		}
		if err := l.cfg.Target.EnsureTable(ctx, t.target, !known && exists); err != nil {
			return 0, err
		}
	}
	if !exists {
		reason := fmt.Sprintf("the source had no replication slot %s (its copy was missing after a failover, or the slot was dropped)", l.slot)
		return l.resyncAll(ctx, db, rc, tables, reason)
	}
	if len(added) > 0 {
		if err := l.syncTables(ctx, db, added, "added to the link"); err != nil {
			return 0, err
		}
	}
	return cp, nil
}

// resyncAll starts over on a fresh slot without emptying the target: every table is merged with the slot's
// exported snapshot by primary key, then the checkpoint moves to the slot's consistent point.
func (l *Link) resyncAll(ctx context.Context, db *pgx.Conn, rc *logrepl.Conn, tables map[string]*source, reason string) (lsn.LSN, error) {
	l.cfg.Logger.Warn("link resynchronises every table", "link", l.cfg.Name, "reason", reason)
	if err := l.dropSlot(ctx, db); err != nil {
		return 0, err
	}
	slot, err := rc.CreateSlot(ctx, l.slot, false, true)
	if err != nil {
		return 0, fmt.Errorf("link %s: %w", l.cfg.Name, err)
	}
	if err := l.mergeSnapshot(ctx, db, slot, tables, reason); err != nil {
		return 0, err
	}
	if err := l.cfg.Target.Apply(ctx, l.cfg.Name, nil, slot.ConsistentPoint); err != nil {
		return 0, err
	}
	return slot.ConsistentPoint, nil
}

// syncTables synchronises some tables from the snapshot of a temporary slot while the link's own slot stays
// where it is: each table's contents become those of the snapshot, and the stream skips its changes up to the
// temporary slot's consistent point (what PostgreSQL's own table synchronisation does).
func (l *Link) syncTables(ctx context.Context, db *pgx.Conn, tables map[string]*source, reason string) error {
	rc, err := logrepl.Connect(ctx, l.cfg.Source)
	if err != nil {
		return fmt.Errorf("link %s: %w", l.cfg.Name, err)
	}
	defer rc.Close(context.Background()) // drops the temporary slot: returns once it is gone
	// An earlier run's temporary slot goes with its walsender.
	if err := l.waitSlotFree(ctx, db, l.slot+"_sync"); err != nil {
		return err
	}
	slot, err := rc.CreateSlot(ctx, l.slot+"_sync", true, true)
	if err != nil {
		return fmt.Errorf("link %s: table synchronisation slot: %w", l.cfg.Name, err)
	}
	return l.mergeSnapshot(ctx, db, slot, tables, reason)
}

// mergeSnapshot merges each table's rows as of the slot's exported snapshot into its target table.
func (l *Link) mergeSnapshot(ctx context.Context, db *pgx.Conn, slot logrepl.Slot, tables map[string]*source, reason string) error {
	tx, err := db.BeginTx(ctx, pgx.TxOptions{IsoLevel: pgx.RepeatableRead, AccessMode: pgx.ReadOnly})
	if err != nil {
		return err
	}
	defer tx.Rollback(context.Background())
	if _, err := tx.Exec(ctx, "SET TRANSACTION SNAPSHOT '"+slot.SnapshotName+"'"); err != nil {
		return fmt.Errorf("link %s: use the slot's snapshot: %w", l.cfg.Name, err)
	}
	// Nothing of the snapshot may reach the target before the geo-secondary holds it.
	if err := l.waitGate(ctx, slot.ConsistentPoint); err != nil {
		return err
	}
	keys := make([]string, 0, len(tables))
	for k := range tables {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		t := tables[k]
		l.setTable(k, func(s *TableStatus) { s.Status, s.Resync = TableSnapshotting, reason })
		n, err := l.mergeTable(ctx, tx, t, slot.ConsistentPoint)
		if err != nil && ctx.Err() == nil && !errors.As(err, new(sourceError)) {
			// The target table no longer fits the source (its shape changed while the link could not follow):
			// recreate it and merge again; the merge is one target transaction, so nothing half-done remains.
			l.cfg.Logger.Warn("link recreates a target table that no longer fits its source", "link", l.cfg.Name, "table", k, "err", err)
			if err = l.cfg.Target.EnsureTable(ctx, t.target, true); err == nil {
				n, err = l.mergeTable(ctx, tx, t, slot.ConsistentPoint)
			}
		}
		if err != nil {
			return fmt.Errorf("link %s: resynchronise %s: %w", l.cfg.Name, k, err)
		}
		t.syncedAt = slot.ConsistentPoint
		l.setTable(k, func(s *TableStatus) { s.SyncedAt, s.LastApplied = slot.ConsistentPoint, time.Now() })
		l.cfg.Logger.Info("link table resynchronised", "link", l.cfg.Name, "table", k, "rows", n,
			"at", slot.ConsistentPoint.String(), "reason", reason)
	}
	return nil
}

// mergeTable merges a source table's rows, as the snapshot of tx shows them, into its target table.
func (l *Link) mergeTable(ctx context.Context, tx pgx.Tx, t *source, at lsn.LSN) (int, error) {
	rows, err := tx.Query(ctx, selectAll(t))
	if err != nil {
		return 0, sourceError{fmt.Errorf("read %s: %w", t.key, err)}
	}
	defer rows.Close()
	return l.cfg.Target.MergeTable(ctx, l.cfg.Name, t.key, t.target, at, func() ([]target.Value, error) {
		if !rows.Next() {
			if err := rows.Err(); err != nil {
				return nil, sourceError{fmt.Errorf("read %s: %w", t.key, err)}
			}
			return nil, nil
		}
		row, err := scanText(rows, len(t.target.Columns))
		if err != nil {
			return nil, sourceError{err}
		}
		return row, nil
	})
}

// sourceError marks a failure to read the source (as opposed to one of the target).
type sourceError struct{ error }

func (e sourceError) Unwrap() error { return e.error }

// selectAll reads every column of a source table as text.
func selectAll(t *source) string {
	cols := make([]string, len(t.target.Columns))
	for i, c := range t.target.Columns {
		cols[i] = pgx.Identifier{c.Name}.Sanitize() + "::text"
	}
	return "SELECT " + strings.Join(cols, ", ") + " FROM " + pgx.Identifier{t.m.SourceSchema, t.m.SourceTable}.Sanitize()
}

// scanText scans one row of text columns into target values.
func scanText(rows pgx.Rows, n int) ([]target.Value, error) {
	vals := make([]*string, n)
	ptrs := make([]any, n)
	for i := range vals {
		ptrs[i] = &vals[i]
	}
	if err := rows.Scan(ptrs...); err != nil {
		return nil, err
	}
	row := make([]target.Value, n)
	for i, v := range vals {
		if v == nil {
			row[i] = target.Value{Null: true}
		} else {
			row[i] = target.Value{Text: *v}
		}
	}
	return row, nil
}

// describe reads the columns, types and key of every linked table. A table that cannot be linked (it does not
// exist, it has no key) is returned failed, with the reason; the others are linked regardless.
func (l *Link) describe(ctx context.Context, db *pgx.Conn) (map[string]*source, error) {
	out := map[string]*source{}
	for _, m := range l.cfg.Tables {
		m = m.WithDefaults()
		t := &target.Table{Schema: m.TargetSchema, Name: m.TargetTable}
		rows, err := db.Query(ctx, `SELECT a.attname, format_type(a.atttypid, a.atttypmod),
				coalesce(a.attnum = ANY(i.indkey::int2[]), false), c.relreplident, a.atttypid, a.atttypmod
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
		var types []colType
		for rows.Next() {
			var c target.Column
			var key bool
			var ct colType
			if err := rows.Scan(&c.Name, &c.SourceType, &key, &ident, &ct.oid, &ct.mod); err != nil {
				rows.Close()
				return nil, err
			}
			t.Columns, types = append(t.Columns, c), append(types, ct)
			if key {
				t.Key = append(t.Key, c.Name)
			}
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return nil, err
		}
		src := &source{key: m.SourceSchema + "." + m.SourceTable, m: m, target: t, types: types}
		switch {
		case len(t.Columns) == 0:
			src.failed, src.missing = fmt.Sprintf("source table %s does not exist", src.key), true
		case len(t.Key) == 0 && ident != "f":
			src.failed = fmt.Sprintf("source table %s: %v", src.key, target.ErrNoKey)
		case len(t.Key) == 0:
			for _, c := range t.Columns {
				t.Key = append(t.Key, c.Name)
			}
		}
		if src.failed != "" {
			l.cfg.Logger.Warn("link table cannot be linked", "link", l.cfg.Name, "table", src.key, "err", src.failed)
			l.setTable(src.key, func(s *TableStatus) { s.Status, s.Err = TableFailed, src.failed })
		}
		out[src.key] = src
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
	// Another session may create or drop the publication between the check and the statement (an earlier run's
	// statement still finishing, a second fogo): CREATE then finds it (42710, or 23505 when both created it at
	// once) and ALTER misses it (42704); the other statement follows.
	for attempt := 0; ; attempt++ {
		sql := "CREATE PUBLICATION " + pgx.Identifier{l.slot}.Sanitize() + " FOR TABLE " + list
		if exists {
			sql = "ALTER PUBLICATION " + pgx.Identifier{l.slot}.Sanitize() + " SET TABLE " + list
		}
		_, err := db.Exec(ctx, sql)
		if err == nil {
			return nil
		}
		var pgErr *pgconn.PgError
		if attempt < 3 && errors.As(err, &pgErr) && (pgErr.Code == "42710" || pgErr.Code == "23505" || pgErr.Code == "42704") {
			exists = pgErr.Code != "42704"
			continue
		}
		return fmt.Errorf("link %s: publication: %w", l.cfg.Name, err)
	}
}

// snapshot starts over: a fresh slot with an exported snapshot, the target tables emptied or recreated, every row
// as of the snapshot copied, and the slot's consistent point recorded as the checkpoint with the last batch.
func (l *Link) snapshot(ctx context.Context, db *pgx.Conn, rc *logrepl.Conn, tables map[string]*source) (lsn.LSN, error) {
	l.setStatus(func(s *Status) { s.Phase = "Snapshotting" })
	if err := l.dropSlot(ctx, db); err != nil {
		return 0, err
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
	for k, t := range tables {
		l.setTable(k, func(s *TableStatus) { s.Status = TableSnapshotting })
		if err := l.cfg.Target.EnsureTable(ctx, t.target, l.cfg.DropExistingOnStart); err != nil {
			return 0, err
		}
		batch = append(batch, target.Clear(t.target))
		rows, err := tx.Query(ctx, selectAll(t))
		if err != nil {
			return 0, fmt.Errorf("link %s: read %s: %w", l.cfg.Name, k, err)
		}
		for rows.Next() {
			row, err := scanText(rows, len(t.target.Columns))
			if err != nil {
				rows.Close()
				return 0, err
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
	// The tables' states, after the checkpoint: a crash between the two only makes the next run merge every
	// table again.
	states := map[string]target.TableState{}
	for k, t := range tables {
		t.syncedAt, states[k] = slot.ConsistentPoint, target.TableState{SyncedAt: slot.ConsistentPoint}
		l.setTable(k, func(s *TableStatus) { s.SyncedAt, s.LastApplied = slot.ConsistentPoint, time.Now() })
	}
	if err := l.cfg.Target.SetTableStates(ctx, l.cfg.Name, states); err != nil {
		return 0, err
	}
	l.cfg.Logger.Info("link snapshot done", "link", l.cfg.Name, "consistent_point", slot.ConsistentPoint.String())
	return slot.ConsistentPoint, nil
}

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
			if src == nil {
				// Changes decoded from before the table left the publication: not linked any more.
				src = &source{key: v.Namespace + "." + v.Name, failed: "not linked"}
			} else if src.failed == "" && !sameShape(src, v) {
				// Committed changes were decoded with the old shape: apply them before the target changes.
				if err := flush(); err != nil {
					return err
				}
				if err := l.followShape(ctx, db, src, v); err != nil {
					if err := l.failTable(ctx, src, err); err != nil {
						return err
					}
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
			for i, c := range txn {
				src := txnSrc[i]
				if src.failed != "" || v.EndLSN <= src.syncedAt {
					continue // a failed table, or one whose snapshot holds the change already
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

// sameShape reports whether the stream's relation has the columns, with the types, the link's table has.
func sameShape(src *source, r logrepl.Relation) bool {
	if len(r.Columns) != len(src.target.Columns) || len(src.types) != len(r.Columns) {
		return false
	}
	for i, c := range r.Columns {
		if c.Name != src.target.Columns[i].Name || c.TypeOID != src.types[i].oid || c.TypMod != src.types[i].mod {
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
			return fmt.Errorf("the type of column %s changed from %s to %s; this cannot be followed: remove the table from the link and add it again to recreate and resynchronise it", rc.Name, prev.SourceType, typ)
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
					return fmt.Errorf("key column %s was dropped; this cannot be followed: remove the table from the link and add it again to recreate and resynchronise it", c.Name)
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
	src.types = src.types[:0:0]
	for _, rc := range r.Columns {
		src.types = append(src.types, colType{oid: rc.TypeOID, mod: rc.TypMod})
	}
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
