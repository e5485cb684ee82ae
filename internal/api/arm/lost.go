package arm

// The lost-transaction reports of a group's forced failovers: an extension resource of the failover group (fogo's
// own, not in the Microsoft.Sql contract).
//
//	GET …/failoverGroups/{group}/lostTransactions               the reports, newest first, without transactions
//	GET …/failoverGroups/{group}/lostTransactions/{operationId}  one report with every transaction it lists

import (
	"net/http"
	"time"

	"github.com/google/uuid"

	"github.com/fogo-db/fogo/internal/controlplane/armid"
	"github.com/fogo-db/fogo/internal/controlplane/service"
	"github.com/fogo-db/fogo/internal/errcatalog"
	"github.com/fogo-db/fogo/internal/postgres/lostxact"
)

// lostTransactionsType is the extension resource's type.
const lostTransactionsType = "Microsoft.Sql/servers/failoverGroups/lostTransactions"

type lostView struct {
	ID         string    `json:"id"`
	Name       string    `json:"name"`
	Type       string    `json:"type"`
	Properties lostProps `json:"properties"`
}

type lostProps struct {
	Operation string `json:"operation"`
	Kind      string `json:"kind"`
	// FailoverTime is when the forced failover was asked for.
	FailoverTime     string   `json:"failoverTime"`
	TransactionCount int      `json:"transactionCount"`
	Databases        []lostDB `json:"databases"`
}

type lostDB struct {
	Database         string         `json:"database"`
	Status           string         `json:"status"`
	Message          string         `json:"message"`
	DivergedAt       string         `json:"divergedAt,omitempty"`
	OldPrimaryEnd    string         `json:"oldPrimaryEnd,omitempty"`
	TransactionCount int            `json:"transactionCount"`
	ChangeCount      int            `json:"changeCount"`
	Truncated        bool           `json:"truncated,omitempty"`
	LinkTargets      string         `json:"linkTargets,omitempty"`
	ProducedTime     string         `json:"producedTime,omitempty"`
	Transactions     []lostxact.Txn `json:"transactions,omitzero"` // nil in a list
}

func (a *API) lostTransactions(w http.ResponseWriter, r *http.Request, sid armid.ServerID, p path) {
	if !a.onlyMethods(w, r, http.MethodGet) {
		return
	}
	base := r.URL.Path
	if p.report == "" {
		reports, err := a.svc.LostTransactions(sid, p.name)
		if err != nil {
			errcatalog.Write(w, err)
			return
		}
		out := list{Value: []any{}}
		for i := range reports {
			out.Value = append(out.Value, lostReportView(base+"/"+reports[i].Operation, &reports[i]))
		}
		writeJSON(w, http.StatusOK, out)
		return
	}
	if _, err := uuid.Parse(p.report); err != nil {
		errcatalog.Write(w, errcatalog.Newf("ResourceNotFound", "'%s' is not a failover operation's ID.", p.report))
		return
	}
	report, err := a.svc.LostTransactionReport(sid, p.name, p.report)
	if err != nil {
		errcatalog.Write(w, err)
		return
	}
	writeJSON(w, http.StatusOK, lostReportView(base, report))
}

func lostReportView(id string, r *service.LostReport) lostView {
	v := lostView{ID: id, Name: r.Operation, Type: lostTransactionsType,
		Properties: lostProps{Operation: r.Operation, Databases: []lostDB{}}}
	for _, d := range r.Databases {
		v.Properties.Kind = d.Kind
		v.Properties.FailoverTime = d.Failover.Format(time.RFC3339Nano)
		v.Properties.TransactionCount += d.TransactionCount
		db := lostDB{Database: d.Database, Status: d.Status, Message: d.Message, TransactionCount: d.TransactionCount,
			ChangeCount: d.ChangeCount, Truncated: d.Truncated, LinkTargets: d.LinkTargets, Transactions: d.Transactions}
		if d.Divergence != 0 {
			db.DivergedAt, db.OldPrimaryEnd = d.Divergence.String(), d.End.String()
		}
		if !d.Produced.IsZero() {
			db.ProducedTime = d.Produced.Format(time.RFC3339Nano)
		}
		v.Properties.Databases = append(v.Properties.Databases, db)
	}
	return v
}
