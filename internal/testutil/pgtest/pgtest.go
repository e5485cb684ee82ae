// Package pgtest starts real PostgreSQL 15 instances for tests, in temporary directories on free loopback
// ports. Without PostgreSQL 15 binaries a test is skipped with the reason, unless FOGO_REQUIRE_PG=1 (CI), which
// turns the skip into a failure so that a suite can never pass by being skipped.
package pgtest

import (
	"context"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/fogo-db/fogo/internal/pki"
	"github.com/fogo-db/fogo/internal/postgres/instance"
	"github.com/fogo-db/fogo/internal/postgres/pgbin"
)

// Bin returns the PostgreSQL 15 binaries or skips (fails under FOGO_REQUIRE_PG=1).
func Bin(t testing.TB) *pgbin.Bin {
	t.Helper()
	b, err := pgbin.Discover(os.Getenv("FOGO_PG_BIN"))
	if err != nil {
		if os.Getenv("FOGO_REQUIRE_PG") == "1" {
			t.Fatalf("PostgreSQL 15 is required (FOGO_REQUIRE_PG=1): %v", err)
		}
		t.Skipf("PostgreSQL 15 not available: %v", err)
	}
	return b
}

// TempDir is t.TempDir() made reachable (search permission only) for the postgres OS user: it and the test's own
// directory above it (both made by the testing package) get o+x; nothing above them changes.
func TempDir(t testing.TB) string {
	t.Helper()
	dir := t.TempDir()
	if err := Bin(t).AllowTraverse(filepath.Dir(dir), dir); err != nil {
		t.Fatal(err)
	}
	return dir
}

// FreePort returns a currently free loopback TCP port.
func FreePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// NewInstance returns an instance handle in a fresh directory (not initialised); it is stopped at cleanup.
func NewInstance(t testing.TB, name string) *instance.Instance {
	t.Helper()
	bin := Bin(t)
	home := filepath.Join(TempDir(t), name)
	if err := bin.MkdirOwned(home); err != nil {
		t.Fatal(err)
	}
	in := &instance.Instance{
		Dir: filepath.Join(home, "pgdata"), Bin: bin, Host: "127.0.0.1", Port: FreePort(t),
		SuperUser: "fogo", SuperPassword: "test-secret-" + name,
	}
	t.Cleanup(func() { _ = in.Stop(context.Background(), instance.ShutdownImmediate) })
	return in
}

// NewPrimary initialises, configures and starts a primary.
func NewPrimary(t testing.TB) *instance.Instance {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	p := NewInstance(t, "primary")
	if err := p.Init(ctx); err != nil {
		t.Fatal(err)
	}
	settings := instance.Settings{Port: p.Port}
	if err := p.Configure(settings); err != nil {
		t.Fatal(err)
	}
	if err := startOnFreePort(ctx, p, settings); err != nil {
		t.Fatal(err)
	}
	return p
}

// NewTLSPrimary starts a primary serving TLS with a certificate from internal/pki for 127.0.0.1 (clients on
// allowFrom may log in over TLS), and returns it and the pki result (its CA verifies the instance).
func NewTLSPrimary(t testing.TB, allowFrom ...netip.Prefix) (*instance.Instance, pki.Result) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	res, err := pki.EnsureCluster(t.TempDir(), []pki.Host{{Name: "pg1", Addrs: []string{"127.0.0.1"}}})
	if err != nil {
		t.Fatal(err)
	}
	p := NewInstance(t, "tls")
	if err := p.Init(ctx); err != nil {
		t.Fatal(err)
	}
	settings := instance.Settings{
		Port:      p.Port,
		TLS:       &instance.TLSFiles{CertFile: res.Hosts[0].CertFile, KeyFile: res.Hosts[0].KeyFile, CAFile: res.CAFile},
		AllowFrom: allowFrom,
	}
	if err := p.Configure(settings); err != nil {
		t.Fatal(err)
	}
	if err := startOnFreePort(ctx, p, settings); err != nil {
		t.Fatal(err)
	}
	return p, res
}

// startOnFreePort starts an instance; if its port was taken meanwhile (FreePort only saw it free: a test running
// in parallel, or an outgoing connection's ephemeral port, may take it before the postmaster binds it), it moves
// to another free port, a few times.
func startOnFreePort(ctx context.Context, in *instance.Instance, s instance.Settings) error {
	for attempt := 0; ; attempt++ {
		err := in.Start(ctx)
		if err == nil || attempt == 3 || !strings.Contains(err.Error(), "Address already in use") {
			return err
		}
		l, lerr := net.Listen("tcp", "127.0.0.1:0")
		if lerr != nil {
			return err
		}
		in.Port = l.Addr().(*net.TCPAddr).Port
		l.Close()
		s.Port = in.Port
		if err := in.Configure(s); err != nil {
			return err
		}
	}
}

// NewStandby seeds a streaming standby of primary through physical slot `slot` and starts it.
func NewStandby(t testing.TB, primary *instance.Instance, slot string) *instance.Instance {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	s := NewInstance(t, "standby-"+slot)
	s.SuperPassword = primary.SuperPassword
	if err := primary.EnsurePhysicalSlot(ctx, slot); err != nil {
		t.Fatal(err)
	}
	if err := s.BaseBackup(ctx, primary.SourceConnInfo(), slot); err != nil {
		t.Fatal(err)
	}
	settings := instance.Settings{Port: s.Port, Standby: true, PrimaryConnInfo: primary.ReplicationConnInfo(slot), PrimarySlotName: slot}
	if err := s.Configure(settings); err != nil {
		t.Fatal(err)
	}
	if err := startOnFreePort(ctx, s, settings); err != nil {
		t.Fatal(err)
	}
	return s
}

// Freeze stops process pid with SIGSTOP (a postmaster: it forks nothing and relays no signal until resumed) and
// returns the function that resumes it with SIGCONT, once; the test's cleanup resumes it too.
func Freeze(t testing.TB, pid int) (resume func()) {
	t.Helper()
	if err := syscall.Kill(pid, syscall.SIGSTOP); err != nil {
		t.Fatalf("freeze process %d: %v", pid, err)
	}
	var once sync.Once
	resume = func() { once.Do(func() { _ = syscall.Kill(pid, syscall.SIGCONT) }) }
	t.Cleanup(resume)
	return resume
}
