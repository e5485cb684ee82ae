package instance

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/fogo-db/fogo/internal/postgres/pgbin"
)

// Host is the machine that holds an instance's data directory: everything fogo does to an instance besides SQL
// goes through it. LocalHost is this machine (the embedded mode, and the agent's own side); in cluster mode the
// agent package's client reaches the agent of another machine.
//
// Every path is absolute and names something inside an instance's home directory; a remote host refuses any
// other path. Remove and RemoveAll of something missing are not errors.
type Host interface {
	// Run runs a PostgreSQL program (initdb, pg_ctl, pg_basebackup, pg_rewind, pg_controldata) as the
	// instances' OS user and returns its output.
	Run(ctx context.Context, env []string, program string, args ...string) (string, error)
	ReadFile(path string) ([]byte, error)
	// WriteFile writes a file owned by the instances' OS user, without following links.
	WriteFile(path string, data []byte, mode os.FileMode) error
	// MkdirAll makes a directory (and its parents) owned by the instances' OS user.
	MkdirAll(dir string) error
	Remove(path string) error
	RemoveAll(path string) error
	Exists(path string) (bool, error)
	// ReadDir lists the names of the directories in dir; a missing dir is an os.ErrNotExist error.
	ReadDir(dir string) ([]string, error)
	SyncDir(dir string) error
	// Postmaster identifies the process that dir's postmaster.pid names.
	Postmaster(dir string) (Postmaster, error)
	// RemoveStaleLock deletes dir's postmaster.pid when the process it names is certainly not its postmaster.
	RemoveStaleLock(dir string) error
	// Signal sends sig to dir's postmaster, and only to it.
	Signal(dir string, sig syscall.Signal) error
	// Shutdown sends a shutdown signal (SIGTERM, SIGINT or SIGQUIT) to dir's postmaster and waits, up to
	// timeout, until it has exited and removed its lock file; a postmaster that does not run is not an error.
	// The host watches for the end itself: across the network that is one round trip, not one per poll.
	Shutdown(ctx context.Context, dir string, sig syscall.Signal, timeout time.Duration) error
	// KillPostmaster sends SIGKILL to dir's postmaster and to every process it started.
	KillPostmaster(dir string) error
}

// Postmaster is who holds a data directory's lock file.
type Postmaster struct {
	PID   int   `json:"pid"`
	Owner Owner `json:"owner"`
}

// LocalHost is this machine: programs run through Bin, files are read and written directly.
type LocalHost struct{ Bin *pgbin.Bin }

// Run runs a PostgreSQL program.
func (h LocalHost) Run(ctx context.Context, env []string, program string, args ...string) (string, error) {
	return h.Bin.Run(ctx, env, program, args...)
}

// ReadFile reads a file without following a link in its last component.
func (h LocalHost) ReadFile(path string) ([]byte, error) { return pgbin.ReadFile(path) }

// WriteFile writes a file owned by the instances' OS user.
func (h LocalHost) WriteFile(path string, data []byte, mode os.FileMode) error {
	return h.Bin.WriteFileOwned(path, data, mode)
}

// MkdirAll makes a directory owned by the instances' OS user.
func (h LocalHost) MkdirAll(dir string) error { return h.Bin.MkdirOwned(dir) }

// Remove deletes a file or an empty directory; a missing one is fine.
func (h LocalHost) Remove(path string) error {
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	return nil
}

// RemoveAll deletes a tree.
func (h LocalHost) RemoveAll(path string) error { return os.RemoveAll(path) }

// Exists reports whether path exists.
func (h LocalHost) Exists(path string) (bool, error) {
	_, err := os.Lstat(path)
	switch {
	case err == nil:
		return true, nil
	case errors.Is(err, os.ErrNotExist):
		return false, nil
	}
	return false, err
}

// ReadDir lists the directories in dir.
func (h LocalHost) ReadDir(dir string) ([]string, error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	var out []string
	for _, e := range entries {
		if e.IsDir() {
			out = append(out, e.Name())
		}
	}
	return out, nil
}

