package arm

import (
	"crypto/subtle"
	"log/slog"
	"net/http"
	"sort"
	"strings"
	"time"

	"github.com/fogo-db/fogo/internal/controlplane/service"
	"github.com/fogo-db/fogo/internal/errcatalog"
)

// SupportedAPIVersions are the api-version values fogo accepts on Microsoft.Sql resources. armsql v1.2.0 sends
// 2021-02-01-preview (servers), 2021-05-01-preview (databases) and 2020-11-01-preview (failover groups).
var SupportedAPIVersions = []string{
	"2020-11-01-preview", "2021-02-01-preview", "2021-05-01-preview", "2021-08-01-preview", "2021-11-01",
	"2022-05-01-preview", "2023-05-01-preview", "2023-08-01", "2024-05-01-preview", "2025-02-01-preview",
}

// Config configures the API.
type Config struct {
	Token         string
	AdvertiseHost string
	// EndpointHosts, when set, lists the hosts whose gateways serve every endpoint and listener (cluster mode:
	// every controller's); endpoints are then shown as libpq multi-host lists, h1:port,h2:port.
	EndpointHosts func() []string
	// RetryAfter is sent with every long-running operation response (seconds; default 1).
	RetryAfter int
	Logger     *slog.Logger
	// Ready reports whether fogo finished starting (GET /healthz, /readyz).
	Ready func() bool
	// Metrics, if set, is served at GET /metrics (bearer token required).
	Metrics http.Handler
	// Workspaces, if set, serves /workspaces/ (the Synapse link API; bearer token required).
	Workspaces http.Handler
	// Admin, if set, serves /admin/ (fogo's own administration, e.g. key rotation; bearer token required).
	Admin http.Handler
}

// API is the HTTP handler.
type API struct {
	cfg Config
	svc *service.Service
	mux *http.ServeMux
}

// New returns the API handler.
func New(cfg Config, svc *service.Service) *API {
	if cfg.RetryAfter == 0 {
		cfg.RetryAfter = 1
	}
	if cfg.Ready == nil {
		cfg.Ready = func() bool { return true }
	}
	a := &API{cfg: cfg, svc: svc, mux: http.NewServeMux()}
	a.mux.HandleFunc("GET /healthz", a.healthz)
	a.mux.HandleFunc("GET /readyz", a.readyz)
	a.mux.HandleFunc("GET /health/failoverGroups/{group}/servers/{server}/{check}", a.groupHealth)
	if cfg.Workspaces != nil {
		a.mux.Handle("/workspaces/", a.authenticated(cfg.Workspaces))
	}
	if cfg.Admin != nil {
		a.mux.Handle("/admin/", a.authenticated(cfg.Admin))
	}
	if cfg.Metrics != nil {
		a.mux.Handle("GET /metrics", a.authenticated(cfg.Metrics))
	}
	a.mux.Handle("/subscriptions/", a.authenticated(http.HandlerFunc(a.route)))
	a.mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		errcatalog.Write(w, errcatalog.Newf("ResourceNotFound", "No route for '%s %s'.", r.Method, r.URL.Path))
	})
	return a
}

// ServeHTTP serves the API with request logging.
func (a *API) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	rec := &statusRecorder{ResponseWriter: w, status: 200}
	a.mux.ServeHTTP(rec, r)
	if a.cfg.Logger != nil && r.URL.Path != "/healthz" && r.URL.Path != "/readyz" && r.URL.Path != "/metrics" {
		a.cfg.Logger.Debug("api", "method", r.Method, "path", r.URL.Path, "status", rec.status,
			"duration", time.Since(start).Round(time.Microsecond))
	}
}

type statusRecorder struct {
	http.ResponseWriter
	status int
}

func (s *statusRecorder) WriteHeader(code int) { s.status = code; s.ResponseWriter.WriteHeader(code) }

func (a *API) healthz(w http.ResponseWriter, r *http.Request) {
	if !a.cfg.Ready() {
		http.Error(w, "starting\n", http.StatusServiceUnavailable)
		return
	}
	w.Header().Set("Content-Type", "text/plain")
	_, _ = w.Write([]byte("ok\n"))
}

// authenticated requires `Authorization: Bearer <token>` (constant-time comparison).
func (a *API) authenticated(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := r.Header.Get("Authorization")
		scheme, tok, ok := strings.Cut(h, " ")
		switch {
		case h == "":
			errcatalog.Write(w, errcatalog.Newf("AuthenticationFailed", "Authentication failed. The 'Authorization' header is missing."))
			return
		case !ok || !strings.EqualFold(scheme, "Bearer"):
			errcatalog.Write(w, errcatalog.Newf("AuthenticationFailed", "Authentication failed. The 'Authorization' header is not a Bearer token."))
			return
		case subtle.ConstantTimeCompare([]byte(strings.TrimSpace(tok)), []byte(a.cfg.Token)) != 1:
			errcatalog.Write(w, errcatalog.Newf("InvalidAuthenticationToken", "The access token is invalid."))
			return
		}
		next.ServeHTTP(w, r)
	})
}

// checkAPIVersion enforces a supported api-version query parameter.
func checkAPIVersion(r *http.Request) error {
	v := r.URL.Query().Get("api-version")
	if v == "" {
		return errcatalog.Newf("MissingApiVersionParameter", "The api-version query parameter (?api-version=) is required for all requests.")
	}
	for _, s := range SupportedAPIVersions {
		if s == v {
			return nil
		}
	}
	sorted := append([]string(nil), SupportedAPIVersions...)
	sort.Strings(sorted)
	return errcatalog.Newf("InvalidApiVersionParameter", "The api-version '%s' is invalid. The supported versions are '%s'.", v, strings.Join(sorted, ","))
}
