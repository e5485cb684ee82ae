package gateway

import (
	"fmt"
	"net"
	"runtime"
	"sync"
	"syscall"
	"unsafe"
)

// eventLoop relays established sessions on one OS thread with epoll, in the way pgbouncer and HAProxy do: a
// session's bytes are read and written by the thread that epoll woke, without waking a goroutine per message
// (which, through Go's netpoller, costs a large share of a short query's round trip). Descriptors are duplicates
// of the net.Conns' (non-blocking, as Go made them); a side whose peer cannot take more stops being read until
// the peer drains (backpressure).
//
// Ownership: from add on, a session's duplicates belong to the loop thread. Only it registers, reads, writes,
// shuts down and closes them; other goroutines ask through the request queue (add, end) and never name a
// descriptor number, which the OS reuses once it is closed. Epoll events carry a side's id, not its descriptor,
// so an event that was already queued for a side that has ended finds nothing.
//
// Interest follows what a side wants: EPOLLIN|EPOLLRDHUP while it is read, EPOLLOUT while bytes wait for it, and
// nothing at all (the descriptor leaves the interest list) while it is paused for backpressure with nothing to
// write. EPOLLHUP and EPOLLERR are reported whatever the mask says and a hang-up stays pending (level-triggered),
// so a paused side that stayed registered would wake epoll_wait at once, again and again, until its peer drained:
// a backend that closes while its client reads slowly (an old primary ending its sessions in a failover) spun
// the loop at 100 % CPU. A paused side is registered again when its peer drains, and then its hang-up is read
// like any end of stream.
type eventLoop struct {
	epfd   int
	wakeR  int // read end of the wake-up pipe (registered with wakeID)
	wakeW  int
	mu     sync.Mutex
	queue  []loopRequest // for the loop thread, from other goroutines
	woken  bool          // a byte is in the wake-up pipe
	sides  map[uint64]*side
	nextID uint64 // loop-thread only, like sides
}

// wakeID is the epoll data of the wake-up pipe; side ids start above it.
const wakeID = 0

type loopRequest struct {
	sess *loopSession
	end  bool // end the session (else: start relaying it)
}

// side is one direction's source descriptor and what waits to be written to it.
type side struct {
	id         uint64
	fd         int
	peer       *side
	pending    []byte // bytes read from peer that fd has not accepted yet
	reading    bool   // EPOLLIN wanted (false while peer has pending bytes: backpressure)
	writing    bool   // EPOLLOUT wanted (pending not empty)
	registered bool   // fd is in the epoll interest list
	sess       *loopSession
}

// loopSession ends once, when either side ends or end() asks.
type loopSession struct {
	done  chan struct{}
	ended bool // loop-thread only
	a, b  *side
}

var (
	loopOnce sync.Once
	loop     *eventLoop
	loopErr  error
)

// sharedLoop starts the process's event loop on first use.
func sharedLoop() (*eventLoop, error) {
	loopOnce.Do(func() { loop, loopErr = newEventLoop() })
	return loop, loopErr
}

func newEventLoop() (*eventLoop, error) {
	fd, err := syscall.EpollCreate1(syscall.EPOLL_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("epoll_create1: %w", err)
	}
	var p [2]int
	if err := syscall.Pipe2(p[:], syscall.O_NONBLOCK|syscall.O_CLOEXEC); err != nil {
		syscall.Close(fd)
		return nil, fmt.Errorf("pipe2: %w", err)
	}
	ev := syscall.EpollEvent{Events: syscall.EPOLLIN}
	setEventID(&ev, wakeID)
	if err := syscall.EpollCtl(fd, syscall.EPOLL_CTL_ADD, p[0], &ev); err != nil {
		syscall.Close(fd)
		syscall.Close(p[0])
		syscall.Close(p[1])
		return nil, fmt.Errorf("epoll_ctl: %w", err)
	}
	l := &eventLoop{epfd: fd, wakeR: p[0], wakeW: p[1], sides: map[uint64]*side{}, nextID: wakeID + 1}
	go l.run()
	return l, nil
}

