package bench

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/fogo-db/fogo/internal/app"
	"github.com/fogo-db/fogo/internal/cli"
	"github.com/fogo-db/fogo/internal/postgres/instance"
	"github.com/fogo-db/fogo/internal/postgres/pgbin"
)

// FailoverOptions configure the failover benchmark.
type FailoverOptions struct {
	Iterations int           // failovers measured on each side (default 5)
	PGBin      string        // PostgreSQL binaries ("" discovers them)
	Dir        string        // scratch directory ("" makes a temporary one, removed afterwards)
	PortLow    int           // first of 100 ports used (default 31000)
	Settle     time.Duration // writer warm-up before and after each failover (default 1s)
	Progress   io.Writer     // one line per measured failover; nil discards
}

// FailoverResult holds the measurements, in iteration order.
type FailoverResult struct {
	Iterations int `json:"iterations"`
	// Fogo planned failover (POST failover to the secondary server until the operation succeeded, which
	// includes the old primary's rejoin as a streaming standby).
	FogoTotal []time.Duration `json:"fogoTotal"`
	// Longest gap between two acknowledged commits of a client writing continuously through the group's
	// read-write listener, across the fogo failover.
	FogoWriteGap []time.Duration `json:"fogoWriteGap"`
	// Raw `pg_ctl stop -m fast -w` of the primary + `pg_ctl promote -w` of the standby (pg_ctl polls its
	// result ten times a second, so this includes up to ~100 ms of waiting per command).
	RawStopPromote []time.Duration `json:"rawStopPromote"`
	// Longest commit gap of the same client writing directly to the raw pair across that switch: the floor a
	// client can see, without pg_ctl's polling.
	RawWriteGap []time.Duration `json:"rawWriteGap"`
	Commits     int             `json:"commits"`
}

func median(d []time.Duration) time.Duration {
	if len(d) == 0 {
		return 0
	}
	s := slices.Clone(d)
	slices.Sort(s)
	return s[len(s)/2]
}

// Ratio is median(fogo write gap) / median(raw stop + promote): the target is ≤ 1.5.
func (r FailoverResult) Ratio() float64 {
	raw := median(r.RawStopPromote)
	if raw == 0 {
		return 0
	}
	return float64(median(r.FogoWriteGap)) / float64(raw)
}

// Summary is a human-readable report.
func (r FailoverResult) Summary() string {
	row := func(name string, d []time.Duration) string {
		return fmt.Sprintf("%-44s median %8s   min %8s   max %8s\n", name, median(d).Round(time.Millisecond),
			slices.Min(d).Round(time.Millisecond), slices.Max(d).Round(time.Millisecond))
	}
	var b strings.Builder
	fmt.Fprintf(&b, "planned failover, %d iterations each side, %d acknowledged commits\n", r.Iterations, r.Commits)
	b.WriteString(row("raw pg_ctl stop -m fast + promote", r.RawStopPromote))
	b.WriteString(row("raw: longest client commit gap", r.RawWriteGap))
	b.WriteString(row("fogo: longest client commit gap", r.FogoWriteGap))
	b.WriteString(row("fogo: failover operation total (incl. rejoin)", r.FogoTotal))
	fmt.Fprintf(&b, "ratio fogo commit gap / raw stop+promote (median): %.2fx (target <= 1.5x)\n", r.Ratio())
	fmt.Fprintf(&b, "ratio fogo commit gap / raw commit gap (median):   %.2fx\n",
		float64(median(r.FogoWriteGap))/float64(max(median(r.RawWriteGap), 1)))
	return b.String()
}

// Failover runs the benchmark: first the raw pair, then fogo, on the same machine.
func Failover(ctx context.Context, o FailoverOptions) (*FailoverResult, error) {
	if o.Iterations <= 0 {
		o.Iterations = 5
	}
	if o.PortLow == 0 {
		o.PortLow = 31000
	}
	if o.Settle <= 0 {
		o.Settle = time.Second
	}
	if o.Progress == nil {
		o.Progress = io.Discard
	}
	bin, dir, cleanup, err := scratch(o.PGBin, o.Dir)
	if err != nil {
		return nil, err
	}
	defer cleanup()
	o.Dir = dir
	res := &FailoverResult{Iterations: o.Iterations}
	if err := rawFailovers(ctx, bin, o, res); err != nil {
		return nil, fmt.Errorf("raw failovers: %w", err)
	}
	if err := fogoFailovers(ctx, o, res); err != nil {
		return nil, fmt.Errorf("fogo failovers: %w", err)
	}
	return res, nil
}

