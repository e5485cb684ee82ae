// Package netns builds "hosts on one machine" for cluster-mode tests: n Linux network namespaces, each joined by a
// veth pair to one private bridge, with an address in a private /24 that collides with none of the machine's
// networks. Processes run inside a host (Host.Command) and are killed at the test's cleanup; faults are injected
// per host: kill -9 (Host.Kill9), SIGSTOP/SIGCONT of everything in the namespace (Host.Freeze, Host.Thaw), a
// network cut (Host.Cut, Host.Heal) and latency (SetLatency).
//
// Network rules: a host has only its loopback and one interface, eth0, with a connected route to the test /24; it
// has no default route, so anything outside the subnet is "network is unreachable" at once and no packet leaves.
// The bridge carries the subnet's last address (.254) so that the test process, in the root namespace, can reach
// processes in the hosts (an HTTP API, etcd's client port); IPv4 forwarding is switched off on the bridge and IPv6
// on the bridge and the root ends of the veths, so nothing arriving from a host is routed anywhere else. There is
// no NAT.
//
// Names carry a random 6-hex id: bridge fgb<id>, namespaces fg<id>-h<i>, root-side veths fg<id>v<i> (and, while a
// host has latency without netem, the pair fg<id>l<i>/fg<id>j<i>). Each live
// set holds an flock on /run/fogo-netns/<id>.lock for its lifetime; Sweep (run by New) removes sets whose lock is
// free, i.e. leftovers of crashed runs, and never touches a name without the harness's prefix and pattern.
//
// Everything needs root, iproute2's ip and util-linux's nsenter (tc is used for latency when present); without
// them a test is skipped with the reason, unless FOGO_REQUIRE_NETNS=1 (CI), which turns the skip into a failure.
package netns

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// MaxHosts is the most hosts one New builds (addresses .1 to .MaxHosts; the bridge is .254).
const MaxHosts = 32

// cmdTimeout bounds every ip/tc invocation.
const cmdTimeout = 15 * time.Second

// lockDir holds one lock file per live set (tmpfs: emptied at boot, like the namespaces and links themselves).
const lockDir = "/run/fogo-netns"

// netnsDir is where `ip netns add` binds the namespaces.
const netnsDir = "/var/run/netns"

var (
	nsPattern   = regexp.MustCompile(`^fg([0-9a-f]{6})-h[0-9]+$`)
	linkPattern = regexp.MustCompile(`^fg(?:b([0-9a-f]{6})|([0-9a-f]{6})[vlj][0-9]+)$`)
	idPattern   = regexp.MustCompile(`^[0-9a-f]{6}$`)
)

// Net is one set of hosts on a private bridge.
type Net struct {
	// ID is the set's random 6-hex id, part of every name it creates.
	ID string
	// Bridge is the bridge's name, fgb<ID>.
	Bridge string
	// Subnet is the private /24 the hosts live in.
	Subnet netip.Prefix
	// BridgeAddr is the root namespace's address on the bridge (.254 of Subnet).
	BridgeAddr netip.Addr
	// Hosts are the hosts, Hosts[0] being h1.
	Hosts []*Host

	lock      *os.File
	closeOnce sync.Once
}

// Host is one network namespace on the bridge.
type Host struct {
	net   *Net
	index int
	name  string
	veth  string
	addr  netip.Addr
	mu    sync.Mutex
	procs []*exec.Cmd
	pump  *pump // latency without netem, see SetLatency
}

// Name returns the namespace's name, fg<id>-h<i>.
func (h *Host) Name() string { return h.name }

// Addr returns the host's address in the test subnet.
func (h *Host) Addr() netip.Addr { return h.addr }

// Veth returns the name of the root namespace's end of the host's veth pair (its bridge port).
func (h *Host) Veth() string { return h.veth }

// Path returns the namespace's bind-mount path, /var/run/netns/<name>, as nsenter --net= wants it.
func (h *Host) Path() string { return filepath.Join(netnsDir, h.name) }

// Require skips the test unless it runs as root with ip and nsenter on PATH; under FOGO_REQUIRE_NETNS=1 it fails instead.
func Require(t testing.TB) {
	t.Helper()
	err := Available()
	if err == nil {
		return
	}
	if os.Getenv("FOGO_REQUIRE_NETNS") == "1" {
		t.Fatalf("%v (FOGO_REQUIRE_NETNS=1)", err)
	}
	t.Skip(err.Error())
}

// Available reports why network namespaces cannot be built here (not root, ip or nsenter missing), or nil.
func Available() error {
	var reasons []string
	if os.Geteuid() != 0 {
		reasons = append(reasons, "not root")
	}
	for _, tool := range []string{"ip", "nsenter"} {
		if _, err := exec.LookPath(tool); err != nil {
			reasons = append(reasons, tool+" not found (install iproute2 / util-linux)")
		}
	}
	if len(reasons) == 0 {
		return nil
	}
	return errors.New("network namespaces not available: " + strings.Join(reasons, ", "))
}

