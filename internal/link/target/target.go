// Package target writes a link's changes into an analytics store: DuckDB (the embedded default) or PostgreSQL.
// Both go through database/sql with a small dialect (type mapping and value conversion); everything else —
// creating tables with the source's primary key, idempotent upserts, updates that leave unchanged TOASTed
// columns alone, deletes, truncates — is shared. Runs of inserts are written in bulk: through DuckDB's appender
// (duckbulk.go), or as multi-row INSERT statements into PostgreSQL.
//
// Exactly-once: Apply writes a batch of changes and the link's checkpoint (the end LSN of the last source
// transaction in the batch) in one target transaction, and Checkpoint reads it back, so a restarted link skips
// what the target already holds.
package target

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/fogo-db/fogo/internal/postgres/lsn"
)

// Column is a target column with the source's type.
type Column struct {
	Name       string
	SourceType string // format_type() of the source column, e.g. "numeric(12,2)", "timestamp with time zone"
}

// Table is a target table.
type Table struct {
	Schema, Name string
	Columns      []Column
	Key          []string // primary key
	// Keyless: a REPLICA IDENTITY FULL table without a primary key. Its target table has no key (duplicate rows
	// and NULLs are data); inserts append, and an update or a delete changes exactly one row equal to the old row
	// in every column (compared NULL-safely; DuckDB's rowid, PostgreSQL's ctid pick the one).
	Keyless bool
}

// Kinds of change.
const (
	Insert = iota + 1
	Update
	Delete
	Truncate
	clearTable // a snapshot's first step when the table is kept: nothing of an earlier run may remain
	// Reshape adds and drops columns (Add, Drop) of Table, which has the new shape: a source schema change
	// (ADD/DROP COLUMN), applied in the same target transaction as the changes around it.
	Reshape
)

// Reshaped returns the change that adds and drops columns of t (t has the new shape).
func Reshaped(t *Table, add []Column, drop []string) Change {
	return Change{Kind: Reshape, Table: t, Add: add, Drop: drop}
}

// Clear returns the change that empties t (the first change of a snapshot into a kept table).
func Clear(t *Table) Change { return Change{Kind: clearTable, Table: t} }

// Value is a column value in PostgreSQL's text format; Unchanged marks a TOASTed value an update did not send.
type Value struct {
	Null, Unchanged bool
	Text            string
}

// Change is one row change, with values in the table's column order.
type Change struct {
	Kind  int
	Table *Table
	New   []Value  // Insert, Update
	Old   []Value  // Update (when the key changed or the table is REPLICA IDENTITY FULL), Delete: key columns set
	Add   []Column // Reshape
	Drop  []string // Reshape
}

// Store is a target store.
type Store struct {
	db               *sql.DB
	dialect          dialect
	tableStatesReady atomic.Bool // the table state table exists
	partsReady       atomic.Bool // the parts table exists
	partBytes        int         // SetPartBytes

	connString  string // PostgreSQL: the target's login, whose reader roles run queries (query_postgres.go)
	readerMu    sync.Mutex
	readerReady map[string]bool // reader roles whose password this process has set
	roleAdmin   string          // PostgreSQL: the connection that creates reader roles, if not the target's login
}

// SetRoleAdmin makes the query extension create and grant a PostgreSQL target's reader roles through connString
// (fogo's superuser on a target it manages) instead of the target's own login.
func (s *Store) SetRoleAdmin(connString string) { s.roleAdmin = connString }

// dialect is what differs between stores.
type dialect interface {
	name() string
	columnType(sourceType string) string
	// param converts a text-format value for a parameter of the column's source type.
	param(sourceType, text string) (any, error)
	// cast wraps a placeholder so the store converts it to the column's type.
	cast(placeholder, sourceType string) string
	// rowID is the column that identifies a row of a table without a key (DuckDB's rowid, PostgreSQL's ctid).
	rowID() string
	// query runs a query of the query extension, contained (query.go).
	query(ctx context.Context, s *Store, r QueryRequest) (*QueryResult, error)
}

// ErrNoKey is returned for a table that has neither a primary key nor REPLICA IDENTITY FULL.
var ErrNoKey = errors.New("table has no primary key; give it one or set REPLICA IDENTITY FULL")

