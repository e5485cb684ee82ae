package gateway

// Warm connections: a session to an instance on another host costs several round trips before its startup
// message can even be sent (TCP, PostgreSQL's SSLRequest, the TLS handshake). During a failover's hold window
// the sessions waiting for the new primary would pay them after the release, inside the clients' write gap. So a
// listener about to hold asks for a few connections to the geo-secondaries ahead (Prewarm): the handshakes run
// while the old primary shuts down, and the released sessions each take one ready connection.
//
// A warm connection has not sent a startup message: PostgreSQL waits for it up to authentication_timeout
// (60 s by default) and, when it is closed before any byte, logs nothing. Warm connections are dropped after
// warmTTL, well within that.

import (
	"net"
	"sync"
	"time"
)

// warmTTL is how long a warm connection is kept unused.
const warmTTL = 20 * time.Second

// maxWarmPerAddr bounds the warm connections to one backend.
const maxWarmPerAddr = 32

type warmConn struct {
	conn net.Conn
	at   time.Time
}

// warmPool holds ready connections per backend address.
type warmPool struct {
	mu    sync.Mutex
	conns map[string][]warmConn
}

// take returns a fresh warm connection to addr, if one is ready.
func (p *warmPool) take(addr string) net.Conn {
	p.mu.Lock()
	defer p.mu.Unlock()
	for list := p.conns[addr]; len(list) > 0; list = p.conns[addr] {
		w := list[len(list)-1]
		p.conns[addr] = list[:len(list)-1]
		if time.Since(w.at) < warmTTL {
			return w.conn
		}
		w.conn.Close()
	}
	return nil
}

// put keeps conn as a warm connection to addr; it reports false (and the caller closes conn) when addr has enough.
func (p *warmPool) put(addr string, conn net.Conn) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.conns == nil {
		p.conns = map[string][]warmConn{}
	}
	if len(p.conns[addr]) >= maxWarmPerAddr {
		return false
	}
	p.conns[addr] = append(p.conns[addr], warmConn{conn: conn, at: time.Now()})
	return true
}

// count is how many warm connections to addr are ready and fresh.
func (p *warmPool) count(addr string) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	n := 0
	for _, w := range p.conns[addr] {
		if time.Since(w.at) < warmTTL {
			n++
		}
	}
	return n
}

// expire closes the warm connections older than warmTTL.
func (p *warmPool) expire() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for addr, list := range p.conns {
		kept := list[:0]
		for _, w := range list {
			if time.Since(w.at) < warmTTL {
				kept = append(kept, w)
			} else {
				w.conn.Close()
			}
		}
		if len(kept) == 0 {
			delete(p.conns, addr)
		} else {
			p.conns[addr] = kept
		}
	}
}

// closeAll closes every warm connection.
func (p *warmPool) closeAll() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, list := range p.conns {
		for _, w := range list {
			w.conn.Close()
		}
	}
	p.conns = nil
}

// Prewarm opens, in the background, connections to addr until n are ready (at most maxWarmPerAddr): TCP and,
// where BackendTLS asks for it, TLS. Only backends reached over TLS (instances on other hosts) are prewarmed;
// for the others a new connection is cheap and nothing is done. Each is used by the next session routed to addr
// within warmTTL, then dropped.
func (m *Manager) Prewarm(addr string, n int) {
	if m.cfg.BackendTLS == nil || m.cfg.BackendTLS(addr) == nil {
		return
	}
	need := min(n, maxWarmPerAddr) - m.warm.count(addr)
	for range need {
		go func() {
			conn, err := dialBackend(m.cfg, addr)
			if err != nil {
				m.cfg.Logger.Debug("prewarm a connection", "backend", addr, "err", err)
				return
			}
			if !m.warm.put(addr, conn) {
				conn.Close()
				return
			}
			time.AfterFunc(warmTTL, m.warm.expire)
		}()
	}
}

// Warm is how many warm connections to addr are ready.
func (m *Manager) Warm(addr string) int { return m.warm.count(addr) }
