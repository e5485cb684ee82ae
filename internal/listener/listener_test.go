package listener_test

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/fogo-db/fogo/internal/controlplane/model"
	"github.com/fogo-db/fogo/internal/controlplane/service"
	"github.com/fogo-db/fogo/internal/gateway"
	"github.com/fogo-db/fogo/internal/listener"
	"github.com/fogo-db/fogo/internal/testutil/pgtest"
)

// fakeBackend speaks just enough of the protocol for a session: trust authentication, BackendKeyData,
// ReadyForQuery, and a CommandComplete tagged with its name for every simple query.
type fakeBackend struct {
	name string
	ln   net.Listener
	mu   sync.Mutex
	cs   []net.Conn
}

func newFakeBackend(t *testing.T, name string) *fakeBackend {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	b := &fakeBackend{name: name, ln: ln}
	t.Cleanup(func() {
		ln.Close()
		b.mu.Lock()
		for _, c := range b.cs {
			c.Close()
		}
		b.mu.Unlock()
	})
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			b.mu.Lock()
			b.cs = append(b.cs, c)
			b.mu.Unlock()
			go b.serve(c)
		}
	}()
	return b
}

func (b *fakeBackend) port() int { return b.ln.Addr().(*net.TCPAddr).Port }

func msg(typ byte, body []byte) []byte {
	out := []byte{typ, 0, 0, 0, 0}
	binary.BigEndian.PutUint32(out[1:], uint32(4+len(body)))
	return append(out, body...)
}

func (b *fakeBackend) serve(c net.Conn) {
	defer c.Close()
	var hdr [4]byte
	if _, err := io.ReadFull(c, hdr[:]); err != nil {
		return
	}
	if _, err := io.CopyN(io.Discard, c, int64(binary.BigEndian.Uint32(hdr[:]))-4); err != nil {
		return
	}
	var out []byte
	out = append(out, msg('R', []byte{0, 0, 0, 0})...)
	out = append(out, msg('K', []byte{0, 0, 0, 1, 0, 0, 0, 2})...)
	out = append(out, msg('Z', []byte{'I'})...)
	if _, err := c.Write(out); err != nil {
		return
	}
	for {
		var h [5]byte
		if _, err := io.ReadFull(c, h[:]); err != nil {
			return
		}
		if _, err := io.CopyN(io.Discard, c, int64(binary.BigEndian.Uint32(h[1:]))-4); err != nil {
			return
		}
		switch h[0] {
		case 'Q':
			if _, err := c.Write(append(msg('C', append([]byte(b.name), 0)), msg('Z', []byte{'I'})...)); err != nil {
				return
			}
		case 'X':
			return
		}
	}
}

// fakeRoutes answers ResolveGroupDatabase from a port (or an error) the test sets.
type fakeRoutes struct {
	mu   sync.Mutex
	port int
	err  error
	// ro, when set, is the read-only listener's route (port, err); else it routes as the read-write one.
	ro *fakeRoute
	// targets are what FailoverTargets answers.
	targets map[string]string
}

type fakeRoute struct {
	port int
	err  error
}

func (r *fakeRoutes) setRO(port int, err error) {
	r.mu.Lock()
	r.ro = &fakeRoute{port, err}
	r.mu.Unlock()
}

func (r *fakeRoutes) set(port int, err error) {
	r.mu.Lock()
	r.port, r.err = port, err
	r.mu.Unlock()
}

func (r *fakeRoutes) FailoverTargets(string) (map[string]string, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.targets, nil
}

func (r *fakeRoutes) ResolveGroupDatabase(_, database string, readOnly bool) (string, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if database != "db" {
		return "", service.ErrUnknownDatabase
	}
	if readOnly && r.ro != nil {
		return loopback(r.ro.port), r.ro.err
	}
	return loopback(r.port), r.err
}

// loopback is a backend address on this machine ("" for port 0: no route).
func loopback(port int) string {
	if port == 0 {
		return ""
	}
	return net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
}

// open starts a group's listeners over routes and returns them with the group key and the read-write address.
func open(t *testing.T, routes listener.Routes, cfg listener.Config, gcfg gateway.Config) (*listener.Listeners, string, string) {
	t.Helper()
	gw := gateway.NewManager(gcfg)
	t.Cleanup(gw.CloseAll)
	l := listener.New(cfg, gw, routes)
	g := &model.FailoverGroup{Name: "fg", RWPort: pgtest.FreePort(t), ROPort: pgtest.FreePort(t)}
	if err := l.Open(g); err != nil {
		t.Fatal(err)
	}
	return l, g.Key(), net.JoinHostPort("127.0.0.1", strconv.Itoa(g.RWPort))
}

func connect(ctx context.Context, addr string) (*pgconn.PgConn, error) {
	host, port, _ := strings.Cut(addr, ":")
	return pgconn.Connect(ctx, fmt.Sprintf("host=%s port=%s user=app dbname=db sslmode=disable", host, port))
}

