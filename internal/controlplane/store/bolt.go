package store

import (
	"bytes"
	"errors"
	"fmt"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/fogo-db/fogo/internal/secrets"
)

// boltBackend is the embedded state file: one bbolt bucket per store bucket, keys and values as they are.
type boltBackend struct {
	db   *bolt.DB
	path string
}

// Open opens (creating if needed) the state file at path; keys seals and opens the sealed buckets (nil: the store
// can be read except for sealed values, e.g. to ask SealedKeyIDs). Only one process may hold it: a second fogo on
// the same data directory fails fast instead of corrupting state.
func Open(path string, keys *secrets.Keyring) (*Store, error) {
	db, err := openDB(path)
	if err != nil {
		return nil, err
	}
	return &Store{b: &boltBackend{db: db, path: path}, keys: keys}, nil
}

func openDB(path string) (*bolt.DB, error) {
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: 2 * time.Second})
	if err != nil {
		if errors.Is(err, bolt.ErrTimeout) {
			return nil, fmt.Errorf("open state %s: another fogo holds it", path)
		}
		return nil, fmt.Errorf("open state %s: %w", path, err)
	}
	err = db.Update(func(tx *bolt.Tx) error {
		for _, b := range allBuckets {
			if _, err := tx.CreateBucketIfNotExists([]byte(b)); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		db.Close()
		return nil, fmt.Errorf("create buckets: %w", err)
	}
	return db, nil
}

func (b *boltBackend) close() error { return b.db.Close() }

// update runs fn once: bbolt has a single writer, so nothing can commit in between.
func (b *boltBackend) update(fn func(rawTx) error) error {
	return b.db.Update(func(tx *bolt.Tx) error { return fn(boltTx{tx}) })
}

func (b *boltBackend) view(fn func(rawTx) error) error {
	return b.db.View(func(tx *bolt.Tx) error { return fn(boltTx{tx}) })
}

type boltTx struct{ tx *bolt.Tx }

func (t boltTx) get(bucket, key string) ([]byte, error) {
	return t.tx.Bucket([]byte(bucket)).Get([]byte(key)), nil
}

func (t boltTx) put(bucket, key string, value []byte) error {
	return t.tx.Bucket([]byte(bucket)).Put([]byte(key), value)
}

func (t boltTx) delete(bucket, key string) error {
	return t.tx.Bucket([]byte(bucket)).Delete([]byte(key))
}

func (t boltTx) scan(bucket, prefix string, fn func(key string, value []byte) error) error {
	c := t.tx.Bucket([]byte(bucket)).Cursor()
	p := []byte(prefix)
	for k, v := c.Seek(p); k != nil && bytes.HasPrefix(k, p); k, v = c.Next() {
		if err := fn(string(k), v); err != nil {
			return err
		}
	}
	return nil
}
