package e2e

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/fogo-db/fogo/internal/app"
)

// listenerOf returns the group's read-write ("readWriteEndpoint") or read-only ("readOnlyEndpoint") listener.
func (f *fogo) listenerOf(server, fg, which string) string {
	f.t.Helper()
	ep, _ := f.groupProps(server, fg)[which].(map[string]any)["endpoint"].(string)
	if ep == "" {
		f.t.Fatalf("group %s has no %s.endpoint", fg, which)
	}
	return ep
}

func dial(ctx context.Context, endpoint, db string) (*pgx.Conn, error) {
	host, port := hostsAndPorts(endpoint)
	return pgx.Connect(ctx, fmt.Sprintf("host=%s port=%s user=%s password=%s dbname=%s sslmode=prefer connect_timeout=10",
		host, port, login, password, db))
}

// whereIs reports which instance port a session landed on and whether it is a standby.
func whereIs(t *testing.T, endpoint, db string) (port int, standby bool) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	conn, err := dial(ctx, endpoint, db)
	if err != nil {
		t.Fatalf("connect %s/%s: %v", endpoint, db, err)
	}
	defer conn.Close(ctx)
	if err := conn.QueryRow(ctx, "SELECT inet_server_port(), pg_is_in_recovery()").Scan(&port, &standby); err != nil {
		t.Fatal(err)
	}
	return port, standby
}

// instancePort is the port of server's instance of db.
func (f *fogo) instancePort(t *testing.T, server, db string) int {
	t.Helper()
	rec := f.instanceOf(t, server, db)
	return rec.Port
}

// listenerWriters are clients that each open a session on the read-write listener, commit until the session
// ends, and open a new one; a failed connection attempt counts as refused.
type listenerWriters struct {
	mu      sync.Mutex
	acked   []int64
	refused atomic.Int64
	ended   atomic.Int64 // sessions that ended with an error (expected at the failover)
}

func (w *listenerWriters) run(ctx context.Context, endpoint, db string, clients int) *sync.WaitGroup {
	var wg sync.WaitGroup
	for i := 0; i < clients; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ctx.Err() == nil {
				conn, err := dial(ctx, endpoint, db)
				if err != nil {
					if ctx.Err() == nil {
						w.refused.Add(1)
					}
					continue
				}
				for ctx.Err() == nil {
					var id int64
					if err := conn.QueryRow(ctx, "INSERT INTO ledger(note) VALUES ('l') RETURNING id").Scan(&id); err != nil {
						if ctx.Err() == nil {
							w.ended.Add(1)
						}
						break
					}
					w.mu.Lock()
					w.acked = append(w.acked, id)
					w.mu.Unlock()
				}
				conn.Close(context.Background())
			}
		}()
	}
	return &wg
}

