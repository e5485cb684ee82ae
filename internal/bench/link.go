package bench

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"path/filepath"
	"runtime/pprof"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/fogo-db/fogo/internal/controlplane/armid"
	"github.com/fogo-db/fogo/internal/controlplane/links"
	"github.com/fogo-db/fogo/internal/controlplane/model"
	"github.com/fogo-db/fogo/internal/link"
	"github.com/fogo-db/fogo/internal/link/target"
	"github.com/fogo-db/fogo/internal/postgres/lsn"
	"github.com/fogo-db/fogo/internal/postgres/pgbin"
)

// LinkOptions configure the link benchmark.
type LinkOptions struct {
	Rows     int           // rows of the throughput workload (default 100000, in transactions of 100)
	Rate     int           // rows per second of the latency workload (default 5000)
	Duration time.Duration // length of the latency workload (default 10s)
	PGBin    string
	Dir      string
	PortLow  int
	Progress io.Writer
	// Only, if set, runs just that phase ("throughput"); the default runs throughput, latency and failover.
	Only string
	// CPUProfile, if set, receives a CPU profile of the link applying the throughput workload.
	CPUProfile io.Writer
}

// LinkResult holds the measurements.
type LinkResult struct {
	Rows            int           `json:"rows"`
	RawDecode       time.Duration `json:"rawDecode"`  // pg_recvlogical (pgoutput) decoding the workload: the faster of a run before and one after the link
	LinkApply       time.Duration `json:"linkApply"`  // the link applying the same workload into DuckDB
	LatencyP50      time.Duration `json:"latencyP50"` // source commit -> visible in the target, gate on
	LatencyP99      time.Duration `json:"latencyP99"`
	LatencyRows     int           `json:"latencyRows"`
	FailoverToFirst time.Duration `json:"failoverToFirstChange"` // end of a planned failover -> first change from the new primary visible
	FailoverErr     string        `json:"failoverError,omitempty"`
	ForcedToFirst   time.Duration `json:"forcedFailoverToFirstChange"` // end of a forced failover (kill -9) -> first change
	ForcedOp        time.Duration `json:"forcedFailover"`              // kill -9 -> the forced failover operation succeeded
	ForcedErr       string        `json:"forcedFailoverError,omitempty"`
	ForcedResync    string        `json:"forcedFailoverResync,omitempty"` // why tables were resynchronised instead

}

// Summary is a human-readable report.
func (r LinkResult) Summary() string {
	var b strings.Builder
	raw, lk := float64(r.Rows)/r.RawDecode.Seconds(), float64(r.Rows)/r.LinkApply.Seconds()
	fmt.Fprintf(&b, "throughput, %d rows: pg_recvlogical %.0f rows/s (%s), link into DuckDB %.0f rows/s (%s): %.2fx (target >= 0.70x)\n",
		r.Rows, raw, r.RawDecode.Round(time.Millisecond), lk, r.LinkApply.Round(time.Millisecond), lk/raw)
	if r.LatencyRows == 0 && r.FailoverToFirst == 0 && r.FailoverErr == "" {
		return b.String() // only the throughput phase ran
	}
	fmt.Fprintf(&b, "latency source commit -> target, %d rows at a steady rate, gate on: p50 %s, p99 %s (target p99 <= 1s)\n",
		r.LatencyRows, r.LatencyP50.Round(time.Millisecond), r.LatencyP99.Round(time.Millisecond))
	if r.FailoverErr != "" {
		fmt.Fprintf(&b, "end of a planned failover -> first change: not measured, the failover failed: %s\n", r.FailoverErr)
	} else {
		fmt.Fprintf(&b, "end of a planned failover -> first change from the new primary in the target: %s (target <= 5s)\n",
			r.FailoverToFirst.Round(time.Millisecond))
	}
	switch {
	case r.ForcedErr != "":
		fmt.Fprintf(&b, "end of a forced failover -> first change: not measured: %s\n", r.ForcedErr)
	case r.ForcedToFirst > 0:
		fmt.Fprintf(&b, "end of a forced failover (kill -9 of the primary) -> first change from the new primary in the target: %s (target <= 5s); kill -9 -> failover done: %s\n",
			r.ForcedToFirst.Round(time.Millisecond), r.ForcedOp.Round(time.Millisecond))
		if r.ForcedResync != "" {
			fmt.Fprintf(&b, "  (the tables were resynchronised, not resumed from the slot copy: %s)\n", r.ForcedResync)
		}
	}
	return b.String()
}

