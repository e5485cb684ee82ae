package netns

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"
)

// The helper process: the test binary run again inside a host (FOGO_NETNS_HELPER selects the role), so the tests
// need nothing beyond the binary itself.
const (
	helperEnv  = "FOGO_NETNS_HELPER" // "echo" or "dial"
	addrEnv    = "FOGO_NETNS_ADDR"   // host:port to listen on or dial
	timeoutEnv = "FOGO_NETNS_TIMEOUT"
	echoPort   = 7000
)

// TestHelperProcess is not a test: run by helper, it is an echo server (one line in, the same line out) or a
// client that connects, does one echo round trip and prints its duration in nanoseconds (or the error, exit 1).
func TestHelperProcess(t *testing.T) {
	switch os.Getenv(helperEnv) {
	case "echo":
		l, err := net.Listen("tcp", os.Getenv(addrEnv))
		if err != nil {
			fmt.Println(err)
			os.Exit(1)
		}
		for {
			c, err := l.Accept()
			if err != nil {
				os.Exit(1)
			}
			go func() {
				defer c.Close()
				r := bufio.NewReader(c)
				for {
					line, err := r.ReadString('\n')
					if err != nil {
						return
					}
					if _, err := c.Write([]byte(line)); err != nil {
						return
					}
				}
			}()
		}
	case "dial":
		timeout, _ := time.ParseDuration(os.Getenv(timeoutEnv))
		rtt, err := echoRoundTrip(os.Getenv(addrEnv), timeout)
		if err != nil {
			fmt.Println(err)
			os.Exit(1)
		}
		fmt.Println(rtt.Nanoseconds())
		os.Exit(0)
	}
}

// echoRoundTrip connects to an echo server and times one round trip (the connect not included).
func echoRoundTrip(addr string, timeout time.Duration) (time.Duration, error) {
	c, err := net.DialTimeout("tcp", addr, timeout)
	if err != nil {
		return 0, err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(timeout))
	start := time.Now()
	if _, err := c.Write([]byte("ping\n")); err != nil {
		return 0, err
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return 0, err
	}
	if line != "ping\n" {
		return 0, fmt.Errorf("echo answered %q", line)
	}
	return time.Since(start), nil
}

// echoBulk sends one line of size bytes to an echo server and checks that it comes back whole.
func echoBulk(addr string, size int, timeout time.Duration) error {
	c, err := net.DialTimeout("tcp", addr, timeout)
	if err != nil {
		return err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(timeout))
	line := append(bytes.Repeat([]byte("x"), size-1), '\n')
	werr := make(chan error, 1)
	go func() { _, err := c.Write(line); werr <- err }()
	got, err := bufio.NewReaderSize(c, 64<<10).ReadBytes('\n')
	if err != nil {
		return fmt.Errorf("bulk echo from %s: %d of %d bytes back: %w", addr, len(got), size, err)
	}
	if err := <-werr; err != nil {
		return fmt.Errorf("bulk echo to %s: %w", addr, err)
	}
	if !bytes.Equal(got, line) {
		return fmt.Errorf("bulk echo from %s: %d bytes back, not what was sent", addr, len(got))
	}
	return nil
}

// helper returns the test binary as a helper in host h.
func helper(t *testing.T, h *Host, role, addr string, timeout time.Duration) *exec.Cmd {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := h.Command(context.Background(), exe, "-test.run=^TestHelperProcess$")
	cmd.Env = append(os.Environ(), helperEnv+"="+role, addrEnv+"="+addr, timeoutEnv+"="+timeout.String())
	return cmd
}

// startEcho starts an echo server in h on echoPort and waits (bounded) until the root namespace reaches it.
func startEcho(t *testing.T, h *Host) *exec.Cmd {
	t.Helper()
	addr := net.JoinHostPort(h.Addr().String(), strconv.Itoa(echoPort))
	cmd := helper(t, h, "echo", addr, 0)
	if err := cmd.Start(); err != nil {
		t.Fatalf("start echo in %s: %v", h.Name(), err)
	}
	go func() { _ = cmd.Wait() }()
	var last error
	if !waitUntil(10*time.Second, 20*time.Millisecond, 500, func() bool {
		_, last = echoRoundTrip(addr, time.Second)
		return last == nil
	}) {
		t.Fatalf("echo in %s not reachable from the root namespace: %v", h.Name(), last)
	}
	return cmd
}

// dialFrom runs one echo round trip from host `from` to `to`'s echo server and returns its duration.
func dialFrom(t *testing.T, from, to *Host, timeout time.Duration) (time.Duration, error) {
	t.Helper()
	addr := net.JoinHostPort(to.Addr().String(), strconv.Itoa(echoPort))
	out, err := helper(t, from, "dial", addr, timeout).Output()
	text := strings.TrimSpace(string(out))
	if err != nil {
		return 0, fmt.Errorf("%s -> %s: %v: %s", from.Name(), addr, err, text)
	}
	ns, err := strconv.ParseInt(text, 10, 64)
	if err != nil {
		return 0, fmt.Errorf("%s -> %s: helper printed %q", from.Name(), addr, text)
	}
	return time.Duration(ns), nil
}

