package bench

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"strings"
	"time"

	"github.com/fogo-db/fogo/internal/clustersim"
	"github.com/fogo-db/fogo/internal/testutil/netns"
)

// ClusterOptions configure the failover benchmark in cluster mode (internal/clustersim: hosts in network
// namespaces, etcd, agents in eastus and westus, a controller).
type ClusterOptions struct {
	Iterations int // planned failovers, back and forth (default 5)
	Unplanned  int // host losses, each of the then primary's host (default 3)
	// RegionLatency is added to every round trip between westus (west-1's host) and everything else (eastus:
	// east-1, etcd, the controller): west-1's host's packets leave late by this much (netns.SetLatency). Default
	// 10ms; negative: none.
	RegionLatency time.Duration
	LeaseTTL      time.Duration // the agents' lease (default 6s)
	// GraceUnit is the controller's --grace-period-unit: the group's grace period, the smallest one (1 minute),
	// lasts this long (default 1s).
	GraceUnit time.Duration
	Settle    time.Duration // writer warm-up before and after each failover (default 1s)
	Bin       string        // the fogo binary the cluster's processes run (required)
	Env       []string      // added to their environment
	PGBin     string        // PostgreSQL binaries ("" discovers them)
	Dir       string        // where the cluster's directory goes ("" the system's temporary directory)
	Progress  io.Writer     // one line per step and measurement; nil discards
}

// ClusterResult holds the cluster-mode measurements, in iteration order.
type ClusterResult struct {
	Iterations          int           `json:"iterations"`
	UnplannedIterations int           `json:"unplannedIterations"`
	RegionLatency       time.Duration `json:"regionLatency"`
	LeaseTTL            time.Duration `json:"leaseTTL"`
	GracePeriod         time.Duration `json:"gracePeriod"`
	// Planned failover: the operation (POST failover until it succeeded, the old primary's rejoin included) and
	// the longest gap between two acknowledged commits of a client on the read-write listener, as embedded.
	PlannedTotal    []time.Duration `json:"plannedTotal"`
	PlannedWriteGap []time.Duration `json:"plannedWriteGap"`
	// Unplanned host loss: from the cut of the primary's host to the first commit the same client had
	// acknowledged afterwards (on the new primary), with and without the group's grace period.
	CutToFirstWrite          []time.Duration `json:"cutToFirstWrite"`
	CutToFirstWriteExclGrace []time.Duration `json:"cutToFirstWriteExclGrace"`
	Commits                  int             `json:"commits"`
}

// UnplannedTarget is the target for the time from a host's cut to the first write on the new primary: the
// agents' lease TTL + 2 s.
func (r ClusterResult) UnplannedTarget() time.Duration { return r.LeaseTTL + 2*time.Second }

// unplannedWriteTimeout bounds each connection attempt and commit of the writer across a host loss, and so the
// resolution of the cut-to-first-write time.
const unplannedWriteTimeout = 500 * time.Millisecond

// Cluster runs the benchmark in cluster mode: planned failovers back and forth, then losses of the primary's
// host under the Automatic policy, each healed and its agent started again before the next.
func Cluster(ctx context.Context, o ClusterOptions) (*ClusterResult, error) {
	if o.Iterations <= 0 {
		o.Iterations = 5
	}
	if o.Unplanned < 0 {
		o.Unplanned = 0
	} else if o.Unplanned == 0 {
		o.Unplanned = 3
	}
	if o.RegionLatency == 0 {
		o.RegionLatency = 10 * time.Millisecond
	}
	o.RegionLatency = max(o.RegionLatency, 0)
	if o.LeaseTTL <= 0 {
		o.LeaseTTL = 6 * time.Second
	}
	if o.GraceUnit <= 0 {
		o.GraceUnit = time.Second
	}
	if o.Settle <= 0 {
		o.Settle = time.Second
	}
	if o.Progress == nil {
		o.Progress = io.Discard
	}
	c, err := clustersim.Start(ctx, clustersim.Options{Bin: o.Bin, Env: o.Env, Dir: o.Dir, PGBin: o.PGBin,
		LeaseTTL: o.LeaseTTL, GraceUnit: o.GraceUnit, LogLevel: benchLogLevel().String(), Progress: o.Progress})
	if err != nil {
		return nil, fmt.Errorf("cluster: %w", err)
	}
	defer c.Close()
	res, err := clusterFailovers(ctx, c, o)
	if err != nil {
		for _, p := range []*clustersim.Proc{c.Controller, c.East, c.West} {
			fmt.Fprintf(o.Progress, "--- %s log tail:\n%s\n", p.Name, p.LogTail())
		}
		return nil, fmt.Errorf("cluster: %w", err)
	}
	return res, nil
}

