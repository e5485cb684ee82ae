package e2e

import (
	"crypto/tls"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/fogo-db/fogo/internal/app"
	"github.com/fogo-db/fogo/internal/testutil/certs"
)

// TestServeTLS: with --tls-cert/--tls-key the API speaks HTTPS only; /healthz needs no token, everything else does.
func TestServeTLS(t *testing.T) {
	certFile, keyFile, pool := certs.SelfSigned(t)
	f := startFogo(t, func(o *app.Options) { o.TLSCert, o.TLSKey = certFile, keyFile })
	if !strings.HasPrefix(f.url, "https://") {
		t.Fatalf("API URL %s is not https", f.url)
	}
	client := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}, Timeout: 10 * time.Second}
	get := func(path, token string) int {
		req, _ := http.NewRequest(http.MethodGet, f.url+path, nil)
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		resp, err := client.Do(req)
		if err != nil {
			t.Fatalf("GET %s: %v", path, err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	if got := get("/healthz", ""); got != 200 {
		t.Fatalf("healthz over TLS: %d", got)
	}
	list := "/subscriptions/" + sub + "/resourceGroups/" + rg + "/providers/Microsoft.Sql/servers?api-version=" + apiVer
	if got := get(list, ""); got != 401 {
		t.Fatalf("no token over TLS: %d", got)
	}
	if got := get(list, f.tok); got != 200 {
		t.Fatalf("with token over TLS: %d", got)
	}
	resp, err := http.Get("http://" + strings.TrimPrefix(f.url, "https://") + "/healthz")
	if err == nil {
		resp.Body.Close()
		if resp.StatusCode == 200 {
			t.Fatal("plain HTTP is served next to TLS")
		}
	}
}