// landedOn runs a query and returns the name of the backend that answered.
func landedOn(ctx context.Context, c *pgconn.PgConn) (string, error) {
	res, err := c.Exec(ctx, "SELECT 1").ReadAll()
	if err != nil {
		return "", err
	}
	return res[0].CommandTag.String(), nil
}

// waitCut polls, bounded, until c's session is gone.
func waitCut(t *testing.T, c *pgconn.PgConn, what string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		_, err := landedOn(ctx, c)
		cancel()
		if err != nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: the session on the former primary still answers", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestHeldSessionTimesOut: a read-write session held by a failover longer than the hold timeout (itself longer
// than the gateway's startup timeout) gets a 57P03 ErrorResponse that says why, not a closed connection.
func TestHeldSessionTimesOut(t *testing.T) {
	b := newFakeBackend(t, "A")
	routes := &fakeRoutes{port: b.port()}
	l, group, rw := open(t, routes, listener.Config{HoldTimeout: 700 * time.Millisecond}, gateway.Config{StartupTimeout: 200 * time.Millisecond})
	l.Hold(group)
	defer l.Release(group)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	start := time.Now()
	c, err := connect(ctx, rw)
	if err == nil {
		c.Close(ctx)
	}
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) || pgErr.Code != "57P03" || !strings.Contains(pgErr.Message, "failover") {
		t.Fatalf("held session after %s: %v, want 57P03 naming the failover", time.Since(start).Round(time.Millisecond), err)
	}
	t.Logf("after %s: %s", time.Since(start).Round(time.Millisecond), pgErr.Message)
}

// TestReleaseCutsSessionsOnFormerPrimary: when a failover releases the group, read-write sessions still relayed
// to an instance that is not the primary now (or to a fenced one) are cut; sessions on the primary stay.
func TestReleaseCutsSessionsOnFormerPrimary(t *testing.T) {
	a, b := newFakeBackend(t, "A"), newFakeBackend(t, "B")
	routes := &fakeRoutes{port: a.port()}
	l, group, rw := open(t, routes, listener.Config{}, gateway.Config{})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	onA, err := connect(ctx, rw)
	if err != nil {
		t.Fatal(err)
	}
	defer onA.Close(ctx)
	if got, err := landedOn(ctx, onA); err != nil || got != "A" {
		t.Fatalf("first session on %q, %v", got, err)
	}

	l.Hold(group) // a failover: the old primary could not be stopped and keeps its sessions
	routes.set(b.port(), nil)
	l.Release(group)
	waitCut(t, onA, "after Release")

	onB, err := connect(ctx, rw)
	if err != nil {
		t.Fatal(err)
	}
	defer onB.Close(ctx)
	if got, err := landedOn(ctx, onB); err != nil || got != "B" {
		t.Fatalf("session after the failover on %q, %v", got, err)
	}
	l.Release(group) // nothing stale: the session on the primary stays
	if got, err := landedOn(ctx, onB); err != nil || got != "B" {
		t.Fatalf("session on the primary after a second Release: %q, %v", got, err)
	}

	// A forced failover that fenced the primary but could not finish: its sessions end too.
	routes.set(b.port(), service.ErrFenced)
	l.Release(group)
	waitCut(t, onB, "primary fenced")
}

// TestRouteChangeCutsSessions: a new read-write session that finds its database's primary changed (recorded
// by a failover the listener was not told about) cuts the sessions on the former primary.
func TestRouteChangeCutsSessions(t *testing.T) {
	a, b := newFakeBackend(t, "A"), newFakeBackend(t, "B")
	routes := &fakeRoutes{port: a.port()}
	_, _, rw := open(t, routes, listener.Config{}, gateway.Config{})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	onA, err := connect(ctx, rw)
	if err != nil {
		t.Fatal(err)
	}
	defer onA.Close(ctx)
	if got, err := landedOn(ctx, onA); err != nil || got != "A" {
		t.Fatalf("first session on %q, %v", got, err)
	}
	routes.set(b.port(), nil)
	onB, err := connect(ctx, rw)
	if err != nil {
		t.Fatal(err)
	}
	defer onB.Close(ctx)
	if got, err := landedOn(ctx, onB); err != nil || got != "B" {
		t.Fatalf("new session on %q, %v", got, err)
	}
	waitCut(t, onA, "after the route changed")
}