const checkpointTable = `"_fogo_link_checkpoints"`

// Close closes the store.
func (s *Store) Close() error { return s.db.Close() }

// DB exposes the connection pool (queries against the target).
func (s *Store) DB() *sql.DB { return s.db }

func qi(s string) string { return `"` + strings.ReplaceAll(s, `"`, `""`) + `"` }

// columnList is t's quoted column names, comma-separated, in order.
func (t *Table) columnList() string {
	cols := make([]string, len(t.Columns))
	for i, c := range t.Columns {
		cols[i] = qi(c.Name)
	}
	return strings.Join(cols, ", ")
}

func (t *Table) qualified() string {
	if t.Schema == "" {
		return qi(t.Name)
	}
	return qi(t.Schema) + "." + qi(t.Name)
}

func (s *Store) ensureCheckpoints(ctx context.Context) error {
	_, err := s.db.ExecContext(ctx, `CREATE TABLE IF NOT EXISTS `+checkpointTable+
		` (link VARCHAR PRIMARY KEY, lsn VARCHAR NOT NULL, updated_at VARCHAR NOT NULL)`)
	return err
}

// Checkpoint returns the link's last applied LSN (0 if none).
func (s *Store) Checkpoint(ctx context.Context, link string) (lsn.LSN, error) {
	if err := s.ensureCheckpoints(ctx); err != nil {
		return 0, fmt.Errorf("%s: checkpoint table: %w", s.dialect.name(), err)
	}
	var v string
	err := s.db.QueryRowContext(ctx, `SELECT lsn FROM `+checkpointTable+` WHERE link = $1`, link).Scan(&v)
	if errors.Is(err, sql.ErrNoRows) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("%s: read checkpoint: %w", s.dialect.name(), err)
	}
	return lsn.Parse(v)
}

// partsTable records, per link, the source transaction being applied in parts and how many of its row changes
// are in the target (a link's row only while a transaction is applied in parts).
const partsTable = `"_fogo_link_parts"`

func (s *Store) ensureParts(ctx context.Context) error {
	if s.partsReady.Load() {
		return nil
	}
	if _, err := s.db.ExecContext(ctx, `CREATE TABLE IF NOT EXISTS `+partsTable+
		` (link VARCHAR PRIMARY KEY, txn_end VARCHAR NOT NULL, done BIGINT NOT NULL)`); err != nil {
		return fmt.Errorf("%s: parts table: %w", s.dialect.name(), err)
	}
	s.partsReady.Store(true)
	return nil
}

// Part returns the source transaction (its end) the link was applying in parts when it stopped, and how many of
// its row changes are in the target; zero if none.
func (s *Store) Part(ctx context.Context, link string) (end lsn.LSN, done int64, err error) {
	if err := s.ensureParts(ctx); err != nil {
		return 0, 0, err
	}
	var v string
	err = s.db.QueryRowContext(ctx, `SELECT txn_end, done FROM `+partsTable+` WHERE link = $1`, link).Scan(&v, &done)
	if errors.Is(err, sql.ErrNoRows) {
		return 0, 0, nil
	}
	if err != nil {
		return 0, 0, fmt.Errorf("%s: read the transaction applied in parts: %w", s.dialect.name(), err)
	}
	end, err = lsn.Parse(v)
	return end, done, err
}

// forgetPart drops the record of a transaction applied in parts inside tx (a link starting over or resynchronised;
// the parts table was made before tx began: a DuckDB transaction does not see tables created after its start).
func (s *Store) forgetPart(ctx context.Context, tx *sql.Tx, link string) error {
	if _, err := tx.ExecContext(ctx, `DELETE FROM `+partsTable+` WHERE link = $1`, link); err != nil {
		return fmt.Errorf("%s: forget the transaction applied in parts: %w", s.dialect.name(), err)
	}
	return nil
}

// PartBytes is the estimated size of row changes beyond which a source transaction is applied to this store in
// several target transactions (0: always in one). DuckDB holds a transaction's updates and deletes in memory,
// within its memory_limit: one UPDATE of 10 million rows fails there whatever fogo does, so it gets parts.
func (s *Store) PartBytes() int {
	if s.partBytes != 0 {
		return max(s.partBytes, 0)
	}
	if p, ok := s.dialect.(interface{ partBytes() int }); ok {
		return p.partBytes()
	}
	return 0
}

