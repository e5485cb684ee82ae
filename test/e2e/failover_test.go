package e2e

import (
	"context"
	"errors"
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// ledger is a writer that commits continuously and remembers every acknowledged commit.
type ledger struct {
	mu    sync.Mutex
	acked []int64
	errs  int
}

// run inserts rows until ctx ends. It writes to whichever server currently accepts writes for db, so it keeps
// going through a failover; only commits the server acknowledged are recorded.
func (l *ledger) run(ctx context.Context, f *fogo, servers []string, db string) {
	var conn *pgx.Conn
	next := 0
	defer func() {
		if conn != nil {
			conn.Close(context.Background())
		}
	}()
	for ctx.Err() == nil {
		if conn == nil {
			c, err := f.connect(ctx, servers[next%len(servers)], db)
			next++
			if err != nil {
				l.note()
				time.Sleep(20 * time.Millisecond)
				continue
			}
			conn = c
		}
		var id int64
		err := conn.QueryRow(ctx, "INSERT INTO ledger(note) VALUES ('w') RETURNING id").Scan(&id)
		if err != nil {
			l.note()
			var pgErr *pgconn.PgError
			if errors.As(err, &pgErr) && pgErr.Code == "25006" { // read-only: this server is secondary now
				conn.Close(context.Background())
				conn = nil
				continue
			}
			conn.Close(context.Background())
			conn = nil
			time.Sleep(10 * time.Millisecond)
			continue
		}
		l.mu.Lock()
		l.acked = append(l.acked, id)
		l.mu.Unlock()
	}
}

func (l *ledger) note() { l.mu.Lock(); l.errs++; l.mu.Unlock() }

func (l *ledger) snapshot() []int64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]int64(nil), l.acked...)
}

// checkAllPresent asserts every acknowledged id is on the server's copy of db.
func checkAllPresent(t *testing.T, f *fogo, server, db string, ids []int64) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := f.connect(ctx, server, db)
	if err != nil {
		t.Fatalf("connect %s/%s: %v", server, db, err)
	}
	defer conn.Close(ctx)
	var missing int
	if err := conn.QueryRow(ctx, "SELECT count(*) FROM unnest($1::bigint[]) AS a(id) WHERE NOT EXISTS (SELECT 1 FROM ledger l WHERE l.id = a.id)", ids).Scan(&missing); err != nil {
		t.Fatal(err)
	}
	if missing != 0 {
		t.Fatalf("%d of %d acknowledged commits are missing on %s", missing, len(ids), server)
	}
}

func mustExec(t *testing.T, f *fogo, server, db, sql string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := f.connect(ctx, server, db)
	if err != nil {
		t.Fatalf("connect %s/%s: %v", server, db, err)
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, sql); err != nil {
		t.Fatalf("%s on %s: %v", sql, server, err)
	}
}

func role(t *testing.T, f *fogo, server, fg string) string {
	t.Helper()
	return f.groupProps(server, fg)["replicationRole"].(string)
}

// TestPlannedAndForcedFailover is the core scenario: a group with two databases; a planned failover while a
// writer commits continuously loses no acknowledged commit and the old primary rejoins without reseeding; a
// planned failover back; a forced failover after the primary instance is killed, and the old primary's
// automatic rewind and rejoin.
func TestPlannedAndForcedFailover(t *testing.T) {
	f := startFogo(t)
	f.createServer("fg-east", "eastus")
	f.createServer("fg-west", "westus")
	f.createDB("fg-east", "orders", "eastus")
	f.createDB("fg-east", "users", "eastus")
	mustExec(t, f, "fg-east", "orders", "CREATE TABLE ledger(id bigserial PRIMARY KEY, note text)")
	mustExec(t, f, "fg-east", "users", "CREATE TABLE ledger(id bigserial PRIMARY KEY, note text)")

	r := f.createGroup("fg-east", "fg-west", "fg1", "orders", "users")
	f.mustSucceed(r, 201)
	f.waitGroupState("fg-east", "fg1", "CATCH_UP")
	if got := role(t, f, "fg-east", "fg1"); got != "Primary" {
		t.Fatalf("east role %s", got)
	}
	west := f.groupProps("fg-west", "fg1")
	if west["replicationRole"] != "Secondary" {
		t.Fatalf("west role %v", west["replicationRole"])
	}
	partner := west["partnerServers"].([]any)[0].(map[string]any)
	if partner["location"] != "eastus" || partner["replicationRole"] != "Primary" {
		t.Fatalf("partner info from west: %v", partner)
	}
	// The geo-secondary database exists on the partner and is readable there.
	if d := f.do(http.MethodGet, dbPath("fg-west", "orders"), nil); d.Status != 200 {
		t.Fatalf("geo-secondary database: %d %s", d.Status, d.Raw)
	}

	// Planned failover to west while a writer commits continuously.
	ctx, stop := context.WithCancel(context.Background())
	var l ledger
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { defer wg.Done(); l.run(ctx, f, []string{"fg-east", "fg-west"}, "orders") }()
	time.Sleep(500 * time.Millisecond)
	before := len(l.snapshot())
	f.mustSucceed(f.do(http.MethodPost, fgPath("fg-west", "fg1")+"/failover", nil), 202)
	time.Sleep(700 * time.Millisecond)
	stop()
	wg.Wait()
	acked := l.snapshot()
	if before == 0 || len(acked) <= before {
		t.Fatalf("writer made no progress around the failover: %d before, %d total", before, len(acked))
	}
	if role(t, f, "fg-west", "fg1") != "Primary" || role(t, f, "fg-east", "fg1") != "Secondary" {
		t.Fatal("roles did not swap")
	}
	checkAllPresent(t, f, "fg-west", "orders", acked)
	f.waitGroupState("fg-west", "fg1", "CATCH_UP") // the old primary rejoined as a streaming standby
	t.Logf("planned failover: %d acknowledged commits, %d client errors, all present", len(acked), l.errs)

	// The old primary is now a read-only standby that receives the new primary's writes.
	mustExec(t, f, "fg-west", "users", "INSERT INTO ledger(note) VALUES ('after-failover')")

	// Forced failover back to east after killing west's primary instance of both databases.
	f.killPrimaryInstances(t, "fg-west")
	f.mustSucceed(f.do(http.MethodPost, fgPath("fg-east", "fg1")+"/forceFailoverAllowDataLoss", nil), 202)
	if role(t, f, "fg-east", "fg1") != "Primary" {
		t.Fatal("forced failover did not make east primary")
	}
	mustExec(t, f, "fg-east", "orders", "INSERT INTO ledger(note) VALUES ('after-forced')")
	// West is rewound and rejoins by itself.
	f.waitGroupState("fg-east", "fg1", "CATCH_UP")
	f.waitRowOn(t, "fg-west", "orders", "after-forced")
}

// waitRowOn waits until a row with note appears on server's copy of db (replication works).
func (f *fogo) waitRowOn(t *testing.T, server, db, note string) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		conn, err := f.connect(ctx, server, db)
		if err == nil {
			var n int
			err = conn.QueryRow(ctx, "SELECT count(*) FROM ledger WHERE note = $1", note).Scan(&n)
			conn.Close(ctx)
			if err == nil && n > 0 {
				cancel()
				return
			}
		}
		cancel()
		time.Sleep(200 * time.Millisecond)
	}
	t.Fatalf("row %q never appeared on %s/%s", note, server, db)
}