func secret() string {
	b := make([]byte, 12)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// rawFailovers switches a plain primary/standby pair back and forth with pg_ctl, re-attaching the old primary
// (pg_rewind + standby) untimed between iterations.
func rawFailovers(ctx context.Context, bin *pgbin.Bin, o FailoverOptions, res *FailoverResult) error {
	pw := secret()
	if err := bin.MkdirOwned(filepath.Join(o.Dir, "raw")); err != nil {
		return err
	}
	mk := func(name string, port int) (*instance.Instance, error) {
		home := filepath.Join(o.Dir, "raw", name)
		if err := bin.MkdirOwned(home); err != nil {
			return nil, err
		}
		return &instance.Instance{Dir: filepath.Join(home, "pgdata"), Bin: bin, Host: "127.0.0.1", Port: port,
			SuperUser: "fogo", SuperPassword: pw}, nil
	}
	a, err := mk("a", o.PortLow+90)
	if err != nil {
		return err
	}
	b, err := mk("b", o.PortLow+91)
	if err != nil {
		return err
	}
	defer func() {
		_ = a.Stop(context.Background(), instance.ShutdownImmediate)
		_ = b.Stop(context.Background(), instance.ShutdownImmediate)
	}()
	steps := []func() error{
		func() error { return a.Init(ctx) },
		func() error { return a.Configure(instance.Settings{Port: a.Port}) },
		func() error { return a.Start(ctx) },
		func() error {
			return execSQL(ctx, a, "CREATE TABLE bench_writes(id bigserial PRIMARY KEY, at timestamptz DEFAULT now())")
		},
		func() error { return follow(ctx, b, a, true) },
	}
	for _, step := range steps {
		if err := step(); err != nil {
			return err
		}
	}
	dsn := func(i *instance.Instance) string {
		return fmt.Sprintf("host=127.0.0.1 port=%d user=%s password=%s dbname=postgres sslmode=disable", i.Port, i.SuperUser, i.SuperPassword)
	}
	primary, standby := a, b
	for it := 0; it < o.Iterations; it++ {
		took, gap, err := measure(ctx, o.Settle, &res.Commits, []string{dsn(primary), dsn(standby)}, func() error {
			// Literally what an operator would run: pg_ctl waits with its own 100 ms polling.
			if _, err := bin.Run(ctx, nil, "pg_ctl", "-D", primary.Dir, "-m", "fast", "-w", "stop"); err != nil {
				return err
			}
			_, err := bin.Run(ctx, nil, "pg_ctl", "-D", standby.Dir, "-w", "promote")
			return err
		})
		if err != nil {
			return err
		}
		res.RawStopPromote = append(res.RawStopPromote, took)
		res.RawWriteGap = append(res.RawWriteGap, gap)
		fmt.Fprintf(o.Progress, "raw  %d/%d: stop+promote %s, longest commit gap %s\n", it+1, o.Iterations, took.Round(time.Millisecond), gap.Round(time.Millisecond))
		if err := follow(ctx, primary, standby, false); err != nil {
			return fmt.Errorf("re-attach old primary: %w", err)
		}
		primary, standby = standby, primary
	}
	return nil
}

// follow makes s a streaming standby of p: from a base backup when fresh, else by pg_rewind.
func follow(ctx context.Context, s, p *instance.Instance, fresh bool) error {
	slot := fmt.Sprintf("fogo_%d", s.Port)
	if err := p.EnsurePhysicalSlot(ctx, slot); err != nil {
		return err
	}
	if fresh {
		if err := s.BaseBackup(ctx, p.SourceConnInfo(), slot); err != nil {
			return err
		}
	} else {
		if err := p.Checkpoint(ctx); err != nil {
			return err
		}
		if _, err := s.Rewind(ctx, p.SourceConnInfo()); err != nil {
			return err
		}
		if err := s.RemoveSlotDirsOffline("fogo_"); err != nil {
			return err
		}
	}
	if err := s.Configure(instance.Settings{Port: s.Port, Standby: true, PrimaryConnInfo: p.ReplicationConnInfo(slot), PrimarySlotName: slot}); err != nil {
		return err
	}
	if err := s.Start(ctx); err != nil {
		return err
	}
	deadline := time.Now().Add(time.Minute)
	for time.Now().Before(deadline) {
		if st, err := s.WalReceiverStatus(ctx); err == nil && st.Status == "streaming" {
			return nil
		}
		time.Sleep(50 * time.Millisecond)
	}
	return fmt.Errorf("standby on port %d is not streaming", s.Port)
}

func execSQL(ctx context.Context, i *instance.Instance, sql string) error {
	conn, err := i.Connect(ctx, "postgres")
	if err != nil {
		return err
	}
	defer conn.Close(ctx)
	_, err = conn.Exec(ctx, sql)
	return err
}

// fogoEnv is an in-process fogo with two servers (bench-east primary, bench-west partner), a database
// "bench" and a failover group "bench-fg", driven through its API as a user would.
type fogoEnv struct {
	app         *app.App
	c           *cli.Client
	base        string // .../providers/Microsoft.Sql/servers/
	login, pw   string
	rwAddr      string // the group's read-write listener
	primaryPort int    // bench-east's instance of bench, for direct connections
	// primary and secondary are the group's servers in their current roles (bench-east, bench-west at first).
	primary, secondary string
}

func (e *fogoEnv) close() { e.app.Close() }

// do sends one request and waits for its long-running operation.
func (e *fogoEnv) do(ctx context.Context, method, path string, body any) error {
	r, err := e.c.Do(ctx, method, path, body)
	if err != nil {
		return fmt.Errorf("%s %s: %w", method, path, err)
	}
	return e.c.Wait(ctx, method+" "+path, r)
}

// dsn is a connection string for the admin login to addr (host:port, or a multi-host list h1:port,h2:port).
func (e *fogoEnv) dsn(addr string) string {
	// addr may be a multi-host list, h1:port,h2:port (cluster mode, several controllers).
	var hosts, ports []string
	for _, hp := range strings.Split(addr, ",") {
		host, port, _ := strings.Cut(hp, ":")
		hosts, ports = append(hosts, host), append(ports, port)
	}
	return fmt.Sprintf("host=%s port=%s user=%s password=%s dbname=bench sslmode=disable",
		strings.Join(hosts, ","), strings.Join(ports, ","), e.login, e.pw)
}

func startFogoGroup(ctx context.Context, dataDir, pgBin string, portLow int) (*fogoEnv, error) {
	a, err := app.Start(ctx, app.Options{
		DataDir: dataDir, Listen: "127.0.0.1:0", PGBin: pgBin,
		PortLow: portLow, PortHigh: portLow + 80, MinGraceMinutes: 1,
		Logger: slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: benchLogLevel()})),
	})
	if err != nil {
		return nil, err
	}
	e := &fogoEnv{app: a, login: "benchadmin", pw: "B3nch!" + secret(),
		c:    &cli.Client{Endpoint: a.URL(), Token: a.Token, PollInterval: 10 * time.Millisecond},
		base: "/subscriptions/00000000-0000-0000-0000-00000000b0b0/resourceGroups/bench/providers/Microsoft.Sql/servers/"}
	if err := e.setup(ctx); err != nil {
		a.Close()
		return nil, err
	}
	return e, nil
}

