package gateway

import (
	"bytes"
	"encoding/binary"
	"io"
	"runtime"
	"testing"
)

func TestReplicationMode(t *testing.T) {
	for v, want := range map[string]string{"database": replLogical, "false": replNone, "off": replNone, "0": replNone, "no": replNone,
		"true": replPhysical, "on": replPhysical, "1": replPhysical, "yes": replPhysical, "Database": replPhysical, "bogus": replPhysical} {
		if got := replicationMode(map[string]string{"replication": v}); got != want {
			t.Errorf("replication=%s: %q, want %q", v, got, want)
		}
	}
	if got := replicationMode(map[string]string{"user": "u"}); got != replNone {
		t.Errorf("no replication parameter: %q", got)
	}
}

func TestPhysicalCommand(t *testing.T) {
	refused := []string{
		"BASE_BACKUP",
		"  base_backup (PROGRESS)",
		"/* x */ BASE_BACKUP",
		"-- c\nBASE_BACKUP;",
		"START_REPLICATION 0/0",
		"START_REPLICATION PHYSICAL 0/0 TIMELINE 1",
		`START_REPLICATION SLOT "x" PHYSICAL 0/0`,
		`START_REPLICATION SLOT "LOGICAL" 0/0`,
		"START_REPLICATION SLOT x 0/0",
		"CREATE_REPLICATION_SLOT x PHYSICAL",
		"CREATE_REPLICATION_SLOT x TEMPORARY PHYSICAL RESERVE_WAL",
		`CREATE_REPLICATION_SLOT "a""b" PHYSICAL`,
		`CREATE_REPLICATION_SLOT "LOGICAL" PHYSICAL`,
	}
	for _, q := range refused {
		if physicalCommand(q) == "" {
			t.Errorf("%q was let through", q)
		}
	}
	allowed := []string{
		"IDENTIFY_SYSTEM",
		`CREATE_REPLICATION_SLOT "fogo_link_a" LOGICAL pgoutput EXPORT_SNAPSHOT`,
		`CREATE_REPLICATION_SLOT "a""b" TEMPORARY LOGICAL pgoutput`,
		`START_REPLICATION SLOT "fogo_link_a" LOGICAL 0/16B3748 (proto_version '1', publication_names '"p"')`,
		`DROP_REPLICATION_SLOT "x" WAIT`,
		"TIMELINE_HISTORY 2",
		"SELECT 1",
		"",
	}
	for _, q := range allowed {
		if cmd := physicalCommand(q); cmd != "" {
			t.Errorf("%q was refused as %s", q, cmd)
		}
	}
}

// TestForwardClientMessageStreams: a message a logical replication client declares huge is streamed through, not
// allocated whole; an oversized simple query is refused unread; a physical command is not forwarded.
func TestForwardClientMessageStreams(t *testing.T) {
	const size = 256 << 20
	hdr := []byte{'d', 0, 0, 0, 0}
	binary.BigEndian.PutUint32(hdr[1:], size+4)
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	var out countingWriter
	if _, err := forwardClientMessage(io.MultiReader(bytes.NewReader(hdr), io.LimitReader(zeros{}, size)), &out); err != nil {
		t.Fatal(err)
	}
	runtime.ReadMemStats(&after)
	if out.n != size+5 {
		t.Fatalf("forwarded %d bytes, want %d", out.n, size+5)
	}
	if grew := after.TotalAlloc - before.TotalAlloc; grew > 8<<20 {
		t.Errorf("forwarding a %d-byte message allocated %d bytes", size, grew)
	}

	q := []byte{'Q', 0, 0, 0, 0}
	binary.BigEndian.PutUint32(q[1:], maxReplicationCommand+100)
	if _, err := forwardClientMessage(bytes.NewReader(q), &out); err == nil {
		t.Error("an oversized replication command was accepted")
	}
	cmd := append([]byte("BASE_BACKUP"), 0)
	msg := append([]byte{'Q', 0, 0, 0, 0}, cmd...)
	binary.BigEndian.PutUint32(msg[1:], uint32(4+len(cmd)))
	var fwd countingWriter
	if refused, err := forwardClientMessage(bytes.NewReader(msg), &fwd); refused != "BASE_BACKUP" || err != nil || fwd.n != 0 {
		t.Errorf("BASE_BACKUP: refused %q, err %v, forwarded %d bytes", refused, err, fwd.n)
	}
}

type countingWriter struct{ n int64 }

func (w *countingWriter) Write(p []byte) (int, error) { w.n += int64(len(p)); return len(p), nil }

type zeros struct{}

func (zeros) Read(p []byte) (int, error) { clear(p); return len(p), nil }
