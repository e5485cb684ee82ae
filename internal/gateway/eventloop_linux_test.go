package gateway

import (
	"bytes"
	"context"
	"io"
	"net"
	"syscall"
	"testing"
	"time"
	"unsafe"
)

// tcpPair returns both ends of a loopback TCP connection: near is the accepted end (the gateway's descriptor),
// far the dialled one. nearRcv and farRcv, when not 0, set SO_RCVBUF before the handshake (so the window is
// sized for it); nearSnd sets near's SO_SNDBUF (which also stops its autotuning).
func tcpPair(t *testing.T, nearRcv, nearSnd, farRcv int) (near, far *net.TCPConn) {
	t.Helper()
	setRcv := func(n int) func(string, string, syscall.RawConn) error {
		return func(_, _ string, rc syscall.RawConn) error {
			if n == 0 {
				return nil
			}
			var serr error
			err := rc.Control(func(fd uintptr) { serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, n) })
			if err != nil {
				return err
			}
			return serr
		}
	}
	lc := net.ListenConfig{Control: setRcv(nearRcv)}
	ln, err := lc.Listen(context.Background(), "tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	d := net.Dialer{Control: setRcv(farRcv), Timeout: 5 * time.Second}
	fc, err := d.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	_ = ln.(*net.TCPListener).SetDeadline(time.Now().Add(5 * time.Second))
	nc, err := ln.Accept()
	if err != nil {
		fc.Close()
		t.Fatal(err)
	}
	near, far = nc.(*net.TCPConn), fc.(*net.TCPConn)
	if nearSnd != 0 {
		if err := near.SetWriteBuffer(nearSnd); err != nil {
			t.Fatal(err)
		}
	}
	t.Cleanup(func() { near.Close(); far.Close() })
	return near, far
}

// cpuTime is the process's user + system CPU time.
func cpuTime(t *testing.T) time.Duration {
	t.Helper()
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		t.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// tcpState reads the kernel's TCP state of c (TCP_INFO).
func tcpState(t *testing.T, c *net.TCPConn) uint8 {
	t.Helper()
	rc, err := c.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var info syscall.TCPInfo
	var errno syscall.Errno
	_ = rc.Control(func(fd uintptr) {
		l := uint32(unsafe.Sizeof(info))
		_, _, errno = syscall.Syscall6(syscall.SYS_GETSOCKOPT, fd, syscall.IPPROTO_TCP, syscall.TCP_INFO,
			uintptr(unsafe.Pointer(&info)), uintptr(unsafe.Pointer(&l)), 0)
	})
	if errno != 0 {
		t.Fatal(errno)
	}
	return info.State
}

const tcpFinWait2 = 5 // include/net/tcp_states.h

// TestEventLoopNoSpinWhilePaused: one side writes more than its slow peer takes, then ends (FIN or RST) while
// the relay holds it back for backpressure. The hang-up must not wake epoll_wait again and again: the process
// stays near idle for a second of that state, and the slow peer still gets every byte once it reads (FIN).
func TestEventLoopNoSpinWhilePaused(t *testing.T) {
	l, err := sharedLoop()
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name          string
		reset         bool // the writer ends with RST (SO_LINGER 0) instead of FIN
		writerIsFirst bool // the writer is the session's first side (the client) instead of the backend
	}{
		{name: "backend closes (FIN)"},
		{name: "backend resets (RST)", reset: true},
		{name: "client closes (FIN)", writerIsFirst: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			// The writer's relay end takes a lot (large receive buffer), the reader's end takes little: the relay
			// fills the reader's path, keeps the rest pending and stops reading the writer.
			wNear, writer := tcpPair(t, 1<<20, 0, 0)
			rNear, reader := tcpPair(t, 0, 4096, 4096)
			a, b := rNear, wNear
			if tc.writerIsFirst {
				a, b = wNear, rNear
			}
			done, _, err := l.add(a, b)
			if err != nil {
				t.Fatal(err)
			}
			payload := bytes.Repeat([]byte("fogo-backpressure-"), 48<<10/18) // ~48 KiB: more than the reader's path
			if _, err := writer.Write(payload); err != nil {
				t.Fatal(err)
			}
			if tc.reset {
				_ = writer.SetLinger(0)
				writer.Close()
			} else {
				_ = writer.CloseWrite()
				// FIN_WAIT2: the relay's kernel acknowledged the FIN, so every byte and the hang-up are there.
				deadline := time.Now().Add(5 * time.Second)
				for tcpState(t, writer) != tcpFinWait2 {
					if time.Now().After(deadline) {
						t.Fatal("the relay end never acknowledged the writer's FIN")
					}
					time.Sleep(time.Millisecond)
				}
			}
			before := cpuTime(t)
			start := time.Now()
			time.Sleep(time.Second) // the measured interval: nothing happens in it but the paused session
			used, wall := cpuTime(t)-before, time.Since(start)
			t.Logf("CPU %v in %v with a paused session whose writer hung up", used, wall)
			if float64(used) > 0.3*float64(wall) {
				t.Errorf("the event loop spins: %v of CPU in %v while a paused session's peer hung up", used, wall)
			}
			// The slow reader drains: it gets everything (FIN) and then the end of the session.
			_ = reader.SetReadDeadline(time.Now().Add(10 * time.Second))
			got, err := io.ReadAll(reader)
			if !tc.reset && (err != nil || !bytes.Equal(got, payload)) {
				t.Errorf("reader got %d of %d bytes, err %v", len(got), len(payload), err)
			}
			select {
			case <-done:
			case <-time.After(10 * time.Second):
				t.Fatal("the session did not end after the reader drained")
			}
		})
	}
}

