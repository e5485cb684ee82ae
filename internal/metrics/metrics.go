// Package metrics exposes fogo's state in the Prometheus text format: the role of every instance, replication lag
// per group database (bytes and seconds, read from the primary's pg_stat_replication at scrape time), the WAL each
// replication slot holds on the primary (and whether it was invalidated), failovers by
// kind and initiator, listener connections (active, waiting, accepted, refused) and operation durations.
package metrics

import (
	"context"
	"net/http"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/fogo-db/fogo/internal/controlplane/model"
	"github.com/fogo-db/fogo/internal/listener"
	"github.com/fogo-db/fogo/internal/postgres/instance"
)

// Source is what the collector reads at scrape time.
type Source interface {
	// Groups returns every failover group and the instances they use, by ID.
	Groups() ([]model.FailoverGroup, map[string]model.Instance, error)
	// Handle gives access to an instance.
	Handle(rec *model.Instance) *instance.Instance
	// ListenerStats returns the listeners' counters.
	ListenerStats() []listener.Stats
	// LinkSlots returns the WAL each link connection's slot holds on its source.
	LinkSlots() []LinkSlot
	// LostReports returns every forced failover's lost-transaction report, one per database.
	LostReports() []LostReport
}

// LostReport is one database's lost-transaction report of one forced failover.
type LostReport struct {
	Group, Database string
	Status          string // Pending, Complete, Incomplete, Failed
	Transactions    int
}

// LinkSlot is the WAL a link connection's replication slot holds on its source.
type LinkSlot struct {
	Link          string // workspace/name
	RetainedBytes int64
	WALStatus     string // reserved, extended, unreserved (may be invalidated at the next checkpoint) or lost
}

// Metrics owns fogo's registry.
type Metrics struct {
	reg       *prometheus.Registry
	failovers *prometheus.CounterVec
	opSeconds *prometheus.HistogramVec
}

// New registers fogo's metrics over src.
func New(src Source) *Metrics {
	m := &Metrics{
		reg: prometheus.NewRegistry(),
		failovers: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "fogo_failovers_total", Help: "Failovers that completed, by kind (planned, forced, tryPlanned) and initiator.",
		}, []string{"kind", "initiated_by"}),
		opSeconds: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "fogo_operation_duration_seconds", Help: "Duration of long-running operations by kind and final status.",
			Buckets: []float64{.05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 300},
		}, []string{"kind", "status"}),
	}
	m.reg.MustRegister(m.failovers, m.opSeconds, &collector{src: src},
		prometheus.NewGoCollector(), prometheus.NewProcessCollector(prometheus.ProcessCollectorOpts{}))
	return m
}

// Handler serves the registry.
func (m *Metrics) Handler() http.Handler {
	return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{})
}

// ObserveOperation records a finished operation (called once per operation).
func (m *Metrics) ObserveOperation(op *model.Operation, initiatedBy string) {
	m.opSeconds.WithLabelValues(op.Kind, op.Status).Observe(op.Finished.Sub(op.Created).Seconds())
	if op.Status != model.OpSucceeded {
		return
	}
	if !op.IsFailover() {
		return
	}
	if initiatedBy == "" {
		initiatedBy = "user"
	}
	m.failovers.WithLabelValues(op.Kind, initiatedBy).Inc()
}

