package chaos

// The processes a campaign acts on: `fogo serve` as a child (so that it can be killed -9 and started again), and
// the PostgreSQL instances it runs, found from their data directories.

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// fogoProc is the `fogo serve` child.
type fogoProc struct {
	cmd  *exec.Cmd
	done chan struct{}
	mu   sync.Mutex
	tail []string // its last log lines
}

func (p *fogoProc) output() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return strings.Join(p.tail, "\n")
}

// startFogo starts `fogo serve` on the campaign's data directory and waits until its API answers.
func (c *campaign) startFogo(ctx context.Context) error {
	cmd := exec.Command(c.cfg.Fogo, "serve", "--data-dir", c.dataDir, "--listen", c.apiAddr,
		"--port-range", fmt.Sprintf("%d-%d", c.cfg.PortLow, c.cfg.PortLow+98), "--planned-catch-up-timeout", "20s",
		"--try-planned-timeout", "5s")
	cmd.Env = append(os.Environ(), "FOGO_API_TOKEN="+c.token)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	stderr, err := cmd.StderrPipe()
	if err != nil {
		return err
	}
	cmd.Stdout = nil
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start fogo serve: %w", err)
	}
	p := &fogoProc{cmd: cmd, done: make(chan struct{})}
	go func() {
		sc := bufio.NewScanner(stderr)
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		for sc.Scan() {
			p.mu.Lock()
			p.tail = append(p.tail, sc.Text())
			if len(p.tail) > 200 {
				p.tail = p.tail[len(p.tail)-200:]
			}
			p.mu.Unlock()
		}
		_ = cmd.Wait()
		close(p.done)
	}()
	c.fogo = p
	deadline := time.Now().Add(60 * time.Second)
	for {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+c.apiAddr+"/healthz", nil)
		if resp, err := http.DefaultClient.Do(req); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		select {
		case <-p.done:
			return fmt.Errorf("fogo serve exited at start:\n%s", p.output())
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("fogo serve did not answer within 60 s:\n%s", p.output())
		}
	}
}

// killFogo ends fogo with SIGKILL: nothing of it runs cleanup, its instances keep running.
func (c *campaign) killFogo() {
	if c.fogo == nil {
		return
	}
	_ = c.fogo.cmd.Process.Signal(syscall.SIGKILL)
	<-c.fogo.done
}

// stopFogo ends fogo gracefully (it stops its instances), bounded.
func (c *campaign) stopFogo() error {
	if c.fogo == nil {
		return nil
	}
	select {
	case <-c.fogo.done:
		return nil
	default:
	}
	_ = c.fogo.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-c.fogo.done:
		return nil
	case <-time.After(60 * time.Second):
		_ = c.fogo.cmd.Process.Kill()
		<-c.fogo.done
		return errors.New("fogo did not stop within 60 s of SIGTERM; killed")
	}
}

// instance is one PostgreSQL instance fogo runs, as its data directory shows it.
type instance struct {
	Dir  string
	PID  int
	Port int
}

// instances lists the instances under the data directory whose postmaster runs (or is stopped by SIGSTOP).
func (c *campaign) instances() []instance {
	dirs, _ := filepath.Glob(filepath.Join(c.dataDir, "instances", "*", "pgdata"))
	var out []instance
	for _, d := range dirs {
		raw, err := os.ReadFile(filepath.Join(d, "postmaster.pid"))
		if err != nil {
			continue
		}
		lines := strings.Split(string(raw), "\n")
		if len(lines) < 4 {
			continue
		}
		pid, _ := strconv.Atoi(strings.TrimSpace(lines[0]))
		port, _ := strconv.Atoi(strings.TrimSpace(lines[3]))
		if pid <= 0 || !alive(pid) {
			continue
		}
		out = append(out, instance{Dir: d, PID: pid, Port: port})
	}
	return out
}

// alive reports whether pid exists and is not a zombie.
func alive(pid int) bool {
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	s := string(raw)
	if i := strings.LastIndexByte(s, ')'); i >= 0 && i+2 < len(s) {
		return s[i+2] != 'Z'
	}
	return true
}

// children returns the processes whose parent is pid, with their command lines.
func children(pid int) map[int]string {
	out := map[int]string{}
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		child, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", child))
		if err != nil {
			continue
		}
		s := string(raw)
		i := strings.LastIndexByte(s, ')')
		if i < 0 {
			continue
		}
		f := strings.Fields(s[i+1:])
		if len(f) < 2 {
			continue
		}
		if ppid, _ := strconv.Atoi(f[1]); ppid == pid {
			cmdline, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", child))
			out[child] = strings.ReplaceAll(string(cmdline), "\x00", " ")
		}
	}
	return out
}

// signalAll sends sig to an instance's postmaster and every process it started.
func signalAll(in instance, sig syscall.Signal) {
	_ = syscall.Kill(in.PID, sig)
	for pid := range children(in.PID) {
		_ = syscall.Kill(pid, sig)
	}
}

// walReceiver returns the pid of an instance's WAL receiver, or 0.
func walReceiver(in instance) int {
	for pid, cmd := range children(in.PID) {
		if strings.Contains(cmd, "walreceiver") {
			return pid
		}
	}
	return 0
}

// walSenders returns the pids of an instance's WAL senders (the geo-secondary's, and the links').
func walSenders(in instance) []int {
	var out []int
	for pid, cmd := range children(in.PID) {
		if strings.Contains(cmd, "walsender") {
			out = append(out, pid)
		}
	}
	return out
}

// killStrays kills every PostgreSQL process still running on the campaign's data directory (fogo could not stop
// them), so that nothing outlives the campaign.
func (c *campaign) killStrays() {
	for _, in := range c.instances() {
		signalAll(in, syscall.SIGCONT)
		signalAll(in, syscall.SIGKILL)
	}
}
