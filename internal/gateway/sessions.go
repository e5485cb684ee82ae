package gateway

import (
	"net"
	"sync"
)

// SessionInfo describes a routed session, for Endpoint.Cut.
type SessionInfo struct {
	// Database is what the session was routed by: the startup packet's database, else its user.
	Database string
	User     string
	// Backend is the "host:port" the resolver chose and the session is relayed to.
	Backend string
}

// session is one client connection the endpoint can end (Close, Cut), whatever phase it is in.
type session struct {
	mu     sync.Mutex
	conns  []net.Conn // the client (raw, then TLS-wrapped) and, once routed, the backend
	info   SessionInfo
	routed bool
	// confirming: an early session whose route is not confirmed yet; Cut leaves it to the confirmation.
	confirming bool
	end        func() // set while the event loop relays the session: ends it there
	ended      bool
}

// add makes c part of the session; a session already ended closes it at once.
func (s *session) add(c net.Conn) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.conns = append(s.conns, c)
	if s.ended {
		c.Close()
	}
}

// route records where the session is relayed (and its backend connection); early, when set, is the gate of an
// early session: until it confirms the route, Cut leaves the session alone (a refused confirmation ends it with
// the reason, where a cut would only close it).
func (s *session) route(info SessionInfo, backend net.Conn, early *earlyGate) {
	s.add(backend)
	s.mu.Lock()
	s.info, s.routed, s.confirming = info, true, early != nil
	s.mu.Unlock()
	if early != nil {
		early.onConfirm = func() {
			s.mu.Lock()
			s.confirming = false
			s.mu.Unlock()
		}
	}
}

// onEnd sets how to end the session in the event loop; a session already ended is ended there at once.
func (s *session) onEnd(end func()) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.end = end
	if s.ended {
		end()
	}
}

// stop ends the session: the event loop's copy if any, then the connections (which ends the goroutine relays
// and a session still in its startup phase).
func (s *session) stop() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.ended = true
	if s.end != nil {
		s.end()
	}
	for _, c := range s.conns {
		c.Close()
	}
}

func (e *Endpoint) track(c net.Conn) *session {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.closed {
		return nil
	}
	s := &session{conns: []net.Conn{c}}
	e.sessions[s] = struct{}{}
	return s
}

func (e *Endpoint) untrack(s *session) {
	e.mu.Lock()
	delete(e.sessions, s)
	e.mu.Unlock()
}

// Cut ends every routed session for which cut returns true and returns how many it ended. cut is called once
// per distinct (database, user, backend), outside the endpoint's lock, so it may read the store. The client of
// a cut session sees its connection close: nothing can be put safely into the middle of the backend's stream.
func (e *Endpoint) Cut(cut func(SessionInfo) bool) int {
	e.mu.Lock()
	var routed []*session
	for s := range e.sessions {
		routed = append(routed, s)
	}
	e.mu.Unlock()
	verdicts := map[SessionInfo]bool{}
	n := 0
	for _, s := range routed {
		s.mu.Lock()
		info, ok := s.info, s.routed && !s.ended && !s.confirming
		s.mu.Unlock()
		if !ok {
			continue
		}
		v, seen := verdicts[info]
		if !seen {
			v = cut(info)
			verdicts[info] = v
		}
		if v {
			s.stop()
			n++
		}
	}
	if n > 0 {
		e.cut.Add(int64(n))
		e.cfg.Logger.Info("gateway: cut sessions", "endpoint", e.Addr(), "sessions", n)
	}
	return n
}
