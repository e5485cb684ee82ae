package gateway_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/fogo-db/fogo/internal/gateway"
	"github.com/fogo-db/fogo/internal/postgres/instance"
	"github.com/fogo-db/fogo/internal/testutil/pgtest"
)

// TestPrewarmedConnectionsCarrySessions: connections made ahead to a backend reached over TLS (a failover's
// hold asks for them) are taken by the next sessions, which then work as any other, over TLS; sessions beyond
// them dial as usual.
func TestPrewarmedConnectionsCarrySessions(t *testing.T) {
	pg, res := pgtest.NewTLSPrimary(t)
	caPEM, err := os.ReadFile(res.CAFile)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(caPEM)
	backend := fmt.Sprintf("127.0.0.1:%d", pg.Port)
	m := gateway.NewManager(gateway.Config{BackendTLS: func(string) *tls.Config {
		return &tls.Config{RootCAs: pool, ServerName: "127.0.0.1", MinVersion: tls.VersionTLS12}
	}})
	t.Cleanup(m.CloseAll)
	addr, err := m.Open("warm", "127.0.0.1:0", routes{addr: backend})
	if err != nil {
		t.Fatal(err)
	}
	m.Prewarm(backend, 2)
	deadline := time.Now().Add(10 * time.Second)
	for m.Warm(backend) < 2 {
		if time.Now().After(deadline) {
			t.Fatalf("%d warm connections after 10s, want 2", m.Warm(backend))
		}
		time.Sleep(10 * time.Millisecond)
	}
	m.Prewarm(backend, 2) // enough are ready: nothing more is made
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	host, port, _ := strings.Cut(addr, ":")
	for i := range 3 {
		conn, err := pgx.Connect(ctx, fmt.Sprintf("host=%s port=%s user=%s password=%s dbname=postgres sslmode=disable",
			host, port, pg.SuperUser, pg.SuperPassword))
		if err != nil {
			t.Fatalf("session %d: %v", i, err)
		}
		var ssl bool
		if err := conn.QueryRow(ctx, "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()").Scan(&ssl); err != nil || !ssl {
			t.Fatalf("session %d: ssl=%v %v, want a TLS session to the backend", i, ssl, err)
		}
		if _, err := conn.Exec(ctx, fmt.Sprintf("CREATE TABLE warm_%d(id int)", i)); err != nil {
			t.Fatalf("session %d: %v", i, err)
		}
		conn.Close(ctx)
		if want := max(1-i, 0); m.Warm(backend) != want {
			t.Fatalf("after session %d: %d warm connections left, want %d", i, m.Warm(backend), want)
		}
	}
}

// TestConnectionAcceptedBeforePromotionWrites: what prewarming a failover's target rests on. A connection that a
// standby accepted (no startup message yet) before its promotion carries a read-write session once the
// promotion is done.
func TestConnectionAcceptedBeforePromotionWrites(t *testing.T) {
	primary := pgtest.NewPrimary(t)
	standby := pgtest.NewStandby(t, primary, "warm_slot")
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	early, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", standby.Port), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if err := primary.Stop(ctx, instance.ShutdownFast); err != nil {
		t.Fatal(err)
	}
	s, err := standby.OpenSession(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if err := s.Promote(ctx); err != nil {
		t.Fatal(err)
	}
	cfg, err := pgx.ParseConfig(fmt.Sprintf("host=127.0.0.1 port=%d user=%s password=%s dbname=postgres sslmode=disable",
		standby.Port, standby.SuperUser, standby.SuperPassword))
	if err != nil {
		t.Fatal(err)
	}
	used := false
	cfg.DialFunc = func(context.Context, string, string) (net.Conn, error) {
		if used {
			return nil, fmt.Errorf("dialled a second time")
		}
		used = true
		return early, nil
	}
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	var inRecovery bool
	if err := conn.QueryRow(ctx, "SELECT pg_is_in_recovery()").Scan(&inRecovery); err != nil || inRecovery {
		t.Fatalf("pg_is_in_recovery() = %v, %v", inRecovery, err)
	}
	if _, err := conn.Exec(ctx, "CREATE TABLE written_after_promotion(id int)"); err != nil {
		t.Fatalf("write on a connection accepted before the promotion: %v", err)
	}
}
