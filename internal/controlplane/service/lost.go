package service

import (
	"strings"

	"github.com/fogo-db/fogo/internal/controlplane/armid"
	"github.com/fogo-db/fogo/internal/controlplane/lostreport"
	"github.com/fogo-db/fogo/internal/errcatalog"
	"github.com/fogo-db/fogo/internal/postgres/lostxact"
)

// LostReport is one forced failover's lost-transaction report: one part per database of the group.
type LostReport struct {
	Operation string
	Databases []LostDatabase
}

// LostDatabase is one database's part, with the transactions it lists when they were asked for.
type LostDatabase struct {
	lostreport.Report
	Transactions []lostxact.Txn
}

// LostTransactions returns the lost-transaction reports of a group's forced failovers, newest first, without
// their transactions. The group must be seen from server, as for GetGroup.
func (s *Service) LostTransactions(server armid.ServerID, group string) ([]LostReport, error) {
	g, err := s.GetGroup(server, group)
	if err != nil {
		return nil, err
	}
	reports, err := lostreport.OfGroup(s.st, g.Key())
	if err != nil {
		return nil, err
	}
	var out []LostReport
	for _, r := range reports {
		if len(out) == 0 || out[len(out)-1].Operation != r.Operation {
			out = append(out, LostReport{Operation: r.Operation})
		}
		last := &out[len(out)-1]
		last.Databases = append(last.Databases, LostDatabase{Report: r})
	}
	return out, nil
}

// LostTransactionReport returns one forced failover's report with every transaction it lists.
func (s *Service) LostTransactionReport(server armid.ServerID, group, operation string) (*LostReport, error) {
	g, err := s.GetGroup(server, group)
	if err != nil {
		return nil, err
	}
	reports, err := lostreport.OfOperation(s.st, operation)
	if err != nil {
		return nil, err
	}
	out := &LostReport{Operation: operation}
	for _, r := range reports {
		if !strings.EqualFold(r.Group, g.Key()) {
			continue
		}
		txns, err := lostreport.Transactions(s.st, &r)
		if err != nil {
			return nil, err
		}
		out.Databases = append(out.Databases, LostDatabase{Report: r, Transactions: txns})
	}
	if len(out.Databases) == 0 {
		return nil, errcatalog.Newf("ResourceNotFound", "Failover group '%s' has no lost-transaction report for "+
			"operation '%s': only a forced failover has one (a planned failover loses nothing).", group, operation)
	}
	return out, nil
}
