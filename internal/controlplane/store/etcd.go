package store

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"math/rand/v2"
	"sort"
	"strings"
	"sync/atomic"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/fogo-db/fogo/internal/secrets"
)

// etcd's default limits on one transaction (etcd --max-txn-ops and --max-request-bytes). An update must fit in
// one etcd Txn, the revision key's put included, so it may write at most etcdMaxTxnOps-1 keys.
const (
	etcdMaxTxnOps      = 128
	etcdMaxRequestSize = 1536 * 1024
	// etcdRequestOverhead is what a request is allowed for its framing besides its keys and values: a generous
	// allowance of etcdOpOverhead per operation plus this much for the transaction and its compare.
	etcdRequestOverhead = 4096
	etcdOpOverhead      = 32
)

const (
	// etcdMaxAttempts bounds how many times Update runs fn when other writers keep committing first.
	etcdMaxAttempts = 100
	// etcdRequestTimeout bounds each etcd request.
	etcdRequestTimeout = 10 * time.Second
	// etcdScanPage is how many keys a scan reads per request.
	etcdScanPage = 1000
)

// DefaultEtcdPrefix is the key prefix under which the store lives when EtcdConfig.Prefix is empty.
const DefaultEtcdPrefix = "/fogo"

// ErrTxnTooLarge is returned by Update on etcd when the transaction writes more than one etcd Txn can hold. Such
// an update is refused whole, never split.
var ErrTxnTooLarge = errors.New("transaction too large for one etcd Txn")

// ErrTooManyRetries is returned by Update on etcd when other writers committed first on every attempt.
var ErrTooManyRetries = errors.New("transaction kept conflicting with other writers")

// EtcdConfig says how to reach the etcd cluster that holds the store.
type EtcdConfig struct {
	// Endpoints are the etcd client URLs, e.g. https://10.0.0.1:2379.
	Endpoints []string
	// Prefix is the key prefix of the store, DefaultEtcdPrefix if empty. Every value is at <Prefix>/<bucket>/<key>.
	Prefix string
	// Username and Password authenticate to etcd when Username is set.
	Username, Password string
	// TLS is the client TLS configuration; nil for plain connections.
	TLS *tls.Config
	// DialTimeout bounds connecting to etcd (5s if zero).
	DialTimeout time.Duration
}

// etcdBackend keeps each value at <prefix>/<bucket>/<key>, and <prefix>/_rev, which every committed update
// rewrites, so that its mod revision names the last committed update.
type etcdBackend struct {
	cli    *clientv3.Client
	prefix string
	base   atomic.Pointer[context.Context] // Bind's context: every request ends with it
}

// request returns the context of one etcd request: bounded by etcdRequestTimeout and ended with Bind's context.
func (b *etcdBackend) request() (context.Context, context.CancelFunc) {
	parent := context.Background()
	if p := b.base.Load(); p != nil {
		parent = *p
	}
	return context.WithTimeout(parent, etcdRequestTimeout)
}

// OpenEtcd opens the store kept in etcd under cfg.Prefix; keys seals and opens the sealed buckets as for Open.
// ctx bounds connecting and the first request. Several stores (processes) may use the same prefix at once: their
// transactions are serializable, as on one bbolt file.
func OpenEtcd(ctx context.Context, cfg EtcdConfig, keys *secrets.Keyring) (*Store, error) {
	if len(cfg.Endpoints) == 0 {
		return nil, errors.New("open etcd state: no endpoints")
	}
	prefix := strings.TrimRight(cfg.Prefix, "/")
	if cfg.Prefix == "" {
		prefix = DefaultEtcdPrefix
	}
	dial := cfg.DialTimeout
	if dial <= 0 {
		dial = 5 * time.Second
	}
	cli, err := clientv3.New(clientv3.Config{
		Endpoints: cfg.Endpoints, Username: cfg.Username, Password: cfg.Password, TLS: cfg.TLS,
		DialTimeout: dial, Context: context.WithoutCancel(ctx), Logger: zap.NewNop(),
	})
	if err != nil {
		return nil, fmt.Errorf("open etcd state %v: %w", cfg.Endpoints, err)
	}
	cctx, cancel := context.WithTimeout(ctx, dial)
	defer cancel()
	if _, err := cli.Get(cctx, prefix+"/_rev"); err != nil {
		cli.Close()
		return nil, fmt.Errorf("open etcd state %v: %w", cfg.Endpoints, err)
	}
	return &Store{b: &etcdBackend{cli: cli, prefix: prefix}, keys: keys}, nil
}

