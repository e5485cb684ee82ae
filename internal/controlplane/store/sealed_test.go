package store

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"testing"

	bolt "go.etcd.io/bbolt"

	"github.com/fogo-db/fogo/internal/secrets"
)

const secret = "hunter2-Sup3rSecret"

type record struct {
	Name     string
	Password string
}

func testKeys(t *testing.T) *secrets.Keyring {
	t.Helper()
	r, err := secrets.Generate()
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func fileHas(t *testing.T, path, s string) bool {
	t.Helper()
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return bytes.Contains(raw, []byte(s))
}

func get(t *testing.T, s *Store, bucket, key string) (record, error) {
	t.Helper()
	var r record
	err := s.View(func(tx *Tx) error { return tx.MustGet(bucket, key, &r) })
	return r, err
}

// Values of the sealed buckets never reach the file in plaintext; other buckets stay plain JSON; callers read
// and list plain values.
func TestSealedBucketsHoldNoPlaintext(t *testing.T) {
	path := filepath.Join(t.TempDir(), "state.db")
	keys := testKeys(t)
	s, err := Open(path, keys)
	if err != nil {
		t.Fatal(err)
	}
	err = s.Update(func(tx *Tx) error {
		for _, b := range []string{Servers, LinkedServices, Secrets, Databases} {
			if err := tx.Put(b, "ws/a", record{Name: b, Password: secret + b}); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	s.Close()
	for _, b := range []string{Servers, LinkedServices, Secrets} {
		if fileHas(t, path, secret+b) {
			t.Errorf("%s: plaintext in the file", b)
		}
	}
	if !fileHas(t, path, secret+Databases) {
		t.Error("an unsealed bucket is not plain JSON")
	}
	if s, err := Open(path, nil); err != nil {
		t.Fatal(err) // readable without a key (for SealedKeyIDs)
	} else {
		s.Close()
	}
	s, err = Open(path, keys)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if r, err := get(t, s, LinkedServices, "ws/a"); err != nil || r.Password != secret+LinkedServices {
		t.Fatalf("get: %+v %v", r, err)
	}
	err = s.View(func(tx *Tx) error {
		all, err := List[record](tx, Servers, "ws/")
		if err == nil && (len(all) != 1 || all[0].Password != secret+Servers) {
			t.Errorf("list: %+v", all)
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	ids, err := s.SealedKeyIDs()
	if err != nil || len(ids) != 1 || ids[keys.Current()] != 3 {
		t.Fatalf("key ids: %v %v", ids, err)
	}
}

// A sealed value copied into another record does not open there.
func TestSealedValueIsBoundToItsRecord(t *testing.T) {
	s, err := Open(filepath.Join(t.TempDir(), "state.db"), testKeys(t))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if err := s.Update(func(tx *Tx) error { return tx.Put(LinkedServices, "ws/a", record{Password: secret}) }); err != nil {
		t.Fatal(err)
	}
	err = s.b.(*boltBackend).db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket([]byte(LinkedServices))
		return b.Put([]byte("ws/b"), append([]byte(nil), b.Get([]byte("ws/a"))...))
	})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := get(t, s, LinkedServices, "ws/b"); !errors.Is(err, secrets.ErrTampered) {
		t.Fatalf("moved value: %v", err)
	}
}

// Plaintext left by an older fogo is sealed in one transaction by Reseal; it then lingers in free pages until
// Compact rewrites the file, after which the file holds no plaintext and the values still read.
func TestResealAndCompactRemovePlaintext(t *testing.T) {
	path := filepath.Join(t.TempDir(), "state.db")
	s, err := Open(path, nil)
	if err != nil {
		t.Fatal(err)
	}
	// An older fogo wrote plain JSON.
	err = s.b.(*boltBackend).db.Update(func(tx *bolt.Tx) error {
		return tx.Bucket([]byte(LinkedServices)).Put([]byte("ws/a"), []byte(`{"Name":"a","Password":"`+secret+`"}`))
	})
	if err != nil {
		t.Fatal(err)
	}
	s.Close()

	keys := testKeys(t)
	s, err = Open(path, keys)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { s.Close() }()
	if r, err := get(t, s, LinkedServices, "ws/a"); err != nil || r.Password != secret {
		t.Fatalf("plaintext reads before the reseal: %+v %v", r, err)
	}
	if ids, _ := s.SealedKeyIDs(); ids[""] != 1 {
		t.Fatalf("key ids before: %v", ids)
	}
	n, err := s.Reseal()
	if err != nil || n != 1 {
		t.Fatalf("reseal: %d %v", n, err)
	}
	if !fileHas(t, path, secret) {
		t.Fatal("the plaintext is not in a free page after the reseal: this test no longer shows why Compact is needed")
	}
	if n, err := s.Reseal(); err != nil || n != 0 {
		t.Fatalf("second reseal: %d %v", n, err)
	}
	if p, _ := s.CompactPending(); !p {
		t.Fatal("no compaction pending after a reseal")
	}
	if err := s.Compact(); err != nil {
		t.Fatal(err)
	}
	if fileHas(t, path, secret) {
		t.Fatal("plaintext in the file after compaction")
	}
	if p, _ := s.CompactPending(); p {
		t.Fatal("compaction still pending")
	}
	if r, err := get(t, s, LinkedServices, "ws/a"); err != nil || r.Password != secret {
		t.Fatalf("after compaction: %+v %v", r, err)
	}
	if _, err := os.Stat(path + ".compact"); !os.IsNotExist(err) {
		t.Fatalf("temporary file left: %v", err)
	}
	// The store still works for writes.
	if err := s.Update(func(tx *Tx) error { return tx.Put(Servers, "s", record{Password: secret}) }); err != nil {
		t.Fatal(err)
	}
}

// After Rotate, Reseal moves every value to the new key, so the old one can be retired.
func TestResealAfterRotation(t *testing.T) {
	keys := testKeys(t)
	old := keys.Current()
	s, err := Open(filepath.Join(t.TempDir(), "state.db"), keys)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	err = s.Update(func(tx *Tx) error {
		if err := tx.Put(Servers, "a", record{Password: secret}); err != nil {
			return err
		}
		return tx.Put(LinkedServices, "ws/b", record{Password: secret})
	})
	if err != nil {
		t.Fatal(err)
	}
	id, err := keys.Rotate()
	if err != nil {
		t.Fatal(err)
	}
	if n, err := s.Reseal(); err != nil || n != 2 {
		t.Fatalf("reseal: %d %v", n, err)
	}
	if ids, _ := s.SealedKeyIDs(); len(ids) != 1 || ids[id] != 2 {
		t.Fatalf("key ids %v, want all under %s (old %s)", ids, id, old)
	}
	keys.Retire()
	if r, err := get(t, s, Servers, "a"); err != nil || r.Password != secret {
		t.Fatalf("after retire: %+v %v", r, err)
	}
}
