// Package store is fogo's durable state: resources, long-running operations, port leases and instance records,
// kept as JSON values in named buckets. The default backend is an embedded bbolt file inside the data directory
// (bolt.go); an etcd v3 backend (etcd.go) holds the same values for cluster mode. Both sit behind the same Store,
// Tx and List, and behave the same way (see contract_test.go).
//
// The buckets that hold secrets (servers with their admin password verifier, linked services with their connection
// strings, the credentials fogo generates) are sealed: each of their values is stored as a secrets.Keyring sealed
// value bound to its "bucket/key", and Tx seals and opens them on the way, so callers see plain JSON. The keyring
// comes from a key file outside the store (see sealed.go).
//
// Every change happens in one transaction, so a control plane killed at any point finds either the state before a
// change or after it, never half of one. Transactions are serializable: on bbolt there is a single writer, on etcd
// an update commits only if no other update committed since its snapshot, and otherwise runs again. Callers read and write through typed helpers on Tx; keys are
// the lower-cased canonical identifiers (ARM is case-insensitive) chosen by the caller.
package store

import (
	"encoding/json"
	"errors"
	"fmt"

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
	// Agents holds the database hosts registered in cluster mode (model.Agent).
	Agents = "agents"
	// LostReports holds the lost-transaction report of each forced failover's databases; LostReportChunks the
	// transactions they list (sealed: they hold users' rows), in pieces small enough for one etcd request.
	LostReports      = "lostReports"
	LostReportChunks = "lostReportChunks"
)

var allBuckets = []string{Servers, Databases, Instances, Groups, Operations, Ports, Meta, LinkedServices, LinkConnections, Secrets, Agents,
	LostReports, LostReportChunks}

// sealedBuckets are the buckets whose values are sealed whole. Nothing else in the store is secret: operations keep
// resource ids, plans and ARM errors; instances keep directories, ports and roles; link connections keep names and
// table mappings; a lost-transaction report keeps counts and positions (its rows are in LostReportChunks).
var sealedBuckets = map[string]bool{Servers: true, LinkedServices: true, Secrets: true, LostReportChunks: true}

// ErrNotFound is returned by MustGet when a key is absent.
var ErrNotFound = errors.New("not found")

// Store is the control plane's state, on one of the backends.
type Store struct {
	b    backend
	keys *secrets.Keyring
}

// backend is what a storage engine provides: transactions over raw bytes by bucket and key. Sealing, JSON and the
// typed helpers are Tx's, shared by every backend.
type backend interface {
	// update runs fn in a read-write transaction and commits it if fn returns nil. A backend may run fn more
	// than once (etcd, when another writer committed first); only the last run's writes are committed.
	update(fn func(rawTx) error) error
	// view runs fn in a read-only transaction over one consistent snapshot.
	view(fn func(rawTx) error) error
	close() error
}

// rawTx is one backend transaction. Reads see the transaction's own writes.
type rawTx interface {
	// get returns the stored bytes at bucket/key, nil if absent. They are valid only during the transaction.
	get(bucket, key string) ([]byte, error)
	put(bucket, key string, value []byte) error
	// delete removes bucket/key; an absent key is not an error.
	delete(bucket, key string) error
	// scan calls fn for every key of bucket starting with prefix, in key order. fn must not write to bucket.
	scan(bucket, prefix string, fn func(key string, value []byte) error) error
}

// Close releases the store: the state file, or the etcd connection.
func (s *Store) Close() error { return s.b.close() }

// Update runs fn in one read-write transaction; fn's error rolls it back.
//
// fn may run more than once: on etcd, when another controller committed between fn's snapshot and its commit,
// fn's writes are dropped and fn runs again on a fresh snapshot. So fn must have no effect outside the Tx (no
// channel sends, no external calls, no counters it does not reset) and must not keep values from a run that
// failed; results for the caller are assigned inside fn, and the last run's are the ones that count.
func (s *Store) Update(fn func(*Tx) error) error {
	return s.b.update(func(tx rawTx) error { return fn(&Tx{tx, s.keys}) })
}

// View runs fn in one read-only transaction that sees one consistent snapshot. Like Update's, fn may run more
// than once (on etcd, if the snapshot was compacted away while fn read it).
func (s *Store) View(fn func(*Tx) error) error {
	return s.b.view(func(tx rawTx) error { return fn(&Tx{tx, s.keys}) })
}

// Tx is one transaction.
type Tx struct {
	tx   rawTx
	keys *secrets.Keyring
}

// Get decodes the value at bucket/key into v and reports whether it existed.
func (t *Tx) Get(bucket, key string, v any) (bool, error) {
	raw, err := t.tx.get(bucket, key)
	if err != nil {
		return false, err
	}
	if raw == nil {
		return false, nil
	}
	raw, err = t.open(bucket, key, raw)
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
	return t.tx.put(bucket, key, raw)
}

// Delete removes bucket/key; an absent key is not an error.
func (t *Tx) Delete(bucket, key string) error {
	return t.tx.delete(bucket, key)
}

// Scan calls fn for every key with the given prefix, in key order, with the raw JSON value (opened, in a sealed
// bucket).
func (t *Tx) Scan(bucket, prefix string, fn func(key string, raw []byte) error) error {
	return t.tx.scan(bucket, prefix, func(k string, v []byte) error {
		v, err := t.open(bucket, k, v)
		if err != nil {
			return err
		}
		return fn(k, v)
	})
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
