package store

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/fogo-db/fogo/internal/secrets"
	"github.com/fogo-db/fogo/internal/testutil/etcdtest"
)

// contractBackend is how the contract tests reach one backend.
type contractBackend struct {
	// open returns a new, empty store (closed at cleanup).
	open func(t *testing.T, keys *secrets.Keyring) *Store
	// another returns a second *Store on the same state as s, as a second controller would open it (bbolt: a
	// file has one holder, so s itself).
	another func(t *testing.T, s *Store) *Store
	// stored returns the bytes stored at bucket/key, read around the store (nil: absent).
	stored func(t *testing.T, s *Store, bucket, key string) []byte
}

var contract = []struct {
	name string
	fn   func(t *testing.T, be contractBackend)
}{
	{"GetPutDelete", testGetPutDelete},
	{"ScanInKeyOrder", testScanInKeyOrder},
	{"SealedAtRest", testSealedAtRest},
	{"FailedUpdateLeavesNothing", testFailedUpdateLeavesNothing},
	{"ReadYourWrites", testReadYourWrites},
	{"ViewSnapshot", testViewSnapshot},
	{"ConcurrentIncrements", testConcurrentIncrements},
	{"Reseal", testReseal},
}

// TestContract runs the same tests on every backend: TestContract/bolt/... and TestContract/etcd/....
func TestContract(t *testing.T) {
	t.Run("bolt", func(t *testing.T) {
		be := contractBackend{
			open: func(t *testing.T, keys *secrets.Keyring) *Store {
				s, err := Open(filepath.Join(t.TempDir(), "state.db"), keys)
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { s.Close() })
				return s
			},
			another: func(t *testing.T, s *Store) *Store { return s },
			stored: func(t *testing.T, s *Store, bucket, key string) []byte {
				var out []byte
				err := s.b.(*boltBackend).db.View(func(tx *bolt.Tx) error {
					out = append([]byte(nil), tx.Bucket([]byte(bucket)).Get([]byte(key))...)
					return nil
				})
				if err != nil {
					t.Fatal(err)
				}
				if len(out) == 0 {
					return nil
				}
				return out
			},
		}
		for _, c := range contract {
			t.Run(c.name, func(t *testing.T) { c.fn(t, be) })
		}
	})
	t.Run("etcd", func(t *testing.T) {
		srv := etcdtest.Start(t)
		plain := plainEtcd(t, srv)
		var n atomic.Int64
		openAt := func(t *testing.T, prefix string, keys *secrets.Keyring) *Store {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			s, err := OpenEtcd(ctx, EtcdConfig{Endpoints: srv.Endpoints(), Prefix: prefix}, keys)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { s.Close() })
			return s
		}
		be := contractBackend{
			// Each test has its own prefix on the one server.
			open: func(t *testing.T, keys *secrets.Keyring) *Store {
				return openAt(t, fmt.Sprintf("/fogo-test-%d", n.Add(1)), keys)
			},
			another: func(t *testing.T, s *Store) *Store { return openAt(t, s.b.(*etcdBackend).prefix, s.keys) },
			stored: func(t *testing.T, s *Store, bucket, key string) []byte {
				resp, err := plain.Get(context.Background(), s.b.(*etcdBackend).prefix+"/"+bucket+"/"+key)
				if err != nil {
					t.Fatal(err)
				}
				if len(resp.Kvs) == 0 {
					return nil
				}
				return resp.Kvs[0].Value
			},
		}
		for _, c := range contract {
			t.Run(c.name, func(t *testing.T) { c.fn(t, be) })
		}
	})
}

// plainEtcd is a plain etcd client, to look at the keys around the store.
func plainEtcd(t *testing.T, srv *etcdtest.Server) *clientv3.Client {
	t.Helper()
	cli, err := clientv3.New(clientv3.Config{Endpoints: srv.Endpoints(), DialTimeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cli.Close() })
	return cli
}

