package app

import (
	"bytes"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	bolt "go.etcd.io/bbolt"

	"github.com/fogo-db/fogo/internal/controlplane/store"
	"github.com/fogo-db/fogo/internal/secrets"
)

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

const testSecret = "Linked-Serv1ce-Passw0rd"

type rec struct{ ConnectionString string }

func open(t *testing.T, dir string) *sealedState {
	t.Helper()
	s, err := openSealedState(dir, "", nil, quiet)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func put(t *testing.T, s *sealedState, key string) {
	t.Helper()
	err := s.st.Update(func(tx *store.Tx) error {
		return tx.Put(store.LinkedServices, key, rec{ConnectionString: "password=" + testSecret})
	})
	if err != nil {
		t.Fatal(err)
	}
}

// check reads every value back and returns the key ids the store's values are sealed under.
func check(t *testing.T, s *sealedState, keys ...string) map[string]int {
	t.Helper()
	for _, k := range keys {
		var r rec
		err := s.st.View(func(tx *store.Tx) error { return tx.MustGet(store.LinkedServices, k, &r) })
		if err != nil || !strings.Contains(r.ConnectionString, testSecret) {
			t.Fatalf("%s: %+v %v", k, r, err)
		}
	}
	ids, err := s.st.SealedKeyIDs()
	if err != nil {
		t.Fatal(err)
	}
	return ids
}

func keyFileIDs(t *testing.T, dir string) []string {
	t.Helper()
	r, err := secrets.LoadFile(filepath.Join(dir, KeyFileName))
	if err != nil {
		t.Fatal(err)
	}
	return r.IDs()
}

func stateHas(t *testing.T, dir, s string) bool {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join(dir, "state.db"))
	if err != nil {
		t.Fatal(err)
	}
	return bytes.Contains(raw, []byte(s))
}