// setEventID and eventID keep a 64-bit id in epoll_event's data (Fd and Pad are its two halves).
func setEventID(ev *syscall.EpollEvent, id uint64) {
	ev.Fd, ev.Pad = int32(uint32(id)), int32(uint32(id>>32))
}

func eventID(ev *syscall.EpollEvent) uint64 {
	return uint64(uint32(ev.Fd)) | uint64(uint32(ev.Pad))<<32
}

func dupFD(c *net.TCPConn) (int, error) {
	rc, err := c.SyscallConn()
	if err != nil {
		return -1, err
	}
	fd := -1
	var derr error
	if err := rc.Control(func(f uintptr) { fd, derr = syscall.Dup(int(f)) }); err != nil {
		return -1, err
	}
	if derr != nil {
		return -1, derr
	}
	syscall.CloseOnExec(fd)
	return fd, nil
}

// add relays between client and backend until either ends; the returned channel closes then, and end() ends
// the session from outside (endpoint closing, a cut). end may be called any number of times, also after the
// session ended by itself.
func (l *eventLoop) add(client, backend *net.TCPConn) (done <-chan struct{}, end func(), err error) {
	cfd, err := dupFD(client)
	if err != nil {
		return nil, nil, err
	}
	bfd, err := dupFD(backend)
	if err != nil {
		syscall.Close(cfd)
		return nil, nil, err
	}
	s := &loopSession{done: make(chan struct{})}
	s.a, s.b = &side{fd: cfd, reading: true, sess: s}, &side{fd: bfd, reading: true, sess: s}
	s.a.peer, s.b.peer = s.b, s.a
	l.request(loopRequest{sess: s})
	return s.done, func() { l.request(loopRequest{sess: s, end: true}) }, nil
}

// request hands r to the loop thread and wakes it.
func (l *eventLoop) request(r loopRequest) {
	l.mu.Lock()
	l.queue = append(l.queue, r)
	wake := !l.woken
	l.woken = true
	l.mu.Unlock()
	if wake {
		_, _ = syscall.Write(l.wakeW, []byte{1}) // a full pipe (EAGAIN) is already a wake-up
	}
}

// serveRequests runs on the loop thread: start new sessions, end the ones asked for.
func (l *eventLoop) serveRequests() {
	var b [64]byte
	for {
		if n, err := syscall.Read(l.wakeR, b[:]); n <= 0 || err != nil {
			break
		}
	}
	l.mu.Lock()
	q := l.queue
	l.queue, l.woken = nil, false
	l.mu.Unlock()
	for _, r := range q {
		s := r.sess
		switch {
		case s.ended:
		case r.end:
			l.finish(s)
		case s.a.id == 0:
			l.start(s)
		}
	}
}

// start registers a new session's two sides.
func (l *eventLoop) start(s *loopSession) {
	for _, sd := range []*side{s.a, s.b} {
		sd.id = l.nextID
		l.nextID++
		l.sides[sd.id] = sd
	}
	if !l.update(s.a) || !l.update(s.b) {
		l.finish(s)
	}
}

func (l *eventLoop) run() {
	runtime.LockOSThread()
	events := make([]syscall.EpollEvent, 256)
	buf := make([]byte, 64<<10)
	for {
		n, err := syscall.EpollWait(l.epfd, events, -1)
		if err != nil {
			if err == syscall.EINTR {
				continue
			}
			return
		}
		for i := 0; i < n; i++ {
			id := eventID(&events[i])
			if id == wakeID {
				l.serveRequests()
				continue
			}
			sd := l.sides[id]
			if sd == nil || sd.sess.ended {
				continue // the session ended earlier in this batch
			}
			ev := events[i].Events
			// A hang-up or error on a side that waits to be written is found by the write.
			if sd.writing && ev&(syscall.EPOLLOUT|syscall.EPOLLHUP|syscall.EPOLLERR) != 0 {
				if !l.flush(sd) {
					l.finish(sd.sess)
					continue
				}
			}
			if sd.reading && ev&(syscall.EPOLLIN|syscall.EPOLLRDHUP|syscall.EPOLLHUP|syscall.EPOLLERR) != 0 {
				if !l.pump(sd, buf) {
					l.finish(sd.sess)
				}
			}
		}
	}
}

