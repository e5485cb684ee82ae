// Package pgbin finds the PostgreSQL 15 server binaries and runs them.
//
// PostgreSQL refuses to run as root, so when fogo itself runs as root every command is started as the
// unprivileged "postgres" OS user, and every directory an instance owns is chowned to that user. When fogo runs as
// an ordinary user, commands run as that user and nothing is chowned. Root never follows a link that user could
// have planted in those directories (files.go).
package pgbin

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
)

// DefaultDir is where Debian's postgresql-15 package installs the server binaries.
const DefaultDir = "/usr/lib/postgresql/15/bin"

// RequiredMajor is the PostgreSQL major version fogo is built and verified for.
const RequiredMajor = 15

// ErrNotFound says that no usable PostgreSQL 15 installation was found.
var ErrNotFound = errors.New("postgresql 15 binaries not found")

// Bin runs PostgreSQL programs from one bin directory, as the right OS user.
type Bin struct {
	Dir string
	// cred is non-nil when commands must switch to the postgres OS user.
	cred *syscall.Credential
	home string
}

// Discover returns the binaries in dir, or, when dir is empty, in `pg_config --bindir` (if that is version 15)
// or DefaultDir. It checks that `postgres --version` reports major version 15.
func Discover(dir string) (*Bin, error) {
	candidates := []string{dir}
	if dir == "" {
		candidates = nil
		if out, err := exec.Command("pg_config", "--bindir").Output(); err == nil {
			candidates = append(candidates, strings.TrimSpace(string(out)))
		}
		candidates = append(candidates, DefaultDir)
	}
	var lastErr error = ErrNotFound
	for _, c := range candidates {
		b, err := open(c)
		if err == nil {
			return b, nil
		}
		lastErr = err
	}
	return nil, lastErr
}

func open(dir string) (*Bin, error) {
	out, err := exec.Command(filepath.Join(dir, "postgres"), "--version").Output()
	if err != nil {
		return nil, fmt.Errorf("%w in %s: %v", ErrNotFound, dir, err)
	}
	// "postgres (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)"
	fields := strings.Fields(string(out))
	if len(fields) < 3 || !strings.HasPrefix(fields[2], strconv.Itoa(RequiredMajor)+".") {
		return nil, fmt.Errorf("%w in %s: found %q", ErrNotFound, dir, strings.TrimSpace(string(out)))
	}
	b := &Bin{Dir: dir}
	if os.Geteuid() == 0 {
		u, err := user.Lookup("postgres")
		if err != nil {
			return nil, fmt.Errorf("running as root needs the postgres OS user: %w", err)
		}
		uid, _ := strconv.Atoi(u.Uid)
		gid, _ := strconv.Atoi(u.Gid)
		b.cred = &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}
		b.home = u.HomeDir
	}
	return b, nil
}

// Path returns the absolute path of the named program.
// An absolute path names another program (e.g. pgbouncer for the benchmarks), run the same way.
func (b *Bin) Path(program string) string {
	if filepath.IsAbs(program) {
		return program
	}
	return filepath.Join(b.Dir, program)
}

// Command prepares program with args, to run as the postgres OS user when fogo is root. Extra environment entries
// (e.g. "PGPASSWORD=...") are appended to a minimal environment; they are never logged by this package.
func (b *Bin) Command(ctx context.Context, env []string, program string, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, b.Path(program), args...)
	base := []string{"PATH=/usr/bin:/bin", "LC_ALL=C", "LANG=C"}
	if b.cred != nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: b.cred}
		base = append(base, "HOME="+b.home, "USER=postgres")
	} else if h, err := os.UserHomeDir(); err == nil {
		base = append(base, "HOME="+h)
	}
	cmd.Env = append(base, env...)
	return cmd
}

// Run runs program and returns its combined output. A failure is reported with the program name, the exit status
// and the last lines of output (never the environment, which may hold a password).
func (b *Bin) Run(ctx context.Context, env []string, program string, args ...string) (string, error) {
	cmd := b.Command(ctx, env, program, args...)
	var out bytes.Buffer
	cmd.Stdout = &out
	cmd.Stderr = &out
	err := cmd.Run()
	if err != nil {
		return out.String(), fmt.Errorf("%s: %w: %s", program, err, tail(out.String(), 800))
	}
	return out.String(), nil
}

// IsRoot reports whether commands switch to the postgres OS user.
func (b *Bin) IsRoot() bool { return b.cred != nil }

func tail(s string, n int) string {
	s = strings.TrimSpace(s)
	if len(s) > n {
		s = "…" + s[len(s)-n:]
	}
	return s
}
