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
type eventLoop struct {
	epfd int
	mu   sync.Mutex
	fds  map[int]*side
}

// side is one direction's source descriptor and what waits to be written to it.
type side struct {
	fd      int
	peer    *side
	pending []byte // bytes read from peer that fd has not accepted yet
	reading bool   // EPOLLIN wanted (false while peer has pending bytes: backpressure)
	writing bool   // EPOLLOUT wanted (pending not empty)
	sess    *loopSession
}

// loopSession ends once, when either side ends.
type loopSession struct {
	once sync.Once
	done chan struct{}
	a, b *side
}

var (
	loopOnce sync.Once
	loop     *eventLoop
	loopErr  error
)

// sharedLoop starts the process's event loop on first use.
func sharedLoop() (*eventLoop, error) {
	loopOnce.Do(func() {
		fd, err := syscall.EpollCreate1(syscall.EPOLL_CLOEXEC)
		if err != nil {
			loopErr = fmt.Errorf("epoll_create1: %w", err)
			return
		}
		loop = &eventLoop{epfd: fd, fds: map[int]*side{}}
		go loop.run()
	})
	return loop, loopErr
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
// the session from outside (endpoint closing).
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
	l.mu.Lock()
	l.fds[cfd], l.fds[bfd] = s.a, s.b
	l.mu.Unlock()
	for _, sd := range []*side{s.a, s.b} {
		ev := syscall.EpollEvent{Events: syscall.EPOLLIN | syscall.EPOLLRDHUP, Fd: int32(sd.fd)}
		if err := syscall.EpollCtl(l.epfd, syscall.EPOLL_CTL_ADD, sd.fd, &ev); err != nil {
			l.finish(s)
			return nil, nil, fmt.Errorf("epoll_ctl: %w", err)
		}
	}
	end = func() {
		_ = syscall.Shutdown(cfd, syscall.SHUT_RDWR)
		_ = syscall.Shutdown(bfd, syscall.SHUT_RDWR)
	}
	return s.done, end, nil
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
			l.mu.Lock()
			sd := l.fds[int(events[i].Fd)]
			l.mu.Unlock()
			if sd == nil {
				continue
			}
			ev := events[i].Events
			if ev&syscall.EPOLLOUT != 0 && sd.writing {
				if !l.flush(sd) {
					l.finish(sd.sess)
					continue
				}
			}
			if ev&(syscall.EPOLLIN|syscall.EPOLLRDHUP|syscall.EPOLLHUP|syscall.EPOLLERR) != 0 && sd.reading {
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

func (l *eventLoop) update(sd *side) bool {
	var events uint32 = syscall.EPOLLRDHUP
	if sd.reading {
		events |= syscall.EPOLLIN
	}
	if sd.writing {
		events |= syscall.EPOLLOUT
	}
	ev := syscall.EpollEvent{Events: events, Fd: int32(sd.fd)}
	return syscall.EpollCtl(l.epfd, syscall.EPOLL_CTL_MOD, sd.fd, &ev) == nil
}

// finish ends a session once: unregister and close both duplicates.
func (l *eventLoop) finish(s *loopSession) {
	s.once.Do(func() {
		l.mu.Lock()
		delete(l.fds, s.a.fd)
		delete(l.fds, s.b.fd)
		l.mu.Unlock()
		for _, sd := range []*side{s.a, s.b} {
			_ = syscall.EpollCtl(l.epfd, syscall.EPOLL_CTL_DEL, sd.fd, nil)
			_ = syscall.Shutdown(sd.fd, syscall.SHUT_RDWR)
			_ = syscall.Close(sd.fd)
		}
		close(s.done)
	})
}