// Link measures the link: throughput against pg_recvlogical on the same workload, end-to-end latency at a steady
// rate with the failover-safe gate on, and the time to the first change after a planned failover.
func Link(ctx context.Context, o LinkOptions) (*LinkResult, error) {
	if o.Rows <= 0 {
		o.Rows = 100000
	}
	if o.Rate <= 0 {
		o.Rate = 5000
	}
	if o.Duration <= 0 {
		o.Duration = 10 * time.Second
	}
	if o.PortLow == 0 {
		o.PortLow = 30000
	}
	if o.Progress == nil {
		o.Progress = io.Discard
	}
	if o.Only != "" && o.Only != "throughput" {
		return nil, fmt.Errorf("unknown phase %q (only \"throughput\" can run alone)", o.Only)
	}
	lb, err := startLinkBench(ctx, o.PGBin, o.Dir, o.PortLow)
	if err != nil {
		return nil, err
	}
	defer lb.close()
	bin, dir, e, db := lb.bin, lb.dir, lb.e, lb.db
	src := e.dsn(e.rwAddr)
	for _, q := range []string{
		"CREATE TABLE bench_link(id bigint PRIMARY KEY, payload text, n int, created_at timestamptz DEFAULT clock_timestamp())",
		"CREATE PUBLICATION bench_raw FOR TABLE bench_link",
	} {
		if _, err := db.Exec(ctx, q); err != nil {
			return nil, fmt.Errorf("%s: %w", q, err)
		}
	}
	res := &LinkResult{Rows: o.Rows}
	store, err := target.OpenDuckDB(filepath.Join(dir, "bench.duckdb"))
	if err != nil {
		return nil, err
	}
	defer store.Close()
	def := links.Def{Name: "bench", Group: "bench-fg", Database: "bench", Target: store,
		Tables: []link.TableMapping{{SourceTable: "bench_link"}}}

	// 1. Throughput: the same pending workload decoded by pg_recvlogical, then applied by the link.
	if err := e.app.Links.Start(def); err != nil { // snapshot of the empty table, creates the slot
		return nil, err
	}
	if err := waitLink(ctx, e, "bench", func(s link.Status) bool { return s.Phase == "Streaming" }); err != nil {
		return nil, err
	}
	e.app.Links.Stop("bench")
	superDSN := fmt.Sprintf("host=127.0.0.1 port=%d user=fogo password=%s dbname=bench sslmode=disable", e.primaryPort, e.app.Cluster.SuperPassword())
	sdb, err := pgx.Connect(ctx, superDSN)
	if err != nil {
		return nil, err
	}
	defer sdb.Close(context.Background())
	// Two raw slots: pg_recvlogical decodes the workload once before the link applies it and once after, and
	// the faster run counts (the second one finds the WAL in the page cache, as the link did).
	for _, slot := range []string{"bench_raw", "bench_raw2"} {
		if _, err := sdb.Exec(ctx, "SELECT pg_create_logical_replication_slot($1, 'pgoutput')", slot); err != nil {
			return nil, err
		}
	}
	fmt.Fprintf(o.Progress, "writing %d rows in transactions of 100\n", o.Rows)
	for i := 0; i < o.Rows; i += 100 {
		if _, err := db.Exec(ctx, "INSERT INTO bench_link(id, payload, n) SELECT g, md5(g::text), g % 1000 FROM generate_series($1::bigint, $2::bigint) g",
			i+1, min(i+100, o.Rows)); err != nil {
			return nil, err
		}
	}
	var endText string
	if err := sdb.QueryRow(ctx, "SELECT pg_current_wal_lsn()::text").Scan(&endText); err != nil {
		return nil, err
	}
	end, _ := lsn.Parse(endText)
	recvlogical := func(slot string) (time.Duration, error) {
		start := time.Now()
		if out, err := bin.Run(ctx, []string{"PGPASSWORD=" + e.app.Cluster.SuperPassword()}, "pg_recvlogical",
			"-d", fmt.Sprintf("host=127.0.0.1 port=%d user=fogo dbname=bench", e.primaryPort), "-S", slot, "--start",
			"-o", "proto_version=1", "-o", "publication_names=bench_raw", "-f", "/dev/null", "-E", end.String(), "--no-loop"); err != nil {
			return 0, fmt.Errorf("pg_recvlogical: %w: %s", err, out)
		}
		took := time.Since(start)
		if _, err := sdb.Exec(ctx, "SELECT pg_drop_replication_slot($1)", slot); err != nil {
			return 0, err
		}
		fmt.Fprintf(o.Progress, "pg_recvlogical: %s\n", took.Round(time.Millisecond))
		return took, nil
	}
	if res.RawDecode, err = recvlogical("bench_raw"); err != nil {
		return nil, err
	}
	if o.CPUProfile != nil {
		if err := pprof.StartCPUProfile(o.CPUProfile); err != nil {
			return nil, fmt.Errorf("cpu profile: %w", err)
		}
	}
	start := time.Now()
	if err := e.app.Links.Start(def); err != nil {
		pprof.StopCPUProfile()
		return nil, err
	}
	for deadline := time.Now().Add(10 * time.Minute); ; time.Sleep(5 * time.Millisecond) {
		var n int
		if err := store.DB().QueryRow("SELECT count(*) FROM public.bench_link").Scan(&n); err == nil && n == o.Rows {
			break
		}
		if time.Now().After(deadline) {
			pprof.StopCPUProfile()
			return nil, fmt.Errorf("the link did not apply %d rows in 10 minutes", o.Rows)
		}
	}
	res.LinkApply = time.Since(start)
	pprof.StopCPUProfile() // a no-op without a profile
	fmt.Fprintf(o.Progress, "link: %s\n", res.LinkApply.Round(time.Millisecond))
	if again, err := recvlogical("bench_raw2"); err != nil {
		return nil, err
	} else {
		res.RawDecode = min(res.RawDecode, again)
	}
	if o.Only == "throughput" {
		e.app.Links.Stop("bench")
		return res, nil
	}

	// 2. Latency at a steady rate: every row carries its commit-time clock; the target is polled for new rows.
	lat, err := steadyLatency(ctx, db, store, o)
	if err != nil {
		return nil, err
	}
	slices.Sort(lat)
	res.LatencyRows = len(lat)
	if len(lat) > 0 {
		res.LatencyP50, res.LatencyP99 = lat[len(lat)/2], lat[len(lat)*99/100]
	}

	// 3. A planned failover, then the time until a change written on the new primary is in the target.
	if err := e.do(ctx, http.MethodPost, e.base+"bench-west/failoverGroups/bench-fg/failover", nil); err != nil {
		res.FailoverErr = err.Error()
		return res, nil
	}
	if res.FailoverToFirst, err = firstChangeAfter(ctx, src, store, -1); err != nil {
		return nil, err
	}

	// 4. A forced failover back to east after kill -9 of west's primary instance, once east holds a copy of the
	// link's slot, then the same measure.
	if err := e.waitSlotCopy(ctx, "bench-east", "fogo_link_bench"); err != nil {
		res.ForcedErr = err.Error()
		return res, nil
	}
	killed := time.Now()
	if err := e.killPrimaryInstance("bench-west"); err != nil {
		return nil, err
	}
	if err := e.do(ctx, http.MethodPost, e.base+"bench-east/failoverGroups/bench-fg/forceFailoverAllowDataLoss", nil); err != nil {
		res.ForcedErr = err.Error()
		return res, nil
	}
	res.ForcedOp = time.Since(killed)
	if res.ForcedToFirst, err = firstChangeAfter(ctx, src, store, -2); err != nil {
		return nil, err
	}
	if st, ok := e.app.Links.Status("bench"); ok {
		for _, t := range st.Tables {
			if t.Resync != "" {
				res.ForcedResync = t.Resync // the link did not resume from the slot copy
			}
		}
	}
	e.app.Links.Stop("bench")
	return res, nil
}

