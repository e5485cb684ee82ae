package netns

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// ErrNoNetem is returned (wrapped) by SetLatency when the kernel has no netem queueing discipline (sch_netem).
var ErrNoNetem = errors.New("kernel has no netem qdisc (CONFIG_NET_SCH_NETEM)")

// Command returns a command that runs name with args inside the host's network namespace (through
// nsenter --net=<Path>; the command is exec'd, so its pid is the program's). It runs in its own process group and
// is tracked: the test's cleanup kills its group with SIGKILL, whatever happened to the test. Start, Wait and
// friends are the caller's, as with exec.CommandContext; ctx's end kills the group too. There is deliberately no
// Pdeathsig (Go may end the forking thread, which would kill the child at a random moment): if the test binary
// itself dies, the next Sweep kills whatever is left in the namespace.
func (h *Host) Command(ctx context.Context, name string, args ...string) *exec.Cmd {
	full := append([]string{"--net=" + h.Path(), "--", name}, args...)
	cmd := exec.CommandContext(ctx, "nsenter", full...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	h.mu.Lock()
	h.procs = append(h.procs, cmd)
	h.mu.Unlock()
	return cmd
}

// Kill9 sends SIGKILL to the process group of a started command from Command (the process and anything it
// started in its group).
func (h *Host) Kill9(cmd *exec.Cmd) error {
	if cmd.Process == nil {
		return fmt.Errorf("kill -9 in %s: command %q not started", h.name, cmd.Path)
	}
	if err := syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL); err != nil && !errors.Is(err, syscall.ESRCH) {
		return fmt.Errorf("kill -9 process group %d in %s: %w", cmd.Process.Pid, h.name, err)
	}
	return nil
}

// PIDs returns every process whose network namespace is the host's (found by comparing /proc/<pid>/ns/net with
// the namespace's bind mount), tracked or not.
func (h *Host) PIDs() ([]int, error) {
	var want unix.Stat_t
	if err := unix.Stat(h.Path(), &want); err != nil {
		return nil, fmt.Errorf("stat namespace %s: %w", h.name, err)
	}
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return nil, fmt.Errorf("list /proc: %w", err)
	}
	var pids []int
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		var st unix.Stat_t
		if unix.Stat("/proc/"+e.Name()+"/ns/net", &st) != nil {
			continue // gone, or a zombie
		}
		if st.Dev == want.Dev && st.Ino == want.Ino {
			pids = append(pids, pid)
		}
	}
	return pids, nil
}

// Freeze stops (SIGSTOP) every process in the host: it keeps its sockets, and the kernel still completes TCP
// handshakes on its listening sockets, but nothing is read or answered until Thaw. Like a host stalled by a
// long GC or swap storm rather than a crashed one. SIGSTOP is delivered asynchronously, so Freeze waits (bounded)
// until every thread of every such process is stopped: once it returns, nothing more is answered.
func (h *Host) Freeze() error {
	if err := h.signalAll(syscall.SIGSTOP); err != nil {
		return err
	}
	var running []string
	if !waitUntil(5*time.Second, 5*time.Millisecond, 1000, func() bool {
		running = running[:0]
		pids, err := h.PIDs()
		if err != nil {
			running = append(running, err.Error())
			return false
		}
		for _, pid := range pids {
			if !stopped(pid) {
				running = append(running, strconv.Itoa(pid))
			}
		}
		return len(running) == 0
	}) {
		return fmt.Errorf("freeze %s: not stopped within 5s: %s", h.name, strings.Join(running, ", "))
	}
	return nil
}

// stopped reports whether every thread of pid is stopped (state T or t), or pid is gone.
func stopped(pid int) bool {
	dir := "/proc/" + strconv.Itoa(pid) + "/task"
	tasks, err := os.ReadDir(dir)
	if err != nil {
		return true // gone
	}
	for _, task := range tasks {
		raw, err := os.ReadFile(dir + "/" + task.Name() + "/stat")
		if err != nil {
			continue // thread gone
		}
		// pid (comm) state ...: comm may hold spaces and parentheses, so the state follows the last ')'.
		i := strings.LastIndexByte(string(raw), ')')
		if i < 0 || i+2 >= len(raw) {
			return false
		}
		if st := raw[i+2]; st != 'T' && st != 't' && st != 'Z' && st != 'X' {
			return false
		}
	}
	return true
}

// Thaw continues (SIGCONT) every process in the host.
func (h *Host) Thaw() error { return h.signalAll(syscall.SIGCONT) }

// signalAll sends sig to every process in the namespace.
func (h *Host) signalAll(sig syscall.Signal) error {
	pids, err := h.PIDs()
	if err != nil {
		return err
	}
	var errs []error
	for _, pid := range pids {
		if err := syscall.Kill(pid, sig); err != nil && !errors.Is(err, syscall.ESRCH) {
			errs = append(errs, fmt.Errorf("%s to pid %d in %s: %w", sig, pid, h.name, err))
		}
	}
	return errors.Join(errs...)
}

// Cut takes the host off the network by setting its bridge port (the root end of its veth pair) down: the
// carrier drops on both ends, so every frame to and from the host is lost, in both directions, while its
// processes keep running and keep their sockets. Connections are not reset: peers see silence (timeouts), as
// with a pulled cable. The host's own eth0 shows NO-CARRIER, which a process in it could notice; a netem
// "loss 100%" would hide that but needs sch_netem, which not every kernel has (this harness's CI kernel lacks it).
func (h *Host) Cut() error {
	if err := ip("link", "set", h.veth, "down"); err != nil {
		return fmt.Errorf("cut %s: %w", h.name, err)
	}
	return nil
}

