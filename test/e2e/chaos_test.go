package e2e

import (
	"context"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/fogo-db/fogo/internal/chaos"
	"github.com/fogo-db/fogo/internal/testutil/netns"
	"github.com/fogo-db/fogo/internal/testutil/pgtest"
)

// chaosSeeds are the short campaigns' seeds: fixed sequences, so that a failure in CI is the same run again, chosen
// for their spread. Embedded, 10 faults: link-target-restart, kill-primary, planned, kill-fogo-planned,
// kill-primary, cut-streaming, kill-standby, freeze-primary, forced, kill-fogo-forced. Cluster, 6 faults:
// host-loss, planned, kill-fogo-planned, freeze-primary, cut-streaming, kill-fogo-forced.
// FOGO_CHAOS_SEED runs another.
var chaosSeeds = map[string]int64{"embedded": 14, "cluster": 24}

// runShortCampaign runs n faults of a campaign in mode and fails the test unless every invariant held.
func runShortCampaign(t *testing.T, mode string, n int) {
	t.Helper()
	seed := chaosSeeds[mode]
	if s := os.Getenv("FOGO_CHAOS_SEED"); s != "" {
		v, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			t.Fatal(err)
		}
		seed = v
	}
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	res, err := chaos.Run(ctx, chaos.Config{Fogo: buildFogo(t), Mode: mode, Seed: seed, Faults: n, PortLow: portBase(),
		Progress: testWriter{t}})
	if err != nil {
		t.Fatal(err)
	}
	var table strings.Builder
	_ = res.WriteTable(&table)
	t.Logf("\n%s", table.String())
	if !res.Passed || len(res.Faults) != n {
		t.Fatalf("the campaign failed (seed %d; reproduce with FOGO_CHAOS_SEED=%d, or fogo chaos --mode %s --seed %d --faults %d)",
			seed, seed, mode, seed, n)
	}
	if res.Acked == 0 {
		t.Fatal("the writers committed nothing")
	}
}

// TestChaosShortCampaignInCluster is the same against a cluster in network namespaces (three etcd members, an
// agent per region, a controller; killing fogo kills the controller), 6 faults.
func TestChaosShortCampaignInCluster(t *testing.T) {
	netns.Require(t)
	pgtest.Bin(t)
	netns.EtcdBin(t)
	runShortCampaign(t, "cluster", 6)
}

// TestChaosShortCampaign is issue 13's short campaign in the test command: 10 faults drawn from a seed, against a
// `fogo serve` of its own, every invariant checked after each (see package chaos). The full campaign is
// `fogo chaos` (50 faults by default).
func TestChaosShortCampaign(t *testing.T) {
	pgtest.Bin(t)
	runShortCampaign(t, "embedded", 10)
}

// testWriter sends each line to the test's log.
type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}