func (duckDialect) partBytes() int { return 64 << 20 }

// SetPartBytes overrides PartBytes (a negative n: always one transaction).
func (s *Store) SetPartBytes(n int) { s.partBytes = n }

// EnsureTable creates the table (dropping an existing one first when drop is set).
func (s *Store) EnsureTable(ctx context.Context, t *Table, drop bool) error {
	if len(t.Key) == 0 && !t.Keyless {
		return fmt.Errorf("%s: %w", t.qualified(), ErrNoKey)
	}
	if t.Schema != "" {
		if _, err := s.db.ExecContext(ctx, "CREATE SCHEMA IF NOT EXISTS "+qi(t.Schema)); err != nil {
			return fmt.Errorf("create schema %s: %w", t.Schema, err)
		}
	}
	if drop {
		if _, err := s.db.ExecContext(ctx, "DROP TABLE IF EXISTS "+t.qualified()); err != nil {
			return fmt.Errorf("drop %s: %w", t.qualified(), err)
		}
	} else if t.Keyless {
		if err := s.dropKey(ctx, t); err != nil {
			return err
		}
	}
	cols := make([]string, 0, len(t.Columns)+1)
	for _, c := range t.Columns {
		cols = append(cols, qi(c.Name)+" "+s.dialect.columnType(c.SourceType))
	}
	keys := make([]string, len(t.Key))
	for i, k := range t.Key {
		keys[i] = qi(k)
	}
	if !t.Keyless {
		cols = append(cols, "PRIMARY KEY ("+strings.Join(keys, ", ")+")")
	}
	if _, err := s.db.ExecContext(ctx, "CREATE TABLE IF NOT EXISTS "+t.qualified()+" ("+strings.Join(cols, ", ")+")"); err != nil {
		return fmt.Errorf("create %s: %w", t.qualified(), err)
	}
	return nil
}

// dropKey makes an existing target table of a keyless source table keyless too: an earlier fogo gave such a table
// a primary key over every column (so NULLs failed the link, and duplicates collapsed). Its rows are kept, in a
// table of the same columns without the key, made in one transaction.
func (s *Store) dropKey(ctx context.Context, t *Table) error {
	schema := "coalesce(nullif($1, ''), current_schema())"
	var n int
	if err := s.db.QueryRowContext(ctx, `SELECT count(*) FROM information_schema.table_constraints
		WHERE table_schema = `+schema+` AND table_name = $2 AND constraint_type = 'PRIMARY KEY'`, t.Schema, t.Name).Scan(&n); err != nil {
		return fmt.Errorf("%s: read the key of %s: %w", s.dialect.name(), t.qualified(), err)
	}
	if n == 0 {
		return nil
	}
	tmp := &Table{Schema: t.Schema, Name: t.Name + "_fogo_keyless"}
	tx, err := s.beginWrite(ctx, s.db)
	if err != nil {
		return err
	}
	defer tx.Rollback()
	for _, q := range []string{
		"DROP TABLE IF EXISTS " + tmp.qualified(),
		"CREATE TABLE " + tmp.qualified() + " AS SELECT * FROM " + t.qualified(),
		"DROP TABLE " + t.qualified(),
		"ALTER TABLE " + tmp.qualified() + " RENAME TO " + qi(t.Name),
	} {
		if _, err := tx.ExecContext(ctx, q); err != nil {
			return fmt.Errorf("%s: remove the primary key of %s (a table without a key on the source): %w", s.dialect.name(), t.qualified(), err)
		}
	}
	return tx.Commit()
}

