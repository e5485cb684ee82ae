package instance

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/fogo-db/fogo/internal/postgres/pgbin"
)

// ShutdownMode is a pg_ctl stop mode.
type ShutdownMode string

const (
	// ShutdownSmart waits for every client to disconnect; fogo never needs it.
	ShutdownSmart ShutdownMode = "smart"
	// ShutdownFast rolls back open transactions, disconnects clients, writes a shutdown checkpoint and waits for
	// walsenders to send it to connected standbys: the clean way to demote a primary.
	ShutdownFast ShutdownMode = "fast"
	// ShutdownImmediate aborts every process without a checkpoint; the next start runs crash recovery.
	ShutdownImmediate ShutdownMode = "immediate"
)

// Instance is one data directory and the port its postmaster listens on.
type Instance struct {
	Dir string
	Bin *pgbin.Bin
	// On is the machine holding Dir; nil is this machine (through Bin).
	On            Host
	Host          string
	Port          int
	SuperUser     string
	SuperPassword string
	// RootCert, when set, is a CA file on the machine that makes the connection: connections to this instance
	// (Connect, ConnString, SourceConnInfo, ReplicationConnInfo) then require TLS and check that the server's
	// certificate comes from that CA and names Host (sslmode=verify-full). For SourceConnInfo and
	// ReplicationConnInfo the file is read by the postgres OS user (pg_basebackup, pg_rewind, the walreceiver),
	// e.g. the connecting instance's InstalledCAFile. When empty, connections are as before (no TLS required).
	RootCert string
}

// home is the directory around the data directory: log file, passfile, init marker.
func (i *Instance) home() string     { return filepath.Dir(i.Dir) }
func (i *Instance) logFile() string  { return filepath.Join(i.home(), "postgres.log") }
func (i *Instance) passFile() string { return filepath.Join(i.home(), "pgpass") }
func (i *Instance) initMarker() string {
	return filepath.Join(i.home(), "initialized")
}
func (i *Instance) env() []string {
	return []string{"PGPASSWORD=" + i.SuperPassword, "PGCONNECT_TIMEOUT=10"}
}

// Init runs initdb once (SCRAM authentication, data checksums, the superuser with its password).
func (i *Instance) Init(ctx context.Context) error {
	h := i.machine()
	if done, err := h.Exists(i.initMarker()); err != nil {
		return fmt.Errorf("initdb %s: %w", i.Dir, err)
	} else if done {
		return nil
	}
	if err := h.RemoveAll(i.Dir); err != nil { // a half-done initdb from a crash
		return fmt.Errorf("initdb %s: clear partial directory: %w", i.Dir, err)
	}
	pwfile := filepath.Join(i.home(), "initdb.pw")
	if err := h.WriteFile(pwfile, []byte(i.SuperPassword+"\n"), 0o600); err != nil {
		return fmt.Errorf("initdb %s: write password file: %w", i.Dir, err)
	}
	defer h.Remove(pwfile)
	_, err := h.Run(ctx, nil, "initdb", "-D", i.Dir, "-U", i.SuperUser, "--pwfile="+pwfile,
		"--auth=scram-sha-256", "--data-checksums", "--encoding=UTF8", "--locale=C.UTF-8", "--wal-segsize=1")
	if err != nil {
		return fmt.Errorf("initdb %s: %w", i.Dir, err)
	}
	if err := i.writePassFile(); err != nil {
		return err
	}
	return h.WriteFile(i.initMarker(), []byte(time.Now().UTC().Format(time.RFC3339)+"\n"), 0o600)
}

