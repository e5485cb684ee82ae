package netns

import (
	"errors"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
)

// The delay pump: latency for kernels without sch_netem. While a host has latency, its bridge port is not its own
// veth but a second veth pair, fg<id>l<i> (in the bridge) and fg<id>j<i> (root namespace, no master); the test
// process copies frames between fg<id>v<i> (the host's root end, taken out of the bridge) and fg<id>j<i> with raw
// packet sockets, holding those leaving the host for the delay. Frames keep their GSO and checksum state
// (PACKET_VNET_HDR), so nothing about the host's offloads needs changing. Both root-side ends answer no ARP and
// have IPv6 off, so the root namespace's stack never takes part.

// vnetHdrLen is sizeof(struct virtio_net_hdr), prefixed to every frame read or written with PACKET_VNET_HDR.
const vnetHdrLen = 10

// pumpQueueBytes bounds the frames held for delay (and the queue holds at most 65536 frames); past either,
// frames are dropped, as a full queue would.
const pumpQueueBytes = 32 << 20

// pump copies frames both ways between a host's veth and its bridge-side pair, delaying those leaving the host.
type pump struct {
	delay    atomic.Int64 // nanoseconds
	stop     atomic.Bool
	hostFD   int // on fg<id>v<i>: frames from the host are read here, frames to it written
	bridgeFD int // on fg<id>j<i>: frames from the bridge are read here, frames to it written
	queue    chan delayed
	queued   atomic.Int64
	wg       sync.WaitGroup
}

type delayed struct {
	due   time.Time
	frame []byte
}

// packetSocket opens a raw packet socket bound to ifname, with virtio-net headers, ignoring its own sends, and
// with a receive timeout so readers notice stop.
func packetSocket(ifname string) (int, error) {
	ifi, err := net.InterfaceByName(ifname)
	if err != nil {
		return -1, fmt.Errorf("packet socket on %s: %w", ifname, err)
	}
	proto := int(htons(unix.ETH_P_ALL))
	fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, proto)
	if err != nil {
		return -1, fmt.Errorf("packet socket on %s: %w", ifname, err)
	}
	opts := []struct {
		name, value int
	}{{unix.PACKET_VNET_HDR, 1}, {unix.PACKET_IGNORE_OUTGOING, 1}}
	for _, o := range opts {
		if err := unix.SetsockoptInt(fd, unix.SOL_PACKET, o.name, o.value); err != nil {
			unix.Close(fd)
			return -1, fmt.Errorf("packet socket on %s: option %d: %w", ifname, o.name, err)
		}
	}
	tv := unix.Timeval{Usec: 100_000}
	if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
		unix.Close(fd)
		return -1, fmt.Errorf("packet socket on %s: receive timeout: %w", ifname, err)
	}
	if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUF, 4<<20); err != nil {
		unix.Close(fd)
		return -1, fmt.Errorf("packet socket on %s: receive buffer: %w", ifname, err)
	}
	if err := unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: htons(unix.ETH_P_ALL), Ifindex: ifi.Index}); err != nil {
		unix.Close(fd)
		return -1, fmt.Errorf("packet socket on %s: bind: %w", ifname, err)
	}
	return fd, nil
}

// idle pauses a reader briefly after an error other than the receive timeout (a cut link, say), so that it does not
// spin.
func idle(err error) {
	if err != nil && !errors.Is(err, unix.EAGAIN) && !errors.Is(err, unix.EINTR) {
		time.Sleep(10 * time.Millisecond)
	}
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }

// startPump opens both sockets and starts copying.
func startPump(hostIf, bridgeIf string, d time.Duration) (*pump, error) {
	hostFD, err := packetSocket(hostIf)
	if err != nil {
		return nil, err
	}
	bridgeFD, err := packetSocket(bridgeIf)
	if err != nil {
		unix.Close(hostFD)
		return nil, err
	}
	p := &pump{hostFD: hostFD, bridgeFD: bridgeFD, queue: make(chan delayed, 65536)}
	p.delay.Store(int64(d))
	p.wg.Add(3)
	go p.fromHost()
	go p.sendDelayed()
	go p.fromBridge()
	return p, nil
}

// fromHost reads frames leaving the host and queues them for delay.
func (p *pump) fromHost() {
	defer p.wg.Done()
	defer close(p.queue)
	buf := make([]byte, vnetHdrLen+65536)
	for !p.stop.Load() {
		n, err := unix.Read(p.hostFD, buf)
		if err != nil || n <= vnetHdrLen {
			idle(err) // timeout (stop is checked), link down, or a runt
			continue
		}
		if p.queued.Load()+int64(n) > pumpQueueBytes {
			continue // queue full: dropped
		}
		frame := append([]byte(nil), buf[:n]...)
		select {
		case p.queue <- delayed{due: time.Now().Add(time.Duration(p.delay.Load())), frame: frame}:
			p.queued.Add(int64(n))
		default: // queue full (many small frames): dropped
		}
	}
}

// sendDelayed writes queued frames into the bridge when due, in order (the delay is the same for all).
func (p *pump) sendDelayed() {
	defer p.wg.Done()
	for f := range p.queue {
		if wait := time.Until(f.due); wait > 0 {
			time.Sleep(wait)
		}
		p.queued.Add(-int64(len(f.frame)))
		if !p.stop.Load() {
			_, _ = unix.Write(p.bridgeFD, f.frame) // a lost frame is what a network does
		}
	}
}

// fromBridge copies frames for the host at once.
func (p *pump) fromBridge() {
	defer p.wg.Done()
	buf := make([]byte, vnetHdrLen+65536)
	for !p.stop.Load() {
		n, err := unix.Read(p.bridgeFD, buf)
		if err != nil || n <= vnetHdrLen {
			idle(err)
			continue
		}
		_, _ = unix.Write(p.hostFD, buf[:n])
	}
}

// close stops copying (within the receive timeout) and closes the sockets.
func (p *pump) close() error {
	p.stop.Store(true)
	done := make(chan struct{})
	go func() { p.wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		return errors.New("delay pump did not stop within 10s")
	}
	unix.Close(p.hostFD)
	unix.Close(p.bridgeFD)
	return nil
}
