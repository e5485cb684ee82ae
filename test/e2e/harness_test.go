package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/fogo-db/fogo/internal/app"
	"github.com/fogo-db/fogo/internal/testutil/pgtest"
)

const (
	sub      = "00000000-1111-2222-3333-444444444444"
	rg       = "rg1"
	apiVer   = "2021-11-01"
	password = "Str0ng!Passw0rd"
	login    = "appadmin"
)

// fogo is a running fogo under test with a small HTTP client.
type fogo struct {
	t   *testing.T
	app *app.App
	url string
	tok string
}

// portBase is the first of a fogo's 100 ports: below the kernel's ephemeral range (32768-60999 by default), from
// which pgtest.FreePort and every outgoing connection draw, so that nothing else binds a port between fogo's
// check that it is free and its instance starting on it.
func portBase() int { return 20000 + rand.IntN(120)*100 }

func startFogo(t *testing.T, mod ...func(*app.Options)) *fogo {
	t.Helper()
	opts := fogoOptions(t, mod...)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	a, err := app.Start(ctx, opts)
	if err != nil {
		t.Fatalf("start fogo: %v", err)
	}
	return ready(t, a)
}

// ready waits for a started fogo to be ready (closed at the test's end).
func ready(t *testing.T, a *app.App) *fogo {
	t.Helper()
	t.Cleanup(a.Close)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := a.WaitReady(ctx); err != nil {
		t.Fatal(err)
	}
	return &fogo{t: t, app: a, url: a.URL(), tok: a.Token}
}

// fogoOptions are a test fogo's options: a fresh data directory, its own 100 ports, short intervals.
func fogoOptions(t *testing.T, mod ...func(*app.Options)) app.Options {
	t.Helper()
	pgtest.Bin(t)
	dir := pgtest.TempDir(t)
	low := portBase()
	level := slog.LevelWarn
	if os.Getenv("FOGO_TEST_LOG") != "" {
		level = slog.LevelDebug
	}
	opts := app.Options{
		DataDir: dir, Listen: "127.0.0.1:0", PortLow: low, PortHigh: low + 99, MinGraceMinutes: 1,
		ReconcileInterval: 300 * time.Millisecond, CatchUpTimeout: 20 * time.Second,
		Logger: slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level})),
	}
	for _, m := range mod {
		m(&opts)
	}
	return opts
}

type response struct {
	Status int
	Header http.Header
	Body   map[string]any
	Raw    []byte
}

func (r response) errCode() string {
	if e, ok := r.Body["error"].(map[string]any); ok {
		s, _ := e["code"].(string)
		return s
	}
	return ""
}

func (f *fogo) do(method, path string, body any) response {
	f.t.Helper()
	return f.doRaw(method, path, body, f.tok)
}

