package e2e

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/fogo-db/fogo/internal/app"
	"github.com/fogo-db/fogo/internal/testutil/pgtest"
)

// pauseSignal forwards records to h and reports each "pausing before step" on steps.
type pauseSignal struct {
	slog.Handler
	steps chan string
}

func (p pauseSignal) Handle(ctx context.Context, r slog.Record) error {
	if r.Message == "pausing before step (test hook)" {
		r.Attrs(func(a slog.Attr) bool {
			if a.Key == "step" {
				p.steps <- a.Value.String()
			}
			return true
		})
	}
	return p.Handler.Handle(ctx, r)
}

func (p pauseSignal) WithAttrs(as []slog.Attr) slog.Handler {
	return pauseSignal{Handler: p.Handler.WithAttrs(as), steps: p.steps}
}

func (p pauseSignal) WithGroup(name string) slog.Handler {
	return pauseSignal{Handler: p.Handler.WithGroup(name), steps: p.steps}
}

// waitPause waits, bounded, until the operation pauses before step.
func waitPause(t *testing.T, steps <-chan string, step string) {
	t.Helper()
	timeout := time.After(60 * time.Second)
	for {
		select {
		case s := <-steps:
			if s == step {
				return
			}
		case <-timeout:
			t.Fatalf("the operation never paused before %s", step)
		}
	}
}

// TestListenerHoldsFromDemoteOnly: a planned failover holds new read-write sessions from the demote on, not
// through the catch-up (while the primary still takes writes, a new session reaches it); during demote and
// promote a new session waits and then lands on the new primary.
func TestListenerHoldsFromDemoteOnly(t *testing.T) {
	steps := make(chan string, 16)
	f := startFogo(t, func(o *app.Options) {
		o.PauseBeforeStep, o.PauseFor = "PlannedFailover:catch-up,PlannedFailover:demote", 4*time.Second
		o.Logger = slog.New(pauseSignal{Handler: slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}), steps: steps})
	})
	f.groupWithLedger("hold-east", "hold-west", "hold-fg", "shop")
	rw := f.listenerOf("hold-east", "hold-fg", "readWriteEndpoint")
	eastPort, westPort := f.instancePort(t, "hold-east", "shop"), f.instancePort(t, "hold-west", "shop")
	op := f.do(http.MethodPost, fgPath("hold-west", "hold-fg")+"/failover", nil)
	if op.Status != 202 {
		t.Fatalf("failover: %d %s", op.Status, op.Raw)
	}

	waitPause(t, steps, "catch-up")
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	conn, err := dial(ctx, rw, "shop")
	if err != nil {
		cancel()
		t.Fatalf("a new read-write session before the catch-up waited (held): %v", err)
	}
	var port int
	err = conn.QueryRow(ctx, "INSERT INTO ledger(note) VALUES ('during catch-up') RETURNING inet_server_port()").Scan(&port)
	conn.Close(ctx)
	cancel()
	if err != nil || port != eastPort {
		t.Fatalf("a write before the catch-up landed on port %d (%v), want the primary %d", port, err, eastPort)
	}

	waitPause(t, steps, "demote")
	ctx, cancel = context.WithTimeout(context.Background(), time.Second)
	if conn, err := dial(ctx, rw, "shop"); err == nil {
		conn.Close(ctx)
		cancel()
		t.Fatal("a new read-write session during the demote was not held")
	}
	cancel()
	// A session that starts now waits and reaches the new primary.
	if p, standby := whereIs(t, rw, "shop"); p != westPort || standby {
		t.Fatalf("a session held through demote landed on port %d (standby %v), want the new primary %d", p, standby, westPort)
	}
	if st := f.wait(op); st["status"] != "Succeeded" {
		t.Fatalf("failover: %v", st)
	}
}

