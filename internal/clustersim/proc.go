package clustersim

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"time"

	"github.com/fogo-db/fogo/internal/testutil/netns"
)

// startTimeout bounds how long a fogo process may take to become ready.
const startTimeout = 90 * time.Second

// stopTimeout bounds how long a fogo process may take to exit after SIGTERM before it is killed.
const stopTimeout = 10 * time.Second

// Proc is a fogo process (an agent or the controller) in one of the cluster's hosts.
type Proc struct {
	// Name is the agent's or controller's name (east-1, west-1, ctl-1).
	Name string
	// Region is an agent's region ("" for the controller).
	Region string
	// Host is the namespace it runs in.
	Host *netns.Host
	// DataDir is its --data-dir; an agent's instances are under DataDir/instances.
	DataDir string
	// LogFile receives its standard output and error.
	LogFile string

	bin  string
	args []string
	// logFrom is the log's size when the process was last started: what it logs from there on is this run's.
	logFrom int64
	env     []string
	cmd     *exec.Cmd
	exited  chan struct{}
	ready   func(ctx context.Context) error
}

// Start runs the process in its host and waits, bounded, until it is ready (an agent: its lease is live; the
// controller: its API answers). A process that exits meanwhile fails the start with its log's tail.
func (p *Proc) Start(ctx context.Context) error {
	logf, err := os.OpenFile(p.LogFile, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o600)
	if err != nil {
		return fmt.Errorf("%s: log file: %w", p.Name, err)
	}
	if st, err := logf.Stat(); err == nil {
		p.logFrom = st.Size()
	}
	p.cmd = p.Host.Command(context.Background(), p.bin, p.args...)
	p.cmd.Env = append(os.Environ(), p.env...)
	p.cmd.Stdout, p.cmd.Stderr = logf, logf
	err = p.cmd.Start()
	logf.Close()
	if err != nil {
		return fmt.Errorf("start %s in %s: %w", p.Name, p.Host.Name(), err)
	}
	p.exited = make(chan struct{})
	go func(cmd *exec.Cmd, done chan struct{}) { _ = cmd.Wait(); close(done) }(p.cmd, p.exited)
	deadline := time.Now().Add(startTimeout)
	for {
		rctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		err := p.ready(rctx)
		cancel()
		if err == nil {
			return nil
		}
		select {
		case <-p.exited:
			return fmt.Errorf("%s exited at start; log tail:\n%s", p.Name, p.LogTail())
		case <-ctx.Done():
			p.Stop()
			return fmt.Errorf("start %s: %w", p.Name, ctx.Err())
		case <-time.After(200 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			p.Stop()
			return fmt.Errorf("%s not ready within %s (%v); log tail:\n%s", p.Name, startTimeout, err, p.LogTail())
		}
	}
}

// Exited is closed once the started process has exited (nil before Start).
func (p *Proc) Exited() <-chan struct{} { return p.exited }

// Running reports whether the process was started and has not exited.
func (p *Proc) Running() bool {
	if p.exited == nil {
		return false
	}
	select {
	case <-p.exited:
		return false
	default:
		return true
	}
}

// Kill ends the process with SIGKILL (its whole process group): no cleanup of its own runs, as when its host
// loses power. It returns once the process has exited (bounded).
func (p *Proc) Kill() {
	if !p.Running() {
		return
	}
	_ = p.Host.Kill9(p.cmd)
	select {
	case <-p.exited:
	case <-time.After(stopTimeout):
	}
}

// Stop ends the process: SIGTERM to its group, then, after stopTimeout, SIGKILL. It returns once it has exited
// (bounded). An agent's instances keep running (Cluster.Close stops them).
func (p *Proc) Stop() {
	if !p.Running() {
		return
	}
	if err := syscall.Kill(-p.cmd.Process.Pid, syscall.SIGTERM); err != nil && !errors.Is(err, syscall.ESRCH) {
		_ = p.Host.Kill9(p.cmd)
	}
	select {
	case <-p.exited:
		return
	case <-time.After(stopTimeout):
	}
	_ = p.Host.Kill9(p.cmd)
	select {
	case <-p.exited:
	case <-time.After(stopTimeout):
	}
}

// loggedSinceStart reports whether the process has written s to its log since it was last started.
func (p *Proc) loggedSinceStart(s string) bool {
	f, err := os.Open(p.LogFile)
	if err != nil {
		return false
	}
	defer f.Close()
	if _, err := f.Seek(p.logFrom, io.SeekStart); err != nil {
		return false
	}
	raw, err := io.ReadAll(io.LimitReader(f, 1<<20))
	return err == nil && strings.Contains(string(raw), s)
}

// LogSize is the log's current size, an offset for LogSince.
func (p *Proc) LogSize() int64 {
	st, err := os.Stat(p.LogFile)
	if err != nil {
		return 0
	}
	return st.Size()
}

// LogSince returns the lines logged from offset on (at most the last 1 MiB) that contain any of match (all
// lines without match).
func (p *Proc) LogSince(offset int64, match ...string) []string {
	f, err := os.Open(p.LogFile)
	if err != nil {
		return nil
	}
	defer f.Close()
	if size := p.LogSize(); size-offset > 1<<20 {
		offset = size - 1<<20
	}
	if _, err := f.Seek(offset, io.SeekStart); err != nil {
		return nil
	}
	raw, _ := io.ReadAll(io.LimitReader(f, 1<<20))
	var out []string
	for _, line := range strings.Split(strings.TrimSpace(string(raw)), "\n") {
		keep := len(match) == 0
		for _, m := range match {
			keep = keep || strings.Contains(line, m)
		}
		if keep && line != "" {
			out = append(out, line)
		}
	}
	return out
}

// LogTail returns the last 30 lines of the process's log.
func (p *Proc) LogTail() string {
	raw, _ := os.ReadFile(p.LogFile)
	lines := strings.Split(strings.TrimSpace(string(raw)), "\n")
	if len(lines) > 30 {
		lines = lines[len(lines)-30:]
	}
	return strings.Join(lines, "\n")
}