// TestThreeHosts checks reachability between hosts and from the root namespace, and each fault.
func TestThreeHosts(t *testing.T) {
	t.Parallel()
	nw := New(t, 3)
	h1, h2, h3 := nw.Host(1), nw.Host(2), nw.Host(3)
	if !nw.Subnet.Contains(h1.Addr()) || !nw.Subnet.Contains(nw.BridgeAddr) || !strings.HasPrefix(nw.Subnet.String(), "10.213.") {
		t.Fatalf("addresses: subnet %s, h1 %s, bridge %s", nw.Subnet, h1.Addr(), nw.BridgeAddr)
	}
	for _, h := range nw.Hosts {
		startEcho(t, h)
	}

	t.Run("reachable", func(t *testing.T) {
		for _, from := range []*Host{h2, h3} {
			if _, err := dialFrom(t, from, h1, 5*time.Second); err != nil {
				t.Fatal(err)
			}
		}
	})

	t.Run("cut and heal", func(t *testing.T) {
		if err := h2.Cut(); err != nil {
			t.Fatal(err)
		}
		if _, err := dialFrom(t, h1, h2, time.Second); err == nil {
			t.Fatal("h1 reached h2 through a cut")
		}
		if err := h2.Heal(); err != nil {
			t.Fatal(err)
		}
		var last error
		if !waitUntil(15*time.Second, 100*time.Millisecond, 50, func() bool {
			_, last = dialFrom(t, h1, h2, 2*time.Second)
			return last == nil
		}) {
			t.Fatalf("h2 not reachable after Heal: %v", last)
		}
	})

	t.Run("freeze and thaw", func(t *testing.T) {
		addr := net.JoinHostPort(h3.Addr().String(), strconv.Itoa(echoPort))
		c, err := net.DialTimeout("tcp", addr, 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if err := h3.Freeze(); err != nil {
			t.Fatal(err)
		}
		thawed := false
		defer func() {
			if !thawed {
				_ = h3.Thaw()
			}
		}()
		if _, err := c.Write([]byte("frozen?\n")); err != nil {
			t.Fatal(err)
		}
		r := bufio.NewReader(c)
		_ = c.SetReadDeadline(time.Now().Add(500 * time.Millisecond))
		if line, err := r.ReadString('\n'); err == nil {
			t.Fatalf("frozen h3 answered %q", line)
		} else if ne, ok := err.(net.Error); !ok || !ne.Timeout() {
			t.Fatalf("frozen h3: want a read timeout, got %v", err)
		}
		if err := h3.Thaw(); err != nil {
			t.Fatal(err)
		}
		thawed = true
		_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
		if line, err := r.ReadString('\n'); err != nil || line != "frozen?\n" {
			t.Fatalf("thawed h3: got %q, %v", line, err)
		}
	})

	// SetLatency itself (netem, else the pump), then each way by name.
	methods := map[string]func(*Host, time.Duration) error{
		"SetLatency": SetLatency,
		"netem":      netemLatency,
		"pump":       func(h *Host, d time.Duration) error { return setLatency(h, d, true) },
	}
	for _, method := range []string{"SetLatency", "netem", "pump"} {
		set := methods[method]
		t.Run("latency "+method, func(t *testing.T) {
			const d = 200 * time.Millisecond
			err := set(h1, d)
			if errors.Is(err, ErrNoNetem) {
				t.Skipf("netem not testable here (SetLatency uses the pump instead): %v", err)
			}
			if err != nil {
				t.Fatal(err)
			}
			defer func() {
				if err := set(h1, 0); err != nil {
					t.Error(err)
				}
			}()
			rtt, err := dialFrom(t, h2, h1, 10*time.Second)
			if err != nil {
				t.Fatal(err)
			}
			if rtt < d {
				t.Fatalf("round trip h2 -> h1 with %s on h1 took %s", d, rtt)
			}
			t.Logf("round trip with %s on h1 (%s): %s", d, method, rtt)
			// The root namespace reaches h1 too, bulk included (full-size and offloaded frames).
			if err := echoBulk(net.JoinHostPort(h1.Addr().String(), strconv.Itoa(echoPort)), 256<<10, 20*time.Second); err != nil {
				t.Fatal(err)
			}
		})
	}
	t.Run("no latency", func(t *testing.T) {
		rtt, err := dialFrom(t, h2, h1, 10*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("round trip without latency: %s", rtt)
	})

	t.Run("kill -9", func(t *testing.T) {
		pids, err := h3.PIDs()
		if err != nil || len(pids) == 0 {
			t.Fatalf("processes in h3: %v, %v", pids, err)
		}
		echo := helper(t, h3, "echo", net.JoinHostPort(h3.Addr().String(), "7001"), 0)
		if err := echo.Start(); err != nil {
			t.Fatal(err)
		}
		done := make(chan error, 1)
		go func() { done <- echo.Wait() }()
		if err := h3.Kill9(echo); err != nil {
			t.Fatal(err)
		}
		select {
		case err := <-done:
			if err == nil || !strings.Contains(err.Error(), "killed") {
				t.Fatalf("after Kill9: %v", err)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("process alive 10s after Kill9")
		}
	})
}

// TestNothingReachesOutside checks that a host has no default route: an address outside the subnet is
// unreachable at once, no packet sent. The address is a TEST-NET one on none of this machine's networks (here
// 192.0.2.0/24 may be real: it is the CI machine's own), so even a harness bug could not send to a real host.
func TestNothingReachesOutside(t *testing.T) {
	t.Parallel()
	nw := New(t, 1)
	h := nw.Host(1)
	routes, err := run("ip", "-n", h.Name(), "-4", "route", "show", "table", "all")
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(routes, "default") {
		t.Fatalf("host %s has a default route:\n%s", h.Name(), routes)
	}
	used, err := usedPrefixes()
	if err != nil {
		t.Fatal(err)
	}
	var target netip.Addr
	for _, cand := range []string{"192.0.2.1", "198.51.100.1", "203.0.113.1"} {
		a := netip.MustParseAddr(cand)
		free := true
		for _, p := range used {
			if p.Contains(a) {
				free = false
			}
		}
		if free {
			target = a
			break
		}
	}
	if !target.IsValid() {
		t.Skip("every TEST-NET range is on one of this machine's networks")
	}
	out, err := helper(t, h, "dial", net.JoinHostPort(target.String(), "9"), 3*time.Second).Output()
	if err == nil || !strings.Contains(string(out), "network is unreachable") {
		t.Fatalf("dial %s from %s: want network is unreachable, got %v: %s", target, h.Name(), err, out)
	}
}

// TestCleanupRemovesEverything checks that a set's cleanup leaves no namespace, link or process, and that Sweep
// removes a crashed run's leftovers but not a live set.
func TestCleanupRemovesEverything(t *testing.T) {
	t.Parallel()
	Require(t)
	var id string
	t.Run("build", func(t *testing.T) {
		nw := New(t, 2)
		id = nw.ID
		startEcho(t, nw.Host(1))
		nw.Close() // idempotent: cleanup calls it again
	})
	if id == "" {
		t.Fatal("no set built")
	}
	assertGone(t, id)

	// A crashed run's leftovers: names with an id whose lock file is gone.
	live := New(t, 1)
	// Made under the machine-wide lock: a Sweep in a test binary running alongside would otherwise remove them
	// while they are being made (they are leftovers, after all), and the names fail half-way.
	global, err := flock(lockDir+"/global.lock", true)
	if err != nil {
		t.Fatal(err)
	}
	var dead string
	for i := 0; i < 100 && dead == ""; i++ {
		var b [3]byte
		_, _ = rand.Read(b[:])
		dead = hex.EncodeToString(b[:]) // no lock file: a crashed run's id
		if _, err := os.Stat(lockDir + "/" + dead + ".lock"); err == nil {
			dead = "" // a live set's (sets are born under the lock held here)
		}
	}
	if dead == "" {
		t.Fatal("no free id for the fake leftovers")
	}
	err = ipAll([][]string{
		{"netns", "add", "fg" + dead + "-h1"},
		{"link", "add", "fgb" + dead, "type", "bridge"},
		{"link", "add", "fg" + dead + "v1", "type", "veth", "peer", "name", "fg" + dead + "p1"},
		{"link", "add", "fg" + dead + "l1", "type", "veth", "peer", "name", "fg" + dead + "j1"},
	})
	global.Close()
	if err != nil {
		t.Fatal(err)
	}
	if err := Sweep(); err != nil {
		t.Fatal(err)
	}
	assertGone(t, dead)
	if _, err := os.Stat(live.Host(1).Path()); err != nil {
		t.Fatalf("Sweep removed a live set: %v", err)
	}
	links, err := linkNames()
	if err != nil {
		t.Fatal(err)
	}
	if !contains(links, live.Bridge) {
		t.Fatalf("Sweep removed a live bridge %s", live.Bridge)
	}
}

// assertGone fails unless no namespace or link carries id.
func assertGone(t *testing.T, id string) {
	t.Helper()
	ns, err := run("ip", "netns", "list")
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(ns, id) {
		t.Fatalf("namespaces with %s remain:\n%s", id, ns)
	}
	links, err := linkNames()
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range links {
		if strings.Contains(l, id) {
			t.Fatalf("link %s remains", l)
		}
	}
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}