// New builds n hosts (1 ≤ n ≤ MaxHosts) on a fresh bridge, after sweeping leftovers of crashed runs. Everything
// is removed at the test's cleanup, pass, fail or panic. It skips when namespaces are unavailable (see Require).
func New(t testing.TB, n int) *Net {
	t.Helper()
	Require(t)
	nw, err := Create(n, func(err error) { t.Logf("netns: sweep of leftovers: %v", err) })
	if err != nil {
		t.Fatalf("netns.New: %v", err)
	}
	t.Cleanup(nw.Close)
	return nw
}

// Create is New for callers that are not tests (fogo try-cluster, the cluster benchmark): it builds n hosts
// after sweeping leftovers (a sweep error goes to sweepErr, if not nil, and does not stop it) and returns an
// error rather than failing a test. The caller must Close the set, on every path; on error nothing is left.
func Create(n int, sweepErr func(error)) (*Net, error) {
	if err := Available(); err != nil {
		return nil, err
	}
	if n < 1 || n > MaxHosts {
		return nil, fmt.Errorf("%d hosts, want 1..%d", n, MaxHosts)
	}
	if err := Sweep(); err != nil && sweepErr != nil {
		sweepErr(err)
	}
	nw, err := build(n)
	if err != nil {
		if nw != nil {
			nw.Close()
		}
		return nil, err
	}
	return nw, nil
}

// build creates the set; on error the returned Net (if any) holds what was created, for Close to remove.
func build(n int) (*Net, error) {
	if err := os.MkdirAll(lockDir, 0o755); err != nil {
		return nil, fmt.Errorf("lock directory: %w", err)
	}
	// The subnet choice and the bridge address are made under one machine-wide lock, so two test processes
	// starting together cannot pick the same /24.
	global, err := flock(filepath.Join(lockDir, "global.lock"), true)
	if err != nil {
		return nil, err
	}
	defer global.Close()

	nw := &Net{}
	for attempt := 0; ; attempt++ {
		var b [3]byte
		if _, err := rand.Read(b[:]); err != nil {
			return nil, fmt.Errorf("random id: %w", err)
		}
		id := hex.EncodeToString(b[:])
		path := filepath.Join(lockDir, id+".lock")
		f, err := os.OpenFile(path, os.O_CREATE|os.O_EXCL|os.O_RDWR, 0o644)
		if errors.Is(err, os.ErrExist) && attempt < 10 {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("lock file for a new id: %w", err)
		}
		if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
			f.Close()
			return nil, fmt.Errorf("lock %s: %w", path, err)
		}
		nw.ID, nw.lock = id, f
		break
	}
	nw.Bridge = "fgb" + nw.ID

	subnet, err := pickSubnet()
	if err != nil {
		return nw, err
	}
	nw.Subnet = subnet
	base := subnet.Addr().As4()
	base[3] = 254
	nw.BridgeAddr = netip.AddrFrom4(base)

	// A fixed, locally administered MAC: a bridge without one takes its lowest port's, which would change as ports
	// come and go (SetLatency's pump), leaving the hosts' ARP entries for .254 stale.
	mac := "02:fb:" + nw.ID[0:2] + ":" + nw.ID[2:4] + ":" + nw.ID[4:6] + ":fe"
	if err := ip("link", "add", nw.Bridge, "address", mac, "type", "bridge"); err != nil {
		return nw, err
	}
	if err := sysctl("net/ipv4/conf/"+nw.Bridge+"/forwarding", "0"); err != nil {
		return nw, err
	}
	_ = sysctl("net/ipv6/conf/"+nw.Bridge+"/disable_ipv6", "1")
	if err := ipAll([][]string{
		{"addr", "add", nw.BridgeAddr.String() + "/24", "dev", nw.Bridge},
		{"link", "set", nw.Bridge, "up"},
	}); err != nil {
		return nw, err
	}
	global.Close() // the /24 is now visible to other processes' pickSubnet

	for i := 1; i <= n; i++ {
		a := subnet.Addr().As4()
		a[3] = byte(i)
		h := &Host{
			net:   nw,
			index: i,
			name:  fmt.Sprintf("fg%s-h%d", nw.ID, i),
			veth:  fmt.Sprintf("fg%sv%d", nw.ID, i),
			addr:  netip.AddrFrom4(a),
		}
		nw.Hosts = append(nw.Hosts, h)
		peer := fmt.Sprintf("fg%sp%d", nw.ID, i)
		if err := ipAll([][]string{
			{"netns", "add", h.name},
			{"link", "add", h.veth, "type", "veth", "peer", "name", peer},
			{"link", "set", peer, "netns", h.name},
			{"-n", h.name, "link", "set", peer, "name", "eth0"},
			{"-n", h.name, "addr", "add", h.addr.String() + "/24", "dev", "eth0"},
			{"-n", h.name, "link", "set", "lo", "up"},
			{"-n", h.name, "link", "set", "eth0", "up"},
			{"link", "set", h.veth, "master", nw.Bridge},
		}); err != nil {
			return nw, err
		}
		_ = sysctl("net/ipv6/conf/"+h.veth+"/disable_ipv6", "1")
		if err := ip("link", "set", h.veth, "up"); err != nil {
			return nw, err
		}
	}
	return nw, nil
}

