package gateway

import (
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"strings"
)

// Replication sessions through an endpoint. A server's admin login has REPLICATION (so that it can run logical
// replication over a plain connection string, as on managed services), and pg_hba.conf admits only fogo's
// superuser to physical replication. But PostgreSQL's logical walsender (replication=database) accepts the
// physical replication commands too: BASE_BACKUP would hand the admin a copy of the instance's files, a physical
// START_REPLICATION its raw WAL. So the gateway refuses physical replication: a startup packet asking for it,
// and those commands in a logical session. fogo itself never replicates physically through an endpoint (standbys
// and base backups connect to the instances directly).

// Replication modes of a startup packet.
const (
	replNone     = ""
	replLogical  = "logical"
	replPhysical = "physical"
)

// replicationMode classifies the startup parameter replication: absent or false is a normal session, "database"
// a logical walsender, anything else (a value PostgreSQL takes as true, or one it would refuse) physical.
func replicationMode(params map[string]string) string {
	v, ok := params["replication"]
	if !ok {
		return replNone
	}
	if v == "database" {
		return replLogical
	}
	switch strings.ToLower(v) {
	case "f", "fa", "fal", "fals", "false", "n", "no", "of", "off", "0":
		return replNone
	}
	return replPhysical
}

// physicalCommand names the physical replication command a simple query of a logical walsender session is, or
// returns "". PostgreSQL parses a query as a replication command when its first token is a replication keyword
// (case-sensitive, no comments); this check upper-cases and skips comments, so it refuses at least as much.
func physicalCommand(query string) string {
	t := replTokens(query, 5)
	if len(t) == 0 {
		return ""
	}
	switch t[0] {
	case "BASE_BACKUP":
		return "BASE_BACKUP"
	case "START_REPLICATION": // START_REPLICATION SLOT name LOGICAL ... is the only logical form
		if len(t) >= 4 && t[1] == "SLOT" && t[3] == "LOGICAL" {
			return ""
		}
		return "physical START_REPLICATION"
	case "CREATE_REPLICATION_SLOT": // CREATE_REPLICATION_SLOT name [TEMPORARY] {LOGICAL plugin | PHYSICAL}
		i := 2
		if len(t) > i && t[i] == "TEMPORARY" {
			i++
		}
		if len(t) > i && t[i] == "LOGICAL" {
			return ""
		}
		return "CREATE_REPLICATION_SLOT of a physical slot"
	}
	return ""
}

// replTokens returns up to n tokens of a replication command: keywords and unquoted identifiers upper-cased,
// quoted identifiers with their quotes (so a slot named "LOGICAL" is no keyword), any other character alone.
// Whitespace and SQL comments separate tokens.
func replTokens(s string, n int) []string {
	var out []string
	for len(out) < n && s != "" {
		c := s[0]
		switch {
		case strings.ContainsRune(" \t\n\r\f\v", rune(c)):
			s = s[1:]
		case strings.HasPrefix(s, "--"):
			if i := strings.IndexByte(s, '\n'); i >= 0 {
				s = s[i+1:]
			} else {
				s = ""
			}
		case strings.HasPrefix(s, "/*"):
			if i := strings.Index(s[2:], "*/"); i >= 0 {
				s = s[i+4:]
			} else {
				s = ""
			}
		case c == '"':
			i := 1
			for i < len(s) && !(s[i] == '"' && (i+1 == len(s) || s[i+1] != '"')) {
				if s[i] == '"' {
					i++ // a doubled quote
				}
				i++
			}
			i = min(i+1, len(s))
			out, s = append(out, s[:i]), s[i:]
		case c == '_' || c >= 'A' && c <= 'Z' || c >= 'a' && c <= 'z':
			i := 1
			for i < len(s) && (s[i] == '_' || s[i] == '$' || s[i] >= 'A' && s[i] <= 'Z' || s[i] >= 'a' && s[i] <= 'z' || s[i] >= '0' && s[i] <= '9') {
				i++
			}
			out, s = append(out, strings.ToUpper(s[:i])), s[i:]
		default:
			out, s = append(out, s[:1]), s[1:]
		}
	}
	return out
}

// relayLogical relays a logical walsender session like relay, but reads the client's messages: a simple query
// that is a physical replication command is not forwarded; the session ends with an error that names it.
func (e *Endpoint) relayLogical(client, backend net.Conn, addr string) {
	refused := make(chan string, 1)
	c2b := make(chan error, 1)
	go func() {
		for {
			cmd, err := forwardClientMessage(client, backend)
			if cmd != "" {
				refused <- cmd
				backend.Close() // the backend waits for a command: the copy below ends at a message boundary
				c2b <- nil
				return
			}
			if err != nil {
				closeWrite(backend)
				c2b <- err
				return
			}
		}
	}()
	key, haveKey, err := e.relayUntilReady(client, backend, nil)
	if haveKey {
		e.cancels.add(key, addr)
		defer e.cancels.remove(key)
	}
	if err == nil {
		_, _ = io.Copy(client, backend)
	}
	select {
	case cmd := <-refused:
		e.cfg.Logger.Warn("gateway: refused a physical replication command in a logical replication session",
			"remote", client.RemoteAddr().String(), "command", cmd)
		writeError(client, "42501", "fogo gateway: "+cmd+" is not allowed: server endpoints serve logical replication only")
	default:
	}
	client.Close()
	backend.Close()
	<-c2b
}

// maxReplicationCommand bounds a simple query in a logical replication session (a replication command is short).
const maxReplicationCommand = 1 << 20

// forwardClientMessage forwards one message of a logical replication session's client to its backend. A simple
// query is read whole (at most maxReplicationCommand) and not forwarded when it is a physical replication command,
// which is returned; any other message (password, standby status, CopyData) is streamed through as it arrives,
// so a length the client declares is never allocated.
func forwardClientMessage(client io.Reader, backend io.Writer) (refused string, err error) {
	hdr := make([]byte, 5)
	if _, err := io.ReadFull(client, hdr); err != nil {
		return "", err
	}
	n := int64(binary.BigEndian.Uint32(hdr[1:5]))
	if n < 4 {
		return "", fmt.Errorf("invalid client message length %d", n)
	}
	if hdr[0] != 'Q' {
		if _, err := backend.Write(hdr); err != nil {
			return "", err
		}
		_, err := io.CopyN(backend, client, n-4)
		return "", err
	}
	if n > maxReplicationCommand {
		return "", fmt.Errorf("a replication command of %d bytes is longer than %d", n, maxReplicationCommand)
	}
	msg := make([]byte, 1+n)
	copy(msg, hdr)
	if _, err := io.ReadFull(client, msg[5:]); err != nil {
		return "", err
	}
	if cmd := physicalCommand(strings.TrimRight(string(msg[5:]), "\x00")); cmd != "" {
		return cmd, nil
	}
	_, err = backend.Write(msg)
	return "", err
}
