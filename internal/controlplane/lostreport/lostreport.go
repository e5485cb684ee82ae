// Package lostreport keeps, for every forced failover, the report of what each old primary committed that the new
// primary never received: opened (Pending) when the forced failover fences the old primary, produced from the old
// primary's own WAL (package lostxact) before its rewind, and kept in the store with the failover's operation. The
// transactions it lists hold users' rows, so they are kept sealed, in chunks that fit one etcd request.
package lostreport

import (
	"encoding/json"
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/fogo-db/fogo/internal/controlplane/store"
	"github.com/fogo-db/fogo/internal/postgres/lostxact"
	"github.com/fogo-db/fogo/internal/postgres/lsn"
)

// Report statuses.
const (
	// Pending: the old primary has not been read yet. It is read before it rejoins, so a report stays pending
	// while its host is down.
	Pending = "Pending"
	// Complete: every transaction the old primary committed past the divergence point is counted.
	Complete = "Complete"
	// Incomplete: the old primary was read, but some lost transactions may be missing (Message says why).
	Incomplete = "Incomplete"
	// Failed: no report could be produced (Message says why); the old primary was rewound anyway.
	Failed = "Failed"
)

// LinkStatement is what every report says of link targets, and what the tests check: a link applies a transaction
// only once the geo-secondary has flushed its commit (the failover-safe gate), and no lost commit reached it.
const LinkStatement = "None of these transactions reached a link target: a link applies a transaction only once the " +
	"geo-secondary has flushed its commit, and none of these commits reached the geo-secondary."

// Report is one database's report for one forced failover.
type Report struct {
	Operation string    `json:"operation"`
	Kind      string    `json:"kind"` // the operation's kind: ForcedFailover, TryPlannedBeforeForcedFailover
	Group     string    `json:"group"`
	Database  string    `json:"database"`
	Failover  time.Time `json:"failover"` // when the operation was created
	// OldPrimary and NewPrimary are instance IDs.
	OldPrimary string `json:"oldPrimary"`
	NewPrimary string `json:"newPrimary"`
	Status     string `json:"status"`
	Message    string `json:"message"`
	// Attempts counts failed attempts at producing it; after maxAttempts it is Failed and the rewind goes on.
	Attempts int `json:"attempts,omitempty"`
	// What the read found (see lostxact.Result).
	Divergence       lsn.LSN `json:"divergence,omitempty"`
	SlotAt           lsn.LSN `json:"slotAt,omitempty"`
	End              lsn.LSN `json:"end,omitempty"`
	TransactionCount int     `json:"transactionCount"`
	ChangeCount      int     `json:"changeCount"`
	Truncated        bool    `json:"truncated,omitempty"`
	// Chunks is how many pieces of the transactions' JSON are stored.
	Chunks   int       `json:"chunks,omitempty"`
	Produced time.Time `json:"produced,omitzero"`
	// LinkTargets is LinkStatement once produced.
	LinkTargets string `json:"linkTargets,omitempty"`
}

// MaxAttempts bounds the attempts at producing a report: a transient failure (the new primary did not answer) is
// retried with the rejoin, a lasting one (the old primary's WAL is gone) ends as Failed.
const MaxAttempts = 3

// chunkSize bounds one stored piece of a report's transactions (before sealing): etcd takes 1.5 MB per request.
const chunkSize = 512 << 10

func key(operation, database string) string { return operation + "/" + database }

func chunkKey(operation, database string, n int) string {
	return fmt.Sprintf("%s/%s/%06d", operation, database, n)
}

// Open records a pending report in tx unless one exists already (a resumed operation).
func Open(tx *store.Tx, r Report) error {
	var cur Report
	if ok, err := tx.Get(store.LostReports, key(r.Operation, r.Database), &cur); err != nil || ok {
		return err
	}
	r.Status = Pending
	r.Message = "The old primary has not been read yet: fogo reads it, in isolation, before it rejoins as a geo-secondary."
	return tx.Put(store.LostReports, key(r.Operation, r.Database), &r)
}