// TestListenersFollowTheRoles: several clients write continuously through the read-write listener during a
// planned failover: no new connection is refused (they wait, then reach the new primary), every acknowledged
// write is on the new primary, sessions on the old primary end with a PostgreSQL error. The read-only listener
// routes to the geo-secondary; cancel and bad startup packets work through a listener; 200 concurrent sessions.
func TestListenersFollowTheRoles(t *testing.T) {
	f := startFogo(t)
	f.groupWithLedger("lis-east", "lis-west", "lis-fg", "shop")
	rw, ro := f.listenerOf("lis-east", "lis-fg", "readWriteEndpoint"), f.listenerOf("lis-west", "lis-fg", "readOnlyEndpoint")
	eastPort, westPort := f.instancePort(t, "lis-east", "shop"), f.instancePort(t, "lis-west", "shop")
	if p, standby := whereIs(t, rw, "shop"); p != eastPort || standby {
		t.Fatalf("rw listener routed to port %d (standby %v), want the primary %d", p, standby, eastPort)
	}
	if p, standby := whereIs(t, ro, "shop"); p != westPort || !standby {
		t.Fatalf("ro listener routed to port %d (standby %v), want the geo-secondary %d", p, standby, westPort)
	}

	ctx, stop := context.WithCancel(context.Background())
	var w listenerWriters
	wg := w.run(ctx, rw, "shop", 4)
	time.Sleep(700 * time.Millisecond)
	before := len(w.acked)
	f.mustSucceed(f.do(http.MethodPost, fgPath("lis-west", "lis-fg")+"/failover", nil), 202)
	time.Sleep(700 * time.Millisecond)
	stop()
	wg.Wait()
	if before == 0 || len(w.acked) <= before {
		t.Fatalf("writers made no progress: %d before the failover, %d in all", before, len(w.acked))
	}
	if n := w.refused.Load(); n != 0 {
		t.Fatalf("%d new connections to the read-write listener were refused during the failover", n)
	}
	if p, standby := whereIs(t, rw, "shop"); p != westPort || standby {
		t.Fatalf("after the failover the rw listener routes to port %d (standby %v), want %d", p, standby, westPort)
	}
	checkAllPresent(t, f, "lis-west", "shop", w.acked)
	t.Logf("planned failover through the listener: %d acknowledged writes, %d sessions ended by the switch, 0 refused", len(w.acked), w.ended.Load())
	f.waitGroupState("lis-west", "lis-fg", "CATCH_UP")
	if p, standby := whereIs(t, ro, "shop"); p != eastPort || !standby {
		t.Fatalf("after the failover the ro listener routes to port %d (standby %v), want the old primary %d", p, standby, eastPort)
	}

	t.Run("cancel through the listener", func(t *testing.T) {
		conn, err := dial(context.Background(), rw, "shop")
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close(context.Background())
		go func() {
			time.Sleep(300 * time.Millisecond)
			_ = conn.PgConn().CancelRequest(context.Background())
		}()
		_, err = conn.Exec(context.Background(), "SELECT pg_sleep(30)")
		var pgErr *pgconn.PgError
		if !errors.As(err, &pgErr) || pgErr.Code != "57014" {
			t.Fatalf("cancel through the listener: %v", err)
		}
	})

	t.Run("bad startup packets", func(t *testing.T) {
		for _, pkt := range [][]byte{{0, 0, 0, 4}, []byte("GET / HTTP/1.1\r\n\r\n"), {0, 1, 0, 0, 0, 3, 0, 0}} {
			c, err := net.Dial("tcp", rw)
			if err != nil {
				t.Fatal(err)
			}
			_, _ = c.Write(pkt)
			_ = c.(*net.TCPConn).CloseWrite()
			_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
			reply, _ := io.ReadAll(c)
			c.Close()
			if len(reply) == 0 || reply[0] != 'E' {
				t.Errorf("packet %q: reply %q, want an ErrorResponse", pkt, reply)
			}
		}
		if _, err := dial(context.Background(), rw, "nosuchdb"); err == nil || !strings.Contains(err.Error(), "3D000") {
			t.Errorf("unknown database through the listener: %v", err)
		}
	})

	t.Run("200 concurrent sessions", func(t *testing.T) {
		var wg sync.WaitGroup
		var failed atomic.Int64
		var firstErr atomic.Value
		start := make(chan struct{})
		for i := 0; i < 200; i++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				<-start
				ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
				defer cancel()
				conn, err := dial(ctx, rw, "shop")
				if err == nil {
					_, err = conn.Exec(ctx, "SELECT pg_sleep(0.5)")
					conn.Close(ctx)
				}
				if err != nil {
					failed.Add(1)
					firstErr.CompareAndSwap(nil, err.Error())
				}
			}()
		}
		close(start)
		wg.Wait()
		if n := failed.Load(); n != 0 {
			t.Fatalf("%d of 200 concurrent sessions failed, e.g. %v", n, firstErr.Load())
		}
	})
}

// TestReadOnlyListenerPolicy: with the read-only failover policy Disabled the read-only listener never routes to
// the primary (it refuses while the secondary is down); with Enabled it falls back to the primary.
func TestReadOnlyListenerPolicy(t *testing.T) {
	f := startFogo(t, func(o *app.Options) { o.ReconcileInterval = time.Hour })
	f.createServer("ro-east", "eastus")
	f.createServer("ro-west", "westus")
	f.createDB("ro-east", "cat", "eastus")
	f.mustSucceed(f.createGroup("ro-east", "ro-west", "ro-fg", "cat"), 201)
	ro := f.listenerOf("ro-east", "ro-fg", "readOnlyEndpoint")
	eastPort := f.instancePort(t, "ro-east", "cat")

	restart := f.stopInstance(t, "ro-west", "cat")
	_, err := dial(context.Background(), ro, "cat")
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) || pgErr.Code != "57P03" {
		t.Fatalf("ro listener, policy Disabled, secondary down: %v", err)
	}
	f.mustSucceed(f.do(http.MethodPatch, fgPath("ro-east", "ro-fg"), map[string]any{"properties": map[string]any{
		"readOnlyEndpoint": map[string]any{"failoverPolicy": "Enabled"}}}), 202)
	if p, standby := whereIs(t, ro, "cat"); p != eastPort || standby {
		t.Fatalf("ro listener, policy Enabled, secondary down: port %d standby %v, want the primary %d", p, standby, eastPort)
	}
	restart()
	if _, standby := whereIs(t, ro, "cat"); !standby {
		t.Fatal("ro listener does not go back to the secondary once it runs")
	}
}

// stopInstance stops server's instance of db and returns a function that starts it again.
func (f *fogo) stopInstance(t *testing.T, server, db string) func() {
	t.Helper()
	rec := f.instanceOf(t, server, db)
	h := f.app.Cluster.Handle(rec)
	if err := h.Stop(context.Background(), "fast"); err != nil {
		t.Fatal(err)
	}
	return func() {
		if err := h.Start(context.Background()); err != nil {
			t.Fatal(err)
		}
	}
}