// reshape adds and drops columns of a target table inside tx to follow the source's ADD/DROP COLUMN (both
// idempotent: a replayed or repeated schema change is harmless). DuckDB refuses to commit a transaction that
// altered a table after updating or deleting its rows, so the link places a transaction's schema changes before
// its row changes (stream.go).
func (s *Store) reshape(ctx context.Context, tx *sql.Tx, c *Change) error {
	t := c.Table
	for _, col := range c.Add {
		if _, err := tx.ExecContext(ctx, "ALTER TABLE "+t.qualified()+" ADD COLUMN IF NOT EXISTS "+qi(col.Name)+" "+s.dialect.columnType(col.SourceType)); err != nil {
			return fmt.Errorf("%s: add column %s to %s: %w", s.dialect.name(), col.Name, t.qualified(), err)
		}
	}
	for _, name := range c.Drop {
		if _, err := tx.ExecContext(ctx, "ALTER TABLE "+t.qualified()+" DROP COLUMN IF EXISTS "+qi(name)); err != nil {
			return fmt.Errorf("%s: drop column %s of %s: %w", s.dialect.name(), name, t.qualified(), err)
		}
	}
	return nil
}

// Apply writes changes and the checkpoint in one transaction (a zero checkpoint writes none: a snapshot's
// earlier batches). Changes are applied in order; a run of inserts into one table (rows carrying every column)
// is written in bulk: the dialect's bulk path if it has one, multi-row statements otherwise.
func (s *Store) Apply(ctx context.Context, link string, changes []Change, checkpoint lsn.LSN) error {
	tx, err := s.Begin(ctx)
	if err != nil {
		return err
	}
	defer tx.Rollback()
	if err := tx.Write(ctx, changes); err != nil {
		return err
	}
	return tx.Commit(ctx, link, checkpoint)
}

// Tx is one target transaction written in parts: a source transaction too large to hold in memory is written
// chunk by chunk, and the checkpoint only with the commit, so a reader of the target sees all of it or none.
type Tx struct {
	s     *Store
	conn  *sql.Conn // one connection: a bulk path must write inside the transaction
	tx    *sql.Tx
	parts bool // CommitPart committed parts: the commit ends their record
}

// Begin begins a target transaction.
func (s *Store) Begin(ctx context.Context) (*Tx, error) {
	if err := s.ensureParts(ctx); err != nil { // before the transaction, which would not see it made later
		return nil, err
	}
	conn, err := s.db.Conn(ctx)
	if err != nil {
		return nil, fmt.Errorf("%s: connection: %w", s.dialect.name(), err)
	}
	tx, err := s.beginWrite(ctx, conn)
	if err != nil {
		conn.Close()
		return nil, err
	}
	return &Tx{s: s, conn: conn, tx: tx}, nil
}

// Write applies changes, in order, inside the transaction.
func (t *Tx) Write(ctx context.Context, changes []Change) error {
	return t.s.applyAll(ctx, t.conn, t.tx, changes)
}

// Commit writes the link's checkpoint (none if it is zero) and commits.
func (t *Tx) Commit(ctx context.Context, link string, checkpoint lsn.LSN) error {
	defer t.conn.Close()
	if checkpoint != 0 {
		if err := writeCheckpoint(ctx, t.tx, link, checkpoint); err != nil {
			t.tx.Rollback()
			return fmt.Errorf("%s: write checkpoint: %w", t.s.dialect.name(), err)
		}
	}
	if t.parts {
		if _, err := t.tx.ExecContext(ctx, `DELETE FROM `+partsTable+` WHERE link = $1`, link); err != nil {
			t.tx.Rollback()
			return fmt.Errorf("%s: end the record of parts: %w", t.s.dialect.name(), err)
		}
	}
	if err := t.tx.Commit(); err != nil {
		return fmt.Errorf("%s: commit: %w", t.s.dialect.name(), err)
	}
	return nil
}

// CommitPart commits what the transaction wrote so far as a part of the source transaction ending at end, of
// which the first done row changes are now in the target, and begins the next part on the same connection. The
// checkpoint does not move: a restarted link decodes that source transaction again and skips what Part says is
// applied. The last part's Commit ends the record.
func (t *Tx) CommitPart(ctx context.Context, link string, end lsn.LSN, done int64) error {
	// An UPDATE of the link's row, an INSERT for its first part: DuckDB reports a write-write conflict for a key
	// deleted and inserted again by consecutive transactions.
	res, err := t.tx.ExecContext(ctx, `UPDATE `+partsTable+` SET txn_end = $2, done = $3 WHERE link = $1`, link, end.String(), done)
	if err == nil {
		var n int64
		if n, err = res.RowsAffected(); err == nil && n == 0 {
			_, err = t.tx.ExecContext(ctx, `INSERT INTO `+partsTable+` (link, txn_end, done) VALUES ($1, $2, $3)`, link, end.String(), done)
		}
	}
	if err != nil {
		return fmt.Errorf("%s: record a part: %w", t.s.dialect.name(), err)
	}
	if err := t.tx.Commit(); err != nil {
		return fmt.Errorf("%s: commit a part: %w", t.s.dialect.name(), err)
	}
	tx, err := t.s.beginWrite(ctx, t.conn)
	if err != nil {
		return err
	}
	t.tx = tx
	t.parts = true
	return nil
}

