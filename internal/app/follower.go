package app

// While another controller leads a state shared in etcd, this one's API address forwards every request to it,
// so that clients (and the Location and operation-status URLs the leader hands out, built from the request's
// host) work through any controller.

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/fogo-db/fogo/internal/controlplane/leader"
	"github.com/fogo-db/fogo/internal/errcatalog"
)

// controllerInfo is what a controller publishes in the election.
type controllerInfo struct {
	Name string `json:"name"`
	API  string `json:"api"` // its API's base URL, reachable from the other controllers
}

// parseControllerInfo decodes an election value (one that is not ours counts as a bare name).
func parseControllerInfo(v string) controllerInfo {
	var c controllerInfo
	if json.Unmarshal([]byte(v), &c) != nil {
		c.Name = v
	}
	return c
}

// advertisedURL is the API's base URL as other controllers reach it: --advertise-host and the port listened on.
func (a *App) advertisedURL() string {
	_, port, _ := net.SplitHostPort(a.listener.Addr().String())
	return a.scheme() + "://" + net.JoinHostPort(a.opts.AdvertiseHost, port)
}

// followerProxy forwards each request to the elected controller's API, found in the election at each request;
// with none elected (or itself, between its election and serveAPI) it answers 503 with Retry-After, which the
// Azure SDK's retry policy honours. The leader checks the bearer token, the same on every controller.
func (a *App) followerProxy() http.Handler {
	cli, prefix := a.Store.Etcd()
	transport := http.DefaultTransport.(*http.Transport).Clone()
	if a.opts.TLSCert != "" { // controllers usually share one certificate: trust it besides the system's roots
		pool, err := x509.SystemCertPool()
		if err != nil || pool == nil {
			pool = x509.NewCertPool()
		}
		if cert, err := tls.LoadX509KeyPair(a.opts.TLSCert, a.opts.TLSKey); err == nil && len(cert.Certificate) > 0 {
			if leaf, err := x509.ParseCertificate(cert.Certificate[0]); err == nil {
				pool.AddCert(leaf)
			}
		}
		transport.TLSClientConfig = &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	}
	self := a.advertisedURL()
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ctx, cancel := context.WithTimeout(r.Context(), 5*time.Second)
		v, err := leader.Current(ctx, cli, prefix)
		cancel()
		info := parseControllerInfo(v)
		target, perr := url.Parse(info.API)
		if err != nil || info.API == "" || info.API == self || perr != nil {
			notYet(w, r)
			return
		}
		p := &httputil.ReverseProxy{
			Rewrite: func(pr *httputil.ProxyRequest) {
				pr.SetURL(target)
				pr.Out.Host = pr.In.Host // the leader builds its URLs for the address the client used
				pr.SetXForwarded()
			},
			Transport: transport,
			ErrorHandler: func(w http.ResponseWriter, r *http.Request, err error) {
				a.log.Warn("forward to the controller", "leader", info.Name, "err", err)
				notYet(w, r)
			},
		}
		p.ServeHTTP(w, r)
	})
}

// notYet answers that no controller can take the request now: retry shortly.
func notYet(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Retry-After", strconv.Itoa(2))
	errcatalog.Write(w, errcatalog.Newf("TooManyRequests", "No fogo controller can take the request now (one is being elected, or is starting); retry shortly."))
}

// switchHandler answers with the handler last set.
type switchHandler struct{ h atomic.Pointer[http.Handler] }

func (s *switchHandler) set(h http.Handler) { s.h.Store(&h) }

func (s *switchHandler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	(*s.h.Load()).ServeHTTP(w, r)
}