func (b *etcdBackend) close() error { return b.cli.Close() }

func (b *etcdBackend) revKey() string { return b.prefix + "/_rev" }

func (b *etcdBackend) key(bucket, key string) string { return b.prefix + "/" + bucket + "/" + key }

// view runs fn over the snapshot at the revision current when it starts; it runs fn again if etcd compacted that
// revision away meanwhile.
func (b *etcdBackend) view(fn func(rawTx) error) error {
	for attempt := 1; ; attempt++ {
		tx, err := b.begin()
		if err != nil {
			return err
		}
		err = fn(tx)
		if tx.compacted && attempt < etcdMaxAttempts {
			continue
		}
		return err
	}
}

// update runs fn on a snapshot, buffering its writes, then commits them in one etcd Txn on condition that no
// update committed since the snapshot (the mod revision of the revision key is still the one seen). Otherwise
// it runs fn again on a fresh snapshot, after a short random pause, up to etcdMaxAttempts times. The snapshot is
// taken at fn's first read: an update that reads nothing (a step of an operation written as it begins) commits
// without a condition, in one round trip instead of two; it still rewrites the revision key, so an update that
// read before it and commits after it runs again.
func (b *etcdBackend) update(fn func(rawTx) error) error {
	for attempt := 1; attempt <= etcdMaxAttempts; attempt++ {
		if attempt > 1 {
			// Random, growing up to 20ms: writers that collided do not collide again in step.
			time.Sleep(time.Duration(rand.Int64N(int64(min(attempt, 20)) * int64(time.Millisecond))))
		}
		tx := b.lazyTx()
		err := fn(tx)
		if tx.compacted {
			continue
		}
		if err != nil {
			return err
		}
		if len(tx.writes) == 0 {
			return nil // read-only: serialized at its snapshot
		}
		ok, err := tx.commit()
		if err != nil {
			return err
		}
		if ok {
			return nil
		}
	}
	return fmt.Errorf("etcd state: %w (%d attempts)", ErrTooManyRetries, etcdMaxAttempts)
}

// begin starts a transaction at the current revision.
func (b *etcdBackend) begin() (*etcdTx, error) {
	tx := b.lazyTx()
	return tx, tx.snapshot()
}

// lazyTx starts a transaction whose snapshot is taken at its first read.
func (b *etcdBackend) lazyTx() *etcdTx { return &etcdTx{b: b, writes: map[string]*[]byte{}} }

// snapshot fixes the transaction's revision, once: the current one, read linearizably.
func (t *etcdTx) snapshot() error {
	if t.begun {
		return nil
	}
	ctx, cancel := t.b.request()
	defer cancel()
	resp, err := t.b.cli.Get(ctx, t.b.revKey())
	if err != nil {
		return fmt.Errorf("etcd state: %w", err)
	}
	t.rev, t.begun = resp.Header.Revision, true
	if len(resp.Kvs) > 0 {
		t.seenMod = resp.Kvs[0].ModRevision
	}
	return nil
}

// etcdTx reads at revision rev and buffers its writes by full etcd key (nil: deleted).
//
// Only begin's read of the revision is linearizable (a round of etcd's consensus); the reads at rev that follow
// are serializable, answered by the member from its own copy: what a key held at a given revision never changes,
// and the member that answered begin has applied rev. A member the client moved to meanwhile that has not yet
// applied rev answers ErrFutureRev, and the run starts again, as after a compaction.
type etcdTx struct {
	b *etcdBackend
	// rev is the snapshot's revision; seenMod is the revision key's mod revision in it (0: absent). begun: they
	// are set (the transaction has read).
	rev, seenMod int64
	begun        bool
	writes       map[string]*[]byte
	// compacted is set when a read found rev compacted away, or not yet applied by the member that answered: the
	// run is void and fn runs again.
	compacted bool
}