func update(t *testing.T, s *Store, fn func(*Tx) error) {
	t.Helper()
	if err := s.Update(fn); err != nil {
		t.Fatal(err)
	}
}

func view(t *testing.T, s *Store, fn func(*Tx) error) {
	t.Helper()
	if err := s.View(fn); err != nil {
		t.Fatal(err)
	}
}

// keysOf lists the keys with prefix, in the order Scan gives them.
func keysOf(tx *Tx, bucket, prefix string) ([]string, error) {
	var out []string
	err := tx.Scan(bucket, prefix, func(k string, _ []byte) error {
		out = append(out, k)
		return nil
	})
	return out, err
}

func testGetPutDelete(t *testing.T, be contractBackend) {
	s := be.open(t, testKeys(t))
	update(t, s, func(tx *Tx) error {
		if err := tx.Put(Databases, "ws/a", item{Name: "a", N: 1}); err != nil {
			return err
		}
		return tx.Put(Databases, "ws/b", item{Name: "b", N: 2})
	})
	update(t, s, func(tx *Tx) error {
		if err := tx.Delete(Databases, "ws/b"); err != nil {
			return err
		}
		return tx.Delete(Databases, "ws/never") // absent: not an error
	})
	view(t, s, func(tx *Tx) error {
		var it item
		if ok, err := tx.Get(Databases, "ws/a", &it); err != nil || !ok || it != (item{"a", 1}) {
			t.Errorf("get ws/a: %v %v %+v", ok, err, it)
		}
		if ok, err := tx.Get(Databases, "ws/b", &it); err != nil || ok {
			t.Errorf("deleted ws/b: %v %v", ok, err)
		}
		if err := tx.MustGet(Databases, "ws/none", &it); !errors.Is(err, ErrNotFound) {
			t.Errorf("MustGet absent: %v", err)
		}
		if ok, err := tx.Get(Groups, "ws/a", &it); err != nil || ok {
			t.Errorf("same key, other bucket: %v %v", ok, err)
		}
		return nil
	})
}

func testScanInKeyOrder(t *testing.T, be contractBackend) {
	s := be.open(t, testKeys(t))
	// Written out of order; "a" and "a0" sort around "a/..." ('/' is 0x2f, '0' 0x30).
	keys := []string{"a/3", "b/1", "a/1", "a0", "a/10", "a/2", "a", "c"}
	update(t, s, func(tx *Tx) error {
		for i, k := range keys {
			if err := tx.Put(Instances, k, item{Name: k, N: i}); err != nil {
				return err
			}
		}
		return tx.Put(Groups, "a/x", item{Name: "other bucket"})
	})
	view(t, s, func(tx *Tx) error {
		got, err := keysOf(tx, Instances, "a/")
		if want := "a/1 a/10 a/2 a/3"; err != nil || strings.Join(got, " ") != want {
			t.Errorf("scan a/: %v %v, want %s", got, err, want)
		}
		all, err := keysOf(tx, Instances, "")
		if want := "a a/1 a/10 a/2 a/3 a0 b/1 c"; err != nil || strings.Join(all, " ") != want {
			t.Errorf("scan all: %v %v, want %s", all, err, want)
		}
		items, err := List[item](tx, Instances, "a/")
		if err != nil || len(items) != 4 || items[0].Name != "a/1" || items[3] != (item{"a/3", 0}) {
			t.Errorf("list a/: %+v %v", items, err)
		}
		none, err := List[item](tx, Instances, "zz")
		if err != nil || len(none) != 0 {
			t.Errorf("list zz: %+v %v", none, err)
		}
		return nil
	})
}

