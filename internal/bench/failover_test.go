package bench

import (
	"context"
	"math/rand/v2"
	"strings"
	"testing"
	"time"

	"github.com/fogo-db/fogo/internal/testutil/pgtest"
)

// TestFailoverBenchRuns keeps `fogo bench failover` working: one iteration on each side must measure a
// switch, see commits on both sides and produce a summary with the ratio. It asserts no timing.
func TestFailoverBenchRuns(t *testing.T) {
	pgtest.Bin(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	res, err := Failover(ctx, FailoverOptions{Iterations: 1, Settle: 300 * time.Millisecond, PortLow: 32100 + rand.IntN(6)*100}) // below the ephemeral ports (see e2e's portBase) and its ranges
	if err != nil {
		t.Fatal(err)
	}
	for name, d := range map[string][]time.Duration{"fogo total": res.FogoTotal, "fogo gap": res.FogoWriteGap,
		"raw stop+promote": res.RawStopPromote, "raw gap": res.RawWriteGap} {
		if len(d) != 1 || d[0] <= 0 {
			t.Errorf("%s: %v", name, d)
		}
	}
	if res.Commits == 0 || res.Ratio() <= 0 || !strings.Contains(res.Summary(), "ratio") {
		t.Fatalf("result: %+v\n%s", res, res.Summary())
	}
}
