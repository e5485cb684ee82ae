package lostxact_test

import (
	"context"
	"os"
	"runtime"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/fogo-db/fogo/internal/postgres/lostxact"
	"github.com/fogo-db/fogo/internal/testutil/pgtest"
)

// TestLostReportOfAHugeTransaction pushes the report's read far: one lost transaction of a million rows (set
// FOGO_LOST_ROWS=10000000 for ten million), committed on the primary after its standby stopped receiving. The read
// counts every change, lists no more than its limit, and its memory stays bounded by the limit, not by the
// transaction (the Go heap is sampled throughout).
func TestLostReportOfAHugeTransaction(t *testing.T) {
	rows := 1_000_000
	if s := os.Getenv("FOGO_LOST_ROWS"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 {
			t.Fatalf("FOGO_LOST_ROWS=%q", s)
		}
		rows = n
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
	defer cancel()
	primary := pgtest.NewPrimary(t)
	standby := pgtest.NewStandby(t, primary, "huge_standby")
	p := connect(t, ctx, primary)
	exec(t, ctx, p, "CREATE TABLE big(id bigint PRIMARY KEY, note text)")
	if _, err := lostxact.Keep(ctx, p); err != nil { // the slot, before anything is lost
		t.Fatal(err)
	}
	s := connect(t, ctx, standby)
	cutStream(t, ctx, s)
	var oldTimeline uint32
	if err := p.QueryRow(ctx, "SELECT timeline_id FROM pg_control_checkpoint()").Scan(&oldTimeline); err != nil {
		t.Fatal(err)
	}
	started := time.Now()
	exec(t, ctx, p, "INSERT INTO big SELECT g, 'lost row ' || g FROM generate_series(1, $1::bigint) g", rows)
	wal := scanLSN(t, ctx, p, "SELECT pg_current_wal_flush_lsn()::text")
	t.Logf("%d rows inserted in one transaction in %s", rows, time.Since(started).Round(time.Millisecond))
	divergence := forceFailover(t, ctx, primary, standby, s, oldTimeline)
	if err := primary.Start(ctx); err != nil {
		t.Fatal(err)
	}
	old := connect(t, ctx, primary)

	var peak atomic.Uint64
	stop := make(chan struct{})
	sampled := make(chan struct{})
	go func() {
		defer close(sampled)
		var m runtime.MemStats
		for {
			runtime.ReadMemStats(&m)
			if m.HeapAlloc > peak.Load() {
				peak.Store(m.HeapAlloc)
			}
			select {
			case <-stop:
				return
			case <-time.After(100 * time.Millisecond):
			}
		}
	}()
	runtime.GC()
	var base runtime.MemStats
	runtime.ReadMemStats(&base)
	started = time.Now()
	res, err := lostxact.Read(ctx, old, divergence, lostxact.DefaultLimits)
	took := time.Since(started)
	close(stop)
	<-sampled
	if err != nil {
		t.Fatal(err)
	}
	if res.TransactionCount != 1 || res.ChangeCount != rows || !res.Truncated || len(res.Transactions) != 1 {
		t.Fatalf("read: %d transactions (%d listed), %d changes, truncated %v; want 1 transaction of %d changes, truncated",
			res.TransactionCount, len(res.Transactions), res.ChangeCount, res.Truncated, rows)
	}
	listed := len(res.Transactions[0].Changes)
	if listed > lostxact.DefaultLimits.Changes || res.Transactions[0].ChangeCount != rows {
		t.Fatalf("the transaction lists %d changes and counts %d, want at most %d listed of %d",
			listed, res.Transactions[0].ChangeCount, lostxact.DefaultLimits.Changes, rows)
	}
	grown := int64(peak.Load()) - int64(base.HeapAlloc)
	t.Logf("read %d changes (%d MB of WAL past the divergence) in %s, %d listed; Go heap grew at most %d MB",
		res.ChangeCount, (wal-divergence)>>20, took.Round(time.Millisecond), listed, grown>>20)
	// The listed changes are some tens of MB; the transaction's whole is hundreds. Four times the limit's share
	// would mean the read held on to what it did not list.
	if limit := int64(400 << 20); grown > limit {
		t.Fatalf("the Go heap grew by %d MB reading the report, past %d MB: the read keeps what it does not list", grown>>20, limit>>20)
	}
}
