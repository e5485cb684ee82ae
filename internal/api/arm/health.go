package arm

import (
	"errors"
	"net/http"

	"github.com/fogo-db/fogo/internal/controlplane/service"
)

// readyz answers 200 once fogo has re-adopted its instances, resumed its operations and can read its store.
func (a *API) readyz(w http.ResponseWriter, r *http.Request) {
	if !a.cfg.Ready() {
		http.Error(w, "starting\n", http.StatusServiceUnavailable)
		return
	}
	if _, err := a.svc.Servers(); err != nil {
		http.Error(w, "store unavailable\n", http.StatusServiceUnavailable)
		return
	}
	w.Header().Set("Content-Type", "text/plain")
	_, _ = w.Write([]byte("ready\n"))
}

// groupHealth serves GET /health/failoverGroups/{group}/servers/{server}/{primary|replica} for load balancers,
// in the spirit of Patroni's /primary and /replica: 200 when that server holds that role in the group and is
// healthy in it, 503 otherwise; the body says why. No token: it reveals roles and states only.
func (a *API) groupHealth(w http.ResponseWriter, r *http.Request) {
	want := r.PathValue("check")
	if want != "primary" && want != "replica" {
		http.Error(w, "check must be primary or replica\n", http.StatusNotFound)
		return
	}
	h, err := a.svc.Health(r.Context(), r.PathValue("group"), r.PathValue("server"))
	if errors.Is(err, service.ErrUnknownGroup) {
		writeJSON(w, http.StatusNotFound, map[string]string{"error": "no such failover group"})
		return
	}
	if err != nil {
		writeJSON(w, http.StatusServiceUnavailable, map[string]string{"error": err.Error()})
		return
	}
	status := http.StatusServiceUnavailable
	if h.Healthy && (want == "primary" && h.Role == "Primary" || want == "replica" && h.Role == "Secondary") {
		status = http.StatusOK
	}
	writeJSON(w, status, h)
}