func (t *etcdTx) readErr(bucket, key string, err error) error {
	if errors.Is(err, rpctypes.ErrCompacted) || errors.Is(err, rpctypes.ErrFutureRev) {
		t.compacted = true
	}
	return fmt.Errorf("etcd state: read %s/%s: %w", bucket, key, err)
}

func (t *etcdTx) get(bucket, key string) ([]byte, error) {
	k := t.b.key(bucket, key)
	if w, ok := t.writes[k]; ok {
		if w == nil {
			return nil, nil
		}
		return *w, nil
	}
	if err := t.snapshot(); err != nil {
		return nil, err
	}
	ctx, cancel := t.b.request()
	defer cancel()
	resp, err := t.b.cli.Get(ctx, k, clientv3.WithRev(t.rev), clientv3.WithSerializable())
	if err != nil {
		return nil, t.readErr(bucket, key, err)
	}
	if len(resp.Kvs) == 0 {
		return nil, nil
	}
	return resp.Kvs[0].Value, nil
}

func (t *etcdTx) put(bucket, key string, value []byte) error {
	v := append([]byte(nil), value...)
	t.writes[t.b.key(bucket, key)] = &v
	return nil
}

func (t *etcdTx) delete(bucket, key string) error {
	t.writes[t.b.key(bucket, key)] = nil
	return nil
}

// scan reads the snapshot's keys in pages, merges the buffered writes in, and then calls fn in key order.
func (t *etcdTx) scan(bucket, prefix string, fn func(key string, value []byte) error) error {
	base := t.b.key(bucket, "")
	from := base + prefix
	end := clientv3.GetPrefixRangeEnd(from)
	merged := map[string][]byte{}
	if err := t.snapshot(); err != nil {
		return err
	}
	for {
		ctx, cancel := t.b.request()
		resp, err := t.b.cli.Get(ctx, from, clientv3.WithRange(end), clientv3.WithRev(t.rev), clientv3.WithLimit(etcdScanPage),
			clientv3.WithSerializable())
		cancel()
		if err != nil {
			return t.readErr(bucket, prefix+"*", err)
		}
		for _, kv := range resp.Kvs {
			merged[string(kv.Key)] = kv.Value
		}
		if !resp.More || len(resp.Kvs) == 0 {
			break
		}
		from = string(resp.Kvs[len(resp.Kvs)-1].Key) + "\x00"
	}
	for k, w := range t.writes {
		if !strings.HasPrefix(k, base+prefix) {
			continue
		}
		if w == nil {
			delete(merged, k)
		} else {
			merged[k] = *w
		}
	}
	keys := make([]string, 0, len(merged))
	for k := range merged {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		if err := fn(k[len(base):], merged[k]); err != nil {
			return err
		}
	}
	return nil
}

// commit writes the buffered writes in one etcd Txn if no update committed since the snapshot; it reports
// whether it did. A write set that does not fit in one Txn is refused with ErrTxnTooLarge.
func (t *etcdTx) commit() (bool, error) {
	keys := make([]string, 0, len(t.writes))
	size := etcdRequestOverhead
	for k, w := range t.writes {
		keys = append(keys, k)
		size += len(k) + etcdOpOverhead
		if w != nil {
			size += len(*w)
		}
	}
	if len(keys)+1 > etcdMaxTxnOps {
		return false, fmt.Errorf("etcd state: %w: %d writes, more than %d (etcd's --max-txn-ops is %d per Txn, one of them the revision key)",
			ErrTxnTooLarge, len(keys), etcdMaxTxnOps-1, etcdMaxTxnOps)
	}
	if size > etcdMaxRequestSize {
		return false, fmt.Errorf("etcd state: %w: about %d bytes, more than etcd's --max-request-bytes of %d",
			ErrTxnTooLarge, size, etcdMaxRequestSize)
	}
	sort.Strings(keys) // a deterministic request, easier to read in etcd's logs
	ops := make([]clientv3.Op, 0, len(keys)+1)
	for _, k := range keys {
		if w := t.writes[k]; w == nil {
			ops = append(ops, clientv3.OpDelete(k))
		} else {
			ops = append(ops, clientv3.OpPut(k, string(*w)))
		}
	}
	ops = append(ops, clientv3.OpPut(t.b.revKey(), fmt.Sprint(t.rev)))
	ctx, cancel := t.b.request()
	defer cancel()
	txn := t.b.cli.Txn(ctx)
	if t.begun { // a transaction that read nothing has nothing that could have changed under it
		txn = txn.If(clientv3.Compare(clientv3.ModRevision(t.b.revKey()), "=", t.seenMod))
	}
	resp, err := txn.Then(ops...).Commit()
	if err != nil {
		return false, fmt.Errorf("etcd state: commit: %w", err)
	}
	return resp.Succeeded, nil
}