// The first start creates a 0600 key file; a start without it refuses once the store holds sealed values, as it
// does with another key file or one that others can read.
func TestKeyFileChecksAtStart(t *testing.T) {
	dir := t.TempDir()
	s := open(t, dir)
	put(t, s, "ws/a")
	s.st.Close()
	path := filepath.Join(dir, KeyFileName)
	fi, err := os.Stat(path)
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("key file: %v %v", fi, err)
	}
	good, _ := os.ReadFile(path)

	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	if _, err := openSealedState(dir, "", nil, quiet); err == nil || !strings.Contains(err.Error(), "does not exist") {
		t.Fatalf("missing key file: %v", err)
	}
	if _, err := os.Stat(path); !os.IsNotExist(err) {
		t.Fatal("a new key file was made although the store holds sealed values")
	}
	other, _ := secrets.Generate()
	if err := secrets.WriteFile(path, other); err != nil {
		t.Fatal(err)
	}
	if _, err := openSealedState(dir, "", nil, quiet); err == nil || !strings.Contains(err.Error(), "does not hold") {
		t.Fatalf("other key file: %v", err)
	}
	if err := os.WriteFile(path, good, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(path, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := openSealedState(dir, "", nil, quiet); err == nil || !strings.Contains(err.Error(), "chmod 600") {
		t.Fatalf("world-readable key file: %v", err)
	}
	// --secrets-key-file elsewhere.
	elsewhere := filepath.Join(t.TempDir(), "fogo.key")
	if err := os.WriteFile(elsewhere, good, 0o600); err != nil {
		t.Fatal(err)
	}
	s, err = openSealedState(dir, elsewhere, nil, quiet)
	if err != nil {
		t.Fatal(err)
	}
	check(t, s, "ws/a")
	s.st.Close()
}

// Plaintext written by a fogo before sealing, and its internal-secret file, are sealed at the next start and the
// file is compacted: no plaintext is left in state.db, and the internal-secret file is gone.
func TestMigrationFromPlaintext(t *testing.T) {
	dir := t.TempDir()
	db, err := bolt.Open(filepath.Join(dir, "state.db"), 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	err = db.Update(func(tx *bolt.Tx) error {
		b, err := tx.CreateBucketIfNotExists([]byte(store.LinkedServices))
		if err != nil {
			return err
		}
		return b.Put([]byte("ws/old"), []byte(`{"ConnectionString":"password=`+testSecret+`"}`))
	})
	db.Close()
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "internal-secret"), []byte("0ld-Internal-Secret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	s := open(t, dir)
	a := &App{opts: Options{DataDir: dir}, Store: s.st, log: quiet}
	pw, err := a.superPassword()
	if err != nil || pw != "0ld-Internal-Secret" {
		t.Fatalf("internal password: %q %v", pw, err)
	}
	if _, err := os.Stat(filepath.Join(dir, "internal-secret")); !os.IsNotExist(err) {
		t.Fatalf("internal-secret still there: %v", err)
	}
	if ids := check(t, s, "ws/old"); ids[""] != 0 {
		t.Fatalf("plaintext left: %v", ids)
	}
	s.st.Close()
	// The internal password went in after the start's compaction: the next start seals nothing new, and the
	// password was never written in plaintext.
	s = open(t, dir)
	defer s.st.Close()
	for _, v := range []string{testSecret, "0ld-Internal-Secret"} {
		if stateHas(t, dir, v) {
			t.Fatalf("%s in state.db", v)
		}
	}
	a.Store = s.st
	if pw, err := a.superPassword(); err != nil || pw != "0ld-Internal-Secret" {
		t.Fatalf("internal password after restart: %q %v", pw, err)
	}
}

// A rotation stopped after any of its steps leaves a fogo that starts and finishes it.
func TestRotationCrashWindows(t *testing.T) {
	for _, stopAfter := range []int{1, 2} {
		dir := t.TempDir()
		s := open(t, dir)
		put(t, s, "ws/a")
		put(t, s, "ws/b")
		old := s.keys.Current()

		// Step 1: the new key into the key file, old kept.
		next := s.keys.Clone()
		id, err := next.Rotate()
		if err != nil {
			t.Fatal(err)
		}
		if err := secrets.WriteFile(s.keyFile, next); err != nil {
			t.Fatal(err)
		}
		s.keys.Replace(next)
		if stopAfter >= 2 {
			if n, err := s.st.Reseal(); err != nil || n != 2 {
				t.Fatalf("reseal: %d %v", n, err)
			}
		}
		s.st.Close() // "crash"

		s = open(t, dir)
		ids := check(t, s, "ws/a", "ws/b")
		if len(ids) != 1 || ids[id] != 2 {
			t.Fatalf("stopped after step %d: values under %v, want all under %s", stopAfter, ids, id)
		}
		if got := keyFileIDs(t, dir); len(got) != 1 || got[0] != id {
			t.Fatalf("stopped after step %d: key file holds %v, want [%s]", stopAfter, got, id)
		}
		s.st.Close()
		if stateHas(t, dir, secrets.Prefix+old) {
			t.Fatalf("stopped after step %d: old-key ciphertext left in state.db", stopAfter)
		}
	}
}

// The whole rotation, online and offline: values stay readable, the key file holds only the new key, and the
// offline one (which compacts) leaves no ciphertext under the old key in the file.
func TestRotateOnlineAndOffline(t *testing.T) {
	dir := t.TempDir()
	s := open(t, dir)
	put(t, s, "ws/a")
	first := s.keys.Current()
	r, err := s.rotate()
	if err != nil || r.KeyID == first || r.Resealed != 1 || len(r.RetiredKeyIDs) != 1 || r.RetiredKeyIDs[0] != first {
		t.Fatalf("rotate: %+v %v", r, err)
	}
	if ids := check(t, s, "ws/a"); ids[r.KeyID] != 1 || len(ids) != 1 {
		t.Fatalf("after rotation: %v", ids)
	}
	if got := keyFileIDs(t, dir); len(got) != 1 || got[0] != r.KeyID {
		t.Fatalf("key file: %v", got)
	}
	put(t, s, "ws/b") // the store goes on under the new key
	s.st.Close()

	off, err := RotateKeyOffline(dir, "", quiet)
	if err != nil || off.Resealed != 2 {
		t.Fatalf("offline: %+v %v", off, err)
	}
	for _, old := range []string{first, r.KeyID} {
		if stateHas(t, dir, secrets.Prefix+old) {
			t.Fatalf("ciphertext under %s left in state.db", old)
		}
	}
	s = open(t, dir)
	defer s.st.Close()
	if ids := check(t, s, "ws/a", "ws/b"); ids[off.KeyID] != 2 {
		t.Fatalf("after offline rotation: %v", ids)
	}
	if _, err := RotateKeyOffline(dir, "", quiet); err == nil || !strings.Contains(err.Error(), "another fogo") {
		t.Fatalf("offline rotation while the state is held: %v", err)
	}
}
