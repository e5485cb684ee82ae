package links

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
)

// TargetDirs are the directories DuckDB target files may live in: DATA-DIR/link-targets, where relative paths are
// taken from, and the directories the operator allows with `fogo serve --link-target-dir`. fogo often runs as
// root, so a linked service's path must never let an API caller create or open a file anywhere else: a path is
// checked when the linked service is stored and again right before the file is opened (a symbolic link can be
// planted in between).
type TargetDirs struct {
	base  string   // DATA-DIR/link-targets (absolute)
	extra []string // the operator's directories, as given (absolute)
	roots []string // base and extra with their symbolic links resolved: where target files really may be
}

// NewTargetDirs creates DATA-DIR/link-targets if needed and checks the operator's directories: absolute, existing
// directories, not writable by every user (anyone could plant a symbolic link there), and apart from the data
// directory (which holds fogo's state and secrets).
func NewTargetDirs(dataDir string, extra []string) (*TargetDirs, error) {
	dataDir, err := filepath.Abs(dataDir)
	if err != nil {
		return nil, err
	}
	d := &TargetDirs{base: filepath.Join(dataDir, "link-targets")}
	if err := os.MkdirAll(d.base, 0o700); err != nil {
		return nil, fmt.Errorf("create %s: %w", d.base, err)
	}
	realBase, err := filepath.EvalSymlinks(d.base)
	if err != nil {
		return nil, err
	}
	realData, err := filepath.EvalSymlinks(dataDir)
	if err != nil {
		return nil, err
	}
	d.roots = []string{realBase}
	for _, dir := range extra {
		if !filepath.IsAbs(dir) {
			return nil, fmt.Errorf("--link-target-dir %s: must be an absolute path", dir)
		}
		dir = filepath.Clean(dir)
		real, err := filepath.EvalSymlinks(dir)
		if err != nil {
			return nil, fmt.Errorf("--link-target-dir %s: %w", dir, err)
		}
		fi, err := os.Stat(real)
		if err != nil {
			return nil, fmt.Errorf("--link-target-dir %s: %w", dir, err)
		}
		if !fi.IsDir() {
			return nil, fmt.Errorf("--link-target-dir %s: not a directory", dir)
		}
		if fi.Mode().Perm()&0o002 != 0 {
			return nil, fmt.Errorf("--link-target-dir %s: writable by every user, who could plant symbolic links fogo would follow", dir)
		}
		if within(real, realData) || within(realData, real) || real == realData {
			return nil, fmt.Errorf("--link-target-dir %s: overlaps the data directory %s", dir, dataDir)
		}
		d.extra = append(d.extra, dir)
		d.roots = append(d.roots, real)
	}
	return d, nil
}

// within reports whether path lies strictly inside dir (both clean and absolute).
func within(path, dir string) bool {
	rel, err := filepath.Rel(dir, path)
	return err == nil && rel != "." && rel != ".." && !strings.HasPrefix(rel, ".."+string(filepath.Separator))
}

// PathError says why a DuckDB target path is refused. Reason never names where a symbolic link leads.
type PathError struct{ Reason string }

func (e *PathError) Error() string { return "the DuckDB target path " + e.Reason }

// Allowed describes the allowed directories for an error message: the link-targets directory by role (its
// absolute path says nothing a caller needs) and the operator's directories by name (callers must name them).
func (d *TargetDirs) Allowed() string {
	s := "inside the data directory's link-targets/ (a relative path is taken from there)"
	if len(d.extra) > 0 {
		s += " or inside " + strings.Join(d.extra, ", ")
	}
	return s
}

// Resolve checks a DuckDB target path and returns the file's absolute path with every symbolic link resolved.
// Refused: NUL bytes, ".." components, anything outside the allowed directories once symbolic links are followed
// (in any existing component, the file itself included), a symbolic link that leads nowhere, a directory or
// other non-regular file, and names ending in DuckDB's side-file suffixes (.wal, .tmp). The file and its
// directories need not exist yet.
func (d *TargetDirs) Resolve(path string) (string, error) {
	switch {
	case path == "":
		return "", &PathError{"is empty"}
	case strings.ContainsRune(path, 0):
		return "", &PathError{"contains a NUL byte"}
	}
	for _, c := range strings.Split(filepath.ToSlash(path), "/") {
		if c == ".." {
			return "", &PathError{"contains a '..' component"}
		}
	}
	abs := path
	if !filepath.IsAbs(abs) {
		abs = filepath.Join(d.base, abs)
	}
	abs = filepath.Clean(abs)
	if ext := filepath.Ext(abs); ext == ".wal" || ext == ".tmp" {
		return "", &PathError{"ends in " + ext + ", the suffix of DuckDB's side files"}
	}
	real, err := resolveExisting(abs)
	if err != nil {
		return "", err
	}
	if !inside(real, d.roots) {
		if inside(abs, append([]string{d.base}, d.extra...)) {
			return "", &PathError{"leads outside the allowed directories through a symbolic link"}
		}
		return "", &PathError{"is outside the allowed directories"}
	}
	if fi, err := os.Stat(real); err == nil && !fi.Mode().IsRegular() {
		if fi.IsDir() {
			return "", &PathError{"is a directory"}
		}
		return "", &PathError{"is not a regular file"}
	} else if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return "", &PathError{"cannot be checked: " + bare(err)}
	}
	return real, nil
}

func inside(path string, roots []string) bool {
	for _, r := range roots {
		if within(path, r) {
			return true
		}
	}
	return false
}

// bare is an error's text without the path it names (which may be where a symbolic link leads).
func bare(err error) string {
	var pe *fs.PathError
	if errors.As(err, &pe) {
		return pe.Err.Error()
	}
	return err.Error()
}

// resolveExisting resolves the symbolic links of the longest existing prefix of abs and appends the rest (which
// does not exist, so holds no link now). A name that exists but cannot be resolved is a dangling link: refused,
// since creating the file would follow it.
func resolveExisting(abs string) (string, error) {
	p, rest := abs, ""
	for {
		real, err := filepath.EvalSymlinks(p)
		if err == nil {
			return filepath.Join(real, rest), nil
		}
		if !errors.Is(err, fs.ErrNotExist) {
			return "", &PathError{"cannot be resolved: " + bare(err)}
		}
		if _, lerr := os.Lstat(p); lerr == nil {
			return "", &PathError{"is or passes through a symbolic link to something that does not exist"}
		}
		parent := filepath.Dir(p)
		if parent == p {
			return abs, nil
		}
		rest = filepath.Join(filepath.Base(p), rest)
		p = parent
	}
}

// CheckOpen checks a target file right before it is opened, after its directory was created: the path resolves
// to real still (no symbolic link planted since), the file is not a symbolic link, and DuckDB's side files
// (real.wal, the real.tmp directory) are no symbolic links either: DuckDB would write through them.
func (d *TargetDirs) CheckOpen(path, real string) error {
	again, err := d.Resolve(path)
	if err != nil {
		return err
	}
	if again != real {
		return &PathError{"changed while it was being opened (a symbolic link was planted)"}
	}
	for _, side := range []string{real, real + ".wal", real + ".tmp"} {
		fi, err := os.Lstat(side)
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return &PathError{"cannot be checked: " + bare(err)}
		}
		if fi.Mode()&fs.ModeSymlink != 0 {
			return &PathError{"has a symbolic link as " + filepath.Base(side) + ", which DuckDB would write through"}
		}
	}
	return nil
}
