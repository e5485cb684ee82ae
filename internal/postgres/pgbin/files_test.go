package pgbin_test

import (
	"context"
	"errors"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/fogo-db/fogo/internal/postgres/pgbin"
	"github.com/fogo-db/fogo/internal/testutil/pgtest"
)

func rootBin(t *testing.T) (*pgbin.Bin, int, int) {
	t.Helper()
	b := pgtest.Bin(t)
	if !b.IsRoot() {
		t.Skip("needs root: without it fogo and the postgres user are the same user")
	}
	u, err := user.Lookup("postgres")
	if err != nil {
		t.Fatal(err)
	}
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
	return b, uid, gid
}

// plant makes a symbolic link at path to target, owned by the postgres user, as that user could.
func plant(t *testing.T, target, path string, uid, gid int) {
	t.Helper()
	if err := os.Symlink(target, path); err != nil {
		t.Fatal(err)
	}
	if err := os.Lchown(path, uid, gid); err != nil {
		t.Fatal(err)
	}
}

type fileState struct {
	content string
	mode    os.FileMode
	uid     uint32
}

func stateOf(t *testing.T, path string) fileState {
	t.Helper()
	st, err := os.Lstat(path)
	if err != nil {
		t.Fatal(err)
	}
	var content []byte
	if st.Mode().IsRegular() {
		content, _ = os.ReadFile(path)
	}
	return fileState{string(content), st.Mode(), st.Sys().(*syscall.Stat_t).Uid}
}