// Get reads one database's report.
func Get(st *store.Store, operation, database string) (*Report, error) {
	var r Report
	err := st.View(func(tx *store.Tx) error { return tx.MustGet(store.LostReports, key(operation, database), &r) })
	return &r, err
}

// OfOperation returns the reports of an operation's databases (none for an operation that lost nothing it could
// report on: a planned failover).
func OfOperation(st *store.Store, operation string) ([]Report, error) {
	var out []Report
	err := st.View(func(tx *store.Tx) (err error) {
		out, err = store.List[Report](tx, store.LostReports, operation+"/")
		return err
	})
	return out, err
}

// All returns every report.
func All(st *store.Store) ([]Report, error) {
	var out []Report
	err := st.View(func(tx *store.Tx) (err error) {
		out, err = store.List[Report](tx, store.LostReports, "")
		return err
	})
	return out, err
}

// OfGroup returns the reports of a group's forced failovers, newest first.
func OfGroup(st *store.Store, group string) ([]Report, error) {
	all, err := All(st)
	if err != nil {
		return nil, err
	}
	var out []Report
	for _, r := range all {
		if strings.EqualFold(r.Group, group) {
			out = append(out, r)
		}
	}
	sort.SliceStable(out, func(i, j int) bool {
		if !out[i].Failover.Equal(out[j].Failover) {
			return out[i].Failover.After(out[j].Failover)
		}
		return out[i].Database < out[j].Database
	})
	return out, nil
}