func testSealedAtRest(t *testing.T, be contractBackend) {
	keys := testKeys(t)
	s := be.open(t, keys)
	update(t, s, func(tx *Tx) error {
		for _, b := range []string{Servers, LinkedServices, Secrets, Databases} {
			if err := tx.Put(b, "ws/a", record{Name: b, Password: secret + b}); err != nil {
				return err
			}
		}
		return nil
	})
	for _, b := range []string{Servers, LinkedServices, Secrets} {
		raw := be.stored(t, s, b, "ws/a")
		if !secrets.IsSealed(raw) || strings.Contains(string(raw), secret) {
			t.Errorf("%s: not sealed at rest: %q", b, raw)
		}
		if id, err := secrets.KeyID(raw); err != nil || id != keys.Current() {
			t.Errorf("%s: key id %q %v", b, id, err)
		}
	}
	if raw := be.stored(t, s, Databases, "ws/a"); !strings.Contains(string(raw), secret+Databases) {
		t.Errorf("an unsealed bucket is not plain JSON: %q", raw)
	}
	if r, err := get(t, s, Servers, "ws/a"); err != nil || r.Password != secret+Servers {
		t.Fatalf("get: %+v %v", r, err)
	}
	ids, err := s.SealedKeyIDs()
	if err != nil || len(ids) != 1 || ids[keys.Current()] != 3 {
		t.Fatalf("key ids: %v %v", ids, err)
	}
}

func testFailedUpdateLeavesNothing(t *testing.T, be contractBackend) {
	s := be.open(t, testKeys(t))
	update(t, s, func(tx *Tx) error { return tx.Put(Groups, "g/keep", item{Name: "keep"}) })
	boom := errors.New("boom")
	err := s.Update(func(tx *Tx) error {
		if err := tx.Put(Groups, "g/new", item{Name: "new"}); err != nil {
			return err
		}
		if err := tx.Put(Servers, "s", record{Password: secret}); err != nil {
			return err
		}
		if err := tx.Delete(Groups, "g/keep"); err != nil {
			return err
		}
		return boom
	})
	if !errors.Is(err, boom) {
		t.Fatalf("want boom, got %v", err)
	}
	view(t, s, func(tx *Tx) error {
		got, err := keysOf(tx, Groups, "")
		if err != nil || strings.Join(got, " ") != "g/keep" {
			t.Errorf("after a failed update: %v %v", got, err)
		}
		return nil
	})
	if raw := be.stored(t, s, Servers, "s"); raw != nil {
		t.Errorf("a failed update's write is stored: %q", raw)
	}
}

func testReadYourWrites(t *testing.T, be contractBackend) {
	s := be.open(t, testKeys(t))
	update(t, s, func(tx *Tx) error {
		for _, k := range []string{"p/1", "p/3", "p/5"} {
			if err := tx.Put(Ports, k, item{Name: k}); err != nil {
				return err
			}
		}
		return tx.Put(Servers, "s", record{Password: "old"})
	})
	update(t, s, func(tx *Tx) error {
		for _, k := range []string{"p/4", "p/2", "q/1"} {
			if err := tx.Put(Ports, k, item{Name: k}); err != nil {
				return err
			}
		}
		if err := tx.Put(Ports, "p/3", item{Name: "p/3", N: 33}); err != nil {
			return err
		}
		if err := tx.Delete(Ports, "p/5"); err != nil {
			return err
		}
		if err := tx.Put(Ports, "p/6", item{Name: "p/6"}); err != nil {
			return err
		}
		if err := tx.Delete(Ports, "p/6"); err != nil { // put then delete in one update
			return err
		}
		if err := tx.Put(Servers, "s", record{Password: "new"}); err != nil {
			return err
		}
		var it item
		if err := tx.MustGet(Ports, "p/3", &it); err != nil || it.N != 33 {
			t.Errorf("own put: %+v %v", it, err)
		}
		if ok, err := tx.Get(Ports, "p/5", &it); ok || err != nil {
			t.Errorf("own delete: %v %v", ok, err)
		}
		var r record
		if err := tx.MustGet(Servers, "s", &r); err != nil || r.Password != "new" {
			t.Errorf("own sealed put: %+v %v", r, err)
		}
		got, err := keysOf(tx, Ports, "p/")
		if want := "p/1 p/2 p/3 p/4"; err != nil || strings.Join(got, " ") != want {
			t.Errorf("scan in the update: %v %v, want %s", got, err, want)
		}
		items, err := List[item](tx, Ports, "p/3")
		if err != nil || len(items) != 1 || items[0].N != 33 {
			t.Errorf("list in the update: %+v %v", items, err)
		}
		return nil
	})
	view(t, s, func(tx *Tx) error {
		got, err := keysOf(tx, Ports, "")
		if want := "p/1 p/2 p/3 p/4 q/1"; err != nil || strings.Join(got, " ") != want {
			t.Errorf("after the update: %v %v, want %s", got, err, want)
		}
		return nil
	})
}