// TestSessionsOnFencedPrimaryAreCut: a forced failover whose old primary cannot be stopped (its postmaster is
// SIGSTOPped; its backends keep serving) cuts the sessions relayed to it, through the read-write listener and
// through its server's endpoint, once the new primary is recorded.
func TestSessionsOnFencedPrimaryAreCut(t *testing.T) {
	f := startFogo(t)
	f.groupWithLedger("fen-east", "fen-west", "fen-fg", "shop")
	rw := f.listenerOf("fen-east", "fen-fg", "readWriteEndpoint")
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	viaListener, err := dial(ctx, rw, "shop")
	if err != nil {
		t.Fatal(err)
	}
	defer viaListener.Close(context.Background())
	viaServer, err := f.connect(ctx, "fen-east", "shop")
	if err != nil {
		t.Fatal(err)
	}
	defer viaServer.Close(context.Background())
	for _, c := range []*pgx.Conn{viaListener, viaServer} {
		if _, err := c.Exec(ctx, "INSERT INTO ledger(note) VALUES ('before')"); err != nil {
			t.Fatal(err)
		}
	}

	pid, running := f.app.Cluster.Handle(f.instanceOf(t, "fen-east", "shop")).Running()
	if !running {
		t.Fatal("east is not running")
	}
	resume := pgtest.Freeze(t, pid)

	op := f.do(http.MethodPost, fgPath("fen-west", "fen-fg")+"/forceFailoverAllowDataLoss", nil)
	if op.Status != 202 {
		t.Fatalf("forced failover: %d %s", op.Status, op.Raw)
	}
	deadline := time.Now().Add(90 * time.Second)
	for f.groupProps("fen-west", "fen-fg")["replicationRole"] != "Primary" {
		if time.Now().After(deadline) {
			t.Fatal("the forced failover never recorded the new primary")
		}
		time.Sleep(100 * time.Millisecond)
	}
	// The old primary still runs (its postmaster cannot act on the shutdown); its sessions must be cut.
	for name, c := range map[string]*pgx.Conn{"read-write listener": viaListener, "server endpoint": viaServer} {
		deadline := time.Now().Add(15 * time.Second)
		for {
			qctx, qcancel := context.WithTimeout(ctx, 3*time.Second)
			_, err := c.Exec(qctx, "INSERT INTO ledger(note) VALUES ('on the fenced primary')")
			qcancel()
			if err != nil {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("a session through the %s still writes to the fenced former primary", name)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	resume()
	if st := f.wait(op); st["status"] != "Succeeded" {
		t.Fatalf("forced failover: %v", st)
	}
}

// TestReservedLoginsRefused: fogo's internal superuser cannot log in through any server endpoint or group
// listener, even with its password (28000, before PostgreSQL is reached); physical replication is refused at
// the listeners as at the endpoints, while the admin login's logical replication sessions stay allowed.
func TestReservedLoginsRefused(t *testing.T) {
	f := startFogo(t)
	f.groupWithLedger("res-east", "res-west", "res-fg", "shop")
	superPassword := f.app.Cluster.Handle(f.instanceOf(t, "res-east", "shop")).SuperPassword
	endpoints := map[string]string{
		"east endpoint": f.endpointOf("res-east"), "west endpoint": f.endpointOf("res-west"),
		"rw listener": f.listenerOf("res-east", "res-fg", "readWriteEndpoint"), "ro listener": f.listenerOf("res-east", "res-fg", "readOnlyEndpoint"),
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	for name, ep := range endpoints {
		host, port, _ := strings.Cut(ep, ":")
		base := fmt.Sprintf("host=%s port=%s dbname=shop sslmode=prefer connect_timeout=10", host, port)
		for _, dsn := range []string{
			fmt.Sprintf("%s user=fogo password=%s", base, superPassword),
			fmt.Sprintf("%s user=fogo password=%s replication=database", base, superPassword),
			fmt.Sprintf("%s user=%s password=%s replication=true", base, login, password),
		} {
			c, err := pgconn.Connect(ctx, dsn)
			if err == nil {
				c.Close(ctx)
			}
			var pgErr *pgconn.PgError
			if !errors.As(err, &pgErr) || pgErr.Code != "28000" {
				t.Errorf("%s, %s: %v, want 28000", name, strings.ReplaceAll(dsn, superPassword, "…"), err)
			}
		}
	}
	// Logical replication stays open to the admin login through the read-write listener.
	host, port, _ := strings.Cut(endpoints["rw listener"], ":")
	c, err := pgconn.Connect(ctx, fmt.Sprintf("host=%s port=%s dbname=shop user=%s password=%s sslmode=disable replication=database", host, port, login, password))
	if err != nil {
		t.Fatalf("logical replication session as the admin login: %v", err)
	}
	defer c.Close(ctx)
	if _, err := c.Exec(ctx, "IDENTIFY_SYSTEM").ReadAll(); err != nil {
		t.Fatalf("IDENTIFY_SYSTEM: %v", err)
	}
}