// Etcd returns the etcd client and key prefix of a store kept in etcd (nil for a bbolt store): the controllers
// elect their leader under the same prefix, with the same client.
func (s *Store) Etcd() (*clientv3.Client, string) {
	if b, ok := s.b.(*etcdBackend); ok {
		return b.cli, b.prefix
	}
	return nil, ""
}

// Changes signals, without blocking, every committed update of a state kept in etcd (each one rewrites
// <prefix>/_rev, so one key's watch sees them all), until ctx ends; also whenever its watch had to be set up
// again, since an update may have been missed meanwhile. Signals coalesce: a reader that is busy gets one for
// all the updates it missed. A bbolt store returns nil (no other process writes it).
func (s *Store) Changes(ctx context.Context) <-chan struct{} {
	b, ok := s.b.(*etcdBackend)
	if !ok {
		return nil
	}
	return WatchSignals(ctx, b.cli, b.revKey())
}

// WatchSignals signals, without blocking, every change etcd reports of key (with opts, e.g. WithPrefix) until
// ctx ends, and also whenever its watch had to be set up again (compacted, or no etcd leader: a change may have
// been missed meanwhile). Signals coalesce: a reader that is busy gets one for all the changes it missed.
func WatchSignals(ctx context.Context, cli *clientv3.Client, key string, opts ...clientv3.OpOption) <-chan struct{} {
	out := make(chan struct{}, 1)
	signal := func() {
		select {
		case out <- struct{}{}:
		default:
		}
	}
	go keepWatching(ctx, cli, key, opts, func(clientv3.WatchResponse) { signal() }, signal)
	return out
}

// keepWatching watches key (with opts) until ctx ends, calling each with every response. A watch that ends
// (compacted, or no etcd leader) is set up again a second later, after lapsed is called: changes may have been
// missed meanwhile.
func keepWatching(ctx context.Context, cli *clientv3.Client, key string, opts []clientv3.OpOption,
	each func(clientv3.WatchResponse), lapsed func()) {
	for ctx.Err() == nil {
		wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
		for resp := range cli.Watch(wctx, key, opts...) {
			if resp.Err() != nil {
				break
			}
			each(resp)
		}
		cancel()
		lapsed()
		select {
		case <-ctx.Done():
		case <-time.After(time.Second):
		}
	}
}

// WatchBucket sends, for a store on etcd, every value written to bucket (one that is not sealed) as it is
// committed, until ctx ends; nil on bbolt or for a sealed bucket. A watch that had to be set up again starts from
// the current values: nothing is replayed. The channel is closed when ctx ends.
func (s *Store) WatchBucket(ctx context.Context, bucket string) <-chan []byte {
	b, ok := s.b.(*etcdBackend)
	if !ok || sealedBuckets[bucket] {
		return nil
	}
	out := make(chan []byte, 64)
	go func() {
		defer close(out)
		keepWatching(ctx, b.cli, b.key(bucket, ""), []clientv3.OpOption{clientv3.WithPrefix()}, func(resp clientv3.WatchResponse) {
			for _, ev := range resp.Events {
				if ev.Type != clientv3.EventTypePut {
					continue
				}
				select {
				case out <- ev.Kv.Value:
				case <-ctx.Done():
				}
			}
		}, func() {})
	}()
	return out
}

// Bind ends every later etcd request of the store when ctx ends (a controller that lost its leadership stops
// at once instead of waiting for its requests to time out). A bbolt store ignores it.
func (s *Store) Bind(ctx context.Context) {
	if b, ok := s.b.(*etcdBackend); ok {
		b.base.Store(&ctx)
	}
}
