package store

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/fogo-db/fogo/internal/secrets"
)

// metaCompactPending marks (in Meta) a file whose free pages may still hold secrets in a form that is no longer
// wanted: plaintext from an older fogo, or values sealed under a retired key. It is set in the transaction that
// reseals them and cleared by Compact, so a fogo stopped in between compacts at its next start.
const metaCompactPending = "compactPending"

func sealContext(bucket, key string) string { return bucket + "/" + key }

// seal returns what is stored for a JSON value: the value itself, or in a sealed bucket its sealed form.
func (t *Tx) seal(bucket, key string, raw []byte) ([]byte, error) {
	if !sealedBuckets[bucket] {
		return raw, nil
	}
	if t.keys == nil {
		return nil, fmt.Errorf("seal %s/%s: no secrets key", bucket, key)
	}
	sealed, err := t.keys.Seal(raw, sealContext(bucket, key))
	if err != nil {
		return nil, fmt.Errorf("seal %s/%s: %w", bucket, key, err)
	}
	return sealed, nil
}

// open returns the JSON value of what is stored. Plaintext in a sealed bucket (written by a fogo before sealing)
// reads as it is until Reseal seals it.
func (t *Tx) open(bucket, key string, stored []byte) ([]byte, error) {
	if !sealedBuckets[bucket] || !secrets.IsSealed(stored) {
		return stored, nil
	}
	if t.keys == nil {
		return nil, fmt.Errorf("open %s/%s: no secrets key", bucket, key)
	}
	raw, err := t.keys.Open(stored, sealContext(bucket, key))
	if err != nil {
		return nil, fmt.Errorf("open %s/%s: %w", bucket, key, err)
	}
	return raw, nil
}

// SealedKeyIDs counts the values of the sealed buckets by the key id they are sealed under; plaintext values
// count under "". It needs no key.
func (s *Store) SealedKeyIDs() (map[string]int, error) {
	var out map[string]int
	err := s.b.view(func(tx rawTx) error {
		out = map[string]int{}
		for b := range sealedBuckets {
			err := tx.scan(b, "", func(k string, v []byte) error {
				if !secrets.IsSealed(v) {
					out[""]++
					return nil
				}
				id, err := secrets.KeyID(v)
				if err != nil {
					return fmt.Errorf("%s/%s: %w", b, k, err)
				}
				out[id]++
				return nil
			})
			if err != nil {
				return err
			}
		}
		return nil
	})
	return out, err
}

// Reseal seals every value of the sealed buckets that is not sealed under the keyring's current key — plaintext
// left by an older fogo, or a value sealed under an older key — again under the current key, all in one
// transaction, and (bbolt) marks the file for compaction in the same transaction. It returns how many values it
// sealed; with none it changes nothing, so it can run at every start. On etcd the one transaction is bound by
// etcd's operation limit (see ErrTxnTooLarge), and the replaced values stay in etcd's history until etcd
// compacts it (see Compact).
func (s *Store) Reseal() (int, error) {
	if s.keys == nil || s.keys.Current() == "" {
		return 0, errors.New("reseal: no secrets key")
	}
	current := s.keys.Current()
	_, isBolt := s.b.(*boltBackend)
	n := 0
	err := s.Update(func(t *Tx) error {
		n = 0
		for b := range sealedBuckets {
			type kv struct {
				k string
				v []byte
			}
			var todo []kv
			err := t.tx.scan(b, "", func(k string, v []byte) error {
				if id, err := secrets.KeyID(v); err == nil && id == current {
					return nil
				}
				raw, err := t.open(b, k, v)
				if err != nil {
					return err
				}
				// A copy: bbolt's slices are valid only until the bucket changes.
				todo = append(todo, kv{k, append([]byte(nil), raw...)})
				return nil
			})
			if err != nil {
				return err
			}
			for _, e := range todo {
				sealed, err := t.seal(b, e.k, e.v)
				if err != nil {
					return err
				}
				if err := t.tx.put(b, e.k, sealed); err != nil {
					return err
				}
			}
			n += len(todo)
		}
		if n == 0 || !isBolt {
			return nil
		}
		return t.tx.put(Meta, metaCompactPending, []byte("true"))
	})
	return n, err
}

// CompactPending reports whether a reseal left free pages that Compact should drop. On etcd it is always false:
// see Compact.
func (s *Store) CompactPending() (bool, error) {
	if _, ok := s.b.(*boltBackend); !ok {
		return false, nil
	}
	pending := false
	err := s.b.view(func(tx rawTx) error {
		v, err := tx.get(Meta, metaCompactPending)
		pending = v != nil
		return err
	})
	return pending, err
}

// Compact rewrites the state file with its live values only. bbolt does not zero the pages a transaction frees,
// so after Reseal the file may still hold the plaintext or old ciphertext it replaced; the rewritten file does not.
// The copy is written next to the file, synced, and renamed over it (then the directory is synced): a fogo stopped
// at any point finds the old file or the compacted one.
//
// Call it only while no transaction can run: at start, before the store is handed out.
//
// On etcd it does nothing: a replaced value stays in etcd's history (older revisions, readable by revision) until
// etcd's own compaction (its --auto-compaction-* settings or an operator's etcdctl compact) and defragmentation
// drop it; fogo does not compact the etcd keyspace, which other users may share.
func (s *Store) Compact() error {
	b, ok := s.b.(*boltBackend)
	if !ok {
		return nil
	}
	tmp := b.path + ".compact"
	_ = os.Remove(tmp) // left by a compaction that was interrupted
	dst, err := bolt.Open(tmp, 0o600, &bolt.Options{Timeout: 2 * time.Second})
	if err != nil {
		return fmt.Errorf("compact: %w", err)
	}
	err = bolt.Compact(dst, b.db, 0)
	if err == nil {
		err = dst.Update(func(tx *bolt.Tx) error { return tx.Bucket([]byte(Meta)).Delete([]byte(metaCompactPending)) })
	}
	if cerr := dst.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(tmp)
		return fmt.Errorf("compact: %w", err)
	}
	if err := b.db.Close(); err != nil {
		return fmt.Errorf("compact: close state: %w", err)
	}
	renameErr := os.Rename(tmp, b.path)
	if renameErr == nil {
		renameErr = secrets.SyncDir(filepath.Dir(b.path))
	}
	db, err := openDB(b.path)
	if err != nil {
		return fmt.Errorf("compact: reopen state: %w", err)
	}
	b.db = db
	if renameErr != nil {
		return fmt.Errorf("compact: %w", renameErr)
	}
	return nil
}
