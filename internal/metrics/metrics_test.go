package metrics

import (
	"io"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/fogo-db/fogo/internal/controlplane/model"
	"github.com/fogo-db/fogo/internal/listener"
	"github.com/fogo-db/fogo/internal/postgres/instance"
)

type fakeSource struct {
	slots []LinkSlot
	lost  []LostReport
}

func (fakeSource) Groups() ([]model.FailoverGroup, map[string]model.Instance, error) {
	return nil, nil, nil
}
func (fakeSource) Handle(*model.Instance) *instance.Instance { return nil }
func (fakeSource) ListenerStats() []listener.Stats           { return nil }
func (f fakeSource) LinkSlots() []LinkSlot                   { return f.slots }
func (f fakeSource) LostReports() []LostReport               { return f.lost }

// TestLinkSlotMetrics: each link's slot reports the WAL it holds, and whether it is beyond max_slot_wal_keep_size.
func TestLinkSlotMetrics(t *testing.T) {
	m := New(fakeSource{slots: []LinkSlot{{Link: "w/a", RetainedBytes: 12345, WALStatus: "reserved"},
		{Link: "w/b", RetainedBytes: 99 << 20, WALStatus: "unreserved"}}})
	rec := httptest.NewRecorder()
	m.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	body, _ := io.ReadAll(rec.Body)
	for _, want := range []string{`fogo_link_slot_retained_bytes{link="w/a"} 12345`, `fogo_link_slot_unreserved{link="w/a"} 0`,
		`fogo_link_slot_retained_bytes{link="w/b"} 1.03809024e+08`, `fogo_link_slot_unreserved{link="w/b"} 1`} {
		if !strings.Contains(string(body), want) {
			t.Errorf("no %s in\n%s", want, body)
		}
	}
}

// TestLostTransactionMetrics: the lost transactions are summed per group and database over the reports, and the
// reports counted by status (a Pending or Failed one is worth an alert).
func TestLostTransactionMetrics(t *testing.T) {
	m := New(fakeSource{lost: []LostReport{{Group: "g", Database: "d1", Status: "Complete", Transactions: 3},
		{Group: "g", Database: "d1", Status: "Complete", Transactions: 2}, {Group: "g", Database: "d2", Status: "Pending"},
		{Group: "g", Database: "d2", Status: "Failed"}}})
	rec := httptest.NewRecorder()
	m.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	body, _ := io.ReadAll(rec.Body)
	for _, want := range []string{`fogo_lost_transactions_total{database="d1",group="g"} 5`,
		`fogo_lost_transactions_total{database="d2",group="g"} 0`, `fogo_lost_transaction_reports{group="g",status="Complete"} 2`,
		`fogo_lost_transaction_reports{group="g",status="Pending"} 1`, `fogo_lost_transaction_reports{group="g",status="Failed"} 1`} {
		if !strings.Contains(string(body), want) {
			t.Errorf("no %s in\n%s", want, body)
		}
	}
}