// A View sees the state as of its start: a commit made meanwhile (by another controller, on etcd) is not in it.
func testViewSnapshot(t *testing.T, be contractBackend) {
	s := be.open(t, testKeys(t))
	other := be.another(t, s)
	update(t, s, func(tx *Tx) error { return tx.Put(Groups, "g/1", item{Name: "g/1", N: 1}) })
	done := make(chan error, 1)
	view(t, s, func(tx *Tx) error {
		var it item
		if err := tx.MustGet(Groups, "g/1", &it); err != nil || it.N != 1 {
			t.Errorf("before: %+v %v", it, err)
		}
		if done == nil {
			return nil // a rerun (etcd: the snapshot was compacted)
		}
		// Another transaction commits while this view is open. On bbolt the commit may have to wait for the
		// view to end (when it grows the file's mapping), so it is awaited only for a while here.
		go func() {
			done <- other.Update(func(tx *Tx) error {
				if err := tx.Put(Groups, "g/1", item{Name: "g/1", N: 2}); err != nil {
					return err
				}
				return tx.Put(Groups, "g/2", item{Name: "g/2"})
			})
		}()
		select {
		case err := <-done:
			if err != nil {
				t.Fatal(err)
			}
			done = nil
		case <-time.After(500 * time.Millisecond):
		}
		if err := tx.MustGet(Groups, "g/1", &it); err != nil || it.N != 1 {
			t.Errorf("the view saw a later commit: %+v %v", it, err)
		}
		if got, err := keysOf(tx, Groups, ""); err != nil || strings.Join(got, " ") != "g/1" {
			t.Errorf("the view's scan saw a later commit: %v %v", got, err)
		}
		return nil
	})
	if done != nil {
		if err := <-done; err != nil {
			t.Fatal(err)
		}
	}
	view(t, s, func(tx *Tx) error {
		var it item
		if err := tx.MustGet(Groups, "g/1", &it); err != nil || it.N != 2 {
			t.Errorf("a new view does not see the commit: %+v %v", it, err)
		}
		return nil
	})
}

