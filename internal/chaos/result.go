package chaos

import (
	"fmt"
	"io"
	"sort"
	"text/tabwriter"
	"time"
)

// Result is a campaign's outcome.
type Result struct {
	Seed     int64         `json:"seed"`
	Started  time.Time     `json:"started"`
	Duration time.Duration `json:"durationNs"`
	Passed   bool          `json:"passed"`
	Faults   []FaultResult `json:"faults"`
	Kinds    []KindSummary `json:"kinds"`
	// Acked, InDoubt and Lost count the writers' commits: acknowledged, of unknown outcome, and acknowledged
	// then lost by a forced failover (each one in its report).
	Acked   int `json:"acked"`
	InDoubt int `json:"inDoubt"`
	Lost    int `json:"lost"`
}

// FaultResult is one fault and what the checks found after it.
type FaultResult struct {
	N       int       `json:"n"`
	Kind    string    `json:"kind"`
	Detail  string    `json:"detail,omitempty"`
	Started time.Time `json:"started"`
	// Writable is the time from the fault's start to the first commit through the read-write listener after
	// it; Redundant to the geo-secondary streaming again.
	Writable  time.Duration `json:"writableNs"`
	Redundant time.Duration `json:"redundantNs"`
	OK        bool          `json:"ok"`
	Checks    []Check       `json:"checks"`
}

// Check is one invariant after one fault.
type Check struct {
	Name   string `json:"name"`
	OK     bool   `json:"ok"`
	Detail string `json:"detail,omitempty"`
}

// KindSummary sums up the faults of one kind.
type KindSummary struct {
	Kind      string        `json:"kind"`
	Count     int           `json:"count"`
	Held      int           `json:"held"` // faults after which every invariant held
	WriteP50  time.Duration `json:"writableP50Ns"`
	WriteP99  time.Duration `json:"writableP99Ns"`
	StreamP50 time.Duration `json:"redundantP50Ns"`
	StreamP99 time.Duration `json:"redundantP99Ns"`
}

func (f *FaultResult) add(name string, err error) {
	ch := Check{Name: name, OK: err == nil}
	if err != nil {
		ch.Detail = err.Error()
	}
	f.Checks = append(f.Checks, ch)
}

// line is the fault's progress line.
func (f *FaultResult) line() string {
	s := fmt.Sprintf("fault %3d %-20s writable %6s streams %6s", f.N, f.Kind, f.Writable.Round(10*time.Millisecond),
		f.Redundant.Round(10*time.Millisecond))
	if f.OK {
		s += "  ok"
	} else {
		for _, ch := range f.Checks {
			if !ch.OK {
				s += fmt.Sprintf("\n    FAILED %s: %s", ch.Name, ch.Detail)
			}
		}
	}
	if f.Detail != "" {
		s += "  (" + f.Detail + ")"
	}
	return s
}

// finish sums up the faults by kind.
func (r *Result) finish() {
	r.Duration = time.Since(r.Started)
	r.Passed = len(r.Faults) > 0
	byKind := map[string][]FaultResult{}
	for _, f := range r.Faults {
		byKind[f.Kind] = append(byKind[f.Kind], f)
		r.Passed = r.Passed && f.OK
	}
	r.Kinds = nil
	for kind, fs := range byKind {
		k := KindSummary{Kind: kind, Count: len(fs)}
		var w, s []time.Duration
		for _, f := range fs {
			if f.OK {
				k.Held++
			}
			w, s = append(w, f.Writable), append(s, f.Redundant)
		}
		k.WriteP50, k.WriteP99 = percentile(w, 50), percentile(w, 99)
		k.StreamP50, k.StreamP99 = percentile(s, 50), percentile(s, 99)
		r.Kinds = append(r.Kinds, k)
	}
	sort.Slice(r.Kinds, func(i, j int) bool { return r.Kinds[i].Kind < r.Kinds[j].Kind })
}

// percentile is the nearest-rank percentile.
func percentile(ds []time.Duration, p int) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := append([]time.Duration(nil), ds...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	rank := (p*len(s) + 99) / 100
	return s[max(rank, 1)-1]
}

// WriteTable prints the summary: one line per fault kind, then the totals.
func (r *Result) WriteTable(w io.Writer) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "FAULT\tCOUNT\tINVARIANTS HELD\tWRITABLE P50\tWRITABLE P99\tSTREAMS P50\tSTREAMS P99")
	for _, k := range r.Kinds {
		fmt.Fprintf(tw, "%s\t%d\t%d/%d\t%s\t%s\t%s\t%s\n", k.Kind, k.Count, k.Held, k.Count, round(k.WriteP50),
			round(k.WriteP99), round(k.StreamP50), round(k.StreamP99))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	verdict := "PASSED"
	if !r.Passed {
		verdict = fmt.Sprintf("FAILED (reproduce with --seed %d)", r.Seed)
	}
	_, err := fmt.Fprintf(w, "\n%d faults in %s, seed %d: %s. Commits acknowledged %d, in doubt %d, lost by forced failovers %d (each in its report).\n",
		len(r.Faults), r.Duration.Round(time.Second), r.Seed, verdict, r.Acked, r.InDoubt, r.Lost)
	return err
}

func round(d time.Duration) string {
	if d >= 10*time.Second {
		return d.Round(100 * time.Millisecond).String()
	}
	return d.Round(10 * time.Millisecond).String()
}
