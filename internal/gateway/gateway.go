package gateway

import (
	"context"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// Protocol codes of the startup phase.
const (
	protocol3     = 196608 // 3.0
	sslRequest    = 80877103
	gssencRequest = 80877104
	cancelRequest = 80877102
	// maxStartup is PostgreSQL's own limit on a startup packet.
	maxStartup = 10000
)

// Resolver chooses the backend for a session.
type Resolver interface {
	// Resolve returns the backend "host:port" for database. It may block (e.g. while a failover holds new
	// connections) until ctx ends. A *RouteError is shown to the client with its SQLSTATE.
	Resolve(ctx context.Context, database string) (string, error)
}

// RouteError is a routing failure shown to the client as a FATAL ErrorResponse.
type RouteError struct{ Code, Message string }

func (e *RouteError) Error() string { return e.Code + ": " + e.Message }

// Config tunes endpoints.
type Config struct {
	TLS            *tls.Config
	StartupTimeout time.Duration // default 10s
	DialTimeout    time.Duration // default 5s
	ResolveTimeout time.Duration // default 60s
	// RetryFor bounds how long a session is retried against backends that refuse it or answer "cannot connect
	// now" (57P03) before the client gets the error (default 5s).
	RetryFor time.Duration
	// ReservedUsers are login names refused at every endpoint (fogo's internal superuser): every session reaches
	// PostgreSQL from the gateway's loopback address, so pg_hba.conf cannot tell a client from fogo itself.
	ReservedUsers []string
	// BackendTLS, when set, gives the TLS configuration for the session to a backend address (nil: plain TCP):
	// instances on other hosts are reached over TLS, their certificate verified.
	BackendTLS func(addr string) *tls.Config
	Logger     *slog.Logger
}

// Stats are an endpoint's counters: Cut counts sessions ended by Cut.
type Stats struct{ Active, Accepted, Refused, Cut int64 }

// Manager owns named endpoints and the cancel-key registry they share.
type Manager struct {
	cfg       Config
	mu        sync.Mutex
	endpoints map[string]*Endpoint
	cancels   *cancelRegistry
	warm      warmPool
}

// NewManager returns an empty manager.
func NewManager(cfg Config) *Manager {
	if cfg.StartupTimeout == 0 {
		cfg.StartupTimeout = 10 * time.Second
	}
	if cfg.DialTimeout == 0 {
		cfg.DialTimeout = 5 * time.Second
	}
	if cfg.ResolveTimeout == 0 {
		cfg.ResolveTimeout = 60 * time.Second
	}
	if cfg.RetryFor == 0 {
		cfg.RetryFor = 5 * time.Second
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	return &Manager{cfg: cfg, endpoints: map[string]*Endpoint{}, cancels: &cancelRegistry{keys: map[[8]byte]string{}}}
}

// Open starts endpoint name on addr (idempotent: an open endpoint is kept) and returns its address.
func (m *Manager) Open(name, addr string, r Resolver) (string, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if e, ok := m.endpoints[name]; ok {
		return e.Addr(), nil
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return "", err
	}
	e := &Endpoint{cfg: m.cfg, ln: ln, resolver: r, cancels: m.cancels, warm: &m.warm, sessions: map[*session]struct{}{}}
	m.endpoints[name] = e
	go e.serve()
	return e.Addr(), nil
}

// Get returns an open endpoint.
func (m *Manager) Get(name string) (*Endpoint, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	e, ok := m.endpoints[name]
	return e, ok
}

// Close closes endpoint name and its sessions.
func (m *Manager) Close(name string) {
	m.mu.Lock()
	e, ok := m.endpoints[name]
	delete(m.endpoints, name)
	m.mu.Unlock()
	if ok {
		e.Close()
	}
}

// CloseAll closes every endpoint.
func (m *Manager) CloseAll() {
	m.mu.Lock()
	eps := m.endpoints
	m.endpoints = map[string]*Endpoint{}
	m.mu.Unlock()
	for _, e := range eps {
		e.Close()
	}
	m.warm.closeAll()
}

// Endpoint is one listener.
type Endpoint struct {
	cfg      Config
	ln       net.Listener
	resolver Resolver
	cancels  *cancelRegistry
	warm     *warmPool

	mu       sync.Mutex
	sessions map[*session]struct{}
	closed   bool
	active   atomic.Int64
	accepted atomic.Int64
	refused  atomic.Int64
	cut      atomic.Int64
}

// Addr is the listening address.
func (e *Endpoint) Addr() string { return e.ln.Addr().String() }

// Stats returns the counters.
func (e *Endpoint) Stats() Stats {
	return Stats{Active: e.active.Load(), Accepted: e.accepted.Load(), Refused: e.refused.Load(), Cut: e.cut.Load()}
}

// Close stops accepting and ends every session.
func (e *Endpoint) Close() {
	e.mu.Lock()
	e.closed = true
	for s := range e.sessions {
		s.stop()
	}
	e.mu.Unlock()
	e.ln.Close()
}

func (e *Endpoint) serve() {
	for {
		c, err := e.ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			time.Sleep(10 * time.Millisecond)
			continue
		}
		e.accepted.Add(1)
		go e.handle(c)
	}
}

// handle runs one client connection from startup to end.
func (e *Endpoint) handle(client net.Conn) {
	sess := e.track(client)
	if sess == nil {
		client.Close()
		return
	}
	defer e.untrack(sess)
	defer client.Close()
	_ = client.SetDeadline(time.Now().Add(e.cfg.StartupTimeout))
	client, startup, err := e.readStartup(client)
	if err != nil {
		e.refused.Add(1)
		if err != errCancelDone && err != io.EOF {
			e.cfg.Logger.Debug("gateway: bad startup", "remote", client.RemoteAddr().String(), "err", err)
		}
		return
	}
	sess.add(client) // a TLS-wrapped conn, closed with the session too
	// The startup deadline bounds the startup phase the client sends. Routing may take longer (a failover holds
	// new read-write sessions up to the listener's hold timeout, all within ResolveTimeout) and the client is not
	// read meanwhile; whatever the outcome, its answer must still reach the client.
	_ = client.SetDeadline(time.Time{})
	params := startupParams(startup[8:])
	if user := params["user"]; slices.Contains(e.cfg.ReservedUsers, user) {
		e.cfg.Logger.Warn("gateway: refused a login as a reserved role", "remote", client.RemoteAddr().String(), "user", user)
		e.refuse(client, "28000", fmt.Sprintf("fogo gateway: role %q is reserved for fogo and cannot log in through server endpoints or listeners", user))
		return
	}
	mode := replicationMode(params)
	if mode == replPhysical {
		e.refuse(client, "28000", "fogo gateway: physical replication is not available through server endpoints or listeners")
		return
	}
	database := params["database"]
	if database == "" {
		database = params["user"]
	}
	backend, addr, first, early, err := e.connectBackend(database, startup, mode == replNone)
	if err != nil {
		var re *RouteError
		if !errors.As(err, &re) {
			re = &RouteError{Code: "08006", Message: "fogo gateway: " + err.Error()}
		}
		e.refuse(client, re.Code, re.Message)
		return
	}
	defer backend.Close()
	sess.route(SessionInfo{Database: database, User: params["user"], Backend: addr}, backend, early)
	_ = client.SetDeadline(time.Time{})
	if err := e.forwardStartup(client, first, early); err != nil {
		return
	}
	e.active.Add(1)
	defer e.active.Add(-1)
	if mode == replLogical {
		e.relayLogical(client, backend, addr)
		return
	}
	e.relay(sess, client, backend, addr, early)
}

// refuse counts a refused session and sends its FATAL ErrorResponse, bounded by the startup timeout.
func (e *Endpoint) refuse(client net.Conn, code, message string) {
	e.refused.Add(1)
	_ = client.SetWriteDeadline(time.Now().Add(e.cfg.StartupTimeout))
	writeError(client, code, message)
}

// connectBackend resolves the database, dials the backend, sends the startup message and reads the backend's
// first answer. A backend that answers "cannot connect now" (57P03: starting up, shutting down, in recovery)
// before anything reached the client is left for a fresh resolution: during a failover the resolver waits for
// the new primary, so the client is connected there instead of being refused. Bounded by ResolveTimeout.
//
// With early, each attempt first tries the resolver's early route (see EarlyResolver): a session refused by an old
// primary that shuts down for a failover is opened on the new one as soon as the failover holds its listener.
func (e *Endpoint) connectBackend(database string, startup []byte, early bool) (net.Conn, string, []byte, *earlyGate, error) {
	ctx, cancel := context.WithTimeout(context.Background(), e.cfg.ResolveTimeout)
	defer cancel()
	var retryUntil time.Time
	for attempt := 0; ; attempt++ {
		if early {
			if backend, addr, first, gate, ok := e.connectEarly(ctx, database, startup); ok {
				return backend, addr, first, gate, nil
			}
		}
		addr, err := e.resolver.Resolve(ctx, database)
		if err != nil {
			return nil, "", nil, nil, err
		}
		backend, first, err := e.dialStartup(addr, startup)
		if err == nil && !cannotConnectNow(first) {
			return backend, addr, first, nil, nil
		}
		if backend != nil {
			backend.Close()
		}
		if retryUntil.IsZero() {
			retryUntil = time.Now().Add(e.cfg.RetryFor)
		}
		if time.Now().After(retryUntil) {
			return nil, "", nil, nil, unavailable(database, err)
		}
		select {
		case <-ctx.Done():
			return nil, "", nil, nil, unavailable(database, err)
		case <-time.After(min(time.Duration(attempt+1)*10*time.Millisecond, 200*time.Millisecond)):
		}
	}
}

// unavailable is the error a client gets when no backend took its session in time: dialErr is nil when the
// backend answered "cannot connect now".
func unavailable(database string, dialErr error) *RouteError {
	if dialErr == nil {
		return &RouteError{Code: "57P03", Message: fmt.Sprintf("fogo gateway: database %q is not accepting connections right now", database)}
	}
	return &RouteError{Code: "57P03", Message: fmt.Sprintf("fogo gateway: database %q is not reachable right now", database)}
}

// dialStartup connects to addr (or takes a warm connection to it, see Prewarm), sends the startup message and
// returns the first whole backend message.
func (e *Endpoint) dialStartup(addr string, startup []byte) (net.Conn, []byte, error) {
	if conn := e.warm.take(addr); conn != nil {
		if msg, err := sendStartup(conn, startup, e.cfg.DialTimeout); err == nil {
			return conn, msg, nil
		}
		conn.Close() // the backend dropped it meanwhile: dial afresh
	}
	backend, err := dialBackend(e.cfg, addr)
	if err != nil {
		return nil, nil, err
	}
	msg, err := sendStartup(backend, startup, e.cfg.DialTimeout)
	return backend, msg, err
}

// dialBackend connects to addr (TCP, then TLS where BackendTLS asks for it), bounded by DialTimeout.
func dialBackend(cfg Config, addr string) (net.Conn, error) {
	backend, err := net.DialTimeout("tcp", addr, cfg.DialTimeout)
	if err != nil {
		return nil, err
	}
	if cfg.BackendTLS != nil {
		if tc := cfg.BackendTLS(addr); tc != nil {
			_ = backend.SetDeadline(time.Now().Add(cfg.DialTimeout))
			if backend, err = startBackendTLS(backend, tc); err != nil {
				backend.Close()
				return nil, err
			}
			_ = backend.SetDeadline(time.Time{})
		}
	}
	return backend, nil
}

// sendStartup sends the startup message on backend and reads the first whole answer, bounded by timeout.
func sendStartup(backend net.Conn, startup []byte, timeout time.Duration) ([]byte, error) {
	_ = backend.SetDeadline(time.Now().Add(timeout))
	if _, err := backend.Write(startup); err != nil {
		return nil, err
	}
	msg, err := readMessage(backend)
	if err != nil {
		return nil, err
	}
	_ = backend.SetDeadline(time.Time{})
	return msg, nil
}

// startBackendTLS asks the backend for TLS (SSLRequest) and completes the handshake: a backend that declines is
// an error, never a fall back to plain text.
func startBackendTLS(backend net.Conn, tc *tls.Config) (net.Conn, error) {
	req := make([]byte, 8)
	binary.BigEndian.PutUint32(req[0:4], 8)
	binary.BigEndian.PutUint32(req[4:8], sslRequest)
	if _, err := backend.Write(req); err != nil {
		return backend, err
	}
	answer := make([]byte, 1)
	if _, err := io.ReadFull(backend, answer); err != nil {
		return backend, err
	}
	if answer[0] != 'S' {
		return backend, fmt.Errorf("backend %s declined TLS", backend.RemoteAddr())
	}
	t := tls.Client(backend, tc)
	if err := t.Handshake(); err != nil {
		return backend, fmt.Errorf("TLS with backend %s: %w", backend.RemoteAddr(), err)
	}
	return t, nil
}

// readMessage reads one typed backend message (type, length, body).
func readMessage(r io.Reader) ([]byte, error) {
	hdr := make([]byte, 5)
	if _, err := io.ReadFull(r, hdr); err != nil {
		return nil, err
	}
	n := binary.BigEndian.Uint32(hdr[1:5])
	if n < 4 || n > 1<<30 {
		return nil, fmt.Errorf("invalid backend message length %d", n)
	}
	msg := make([]byte, 1+n)
	copy(msg, hdr)
	if _, err := io.ReadFull(r, msg[5:]); err != nil {
		return nil, err
	}
	return msg, nil
}

// cannotConnectNow reports whether msg is an ErrorResponse with SQLSTATE 57P03.
func cannotConnectNow(msg []byte) bool {
	if len(msg) < 5 || msg[0] != 'E' {
		return false
	}
	fields := msg[5:]
	for len(fields) > 1 {
		t := fields[0]
		v, rest, ok := cutZero(fields[1:])
		if !ok {
			return false
		}
		if t == 'C' {
			return v == "57P03"
		}
		fields = rest
	}
	return false
}

var errCancelDone = errors.New("cancel request handled")

// readStartup reads the startup phase and returns the (possibly TLS-wrapped) client and the raw startup message.
func (e *Endpoint) readStartup(client net.Conn) (net.Conn, []byte, error) {
	for {
		msg, err := readStartupPacket(client)
		if err != nil {
			if err != io.EOF {
				writeError(client, "08P01", "invalid startup packet: "+err.Error())
			}
			return client, nil, err
		}
		code := binary.BigEndian.Uint32(msg[4:8])
		switch {
		case code == sslRequest && e.cfg.TLS != nil:
			if _, err := client.Write([]byte{'S'}); err != nil {
				return client, nil, err
			}
			tc := tls.Server(client, e.cfg.TLS)
			if err := tc.Handshake(); err != nil {
				return client, nil, fmt.Errorf("tls handshake: %w", err)
			}
			client = tc
		case code == sslRequest || code == gssencRequest:
			if _, err := client.Write([]byte{'N'}); err != nil {
				return client, nil, err
			}
		case code == cancelRequest:
			if len(msg) == 16 {
				e.cancels.forward(msg, e.cfg.DialTimeout)
			}
			return client, nil, errCancelDone
		case code>>16 == 3:
			return client, msg, nil
		default:
			writeError(client, "0A000", fmt.Sprintf("unsupported frontend protocol %d.%d: fogo supports 3.x", code>>16, code&0xffff))
			return client, nil, fmt.Errorf("unsupported protocol %d", code)
		}
	}
}

// readStartupPacket reads one length-prefixed startup-phase packet (including its length word).
func readStartupPacket(r io.Reader) ([]byte, error) {
	var hdr [4]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		if err == io.ErrUnexpectedEOF {
			return nil, errors.New("truncated length")
		}
		return nil, err
	}
	n := binary.BigEndian.Uint32(hdr[:])
	if n < 8 || n > maxStartup {
		return nil, fmt.Errorf("invalid length %d", n)
	}
	msg := make([]byte, n)
	copy(msg, hdr[:])
	if _, err := io.ReadFull(r, msg[4:]); err != nil {
		return nil, errors.New("truncated packet")
	}
	return msg, nil
}

// startupParams parses "key\0value\0...\0".
func startupParams(b []byte) map[string]string {
	out := map[string]string{}
	for len(b) > 0 && b[0] != 0 {
		k, rest, ok := cutZero(b)
		if !ok {
			break
		}
		v, rest2, ok := cutZero(rest)
		if !ok {
			break
		}
		out[k] = v
		b = rest2
	}
	return out
}

func cutZero(b []byte) (string, []byte, bool) {
	for i, c := range b {
		if c == 0 {
			return string(b[:i]), b[i+1:], true
		}
	}
	return "", nil, false
}

// writeError sends a FATAL ErrorResponse.
func writeError(w io.Writer, code, message string) {
	var body []byte
	for _, f := range []struct {
		t byte
		v string
	}{{'S', "FATAL"}, {'V', "FATAL"}, {'C', code}, {'M', message}} {
		body = append(body, f.t)
		body = append(body, f.v...)
		body = append(body, 0)
	}
	body = append(body, 0)
	msg := make([]byte, 5, 5+len(body))
	msg[0] = 'E'
	binary.BigEndian.PutUint32(msg[1:5], uint32(4+len(body)))
	_, _ = w.Write(append(msg, body...))
}