// Writers racing on one counter through two stores (two controllers) lose no increment: two updates cannot both
// commit a decision made on the same state.
func testConcurrentIncrements(t *testing.T, be contractBackend) {
	const writers, each = 8, 50
	s := be.open(t, testKeys(t))
	stores := []*Store{s, be.another(t, s)}
	start := time.Now()
	var wg sync.WaitGroup
	var runs atomic.Int64
	errs := make(chan error, writers)
	for w := range writers {
		wg.Go(func() {
			st := stores[w%len(stores)]
			for range each {
				err := st.Update(func(tx *Tx) error {
					runs.Add(1)
					var c item
					if _, err := tx.Get(Meta, "counter", &c); err != nil {
						return err
					}
					c.N++
					return tx.Put(Meta, "counter", c)
				})
				if err != nil {
					errs <- err
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	var c item
	view(t, stores[1], func(tx *Tx) error { return tx.MustGet(Meta, "counter", &c) })
	if c.N != writers*each {
		t.Fatalf("counter %d, want %d: increments were lost", c.N, writers*each)
	}
	t.Logf("%d increments in %s, %d runs of fn (%d reruns after a conflict)", c.N, time.Since(start).Round(time.Millisecond),
		runs.Load(), runs.Load()-writers*each)
}

func testReseal(t *testing.T, be contractBackend) {
	keys := testKeys(t)
	s := be.open(t, keys)
	update(t, s, func(tx *Tx) error {
		if err := tx.Put(Servers, "a", record{Password: secret}); err != nil {
			return err
		}
		return tx.Put(LinkedServices, "ws/b", record{Password: secret})
	})
	id, err := keys.Rotate()
	if err != nil {
		t.Fatal(err)
	}
	if n, err := s.Reseal(); err != nil || n != 2 {
		t.Fatalf("reseal: %d %v", n, err)
	}
	if n, err := s.Reseal(); err != nil || n != 0 {
		t.Fatalf("second reseal: %d %v", n, err)
	}
	if ids, err := s.SealedKeyIDs(); err != nil || len(ids) != 1 || ids[id] != 2 {
		t.Fatalf("key ids %v %v, want all under %s", ids, err, id)
	}
	keys.Retire()
	if r, err := get(t, s, LinkedServices, "ws/b"); err != nil || r.Password != secret {
		t.Fatalf("after retire: %+v %v", r, err)
	}
	// Compact is bbolt's; on etcd it does nothing and nothing is pending.
	if _, err := s.CompactPending(); err != nil {
		t.Fatal(err)
	}
	if err := s.Compact(); err != nil {
		t.Fatal(err)
	}
	if p, err := s.CompactPending(); err != nil || p {
		t.Fatalf("pending after Compact: %v %v", p, err)
	}
	if r, err := get(t, s, Servers, "a"); err != nil || r.Password != secret {
		t.Fatalf("after compact: %+v %v", r, err)
	}
}

// An update writing more keys than one etcd Txn holds fails whole, naming the limit; one that fits commits.
func TestEtcdWriteSetOverLimit(t *testing.T) {
	srv := etcdtest.Start(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s, err := OpenEtcd(ctx, EtcdConfig{Endpoints: srv.Endpoints()}, testKeys(t))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	write := func(n int) error {
		return s.Update(func(tx *Tx) error {
			for i := range n {
				if err := tx.Put(Ports, fmt.Sprintf("p/%03d", i), item{N: i}); err != nil {
					return err
				}
			}
			return nil
		})
	}
	err = write(etcdMaxTxnOps)
	if !errors.Is(err, ErrTxnTooLarge) || !strings.Contains(err.Error(), "--max-txn-ops is 128") {
		t.Fatalf("%d writes: %v", etcdMaxTxnOps, err)
	}
	t.Log(err)
	view(t, s, func(tx *Tx) error {
		if got, err := keysOf(tx, Ports, ""); err != nil || len(got) != 0 {
			t.Errorf("a refused update left %d keys (%v)", len(got), err)
		}
		return nil
	})
	if err := write(etcdMaxTxnOps - 1); err != nil {
		t.Fatalf("%d writes (the most that fit): %v", etcdMaxTxnOps-1, err)
	}
	big := strings.Repeat("x", etcdMaxRequestSize)
	err = s.Update(func(tx *Tx) error { return tx.Put(Ports, "big", item{Name: big}) })
	if !errors.Is(err, ErrTxnTooLarge) || !strings.Contains(err.Error(), "--max-request-bytes") {
		t.Fatalf("a 1.5 MiB value: %v", err)
	}
	// The default prefix is /fogo.
	plain := plainEtcd(t, srv)
	resp, err := plain.Get(context.Background(), "/fogo/ports/p/000")
	if err != nil || len(resp.Kvs) != 1 || string(resp.Kvs[0].Value) != `{"Name":"","N":0}` {
		t.Fatalf("raw /fogo/ports/p/000: %v %v", resp, err)
	}
}

// An unreachable etcd fails OpenEtcd within its dial timeout, naming the endpoints.
func TestOpenEtcdUnreachable(t *testing.T) {
	start := time.Now()
	_, err := OpenEtcd(context.Background(), EtcdConfig{Endpoints: []string{"http://127.0.0.1:1"}, DialTimeout: 500 * time.Millisecond}, nil)
	if err == nil || !strings.Contains(err.Error(), "127.0.0.1:1") {
		t.Fatalf("open an unreachable etcd: %v", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("took %s", d)
	}
	if _, err := OpenEtcd(context.Background(), EtcdConfig{}, nil); err == nil {
		t.Fatal("no endpoints: no error")
	}
}

// TestEtcdChanges: every committed update of a state in etcd is signalled to a watcher in another process (here
// another store on the same prefix), and an update of another prefix is not; a bbolt store has nothing to watch.
func TestEtcdChanges(t *testing.T) {
	srv := etcdtest.Start(t)
	open := func(prefix string) *Store {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		s, err := OpenEtcd(ctx, EtcdConfig{Endpoints: srv.Endpoints(), Prefix: prefix}, testKeys(t))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close() })
		return s
	}
	writer, watcher, other := open("/changes"), open("/changes"), open("/changes-other")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	changes := watcher.Changes(ctx)
	drain := func() {
		for {
			select {
			case <-changes:
			case <-time.After(300 * time.Millisecond):
				return
			}
		}
	}
	drain() // the signal of the watch's setup
	put := func(s *Store, n int) {
		t.Helper()
		update(t, s, func(tx *Tx) error { return tx.Put(Ports, "p", item{N: n}) })
	}
	put(other, 1)
	select {
	case <-changes:
		t.Fatal("an update under another prefix was signalled")
	case <-time.After(500 * time.Millisecond):
	}
	for i := range 3 {
		put(writer, i)
		select {
		case <-changes:
		case <-time.After(5 * time.Second):
			t.Fatalf("update %d was not signalled", i)
		}
	}
	bolt, err := Open(filepath.Join(t.TempDir(), "state.db"), testKeys(t))
	if err != nil {
		t.Fatal(err)
	}
	defer bolt.Close()
	if bolt.Changes(ctx) != nil {
		t.Fatal("a bbolt store has changes to watch")
	}
}

// TestEtcdBlindWriteStillConflicts: an update that reads nothing commits without a condition (one round trip),
// yet it still voids a concurrent update that read before it: that one runs again and sees the blind write.
func TestEtcdBlindWriteStillConflicts(t *testing.T) {
	srv := etcdtest.Start(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	open := func() *Store {
		s, err := OpenEtcd(ctx, EtcdConfig{Endpoints: srv.Endpoints(), Prefix: "/blind"}, testKeys(t))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close() })
		return s
	}
	s1, s2 := open(), open()
	update(t, s1, func(tx *Tx) error { return tx.Put(Ports, "a", item{N: 1}) })
	attempts := 0
	var sawBlind bool
	update(t, s1, func(tx *Tx) error {
		attempts++
		var a, b item
		if _, err := tx.Get(Ports, "a", &a); err != nil {
			return err
		}
		if attempts == 1 { // another process writes blind between this read and this commit
			update(t, s2, func(tx *Tx) error { return tx.Put(Ports, "b", item{N: 7}) })
		}
		ok, err := tx.Get(Ports, "b", &b)
		if err != nil {
			return err
		}
		sawBlind = ok && b.N == 7
		return tx.Put(Ports, "a", item{N: a.N + b.N})
	})
	if attempts != 2 || !sawBlind {
		t.Fatalf("the update that read before a blind write committed after it ran %d times (saw it: %v), want 2 (and seen)", attempts, sawBlind)
	}
	var a item
	view(t, s2, func(tx *Tx) error { _, err := tx.Get(Ports, "a", &a); return err })
	if a.N != 8 {
		t.Fatalf("a = %d, want 1 + 7", a.N)
	}
}