// TestReservedUserRefused: fogo's internal superuser cannot log in through a listener (28000), and the backend
// never sees the attempt; physical replication is refused as at server endpoints.
func TestReservedUserRefused(t *testing.T) {
	a := newFakeBackend(t, "A")
	routes := &fakeRoutes{port: a.port()}
	_, _, rw := open(t, routes, listener.Config{}, gateway.Config{ReservedUsers: []string{"fogo"}})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	host, port, _ := strings.Cut(rw, ":")
	for _, dsn := range []string{"user=fogo dbname=db", "user=fogo dbname=db replication=database", "user=app dbname=db replication=true"} {
		c, err := pgconn.Connect(ctx, fmt.Sprintf("host=%s port=%s sslmode=disable %s", host, port, dsn))
		if err == nil {
			c.Close(ctx)
		}
		var pgErr *pgconn.PgError
		if !errors.As(err, &pgErr) || pgErr.Code != "28000" {
			t.Errorf("%s: %v, want 28000", dsn, err)
		}
	}
	a.mu.Lock()
	n := len(a.cs)
	a.mu.Unlock()
	if n != 0 {
		t.Errorf("the backend saw %d refused sessions", n)
	}
}

// TestReleaseCutsReadOnlySessionsOnPromotedSecondary: a read-only session relayed to the geo-secondary must not
// stay on it once a failover promoted it (it could write): Release cuts it, and new read-only sessions go to the
// new secondary; with no readable secondary (policy Disabled) the read-only sessions are cut too.
func TestReleaseCutsReadOnlySessionsOnPromotedSecondary(t *testing.T) {
	a, b := newFakeBackend(t, "A"), newFakeBackend(t, "B")
	routes := &fakeRoutes{port: a.port()}
	routes.setRO(b.port(), nil)
	gw := gateway.NewManager(gateway.Config{})
	t.Cleanup(gw.CloseAll)
	l := listener.New(listener.Config{}, gw, routes)
	g := &model.FailoverGroup{Name: "fg", RWPort: pgtest.FreePort(t), ROPort: pgtest.FreePort(t)}
	if err := l.Open(g); err != nil {
		t.Fatal(err)
	}
	group, ro := g.Key(), net.JoinHostPort("127.0.0.1", strconv.Itoa(g.ROPort))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	onB, err := connect(ctx, ro)
	if err != nil {
		t.Fatal(err)
	}
	defer onB.Close(ctx)
	if got, err := landedOn(ctx, onB); err != nil || got != "B" {
		t.Fatalf("read-only session on %q, %v", got, err)
	}
	l.Hold(group) // a failover: B becomes the primary, A its secondary
	routes.set(b.port(), nil)
	routes.setRO(a.port(), nil)
	l.Release(group)
	waitCut(t, onB, "read-only session on the promoted secondary")
	onA, err := connect(ctx, ro)
	if err != nil {
		t.Fatal(err)
	}
	defer onA.Close(ctx)
	if got, err := landedOn(ctx, onA); err != nil || got != "A" {
		t.Fatalf("read-only session after the failover on %q, %v", got, err)
	}
	routes.setRO(0, service.ErrNoReadableSecondary)
	l.Release(group)
	waitCut(t, onA, "no readable secondary")
}

// TestRecordedReleaseRoutesFromTheHold: a failover that recorded its targets as the primaries sends the sessions
// it held to them (read at the hold) without reading the routes again: here the routes cannot be read at all,
// and the held session lands on the target. One that did not record them (undone) leaves the route to the store:
// the session opened early on the target is refused, and the next one goes to the primary the store names.
func TestRecordedReleaseRoutesFromTheHold(t *testing.T) {
	a, b := newFakeBackend(t, "A"), newFakeBackend(t, "B")
	routes := &fakeRoutes{port: a.port(), targets: map[string]string{"db": loopback(b.port())}}
	l, group, rw := open(t, routes, listener.Config{HoldTimeout: 20 * time.Second}, gateway.Config{})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	heldSession := func() chan string {
		landed := make(chan string, 1)
		go func() {
			c, err := connect(ctx, rw)
			if err != nil {
				landed <- "error: " + err.Error()
				return
			}
			defer c.Close(ctx)
			name, err := landedOn(ctx, c)
			if err != nil {
				name = "error: " + err.Error()
			}
			landed <- name
		}()
		time.Sleep(300 * time.Millisecond) // connected and held
		return landed
	}

	l.Hold(group)
	landed := heldSession()
	routes.set(a.port(), errors.New("the store cannot be read"))
	l.ReleaseRecorded(group, true)
	if got := <-landed; got != "B" {
		t.Fatalf("held by a failover that recorded its target: the session got %q, want it on B", got)
	}

	routes.set(a.port(), nil)
	l.Hold(group)
	landed = heldSession()
	l.ReleaseRecorded(group, false)
	if got := <-landed; !strings.Contains(got, "57P03") {
		t.Fatalf("held by a failover that was undone: the session got %q, want 57P03 (its early session is on B)", got)
	}
	c, err := connect(ctx, rw)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close(ctx)
	if got, err := landedOn(ctx, c); err != nil || got != "A" {
		t.Fatalf("after the undone failover: %q %v, want A", got, err)
	}
}
