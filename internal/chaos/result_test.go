package chaos

import (
	"errors"
	"strings"
	"testing"
	"time"
)

// TestSummary: faults are summed up by kind with nearest-rank percentiles, a broken check fails the campaign, and
// the table says so with the seed.
func TestSummary(t *testing.T) {
	r := &Result{Seed: 42, Started: time.Now()}
	for i, d := range []time.Duration{3, 1, 2, 10} {
		f := FaultResult{N: i + 1, Kind: "kill-primary", Writable: d * time.Second, Redundant: 2 * d * time.Second, OK: true}
		f.add("writable", nil)
		r.Faults = append(r.Faults, f)
	}
	bad := FaultResult{N: 5, Kind: "forced", Writable: time.Second}
	bad.add("lost = report", errors.New("acknowledged, lost and not reported: [7]"))
	r.Faults = append(r.Faults, bad)
	r.finish()
	if r.Passed || len(r.Kinds) != 2 {
		t.Fatalf("passed %v, %d kinds", r.Passed, len(r.Kinds))
	}
	k := r.Kinds[1]
	if k.Kind != "kill-primary" || k.Count != 4 || k.Held != 4 || k.WriteP50 != 2*time.Second || k.WriteP99 != 10*time.Second || k.StreamP50 != 4*time.Second {
		t.Fatalf("summary %+v", k)
	}
	var b strings.Builder
	if err := r.WriteTable(&b); err != nil {
		t.Fatal(err)
	}
	if out := b.String(); !strings.Contains(out, "0/1") || !strings.Contains(out, "FAILED (reproduce with --seed 42)") {
		t.Fatalf("table:\n%s", out)
	}
	if line := bad.line(); !strings.Contains(line, "FAILED lost = report: acknowledged, lost and not reported: [7]") {
		t.Fatalf("line: %s", line)
	}
}

// TestPickKinds: the long freeze only in long campaigns unless asked for; a host loss only in the cluster mode; an
// unknown kind is refused with the list.
func TestPickKinds(t *testing.T) {
	short, _ := pickKinds(nil, 10, false)
	long, _ := pickKinds(nil, 30, false)
	longCluster, _ := pickKinds(nil, 30, true)
	if len(longCluster) != len(Kinds()) || len(long) != len(Kinds())-1 || len(short) != len(Kinds())-2 {
		t.Fatalf("%d kinds in a short campaign, %d in a long one, of %d", len(short), len(long), len(Kinds()))
	}
	if got, err := pickKinds([]string{"freeze-primary-long"}, 1, false); err != nil || len(got) != 1 {
		t.Fatalf("asked for: %v %v", got, err)
	}
	if _, err := pickKinds([]string{"unplug"}, 1, false); err == nil || !strings.Contains(err.Error(), "kill-primary") {
		t.Fatalf("unknown kind: %v", err)
	}
	if _, err := pickKinds([]string{"host-loss"}, 1, false); err == nil || !strings.Contains(err.Error(), "--mode cluster") {
		t.Fatalf("host-loss in the embedded mode: %v", err)
	}
	if got, err := pickKinds([]string{"host-loss"}, 1, true); err != nil || len(got) != 1 {
		t.Fatalf("host-loss in the cluster mode: %v %v", got, err)
	}
}
