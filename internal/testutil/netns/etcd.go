package netns

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/fogo-db/fogo/internal/testutil/etcdtest"
)

// etcdStartTimeout bounds how long a cluster may take until every member reports healthy.
const etcdStartTimeout = 30 * time.Second

// EtcdMember is one member of a cluster started by StartEtcd.
type EtcdMember struct {
	// Name is the member's name, m<i> (i counted from 1 in the hosts given to StartEtcd).
	Name string
	// Host is the host it runs in.
	Host *Host
	// Endpoint is its client URL, http://<host address>:2379.
	Endpoint string
	// Dir holds its data directory and its log, etcd.log.
	Dir string
	// Cmd is its process (tracked by Host: Host.Kill9(Cmd) kills it).
	Cmd *exec.Cmd

	bin    string
	args   []string
	exited chan struct{}
}

// EtcdBin returns the etcd binary ($FOGO_ETCD_BIN, else etcd on PATH, else /usr/bin/etcd) or skips the test;
// under FOGO_REQUIRE_ETCD=1 it fails instead.
func EtcdBin(t testing.TB) string { return etcdtest.Bin(t) }

// StartEtcd starts one etcd member in each host, as one cluster (static --initial-cluster; client URL
// http://<addr>:2379, peer URL http://<addr>:2380: each host has its own ports), and waits, bounded, until every
// member reports healthy. The members are killed at the test's cleanup with the hosts' other processes; their
// directories are the test's temporary directories. It skips without etcd (see EtcdBin).
func StartEtcd(t testing.TB, hosts ...*Host) []*EtcdMember {
	t.Helper()
	bin := EtcdBin(t)
	if len(hosts) == 0 {
		t.Fatal("StartEtcd: no hosts")
	}
	var initial []string
	for i, h := range hosts {
		initial = append(initial, fmt.Sprintf("m%d=http://%s:2380", i+1, h.Addr()))
	}
	token := "fogo-" + hosts[0].net.ID
	members := make([]*EtcdMember, len(hosts))
	for i, h := range hosts {
		m := &EtcdMember{Name: fmt.Sprintf("m%d", i+1), Host: h, Endpoint: fmt.Sprintf("http://%s:2379", h.Addr()), Dir: t.TempDir(), bin: bin}
		peer := fmt.Sprintf("http://%s:2380", h.Addr())
		m.args = []string{
			"--name", m.Name,
			"--data-dir", filepath.Join(m.Dir, "data"),
			"--listen-client-urls", m.Endpoint, "--advertise-client-urls", m.Endpoint,
			"--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
			"--initial-cluster", strings.Join(initial, ","), "--initial-cluster-state", "new",
			"--initial-cluster-token", token,
			"--logger", "zap", "--log-outputs", "stderr",
		}
		m.start(t)
		// Registered after the member's TempDir, so it runs first: the directory goes after the process.
		t.Cleanup(func() { m.Kill() })
		members[i] = m
	}
	for _, m := range members {
		m.WaitHealthy(t)
	}
	return members
}

// start runs the member's process (its data directory decides whether it joins as new or comes back).
func (m *EtcdMember) start(t testing.TB) {
	t.Helper()
	logFile, err := os.OpenFile(filepath.Join(m.Dir, "etcd.log"), os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		t.Fatalf("etcd %s: log file: %v", m.Name, err)
	}
	m.Cmd = m.Host.Command(context.Background(), m.bin, m.args...)
	m.Cmd.Stdout, m.Cmd.Stderr = logFile, logFile
	err = m.Cmd.Start()
	logFile.Close()
	if err != nil {
		t.Fatalf("etcd: start %s in %s: %v", m.Name, m.Host.Name(), err)
	}
	cmd, exited := m.Cmd, make(chan struct{})
	m.exited = exited
	go func() { _ = cmd.Wait(); close(exited) }()
}

// Kill kills the member's process (SIGKILL) and waits, bounded, until it is gone.
func (m *EtcdMember) Kill() {
	if m.Cmd == nil {
		return
	}
	_ = m.Host.Kill9(m.Cmd)
	select {
	case <-m.exited:
	case <-time.After(10 * time.Second):
	}
}

// Restart starts a killed member again on its data directory. It does not wait for health: a member alone
// without a quorum of its peers is not healthy (see WaitHealthy).
func (m *EtcdMember) Restart(t testing.TB) {
	t.Helper()
	m.Kill()
	m.start(t)
}

// WaitHealthy waits, bounded, until the member reports healthy (it sees a quorum).
func (m *EtcdMember) WaitHealthy(t testing.TB) {
	t.Helper()
	hc := &http.Client{Timeout: time.Second}
	healthy := waitUntil(etcdStartTimeout, 100*time.Millisecond, int(etcdStartTimeout/(100*time.Millisecond)), func() bool {
		resp, err := hc.Get(m.Endpoint + "/health")
		if err != nil {
			return false
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK && bytes.Contains(body, []byte(`"true"`))
	})
	if !healthy {
		t.Fatalf("etcd %s (%s) not healthy within %s; log tail:\n%s", m.Name, m.Endpoint, etcdStartTimeout, etcdtest.LogTail(filepath.Join(m.Dir, "etcd.log")))
	}
}

// Endpoints returns the members' client URLs.
func Endpoints(members []*EtcdMember) []string {
	eps := make([]string, len(members))
	for i, m := range members {
		eps[i] = m.Endpoint
	}
	return eps
}
