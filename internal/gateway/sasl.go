package gateway

import (
	"bytes"
	"encoding/binary"
)

// scramPlus is SCRAM with channel binding, which a session through the gateway can never use: the client's TLS
// (if any) ends at the gateway, and an instance reached over TLS binds to its own certificate, not the gateway's.
const scramPlus = "SCRAM-SHA-256-PLUS"

// authSASL is the AuthenticationSASL request's code in an 'R' message.
const authSASL = 10

// withoutChannelBinding removes SCRAM-SHA-256-PLUS from an AuthenticationSASL message (any other message is
// returned as is). An instance reached over TLS offers it; libpq refuses a server that offers it over a plain
// connection (it could only be a man in the middle), and over TLS the binding would fail, so clients are offered
// plain SCRAM-SHA-256, which the instance accepts.
func withoutChannelBinding(msg []byte) []byte {
	if len(msg) < 9 || msg[0] != 'R' || binary.BigEndian.Uint32(msg[5:9]) != authSASL {
		return msg
	}
	var kept [][]byte
	for _, m := range bytes.Split(bytes.TrimRight(msg[9:], "\x00"), []byte{0}) {
		if len(m) > 0 && string(m) != scramPlus {
			kept = append(kept, m)
		}
	}
	body := []byte{}
	for _, m := range kept {
		body = append(append(body, m...), 0)
	}
	body = append(body, 0) // the list's terminator
	out := make([]byte, 9, 9+len(body))
	out[0] = 'R'
	binary.BigEndian.PutUint32(out[1:5], uint32(4+4+len(body)))
	binary.BigEndian.PutUint32(out[5:9], authSASL)
	return append(out, body...)
}