func (e *fogoEnv) setup(ctx context.Context) error {
	if err := e.app.WaitReady(ctx); err != nil {
		return err
	}
	if err := e.createGroup(ctx, map[string]any{"failoverPolicy": "Manual"}); err != nil {
		return err
	}
	groups, insts, err := e.app.Service.GroupsWithInstances()
	if err != nil || len(groups) != 1 || len(groups[0].Databases) != 1 {
		return fmt.Errorf("read the bench group back: %v", err)
	}
	e.primaryPort = insts[groups[0].Databases[0].Primary].Port
	return waitCatchUp(ctx, e.c, e.base+"bench-east/failoverGroups/bench-fg")
}

// createGroup creates, through the API, the servers bench-east (eastus) and bench-west (westus), the database
// bench on bench-east and the group bench-fg between them with the given readWriteEndpoint, and reads the group's
// read-write listener.
func (e *fogoEnv) createGroup(ctx context.Context, readWrite map[string]any) error {
	for _, s := range []struct{ name, loc string }{{"bench-east", "eastus"}, {"bench-west", "westus"}} {
		if err := e.do(ctx, http.MethodPut, e.base+s.name, map[string]any{"location": s.loc,
			"properties": map[string]any{"administratorLogin": e.login, "administratorLoginPassword": e.pw}}); err != nil {
			return err
		}
	}
	if err := e.do(ctx, http.MethodPut, e.base+"bench-east/databases/bench", map[string]any{"location": "eastus"}); err != nil {
		return err
	}
	if err := e.do(ctx, http.MethodPut, e.base+"bench-east/failoverGroups/bench-fg", map[string]any{"properties": map[string]any{
		"readWriteEndpoint": readWrite,
		"partnerServers":    []any{map[string]any{"id": strings.TrimSuffix(e.base, "/") + "/bench-west"}},
		"databases":         []string{e.base + "bench-east/databases/bench"},
	}}); err != nil {
		return err
	}
	r, err := e.c.Do(ctx, http.MethodGet, e.base+"bench-east/failoverGroups/bench-fg", nil)
	if err != nil {
		return err
	}
	var g struct {
		Properties struct {
			ReadWriteEndpoint struct {
				Endpoint string `json:"endpoint"`
			} `json:"readWriteEndpoint"`
		} `json:"properties"`
	}
	if err := json.Unmarshal(r.Body, &g); err != nil {
		return err
	}
	e.rwAddr = g.Properties.ReadWriteEndpoint.Endpoint
	e.primary, e.secondary = "bench-east", "bench-west"
	return nil
}

