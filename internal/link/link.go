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
// none, then stream. One file per concern: link.go (the types and Run's sequence), source.go (describing the
// source tables, the publication), snapshot.go, stream.go (decoding, batching, applying, the reader), gate.go
// (the failover-safe gate), schema.go (following ADD/DROP COLUMN), resync.go (resuming, and merging tables
// afresh when the slot cannot serve the checkpoint).
package link

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
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
	Name string
	// Slot is the link's replication slot and publication on the source; "" is LegacySlotName(Name), the name
	// links created before SlotNameFor had (kept so that an existing link's slot never changes under it).
	Slot                string
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
	// SpoolDir is where a source transaction too large for memory waits for its commit, in a file of its own
	// that is unlinked as soon as it is made ("" is the system's temporary directory).
	SpoolDir string
}

// Status is what the link knows from facts.
type Status struct {
	Phase       string // Starting, Snapshotting, Streaming, Idle (between batches), Failed
	Checkpoint  lsn.LSN
	LastCommit  time.Time // commit time of the last applied source transaction
	LastApplied time.Time // when it was applied
	Applied     int64     // source transactions applied since start
	Spooled     int64     // of those, transactions too large for memory, applied from a spool file
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

// LegacySlotName is the slot (and publication) name links had before SlotNameFor: not injective ("x/y_z" and
// "x_y/z", "a-b" and "a_b" map to the same slot).
func LegacySlotName(name string) string {
	return "fogo_link_" + nonIdent.ReplaceAllString(strings.ToLower(name), "_")
}

// maxSlotName is PostgreSQL's limit on a replication slot's name (NAMEDATALEN - 1).
const maxSlotName = 63

// SlotNameFor is the slot (and publication) name of a link whose key is key: a readable, sanitized prefix of the
// key plus a hash of the exact key, so that two different keys never share a slot. It leaves room for the
// "_sync" suffix of the link's table-synchronisation slot (syncSlotName) within PostgreSQL's 63 bytes.
func SlotNameFor(key string) string {
	prefix := strings.Trim(nonIdent.ReplaceAllString(strings.ToLower(key), "_"), "_")
	if len(prefix) > 31 {
		prefix = prefix[:31]
	}
	sum := sha256.Sum256([]byte(key))
	return "fogo_link_" + prefix + "_" + hex.EncodeToString(sum[:8]) // at most 10+31+1+16 = 58 bytes
}

// syncSlotName is the temporary slot that synchronises added (or resynchronised) tables of the link whose slot is
// slot: slot_sync, or for a long legacy slot name a hash of it, so that it is never longer than PostgreSQL allows.
func syncSlotName(slot string) string {
	if len(slot)+len("_sync") <= maxSlotName {
		return slot + "_sync"
	}
	sum := sha256.Sum256([]byte(slot))
	return "fogo_sync_" + hex.EncodeToString(sum[:16])
}

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
	slot := cfg.Slot
	if slot == "" {
		slot = LegacySlotName(cfg.Name)
	}
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
	oid      uint32    // the source table's OID when it was described (pgoutput's relation id)
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

func (l *Link) run(ctx context.Context) (err error) {
	dbCfg, err := pgx.ParseConfig(l.cfg.Source)
	if err != nil {
		return fmt.Errorf("link %s: source connection string: %w", l.cfg.Name, err)
	}
	logrepl.PinSession(dbCfg.RuntimeParams) // the formats the snapshot's text values are parsed in
	db, err := pgx.ConnectConfig(ctx, dbCfg)
	if err != nil {
		return fmt.Errorf("link %s: connect to source: %w", l.cfg.Name, err)
	}
	// A run ends only once its source backends have: a statement it interrupted (CREATE PUBLICATION, say) must not
	// commit under the next run, nor its walsender hold the slot the next run (or whoever stopped the link) uses.
	defer logrepl.CloseAndWait(context.Background(), db.PgConn())
	defer l.failedNow(ctx, &err)
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
		states = nil // starting over: earlier failures and positions do not count, nor an unfinished resync
		if err := l.cfg.Target.FinishResync(ctx, l.cfg.Name, 0); err != nil {
			return err
		}
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
	defer l.failedNow(ctx, &err)
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
	if errors.As(err, &pgErr) && (pgErr.Code == "58P01" && strings.Contains(pgErr.Message, "WAL segment") ||
		pgErr.Code == "55000" && strings.Contains(pgErr.Message, "cannot read from logical replication slot")) {
		// The slot cannot serve the checkpoint any more (e.g. a slot copy older than its server's WAL, or a slot
		// invalidated for retaining more than max_slot_wal_keep_size): drop it, so that the next run
		// resynchronises every table from a fresh slot.
		l.cfg.Logger.Error("link slot cannot be read; dropping it to resynchronise", "link", l.cfg.Name, "err", err)
		dctx, cancel := context.WithTimeout(context.Background(), slotFreeTimeout+5*time.Second)
		defer cancel()
		if derr := l.dropSlot(dctx, db); derr != nil { // once the walsender released it
			return fmt.Errorf("%w; dropping the slot failed too: %v", err, derr)
		}
	}
	return err
}

// failedNow says in the status that the run failed, before the closes deferred earlier wait for the source's
// backends to end: on a frozen or cut-off source each waits up to 15 s, and the status must not read Streaming
// meanwhile.
func (l *Link) failedNow(ctx context.Context, err *error) {
	if *err != nil && ctx.Err() == nil {
		msg := (*err).Error()
		l.setStatus(func(s *Status) { s.Phase, s.Err = "Failed", msg })
	}
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

// DropOwned drops what the link named name owns on a source (a deleted link's): its replication slot (slot; ""
// for LegacySlotName(name)), once no walsender uses it, and with publication set its publication (a standby's
// slot copy has none of its own). It is idempotent and bounded by ctx (and slotFreeTimeout).
func DropOwned(ctx context.Context, connString, name, slot string, publication bool) error {
	db, err := pgx.Connect(ctx, connString)
	if err != nil {
		return fmt.Errorf("link %s: connect to source: %w", name, err)
	}
	defer db.Close(context.Background())
	l := New(Config{Name: name, Slot: slot})
	if err := l.dropSlot(ctx, db); err != nil {
		return err
	}
	if publication {
		if _, err := db.Exec(ctx, "DROP PUBLICATION IF EXISTS "+pgx.Identifier{l.slot}.Sanitize()); err != nil {
			return fmt.Errorf("link %s: drop the publication: %w", name, err)
		}
	}
	return nil
}

// SlotWAL is the WAL a link's slot holds on its source, from pg_replication_slots.
type SlotWAL struct {
	Exists bool
	// WALStatus is reserved, extended, unreserved (beyond max_slot_wal_keep_size: the next checkpoint may
	// invalidate the slot, and the link then resynchronises every table) or lost.
	WALStatus     string
	RetainedBytes int64 // from the slot's restart point to the source's current WAL position
}

// ReadSlotWAL reads the WAL the link's slot (named slot) holds on a source (a primary).
func ReadSlotWAL(ctx context.Context, connString, name, slot string) (SlotWAL, error) {
	db, err := pgx.Connect(ctx, connString)
	if err != nil {
		return SlotWAL{}, fmt.Errorf("link %s: connect to source: %w", name, err)
	}
	defer db.Close(context.Background())
	var w SlotWAL
	err = db.QueryRow(ctx, `SELECT coalesce(wal_status, ''),
		coalesce(pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn), 0)::bigint
		FROM pg_replication_slots WHERE slot_name = $1`, slot).Scan(&w.WALStatus, &w.RetainedBytes)
	if errors.Is(err, pgx.ErrNoRows) {
		return SlotWAL{}, nil
	}
	if err != nil {
		return SlotWAL{}, fmt.Errorf("link %s: read its slot: %w", name, err)
	}
	w.Exists = true
	return w, nil
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
