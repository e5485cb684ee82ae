// Package store is fogo's durable state: resources, long-running operations, port leases and instance records,
// kept as JSON values in an embedded bbolt file inside the data directory.
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
)

var allBuckets = []string{Servers, Databases, Instances, Groups, Operations, Ports, Meta, LinkedServices, LinkConnections}

// ErrNotFound is returned by MustGet when a key is absent.
var ErrNotFound = errors.New("not found")

// Store is the embedded state file.
type Store struct{ db *bolt.DB }

// Open opens (creating if needed) the state file at path. Only one process may hold it: a second fogo on the same
// data directory fails fast instead of corrupting state.
func Open(path string) (*Store, error) {
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
	return &Store{db: db}, nil
}

// Close releases the state file.
func (s *Store) Close() error { return s.db.Close() }

// Update runs fn in one read-write transaction; fn's error rolls it back.
func (s *Store) Update(fn func(*Tx) error) error {
	return s.db.Update(func(tx *bolt.Tx) error { return fn(&Tx{tx}) })
}

// View runs fn in one read-only transaction.
func (s *Store) View(fn func(*Tx) error) error {
	return s.db.View(func(tx *bolt.Tx) error { return fn(&Tx{tx}) })
}

// Tx is one transaction.
type Tx struct{ tx *bolt.Tx }

// Get decodes the value at bucket/key into v and reports whether it existed.
func (t *Tx) Get(bucket, key string, v any) (bool, error) {
	raw := t.tx.Bucket([]byte(bucket)).Get([]byte(key))
	if raw == nil {
		return false, nil
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
	return t.tx.Bucket([]byte(bucket)).Put([]byte(key), raw)
}

// Delete removes bucket/key; an absent key is not an error.
func (t *Tx) Delete(bucket, key string) error {
	return t.tx.Bucket([]byte(bucket)).Delete([]byte(key))
}

// Scan calls fn for every key with the given prefix, in key order, with the raw JSON value.
func (t *Tx) Scan(bucket, prefix string, fn func(key string, raw []byte) error) error {
	c := t.tx.Bucket([]byte(bucket)).Cursor()
	p := []byte(prefix)
	for k, v := c.Seek(p); k != nil && bytes.HasPrefix(k, p); k, v = c.Next() {
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