func clusterFailovers(ctx context.Context, c *clustersim.Cluster, o ClusterOptions) (*ClusterResult, error) {
	res := &ClusterResult{Iterations: o.Iterations, UnplannedIterations: o.Unplanned, RegionLatency: o.RegionLatency,
		LeaseTTL: o.LeaseTTL, GracePeriod: o.GraceUnit}
	if o.RegionLatency > 0 {
		if err := netns.SetLatency(c.West.Host, o.RegionLatency); err != nil {
			return nil, err
		}
	}
	cl := c.Client()
	cl.PollInterval = 10 * time.Millisecond
	e := &fogoEnv{c: cl, login: "benchadmin", pw: "B3nch!" + secret(),
		base: "/subscriptions/00000000-0000-0000-0000-00000000b0b0/resourceGroups/bench/providers/Microsoft.Sql/servers/"}
	// Automatic with the smallest grace period (one minute, lasting GraceUnit) for the host losses.
	if err := e.createGroup(ctx, map[string]any{"failoverPolicy": "Automatic", "failoverWithDataLossGracePeriodMinutes": 1}); err != nil {
		return nil, err
	}
	if err := waitCatchUp(ctx, e.c, e.base+e.primary+"/failoverGroups/bench-fg"); err != nil {
		return nil, err
	}
	if err := execDSN(ctx, e.dsn(e.rwAddr), "CREATE TABLE bench_writes(id bigserial PRIMARY KEY, at timestamptz DEFAULT now())"); err != nil {
		return nil, err
	}
	var err error
	res.PlannedTotal, res.PlannedWriteGap, err = e.plannedFailovers(ctx, "cluster", o.Iterations, o.Settle, &res.Commits, o.Progress)
	if err != nil {
		return nil, err
	}
	if benchLogLevel() <= slog.LevelDebug { // each operation's step timings, from the controller's log
		for _, line := range c.Controller.LogSince(0, "operation steps", "msg=demoted", "msg=promoted", "early session") {
			fmt.Fprintln(o.Progress, line)
		}
		for _, p := range []*clustersim.Proc{c.East, c.West} { // the client's listener may be on an agent's host
			for _, line := range p.LogSince(0, "early session", "failover targets", "msg=\"listener: held", "host api: shutdown") {
				fmt.Fprintln(o.Progress, p.Name+": "+line)
			}
		}
	}
	for it := 0; it < o.Unplanned; it++ {
		d, err := hostLoss(ctx, c, e, o, &res.Commits)
		if err != nil {
			return nil, fmt.Errorf("host loss %d: %w", it+1, err)
		}
		res.CutToFirstWrite = append(res.CutToFirstWrite, d)
		res.CutToFirstWriteExclGrace = append(res.CutToFirstWriteExclGrace, d-res.GracePeriod)
		fmt.Fprintf(o.Progress, "cluster host loss %d/%d: cut -> first write on the new primary %s (lease TTL %s, grace %s)\n",
			it+1, o.Unplanned, d.Round(time.Millisecond), o.LeaseTTL, o.GraceUnit)
	}
	return res, nil
}

// hostLoss cuts the primary's host off while a client writes through the read-write listener, and returns the
// time from the cut to the client's first acknowledged commit after it. Then it heals the host, starts its
// (fenced) agent again and waits until the old primary has rejoined.
func hostLoss(ctx context.Context, c *clustersim.Cluster, e *fogoEnv, o ClusterOptions, commits *int) (time.Duration, error) {
	if err := waitCatchUp(ctx, e.c, e.base+e.primary+"/failoverGroups/bench-fg"); err != nil {
		return 0, err
	}
	host := c.East
	if e.primary == "bench-west" {
		host = c.West
	}
	// One target per host of the listener's list (the agents' and the controller's): a connection attempt to the
	// cut-off host hangs until the writer's timeout, which a whole list would spend on that host alone.
	var targets []string
	for _, hp := range strings.Split(e.rwAddr, ",") {
		targets = append(targets, e.dsn(hp))
	}
	w := &writer{targets: targets, table: "bench_writes", timeout: unplannedWriteTimeout}
	wctx, stop := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { defer close(done); w.run(wctx) }()
	defer func() { stop(); <-done; *commits += w.commits() }()
	time.Sleep(o.Settle)
	if w.lastCommit().IsZero() {
		return 0, fmt.Errorf("no commit through the read-write listener %s before the cut", e.rwAddr)
	}
	logFrom := c.Controller.LogSize()
	before := time.Now()
	if err := host.Host.Cut(); err != nil {
		return 0, err
	}
	after := time.Now()
	healed := false
	defer func() {
		if !healed {
			_ = host.Host.Heal()
		}
	}()
	limit := o.LeaseTTL + o.GraceUnit + 90*time.Second
	// Acknowledgements the old primary sent before the cut may still arrive during the host's latency (the delay
	// pump holds frames that left before): commits acknowledged that early are the old primary's, not the new one's
	// (which takes seconds to come), so they are skipped.
	inFlight := after.Add(max(o.RegionLatency, 0) + 100*time.Millisecond)
	var first time.Time
	for deadline := time.Now().Add(limit); first.IsZero(); first = w.firstAfter(inFlight) {
		if time.Now().After(deadline) || ctx.Err() != nil {
			return 0, fmt.Errorf("no write accepted within %s after %s's host was cut", limit, host.Name)
		}
		time.Sleep(20 * time.Millisecond)
	}
	took := first.Sub(before)
	stop()
	if took > o.LeaseTTL+2*time.Second {
		// Past the target: what the controller said meanwhile, to tell why.
		fmt.Fprintf(o.Progress, "cut -> first write %s, past the lease TTL + 2s; the controller's warnings since the cut (%s):\n",
			took.Round(time.Millisecond), before.Format("15:04:05.000"))
		for _, l := range c.Controller.LogSince(logFrom, "level=WARN", "level=ERROR") {
			fmt.Fprintln(o.Progress, "  "+l)
		}
	}
	if err := host.Host.Heal(); err != nil {
		return 0, err
	}
	healed = true
	// Its agent fenced and exited (the failover waited for its lease to expire); start it again, as a supervisor
	// would, and let the old primary rejoin.
	select {
	case <-host.Exited():
	case <-time.After(o.LeaseTTL + 10*time.Second):
		host.Stop()
	}
	if err := host.Start(ctx); err != nil {
		return 0, err
	}
	e.primary, e.secondary = e.secondary, e.primary
	return took, waitCatchUp(ctx, e.c, e.base+e.primary+"/failoverGroups/bench-fg")
}