// SyncDir makes a directory's entries durable.
func (h LocalHost) SyncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// Postmaster identifies the process that dir's postmaster.pid names (see identify).
func (h LocalHost) Postmaster(dir string) (Postmaster, error) {
	lf, ok := readLockFile(dir)
	if !ok {
		return Postmaster{Owner: OwnerNone}, nil
	}
	return Postmaster{PID: lf.pid, Owner: identify(dir, lf)}, nil
}

// RemoveStaleLock deletes postmaster.pid when the process it names is another one.
func (h LocalHost) RemoveStaleLock(dir string) error { return removeStaleLockFile(dir) }

// Signal sends sig to dir's postmaster if it runs.
func (h LocalHost) Signal(dir string, sig syscall.Signal) error {
	lf, ok := readLockFile(dir)
	if !ok || identify(dir, lf) != OwnerOurs {
		return fmt.Errorf("signal the postmaster of %s: it does not run", dir)
	}
	return syscall.Kill(lf.pid, sig)
}

// Shutdown signals dir's postmaster and watches every few milliseconds until it is gone (pg_ctl -w polls ten
// times a second, which is up to 100 ms of write unavailability in a planned failover).
func (h LocalHost) Shutdown(ctx context.Context, dir string, sig syscall.Signal, timeout time.Duration) error {
	if pm, err := h.Postmaster(dir); err != nil || pm.Owner != OwnerOurs {
		return err
	}
	if err := h.Signal(dir, sig); err != nil {
		if pm, perr := h.Postmaster(dir); perr == nil && pm.Owner != OwnerOurs {
			return nil // it ended between the two looks
		}
		return err
	}
	deadline := time.Now().Add(timeout)
	for {
		pm, err := h.Postmaster(dir)
		if err != nil {
			return err
		}
		if pm.Owner != OwnerOurs {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("stop %s: still running after %s", dir, timeout)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(2 * time.Millisecond):
		}
	}
}

// KillPostmaster sends SIGKILL to dir's postmaster and to its children (listed first: once the postmaster is gone
// they are reparented and no longer recognisable).
func (h LocalHost) KillPostmaster(dir string) error {
	lf, ok := readLockFile(dir)
	if !ok || identify(dir, lf) != OwnerOurs {
		return nil
	}
	children := childrenOf(lf.pid)
	if err := syscall.Kill(lf.pid, syscall.SIGKILL); err != nil {
		return fmt.Errorf("SIGKILL of postmaster %d failed: %w", lf.pid, err)
	}
	for _, c := range children {
		_ = syscall.Kill(c, syscall.SIGKILL)
	}
	return nil
}

// childrenOf lists the processes whose parent is pid (from /proc).
func childrenOf(pid int) []int {
	entries, _ := os.ReadDir("/proc")
	var out []int
	for _, e := range entries {
		child, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		stat, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if err != nil {
			continue
		}
		// Fields after the command (which may hold spaces) start after the last ')': state, ppid, ...
		s := string(stat)
		j := strings.LastIndexByte(s, ')')
		if j < 0 {
			continue
		}
		fields := strings.Fields(s[j+1:])
		if len(fields) > 1 && fields[1] == strconv.Itoa(pid) {
			out = append(out, child)
		}
	}
	return out
}

// machine is where the instance's data directory is: On, or this machine.
func (i *Instance) machine() Host {
	if i.On != nil {
		return i.On
	}
	return LocalHost{Bin: i.Bin}
}

// Kill sends SIGKILL to the postmaster and to every process it started, then waits (up to timeout) until the
// postmaster is gone.
func (i *Instance) Kill(ctx context.Context, timeout time.Duration) error {
	pid, running := i.Running()
	if !running {
		return nil
	}
	if err := i.machine().KillPostmaster(i.Dir); err != nil {
		return err
	}
	deadline := time.Now().Add(timeout)
	for {
		if _, running := i.Running(); !running {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("postmaster %d still runs %s after SIGKILL", pid, timeout)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
}
