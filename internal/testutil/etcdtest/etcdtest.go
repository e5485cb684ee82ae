// Package etcdtest starts real etcd servers for tests: a one-member cluster on free loopback ports with its data
// in a temporary directory, killed and removed when the test ends, pass or fail. Without an etcd binary a test is
// skipped with the reason, unless FOGO_REQUIRE_ETCD=1 (CI), which turns the skip into a failure so that a suite
// can never pass by being skipped.
package etcdtest

import (
	"bytes"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/fogo-db/fogo/internal/testutil/pgtest"
)

// startTimeout bounds how long a server may take to answer its first health check.
const startTimeout = 30 * time.Second

// Server is a running etcd.
type Server struct {
	// Endpoint is the client URL, http://127.0.0.1:<port>.
	Endpoint string
	// Dir is the data directory.
	Dir string
	// stop kills the server (idempotent).
	stop func()
}

// Kill kills the server with SIGKILL, at once (a test of etcd becoming unreachable); it stays down.
func (s *Server) Kill() { s.stop() }

// Endpoints returns the client URLs, as clientv3.Config and store.EtcdConfig want them.
func (s *Server) Endpoints() []string { return []string{s.Endpoint} }

// Bin returns the etcd binary ($FOGO_ETCD_BIN, else etcd on $PATH, else /usr/bin/etcd) or skips (fails under
// FOGO_REQUIRE_ETCD=1).
func Bin(t testing.TB) string {
	t.Helper()
	bin, err := Find()
	if err != nil {
		if os.Getenv("FOGO_REQUIRE_ETCD") == "1" {
			t.Fatalf("etcd is required (FOGO_REQUIRE_ETCD=1): %v", err)
		}
		t.Skipf("etcd not available (install etcd-server): %v", err)
	}
	return bin
}

// Find returns the etcd binary ($FOGO_ETCD_BIN, else etcd on $PATH, else /usr/bin/etcd) or why there is none.
func Find() (string, error) {
	if b := os.Getenv("FOGO_ETCD_BIN"); b != "" {
		if _, err := os.Stat(b); err != nil {
			return "", fmt.Errorf("FOGO_ETCD_BIN: %w", err)
		}
		return b, nil
	}
	if b, err := exec.LookPath("etcd"); err == nil {
		return b, nil
	}
	if _, err := os.Stat("/usr/bin/etcd"); err != nil {
		return "", fmt.Errorf("no etcd on PATH or at /usr/bin/etcd")
	}
	return "/usr/bin/etcd", nil
}

// Start starts a one-member etcd and waits until it answers. It is killed, and its directory removed, at the
// test's cleanup. If its ports were taken before it bound them, it starts again on others, a few times.
func Start(t testing.TB) *Server {
	t.Helper()
	bin := Bin(t)
	var err error
	for attempt := 0; attempt < 3; attempt++ {
		var s *Server
		if s, err = start(t, bin); err == nil {
			return s
		}
	}
	t.Fatal(err)
	return nil
}

func start(t testing.TB, bin string) (*Server, error) {
	dir := t.TempDir()
	client, peer := pgtest.FreePort(t), pgtest.FreePort(t)
	curl := fmt.Sprintf("http://127.0.0.1:%d", client)
	purl := fmt.Sprintf("http://127.0.0.1:%d", peer)
	logPath := filepath.Join(dir, "etcd.log")
	logFile, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	defer logFile.Close()
	cmd := exec.Command(bin,
		"--name", "fogo-test",
		"--data-dir", filepath.Join(dir, "data"),
		"--listen-client-urls", curl, "--advertise-client-urls", curl,
		"--listen-peer-urls", purl, "--initial-advertise-peer-urls", purl,
		"--initial-cluster", "fogo-test="+purl, "--initial-cluster-state", "new",
		"--logger", "zap", "--log-outputs", "stderr",
	)
	cmd.Stdout, cmd.Stderr = logFile, logFile
	cmd.SysProcAttr = sysProcAttr()
	if err := cmd.Start(); err != nil {
		t.Fatalf("start etcd: %v", err)
	}
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }()
	var once sync.Once
	stop := func() {
		once.Do(func() {
			_ = cmd.Process.Kill()
			<-exited
		})
	}
	t.Cleanup(stop) // registered after TempDir's, so it runs first: the directory goes after the process
	hc := &http.Client{Timeout: time.Second}
	deadline := time.Now().Add(startTimeout)
	for {
		select {
		case <-exited:
			return nil, fmt.Errorf("etcd exited before answering:\n%s", LogTail(logPath))
		default:
		}
		if resp, err := hc.Get(curl + "/health"); err == nil {
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK && bytes.Contains(body, []byte(`"true"`)) {
				return &Server{Endpoint: curl, Dir: dir, stop: stop}, nil
			}
		}
		if time.Now().After(deadline) {
			stop()
			return nil, fmt.Errorf("etcd did not answer within %s:\n%s", startTimeout, LogTail(logPath))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// LogTail returns the last 20 lines of a log file, for a failure message.
func LogTail(path string) string {
	raw, _ := os.ReadFile(path)
	lines := strings.Split(strings.TrimSpace(string(raw)), "\n")
	if len(lines) > 20 {
		lines = lines[len(lines)-20:]
	}
	return strings.Join(lines, "\n")
}

// Client is an etcd client of endpoints for a test, closed at its end.
func Client(t testing.TB, endpoints []string) *clientv3.Client {
	t.Helper()
	cli, err := clientv3.New(clientv3.Config{Endpoints: endpoints, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cli.Close() })
	return cli
}
