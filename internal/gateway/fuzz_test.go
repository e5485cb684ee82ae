package gateway

import (
	"bytes"
	"encoding/binary"
	"io"
	"log/slog"
	"net"
	"strings"
	"testing"
	"time"
)

// What a client sends before it is authenticated is read by the gateway, often as root and on an address others
// reach: the startup phase (SSLRequest, GSSENCRequest, CancelRequest, the startup message and its parameters) and,
// on a logical replication session, each command. For any bytes: no panic, no hang (each read is bounded by the
// bytes given), nothing allocated beyond the protocol's limits. Seeds: what libpq sends; the corpus the fuzzer
// found interesting is in testdata/fuzz. A short run of each is in the test command (make fuzz-short).

// packet frames a startup-phase packet: length, then body.
func packet(body ...[]byte) []byte {
	b := bytes.Join(body, nil)
	out := make([]byte, 4, 4+len(b))
	binary.BigEndian.PutUint32(out, uint32(4+len(b)))
	return append(out, b...)
}

func code32(c uint32) []byte { return binary.BigEndian.AppendUint32(nil, c) }

func FuzzStartupPhase(f *testing.F) {
	startup := packet(code32(3<<16), []byte("user\x00app\x00database\x00db\x00application_name\x00psql\x00\x00"))
	f.Add(startup)
	f.Add(append(packet(code32(sslRequest)), startup...))
	f.Add(append(packet(code32(gssencRequest)), append(packet(code32(sslRequest)), startup...)...))
	f.Add(packet(code32(cancelRequest), []byte{0, 0, 0, 1, 0, 0, 0, 2}))
	f.Add(packet(code32(2<<16), []byte("user\x00x\x00\x00")))
	f.Add(packet(code32(3<<16), []byte("user\x00app\x00replication\x00database\x00\x00")))
	f.Add(packet(code32(3<<16), []byte("user\x00")))
	f.Add([]byte{0, 0, 0, 8})
	f.Add([]byte{0xff, 0xff, 0xff, 0xff})
	f.Add([]byte{})
	e := &Endpoint{cfg: Config{Logger: slog.New(slog.DiscardHandler), DialTimeout: 50 * time.Millisecond},
		cancels: &cancelRegistry{keys: map[[8]byte]string{}}}
	f.Fuzz(func(t *testing.T, data []byte) {
		client, server := net.Pipe()
		defer client.Close()
		defer server.Close()
		_ = server.SetDeadline(time.Now().Add(5 * time.Second))
		go func() { _, _ = io.Copy(io.Discard, client) }() // the client reads every answer ('N', errors)
		// And sends data, then hangs up: the gateway's reads and writes then fail, never block.
		go func() {
			_, _ = client.Write(data)
			client.Close()
		}()
		_, msg, err := e.readStartup(server)
		if err != nil {
			if msg != nil {
				t.Fatalf("an error (%v) with a startup message", err)
			}
			return
		}
		if len(msg) < 8 || len(msg) > maxStartup || binary.BigEndian.Uint32(msg[4:8])>>16 != 3 {
			t.Fatalf("a startup message of %d bytes, protocol %x", len(msg), msg[4:8])
		}
		params := startupParams(msg[8:])
		for k, v := range params {
			if strings.ContainsRune(k, 0) || strings.ContainsRune(v, 0) {
				t.Fatalf("parameter %q=%q holds a NUL", k, v)
			}
		}
		_ = replicationMode(params)
	})
}

// clientMessage frames a typed frontend message.
func clientMessage(typ byte, body string) []byte {
	out := []byte{typ, 0, 0, 0, 0}
	binary.BigEndian.PutUint32(out[1:], uint32(4+len(body)))
	return append(out, body...)
}

func FuzzReplicationCommand(f *testing.F) {
	for _, q := range []string{
		"IDENTIFY_SYSTEM", "BASE_BACKUP", "base_backup (LABEL 'x')", "START_REPLICATION SLOT s LOGICAL 0/0",
		"START_REPLICATION 0/0", `START_REPLICATION SLOT "LOGICAL" PHYSICAL 0/0`, "/* c */ START_REPLICATION -- x\n 0/0",
		"CREATE_REPLICATION_SLOT s TEMPORARY LOGICAL pgoutput", "CREATE_REPLICATION_SLOT s PHYSICAL",
		`CREATE_REPLICATION_SLOT "a""b" LOGICAL pgoutput`, "SELECT 1", "", "\"", "/*", "--",
	} {
		f.Add(clientMessage('Q', q+"\x00"))
	}
	f.Add(clientMessage('d', "w\x00\x00\x00\x00"))
	f.Add(clientMessage('p', "secret\x00"))
	f.Add([]byte{'Q', 0, 0, 0, 3})
	f.Add([]byte{'Q', 0x7f, 0xff, 0xff, 0xff})
	f.Fuzz(func(t *testing.T, data []byte) {
		if len(data) > 5 && data[0] == 'Q' {
			cmd := physicalCommand(string(data[5:]))
			if cmd != "" && !strings.Contains(cmd, "BASE_BACKUP") && !strings.Contains(cmd, "START_REPLICATION") &&
				!strings.Contains(cmd, "CREATE_REPLICATION_SLOT") {
				t.Fatalf("physicalCommand named %q", cmd)
			}
		}
		var backend bytes.Buffer
		r := bytes.NewReader(data)
		for i := 0; i < 64; i++ { // each call consumes at least a header, or ends
			before := r.Len()
			refused, err := forwardClientMessage(r, &backend)
			if refused != "" {
				if backend.Len() > len(data) {
					t.Fatalf("forwarded %d bytes of %d", backend.Len(), len(data))
				}
				return
			}
			if err != nil || r.Len() == before {
				break
			}
		}
		if backend.Len() > len(data) {
			t.Fatalf("forwarded %d bytes, more than the %d the client sent", backend.Len(), len(data))
		}
		if !bytes.HasPrefix(data, backend.Bytes()) {
			t.Fatal("what was forwarded is not what the client sent")
		}
	})
}