// Heal undoes Cut. The bridge has no STP, so the port forwards again at once; ARP entries peers dropped are
// learnt again on the next packet.
func (h *Host) Heal() error {
	if err := ip("link", "set", h.veth, "up"); err != nil {
		return fmt.Errorf("heal %s: %w", h.name, err)
	}
	return nil
}

// SetLatency delays every packet leaving host h by d; packets arriving at h are not delayed, so a round trip
// between h and another host takes d longer, and 2d if both have it. d = 0 removes the delay.
//
// With sch_netem in the kernel it is tc netem on the host's own eth0, inside its namespace. Without it (some
// kernels, this project's CI VM's among them, build no netem), the host's traffic goes through a delay pump in the
// test process (see pump.go): same semantics, but the copying costs CPU in the test process, frames beyond 32 MiB
// in flight are dropped, and a stalled test process stalls the host's traffic. Either way, only the delay: no
// jitter, no loss, no reordering.
func SetLatency(h *Host, d time.Duration) error {
	return setLatency(h, d, false)
}

// setLatency is SetLatency; forcePump skips netem (tests use it to cover the pump on kernels with netem).
func setLatency(h *Host, d time.Duration, forcePump bool) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.pump == nil && !forcePump {
		err := netemLatency(h, d)
		if err == nil || !errors.Is(err, ErrNoNetem) {
			return err
		}
	}
	if d <= 0 {
		if h.pump == nil {
			return nil
		}
		return h.unpump()
	}
	if h.pump != nil {
		h.pump.delay.Store(int64(d))
		return nil
	}
	return h.startPump(d)
}

// netemLatency sets (d > 0) or removes a netem delay on the host's eth0; without netem (or tc) it fails with
// ErrNoNetem.
func netemLatency(h *Host, d time.Duration) error {
	if _, err := exec.LookPath("tc"); err != nil {
		return fmt.Errorf("latency on %s: tc not found: %w", h.name, ErrNoNetem)
	}
	if d <= 0 {
		_, err := run("tc", "-n", h.name, "qdisc", "del", "dev", "eth0", "root")
		if err != nil && !strings.Contains(err.Error(), "Cannot delete qdisc with handle of zero") &&
			!strings.Contains(err.Error(), "No such file or directory") {
			return fmt.Errorf("remove latency from %s: %w", h.name, err)
		}
		return nil
	}
	us := strconv.FormatInt(d.Microseconds(), 10) + "us"
	_, err := run("tc", "-n", h.name, "qdisc", "replace", "dev", "eth0", "root", "netem", "delay", us)
	if err != nil {
		if strings.Contains(err.Error(), "qdisc kind is unknown") {
			return fmt.Errorf("latency %s on %s: %w", d, h.name, ErrNoNetem)
		}
		return fmt.Errorf("latency %s on %s: %w", d, h.name, err)
	}
	return nil
}

// pumpLink is the bridge-side end of the pump's veth pair, fg<id>l<i>; its root-side peer is pumpPeer.
func (h *Host) pumpLink() string { return fmt.Sprintf("fg%sl%d", h.net.ID, h.index) }

// pumpPeer is fg<id>j<i>, the end the pump reads and writes.
func (h *Host) pumpPeer() string { return fmt.Sprintf("fg%sj%d", h.net.ID, h.index) }

// startPump rewires the host through a delay pump (h.mu held).
func (h *Host) startPump(d time.Duration) error {
	l, j := h.pumpLink(), h.pumpPeer()
	if err := ip("link", "add", l, "type", "veth", "peer", "name", j); err != nil {
		return fmt.Errorf("latency on %s: %w", h.name, err)
	}
	// The root namespace must not answer ARP (for the bridge's address, say) on the two ends it does not bridge.
	for _, dev := range []string{l, j, h.veth} {
		_ = sysctl("net/ipv6/conf/"+dev+"/disable_ipv6", "1")
	}
	for _, dev := range []string{j, h.veth} {
		if err := sysctl("net/ipv4/conf/"+dev+"/arp_ignore", "8"); err != nil {
			_ = ip("link", "del", l)
			return fmt.Errorf("latency on %s: %w", h.name, err)
		}
	}
	if err := ipAll([][]string{
		{"link", "set", j, "up"},
		{"link", "set", l, "master", h.net.Bridge},
		{"link", "set", l, "up"},
		{"link", "set", h.veth, "nomaster"},
	}); err != nil {
		_ = ip("link", "del", l)
		_ = ip("link", "set", h.veth, "master", h.net.Bridge)
		return fmt.Errorf("latency on %s: %w", h.name, err)
	}
	p, err := startPump(h.veth, j, d)
	if err != nil {
		_ = ip("link", "del", l)
		_ = ip("link", "set", h.veth, "master", h.net.Bridge)
		return fmt.Errorf("latency on %s: %w", h.name, err)
	}
	h.pump = p
	return nil
}

// unpump stops the pump and puts the host's veth back into the bridge (h.mu held).
func (h *Host) unpump() error {
	err := h.pump.close()
	h.pump = nil
	if derr := ip("link", "del", h.pumpLink()); derr != nil {
		err = errors.Join(err, derr)
	}
	if merr := ip("link", "set", h.veth, "master", h.net.Bridge); merr != nil {
		err = errors.Join(err, merr)
	}
	if err != nil {
		return fmt.Errorf("remove latency from %s: %w", h.name, err)
	}
	return nil
}

// waitUntil polls cond every interval until it is true, at most tries times and for at most limit; it reports
// whether cond became true.
func waitUntil(limit, interval time.Duration, tries int, cond func() bool) bool {
	deadline := time.Now().Add(limit)
	for i := 0; i < tries && time.Now().Before(deadline); i++ {
		if cond() {
			return true
		}
		time.Sleep(interval)
	}
	return false
}