// Transactions reads the transactions a report lists.
func Transactions(st *store.Store, r *Report) ([]lostxact.Txn, error) {
	var raw []byte
	err := st.View(func(tx *store.Tx) error {
		for n := 0; n < r.Chunks; n++ {
			var piece []byte
			if err := tx.MustGet(store.LostReportChunks, chunkKey(r.Operation, r.Database, n), &piece); err != nil {
				return err
			}
			raw = append(raw, piece...)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("read the lost transactions of %s: %w", r.Database, err)
	}
	txns := []lostxact.Txn{}
	if len(raw) == 0 {
		return txns, nil
	}
	if err := json.Unmarshal(raw, &txns); err != nil {
		return nil, fmt.Errorf("decode the lost transactions of %s: %w", r.Database, err)
	}
	return txns, nil
}

// Save stores what the read found: the transactions' pieces first, then the report, in one transaction with
// also (which clears the old primary's pending mark): a report reads Complete only once all of it is stored.
func Save(st *store.Store, r *Report, res lostxact.Result, also func(*store.Tx) error) error {
	raw, err := json.Marshal(res.Transactions)
	if err != nil {
		return fmt.Errorf("encode the lost transactions of %s: %w", r.Database, err)
	}
	if len(res.Transactions) == 0 {
		raw = nil
	}
	chunks := 0
	for off := 0; off < len(raw); off += chunkSize {
		piece := raw[off:min(off+chunkSize, len(raw))]
		if err := st.Update(func(tx *store.Tx) error {
			return tx.Put(store.LostReportChunks, chunkKey(r.Operation, r.Database, chunks), piece)
		}); err != nil {
			return fmt.Errorf("store the lost transactions of %s: %w", r.Database, err)
		}
		chunks++
	}
	r.Divergence, r.SlotAt, r.End = res.Divergence, res.SlotAt, res.End
	r.TransactionCount, r.ChangeCount, r.Truncated = res.TransactionCount, res.ChangeCount, res.Truncated
	r.Chunks, r.Produced, r.LinkTargets = chunks, time.Now().UTC(), LinkStatement
	r.Status, r.Message = Complete, summary(res)
	if res.Incomplete != "" {
		r.Status = Incomplete
		r.Message += " The report may be incomplete: " + res.Incomplete + "."
	}
	return put(st, r, also)
}

// put stores r, and runs also (when set) in the same transaction.
func put(st *store.Store, r *Report, also func(*store.Tx) error) error {
	return st.Update(func(tx *store.Tx) error {
		if err := tx.Put(store.LostReports, key(r.Operation, r.Database), r); err != nil {
			return err
		}
		if also != nil {
			return also(tx)
		}
		return nil
	})
}

// summary is a report's plain statement of what was lost.
func summary(res lostxact.Result) string {
	if res.TransactionCount == 0 {
		return fmt.Sprintf("Nothing was lost: the old primary committed nothing past %s, where the new primary's "+
			"history left it.", res.Divergence)
	}
	s := fmt.Sprintf("The old primary committed %d transaction(s) with %d change(s) past %s, where the new "+
		"primary's history left it; the new primary never received them, and the rewind removed them from the old "+
		"primary.", res.TransactionCount, res.ChangeCount, res.Divergence)
	if res.Truncated {
		kept := 0
		for _, t := range res.Transactions {
			kept += len(t.Changes)
		}
		s += fmt.Sprintf(" The report lists %d of them with %d of their changes: it keeps no more.",
			len(res.Transactions), kept)
	}
	return s
}

// Note is what a forced failover's operation status says of the report, or "" when nothing was lost.
func (r *Report) Note() string {
	where := "the failover group's lostTransactions/" + r.Operation
	switch {
	case r.Status == Pending:
		return fmt.Sprintf("database '%s': the lost-transaction report waits for the old primary, which is read before "+
			"it rejoins (see %s)", r.Database, where)
	case r.Status == Failed || r.Status == Incomplete:
		return fmt.Sprintf("database '%s': %s (see %s)", r.Database, r.Message, where)
	case r.TransactionCount > 0:
		return fmt.Sprintf("database '%s': %d transaction(s) the old primary committed never reached the new primary; "+
			"%s lists them, with their rows", r.Database, r.TransactionCount, where)
	}
	return ""
}

// Discard removes a pending report in tx: its forced failover was undone, so the old primary lost nothing.
func Discard(tx *store.Tx, operation, database string) error {
	var cur Report
	if ok, err := tx.Get(store.LostReports, key(operation, database), &cur); err != nil || !ok || cur.Status != Pending {
		return err
	}
	return tx.Delete(store.LostReports, key(operation, database))
}

// Failure kinds, for Fail.
type Failure int

const (
	// Transient says nothing of the old primary's WAL (its port is taken, the new primary did not answer): the
	// attempt is not counted.
	Transient Failure = iota
	// Counted may be lasting: after MaxAttempts of them the report is Failed.
	Counted
	// Lasting is certain to fail again (the old primary has no slot): the report is Failed at once.
	Lasting
)

// Fail records an attempt that could not produce the report. It returns true when the attempts are spent: the
// report then reads Failed with the reason, and the caller goes on (the rewind happens anyway), with also run in
// the same transaction.
func Fail(st *store.Store, r *Report, cause error, kind Failure, also func(*store.Tx) error) (bool, error) {
	if kind != Transient {
		r.Attempts++
	}
	final := kind == Lasting || r.Attempts >= MaxAttempts
	switch {
	case final:
		r.Status = Failed
		r.Message = fmt.Sprintf("The lost-transaction report could not be produced: %v. The old primary was rewound "+
			"anyway, so whatever it committed that the new primary did not receive is gone and cannot be listed.", cause)
	case kind == Transient:
		r.Message = fmt.Sprintf("The old primary cannot be read yet (retried with its rejoin): %v.", cause)
	default:
		r.Message = fmt.Sprintf("Reading the old primary failed (attempt %d of %d, retried with its rejoin): %v.",
			r.Attempts, MaxAttempts, cause)
	}
	if !final {
		also = nil
	}
	return final, put(st, r, also)
}
