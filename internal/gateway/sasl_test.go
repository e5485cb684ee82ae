package gateway

import (
	"encoding/binary"
	"testing"
)

func saslMessage(mechs ...string) []byte {
	body := []byte{}
	for _, m := range mechs {
		body = append(append(body, m...), 0)
	}
	body = append(body, 0)
	msg := make([]byte, 9)
	msg[0] = 'R'
	binary.BigEndian.PutUint32(msg[1:5], uint32(8+len(body)))
	binary.BigEndian.PutUint32(msg[5:9], authSASL)
	return append(msg, body...)
}

// TestWithoutChannelBinding: the gateway offers clients SCRAM-SHA-256 only (a backend over TLS offers -PLUS too,
// which libpq refuses over a plain connection and which could not bind through the gateway anyway); other
// messages pass unchanged.
func TestWithoutChannelBinding(t *testing.T) {
	got := withoutChannelBinding(saslMessage("SCRAM-SHA-256-PLUS", "SCRAM-SHA-256"))
	if want := saslMessage("SCRAM-SHA-256"); string(got) != string(want) {
		t.Fatalf("got %q, want %q", got, want)
	}
	plain := saslMessage("SCRAM-SHA-256")
	if got := withoutChannelBinding(plain); string(got) != string(plain) {
		t.Fatalf("a list without -PLUS changed: %q", got)
	}
	other := []byte{'R', 0, 0, 0, 8, 0, 0, 0, 0} // AuthenticationOk
	if got := withoutChannelBinding(other); string(got) != string(other) {
		t.Fatalf("AuthenticationOk changed: %q", got)
	}
	if got := withoutChannelBinding([]byte{'R', 0}); len(got) != 2 {
		t.Fatalf("a short message changed: %q", got)
	}
}
