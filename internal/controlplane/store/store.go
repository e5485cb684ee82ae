// Package store is fogo's durable state: resources, long-running operations, port leases and instance records,
// kept as JSON values in an embedded bbolt file inside the data directory.
//
// The buckets that hold secrets (servers with their admin password verifier, linked services with their connection
// strings, the credentials fogo generates) are sealed: each of their values is stored as a secrets.Keyring sealed
// value bound to its "bucket/key", and Tx seals and opens them on the way, so callers see plain JSON. The keyring
// comes from a key file outside the store (see sealed.go).
//
// Every change happens in one bbolt transaction, so a control plane killed at any point finds either the state
// before a change or after it, never half of one. Callers read and write through typed helpers on Tx; keys are
// the lower-cased canonical identifiers (ARM is case-insensitive) chosen by the caller.
package store

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/fogo-db/fogo/internal/secrets"
)

// Buckets.
const (
	Servers    = "servers"
	Databases  = "databases"
	Instances  = "instances"
	Groups     = "failoverGroups"
	Operations = "operations"
	Ports      = "ports"
	Meta       = "meta"
	// LinkedServices and LinkConnections hold the Synapse-style link definitions.
	LinkedServices  = "linkedServices"
	LinkConnections = "linkConnections"
	// Secrets holds credentials fogo generates (sealed).
	Secrets = "secrets"
)

var allBuckets = []string{Servers, Databases, Instances, Groups, Operations, Ports, Meta, LinkedServices, LinkConnections, Secrets}

// sealedBuckets are the buckets whose values are sealed whole. Nothing else in the store is secret: operations keep
// resource ids, plans and ARM errors; instances keep directories, ports and roles; link connections keep names and
// table mappings.
var sealedBuckets = map[string]bool{Servers: true, LinkedServices: true, Secrets: true}

// ErrNotFound is returned by MustGet when a key is absent.
var ErrNotFound = errors.New("not found")

// Store is the embedded state file.
type Store struct {
	db   *bolt.DB
	path string
	keys *secrets.Keyring
}

// Open opens (creating if needed) the state file at path; keys seals and opens the sealed buckets (nil: the store
// can be read except for sealed values, e.g. to ask SealedKeyIDs). Only one process may hold it: a second fogo on
// the same data directory fails fast instead of corrupting state.
func Open(path string, keys *secrets.Keyring) (*Store, error) {
	db, err := openDB(path)
	if err != nil {
		return nil, err
	}
	return &Store{db: db, path: path, keys: keys}, nil
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

// Close releases the state file.
func (s *Store) Close() error { return s.db.Close() }

// Update runs fn in one read-write transaction; fn's error rolls it back.
func (s *Store) Update(fn func(*Tx) error) error {
	return s.db.Update(func(tx *bolt.Tx) error { return fn(&Tx{tx, s.keys}) })
}

// View runs fn in one read-only transaction.
func (s *Store) View(fn func(*Tx) error) error {
	return s.db.View(func(tx *bolt.Tx) error { return fn(&Tx{tx, s.keys}) })
}

// Tx is one transaction.
type Tx struct {
	tx   *bolt.Tx
	keys *secrets.Keyring
}

// Get decodes the value at bucket/key into v and reports whether it existed.
func (t *Tx) Get(bucket, key string, v any) (bool, error) {
	raw := t.tx.Bucket([]byte(bucket)).Get([]byte(key))
	if raw == nil {
		return false, nil
	}
	raw, err := t.open(bucket, key, raw)
	if err != nil {
		return true, err
	}
	if err := json.Unmarshal(raw, v); err != nil {
		return true, fmt.Errorf("decode %s/%s: %w", bucket, key, err)
	}
	return true, nil
}

// MustGet is Get that returns ErrNotFound for an absent key.
func (t *Tx) MustGet(bucket, key string, v any) error {
	ok, err := t.Get(bucket, key, v)
	if err != nil {
		return err
	}
	if !ok {
		return fmt.Errorf("%s/%s: %w", bucket, key, ErrNotFound)
	}
	return nil
}

// Put encodes v as JSON at bucket/key.
func (t *Tx) Put(bucket, key string, v any) error {
	raw, err := json.Marshal(v)
	if err != nil {
		return fmt.Errorf("encode %s/%s: %w", bucket, key, err)
	}
	if raw, err = t.seal(bucket, key, raw); err != nil {
		return err
	}
	return t.tx.Bucket([]byte(bucket)).Put([]byte(key), raw)
}

// Delete removes bucket/key; an absent key is not an error.
func (t *Tx) Delete(bucket, key string) error {
	return t.tx.Bucket([]byte(bucket)).Delete([]byte(key))
}

// Scan calls fn for every key with the given prefix, in key order, with the raw JSON value (opened, in a sealed
// bucket).
func (t *Tx) Scan(bucket, prefix string, fn func(key string, raw []byte) error) error {
	c := t.tx.Bucket([]byte(bucket)).Cursor()
	p := []byte(prefix)
	for k, v := c.Seek(p); k != nil && bytes.HasPrefix(k, p); k, v = c.Next() {
		v, err := t.open(bucket, string(k), v)
		if err != nil {
			return err
		}
		if err := fn(string(k), v); err != nil {
			return err
		}
	}
	return nil
}

// List decodes every value with the given key prefix into a new T.
func List[T any](t *Tx, bucket, prefix string) ([]T, error) {
	var out []T
	err := t.Scan(bucket, prefix, func(key string, raw []byte) error {
		var v T
		if err := json.Unmarshal(raw, &v); err != nil {
			return fmt.Errorf("decode %s/%s: %w", bucket, key, err)
		}
		out = append(out, v)
		return nil
	})
	return out, err
}
