package e2e

import (
	"context"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/fogo-db/fogo/internal/chaos"
	"github.com/fogo-db/fogo/internal/testutil/pgtest"
)

// chaosSeed is the short campaign's seed: a fixed sequence of faults, so that a failure in CI is the same run
// again. FOGO_CHAOS_SEED runs another.
const chaosSeed = 20261201

// TestChaosShortCampaign is issue 13's short campaign in the test command: 10 faults drawn from a seed, against a
// `fogo serve` of its own, every invariant checked after each (see package chaos). The full campaign is
// `fogo chaos` (50 faults by default).
func TestChaosShortCampaign(t *testing.T) {
	pgtest.Bin(t)
	seed := int64(chaosSeed)
	if s := os.Getenv("FOGO_CHAOS_SEED"); s != "" {
		v, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			t.Fatal(err)
		}
		seed = v
	}
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	res, err := chaos.Run(ctx, chaos.Config{Fogo: buildFogo(t), Seed: seed, Faults: 10, PortLow: portBase(),
		Progress: testWriter{t}})
	if err != nil {
		t.Fatal(err)
	}
	var table strings.Builder
	_ = res.WriteTable(&table)
	t.Logf("\n%s", table.String())
	if !res.Passed || len(res.Faults) != 10 {
		t.Fatalf("the campaign failed (seed %d; reproduce with FOGO_CHAOS_SEED=%d or fogo chaos --seed %d --faults 10)", seed, seed, seed)
	}
	if res.Acked == 0 {
		t.Fatal("the writers committed nothing")
	}
}

// testWriter sends each line to the test's log.
type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}
