package logrepl

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/fogo-db/fogo/internal/postgres/lsn"
)

// Conn is a logical replication connection.
type Conn struct {
	pc *pgconn.PgConn
}

// Connect opens a replication connection; connString is any libpq connection string or URL (the replication
// parameter is added).
func Connect(ctx context.Context, connString string) (*Conn, error) {
	cfg, err := pgconn.ParseConfig(connString)
	if err != nil {
		return nil, fmt.Errorf("replication connection string: %w", err)
	}
	PinSession(cfg.RuntimeParams)
	cfg.RuntimeParams["replication"] = "database"
	pc, err := pgconn.ConnectConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("replication connect: %w", err)
	}
	return &Conn{pc: pc}, nil
}

// SessionParams are the settings fogo pins on every source connection of a link (replication and SQL): pgoutput
// and the snapshot send values as text in the session's formats, which fogo parses, so a database in LATIN1 or a
// role or database with its own bytea_output, DateStyle, IntervalStyle or extra_float_digits must not change them.
// Startup parameters take precedence over ALTER ROLE / ALTER DATABASE settings.
var SessionParams = map[string]string{
	"client_encoding":    "UTF8",
	"DateStyle":          "ISO, MDY",
	"bytea_output":       "hex",
	"IntervalStyle":      "postgres",
	"extra_float_digits": "3",
}

// PinSession sets SessionParams in a connection's startup parameters.
func PinSession(params map[string]string) {
	for k, v := range SessionParams {
		params[k] = v
	}
}

// Close ends the connection and waits, bounded by ctx (and by closeTimeout), until the walsender serving it has
// exited: only then has it released its slot (and dropped a temporary one), so that another connection can use
// (or create) it at once.
func (c *Conn) Close(ctx context.Context) { CloseAndWait(ctx, c.pc) }

// closeTimeout bounds how long CloseAndWait waits (pgconn bounds its background close in the same way).
const closeTimeout = 15 * time.Second

// CloseAndWait ends a connection and waits, bounded by ctx and by closeTimeout, until its server process has
// exited. PostgreSQL keeps a backend's socket open until the process ends, so that a client can close
// synchronously: send Terminate, then wait for the server's end of the connection. A connection that pgconn
// already closed (a call interrupted by its context) is being closed in the same way in the background — the
// query cancelled, Terminate sent, the connection drained to its end — and that is waited for. A backend that
// still runs when the bound is reached is left to end by itself.
func CloseAndWait(ctx context.Context, pc *pgconn.PgConn) {
	ctx, cancel := context.WithTimeout(ctx, closeTimeout)
	defer cancel()
	if pc.IsClosed() {
		select {
		case <-pc.CleanupDone():
		case <-ctx.Done():
		}
		return
	}
	conn := pc.Conn()
	stop := context.AfterFunc(ctx, func() { _ = conn.SetDeadline(time.Now()) })
	dl, _ := ctx.Deadline()
	_ = conn.SetDeadline(dl)
	pc.Frontend().Send(&pgproto3.Terminate{})
	if err := pc.Frontend().Flush(); err == nil {
		_, _ = io.Copy(io.Discard, conn) // until the server process has exited (or the deadline)
	}
	stop()
	_ = pc.Close(ctx) // marks it closed: closing it again returns at once
}

// PgConn exposes the underlying connection.
func (c *Conn) PgConn() *pgconn.PgConn { return c.pc }

// SystemID is IDENTIFY_SYSTEM's answer.
type SystemID struct {
	SystemID string
	Timeline int32
	XLogPos  lsn.LSN
	DBName   string
}

// IdentifySystem runs IDENTIFY_SYSTEM.
func (c *Conn) IdentifySystem(ctx context.Context) (SystemID, error) {
	row, err := c.command(ctx, "IDENTIFY_SYSTEM")
	if err != nil {
		return SystemID{}, err
	}
	if len(row) < 4 {
		return SystemID{}, fmt.Errorf("IDENTIFY_SYSTEM: %d columns", len(row))
	}
	var id SystemID
	id.SystemID, id.DBName = row[0], row[3]
	var tl int
	if _, err := fmt.Sscan(row[1], &tl); err != nil {
		return id, fmt.Errorf("IDENTIFY_SYSTEM timeline %q: %w", row[1], err)
	}
	id.Timeline = int32(tl)
	if id.XLogPos, err = lsn.Parse(row[2]); err != nil {
		return id, fmt.Errorf("IDENTIFY_SYSTEM xlogpos: %w", err)
	}
	return id, nil
}