// Host returns host i, counted from 1 (h1 is Host(1)).
func (nw *Net) Host(i int) *Host { return nw.Hosts[i-1] }

// Close kills every process in the hosts and removes the namespaces, veths, bridge and lock file. It is
// registered with t.Cleanup by New and is idempotent; errors are ignored (Sweep would remove any remains).
func (nw *Net) Close() {
	nw.closeOnce.Do(func() {
		for _, h := range nw.Hosts {
			h.killAll()
			h.mu.Lock()
			if h.pump != nil {
				_ = h.pump.close()
				h.pump = nil
			}
			h.mu.Unlock()
		}
		for _, h := range nw.Hosts {
			_ = ip("link", "del", h.veth) // deleting one end deletes the pair
			_ = ip("link", "del", h.pumpLink())
			_ = ip("netns", "del", h.name)
		}
		if nw.Bridge != "" {
			_ = ip("link", "del", nw.Bridge)
		}
		if nw.lock != nil {
			os.Remove(nw.lock.Name())
			nw.lock.Close()
		}
	})
}

// killAll kills the tracked processes' groups and then every process left in the namespace, and waits (bounded)
// until none remains.
func (h *Host) killAll() {
	h.mu.Lock()
	procs := h.procs
	h.mu.Unlock()
	for _, c := range procs {
		if c.Process != nil {
			_ = syscall.Kill(-c.Process.Pid, syscall.SIGKILL)
		}
	}
	for i := 0; i < 100; i++ {
		pids, err := h.PIDs()
		if err != nil || len(pids) == 0 {
			return
		}
		for _, pid := range pids {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Sweep removes what crashed runs left behind: every namespace fg<id>-h<i> (after killing what runs in it), link
// fgb<id>, fg<id>v<i>, fg<id>l<i> or fg<id>j<i>, and lock file /run/fogo-netns/<id>.lock whose id's lock is not held by a live process. Names without the harness's
// pattern are never touched; sets of live tests, in this process or others, are kept.
func Sweep() error {
	if _, err := exec.LookPath("ip"); err != nil {
		return fmt.Errorf("sweep: %w", err)
	}
	if err := os.MkdirAll(lockDir, 0o755); err != nil {
		return fmt.Errorf("sweep: lock directory: %w", err)
	}
	// Under the machine-wide lock: a New in another process holds it from creating its id's lock file until the
	// file is locked, so a set being born is never taken for a leftover.
	global, err := flock(filepath.Join(lockDir, "global.lock"), true)
	if err != nil {
		return fmt.Errorf("sweep: %w", err)
	}
	defer global.Close()
	dead := map[string]bool{}
	isDead := func(id string) bool {
		if v, ok := dead[id]; ok {
			return v
		}
		path := filepath.Join(lockDir, id+".lock")
		f, err := os.OpenFile(path, os.O_RDWR, 0)
		if errors.Is(err, os.ErrNotExist) {
			dead[id] = true // New creates the lock file before any name; Close removes it after them
			return true
		}
		if err != nil {
			dead[id] = false
			return false
		}
		defer f.Close()
		if unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB) != nil {
			dead[id] = false
			return false
		}
		dead[id] = true
		return true
	}
	var errs []error
	// Namespaces: ip netns list prints "name" or "name (id: N)".
	out, err := ipOut("netns", "list")
	if err != nil {
		errs = append(errs, err)
	}
	for _, line := range strings.Split(out, "\n") {
		f := strings.Fields(line)
		if len(f) == 0 {
			continue
		}
		if m := nsPattern.FindStringSubmatch(f[0]); m != nil && isDead(m[1]) {
			ns := &Host{name: f[0]}
			ns.killAll()
			if err := ip("netns", "del", f[0]); err != nil {
				errs = append(errs, err)
			}
		}
	}
	links, err := linkNames()
	if err != nil {
		errs = append(errs, err)
	}
	for _, name := range links {
		m := linkPattern.FindStringSubmatch(name)
		if m == nil {
			continue
		}
		id := m[1] + m[2]
		if isDead(id) {
			if err := ip("link", "del", name); err != nil && !strings.Contains(err.Error(), "Cannot find device") {
				errs = append(errs, err)
			}
		}
	}
	if entries, err := os.ReadDir(lockDir); err == nil {
		for _, e := range entries {
			id, ok := strings.CutSuffix(e.Name(), ".lock")
			if ok && idPattern.MatchString(id) && isDead(id) {
				os.Remove(filepath.Join(lockDir, e.Name()))
			}
		}
	}
	return errors.Join(errs...)
}

// linkNames lists the root namespace's links.
func linkNames() ([]string, error) {
	out, err := ipOut("-j", "link", "show")
	if err != nil {
		return nil, err
	}
	var links []struct {
		IfName string `json:"ifname"`
	}
	if err := json.Unmarshal([]byte(out), &links); err != nil {
		return nil, fmt.Errorf("parse ip -j link: %w", err)
	}
	names := make([]string, 0, len(links))
	for _, l := range links {
		names = append(names, l.IfName)
	}
	return names, nil
}

// pickSubnet returns the first 10.213.X.0/24 overlapping none of the root namespace's addresses and routes
// (default routes aside: they overlap everything).
func pickSubnet() (netip.Prefix, error) {
	used, err := usedPrefixes()
	if err != nil {
		return netip.Prefix{}, err
	}
	for x := 0; x < 256; x++ {
		cand := netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 213, byte(x), 0}), 24)
		free := true
		for _, p := range used {
			if p.Overlaps(cand) {
				free = false
				break
			}
		}
		if free {
			return cand, nil
		}
	}
	return netip.Prefix{}, fmt.Errorf("no free /24 in 10.213.0.0/16 (all overlap the machine's addresses or routes)")
}