// EndsParts makes the commit end the record of a transaction applied in parts that an earlier run began.
func (t *Tx) EndsParts() { t.parts = true }

// Rollback abandons the transaction (a no-op after Commit).
func (t *Tx) Rollback() {
	t.tx.Rollback()
	t.conn.Close()
}

// writeCheckpoint sets the link's checkpoint in tx: an UPDATE of the existing row, an INSERT for a link's first
// (an UPDATE costs DuckDB a third of an INSERT ... ON CONFLICT, and every batch writes one).
func writeCheckpoint(ctx context.Context, tx *sql.Tx, link string, checkpoint lsn.LSN) error {
	res, err := tx.ExecContext(ctx, `UPDATE `+checkpointTable+` SET lsn = $2, updated_at = CAST(now() AS VARCHAR) WHERE link = $1`,
		link, checkpoint.String())
	if err != nil {
		return err
	}
	if n, err := res.RowsAffected(); err != nil || n > 0 {
		return err
	}
	_, err = tx.ExecContext(ctx, `INSERT INTO `+checkpointTable+` (link, lsn, updated_at) VALUES ($1, $2, CAST(now() AS VARCHAR))`,
		link, checkpoint.String())
	return err
}

// applyAll applies changes in order inside tx (which runs on conn). Runs of changes of one table are written in
// bulk: upserts (inserts, and updates that keep their key and carry every column) and deletes by key.
func (s *Store) applyAll(ctx context.Context, conn *sql.Conn, tx *sql.Tx, changes []Change) error {
	bulk, _ := s.dialect.(bulkWriter)
	limit := insertChunk
	if bulk != nil {
		limit = len(changes)
	}
	for i := 0; i < len(changes); {
		if j := run(changes, i, limit, upsertable); j-i > 1 {
			t, rows := changes[i].Table, lastPerKey(changes[i:j])
			var err error
			if bulk != nil {
				err = bulk.upsertRows(ctx, conn, t, rows)
			} else {
				err = s.insertMany(ctx, tx, t, rows)
			}
			if err != nil {
				return err
			}
			i = j
			continue
		}
		if j := run(changes, i, limit, deletableByKey); j-i > 1 {
			t := changes[i].Table
			keys := make([][]Value, j-i)
			for k, c := range changes[i:j] {
				keys[k] = keyValues(t, c.Old)
			}
			var err error
			if bulk != nil {
				err = bulk.deleteRows(ctx, conn, t, keys)
			} else {
				err = s.deleteMany(ctx, tx, t, keys)
			}
			if err != nil {
				return err
			}
			i = j
			continue
		}
		if err := s.apply(ctx, tx, &changes[i]); err != nil {
			return err
		}
		i++
	}
	return nil
}

// bulkWriter is a dialect with faster ways than multi-row statements to upsert or delete many rows of one table.
// Both must write inside the transaction open on conn; upserted rows have distinct keys; keys hold the values of
// the table's key columns (keyTable).
type bulkWriter interface {
	upsertRows(ctx context.Context, conn *sql.Conn, t *Table, rows [][]Value) error
	deleteRows(ctx context.Context, conn *sql.Conn, t *Table, keys [][]Value) error
}

// insertChunk bounds the rows of one multi-row statement.
const insertChunk = 500

// run returns the end of the run of changes of one table starting at changes[i] (at most limit changes) that
// satisfy in.
func run(changes []Change, i, limit int, in func(c *Change) bool) int {
	j := i
	for j < len(changes) && j-i < limit && changes[j].Table == changes[i].Table && in(&changes[j]) {
		j++
	}
	return j
}