// Summary is a human-readable report.
func (r ClusterResult) Summary() string {
	var b strings.Builder
	latency := "westus +" + r.RegionLatency.String() + " round trip"
	if r.RegionLatency <= 0 {
		latency = "no added latency"
	}
	fmt.Fprintf(&b, "cluster mode: hosts in network namespaces, 3 etcd members, agents in eastus and westus, a controller; "+
		"%s, agents' lease TTL %s, grace period %s\n", latency, r.LeaseTTL, r.GracePeriod)
	fmt.Fprintf(&b, "planned failover, %d iterations (back and forth), %d acknowledged commits\n", r.Iterations, r.Commits)
	b.WriteString(p50max("cluster: longest client commit gap", r.PlannedWriteGap))
	b.WriteString(p50max("cluster: failover operation total (incl. rejoin)", r.PlannedTotal))
	if len(r.CutToFirstWrite) > 0 {
		fmt.Fprintf(&b, "unplanned loss of the primary's host (cut), Automatic, %d iterations\n", r.UnplannedIterations)
		b.WriteString(p50max("cut -> first write on the new primary", r.CutToFirstWrite))
		b.WriteString(p50max("  the same without the grace period", r.CutToFirstWriteExclGrace))
		fmt.Fprintf(&b, "target: cut -> first write <= lease TTL + 2s = %s: p50 %s, max %s\n", r.UnplannedTarget(),
			met(median(r.CutToFirstWrite) <= r.UnplannedTarget()), met(slices.Max(r.CutToFirstWrite) <= r.UnplannedTarget()))
	}
	return b.String()
}

// SideBySide compares the planned failover of the embedded and the cluster mode, measured in one run.
func SideBySide(emb *FailoverResult, cl *ClusterResult) string {
	var b strings.Builder
	fmt.Fprintf(&b, "%-44s %20s %20s\n", "planned failover (p50 / max)", "embedded", "cluster")
	row := func(name string, e, c []time.Duration) {
		fmt.Fprintf(&b, "%-44s %20s %20s\n", name, pm(e), pm(c))
	}
	row("longest client commit gap", emb.FogoWriteGap, cl.PlannedWriteGap)
	row("failover operation total (incl. rejoin)", emb.FogoTotal, cl.PlannedTotal)
	fmt.Fprintf(&b, "ratio cluster / embedded commit gap (p50): %.2fx (target <= 1.5x)\n", PlannedGapRatio(emb, cl))
	return b.String()
}

// PlannedGapRatio is median(cluster commit gap) / median(embedded commit gap).
func PlannedGapRatio(emb *FailoverResult, cl *ClusterResult) float64 {
	e := median(emb.FogoWriteGap)
	if e == 0 {
		return 0
	}
	return float64(median(cl.PlannedWriteGap)) / float64(e)
}

func p50max(name string, d []time.Duration) string {
	if len(d) == 0 {
		return fmt.Sprintf("%-48s (none)\n", name)
	}
	return fmt.Sprintf("%-48s p50 %8s   max %8s\n", name, median(d).Round(time.Millisecond), slices.Max(d).Round(time.Millisecond))
}

func pm(d []time.Duration) string {
	if len(d) == 0 {
		return "-"
	}
	return median(d).Round(time.Millisecond).String() + " / " + slices.Max(d).Round(time.Millisecond).String()
}

func met(ok bool) string {
	if ok {
		return "met"
	}
	return "NOT met"
}
