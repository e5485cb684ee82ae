package instance

import (
	"os"
	"os/exec"
	"testing"
	"time"
)

// The fallback when /proc/PID/cwd cannot be read: the command line must be a postgres with -D of this directory.
func TestCmdlineHasDataDir(t *testing.T) {
	dir := "/var/lib/fogo/instances/i1/pgdata"
	for _, c := range []struct {
		cmdline string
		want    bool
	}{
		{"/usr/lib/postgresql/15/bin/postgres\x00-D\x00" + dir + "\x00", true},
		{"/usr/lib/postgresql/15/bin/postgres\x00-D" + dir + "/\x00", true},
		{"/usr/lib/postgresql/15/bin/postgres\x00-D\x00/var/lib/fogo/instances/i2/pgdata\x00", false},
		{"postgres\x00120\x00", false},
		{"sleep\x00-D\x00" + dir + "\x00", false},
		{"/usr/lib/postgresql/15/bin/postgres\x00-D\x00pgdata\x00", false}, // relative: cannot tell
	} {
		if got := cmdlineHasDataDir([]byte(c.cmdline), dir); got != c.want {
			t.Errorf("cmdlineHasDataDir(%q) = %v", c.cmdline, got)
		}
	}
}

// procStart reads a process's start time in seconds since the epoch, close to the wall clock at its fork.
func TestProcStart(t *testing.T) {
	before := time.Now()
	cmd := exec.Command("sleep", "5")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()
	started, state, err := procStart(cmd.Process.Pid)
	if err != nil {
		t.Fatal(err)
	}
	if d := started - float64(before.UnixNano())/1e9; d < -startSlack || d > startSlack {
		t.Fatalf("procStart is %.2fs off the fork", d)
	}
	if state != 'S' && state != 'R' {
		t.Fatalf("state %q", state)
	}
	if _, _, err := procStart(os.Getpid()); err != nil {
		t.Fatal(err)
	}
}