var (
	roleDesc = prometheus.NewDesc("fogo_instance_role",
		"1 for the role each group database's instance has now (role=primary|secondary).",
		[]string{"group", "database", "server", "role"}, nil)
	upDesc = prometheus.NewDesc("fogo_instance_up", "1 when the instance's postmaster runs.",
		[]string{"group", "database", "server", "role"}, nil)
	lagBytesDesc = prometheus.NewDesc("fogo_replication_lag_bytes",
		"WAL the primary wrote that the geo-secondary has not replayed.", []string{"group", "database"}, nil)
	lagSecondsDesc = prometheus.NewDesc("fogo_replication_lag_seconds",
		"pg_stat_replication.replay_lag of the geo-secondary (0 when idle and caught up).", []string{"group", "database"}, nil)
	streamingDesc = prometheus.NewDesc("fogo_replication_streaming",
		"1 when the geo-secondary streams from the primary.", []string{"group", "database"}, nil)
	slotRetainedDesc = prometheus.NewDesc("fogo_replication_slot_retained_bytes",
		"WAL a replication slot holds on the group database's primary (its restart point to the current position; bounded by --max-slot-wal-keep-size).",
		[]string{"group", "database", "slot"}, nil)
	slotLostDesc = prometheus.NewDesc("fogo_replication_slot_lost",
		"1 when the slot was invalidated (wal_status lost): its consumer cannot follow any more (a geo-secondary is seeded again).",
		[]string{"group", "database", "slot"}, nil)
	linkSlotRetainedDesc = prometheus.NewDesc("fogo_link_slot_retained_bytes",
		"WAL a link connection's replication slot holds on its source (its restart point to the current position), whether the link runs or not.",
		[]string{"link"}, nil)
	linkSlotUnreservedDesc = prometheus.NewDesc("fogo_link_slot_unreserved",
		"1 when a link connection's slot holds more WAL than max_slot_wal_keep_size (wal_status unreserved or lost): the next checkpoint may invalidate it, and the link then resynchronises every table.",
		[]string{"link"}, nil)
	epochDesc    = prometheus.NewDesc("fogo_group_epoch", "The group's failover epoch.", []string{"group"}, nil)
	lostTxnsDesc = prometheus.NewDesc("fogo_lost_transactions_total",
		"Transactions forced failovers lost: committed on an old primary, never received by the new one (the sum of the lost-transaction reports).",
		[]string{"group", "database"}, nil)
	lostReportsDesc = prometheus.NewDesc("fogo_lost_transaction_reports",
		"Lost-transaction reports by status: Pending (the old primary was not read yet), Complete, Incomplete or Failed.",
		[]string{"group", "status"}, nil)
	lisActiveDesc = prometheus.NewDesc("fogo_listener_connections_active",
		"Sessions relayed by a listener now.", []string{"group", "listener"}, nil)
	lisWaitingDesc = prometheus.NewDesc("fogo_listener_connections_waiting",
		"New read-write sessions waiting for a failover to finish.", []string{"group", "listener"}, nil)
	lisAcceptedDesc = prometheus.NewDesc("fogo_listener_connections_accepted_total",
		"Connections a listener accepted.", []string{"group", "listener"}, nil)
	lisRefusedDesc = prometheus.NewDesc("fogo_listener_connections_refused_total",
		"Connections a listener refused (bad startup, no route, backend unreachable).", []string{"group", "listener"}, nil)
)

// collector reads the current state at scrape time.
type collector struct {
	src Source
	mu  sync.Mutex // one scrape at a time: each opens a connection per primary
}

func (c *collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{roleDesc, upDesc, lagBytesDesc, lagSecondsDesc, streamingDesc, slotRetainedDesc, slotLostDesc, linkSlotRetainedDesc, linkSlotUnreservedDesc, epochDesc,
		lostTxnsDesc, lostReportsDesc, lisActiveDesc, lisWaitingDesc, lisAcceptedDesc, lisRefusedDesc} {
		ch <- d
	}
}

