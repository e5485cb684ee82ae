package links

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// targetDirsFixture: DATA/link-targets, an allowed extra directory EXTRA, and OUT, a directory nothing may reach.
func targetDirsFixture(t *testing.T) (d *TargetDirs, data, extra, out string) {
	t.Helper()
	root := t.TempDir()
	data, extra, out = filepath.Join(root, "data"), filepath.Join(root, "extra"), filepath.Join(root, "out")
	for _, dir := range []string{data, extra, out} {
		if err := os.Mkdir(dir, 0o700); err != nil {
			t.Fatal(err)
		}
	}
	d, err := NewTargetDirs(data, []string{extra})
	if err != nil {
		t.Fatal(err)
	}
	return d, data, extra, out
}

func TestTargetPathResolve(t *testing.T) {
	d, data, extra, out := targetDirsFixture(t)
	base := filepath.Join(data, "link-targets")
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(os.WriteFile(filepath.Join(out, "secret"), []byte("x"), 0o600))
	must(os.Symlink(out, filepath.Join(base, "evil")))                                       // a middle component leading out
	must(os.Symlink(filepath.Join(out, "secret"), filepath.Join(base, "f.duckdb")))          // the file itself leading out
	must(os.Symlink(filepath.Join(out, "new.duckdb"), filepath.Join(base, "dangle.duckdb"))) // would create OUT/new.duckdb
	must(os.Symlink(extra, filepath.Join(base, "toextra")))                                  // a link to an allowed directory
	must(os.Mkdir(filepath.Join(base, "dir.duckdb"), 0o700))
	must(os.Symlink(out, filepath.Join(extra, "evil")))

	cases := []struct {
		path string
		want string // the resolved path, or "" for refused
		why  string // a word of the refusal
	}{
		{"x.duckdb", filepath.Join(base, "x.duckdb"), ""},
		{"sub/x.duckdb", filepath.Join(base, "sub/x.duckdb"), ""},
		{"./sub//x.duckdb", filepath.Join(base, "sub/x.duckdb"), ""},
		{filepath.Join(base, "sub/x.duckdb"), filepath.Join(base, "sub/x.duckdb"), ""},
		{filepath.Join(extra, "a.duckdb"), filepath.Join(extra, "a.duckdb"), ""},
		{"toextra/b.duckdb", filepath.Join(extra, "b.duckdb"), ""},
		{"../../escape.duckdb", "", "'..'"},
		{"sub/../x.duckdb", "", "'..'"},
		{extra + "/../out/x.duckdb", "", "'..'"},
		{"/etc/fogo-probe.duckdb", "", "outside"},
		{filepath.Join(data, "state.db"), "", "outside"},
		{base, "", "outside"},
		{filepath.Join(out, "x.duckdb"), "", "outside"},
		{"evil/x.duckdb", "", "symbolic link"},
		{"evil/deeper/x.duckdb", "", "symbolic link"},
		{filepath.Join(extra, "evil/x.duckdb"), "", "symbolic link"},
		{"f.duckdb", "", "symbolic link"},
		{"dangle.duckdb", "", "symbolic link"},
		{"dir.duckdb", "", "directory"},
		{"x\x00.duckdb", "", "NUL"},
		{"x.duckdb.wal", "", ".wal"},
		{"x.duckdb.tmp", "", ".tmp"},
		{"", "", "empty"},
	}
	for _, c := range cases {
		got, err := d.Resolve(c.path)
		if c.want != "" {
			if err != nil || got != c.want {
				t.Errorf("Resolve(%q) = %q, %v; want %q", c.path, got, err, c.want)
			}
			continue
		}
		var pe *PathError
		if !errors.As(err, &pe) || !strings.Contains(err.Error(), c.why) {
			t.Errorf("Resolve(%q) = %q, %v; want a refusal saying %q", c.path, got, err, c.why)
		}
		if err != nil && strings.Contains(err.Error(), out) {
			t.Errorf("Resolve(%q): the refusal names where the link leads: %v", c.path, err)
		}
	}
	if _, err := os.Stat(filepath.Join(out, "new.duckdb")); err == nil {
		t.Error("a refused path created a file")
	}
}

// TestTargetPathCheckOpen: a symbolic link planted after the PUT, as the file or as one of DuckDB's side files,
// is caught right before the open.
func TestTargetPathCheckOpen(t *testing.T) {
	d, data, _, out := targetDirsFixture(t)
	base := filepath.Join(data, "link-targets")
	real, err := d.Resolve("a/x.duckdb")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Dir(real), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := d.CheckOpen("a/x.duckdb", real); err != nil {
		t.Fatalf("a clean path: %v", err)
	}
	for _, side := range []string{"x.duckdb.wal", "x.duckdb.tmp"} {
		link := filepath.Join(base, "a", side)
		if err := os.Symlink(filepath.Join(out, side), link); err != nil {
			t.Fatal(err)
		}
		if err := d.CheckOpen("a/x.duckdb", real); err == nil || !strings.Contains(err.Error(), side) {
			t.Errorf("a symbolic link as %s: %v", side, err)
		}
		os.Remove(link)
	}
	// The directory replaced by a link to somewhere else after the PUT.
	if err := os.Remove(filepath.Join(base, "a")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(out, filepath.Join(base, "a")); err != nil {
		t.Fatal(err)
	}
	if err := d.CheckOpen("a/x.duckdb", real); err == nil {
		t.Error("a directory replaced by a symbolic link leading out was not caught")
	}
}

func TestTargetDirsOperatorChoices(t *testing.T) {
	root := t.TempDir()
	data := filepath.Join(root, "data")
	open := filepath.Join(root, "open")
	for _, dir := range []string{data, open, filepath.Join(data, "instances")} {
		if err := os.Mkdir(dir, 0o700); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Chmod(open, 0o777); err != nil {
		t.Fatal(err)
	}
	for _, extra := range []string{"relative/dir", filepath.Join(root, "missing"), open, root, data, filepath.Join(data, "instances")} {
		if _, err := NewTargetDirs(data, []string{extra}); err == nil {
			t.Errorf("--link-target-dir %s was accepted", extra)
		}
	}
}