// rawRead and rawWrite are read(2) and write(2) on non-blocking descriptors: they never block, so they skip the
// runtime's syscall bookkeeping.
func rawRead(fd int, p []byte) (int, error) {
	n, _, e := syscall.RawSyscall(syscall.SYS_READ, uintptr(fd), uintptr(unsafe.Pointer(&p[0])), uintptr(len(p)))
	if e != 0 {
		return int(n), e
	}
	return int(n), nil
}

func rawWrite(fd int, p []byte) (int, error) {
	n, _, e := syscall.RawSyscall(syscall.SYS_WRITE, uintptr(fd), uintptr(unsafe.Pointer(&p[0])), uintptr(len(p)))
	if e != 0 {
		return int(n), e
	}
	return int(n), nil
}

// pump reads from sd and writes to its peer; false ends the session. A short read means the socket is drained
// for now (epoll is level-triggered and reports it again when more arrives), which saves the read that would
// only say EAGAIN.
func (l *eventLoop) pump(sd *side, buf []byte) bool {
	for {
		n, err := rawRead(sd.fd, buf)
		switch {
		case err == syscall.EAGAIN:
			return true
		case err == syscall.EINTR:
			continue
		case err != nil || n == 0:
			return false
		}
		p := sd.peer
		off := 0
		for off < n {
			m, err := rawWrite(p.fd, buf[off:n])
			if err == syscall.EINTR {
				continue
			}
			if err == syscall.EAGAIN {
				break
			}
			if err != nil {
				return false
			}
			off += m
		}
		if off < n {
			// The peer is full: keep the rest, wait until it drains, stop reading this side meanwhile.
			p.pending = append(p.pending[:0], buf[off:n]...)
			p.writing, sd.reading = true, false
			return l.update(p) && l.update(sd)
		}
		if n < len(buf) {
			return true
		}
	}
}

// flush writes sd's pending bytes; when drained, its peer is read again.
func (l *eventLoop) flush(sd *side) bool {
	for len(sd.pending) > 0 {
		m, err := rawWrite(sd.fd, sd.pending)
		if err == syscall.EINTR {
			continue
		}
		if err == syscall.EAGAIN {
			return true
		}
		if err != nil {
			return false
		}
		sd.pending = sd.pending[m:]
	}
	sd.writing, sd.peer.reading = false, true
	return l.update(sd) && l.update(sd.peer)
}

// update makes sd's epoll interest match what it wants; a side that wants nothing leaves the interest list, so
// that a hang-up it cannot act on yet does not wake the loop (see eventLoop).
func (l *eventLoop) update(sd *side) bool {
	var events uint32
	if sd.reading {
		events |= syscall.EPOLLIN | syscall.EPOLLRDHUP
	}
	if sd.writing {
		events |= syscall.EPOLLOUT
	}
	ev := syscall.EpollEvent{Events: events}
	setEventID(&ev, sd.id)
	var err error
	switch {
	case events == 0 && sd.registered:
		err = syscall.EpollCtl(l.epfd, syscall.EPOLL_CTL_DEL, sd.fd, nil)
		sd.registered = false
	case events == 0:
	case sd.registered:
		err = syscall.EpollCtl(l.epfd, syscall.EPOLL_CTL_MOD, sd.fd, &ev)
	default:
		err = syscall.EpollCtl(l.epfd, syscall.EPOLL_CTL_ADD, sd.fd, &ev)
		sd.registered = err == nil
	}
	return err == nil
}

// finish ends a session once, on the loop thread: unregister, shut down and close both duplicates.
func (l *eventLoop) finish(s *loopSession) {
	if s.ended {
		return
	}
	s.ended = true
	for _, sd := range []*side{s.a, s.b} {
		delete(l.sides, sd.id)
		if sd.registered {
			_ = syscall.EpollCtl(l.epfd, syscall.EPOLL_CTL_DEL, sd.fd, nil)
			sd.registered = false
		}
		_ = syscall.Shutdown(sd.fd, syscall.SHUT_RDWR)
		_ = syscall.Close(sd.fd)
		sd.fd = -1
	}
	close(s.done)
}