// TestWriteFileOwnedDoesNotFollowLinks: links the postgres user plants at a file's temporary name, at the file
// itself, or as a directory on the way, never make root write, chmod or chown a root-owned file or directory.
func TestWriteFileOwnedDoesNotFollowLinks(t *testing.T) {
	b, uid, gid := rootBin(t)
	base := t.TempDir()
	secret := filepath.Join(base, "rootonly")
	if err := os.Mkdir(secret, 0o755); err != nil {
		t.Fatal(err)
	}
	victim := filepath.Join(secret, "precious")
	if err := os.WriteFile(victim, []byte("root's file\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	before, dirBefore := stateOf(t, victim), stateOf(t, secret)
	data := filepath.Join(base, "pgdata")
	if err := b.MkdirOwned(data); err != nil {
		t.Fatal(err)
	}
	untouched := func(step string) {
		t.Helper()
		if got := stateOf(t, victim); got != before {
			t.Fatalf("%s: the root-owned file changed: %+v, was %+v", step, got, before)
		}
		if got := stateOf(t, secret); got != dirBefore {
			t.Fatalf("%s: the root-owned directory changed: %+v, was %+v", step, got, dirBefore)
		}
		if _, err := os.Lstat(filepath.Join(secret, "state")); err == nil {
			t.Fatalf("%s: a file appeared in the root-owned directory", step)
		}
	}
	owned := func(path, want string) {
		t.Helper()
		got := stateOf(t, path)
		if got.content != want || got.mode != 0o600 || got.uid != uint32(uid) {
			t.Fatalf("%s: %+v, want a 0600 file of the postgres user holding %q", path, got, want)
		}
	}

	// A link at the temporary name the old code used (path + ".tmp", opened with O_TRUNC).
	plant(t, victim, filepath.Join(data, "fogo.conf.tmp"), uid, gid)
	if err := b.WriteFileOwned(filepath.Join(data, "fogo.conf"), []byte("port = 5\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	untouched("link at path.tmp")
	owned(filepath.Join(data, "fogo.conf"), "port = 5\n")

	// A link at the file itself is replaced, not followed.
	plant(t, victim, filepath.Join(data, "pgpass"), uid, gid)
	if err := b.WriteFileOwned(filepath.Join(data, "pgpass"), []byte("*:*:*:u:p\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	untouched("link at path")
	owned(filepath.Join(data, "pgpass"), "*:*:*:u:p\n")

	// A directory on the way swapped for a link to a root-owned directory.
	plant(t, secret, filepath.Join(data, "pg_replslot"), uid, gid)
	if err := b.WriteFileOwned(filepath.Join(data, "pg_replslot", "state"), []byte("x"), 0o600); !errors.Is(err, pgbin.ErrUntrustedLink) {
		t.Fatalf("write through a planted directory link: %v", err)
	}
	untouched("link as a directory")
	if err := b.MkdirOwned(filepath.Join(data, "pg_replslot")); !errors.Is(err, pgbin.ErrUntrustedLink) {
		t.Fatalf("MkdirOwned over a planted link: %v", err)
	}
	untouched("MkdirOwned over a link")
	if err := b.MkdirOwned(filepath.Join(data, "pg_replslot", "fogo_x")); !errors.Is(err, pgbin.ErrUntrustedLink) {
		t.Fatalf("MkdirOwned below a planted link: %v", err)
	}
	untouched("MkdirOwned below a link")

	// Reading through a planted link (a configuration file fogo rewrites) is refused too.
	plant(t, victim, filepath.Join(data, "postgresql.conf"), uid, gid)
	if _, err := pgbin.ReadFile(filepath.Join(data, "postgresql.conf")); !errors.Is(err, pgbin.ErrUntrustedLink) {
		t.Fatalf("read through a planted link: %v", err)
	}
	if got, err := pgbin.ReadFile(filepath.Join(data, "fogo.conf")); err != nil || string(got) != "port = 5\n" {
		t.Fatalf("ReadFile: %q %v", got, err)
	}

	// No temporary file is left behind.
	entries, _ := os.ReadDir(data)
	for _, e := range entries {
		if strings.Contains(e.Name(), ".tmp-") {
			t.Fatalf("left behind: %s", e.Name())
		}
	}

	// A link root made itself, in a directory only root can write, is still followed.
	real := filepath.Join(base, "real")
	if err := os.Mkdir(real, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(real, filepath.Join(base, "via-link")); err != nil {
		t.Fatal(err)
	}
	if err := b.WriteFileOwned(filepath.Join(base, "via-link", "f"), []byte("ok"), 0o600); err != nil {
		t.Fatalf("write through root's own link: %v", err)
	}
	owned(filepath.Join(real, "f"), "ok")
}

// TestAllowTraverseLeavesSystemDirectoriesAlone: a data directory below a home directory like /root (simulated
// by a 0700 directory) is refused with an error that names it, and its mode is left as it was; with search
// permission granted by the operator, only fogo's own directories are opened up. The real /root is never changed.
func TestAllowTraverseLeavesSystemDirectoriesAlone(t *testing.T) {
	b, _, _ := rootBin(t)
	base := pgtest.TempDir(t)
	home := filepath.Join(base, "root")
	if err := os.Mkdir(home, 0o700); err != nil {
		t.Fatal(err)
	}
	dataDir := filepath.Join(home, "fogo-data")
	instances := filepath.Join(dataDir, "instances")
	if err := os.MkdirAll(instances, 0o700); err != nil {
		t.Fatal(err)
	}
	err := b.AllowTraverse(dataDir, instances)
	if err == nil || !strings.Contains(err.Error(), home) {
		t.Fatalf("AllowTraverse below a 0700 home directory: %v", err)
	}
	if m := stateOf(t, home).mode.Perm(); m != 0o700 {
		t.Fatalf("the home directory's mode became %#o", m)
	}
	if err := os.Chmod(home, 0o711); err != nil { // the operator grants it knowingly
		t.Fatal(err)
	}
	if err := b.AllowTraverse(dataDir, instances); err != nil {
		t.Fatal(err)
	}
	if m := stateOf(t, home).mode.Perm(); m != 0o711 {
		t.Fatalf("the home directory's mode became %#o", m)
	}
	for _, d := range []string{dataDir, instances} {
		if m := stateOf(t, d).mode.Perm(); m != 0o701 {
			t.Fatalf("%s: mode %#o, want 0701 (search only for others)", d, m)
		}
	}
	if _, err := b.Run(context.Background(), nil, "/usr/bin/test", "-x", instances); err != nil {
		t.Fatalf("the postgres user cannot reach the instances directory: %v", err)
	}

	rootBefore := stateOf(t, "/root")
	for _, top := range []string{"/root", "/", "/tmp"} {
		if err := b.AllowTraverse(top, filepath.Join(top, "fogo-data")); err == nil {
			t.Fatalf("AllowTraverse(%s) accepted a system directory", top)
		}
	}
	if got := stateOf(t, "/root"); got != rootBefore {
		t.Fatalf("/root changed: %+v, was %+v", got, rootBefore)
	}
	if err := b.AllowTraverse(dataDir, filepath.Join(base, "elsewhere")); err == nil {
		t.Fatal("AllowTraverse accepted a directory outside top")
	}
}
