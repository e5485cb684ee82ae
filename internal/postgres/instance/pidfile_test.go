package instance_test

import (
	"context"
	"fmt"
	"os"
	osexec "os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/fogo-db/fogo/internal/postgres/instance"
	"github.com/fogo-db/fogo/internal/testutil/pgtest"
)

// writeStaleLockFile writes in's postmaster.pid as a crashed postmaster would have left it, naming pid, which
// started at start (seconds since the epoch).
func writeStaleLockFile(t *testing.T, in *instance.Instance, pid int, start int64) {
	t.Helper()
	body := fmt.Sprintf("%d\n%s\n%d\n%d\n\n127.0.0.1\n  1234567     98765\nready   \n", pid, in.Dir, start, in.Port)
	if err := in.Bin.WriteFileOwned(filepath.Join(in.Dir, "postmaster.pid"), []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
}

func lockFileStart(t *testing.T, in *instance.Instance) int64 {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join(in.Dir, "postmaster.pid"))
	if err != nil {
		t.Fatal(err)
	}
	var start int64
	if _, err := fmt.Sscan(strings.Split(string(raw), "\n")[2], &start); err != nil {
		t.Fatal(err)
	}
	return start
}

// notOurs checks that a stopped instance whose stale postmaster.pid names the live process pid is not taken as
// running, that no shutdown mode signals that process, and that the instance starts.
func notOurs(t *testing.T, in *instance.Instance, pid int, alive func() error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if got, running := in.Running(); running {
		t.Fatalf("Running() = %d, true for a lock file naming another process", got)
	}
	for _, mode := range []instance.ShutdownMode{instance.ShutdownFast, instance.ShutdownImmediate} {
		if err := in.Stop(ctx, mode); err != nil {
			t.Fatalf("Stop(%s): %v", mode, err)
		}
	}
	if err := in.TryShuttingDownFastImmediate(ctx, time.Second); err != nil {
		t.Fatal(err)
	}
	time.Sleep(300 * time.Millisecond) // a signalled postmaster would be gone by now
	if err := alive(); err != nil {
		t.Fatalf("process %d named by the stale lock file was hurt: %v", pid, err)
	}
	if err := in.Start(ctx); err != nil {
		t.Fatalf("start with a stale lock file: %v", err)
	}
	if got, running := in.Running(); !running || got == pid {
		t.Fatalf("after Start: Running() = %d, %v", got, running)
	}
	if err := alive(); err != nil {
		t.Fatalf("process %d named by the stale lock file was hurt: %v", pid, err)
	}
}

// TestStaleLockFileNamesAnotherPostmaster: after a crash, postmaster.pid names a PID that is now another
// instance's postmaster (with the very start time the lock file records): fogo must neither take it for this
// instance's postmaster nor signal it on stop.
func TestStaleLockFileNamesAnotherPostmaster(t *testing.T) {
	ctx := context.Background()
	a := pgtest.NewPrimary(t)
	b := pgtest.NewPrimary(t)
	bpid, running := b.Running()
	if !running {
		t.Fatal("b is not running")
	}
	if err := a.Stop(ctx, instance.ShutdownFast); err != nil {
		t.Fatal(err)
	}
	writeStaleLockFile(t, a, bpid, lockFileStart(t, b))
	notOurs(t, a, bpid, func() error {
		if pid, running := b.Running(); !running || pid != bpid {
			return fmt.Errorf("b: Running() = %d, %v", pid, running)
		}
		c, err := b.Connect(ctx, "postgres")
		if err == nil {
			c.Close(ctx)
		}
		return err
	})
}

// TestStaleLockFileNamesUnrelatedProcess: the PID now belongs to a program that merely calls itself postgres
// (the old guard looked for that word in its command line), started when the lock file says.
func TestStaleLockFileNamesUnrelatedProcess(t *testing.T) {
	ctx := context.Background()
	a := pgtest.NewPrimary(t)
	if err := a.Stop(ctx, instance.ShutdownFast); err != nil {
		t.Fatal(err)
	}
	fake := osexec.Command("bash", "-c", "exec -a postgres sleep 120")
	fake.Dir = t.TempDir()
	if err := fake.Start(); err != nil {
		t.Fatal(err)
	}
	started := time.Now().Unix()
	exited := make(chan error, 1)
	go func() { exited <- fake.Wait() }()
	t.Cleanup(func() { _ = fake.Process.Kill() })
	pid := fake.Process.Pid
	for deadline := time.Now().Add(5 * time.Second); ; {
		cmd, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		if strings.HasPrefix(string(cmd), "postgres\x00") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("fake process: cmdline %q", cmd)
		}
		time.Sleep(10 * time.Millisecond)
	}
	writeStaleLockFile(t, a, pid, started)
	notOurs(t, a, pid, func() error {
		select {
		case err := <-exited:
			return fmt.Errorf("exited: %v", err)
		default:
			return syscall.Kill(pid, 0)
		}
	})
}
