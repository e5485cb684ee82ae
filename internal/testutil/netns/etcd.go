package netns

import (
	"bytes"
	"context"
	"errors"
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
	dirs := make([]string, len(hosts))
	for i := range dirs {
		dirs[i] = t.TempDir()
	}
	members := newMembers(bin, dirs, hosts)
	for _, m := range members {
		if err := m.start(); err != nil {
			t.Fatal(err)
		}
		// Registered after the member's TempDir, so it runs first: the directory goes after the process.
		t.Cleanup(func() { m.Kill() })
	}
	for _, m := range members {
		m.WaitHealthy(t)
	}
	return members
}

// LaunchEtcd is StartEtcd for callers that are not tests: member i keeps its data and log in dir/m<i> (dir must
// exist), bin is the etcd binary (see FindEtcd). On error the members started are killed; otherwise the caller
// kills them (Kill, or the Net's Close).
func LaunchEtcd(bin, dir string, hosts ...*Host) ([]*EtcdMember, error) {
	if len(hosts) == 0 {
		return nil, errors.New("etcd: no hosts")
	}
	dirs := make([]string, len(hosts))
	for i := range dirs {
		dirs[i] = filepath.Join(dir, fmt.Sprintf("m%d", i+1))
		if err := os.MkdirAll(dirs[i], 0o700); err != nil {
			return nil, fmt.Errorf("etcd: %w", err)
		}
	}
	members := newMembers(bin, dirs, hosts)
	killAll := func() {
		for _, m := range members {
			m.Kill()
		}
	}
	for _, m := range members {
		if err := m.start(); err != nil {
			killAll()
			return nil, err
		}
	}
	for _, m := range members {
		if err := m.waitHealthy(); err != nil {
			killAll()
			return nil, err
		}
	}
	return members, nil
}

// FindEtcd returns the etcd binary: $FOGO_ETCD_BIN, else etcd on PATH, else /usr/bin/etcd.
func FindEtcd() (string, error) { return etcdtest.Find() }

// newMembers describes one member per host (not started), member i in dirs[i].
func newMembers(bin string, dirs []string, hosts []*Host) []*EtcdMember {
	var initial []string
	for i, h := range hosts {
		initial = append(initial, fmt.Sprintf("m%d=http://%s:2380", i+1, h.Addr()))
	}
	token := "fogo-" + hosts[0].net.ID
	members := make([]*EtcdMember, len(hosts))
	for i, h := range hosts {
		m := &EtcdMember{Name: fmt.Sprintf("m%d", i+1), Host: h, Endpoint: fmt.Sprintf("http://%s:2379", h.Addr()), Dir: dirs[i], bin: bin}
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
		members[i] = m
	}
	return members
}

// start runs the member's process (its data directory decides whether it joins as new or comes back).
func (m *EtcdMember) start() error {
	logFile, err := os.OpenFile(filepath.Join(m.Dir, "etcd.log"), os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		return fmt.Errorf("etcd %s: log file: %w", m.Name, err)
	}
	m.Cmd = m.Host.Command(context.Background(), m.bin, m.args...)
	m.Cmd.Stdout, m.Cmd.Stderr = logFile, logFile
	err = m.Cmd.Start()
	logFile.Close()
	if err != nil {
		return fmt.Errorf("etcd: start %s in %s: %w", m.Name, m.Host.Name(), err)
	}
	cmd, exited := m.Cmd, make(chan struct{})
	m.exited = exited
	go func() { _ = cmd.Wait(); close(exited) }()
	return nil
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
	if err := m.start(); err != nil {
		t.Fatal(err)
	}
}

// WaitHealthy waits, bounded, until the member reports healthy (it sees a quorum).
func (m *EtcdMember) WaitHealthy(t testing.TB) {
	t.Helper()
	if err := m.waitHealthy(); err != nil {
		t.Fatal(err)
	}
}

// waitHealthy is WaitHealthy returning an error.
func (m *EtcdMember) waitHealthy() error {
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
		return fmt.Errorf("etcd %s (%s) not healthy within %s; log tail:\n%s", m.Name, m.Endpoint, etcdStartTimeout, etcdtest.LogTail(filepath.Join(m.Dir, "etcd.log")))
	}
	return nil
}

// Endpoints returns the members' client URLs.
func Endpoints(members []*EtcdMember) []string {
	eps := make([]string, len(members))
	for i, m := range members {
		eps[i] = m.Endpoint
	}
	return eps
}
