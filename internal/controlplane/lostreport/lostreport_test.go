package lostreport_test

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/fogo-db/fogo/internal/controlplane/lostreport"
	"github.com/fogo-db/fogo/internal/controlplane/store"
	"github.com/fogo-db/fogo/internal/postgres/lostxact"
	"github.com/fogo-db/fogo/internal/secrets"
)

func openStore(t *testing.T) (*store.Store, string) {
	t.Helper()
	keys, err := secrets.Generate()
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "state.db")
	st, err := store.Open(path, keys)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	return st, path
}

// TestSaveKeepsEveryTransactionSealed: a report whose transactions take several chunks reads back exactly; the
// rows are sealed at rest; the report reads Complete only with the mark cleared in the same write.
func TestSaveKeepsEveryTransactionSealed(t *testing.T) {
	st, path := openStore(t)
	r := lostreport.Report{Operation: "op1", Kind: "ForcedFailover", Group: "g", Database: "db", Failover: time.Now()}
	if err := st.Update(func(tx *store.Tx) error { return lostreport.Open(tx, r) }); err != nil {
		t.Fatal(err)
	}
	got, err := lostreport.Get(st, "op1", "db")
	if err != nil || got.Status != lostreport.Pending {
		t.Fatalf("opened report: %+v %v", got, err)
	}
	secret := "card-4111-1111"
	var txns []lostxact.Txn
	for i := range 3000 { // about 1.5 MB of JSON: several chunks
		v, note := fmt.Sprint(i), strings.Repeat("x", 300)+secret
		txns = append(txns, lostxact.Txn{XID: uint32(i), ChangeCount: 1, Changes: []lostxact.Change{{Schema: "public",
			Table: "t", Op: "insert", New: []lostxact.Column{{Name: "id", Type: "integer", Value: &v}, {Name: "note", Type: "text", Value: &note}}}}})
	}
	res := lostxact.Result{Divergence: 100, End: 200, Transactions: txns, TransactionCount: len(txns), ChangeCount: len(txns)}
	marked := false
	if err := lostreport.Save(st, got, res, func(tx *store.Tx) error { marked = true; return nil }); err != nil {
		t.Fatal(err)
	}
	if !marked || got.Status != lostreport.Complete || got.Chunks < 3 || got.LinkTargets != lostreport.LinkStatement {
		t.Fatalf("saved report: %+v (mark cleared %v)", got, marked)
	}
	back, err := lostreport.Transactions(st, got)
	if err != nil || len(back) != len(txns) || *back[2999].Changes[0].New[1].Value != *txns[2999].Changes[0].New[1].Value {
		t.Fatalf("read back %d transactions, %v", len(back), err)
	}
	st.Close()
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(raw, []byte(secret)) {
		t.Fatal("a lost row is stored in the clear")
	}
}

// TestFailureKinds: a transient failure is retried without counting; counted ones fail the report after
// MaxAttempts; a lasting one at once. Discard removes only a pending report.
func TestFailureKinds(t *testing.T) {
	st, _ := openStore(t)
	open := func(op string) *lostreport.Report {
		t.Helper()
		if err := st.Update(func(tx *store.Tx) error {
			return lostreport.Open(tx, lostreport.Report{Operation: op, Database: "db", Group: "g"})
		}); err != nil {
			t.Fatal(err)
		}
		r, err := lostreport.Get(st, op, "db")
		if err != nil {
			t.Fatal(err)
		}
		return r
	}
	cause := errors.New("boom")
	r := open("a")
	for range 5 {
		if final, err := lostreport.Fail(st, r, cause, lostreport.Transient, nil); final || err != nil {
			t.Fatalf("transient: final %v %v", final, err)
		}
	}
	for i := 1; i <= lostreport.MaxAttempts; i++ {
		final, err := lostreport.Fail(st, r, cause, lostreport.Counted, nil)
		if err != nil || final != (i == lostreport.MaxAttempts) {
			t.Fatalf("attempt %d: final %v %v", i, final, err)
		}
	}
	if got, _ := lostreport.Get(st, "a", "db"); got.Status != lostreport.Failed || !strings.Contains(got.Message, "rewound anyway") {
		t.Fatalf("after the attempts: %+v", got)
	}
	b := open("b")
	if final, _ := lostreport.Fail(st, b, lostxact.ErrNoSlot, lostreport.Lasting, nil); !final {
		t.Fatal("a lasting failure is retried")
	}
	for _, op := range []string{"b", "c"} {
		if op == "c" {
			open("c")
		}
		if err := st.Update(func(tx *store.Tx) error { return lostreport.Discard(tx, op, "db") }); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := lostreport.Get(st, "b", "db"); err != nil {
		t.Fatalf("Discard removed a report that was not pending: %v", err)
	}
	if _, err := lostreport.Get(st, "c", "db"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("a pending report outlived Discard: %v", err)
	}
	if list, err := lostreport.OfGroup(st, "G"); err != nil || len(list) != 2 {
		t.Fatalf("the group's reports: %d %v", len(list), err)
	}
}