// writePassFile stores the superuser password for libpq (primary_conninfo) outside the data directory.
func (i *Instance) writePassFile() error {
	line := fmt.Sprintf("*:*:*:%s:%s\n", i.SuperUser, strings.NewReplacer(`\`, `\\`, `:`, `\:`).Replace(i.SuperPassword))
	if err := i.machine().WriteFile(i.passFile(), []byte(line), 0o600); err != nil {
		return fmt.Errorf("write passfile: %w", err)
	}
	return nil
}

// Running reports the postmaster's pid if it is alive (from postmaster.pid; works after kill -9). A lock file left
// by a crash whose PID now belongs to another process (pid reuse) is not "running" (see identify). When the host
// cannot be asked (another machine, unreachable), the answer is "running": only a host that answers can prove
// that an instance is stopped.
func (i *Instance) Running() (int, bool) {
	pm, err := i.machine().Postmaster(i.Dir)
	if err != nil {
		return 0, true
	}
	if pm.Owner != OwnerOurs {
		return 0, false
	}
	return pm.PID, true
}

// waitLockReleased waits, up to timeout, until no process of ours holds postmaster.pid: a postmaster killed with -9
// stays a zombie until it is reaped, and PostgreSQL (pg_ctl start, pg_rewind's single-user recovery) refuses a
// data directory whose lock file names a process that still exists. A lock file whose PID another process has
// taken since is removed, for the same reason.
func (i *Instance) waitLockReleased(ctx context.Context, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		pm, err := i.machine().Postmaster(i.Dir)
		if err != nil {
			return fmt.Errorf("data directory %s: %w", i.Dir, err)
		}
		switch pm.Owner {
		case OwnerNone:
			return nil
		case OwnerForeign:
			return i.machine().RemoveStaleLock(i.Dir)
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("data directory %s is still locked by process %d", i.Dir, pm.PID)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// IsStandby reports whether the data directory is configured as a standby (standby.signal; works stopped). A
// host that cannot be asked gives false: nothing proves it is a copy that may be promoted.
func (i *Instance) IsStandby() bool {
	ok, err := i.standby()
	return err == nil && ok
}

func (i *Instance) standby() (bool, error) {
	return i.machine().Exists(filepath.Join(i.Dir, "standby.signal"))
}

// HasData reports whether the data directory holds a cluster (PG_VERSION; works stopped).
func (i *Instance) HasData() (bool, error) {
	return i.machine().Exists(filepath.Join(i.Dir, "PG_VERSION"))
}

// MakeHome creates the directory around the data directory.
func (i *Instance) MakeHome() error { return i.machine().MkdirAll(i.home()) }

// RemoveHome deletes the data directory and everything around it.
func (i *Instance) RemoveHome() error { return i.machine().RemoveAll(i.home()) }

// CancelPromote removes a promotion asked for (pg_ctl promote's signal file) that the standby has not taken up.
func (i *Instance) CancelPromote() error { return i.machine().Remove(filepath.Join(i.Dir, "promote")) }

// Start starts the postmaster and waits until it accepts connections. Already running is fine. A start right
// after a kill -9 may find the old processes still detaching from shared memory, so it is retried briefly.
func (i *Instance) Start(ctx context.Context) error {
	if _, running := i.Running(); running {
		return i.WaitReady(ctx)
	}
	if err := i.waitLockReleased(ctx, 30*time.Second); err != nil {
		return fmt.Errorf("start %s: %w", i.Dir, err)
	}
	var err error
	for attempt := 0; attempt < 3; attempt++ {
		_, err = i.machine().Run(ctx, nil, "pg_ctl", "-D", i.Dir, "-l", i.logFile(), "-w", "-t", "120", "start")
		if err == nil {
			return i.WaitReady(ctx)
		}
		if _, running := i.Running(); running {
			return i.WaitReady(ctx)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(time.Duration(attempt+1) * 300 * time.Millisecond):
		}
	}
	return fmt.Errorf("start %s: %w; log: %s", i.Dir, err, i.LogTail(1500))
}

// WaitReady waits until the instance accepts TCP connections (bounded by ctx, at most 60 s).
func (i *Instance) WaitReady(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	for {
		c, err := i.Connect(ctx, "postgres")
		if err == nil {
			c.Close(context.Background())
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("wait for %s to accept connections: %w", i.Dir, err)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// Stop shuts the instance down in mode and waits. Not running is fine.
func (i *Instance) Stop(ctx context.Context, mode ShutdownMode) error {
	// Signal the postmaster as pg_ctl does, but let the host watch for the end closely (see Host.Shutdown; one
	// that does not run is stopped already).
	if sig, ok := shutdownSignals[mode]; ok && i.machine().Shutdown(ctx, i.Dir, sig, 120*time.Second) == nil {
		return nil
	}
	if _, running := i.Running(); !running {
		return nil
	}
	if ctx.Err() != nil {
		return fmt.Errorf("stop %s (%s): %w", i.Dir, mode, ctx.Err())
	}
	_, err := i.machine().Run(ctx, nil, "pg_ctl", "-D", i.Dir, "-m", string(mode), "-w", "-t", "120", "stop")
	if err != nil {
		if _, running := i.Running(); !running {
			return nil
		}
		return fmt.Errorf("stop %s (%s): %w", i.Dir, mode, err)
	}
	return nil
}

// shutdownSignals are the postmaster's signals for each shutdown mode (see pg_ctl).
var shutdownSignals = map[ShutdownMode]syscall.Signal{
	ShutdownSmart: syscall.SIGTERM, ShutdownFast: syscall.SIGINT, ShutdownImmediate: syscall.SIGQUIT,
}

// TryShuttingDownFastImmediate first attempts a fast shutdown, bounded by fastTimeout; if the instance is still
// running after it, it issues an immediate shutdown.
func (i *Instance) TryShuttingDownFastImmediate(ctx context.Context, fastTimeout time.Duration) error {
	fctx, cancel := context.WithTimeout(ctx, fastTimeout)
	err := i.Stop(fctx, ShutdownFast)
	cancel()
	if err == nil {
		return nil
	}
	return i.Stop(ctx, ShutdownImmediate)
}

// Promote makes a standby a primary and waits until it accepts writes. A primary is left alone.
func (i *Instance) Promote(ctx context.Context) error {
	if standby, err := i.standby(); err != nil {
		return fmt.Errorf("promote %s: %w", i.Dir, err)
	} else if !standby {
		return nil
	}
	// pg_ctl promote -w (and pg_promote(wait)) poll ten times a second; a session watches more closely.
	if s, err := i.OpenSession(ctx); err == nil {
		err = s.Promote(ctx)
		s.Close()
		if err == nil || !i.IsStandby() {
			return nil
		}
	}
	// pg_ctl signals whatever PID postmaster.pid names: only do that to our own postmaster.
	if _, running := i.Running(); !running {
		return fmt.Errorf("promote %s: not running", i.Dir)
	}
	if _, err := i.machine().Run(ctx, nil, "pg_ctl", "-D", i.Dir, "-w", "-t", "120", "promote"); err != nil {
		if !i.IsStandby() {
			return nil
		}
		return fmt.Errorf("promote %s: %w", i.Dir, err)
	}
	return nil
}

// LogTail returns the end of the instance's log file.
func (i *Instance) LogTail(n int) string {
	b, err := i.machine().ReadFile(i.logFile())
	if err != nil {
		return "(no log)"
	}
	s := string(b)
	if len(s) > n {
		s = s[len(s)-n:]
	}
	return strings.TrimSpace(s)
}

// Connect opens a session as the superuser over TCP.
func (i *Instance) Connect(ctx context.Context, database string) (*pgx.Conn, error) {
	conn := "" // as before: pgx's defaults
	if ssl := i.sslParams(); ssl != "" {
		// The host is in the string so that pgx builds its TLS configuration (server name) for it.
		conn = fmt.Sprintf("host=%s port=%d %s", ConnValue(i.host()), i.Port, ssl)
	}
	cfg, err := pgx.ParseConfig(conn)
	if err != nil {
		return nil, err
	}
	cfg.Host, cfg.Port, cfg.User, cfg.Password, cfg.Database = i.host(), uint16(i.Port), i.SuperUser, i.SuperPassword, database
	cfg.ConnectTimeout = 5 * time.Second
	cfg.RuntimeParams["application_name"] = "fogo"
	return pgx.ConnectConfig(ctx, cfg)
}

// ConnString is a libpq keyword/value connection string to database on this instance as the superuser: without
// TLS (sslmode=disable), or with it verified when RootCert is set.
func (i *Instance) ConnString(database string) string {
	ssl := i.sslParams()
	if ssl == "" {
		ssl = "sslmode=disable"
	}
	return fmt.Sprintf("host=%s port=%d user=%s password=%s dbname=%s %s connect_timeout=10 application_name=fogo_link",
		ConnValue(i.host()), i.Port, ConnValue(i.SuperUser), ConnValue(i.SuperPassword), ConnValue(database), ssl)
}

// sslParams are the libpq parameters that verify this instance's certificate against RootCert, or "" without it.
func (i *Instance) sslParams() string {
	return sslParams(i.RootCert)
}

func sslParams(rootCert string) string {
	if rootCert == "" {
		return ""
	}
	return "sslmode=verify-full sslrootcert=" + ConnValue(rootCert)
}

// ConnValue quotes a value for a libpq keyword/value connection string: in single quotes, with ' and \ escaped by
// a backslash. A bare value ends at the first space, so a path with a space (a passfile) must go through this.
func ConnValue(v string) string {
	return "'" + strings.NewReplacer(`\`, `\\`, `'`, `\'`).Replace(v) + "'"
}

func (i *Instance) host() string {
	if i.Host == "" {
		return "127.0.0.1"
	}
	return i.Host
}

// ConnInfo is how another instance or a tool reaches this one. It never carries the password.
type ConnInfo struct {
	Host string
	Port int
	User string
	// RootCert, when set, requires TLS verified against this CA file (see Instance.RootCert).
	RootCert string
}

// String is the libpq keyword form (no password).
func (c ConnInfo) String() string {
	s := fmt.Sprintf("host=%s port=%d user=%s dbname=postgres", ConnValue(c.Host), c.Port, ConnValue(c.User))
	if ssl := sslParams(c.RootCert); ssl != "" {
		s += " " + ssl
	}
	return s
}

// SourceConnInfo is the connection used by pg_basebackup and pg_rewind against this instance.
func (i *Instance) SourceConnInfo() ConnInfo {
	return ConnInfo{Host: i.host(), Port: i.Port, User: i.SuperUser, RootCert: i.RootCert}
}

// ReplicationConnInfo is the primary_conninfo a standby of this instance uses; the password comes from the
// standby's passfile (outside its data directory), and application_name identifies the standby.
func (i *Instance) ReplicationConnInfo(applicationName string) string {
	s := fmt.Sprintf("host=%s port=%d user=%s application_name=%s", ConnValue(i.host()), i.Port, ConnValue(i.SuperUser),
		ConnValue(applicationName))
	if ssl := i.sslParams(); ssl != "" {
		s += " " + ssl
	}
	return s
}