// upsertable: applying c is upserting its new row. An insert carrying every column, or an update of a table with
// a key that keeps its key and carries every column (no unchanged TOASTed value).
func upsertable(c *Change) bool {
	switch c.Kind {
	case Insert:
	case Update:
		if c.Table.Keyless || (len(c.Old) > 0 && !sameKey(c.Table, c.Old, c.New)) {
			return false
		}
	default:
		return false
	}
	return complete(c.New)
}

// deletableByKey: c deletes the row of a table with a key whose key values it carries.
func deletableByKey(c *Change) bool {
	if c.Kind != Delete || c.Table.Keyless {
		return false
	}
	for _, i := range keyIndexes(c.Table) {
		if i >= len(c.Old) || c.Old[i].Null || c.Old[i].Unchanged {
			return false
		}
	}
	return true
}

// keyTable is t reduced to its key columns (the staging relation of a bulk delete).
func keyTable(t *Table) *Table {
	kt := &Table{Schema: t.Schema, Name: t.Name, Key: t.Key}
	for _, i := range keyIndexes(t) {
		kt.Columns = append(kt.Columns, t.Columns[i])
	}
	return kt
}

// keyValues returns the values of t's key columns in row (in keyTable's column order).
func keyValues(t *Table, row []Value) []Value {
	idx := keyIndexes(t)
	out := make([]Value, len(idx))
	for k, i := range idx {
		out[k] = row[i]
	}
	return out
}

// deleteMany deletes the rows of t with the given keys, in statements of at most insertChunk keys.
func (s *Store) deleteMany(ctx context.Context, tx *sql.Tx, t *Table, keys [][]Value) error {
	kt := keyTable(t)
	for len(keys) > 0 {
		n := min(len(keys), insertChunk)
		tuples := make([]string, 0, n)
		var args []any
		for _, key := range keys[:n] {
			vals := make([]string, len(kt.Columns))
			for k, col := range kt.Columns {
				ph, err := s.arg(&args, col, key[k])
				if err != nil {
					return fmt.Errorf("%s: %w", t.qualified(), err)
				}
				vals[k] = ph
			}
			tuples = append(tuples, "("+strings.Join(vals, ", ")+")")
		}
		q := "DELETE FROM " + t.qualified() + " WHERE (" + kt.columnList() + ") IN (" + strings.Join(tuples, ", ") + ")"
		if _, err := tx.ExecContext(ctx, q, args...); err != nil {
			return fmt.Errorf("%s: apply to %s: %w", s.dialect.name(), t.qualified(), err)
		}
		keys = keys[n:]
	}
	return nil
}

func complete(row []Value) bool {
	for _, v := range row {
		if v.Unchanged {
			return false
		}
	}
	return true
}

// lastPerKey returns the rows of a run of inserts into one table, keeping only the last row of each key (upserting
// them in order would leave that one), in the order of the run.
func lastPerKey(run []Change) [][]Value {
	if run[0].Table.Keyless { // every row is a row of its own
		rows := make([][]Value, len(run))
		for i, c := range run {
			rows[i] = c.New
		}
		return rows
	}
	keyOf := keyFunc(run)
	last := make(map[string]int, len(run))
	for i, c := range run {
		last[keyOf(c.New)] = i
	}
	rows := make([][]Value, 0, len(last))
	for i, c := range run {
		if len(last) == len(run) || last[keyOf(c.New)] == i {
			rows = append(rows, c.New)
		}
	}
	return rows
}

// keyFunc returns a function giving the key of a row of the run as a map key: the text itself for a key of one
// column that is never NULL in the run (a primary key), an unambiguous encoding otherwise.
func keyFunc(run []Change) func(row []Value) string {
	keyCols := keyIndexes(run[0].Table)
	if len(keyCols) == 1 && !nullKey(run, keyCols[0]) {
		k := keyCols[0]
		return func(row []Value) string { return row[k].Text }
	}
	var b strings.Builder
	return func(row []Value) string {
		b.Reset()
		for _, i := range keyCols {
			if i >= len(row) || row[i].Null {
				b.WriteString("n")
				continue
			}
			b.WriteString("v")
			b.WriteString(strconv.Itoa(len(row[i].Text)))
			b.WriteString(":")
			b.WriteString(row[i].Text)
		}
		return b.String()
	}
}

