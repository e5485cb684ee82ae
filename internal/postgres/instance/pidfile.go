package instance

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"

	"github.com/fogo-db/fogo/internal/postgres/pgbin"
)

// The postmaster's lock file, postmaster.pid, outlives a crash (kill -9, power loss), and its PID can then belong
// to any other process: another instance's postmaster, a backend, a sleep. Taking that process for our postmaster
// would report the instance as running, send it the shutdown signals of Stop (a fence!), and keep Start waiting.
// So a PID is ours only if the process is a postmaster of this data directory (see identify).

// lockFile is what postmaster.pid says (src/include/miscadmin.h, LOCK_FILE_LINE_*): the PID on line 1, the data
// directory on line 2, the postmaster's start time in seconds since the epoch on line 3.
type lockFile struct {
	pid   int
	dir   string
	start int64 // 0 when the line is missing (a lock file still being written)
}

func readLockFile(dir string) (lockFile, bool) {
	raw, err := pgbin.ReadFile(filepath.Join(dir, "postmaster.pid"))
	if err != nil {
		return lockFile{}, false
	}
	lines := strings.Split(string(raw), "\n")
	pid, err := strconv.Atoi(strings.TrimSpace(lines[0]))
	if err != nil || pid <= 0 {
		return lockFile{}, false
	}
	lf := lockFile{pid: pid}
	if len(lines) > 1 {
		lf.dir = strings.TrimSpace(lines[1])
	}
	if len(lines) > 2 {
		lf.start, _ = strconv.ParseInt(strings.TrimSpace(lines[2]), 10, 64)
	}
	return lf, true
}

// Owner is who holds the lock file's PID.
type Owner int

// Owners of a lock file's PID.
const (
	OwnerNone    Owner = iota // no lock file, or its PID is not alive
	OwnerOurs                 // this data directory's postmaster
	OwnerZombie               // this data directory's postmaster, killed but not yet reaped
	OwnerForeign              // another process: the lock file is stale
	OwnerUnsure               // looks like ours by its command line, but its start time disagrees
)

// startSlack is how far the process's start time may be from the lock file's: the postmaster writes time(NULL)
// (truncated to the second) moments after pg_ctl forked it, and /proc/stat's btime is itself rounded.
const startSlack = 3

// identify tells whose the lock file's PID is. A postmaster's working directory is its data directory
// (ChangeToDataDir), so when /proc/PID/cwd can be read (root with CAP_SYS_PTRACE, or the same OS user) it decides
// alone: another instance's postmaster, or any unrelated process, has another one. When it cannot be read (a
// container without CAP_SYS_PTRACE), the command line must carry `-D <this directory>` and the process must have
// started when the lock file says. A zombie has neither; its start time must match.
func identify(dir string, lf lockFile) Owner {
	if err := syscall.Kill(lf.pid, 0); err != nil && !errors.Is(err, syscall.EPERM) {
		return OwnerNone
	}
	started, state, err := procStart(lf.pid)
	if err != nil {
		return OwnerNone // gone since kill(0)
	}
	startMatches := lf.start > 0 && started-float64(lf.start) <= startSlack && float64(lf.start)-started <= startSlack
	if state == 'Z' {
		if startMatches {
			return OwnerZombie
		}
		return OwnerForeign
	}
	if cwd, err := os.Readlink(fmt.Sprintf("/proc/%d/cwd", lf.pid)); err == nil {
		if sameDir(cwd, dir) {
			return OwnerOurs
		}
		return OwnerForeign
	}
	cmd, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", lf.pid))
	if err != nil || !cmdlineHasDataDir(cmd, dir) {
		return OwnerForeign
	}
	if !startMatches {
		return OwnerUnsure
	}
	return OwnerOurs
}

// cmdlineHasDataDir reports whether a NUL-separated command line is a postgres with `-D dir` (or -Ddir).
func cmdlineHasDataDir(cmdline []byte, dir string) bool {
	args := strings.Split(string(bytes.TrimRight(cmdline, "\x00")), "\x00")
	if len(args) == 0 || !strings.Contains(filepath.Base(args[0]), "postgres") {
		return false
	}
	for k, a := range args {
		switch {
		case a == "-D" && k+1 < len(args):
			if sameDir(args[k+1], dir) {
				return true
			}
		case strings.HasPrefix(a, "-D") && len(a) > 2:
			if sameDir(a[2:], dir) {
				return true
			}
		}
	}
	return false
}

// sameDir compares two absolute directory paths, through symbolic links where they resolve.
func sameDir(a, b string) bool {
	if !filepath.IsAbs(a) {
		return false
	}
	a, b = filepath.Clean(a), filepath.Clean(b)
	if a == b {
		return true
	}
	ra, err1 := filepath.EvalSymlinks(a)
	rb, err2 := filepath.EvalSymlinks(b)
	return err1 == nil && err2 == nil && ra == rb
}

// procStart returns when a process started (seconds since the epoch) and its state letter, from /proc/PID/stat
// field 22 (clock ticks since boot; USER_HZ is 100 on every Linux ABI) and /proc/stat's btime.
func procStart(pid int) (float64, byte, error) {
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, 0, err
	}
	// The command name (field 2) is in parentheses and may hold spaces: count fields after the last ')'.
	j := bytes.LastIndexByte(stat, ')')
	if j < 0 {
		return 0, 0, fmt.Errorf("/proc/%d/stat: malformed", pid)
	}
	fields := strings.Fields(string(stat[j+1:])) // fields[0] is field 3 (state)
	if len(fields) < 20 || len(fields[0]) == 0 {
		return 0, 0, fmt.Errorf("/proc/%d/stat: malformed", pid)
	}
	ticks, err := strconv.ParseUint(fields[19], 10, 64) // field 22
	if err != nil {
		return 0, 0, fmt.Errorf("/proc/%d/stat: starttime: %w", pid, err)
	}
	boot, err := bootTime()
	if err != nil {
		return 0, 0, err
	}
	return float64(boot) + float64(ticks)/100, fields[0][0], nil
}

// bootTime is the system's boot time (btime of /proc/stat), read once: it does not change while fogo runs, and
// Running, which needs it, is polled every few milliseconds while an instance stops.
var bootTime = sync.OnceValues(readBootTime)

func readBootTime() (int64, error) {
	raw, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(raw), "\n") {
		if v, ok := strings.CutPrefix(line, "btime "); ok {
			return strconv.ParseInt(strings.TrimSpace(v), 10, 64)
		}
	}
	return 0, errors.New("/proc/stat: no btime")
}

// removeStaleLockFile deletes postmaster.pid when the process it names is certainly not this directory's
// postmaster: PostgreSQL refuses to start while the PID in its lock file is alive, whoever it belongs to.
func removeStaleLockFile(dir string) error {
	lf, ok := readLockFile(dir)
	if !ok || identify(dir, lf) != OwnerForeign {
		return nil
	}
	if again, ok := readLockFile(dir); !ok || again != lf {
		return nil // rewritten meanwhile: a postmaster started
	}
	if err := os.Remove(filepath.Join(dir, "postmaster.pid")); err != nil && !os.IsNotExist(err) {
		return fmt.Errorf("remove stale postmaster.pid (PID %d is another process): %w", lf.pid, err)
	}
	return nil
}