// usedPrefixes returns the root namespace's IPv4 address prefixes and route destinations.
func usedPrefixes() ([]netip.Prefix, error) {
	var used []netip.Prefix
	out, err := ipOut("-j", "-4", "addr", "show")
	if err != nil {
		return nil, err
	}
	var ifs []struct {
		AddrInfo []struct {
			Local     string `json:"local"`
			PrefixLen int    `json:"prefixlen"`
		} `json:"addr_info"`
	}
	if err := json.Unmarshal([]byte(out), &ifs); err != nil {
		return nil, fmt.Errorf("parse ip -j addr: %w", err)
	}
	for _, i := range ifs {
		for _, a := range i.AddrInfo {
			if addr, err := netip.ParseAddr(a.Local); err == nil {
				if p, err := addr.Prefix(a.PrefixLen); err == nil {
					used = append(used, p)
				}
			}
		}
	}
	out, err = ipOut("-j", "-4", "route", "show", "table", "all")
	if err != nil {
		return nil, err
	}
	var routes []struct {
		Dst string `json:"dst"`
	}
	if err := json.Unmarshal([]byte(out), &routes); err != nil {
		return nil, fmt.Errorf("parse ip -j route: %w", err)
	}
	for _, r := range routes {
		if r.Dst == "" || r.Dst == "default" {
			continue
		}
		dst := r.Dst
		if !strings.Contains(dst, "/") {
			dst += "/32"
		}
		if p, err := netip.ParsePrefix(dst); err == nil {
			used = append(used, p)
		}
	}
	return used, nil
}

// flock opens (creating) path and takes an exclusive lock on it, waiting at most cmdTimeout.
func flock(path string, create bool) (*os.File, error) {
	flag := os.O_RDWR
	if create {
		flag |= os.O_CREATE
	}
	f, err := os.OpenFile(path, flag, 0o644)
	if err != nil {
		return nil, fmt.Errorf("open lock %s: %w", path, err)
	}
	deadline := time.Now().Add(cmdTimeout)
	for {
		err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB)
		if err == nil {
			return f, nil
		}
		if time.Now().After(deadline) {
			f.Close()
			return nil, fmt.Errorf("lock %s: not acquired within %s: %w", path, cmdTimeout, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// sysctl writes value to /proc/sys/<key> in the root namespace.
func sysctl(key, value string) error {
	if err := os.WriteFile("/proc/sys/"+key, []byte(value), 0o644); err != nil {
		return fmt.Errorf("sysctl %s=%s: %w", key, value, err)
	}
	return nil
}

// ipAll runs ip once per argument list, stopping at the first error.
func ipAll(steps [][]string) error {
	for _, s := range steps {
		if err := ip(s...); err != nil {
			return err
		}
	}
	return nil
}

// ip runs ip with args.
func ip(args ...string) error {
	_, err := ipOut(args...)
	return err
}

// ipOut runs ip with args and returns its standard output.
func ipOut(args ...string) (string, error) {
	return run("ip", args...)
}

// run runs a tool (bounded by cmdTimeout) and returns its standard output; an error carries the command line and
// the standard error.
func run(tool string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), cmdTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, tool, args...)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return string(out), fmt.Errorf("%s %s: %w: %s", tool, strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return string(out), nil
}
