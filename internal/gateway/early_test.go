package gateway_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/fogo-db/fogo/internal/gateway"
	"github.com/fogo-db/fogo/internal/postgres/instance"
	"github.com/fogo-db/fogo/internal/testutil/pgtest"
)

// earlyRoutes names standby as the early route of every session, and confirms it when release receives err.
type earlyRoutes struct {
	standby string
	release chan error
}

func (r earlyRoutes) Resolve(context.Context, string) (string, error) { return r.standby, nil }

func (r earlyRoutes) ResolveEarly(context.Context, string) (string, func(context.Context) error, bool) {
	return r.standby, func(ctx context.Context) error {
		select {
		case err := <-r.release:
			return err
		case <-ctx.Done():
			return ctx.Err()
		}
	}, true
}

// TestEarlySessionWaitsForItsRoute: a session on an early route authenticates against the standby at once, but
// the client hears nothing more until the route is confirmed; by then the standby is promoted, and the session
// writes and reads in_hot_standby=off. A route confirmed elsewhere ends the session with the resolver's error.
func TestEarlySessionWaitsForItsRoute(t *testing.T) {
	primary := pgtest.NewPrimary(t)
	standby := pgtest.NewStandby(t, primary, "early_slot")
	routes := earlyRoutes{standby: fmt.Sprintf("127.0.0.1:%d", standby.Port), release: make(chan error, 1)}
	m := gateway.NewManager(gateway.Config{})
	t.Cleanup(m.CloseAll)
	addr, err := m.Open("early", "127.0.0.1:0", routes)
	if err != nil {
		t.Fatal(err)
	}
	host, port, _ := strings.Cut(addr, ":")
	dsn := fmt.Sprintf("host=%s port=%s user=%s password=%s dbname=postgres sslmode=disable application_name=early",
		host, port, standby.SuperUser, standby.SuperPassword)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	type result struct {
		conn *pgx.Conn
		err  error
	}
	connected := make(chan result, 1)
	go func() {
		c, err := pgx.Connect(ctx, dsn)
		connected <- result{c, err}
	}()
	// The session exists on the standby (authenticated) while the client still waits.
	s, err := standby.OpenSession(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	watch, err := pgx.Connect(ctx, fmt.Sprintf("host=127.0.0.1 port=%d user=%s password=%s dbname=postgres sslmode=disable",
		standby.Port, standby.SuperUser, standby.SuperPassword))
	if err != nil {
		t.Fatal(err)
	}
	defer watch.Close(ctx)
	deadline := time.Now().Add(20 * time.Second)
	for {
		var n int
		if err := watch.QueryRow(ctx, "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'early'").Scan(&n); err != nil {
			t.Fatal(err)
		}
		if n == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the early session never reached the standby")
		}
		time.Sleep(20 * time.Millisecond)
	}
	select {
	case r := <-connected:
		t.Fatalf("the client connected before its route was confirmed: %v", r.err)
	case <-time.After(200 * time.Millisecond):
	}
	if err := primary.Stop(ctx, instance.ShutdownFast); err != nil {
		t.Fatal(err)
	}
	if err := s.Promote(ctx); err != nil {
		t.Fatal(err)
	}
	routes.release <- nil
	r := <-connected
	if r.err != nil {
		t.Fatal(r.err)
	}
	defer r.conn.Close(ctx)
	if got := r.conn.PgConn().ParameterStatus("in_hot_standby"); got != "off" {
		t.Errorf("in_hot_standby = %q after the promotion, want off", got)
	}
	if _, err := r.conn.Exec(ctx, "CREATE TABLE written_early(id int)"); err != nil {
		t.Fatalf("write on the early session after the promotion: %v", err)
	}

	// A route decided elsewhere: the client gets the resolver's error.
	go func() {
		c, err := pgx.Connect(ctx, dsn)
		connected <- result{c, err}
	}()
	time.Sleep(300 * time.Millisecond)
	routes.release <- &gateway.RouteError{Code: "57P03", Message: "the failover went elsewhere"}
	r = <-connected
	if r.err == nil {
		r.conn.Close(ctx)
		t.Fatal("connected although the route was refused")
	}
	if !strings.Contains(r.err.Error(), "the failover went elsewhere") {
		t.Fatalf("error %v, want the resolver's", r.err)
	}
}