func (c *collector) Collect(ch chan<- prometheus.Metric) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, s := range c.src.ListenerStats() {
		ch <- prometheus.MustNewConstMetric(lisActiveDesc, prometheus.GaugeValue, float64(s.Active), s.Group, s.Kind)
		ch <- prometheus.MustNewConstMetric(lisWaitingDesc, prometheus.GaugeValue, float64(s.Waiting), s.Group, s.Kind)
		ch <- prometheus.MustNewConstMetric(lisAcceptedDesc, prometheus.CounterValue, float64(s.Accepted), s.Group, s.Kind)
		ch <- prometheus.MustNewConstMetric(lisRefusedDesc, prometheus.CounterValue, float64(s.Refused), s.Group, s.Kind)
	}
	for _, s := range c.src.LinkSlots() {
		unreserved := 0.0
		if s.WALStatus == "unreserved" || s.WALStatus == "lost" {
			unreserved = 1
		}
		ch <- prometheus.MustNewConstMetric(linkSlotRetainedDesc, prometheus.GaugeValue, float64(s.RetainedBytes), s.Link)
		ch <- prometheus.MustNewConstMetric(linkSlotUnreservedDesc, prometheus.GaugeValue, unreserved, s.Link)
	}
	c.collectLost(ch)
	groups, insts, err := c.src.Groups()
	if err != nil {
		return
	}
	for _, g := range groups {
		ch <- prometheus.MustNewConstMetric(epochDesc, prometheus.GaugeValue, float64(g.Epoch), g.Name)
		for _, d := range g.Databases {
			c.collectDatabase(ch, &g, d, insts)
		}
	}
}

// collectLost sums the lost-transaction reports by group and database, and counts them by status.
func (c *collector) collectLost(ch chan<- prometheus.Metric) {
	lost := map[[2]string]int{}
	byStatus := map[[2]string]int{}
	for _, r := range c.src.LostReports() {
		lost[[2]string{r.Group, r.Database}] += r.Transactions
		byStatus[[2]string{r.Group, r.Status}]++
	}
	for k, n := range lost {
		ch <- prometheus.MustNewConstMetric(lostTxnsDesc, prometheus.CounterValue, float64(n), k[0], k[1])
	}
	for k, n := range byStatus {
		ch <- prometheus.MustNewConstMetric(lostReportsDesc, prometheus.GaugeValue, float64(n), k[0], k[1])
	}
}

func (c *collector) collectDatabase(ch chan<- prometheus.Metric, g *model.FailoverGroup, d model.GroupDatabase, insts map[string]model.Instance) {
	primary, okP := insts[d.Primary]
	secondary, okS := insts[d.Secondary]
	for _, x := range []struct {
		rec    model.Instance
		ok     bool
		role   string
		server string
	}{{primary, okP, "primary", g.Primary.Name}, {secondary, okS, "secondary", g.Secondary.Name}} {
		if !x.ok {
			continue
		}
		ch <- prometheus.MustNewConstMetric(roleDesc, prometheus.GaugeValue, 1, g.Name, d.Name, x.server, x.role)
		up := 0.0
		if _, running := c.src.Handle(&x.rec).Running(); running {
			up = 1
		}
		ch <- prometheus.MustNewConstMetric(upDesc, prometheus.GaugeValue, up, g.Name, d.Name, x.server, x.role)
	}
	if !okP || !okS {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	replicas, err := c.src.Handle(&primary).ReplicationStatus(ctx)
	streaming := 0.0
	if err == nil {
		for _, r := range replicas {
			if r.ApplicationName != secondary.ID {
				continue
			}
			if r.State == "streaming" {
				streaming = 1
			}
			ch <- prometheus.MustNewConstMetric(lagBytesDesc, prometheus.GaugeValue, float64(r.LagBytes), g.Name, d.Name)
			ch <- prometheus.MustNewConstMetric(lagSecondsDesc, prometheus.GaugeValue, r.ReplayLagSeconds, g.Name, d.Name)
		}
	}
	ch <- prometheus.MustNewConstMetric(streamingDesc, prometheus.GaugeValue, streaming, g.Name, d.Name)
	if slots, err := c.src.Handle(&primary).SlotsStatus(ctx); err == nil {
		for _, s := range slots {
			lost := 0.0
			if s.Lost() {
				lost = 1
			}
			ch <- prometheus.MustNewConstMetric(slotRetainedDesc, prometheus.GaugeValue, float64(s.RetainedBytes), g.Name, d.Name, s.Name)
			ch <- prometheus.MustNewConstMetric(slotLostDesc, prometheus.GaugeValue, lost, g.Name, d.Name, s.Name)
		}
	}
}