// Slot is CREATE_REPLICATION_SLOT's answer.
type Slot struct {
	Name            string
	ConsistentPoint lsn.LSN
	// SnapshotName is the exported snapshot (with ExportSnapshot): a transaction on another connection that runs
	// SET TRANSACTION SNAPSHOT with it sees exactly the data before ConsistentPoint. Valid until this connection
	// runs its next command.
	SnapshotName string
}

// CreateSlot creates a logical slot for pgoutput. With exportSnapshot the slot's snapshot is exported.
func (c *Conn) CreateSlot(ctx context.Context, name string, temporary, exportSnapshot bool) (Slot, error) {
	sql := "CREATE_REPLICATION_SLOT " + quoteIdent(name)
	if temporary {
		sql += " TEMPORARY"
	}
	sql += " LOGICAL pgoutput"
	if exportSnapshot {
		sql += " EXPORT_SNAPSHOT"
	} else {
		sql += " NOEXPORT_SNAPSHOT"
	}
	row, err := c.command(ctx, sql)
	if err != nil {
		return Slot{}, err
	}
	if len(row) < 3 {
		return Slot{}, fmt.Errorf("CREATE_REPLICATION_SLOT: %d columns", len(row))
	}
	s := Slot{Name: row[0], SnapshotName: row[2]}
	if s.ConsistentPoint, err = lsn.Parse(row[1]); err != nil {
		return s, fmt.Errorf("CREATE_REPLICATION_SLOT consistent point: %w", err)
	}
	return s, nil
}

// DropSlot drops a slot; with wait it waits for a walsender using it to end.
func (c *Conn) DropSlot(ctx context.Context, name string, wait bool) error {
	sql := "DROP_REPLICATION_SLOT " + quoteIdent(name)
	if wait {
		sql += " WAIT"
	}
	_, err := c.command(ctx, sql)
	return err
}

// command runs a replication command and returns its first row (text values).
func (c *Conn) command(ctx context.Context, sql string) ([]string, error) {
	results, err := c.pc.Exec(ctx, sql).ReadAll()
	if err != nil {
		return nil, fmt.Errorf("%s: %w", firstWord(sql), err)
	}
	for _, r := range results {
		if r.Err != nil {
			return nil, fmt.Errorf("%s: %w", firstWord(sql), r.Err)
		}
		if len(r.Rows) > 0 {
			out := make([]string, len(r.Rows[0]))
			for i, v := range r.Rows[0] {
				out[i] = string(v)
			}
			return out, nil
		}
	}
	return nil, nil
}

func firstWord(s string) string {
	w, _, _ := strings.Cut(s, " ")
	return w
}

func quoteIdent(s string) string { return `"` + strings.ReplaceAll(s, `"`, `""`) + `"` }

func quoteLiteral(s string) string { return "'" + strings.ReplaceAll(s, "'", "''") + "'" }

// StartReplication starts streaming slot from start (0: the slot's confirmed position) for the given
// publications, with pgoutput protocol version 1 (and logical messages when messages is true).
func (c *Conn) StartReplication(ctx context.Context, slot string, start lsn.LSN, publications []string, messages bool) error {
	quoted := make([]string, len(publications))
	for i, p := range publications {
		quoted[i] = strings.ReplaceAll(p, `"`, `""`)
	}
	opts := fmt.Sprintf("proto_version '1', publication_names %s", quoteLiteral(`"`+strings.Join(quoted, `","`)+`"`))
	if messages {
		opts += ", messages 'true'"
	}
	sql := fmt.Sprintf("START_REPLICATION SLOT %s LOGICAL %s (%s)", quoteIdent(slot), start, opts)
	c.pc.Frontend().Send(&pgproto3.Query{String: sql})
	if err := c.pc.Frontend().Flush(); err != nil {
		return fmt.Errorf("START_REPLICATION: %w", err)
	}
	for {
		msg, err := c.pc.ReceiveMessage(ctx)
		if err != nil {
			return fmt.Errorf("START_REPLICATION: %w", err)
		}
		switch m := msg.(type) {
		case *pgproto3.CopyBothResponse:
			return nil
		case *pgproto3.ErrorResponse:
			return fmt.Errorf("START_REPLICATION: %w", pgconn.ErrorResponseToPgError(m))
		case *pgproto3.NoticeResponse, *pgproto3.ParameterStatus:
		default:
			return fmt.Errorf("START_REPLICATION: unexpected %T", msg)
		}
	}
}

