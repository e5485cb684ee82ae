package gateway_test

import (
	"context"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/fogo-db/fogo/internal/gateway"
	"github.com/fogo-db/fogo/internal/postgres/instance"
	"github.com/fogo-db/fogo/internal/testutil/certs"
	"github.com/fogo-db/fogo/internal/testutil/pgtest"
)

// routes resolves "postgres" to the real instance and refuses everything else.
type routes struct{ addr string }

func (r routes) Resolve(_ context.Context, db string) (string, error) {
	if db == "postgres" {
		return r.addr, nil
	}
	return "", &gateway.RouteError{Code: "3D000", Message: fmt.Sprintf("database %q does not exist on this server", db)}
}

func setup(t *testing.T) (*instance.Instance, *gateway.Endpoint) {
	t.Helper()
	pg := pgtest.NewPrimary(t)
	m := gateway.NewManager(gateway.Config{StartupTimeout: 2 * time.Second})
	t.Cleanup(m.CloseAll)
	if _, err := m.Open("test", "127.0.0.1:0", routes{addr: fmt.Sprintf("127.0.0.1:%d", pg.Port)}); err != nil {
		t.Fatal(err)
	}
	ep, ok := m.Get("test")
	if !ok {
		t.Fatal("endpoint not registered")
	}
	return pg, ep
}

func connect(ctx context.Context, pg *instance.Instance, ep *gateway.Endpoint, db, sslmode string) (*pgx.Conn, error) {
	host, port, _ := strings.Cut(ep.Addr(), ":")
	return pgx.Connect(ctx, fmt.Sprintf("host=%s port=%s user=%s password=%s dbname=%s sslmode=%s connect_timeout=5",
		host, port, pg.SuperUser, pg.SuperPassword, db, sslmode))
}

func TestGateway(t *testing.T) {
	pg, ep := setup(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	t.Run("routes a session and falls back from SSL", func(t *testing.T) {
		conn, err := connect(ctx, pg, ep, "postgres", "prefer")
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close(ctx)
		var port int
		if err := conn.QueryRow(ctx, "SELECT current_setting('port')::int").Scan(&port); err != nil {
			t.Fatal(err)
		}
		if port != pg.Port {
			t.Fatalf("routed to port %d, want %d", port, pg.Port)
		}
	})

	t.Run("sslmode=require is refused cleanly without TLS", func(t *testing.T) {
		_, err := connect(ctx, pg, ep, "postgres", "require")
		if err == nil || !strings.Contains(err.Error(), "refused") && !strings.Contains(strings.ToLower(err.Error()), "ssl") {
			t.Fatalf("sslmode=require: %v", err)
		}
	})

	t.Run("unknown database gets the resolver's SQLSTATE", func(t *testing.T) {
		_, err := connect(ctx, pg, ep, "nosuch", "disable")
		var pgErr *pgconn.PgError
		if !errors.As(err, &pgErr) || pgErr.Code != "3D000" || pgErr.Severity != "FATAL" {
			t.Fatalf("unknown database: %v", err)
		}
	})

	t.Run("cancel is forwarded to the right backend", func(t *testing.T) {
		conn, err := connect(ctx, pg, ep, "postgres", "disable")
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close(ctx)
		go func() {
			time.Sleep(300 * time.Millisecond)
			// A CancelRequest on a new connection to the gateway, keyed by the backend's pid and secret.
			if err := conn.PgConn().CancelRequest(ctx); err != nil {
				t.Errorf("send cancel: %v", err)
			}
		}()
		start := time.Now()
		_, err = conn.Exec(ctx, "SELECT pg_sleep(30)")
		var pgErr *pgconn.PgError
		if !errors.As(err, &pgErr) || pgErr.Code != "57014" {
			t.Fatalf("cancelled query: %v after %s", err, time.Since(start))
		}
		var one int
		if err := conn.QueryRow(ctx, "SELECT 1").Scan(&one); err != nil {
			t.Fatalf("session after cancel: %v", err)
		}
	})

	t.Run("bad startup packets get an error and do not disturb other sessions", func(t *testing.T) {
		live, err := connect(ctx, pg, ep, "postgres", "disable")
		if err != nil {
			t.Fatal(err)
		}
		defer live.Close(ctx)
		cases := map[string][]byte{
			"length too small":  be32(4),
			"length too large":  be32(1 << 20),
			"unknown protocol":  append(be32(8), be32(2<<16)...),
			"truncated payload": append(be32(64), be32(3<<16)...),
			"garbage":           []byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n"),
		}
		for name, pkt := range cases {
			reply := rawExchange(t, ep.Addr(), pkt)
			if len(reply) == 0 || reply[0] != 'E' {
				if name == "truncated payload" && len(reply) == 0 {
					continue // the client closed first; PostgreSQL also just drops such a connection
				}
				t.Errorf("%s: reply %q, want an ErrorResponse", name, reply)
			}
		}
		var one int
		if err := live.QueryRow(ctx, "SELECT 1").Scan(&one); err != nil || one != 1 {
			t.Fatalf("live session after bad packets: %v", err)
		}
	})

	t.Run("GSSENC and SSL requests are answered N", func(t *testing.T) {
		for _, code := range []uint32{80877104, 80877103} {
			c, err := net.Dial("tcp", ep.Addr())
			if err != nil {
				t.Fatal(err)
			}
			_, _ = c.Write(append(be32(8), be32(code)...))
			b := make([]byte, 1)
			_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
			if _, err := io.ReadFull(c, b); err != nil || b[0] != 'N' {
				t.Errorf("request %d: %q %v", code, b, err)
			}
			c.Close()
		}
	})

	t.Run("large transfers both ways", func(t *testing.T) {
		conn, err := connect(ctx, pg, ep, "postgres", "disable")
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close(ctx)
		// 8 MB to the client, more than the socket buffers hold: the relay must hold back and resume.
		var n int
		if err := conn.QueryRow(ctx, "SELECT length(repeat('x', 8000000))").Scan(&n); err != nil || n != 8000000 {
			t.Fatalf("length: %d %v", n, err)
		}
		var big string
		if err := conn.QueryRow(ctx, "SELECT repeat('y', 8000000)").Scan(&big); err != nil || len(big) != 8000000 || strings.Trim(big, "y") != "" {
			t.Fatalf("8 MB result: %d bytes, %v", len(big), err)
		}
		// 20 MB from the client with COPY.
		if _, err := conn.Exec(ctx, "CREATE TEMP TABLE big(line text)"); err != nil {
			t.Fatal(err)
		}
		row := strings.Repeat("z", 1000) + "\n"
		tag, err := conn.PgConn().CopyFrom(ctx, strings.NewReader(strings.Repeat(row, 20000)), "COPY big FROM STDIN")
		if err != nil || tag.RowsAffected() != 20000 {
			t.Fatalf("COPY 20 MB: %v %v", tag, err)
		}
	})

	t.Run("many concurrent sessions", func(t *testing.T) {
		var wg sync.WaitGroup
		errs := make(chan error, 50)
		for i := 0; i < 50; i++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				conn, err := connect(ctx, pg, ep, "postgres", "disable")
				if err != nil {
					errs <- err
					return
				}
				defer conn.Close(ctx)
				var n int
				if err := conn.QueryRow(ctx, "SELECT count(*) FROM generate_series(1, 1000)").Scan(&n); err != nil || n != 1000 {
					errs <- fmt.Errorf("query: %v (%d)", err, n)
				}
			}()
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Error(err)
		}
	})

	st := ep.Stats()
	if st.Accepted == 0 || st.Refused == 0 {
		t.Fatalf("stats do not count: %+v", st)
	}
}

