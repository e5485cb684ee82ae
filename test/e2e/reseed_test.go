package e2e

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/fogo-db/fogo/internal/app"
	"github.com/fogo-db/fogo/internal/controlplane/model"
	"github.com/fogo-db/fogo/internal/postgres/instance"
)

// TestLostSlotIsReseeded: with --max-slot-wal-keep-size, a geo-secondary that stays down while the primary
// writes more WAL than the bound loses its slot instead of filling the disk; the metrics say so, and the
// observer seeds it again by itself until it streams with every row.
func TestLostSlotIsReseeded(t *testing.T) {
	f := startFogo(t, func(o *app.Options) {
		o.MaxSlotWALKeepSize = "1MB" // less than a segment: nothing beyond the current one is kept for a slot
		o.InstanceSettings = map[string]string{"wal_keep_size": "0"}
	})
	f.groupWithLedger("east", "west", "fg", "db")
	ids := insertRows(t, f, "east", "db", 10)
	prim, sec := f.instanceOf(t, "east", "db"), f.instanceOf(t, "west", "db")
	ph, sh := f.app.Cluster.Handle(prim), f.app.Cluster.Handle(sec)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var bound string
	if c, err := ph.Connect(ctx, "db"); err != nil {
		t.Fatal(err)
	} else {
		err = c.QueryRow(ctx, "SHOW max_slot_wal_keep_size").Scan(&bound)
		c.Close(ctx)
		if err != nil || bound != "1MB" {
			t.Fatalf("max_slot_wal_keep_size = %q, %v", bound, err)
		}
	}

	// The secondary is down (the group's lock keeps the observer from restarting it) while the primary writes
	// three segments of WAL and checkpoints.
	unlock := f.app.Cluster.Lock(model.GroupKey("fg"))
	locked := true
	defer func() {
		if locked {
			unlock()
		}
	}()
	if err := sh.Stop(ctx, instance.ShutdownFast); err != nil {
		t.Fatal(err)
	}
	for k := 0; k < 3; k++ {
		ids = append(ids, insertRows(t, f, "east", "db", 1)...)
		f.execOnInstance(t, "east", "db", "SELECT pg_switch_wal()")
	}
	f.execOnInstance(t, "east", "db", "CHECKPOINT")
	if lost, err := ph.SlotLost(ctx, sec.SlotName); err != nil || !lost {
		t.Fatalf("the stopped secondary's slot %s: lost %v, %v", sec.SlotName, lost, err)
	}
	lostMetric := fmt.Sprintf(`fogo_replication_slot_lost{database="db",group="fg",slot=%q} 1`, sec.SlotName)
	if m := f.metrics(); !strings.Contains(m, lostMetric) || !strings.Contains(m, "fogo_replication_slot_retained_bytes{") {
		t.Fatalf("metrics lack %s:\n%s", lostMetric, grepLines(m, "fogo_replication_slot"))
	}
	unlock()
	locked = false

	// The observer notices, seeds the secondary again, and it streams with every row.
	start := time.Now()
	for {
		rec := f.instanceOf(t, "west", "db")
		if rec.Seeded && !rec.Reseed && f.groupProps("east", "fg")["replicationState"] == "CATCH_UP" {
			break
		}
		if time.Since(start) > time.Minute {
			t.Fatalf("secondary not seeded again: %+v, state %v", rec, f.groupProps("east", "fg")["replicationState"])
		}
		time.Sleep(200 * time.Millisecond)
	}
	t.Logf("reseeded and streaming %.1fs after the slot was lost", time.Since(start).Seconds())
	ids = append(ids, insertRows(t, f, "east", "db", 5)...)
	deadline := time.Now().Add(20 * time.Second)
	for {
		c, err := f.connect(ctx, "west", "db")
		var missing int = -1
		if err == nil {
			err = c.QueryRow(ctx, "SELECT count(*) FROM unnest($1::bigint[]) AS a(id) WHERE NOT EXISTS (SELECT 1 FROM ledger l WHERE l.id = a.id)", ids).Scan(&missing)
			c.Close(ctx)
		}
		if err == nil && missing == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the reseeded secondary misses %d of %d rows (%v)", missing, len(ids), err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if lost, err := ph.SlotLost(ctx, sec.SlotName); err != nil || lost {
		t.Fatalf("the new slot: lost %v, %v", lost, err)
	}
	if m := f.metrics(); strings.Contains(m, lostMetric) {
		t.Fatalf("metrics still say lost:\n%s", grepLines(m, "fogo_replication_slot"))
	}
}

func (f *fogo) metrics() string {
	f.t.Helper()
	r := f.do(http.MethodGet, f.url+"/metrics", nil)
	if r.Status != 200 {
		f.t.Fatalf("metrics: %d %s", r.Status, r.Raw)
	}
	return string(r.Raw)
}

func grepLines(s, sub string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}
