package bench

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/fogo-db/fogo/internal/controlplane/links"
	"github.com/fogo-db/fogo/internal/link"
	"github.com/fogo-db/fogo/internal/link/target"
)

// LinkMemoryOptions configure the big-transaction memory benchmark.
type LinkMemoryOptions struct {
	Rows     int // rows of the one transaction (default 10,000,000)
	PGBin    string
	Dir      string
	PortLow  int
	Progress io.Writer
	// Phases to run, in order, each one source transaction over every row: "insert", "update", "delete"
	// (default: insert only).
	Phases []string
}

// LinkMemoryPhase is one big transaction applied by a link.
type LinkMemoryPhase struct {
	Name    string        `json:"name"`
	Rows    int           `json:"rows"`
	Source  time.Duration `json:"source"` // the source transaction, from BEGIN to its commit
	Apply   time.Duration `json:"apply"`  // its commit -> a row committed after it is in the target
	BaseRSS int64         `json:"baseRSS"`
	PeakRSS int64         `json:"peakRSS"` // the largest resident set of this process, sampled every 50 ms
}

// LinkMemoryResult holds the measurements.
type LinkMemoryResult struct {
	Phases []LinkMemoryPhase `json:"phases"`
}

// Summary is a human-readable report.
func (r LinkMemoryResult) Summary() string {
	var b strings.Builder
	for _, p := range r.Phases {
		fmt.Fprintf(&b, "one %s of %d rows: source %s, link applied it %s later (%.0f rows/s); fogo's resident memory %d MiB before, peak %d MiB (target <= 512 MiB)\n",
			p.Name, p.Rows, p.Source.Round(time.Millisecond), p.Apply.Round(time.Millisecond), float64(p.Rows)/(p.Source+p.Apply).Seconds(),
			p.BaseRSS>>20, p.PeakRSS>>20)
	}
	return b.String()
}

// LinkMemory measures fogo's resident memory (the whole process: control plane, link, embedded DuckDB) while a
// link applies one source transaction of many rows into DuckDB.
func LinkMemory(ctx context.Context, o LinkMemoryOptions) (*LinkMemoryResult, error) {
	if o.Rows <= 0 {
		o.Rows = 10_000_000
	}
	if o.PortLow == 0 {
		o.PortLow = 29000
	}
	if o.Progress == nil {
		o.Progress = io.Discard
	}
	if len(o.Phases) == 0 {
		o.Phases = []string{"insert"}
	}
	statements := map[string]string{
		"insert": "INSERT INTO bench_big(id, payload, n) SELECT g, md5(g::text), g % 1000 FROM generate_series(1, $1::bigint) g",
		"update": "UPDATE bench_big SET n = n + 1 WHERE id <= $1::bigint",
		"delete": "DELETE FROM bench_big WHERE id <= $1::bigint",
	}
	for _, p := range o.Phases {
		if statements[p] == "" {
			return nil, fmt.Errorf("unknown phase %q (insert, update, delete)", p)
		}
	}
	lb, err := startLinkBench(ctx, o.PGBin, o.Dir, o.PortLow)
	if err != nil {
		return nil, err
	}
	defer lb.close()
	dir, e, db := lb.dir, lb.e, lb.db
	if _, err := db.Exec(ctx, "CREATE TABLE bench_big(id bigint PRIMARY KEY, payload text, n int)"); err != nil {
		return nil, err
	}
	store, err := target.OpenDuckDB(filepath.Join(dir, "bench.duckdb"))
	if err != nil {
		return nil, err
	}
	defer store.Close()
	def := links.Def{Name: "bigtxn", Group: "bench-fg", Database: "bench", Target: store,
		Tables: []link.TableMapping{{SourceTable: "bench_big"}}}
	if err := e.app.Links.Start(def); err != nil {
		return nil, err
	}
	defer e.app.Links.Stop("bigtxn")
	if err := waitLink(ctx, e, "bigtxn", func(s link.Status) bool { return s.Phase == "Streaming" }); err != nil {
		return nil, err
	}
	res := &LinkMemoryResult{}
	for _, name := range o.Phases {
		p := LinkMemoryPhase{Name: name, Rows: o.Rows, BaseRSS: residentBytes()}
		stopSampling := sampleRSS(&p.PeakRSS)
		fmt.Fprintf(o.Progress, "%s of %d rows in one transaction (fogo's resident memory now %d MiB)\n", name, o.Rows, p.BaseRSS>>20)
		start := time.Now()
		if _, err := db.Exec(ctx, statements[name], o.Rows); err != nil {
			stopSampling()
			return nil, fmt.Errorf("%s: %w", name, err)
		}
		p.Source = time.Since(start)
		// A marker row committed after the big transaction: once the target has it, it has the big one too.
		marker := -int64(len(res.Phases) + 1)
		if _, err := db.Exec(ctx, "INSERT INTO bench_big(id, payload, n) VALUES ($1, 'marker', 0)", marker); err != nil {
			stopSampling()
			return nil, err
		}
		committed := time.Now()
		err := waitLink(ctx, e, "bigtxn", func(s link.Status) bool {
			var n int
			return s.Phase == "Failed" ||
				store.DB().QueryRowContext(ctx, "SELECT count(*) FROM public.bench_big WHERE id = $1", marker).Scan(&n) == nil && n == 1
		})
		stopSampling()
		if err != nil {
			return nil, err
		}
		if st, _ := e.app.Links.Status("bigtxn"); st.Phase == "Failed" {
			return nil, fmt.Errorf("the link failed: %s", st.Err)
		}
		p.Apply = time.Since(committed)
		fmt.Fprintf(o.Progress, "  applied %s after the commit; peak resident memory %d MiB\n", p.Apply.Round(time.Millisecond), p.PeakRSS>>20)
		res.Phases = append(res.Phases, p)
	}
	return res, nil
}

// residentBytes is this process's resident set size (0 if /proc cannot tell).
func residentBytes() int64 {
	f, err := os.Open("/proc/self/status")
	if err != nil {
		return 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), "VmRSS:"); ok {
			kb, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
			return kb << 10
		}
	}
	return 0
}

// sampleRSS records the largest resident set size into peak every 50 ms until the returned function is called.
func sampleRSS(peak *int64) (stop func()) {
	var mu sync.Mutex
	done := make(chan struct{})
	finished := make(chan struct{})
	record := func() {
		mu.Lock()
		*peak = max(*peak, residentBytes())
		mu.Unlock()
	}
	go func() {
		defer close(finished)
		t := time.NewTicker(50 * time.Millisecond)
		defer t.Stop()
		for {
			record()
			select {
			case <-done:
				return
			case <-t.C:
			}
		}
	}()
	return func() {
		close(done)
		<-finished
		record()
	}
}