// nullKey reports whether a row of the run lacks column k or has it NULL.
func nullKey(run []Change, k int) bool {
	for _, c := range run {
		if k >= len(c.New) || c.New[k].Null {
			return true
		}
	}
	return false
}

// keyIndexes returns the positions of t's key columns.
func keyIndexes(t *Table) []int {
	var out []int
	for i, c := range t.Columns {
		if isKey(t, c.Name) {
			out = append(out, i)
		}
	}
	return out
}

// upsertClause returns the ON CONFLICT clause that makes an insert into t an upsert.
func upsertClause(t *Table) string {
	if t.Keyless {
		return "" // inserts append
	}
	keys := make([]string, len(t.Key))
	for i, k := range t.Key {
		keys[i] = qi(k)
	}
	var sets []string
	for _, c := range t.Columns {
		if !isKey(t, c.Name) {
			sets = append(sets, qi(c.Name)+" = excluded."+qi(c.Name))
		}
	}
	q := " ON CONFLICT (" + strings.Join(keys, ", ") + ")"
	if len(sets) == 0 {
		return q + " DO NOTHING"
	}
	return q + " DO UPDATE SET " + strings.Join(sets, ", ")
}

// insertMany upserts rows (with distinct keys) of one table with one statement.
func (s *Store) insertMany(ctx context.Context, tx *sql.Tx, t *Table, rows [][]Value) error {
	tuples := make([]string, 0, len(rows))
	var args []any
	for _, row := range rows {
		vals := make([]string, len(t.Columns))
		for k, col := range t.Columns {
			v := Value{Null: true}
			if k < len(row) {
				v = row[k]
			}
			ph, err := s.arg(&args, col, v)
			if err != nil {
				return fmt.Errorf("%s: %w", t.qualified(), err)
			}
			vals[k] = ph
		}
		tuples = append(tuples, "("+strings.Join(vals, ", ")+")")
	}
	q := "INSERT INTO " + t.qualified() + " (" + t.columnList() + ") VALUES " + strings.Join(tuples, ", ") + upsertClause(t)
	if _, err := tx.ExecContext(ctx, q, args...); err != nil {
		return fmt.Errorf("%s: apply to %s: %w", s.dialect.name(), t.qualified(), err)
	}
	return nil
}

func (s *Store) apply(ctx context.Context, tx *sql.Tx, c *Change) error {
	t := c.Table
	var query string
	var args []any
	var err error
	switch c.Kind {
	case Insert:
		query, args, err = s.upsert(t, c.New)
	case Update:
		query, args, err = s.update(t, c.Old, c.New)
	case Delete:
		query, args, err = s.delete(t, c.Old)
	case Truncate:
		query = "DELETE FROM " + t.qualified()
	case clearTable:
		query = "DELETE FROM " + t.qualified()
	case Reshape:
		return s.reshape(ctx, tx, c)
	default:
		return fmt.Errorf("unknown change kind %d", c.Kind)
	}
	if err != nil {
		return fmt.Errorf("%s: %w", t.qualified(), err)
	}
	if query == "" {
		return nil
	}
	if _, err := tx.ExecContext(ctx, query, args...); err != nil {
		return fmt.Errorf("%s: apply to %s: %w", s.dialect.name(), t.qualified(), err)
	}
	return nil
}

func (s *Store) arg(args *[]any, c Column, v Value) (string, error) {
	if v.Null {
		return "NULL", nil
	}
	p, err := s.dialect.param(c.SourceType, v.Text)
	if err != nil {
		return "", fmt.Errorf("column %s: %w", c.Name, err)
	}
	*args = append(*args, p)
	return s.dialect.cast(fmt.Sprintf("$%d", len(*args)), c.SourceType), nil
}