// TestEventLoopEndAfterFinish: end() of a session that already finished must not touch the descriptor numbers
// it used, which the OS hands out again (here to duplicates of an unrelated live connection).
func TestEventLoopEndAfterFinish(t *testing.T) {
	l, err := sharedLoop()
	if err != nil {
		t.Fatal(err)
	}
	cNear, cFar := tcpPair(t, 0, 0, 0)
	bNear, bFar := tcpPair(t, 0, 0, 0)
	done, end, err := l.add(cNear, bNear)
	if err != nil {
		t.Fatal(err)
	}
	cNear.Close()
	bNear.Close()
	bFar.Close() // the backend ends: the loop finishes the session and closes its duplicates
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("session did not finish")
	}
	cFar.Close()

	// An unrelated live connection takes the lowest free descriptor numbers, which include the two just closed.
	live, peer := tcpPair(t, 0, 0, 0)
	rc, err := live.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var dups []int
	_ = rc.Control(func(fd uintptr) {
		for i := 0; i < 16; i++ {
			if d, err := syscall.Dup(int(fd)); err == nil {
				dups = append(dups, d)
			}
		}
	})
	defer func() {
		for _, d := range dups {
			syscall.Close(d)
		}
	}()

	end() // e.g. the endpoint closing after the session ended by itself

	// end() of a live session ends it. The loop serves requests in order, so once this one is done the stale
	// end() above has been served too.
	c2Near, c2Far := tcpPair(t, 0, 0, 0)
	b2Near, b2Far := tcpPair(t, 0, 0, 0)
	done2, end2, err := l.add(c2Near, b2Near)
	if err != nil {
		t.Fatal(err)
	}
	end2()
	select {
	case <-done2:
	case <-time.After(10 * time.Second):
		t.Fatal("end() did not end a live session")
	}
	c2Near.Close()
	b2Near.Close()
	for _, far := range []*net.TCPConn{c2Far, b2Far} {
		_ = far.SetReadDeadline(time.Now().Add(5 * time.Second))
		if n, err := far.Read(make([]byte, 1)); n != 0 || err == nil {
			t.Fatalf("after end() a far end reads %d bytes, %v; want the end of the stream", n, err)
		}
	}

	// The live connection still works both ways.
	_ = live.SetDeadline(time.Now().Add(5 * time.Second))
	_ = peer.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := live.Write([]byte("ping")); err != nil {
		t.Fatalf("live connection broken by a stale end(): write: %v", err)
	}
	buf := make([]byte, 4)
	if _, err := io.ReadFull(peer, buf); err != nil {
		t.Fatalf("live connection broken by a stale end(): peer read: %v", err)
	}
	if _, err := peer.Write([]byte("pong")); err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(live, buf); err != nil || string(buf) != "pong" {
		t.Fatalf("live connection broken by a stale end(): read %q %v", buf, err)
	}
}
