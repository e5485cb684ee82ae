package chaos

// The processes a campaign acts on: `fogo serve` as a child (so that it can be killed -9 and started again), and
// the PostgreSQL instances it runs, found from their data directories.

import (
	"bufio"
	"context"
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

	"github.com/fogo-db/fogo/internal/cli"
	"github.com/fogo-db/fogo/internal/proctree"
)

// world is where the campaign's fogo runs: one `fogo serve` (the embedded mode), or a cluster in network
// namespaces (etcd, an agent per region, a controller).
type world interface {
	// start brings fogo up and returns its API client.
	start(ctx context.Context) (*cli.Client, error)
	// killFogo ends fogo (the controller) with kill -9; startFogo starts it again on the same state.
	killFogo()
	startFogo(ctx context.Context) error
	// close ends everything the world made, on every path.
	close()
	// dataDirs are the directories under which the instances' data directories are, with the address they listen on.
	dataDirs() map[string]string
	// sslmode is what a client asks of fogo's endpoints and instances.
	sslmode() string
	// logTail is fogo's last log lines.
	logTail() string
}

// hostLoser is a world whose instances run on hosts of their own, which can be cut off the network.
type hostLoser interface {
	// cutHostOf cuts off the host of the instance listening on addr, and returns the host's name and how to heal
	// it: the network back, and its agent running again.
	cutHostOf(addr string) (heal func(ctx context.Context) error, name string, err error)
}

// embedded runs `fogo serve` as a child process on a data directory of its own.
type embedded struct {
	cfg     Config
	dir     string
	apiAddr string
	token   string
	proc    *fogoProc
}

// fogoProc is the `fogo serve` child.
type fogoProc struct {
	cmd  *exec.Cmd
	done chan struct{}
	mu   sync.Mutex
	tail []string // its last log lines
}

func (e *embedded) logTail() string {
	if e.proc == nil {
		return ""
	}
	e.proc.mu.Lock()
	defer e.proc.mu.Unlock()
	return strings.Join(e.proc.tail, "\n")
}

func (e *embedded) sslmode() string { return "disable" }

func (e *embedded) dataDirs() map[string]string {
	return map[string]string{filepath.Join(e.dir, "instances"): "127.0.0.1"}
}

func (e *embedded) start(ctx context.Context) (*cli.Client, error) {
	e.dir = e.cfg.DataDir
	if e.dir == "" {
		dir, err := os.MkdirTemp("", "fogo-chaos-")
		if err != nil {
			return nil, err
		}
		// Instances run as the postgres OS user when fogo runs as root: they must reach their directories.
		if err := os.Chmod(dir, 0o755); err != nil {
			return nil, err
		}
		e.dir = dir
	}
	e.apiAddr, e.token = fmt.Sprintf("127.0.0.1:%d", e.cfg.PortLow+99), randomHex(16)
	if err := e.startFogo(ctx); err != nil {
		return nil, err
	}
	return &cli.Client{Endpoint: "http://" + e.apiAddr, Token: e.token, PollInterval: 100 * time.Millisecond}, nil
}

// startFogo starts `fogo serve` on the campaign's data directory and waits until its API answers.
func (e *embedded) startFogo(ctx context.Context) error {
	cmd := exec.Command(e.cfg.Fogo, "serve", "--data-dir", e.dir, "--listen", e.apiAddr,
		"--port-range", fmt.Sprintf("%d-%d", e.cfg.PortLow, e.cfg.PortLow+98), "--planned-catch-up-timeout", "20s",
		"--try-planned-timeout", "5s")
	cmd.Env = append(os.Environ(), "FOGO_API_TOKEN="+e.token)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	stderr, err := cmd.StderrPipe()
	if err != nil {
		return err
	}
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
	e.proc = p
	deadline := time.Now().Add(60 * time.Second)
	for {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+e.apiAddr+"/healthz", nil)
		if resp, err := http.DefaultClient.Do(req); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		select {
		case <-p.done:
			return fmt.Errorf("fogo serve exited at start:\n%s", e.logTail())
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("fogo serve did not answer within 60 s:\n%s", e.logTail())
		}
	}
}

// killFogo ends fogo with SIGKILL: nothing of it runs cleanup, its instances keep running.
func (e *embedded) killFogo() {
	if e.proc == nil {
		return
	}
	_ = e.proc.cmd.Process.Signal(syscall.SIGKILL)
	<-e.proc.done
}

// close stops fogo gracefully (it stops its instances), kills whatever still runs on the data directory, and
// removes a temporary one.
func (e *embedded) close() {
	if e.proc != nil {
		select {
		case <-e.proc.done:
		default:
			_ = e.proc.cmd.Process.Signal(syscall.SIGTERM)
			select {
			case <-e.proc.done:
			case <-time.After(60 * time.Second):
				_ = e.proc.cmd.Process.Kill()
				<-e.proc.done
			}
		}
	}
	for _, in := range instancesUnder(e.dataDirs()) {
		signalAll(in, syscall.SIGCONT)
		signalAll(in, syscall.SIGKILL)
	}
	if e.cfg.DataDir == "" && !e.cfg.Keep && e.dir != "" {
		_ = os.RemoveAll(e.dir)
	}
}

// instance is one PostgreSQL instance fogo runs, as its data directory shows it.
type instance struct {
	Dir  string
	PID  int
	Host string // the address it listens on
	Port int
}

// addr is the instance's host:port.
func (in instance) addr() string { return fmt.Sprintf("%s:%d", in.Host, in.Port) }

// instances lists the instances whose postmaster runs (or is stopped by SIGSTOP).
func (c *campaign) instances() []instance { return instancesUnder(c.world.dataDirs()) }

// instancesUnder lists the running instances under each root (root -> the address they listen on).
func instancesUnder(roots map[string]string) []instance {
	var out []instance
	for root, host := range roots {
		dirs, _ := filepath.Glob(filepath.Join(root, "*", "pgdata"))
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
			if pid <= 0 || !proctree.Alive(pid) {
				continue
			}
			out = append(out, instance{Dir: d, PID: pid, Host: host, Port: port})
		}
	}
	return out
}

// signalAll sends sig to an instance's postmaster and every process it started.
func signalAll(in instance, sig syscall.Signal) { proctree.Signal(in.PID, sig) }

// walReceiver returns the pid of an instance's WAL receiver, or 0.
func walReceiver(in instance) int {
	for pid, cmd := range proctree.Children(in.PID) {
		if strings.Contains(cmd, "walreceiver") {
			return pid
		}
	}
	return 0
}

// walSenders returns the pids of an instance's WAL senders (the geo-secondary's, and the links').
func walSenders(in instance) []int {
	var out []int
	for pid, cmd := range proctree.Children(in.PID) {
		if strings.Contains(cmd, "walsender") {
			out = append(out, pid)
		}
	}
	return out
}