// upsert inserts a row, replacing one with the same key (a replayed insert is harmless).
func (s *Store) upsert(t *Table, row []Value) (string, []any, error) {
	var cols, vals, sets []string
	var args []any
	for i, c := range t.Columns {
		if i >= len(row) || row[i].Unchanged {
			continue
		}
		v, err := s.arg(&args, c, row[i])
		if err != nil {
			return "", nil, err
		}
		cols, vals = append(cols, qi(c.Name)), append(vals, v)
		if !isKey(t, c.Name) {
			sets = append(sets, qi(c.Name)+" = excluded."+qi(c.Name))
		}
	}
	if t.Keyless {
		return "INSERT INTO " + t.qualified() + " (" + strings.Join(cols, ", ") + ") VALUES (" + strings.Join(vals, ", ") + ")", args, nil
	}
	keys := make([]string, len(t.Key))
	for i, k := range t.Key {
		keys[i] = qi(k)
	}
	q := "INSERT INTO " + t.qualified() + " (" + strings.Join(cols, ", ") + ") VALUES (" + strings.Join(vals, ", ") + ") ON CONFLICT (" + strings.Join(keys, ", ") + ")"
	if len(sets) == 0 {
		return q + " DO NOTHING", args, nil
	}
	return q + " DO UPDATE SET " + strings.Join(sets, ", "), args, nil
}

// update sets the columns the source sent (an unchanged TOASTed value keeps the target's value) on the row found
// by the old key (or the new key when the key did not change).
func (s *Store) update(t *Table, old, row []Value) (string, []any, error) {
	var sets []string
	var args []any
	keyChanged := t.Keyless || (len(old) > 0 && !sameKey(t, old, row))
	for i, c := range t.Columns {
		if i >= len(row) || row[i].Unchanged || (!keyChanged && isKey(t, c.Name)) {
			continue
		}
		v, err := s.arg(&args, c, row[i])
		if err != nil {
			return "", nil, err
		}
		sets = append(sets, qi(c.Name)+" = "+v)
	}
	keyRow := row
	if len(old) > 0 {
		keyRow = old
	}
	where, err := s.where(t, keyRow, &args)
	if err != nil {
		return "", nil, err
	}
	if len(sets) == 0 {
		return "", nil, nil
	}
	return "UPDATE " + t.qualified() + " SET " + strings.Join(sets, ", ") + " WHERE " + s.oneRow(t, where), args, nil
}

func (s *Store) delete(t *Table, old []Value) (string, []any, error) {
	var args []any
	where, err := s.where(t, old, &args)
	if err != nil {
		return "", nil, err
	}
	return "DELETE FROM " + t.qualified() + " WHERE " + s.oneRow(t, where), args, nil
}

// oneRow narrows the condition where to one row of a keyless table (a key matches one row by itself).
func (s *Store) oneRow(t *Table, where string) string {
	if !t.Keyless {
		return where
	}
	id := s.dialect.rowID()
	return id + " = (SELECT " + id + " FROM " + t.qualified() + " WHERE " + where + " LIMIT 1)"
}

// where matches the row a change is about: by its key columns, or, for a keyless table, by every column the change
// carries (NULL-safely: a NULL matches IS NULL, a value matches with =, which no NULL satisfies).
func (s *Store) where(t *Table, row []Value, args *[]any) (string, error) {
	var conds []string
	for i, c := range t.Columns {
		if !t.Keyless && !isKey(t, c.Name) {
			continue
		}
		if i >= len(row) || row[i].Unchanged {
			if t.Keyless {
				continue
			}
			return "", fmt.Errorf("key column %s has no value in the change", c.Name)
		}
		if row[i].Null {
			conds = append(conds, qi(c.Name)+" IS NULL")
			continue
		}
		v, err := s.arg(args, c, row[i])
		if err != nil {
			return "", err
		}
		conds = append(conds, qi(c.Name)+" = "+v)
	}
	switch {
	case len(conds) > 0:
		return strings.Join(conds, " AND "), nil
	case t.Keyless:
		return "", fmt.Errorf("a change of a table without a key carries no old row (REPLICA IDENTITY FULL sends one)")
	default:
		return "", ErrNoKey
	}
}

func sameKey(t *Table, a, b []Value) bool {
	for i, c := range t.Columns {
		if isKey(t, c.Name) && (i >= len(a) || i >= len(b) || a[i] != b[i]) {
			return false
		}
	}
	return true
}

func isKey(t *Table, name string) bool {
	for _, k := range t.Key {
		if k == name {
			return true
		}
	}
	return false
}