// fogoFailovers drives planned failovers through fogo's API while a client writes through the group's
// read-write listener, the one address applications keep across failovers.
func fogoFailovers(ctx context.Context, o FailoverOptions, res *FailoverResult) error {
	e, err := startFogoGroup(ctx, filepath.Join(o.Dir, "fogo"), o.PGBin, o.PortLow)
	if err != nil {
		return err
	}
	defer e.close()
	if err := execDSN(ctx, e.dsn(e.rwAddr), "CREATE TABLE bench_writes(id bigserial PRIMARY KEY, at timestamptz DEFAULT now())"); err != nil {
		return err
	}
	res.FogoTotal, res.FogoWriteGap, err = e.plannedFailovers(ctx, "fogo", o.Iterations, o.Settle, &res.Commits, o.Progress)
	return err
}

// plannedFailovers fails the group over n times, back and forth, each measured by measure with a writer on the
// read-write listener; progress lines start with label.
func (e *fogoEnv) plannedFailovers(ctx context.Context, label string, n int, settle time.Duration, commits *int, progress io.Writer) (totals, gaps []time.Duration, err error) {
	for it := 0; it < n; it++ {
		if err := waitCatchUp(ctx, e.c, e.base+e.primary+"/failoverGroups/bench-fg"); err != nil {
			return nil, nil, err
		}
		took, gap, err := measure(ctx, settle, commits, []string{e.dsn(e.rwAddr)}, func() error {
			return e.do(ctx, http.MethodPost, e.base+e.secondary+"/failoverGroups/bench-fg/failover", nil)
		})
		if err != nil {
			return nil, nil, err
		}
		totals = append(totals, took)
		gaps = append(gaps, gap)
		fmt.Fprintf(progress, "%s %d/%d: operation %s, longest commit gap %s\n", label, it+1, n, took.Round(time.Millisecond), gap.Round(time.Millisecond))
		e.primary, e.secondary = e.secondary, e.primary
	}
	return totals, gaps, nil
}

func waitCatchUp(ctx context.Context, c *cli.Client, groupPath string) error {
	deadline := time.Now().Add(2 * time.Minute)
	for time.Now().Before(deadline) {
		r, err := c.Do(ctx, http.MethodGet, groupPath, nil)
		if err != nil {
			return err
		}
		var g struct {
			Properties struct {
				ReplicationState string `json:"replicationState"`
			} `json:"properties"`
		}
		if err := json.Unmarshal(r.Body, &g); err == nil && g.Properties.ReplicationState == "CATCH_UP" {
			return nil
		}
		time.Sleep(100 * time.Millisecond)
	}
	return fmt.Errorf("%s never reached CATCH_UP", groupPath)
}

// benchLogLevel is warn, or FOGO_BENCH_LOG (debug shows each operation's step timings).
func benchLogLevel() slog.Level {
	var l slog.Level
	if err := l.UnmarshalText([]byte(os.Getenv("FOGO_BENCH_LOG"))); err != nil {
		return slog.LevelWarn
	}
	return l
}

// measure runs one switch while a writer commits to targets, and returns how long the switch took and the
// longest gap between two acknowledged commits around it; the writer's commits are added to *commits.
func measure(ctx context.Context, settle time.Duration, commits *int, targets []string, switchOver func() error) (took, gap time.Duration, err error) {
	w := &writer{targets: targets, table: "bench_writes"}
	from, to, err := during(ctx, w, settle, func() error {
		start := time.Now()
		err := switchOver()
		took = time.Since(start)
		return err
	})
	if err != nil {
		return 0, 0, err
	}
	*commits += w.commits()
	return took, w.longestGap(from, to), nil
}

// scratch finds the PostgreSQL binaries and prepares the scratch directory (a temporary one when dir is "",
// removed by cleanup) so that the postgres OS user can reach it.
func scratch(pgBin, dir string) (bin *pgbin.Bin, out string, cleanup func(), err error) {
	cleanup = func() {}
	if bin, err = pgbin.Discover(pgBin); err != nil {
		return nil, "", cleanup, err
	}
	if dir == "" {
		if dir, err = os.MkdirTemp("", "fogo-bench-"); err != nil {
			return nil, "", cleanup, err
		}
		tmp := dir
		cleanup = func() { os.RemoveAll(tmp) }
	}
	if err := bin.AllowTraverse(dir, dir); err != nil {
		cleanup()
		return nil, "", func() {}, err
	}
	return bin, dir, cleanup, nil
}
