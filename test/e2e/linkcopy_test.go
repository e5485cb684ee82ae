package e2e

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestSlotCopyStandbyFailsToStart: when the geo-secondary does not start again after the keeper stopped it to
// copy the link's slot, the link's status says so (instead of the keeper saying nothing while the failover-safe
// gate waits for a standby that is down), and the keeper starts it again, with backoff, once it can: the copy is
// then in place and the status clear.
func TestSlotCopyStandbyFailsToStart(t *testing.T) {
	f, rw, store := groupLink(t, "kp", 100, nil)
	convergeLink(t, f, rw, store)
	waitSlotCopy(t, f, "kp-west", "shop", "fogo_link_lk")

	h := f.app.Cluster.Handle(f.instanceOf(t, "kp-west", "shop"))
	conf := filepath.Join(h.Dir, "postgresql.auto.conf")
	orig, err := os.ReadFile(conf)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.WriteFile(conf, orig, 0o600) })
	// The next start of the standby fails; dropping the copy makes the keeper copy the slot again.
	if err := os.WriteFile(conf, append(append([]byte(nil), orig...), "\nshared_buffers = 'bogus'\n"...), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := h.DropSlot(context.Background(), "fogo_link_lk"); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(60 * time.Second)
	for {
		st, _ := f.app.Links.Status("lk")
		if strings.Contains(st.Err, "slot copy on the geo-secondary") && strings.Contains(st.Err, "start") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the status does not say the standby did not start after the slot copy: %+v", st)
		}
		time.Sleep(200 * time.Millisecond)
	}
	if err := os.WriteFile(conf, orig, 0o600); err != nil {
		t.Fatal(err)
	}
	waitSlotCopy(t, f, "kp-west", "shop", "fogo_link_lk")
	mustExec(t, f, "kp-east", "shop", "INSERT INTO ledger(note) SELECT 'after' FROM generate_series(1, 10)")
	convergeLink(t, f, rw, store)
	deadline = time.Now().Add(60 * time.Second)
	for {
		st, _ := f.app.Links.Status("lk")
		if st.Err == "" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the status still reports: %+v", st)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// TestStaleSlotCopyReplaced: a copy on the geo-secondary that cannot be advanced (here a physical slot of the
// link's slot name that reserves no WAL) is reported in the link's status while the advance keeps failing, and
// replaced by a fresh copy of the primary's logical slot after 5 failures in a row.
func TestStaleSlotCopyReplaced(t *testing.T) {
	f, rw, store := groupLink(t, "st", 100, nil)
	convergeLink(t, f, rw, store)
	waitSlotCopy(t, f, "st-west", "shop", "fogo_link_lk")
	h := f.app.Cluster.Handle(f.instanceOf(t, "st-west", "shop"))
	ctx := context.Background()
	if err := h.DropSlot(ctx, "fogo_link_lk"); err != nil {
		t.Fatal(err)
	}
	c, err := h.Connect(ctx, "postgres")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close(ctx)
	if _, err := c.Exec(ctx, "SELECT pg_create_physical_replication_slot('fogo_link_lk')"); err != nil {
		t.Fatal(err)
	}
	mustExec(t, f, "st-east", "shop", "INSERT INTO ledger(note) SELECT 'after' FROM generate_series(1, 10)")
	convergeLink(t, f, rw, store) // the checkpoint moves: the keeper advances the copy
	sawFailing := false
	deadline := time.Now().Add(120 * time.Second)
	for {
		if st, _ := f.app.Links.Status("lk"); strings.Contains(st.Err, "in a row") {
			sawFailing = true
		}
		c2, err := h.Connect(ctx, "postgres")
		var typ string
		if err == nil {
			err = c2.QueryRow(ctx, "SELECT slot_type FROM pg_replication_slots WHERE slot_name = 'fogo_link_lk'").Scan(&typ)
			c2.Close(ctx)
		}
		if typ == "logical" {
			break
		}
		if time.Now().After(deadline) {
			st, _ := f.app.Links.Status("lk")
			t.Fatalf("the stale copy was not replaced (slot type %q, %v); status %+v", typ, err, st)
		}
		time.Sleep(200 * time.Millisecond)
	}
	if !sawFailing {
		t.Fatal("the status never said the copy's advance was failing")
	}
}
