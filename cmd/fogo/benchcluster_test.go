package main

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/fogo-db/fogo/internal/bench"
)

// TestBenchFailoverCluster keeps `fogo bench failover --mode cluster` working: one planned failover and one loss
// of the primary's host must each be measured, and the summary must name the target. It asserts no timing beyond
// the bound of the wait for the first write.
func TestBenchFailoverCluster(t *testing.T) {
	o := testClusterOptions(t)
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	res, err := bench.Cluster(ctx, bench.ClusterOptions{Iterations: 1, Unplanned: 1, Settle: 300 * time.Millisecond,
		LeaseTTL: 6 * time.Second, GraceUnit: time.Second, Bin: o.Bin, Env: o.Env, Progress: o.Progress})
	if err != nil {
		t.Fatal(err)
	}
	if len(res.PlannedWriteGap) != 1 || res.PlannedWriteGap[0] <= 0 || len(res.PlannedTotal) != 1 {
		t.Errorf("planned: %+v", res)
	}
	if len(res.CutToFirstWrite) != 1 || res.CutToFirstWrite[0] <= res.GracePeriod ||
		res.CutToFirstWriteExclGrace[0] != res.CutToFirstWrite[0]-res.GracePeriod {
		t.Errorf("unplanned: %+v", res)
	}
	if res.Commits == 0 || !strings.Contains(res.Summary(), "lease TTL + 2s") {
		t.Fatalf("result: %+v\n%s", res, res.Summary())
	}
}