// linkBench is what a link benchmark runs on: a scratch directory, an embedded fogo with the bench group, and a
// connection through the group's read-write listener.
type linkBench struct {
	bin     *pgbin.Bin
	dir     string
	e       *fogoEnv
	db      *pgx.Conn
	cleanup func()
}

func startLinkBench(ctx context.Context, pgBin, dir string, portLow int) (*linkBench, error) {
	bin, dir, cleanup, err := scratch(pgBin, dir)
	if err != nil {
		return nil, err
	}
	e, err := startFogoGroup(ctx, filepath.Join(dir, "fogo"), pgBin, portLow)
	if err != nil {
		cleanup()
		return nil, err
	}
	db, err := pgx.Connect(ctx, e.dsn(e.rwAddr))
	if err != nil {
		e.close()
		cleanup()
		return nil, err
	}
	return &linkBench{bin: bin, dir: dir, e: e, db: db, cleanup: cleanup}, nil
}

func (b *linkBench) close() {
	b.db.Close(context.Background())
	b.e.close()
	b.cleanup()
}

// firstChangeAfter writes a row with the given id through src right after a failover ended and returns the time
// until it is in the target.
func firstChangeAfter(ctx context.Context, src string, store *target.Store, id int64) (time.Duration, error) {
	ended := time.Now()
	var db *pgx.Conn
	var err error
	for {
		if db, err = pgx.Connect(ctx, src); err == nil {
			_, err = db.Exec(ctx, "INSERT INTO bench_link(id, payload) VALUES ($1, 'after a failover')", id)
			db.Close(context.Background())
		}
		if err == nil {
			break
		}
		if time.Since(ended) > time.Minute {
			return 0, fmt.Errorf("write after the failover: %w", err)
		}
		time.Sleep(5 * time.Millisecond)
	}
	for {
		var n int
		if err := store.DB().QueryRow("SELECT count(*) FROM public.bench_link WHERE id = $1", id).Scan(&n); err == nil && n == 1 {
			return time.Since(ended), nil
		}
		if time.Since(ended) > 2*time.Minute {
			return 0, fmt.Errorf("the change after the failover never reached the target")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// instanceOf is server's instance of the bench database.
func (e *fogoEnv) instanceOf(server string) (*model.Instance, error) {
	sid := armid.ServerID{Subscription: "00000000-0000-0000-0000-00000000b0b0", ResourceGroup: "bench", Name: server}
	dbs, err := e.app.Service.ListDatabases(sid)
	if err != nil {
		return nil, err
	}
	for _, d := range dbs {
		if d.ID.Name == "bench" {
			return e.app.Cluster.GetInstance(d.Instance)
		}
	}
	return nil, fmt.Errorf("no database bench on %s", server)
}

// waitSlotCopy waits until server's instance holds a copy of the slot.
func (e *fogoEnv) waitSlotCopy(ctx context.Context, server, slot string) error {
	deadline := time.Now().Add(time.Minute)
	for time.Now().Before(deadline) {
		if rec, err := e.instanceOf(server); err == nil {
			if c, err := e.app.Cluster.Handle(rec).SlotConfirmedLSN(ctx, slot); err == nil && c > 0 {
				return nil
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	return fmt.Errorf("no copy of slot %s on %s after a minute", slot, server)
}

// killPrimaryInstance kills server's instance of the bench database with SIGKILL.
func (e *fogoEnv) killPrimaryInstance(server string) error {
	rec, err := e.instanceOf(server)
	if err != nil {
		return err
	}
	pid, running := e.app.Cluster.Handle(rec).Running()
	if !running {
		return fmt.Errorf("the instance on %s does not run", server)
	}
	return syscall.Kill(pid, syscall.SIGKILL)
}

func waitLink(ctx context.Context, e *fogoEnv, name string, done func(link.Status) bool) error {
	deadline := time.Now().Add(10 * time.Minute)
	for time.Now().Before(deadline) {
		if st, ok := e.app.Links.Status(name); ok && done(st) {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(5 * time.Millisecond):
		}
	}
	return fmt.Errorf("link %s did not get there in 10 minutes", name)
}

// steadyLatency writes o.Rate rows per second for o.Duration (batches every 20 ms) and measures, per row, the
// time from its commit to its appearance in the target.
func steadyLatency(ctx context.Context, db *pgx.Conn, store *target.Store, o LinkOptions) ([]time.Duration, error) {
	const tick = 20 * time.Millisecond
	perTick := max(o.Rate*int(tick/time.Millisecond)/1000, 1)
	committed := map[int64]time.Time{}
	var lat []time.Duration
	next := int64(10_000_000)
	seen := next
	stop := time.Now().Add(o.Duration)
	poll := func() error {
		rows, err := store.DB().QueryContext(ctx, "SELECT id FROM public.bench_link WHERE id > $1 ORDER BY id", seen)
		if err != nil {
			return err
		}
		defer rows.Close()
		now := time.Now()
		for rows.Next() {
			var id int64
			if err := rows.Scan(&id); err != nil {
				return err
			}
			if at, ok := committed[id]; ok {
				lat = append(lat, now.Sub(at))
			}
			seen = max(seen, id)
		}
		return rows.Err()
	}
	for t := time.Now(); time.Now().Before(stop); t = t.Add(tick) {
		if _, err := db.Exec(ctx, "INSERT INTO bench_link(id, payload) SELECT g, 'steady' FROM generate_series($1::bigint, $2::bigint) g",
			next+1, next+int64(perTick)); err != nil {
			return nil, err
		}
		now := time.Now()
		for i := int64(1); i <= int64(perTick); i++ {
			committed[next+i] = now
		}
		next += int64(perTick)
		if err := poll(); err != nil {
			return nil, err
		}
		time.Sleep(time.Until(t.Add(tick)))
	}
	for deadline := time.Now().Add(30 * time.Second); seen < next && time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
		if err := poll(); err != nil {
			return nil, err
		}
	}
	return lat, nil
}