// XLogData is one chunk of the stream: a pgoutput message and where it is in the WAL. Data refers to the
// connection's buffer: it is valid until the next Receive (copy it to keep it).
type XLogData struct {
	WALStart     lsn.LSN
	ServerWALEnd lsn.LSN
	ServerTime   time.Time
	Data         []byte
}

// Keepalive is a primary keepalive; ReplyRequested asks for a status update at once.
type Keepalive struct {
	ServerWALEnd   lsn.LSN
	ServerTime     time.Time
	ReplyRequested bool
}

// ErrStreamEnded is returned by Receive when the server ended the COPY (e.g. it is shutting down).
var ErrStreamEnded = errors.New("replication stream ended by the server")

// Receive returns the next XLogData or Keepalive.
func (c *Conn) Receive(ctx context.Context) (any, error) {
	for {
		msg, err := c.pc.ReceiveMessage(ctx)
		if err != nil {
			return nil, err
		}
		switch m := msg.(type) {
		case *pgproto3.CopyData:
			return parseCopyData(m.Data)
		case *pgproto3.CopyDone, *pgproto3.CommandComplete:
			return nil, ErrStreamEnded // a walsender that is done (its server shuts down) sends CommandComplete
		case *pgproto3.ErrorResponse:
			return nil, pgconn.ErrorResponseToPgError(m)
		case *pgproto3.NoticeResponse:
		default:
			return nil, fmt.Errorf("replication stream: unexpected %T", msg)
		}
	}
}

// pgEpoch is PostgreSQL's timestamp origin.
var pgEpoch = time.Date(2000, 1, 1, 0, 0, 0, 0, time.UTC)

func pgTime(micros int64) time.Time { return pgEpoch.Add(time.Duration(micros) * time.Microsecond) }

func parseCopyData(b []byte) (any, error) {
	if len(b) == 0 {
		return nil, errors.New("empty CopyData")
	}
	switch b[0] {
	case 'w':
		if len(b) < 25 {
			return nil, fmt.Errorf("XLogData: %d bytes", len(b))
		}
		return XLogData{
			WALStart:     lsn.LSN(binary.BigEndian.Uint64(b[1:])),
			ServerWALEnd: lsn.LSN(binary.BigEndian.Uint64(b[9:])),
			ServerTime:   pgTime(int64(binary.BigEndian.Uint64(b[17:]))),
			Data:         b[25:],
		}, nil
	case 'k':
		if len(b) < 18 {
			return nil, fmt.Errorf("keepalive: %d bytes", len(b))
		}
		return Keepalive{
			ServerWALEnd:   lsn.LSN(binary.BigEndian.Uint64(b[1:])),
			ServerTime:     pgTime(int64(binary.BigEndian.Uint64(b[9:]))),
			ReplyRequested: b[17] == 1,
		}, nil
	}
	return nil, fmt.Errorf("unknown CopyData type %q", b[0])
}

// SendStandbyStatus reports the positions written, flushed (durably applied: the slot may advance to it) and
// applied by the consumer.
func (c *Conn) SendStandbyStatus(ctx context.Context, written, flushed, applied lsn.LSN, replyRequested bool) error {
	b := make([]byte, 34)
	b[0] = 'r'
	binary.BigEndian.PutUint64(b[1:], uint64(written))
	binary.BigEndian.PutUint64(b[9:], uint64(flushed))
	binary.BigEndian.PutUint64(b[17:], uint64(applied))
	binary.BigEndian.PutUint64(b[25:], uint64(time.Since(pgEpoch).Microseconds()))
	if replyRequested {
		b[33] = 1
	}
	c.pc.Frontend().Send(&pgproto3.CopyData{Data: b})
	if err := c.pc.Frontend().Flush(); err != nil {
		return fmt.Errorf("standby status update: %w", err)
	}
	return nil
}
