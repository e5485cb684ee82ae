package gateway

import (
	"errors"
	"io"
	"net"
	"os"
	"sync"
	"time"
)

// relay copies bytes both ways until either side ends. The backend's messages are framed until the first
// ReadyForQuery to record its BackendKeyData for cancel requests. After that, a plain TCP session is handed to
// the event loop (eventloop_linux.go); a TLS session keeps going through the netpoller.
func (e *Endpoint) relay(sess *session, client, backend net.Conn, addr string, early *earlyGate) {
	c2b := make(chan error, 1)
	go func() {
		_, err := io.Copy(backend, client)
		c2b <- err
	}()
	key, haveKey, err := e.relayUntilReady(client, backend, early)
	if haveKey {
		e.cancels.add(key, addr)
		defer e.cancels.remove(key)
	}
	if err != nil {
		client.Close()
		backend.Close()
		<-c2b
		return
	}
	ct, okc := client.(*net.TCPConn)
	bt, okb := backend.(*net.TCPConn)
	if okc && okb {
		// Stop the startup copier at a read boundary; whatever it read has been written to the backend.
		_ = client.SetReadDeadline(time.Now())
		if err := <-c2b; !errors.Is(err, os.ErrDeadlineExceeded) {
			client.Close()
			backend.Close()
			return
		}
		_ = client.SetReadDeadline(time.Time{})
		if l, err := sharedLoop(); err == nil {
			if done, end, err := l.add(ct, bt); err == nil {
				sess.onEnd(end)
				<-done
				client.Close()
				backend.Close()
				return
			}
		}
		go func() {
			_, err := io.Copy(backend, client)
			c2b <- err
		}()
	}
	_, _ = io.Copy(client, backend)
	client.Close()
	closeWrite(backend)
	<-c2b
	backend.Close()
}

func closeWrite(c net.Conn) {
	if tc, ok := c.(*net.TCPConn); ok {
		_ = tc.CloseWrite()
		return
	}
	c.Close()
}

// relayUntilReady forwards whole backend messages until ReadyForQuery (or an error message ends the session),
// returning the BackendKeyData it saw. An early session's answers wait for its route (see forwardStartup).
func (e *Endpoint) relayUntilReady(client, backend net.Conn, early *earlyGate) ([8]byte, bool, error) {
	var key [8]byte
	var have bool
	for {
		msg, err := readMessage(backend)
		if err != nil {
			return key, have, err
		}
		if msg[0] == 'K' && len(msg) == 13 {
			copy(key[:], msg[5:13])
			have = true
		}
		if err := e.forwardStartup(client, msg, early); err != nil {
			return key, have, err
		}
		if msg[0] == 'Z' || msg[0] == 'E' {
			return key, have, nil
		}
	}
}

// cancelRegistry maps a session's (pid, secret) to the backend that issued it; shared by all endpoints.
type cancelRegistry struct {
	mu   sync.Mutex
	keys map[[8]byte]string
}

func (r *cancelRegistry) add(key [8]byte, addr string) {
	r.mu.Lock()
	r.keys[key] = addr
	r.mu.Unlock()
}

func (r *cancelRegistry) remove(key [8]byte) {
	r.mu.Lock()
	delete(r.keys, key)
	r.mu.Unlock()
}

// forward sends a 16-byte CancelRequest to the backend that owns its key; unknown keys are ignored, as
// PostgreSQL ignores them.
func (r *cancelRegistry) forward(msg []byte, timeout time.Duration) {
	var key [8]byte
	copy(key[:], msg[8:16])
	r.mu.Lock()
	addr, ok := r.keys[key]
	r.mu.Unlock()
	if !ok {
		return
	}
	c, err := net.DialTimeout("tcp", addr, timeout)
	if err != nil {
		return
	}
	defer c.Close()
	_, _ = c.Write(msg)
	// PostgreSQL closes the connection after reading the request; wait for that so the cancel is delivered.
	_ = c.SetReadDeadline(time.Now().Add(timeout))
	_, _ = io.Copy(io.Discard, c)
}
