package failover

import (
	"testing"

	"github.com/fogo-db/fogo/internal/controlplane/model"
	"github.com/fogo-db/fogo/internal/errcatalog"
)

// epochDecision is the compare of record's compare-and-swap: only the epoch the plan was made at lets an
// operation act, and only its own recorded epoch counts as "already recorded".
func TestEpochDecision(t *testing.T) {
	plan := &Plan{Epoch: 4} // planned when the group was at epoch 3
	for _, tc := range []struct {
		name     string
		epoch    int64
		lastOp   string
		recorded bool
		fails    bool
	}{
		{"at the planned epoch", 3, "earlier-op", false, false},
		{"recorded by this operation", 4, "this-op", true, false},
		{"same epoch recorded by another operation", 4, "other-op", false, true},
		{"a newer decision", 5, "other-op", false, true},
		{"a newer decision by this operation's id is still newer", 5, "this-op", false, true},
		{"the group is behind the plan", 2, "earlier-op", false, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			g := &model.FailoverGroup{Name: "fg", Epoch: tc.epoch, LastFailoverOp: tc.lastOp}
			recorded, err := epochDecision(g, plan, "this-op")
			if recorded != tc.recorded || (err != nil) != tc.fails {
				t.Fatalf("recorded %v err %v; want recorded %v, fails %v", recorded, err, tc.recorded, tc.fails)
			}
			if e, ok := errcatalog.As(err); tc.fails && (!ok || e.Code != "OperationInterrupted" || e.Status != 409) {
				t.Fatalf("error %v, want OperationInterrupted (409)", err)
			}
		})
	}
}