func (f *fogo) doRaw(method, path string, body any, token string) response {
	f.t.Helper()
	var rd io.Reader
	switch b := body.(type) {
	case nil:
	case string:
		rd = strings.NewReader(b)
	default:
		raw, _ := json.Marshal(b)
		rd = bytes.NewReader(raw)
	}
	u := path
	if !strings.HasPrefix(u, "http") {
		u = f.url + path
		if !strings.Contains(u, "api-version=") {
			sep := "?"
			if strings.Contains(u, "?") {
				sep = "&"
			}
			u += sep + "api-version=" + apiVer
		}
	}
	req, err := http.NewRequest(method, u, rd)
	if err != nil {
		f.t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		f.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	out := response{Status: resp.StatusCode, Header: resp.Header, Raw: raw}
	if len(raw) > 0 {
		_ = json.Unmarshal(raw, &out.Body)
	}
	return out
}

// wait polls a long-running operation through its Azure-AsyncOperation URL and returns the final status body.
func (f *fogo) wait(r response) map[string]any {
	f.t.Helper()
	u := r.Header.Get("Azure-AsyncOperation")
	if u == "" {
		f.t.Fatalf("no Azure-AsyncOperation header (status %d: %s)", r.Status, r.Raw)
	}
	if loc := r.Header.Get("Location"); !strings.HasPrefix(loc, "http") || !strings.HasPrefix(u, "http") {
		f.t.Fatalf("operation URLs must be absolute: %q %q", u, loc)
	}
	deadline := time.Now().Add(3 * time.Minute)
	for time.Now().Before(deadline) {
		st := f.do(http.MethodGet, u, nil)
		if st.Status != 200 {
			f.t.Fatalf("operation status: %d %s", st.Status, st.Raw)
		}
		if s := st.Body["status"]; s != "InProgress" {
			return st.Body
		}
		time.Sleep(100 * time.Millisecond)
	}
	f.t.Fatalf("operation %s did not finish", u)
	return nil
}

func (f *fogo) mustSucceed(r response, wantStatus ...int) map[string]any {
	f.t.Helper()
	ok := len(wantStatus) == 0
	for _, s := range wantStatus {
		ok = ok || r.Status == s
	}
	if !ok {
		f.t.Fatalf("status %d, want %v: %s", r.Status, wantStatus, r.Raw)
	}
	st := f.wait(r)
	if st["status"] != "Succeeded" {
		f.t.Fatalf("operation %v: %v", st["status"], st["error"])
	}
	return st
}

func serverPath(name string) string {
	return fmt.Sprintf("/subscriptions/%s/resourceGroups/%s/providers/Microsoft.Sql/servers/%s", sub, rg, name)
}

func dbPath(server, db string) string { return serverPath(server) + "/databases/" + db }
func fgPath(server, fg string) string { return serverPath(server) + "/failoverGroups/" + fg }

func (f *fogo) createServer(name, location string) map[string]any {
	f.t.Helper()
	r := f.do(http.MethodPut, serverPath(name), map[string]any{
		"location":   location,
		"properties": map[string]any{"administratorLogin": login, "administratorLoginPassword": password},
	})
	f.mustSucceed(r, 201)
	return f.do(http.MethodGet, serverPath(name), nil).Body
}

func (f *fogo) createDB(server, name, location string) {
	f.t.Helper()
	f.mustSucceed(f.do(http.MethodPut, dbPath(server, name), map[string]any{"location": location}), 201, 202)
}

func (f *fogo) createGroup(primary, partner, name string, dbs ...string) response {
	f.t.Helper()
	var ids []string
	for _, d := range dbs {
		ids = append(ids, dbPath(primary, d))
	}
	return f.do(http.MethodPut, fgPath(primary, name), map[string]any{"properties": map[string]any{
		"readWriteEndpoint": map[string]any{"failoverPolicy": "Manual"},
		"readOnlyEndpoint":  map[string]any{"failoverPolicy": "Disabled"},
		"partnerServers":    []any{map[string]any{"id": serverPath(partner)}},
		"databases":         ids,
	}})
}

// endpointOf returns the server's gateway endpoint (host:port).
func (f *fogo) endpointOf(server string) string {
	f.t.Helper()
	props := f.do(http.MethodGet, serverPath(server), nil).Body["properties"].(map[string]any)
	return props["endpoint"].(string)
}

// connect opens a session through a server's gateway endpoint as the admin login.
func (f *fogo) connect(ctx context.Context, server, db string) (*pgx.Conn, error) {
	host, port := hostsAndPorts(f.endpointOf(server))
	return pgx.Connect(ctx, fmt.Sprintf("host=%s port=%s user=%s password=%s dbname=%s sslmode=prefer connect_timeout=5", host, port, login, password, db))
}

func (f *fogo) groupProps(server, fg string) map[string]any {
	f.t.Helper()
	r := f.do(http.MethodGet, fgPath(server, fg), nil)
	if r.Status != 200 {
		f.t.Fatalf("get group: %d %s", r.Status, r.Raw)
	}
	return r.Body["properties"].(map[string]any)
}

// waitGroupState polls until the group's replicationState (seen from server) is want.
func (f *fogo) waitGroupState(server, fg, want string) {
	f.t.Helper()
	deadline := time.Now().Add(90 * time.Second)
	var got any
	for time.Now().Before(deadline) {
		got = f.groupProps(server, fg)["replicationState"]
		if got == want {
			return
		}
		time.Sleep(200 * time.Millisecond)
	}
	f.t.Fatalf("group %s replicationState = %v, want %s", fg, got, want)
}

// groupWithLedger creates servers east (eastus) and west (westus), database db on east with a ledger table,
// and failover group fg over it, and waits until the geo-secondary streams.
func (f *fogo) groupWithLedger(east, west, fg, db string) {
	f.t.Helper()
	f.createServer(east, "eastus")
	f.createServer(west, "westus")
	f.createDB(east, db, "eastus")
	mustExec(f.t, f, east, db, "CREATE TABLE ledger(id bigserial PRIMARY KEY, note text)")
	f.mustSucceed(f.createGroup(east, west, fg, db), 201)
	f.waitGroupState(east, fg, "CATCH_UP")
}

// hostsAndPorts splits an endpoint, host:port or a libpq multi-host list h1:p1,h2:p2 (cluster mode), into libpq's
// host and port parameters ("h1,h2" and "p1,p2").
func hostsAndPorts(endpoint string) (string, string) {
	var hosts, ports []string
	for _, ep := range strings.Split(endpoint, ",") {
		h, p, _ := strings.Cut(ep, ":")
		hosts, ports = append(hosts, h), append(ports, p)
	}
	return strings.Join(hosts, ","), strings.Join(ports, ",")
}