func be32(v uint32) []byte { return binary.BigEndian.AppendUint32(nil, v) }

// rawExchange writes pkt on a fresh connection, half-closes it and returns what the gateway answered.
func rawExchange(t *testing.T, addr string, pkt []byte) []byte {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_, _ = c.Write(pkt)
	_ = c.(*net.TCPConn).CloseWrite()
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	reply, _ := io.ReadAll(c)
	return reply
}

// TestGatewayTLS: with a certificate the gateway answers SSLRequest with S and terminates TLS; clients verifying
// the certificate connect, and a plaintext client is still served.
func TestGatewayTLS(t *testing.T) {
	pg := pgtest.NewPrimary(t)
	certFile, keyFile, _ := certs.SelfSigned(t)
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		t.Fatal(err)
	}
	m := gateway.NewManager(gateway.Config{TLS: &tls.Config{Certificates: []tls.Certificate{cert}}})
	t.Cleanup(m.CloseAll)
	addr, err := m.Open("tls", "127.0.0.1:0", routes{addr: fmt.Sprintf("127.0.0.1:%d", pg.Port)})
	if err != nil {
		t.Fatal(err)
	}
	host, port, _ := strings.Cut(addr, ":")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for _, mode := range []string{"verify-full sslrootcert=" + certFile, "require", "disable"} {
		conn, err := pgx.Connect(ctx, fmt.Sprintf("host=%s port=%s user=%s password=%s dbname=postgres sslmode=%s",
			host, port, pg.SuperUser, pg.SuperPassword, mode))
		if err != nil {
			t.Fatalf("sslmode=%s: %v", mode, err)
		}
		if _, ok := conn.PgConn().Conn().(*tls.Conn); ok != (mode != "disable") {
			t.Errorf("sslmode=%s: TLS %v", mode, ok)
		}
		var one int
		if err := conn.QueryRow(ctx, "SELECT 1").Scan(&one); err != nil {
			t.Fatalf("sslmode=%s: %v", mode, err)
		}
		conn.Close(ctx)
	}
}

// blockingRoutes makes Resolve wait until release is closed, then answer with err (a held failover).
type blockingRoutes struct {
	release chan struct{}
	err     error
}

func (r blockingRoutes) Resolve(ctx context.Context, _ string) (string, error) {
	select {
	case <-r.release:
		return "", r.err
	case <-ctx.Done():
		return "", ctx.Err()
	}
}

// TestResolveLongerThanStartupTimeout: the startup deadline bounds reading the startup packet, not the wait for
// a route (a failover hold lasts longer): a session whose route comes back after it still gets the
// resolver's ErrorResponse, here a held session that timed out (57P03).
func TestResolveLongerThanStartupTimeout(t *testing.T) {
	const startup = 200 * time.Millisecond
	m := gateway.NewManager(gateway.Config{StartupTimeout: startup})
	t.Cleanup(m.CloseAll)
	r := blockingRoutes{release: make(chan struct{}), err: &gateway.RouteError{Code: "57P03", Message: "a failover is still in progress; retry"}}
	addr, err := m.Open("held", "127.0.0.1:0", r)
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		time.Sleep(3 * startup) // the hold outlasts the startup deadline
		close(r.release)
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	host, port, _ := strings.Cut(addr, ":")
	start := time.Now()
	_, err = pgconn.Connect(ctx, fmt.Sprintf("host=%s port=%s user=app dbname=db sslmode=disable", host, port))
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) || pgErr.Code != "57P03" || !strings.Contains(pgErr.Message, "failover") {
		t.Fatalf("held session after %s: %v, want a 57P03 ErrorResponse", time.Since(start).Round(time.Millisecond), err)
	}
}
