package secrets

import (
	"bytes"
	"encoding/base64"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func ring(t *testing.T) *Keyring {
	t.Helper()
	r, err := Generate()
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func TestRoundTrip(t *testing.T) {
	r := ring(t)
	secret := []byte(`{"connectionString":"host=x password=hunter2"}`)
	sealed, err := r.Seal(secret, "linkedServices/ws/src")
	if err != nil {
		t.Fatal(err)
	}
	if !IsSealed(sealed) || !strings.HasPrefix(string(sealed), Prefix+r.Current()+":") {
		t.Fatalf("sealed form: %s", sealed)
	}
	if bytes.Contains(sealed, []byte("hunter2")) {
		t.Fatal("plaintext in the sealed value")
	}
	again, _ := r.Seal(secret, "linkedServices/ws/src")
	if bytes.Equal(again, sealed) {
		t.Fatal("two seals of the same value are equal: the nonce is not fresh")
	}
	got, err := r.Open(sealed, "linkedServices/ws/src")
	if err != nil || !bytes.Equal(got, secret) {
		t.Fatalf("open: %q, %v", got, err)
	}
	if id, err := KeyID(sealed); err != nil || id != r.Current() {
		t.Fatalf("KeyID: %q, %v", id, err)
	}
}

// A flipped bit anywhere, another context (a value copied to another record), or a relabelled key id fails.
func TestTamperDetection(t *testing.T) {
	r := ring(t)
	sealed, err := r.Seal([]byte("secret"), "servers/a")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := r.Open(sealed, "servers/b"); !errors.Is(err, ErrTampered) {
		t.Fatalf("other context: %v", err)
	}
	id := r.Current()
	box, _ := base64.RawURLEncoding.DecodeString(string(sealed[len(Prefix)+len(id)+1:]))
	for i := range box {
		mod := bytes.Clone(box)
		mod[i] ^= 1
		v := append([]byte(Prefix+id+":"), base64.RawURLEncoding.EncodeToString(mod)...)
		if _, err := r.Open(v, "servers/a"); !errors.Is(err, ErrTampered) {
			t.Fatalf("bit flip at %d: %v", i, err)
		}
	}
	if _, err := r.Open(sealed[:len(sealed)-4], "servers/a"); err == nil {
		t.Fatal("truncated value opened")
	}
	// Relabel: a second keyring whose key has the first one's id but other bytes.
	other := ring(t)
	other.keys[0].ID = id
	if _, err := other.Open(sealed, "servers/a"); !errors.Is(err, ErrTampered) {
		t.Fatalf("same id, other key: %v", err)
	}
	for _, bad := range []string{"plain", Prefix, Prefix + "K!:", Prefix + id + ":***"} {
		if _, err := r.Open([]byte(bad), "servers/a"); err == nil {
			t.Fatalf("%q opened", bad)
		}
	}
}

func TestWrongAndUnknownKey(t *testing.T) {
	a, b := ring(t), ring(t)
	sealed, _ := a.Seal([]byte("secret"), "c")
	if _, err := b.Open(sealed, "c"); !errors.Is(err, ErrUnknownKey) {
		t.Fatalf("unknown key: %v", err)
	}
	if _, err := NewKeyring().Seal([]byte("x"), "c"); err == nil {
		t.Fatal("an empty keyring sealed")
	}
}

// Rotation: after Rotate new values use the new key and old ones still open; after Retire only the new key is
// left and values sealed under the old one no longer open.
func TestRotation(t *testing.T) {
	r := ring(t)
	old := r.Current()
	before, _ := r.Seal([]byte("v1"), "c")
	id, err := r.Rotate()
	if err != nil || id == old || r.Current() != id || len(r.IDs()) != 2 {
		t.Fatalf("rotate: %q %v %v", id, err, r.IDs())
	}
	after, _ := r.Seal([]byte("v2"), "c")
	if k, _ := KeyID(after); k != id {
		t.Fatalf("sealed under %s, want %s", k, id)
	}
	if pt, err := r.Open(before, "c"); err != nil || string(pt) != "v1" {
		t.Fatalf("old value during rotation: %q %v", pt, err)
	}
	if gone := r.Retire(); len(gone) != 1 || gone[0] != old {
		t.Fatalf("retired %v", gone)
	}
	if _, err := r.Open(before, "c"); !errors.Is(err, ErrUnknownKey) {
		t.Fatalf("retired key still opens: %v", err)
	}
	if pt, err := r.Open(after, "c"); err != nil || string(pt) != "v2" {
		t.Fatalf("new value: %q %v", pt, err)
	}
}

func TestKeyFile(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "secrets.key")
	if _, err := LoadFile(path); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("missing file: %v", err)
	}
	r := ring(t)
	if _, err := r.Rotate(); err != nil {
		t.Fatal(err)
	}
	if err := WriteFile(path, r); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(path)
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("mode: %v %v", fi.Mode(), err)
	}
	got, err := LoadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Join(got.IDs(), ",") != strings.Join(r.IDs(), ",") {
		t.Fatalf("ids %v, want %v", got.IDs(), r.IDs())
	}
	sealed, _ := r.Seal([]byte("x"), "c")
	if pt, err := got.Open(sealed, "c"); err != nil || string(pt) != "x" {
		t.Fatalf("reloaded keyring: %q %v", pt, err)
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 1 {
		t.Fatalf("temporary files left: %v", entries)
	}
	if err := os.Chmod(path, 0o640); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadFile(path); err == nil || !strings.Contains(err.Error(), "chmod 600") {
		t.Fatalf("group-readable key file: %v", err)
	}
	for _, bad := range []string{"", "# only a comment\n", "k1 notbase64\n", "k1 " + base64.StdEncoding.EncodeToString([]byte("short")) + "\n"} {
		if err := os.WriteFile(path, []byte(bad), 0o600); err != nil {
			t.Fatal(err)
		}
		if _, err := LoadFile(path); err == nil {
			t.Fatalf("%q loaded", bad)
		}
	}
}
