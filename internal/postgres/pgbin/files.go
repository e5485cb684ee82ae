package pgbin

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"
)

// Files inside an instance's directories are written by root into directories the postgres OS user owns. That user
// (or anything running as it: a compromised backend, an extension, COPY ... TO PROGRAM) can plant a symbolic
// link there at any moment, so root must never follow a link it did not make itself: a write through one would
// clobber, chmod or chown any file on the machine. So paths are walked one component at a time with O_NOFOLLOW
// (openDir), files are created under fresh random names with O_EXCL, their mode and owner are set on the open
// descriptor, and they take their final name by rename, which replaces a link instead of following it.

// ErrUntrustedLink is a symbolic link on the way to a file fogo writes that someone other than root (or fogo's own
// user) could have planted.
var ErrUntrustedLink = errors.New("refusing to follow a symbolic link in a directory other users can write")

// maxLinks bounds the symbolic links one path may go through (the kernel's own limit is 40).
const maxLinks = 40

// openDir opens the directory dir, creating missing components with mode 0700 when create is set, and returns a
// descriptor usable with the *at system calls (O_PATH, no read permission needed). A symbolic link on the way is
// followed only if it is trusted (trustedLink); any other is refused with ErrUntrustedLink.
func openDir(dir string, create bool) (int, error) {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return -1, err
	}
	fd, err := unix.Open("/", unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return -1, &os.PathError{Op: "open", Path: "/", Err: err}
	}
	rest := strings.Split(strings.TrimPrefix(abs, "/"), "/")
	walked, links := "/", 0
	for len(rest) > 0 {
		c := rest[0]
		rest = rest[1:]
		if c == "" || c == "." {
			continue
		}
		var st unix.Stat_t
		err := unix.Fstatat(fd, c, &st, unix.AT_SYMLINK_NOFOLLOW)
		if errors.Is(err, unix.ENOENT) && create {
			if err := unix.Mkdirat(fd, c, 0o700); err != nil && !errors.Is(err, unix.EEXIST) {
				unix.Close(fd)
				return -1, &os.PathError{Op: "mkdir", Path: filepath.Join(walked, c), Err: err}
			}
			err = unix.Fstatat(fd, c, &st, unix.AT_SYMLINK_NOFOLLOW)
		}
		if err != nil {
			unix.Close(fd)
			return -1, &os.PathError{Op: "stat", Path: filepath.Join(walked, c), Err: err}
		}
		if st.Mode&unix.S_IFMT == unix.S_IFLNK {
			if links++; links > maxLinks || !trustedLink(fd, &st) {
				unix.Close(fd)
				if links > maxLinks {
					return -1, &os.PathError{Op: "open", Path: filepath.Join(walked, c), Err: unix.ELOOP}
				}
				return -1, fmt.Errorf("%s: %w", filepath.Join(walked, c), ErrUntrustedLink)
			}
			target, err := readlinkat(fd, c)
			if err != nil {
				unix.Close(fd)
				return -1, &os.PathError{Op: "readlink", Path: filepath.Join(walked, c), Err: err}
			}
			rest = append(strings.Split(target, "/"), rest...)
			if filepath.IsAbs(target) {
				root, err := unix.Open("/", unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
				unix.Close(fd)
				if err != nil {
					return -1, &os.PathError{Op: "open", Path: "/", Err: err}
				}
				fd, walked = root, "/"
			}
			continue
		}
		next, err := unix.Openat(fd, c, unix.O_PATH|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
		unix.Close(fd)
		if err != nil { // ENOTDIR also when it was swapped for a link since the Fstatat
			return -1, &os.PathError{Op: "open", Path: filepath.Join(walked, c), Err: err}
		}
		fd, walked = next, filepath.Join(walked, c)
	}
	return fd, nil
}

// trustedLink: a link may be followed if it belongs to root or to fogo's own user, in a directory that belongs to
// one of them and that no one else can write (or that is sticky, like /tmp, where others cannot replace it).
func trustedLink(dirfd int, link *unix.Stat_t) bool {
	self := uint32(os.Geteuid())
	if link.Uid != 0 && link.Uid != self {
		return false
	}
	var dir unix.Stat_t
	if err := unix.Fstat(dirfd, &dir); err != nil {
		return false
	}
	if dir.Uid != 0 && dir.Uid != self {
		return false
	}
	return dir.Mode&0o022 == 0 || dir.Mode&unix.S_ISVTX != 0
}

func readlinkat(dirfd int, name string) (string, error) {
	for size := 256; ; size *= 2 {
		buf := make([]byte, size)
		n, err := unix.Readlinkat(dirfd, name, buf)
		if err != nil {
			return "", err
		}
		if n < size {
			return string(buf[:n]), nil
		}
	}
}

func randomSuffix() string {
	b := make([]byte, 8)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// owner is the uid and gid files and directories get: the postgres OS user's when fogo is root, else -1 (unchanged).
func (b *Bin) owner() (int, int) {
	if b.cred == nil {
		return -1, -1
	}
	return int(b.cred.Uid), int(b.cred.Gid)
}

// WriteFileOwned writes a file owned by the postgres OS user with the given mode, atomically: a new file under a
// random name (O_EXCL|O_NOFOLLOW), mode and owner set on its descriptor, fsync, then rename over path. A link
// planted at path is replaced, never followed; one planted on the way to it is refused (openDir).
func (b *Bin) WriteFileOwned(path string, data []byte, mode os.FileMode) error {
	dirfd, err := openDir(filepath.Dir(path), false)
	if err != nil {
		return err
	}
	defer unix.Close(dirfd)
	name := filepath.Base(path)
	tmp := "." + name + ".tmp-" + randomSuffix()
	fd, err := unix.Openat(dirfd, tmp, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC, uint32(mode.Perm()))
	if err != nil {
		return &os.PathError{Op: "create", Path: filepath.Join(filepath.Dir(path), tmp), Err: err}
	}
	f := os.NewFile(uintptr(fd), filepath.Join(filepath.Dir(path), tmp))
	done := false
	defer func() {
		if !done {
			f.Close()
			_ = unix.Unlinkat(dirfd, tmp, 0)
		}
	}()
	if err := f.Chmod(mode.Perm()); err != nil { // fchmod: the umask narrowed the creation mode
		return err
	}
	if uid, gid := b.owner(); uid >= 0 {
		if err := f.Chown(uid, gid); err != nil { // fchown
			return err
		}
	}
	if _, err := f.Write(data); err != nil {
		return err
	}
	if err := f.Sync(); err != nil {
		return err
	}
	if err := f.Close(); err != nil {
		_ = unix.Unlinkat(dirfd, tmp, 0)
		done = true
		return err
	}
	done = true
	if err := unix.Renameat(dirfd, tmp, dirfd, name); err != nil {
		_ = unix.Unlinkat(dirfd, tmp, 0)
		return &os.PathError{Op: "rename", Path: path, Err: err}
	}
	return nil
}

// MkdirOwned creates dir (mode 0700, like PostgreSQL wants its data directory) owned by the postgres OS user.
// Missing parents are created 0700 and keep fogo's owner. An existing dir gets that mode and owner, set on its
// descriptor: a link planted in its place is refused, never followed.
func (b *Bin) MkdirOwned(dir string) error {
	pfd, err := openDir(filepath.Dir(dir), true)
	if err != nil {
		return err
	}
	defer unix.Close(pfd)
	name := filepath.Base(dir)
	if err := unix.Mkdirat(pfd, name, 0o700); err != nil && !errors.Is(err, unix.EEXIST) {
		return &os.PathError{Op: "mkdir", Path: dir, Err: err}
	}
	fd, err := unix.Openat(pfd, name, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		if errors.Is(err, unix.ELOOP) || errors.Is(err, unix.ENOTDIR) {
			return fmt.Errorf("%s: %w", dir, ErrUntrustedLink)
		}
		return &os.PathError{Op: "open", Path: dir, Err: err}
	}
	defer unix.Close(fd)
	if err := unix.Fchmod(fd, 0o700); err != nil {
		return &os.PathError{Op: "chmod", Path: dir, Err: err}
	}
	if uid, gid := b.owner(); uid >= 0 {
		if err := unix.Fchown(fd, uid, gid); err != nil {
			return &os.PathError{Op: "chown", Path: dir, Err: err}
		}
	}
	return nil
}

// systemDirs are directories fogo never changes the mode of, even when they are (or are above) the top it was
// given: home directories and the trees the system owns.
var systemDirs = map[string]bool{
	"/": true, "/root": true, "/home": true, "/tmp": true, "/var": true, "/var/lib": true, "/var/tmp": true,
	"/usr": true, "/usr/local": true, "/etc": true, "/opt": true, "/srv": true, "/mnt": true, "/media": true,
	"/run": true, "/boot": true, "/dev": true, "/proc": true, "/sys": true, "/snap": true,
}

// AllowTraverse lets the postgres OS user reach dir, which lies in (or is) top, a directory that is fogo's own
// (its data directory, a scratch directory it made): it adds search permission (o+x, never read or write) to dir
// and its parents up to top, each of which must be a real directory (no link) owned by fogo's user. It changes
// nothing above top, and refuses a top that is a system directory (systemDirs, fogo's user's home directory):
// the directories above top must already let the postgres user through, else the error names the first that
// does not, so that the operator chooses another data directory or grants it knowingly. Without root it does
// nothing.
func (b *Bin) AllowTraverse(top, dir string) error {
	if b.cred == nil {
		return nil
	}
	absTop, err := filepath.Abs(top)
	if err != nil {
		return err
	}
	abs, err := filepath.Abs(dir)
	if err != nil {
		return err
	}
	if rel, err := filepath.Rel(absTop, abs); err != nil || rel == ".." || strings.HasPrefix(rel, "../") {
		return fmt.Errorf("allow traverse: %s is not inside %s", abs, absTop)
	}
	if home, err := os.UserHomeDir(); (err == nil && filepath.Clean(home) == absTop) || systemDirs[absTop] {
		return fmt.Errorf("allow traverse: will not change the mode of %s, a system directory: choose a directory below it", absTop)
	}
	self := uint32(os.Geteuid())
	for p := abs; ; p = filepath.Dir(p) {
		var st unix.Stat_t
		if err := unix.Lstat(p, &st); err != nil {
			return &os.PathError{Op: "lstat", Path: p, Err: err}
		}
		if st.Mode&unix.S_IFMT != unix.S_IFDIR {
			return fmt.Errorf("allow traverse: %s is not a directory (a link?); fogo only opens up real directories it owns", p)
		}
		if st.Mode&0o001 == 0 {
			if st.Uid != self {
				return fmt.Errorf("allow traverse: %s belongs to uid %d, not to fogo; it is left alone", p, st.Uid)
			}
			if err := os.Chmod(p, os.FileMode(st.Mode&0o777|0o001)); err != nil {
				return err
			}
		}
		if p == absTop {
			break
		}
	}
	return b.checkReachable(abs)
}

// checkReachable fails with the first directory on the way to dir that the postgres OS user cannot search.
func (b *Bin) checkReachable(dir string) error {
	if _, err := b.Run(context.Background(), nil, "/usr/bin/test", "-x", dir); err == nil {
		return nil
	}
	for p := filepath.Dir(dir); ; p = filepath.Dir(p) {
		if _, err := b.Run(context.Background(), nil, "/usr/bin/test", "-x", p); err == nil {
			var st unix.Stat_t
			blocked := dir
			for q := dir; q != p; q = filepath.Dir(q) {
				blocked = q
			}
			_ = unix.Stat(blocked, &st)
			return fmt.Errorf("the postgres OS user cannot reach %s: it may not search %s (mode %#o, uid %d); "+
				"choose a data directory the postgres user can reach, or grant it search permission yourself "+
				"(chmod o+x %s)", dir, blocked, st.Mode&0o7777, st.Uid, blocked)
		}
		if p == filepath.Dir(p) {
			return fmt.Errorf("the postgres OS user cannot reach %s", dir)
		}
	}
}

// ReadFile reads a file in a directory the postgres OS user owns without following a link planted there: as root,
// a link to /etc/shadow would otherwise copy that file into one the postgres user can read (a configuration file
// written back, a backup of pg_control, a log tail in an error message).
func ReadFile(path string) ([]byte, error) {
	dirfd, err := openDir(filepath.Dir(path), false)
	if err != nil {
		return nil, err
	}
	defer unix.Close(dirfd)
	fd, err := unix.Openat(dirfd, filepath.Base(path), unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		if errors.Is(err, unix.ELOOP) {
			return nil, fmt.Errorf("%s: %w", path, ErrUntrustedLink)
		}
		return nil, &os.PathError{Op: "open", Path: path, Err: err}
	}
	f := os.NewFile(uintptr(fd), path)
	defer f.Close()
	return io.ReadAll(f)
}
