package cluster_test

import (
	"errors"
	"log/slog"
	"path/filepath"
	"testing"

	"github.com/fogo-db/fogo/internal/controlplane/cluster"
	"github.com/fogo-db/fogo/internal/controlplane/model"
	"github.com/fogo-db/fogo/internal/controlplane/store"
)

// TestEndpointPortsAvoidAgentHosts: a controller never leases, for an endpoint that every host serves, a port an
// agent's host API listens on or its instances take (no agent could serve the endpoint on it).
func TestEndpointPortsAvoidAgentHosts(t *testing.T) {
	st, err := store.Open(filepath.Join(t.TempDir(), "state.db"), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	ag := model.Agent{Name: "east-1", URL: "https://10.0.0.4:47500", PortLow: 47501, PortHigh: 47503}
	if err := st.Update(func(tx *store.Tx) error { return tx.Put(store.Agents, ag.Name, &ag) }); err != nil {
		t.Fatal(err)
	}
	for _, r := range []struct{ low, high int }{{47500, 47500}, {47501, 47503}} {
		m := cluster.New(cluster.Config{PortLow: r.low, PortHigh: r.high, Logger: slog.New(slog.DiscardHandler)}, st)
		err := st.Update(func(tx *store.Tx) error {
			p, err := m.AllocatePort(tx, "test")
			if err == nil {
				t.Errorf("range %d-%d: leased %d, which agent %s uses", r.low, r.high, p, ag.Name)
			}
			return err
		})
		if !errors.Is(err, cluster.ErrNoFreePort) {
			t.Errorf("range %d-%d: %v, want ErrNoFreePort", r.low, r.high, err)
		}
	}
}
