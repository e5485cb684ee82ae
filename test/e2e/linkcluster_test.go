package e2e

import (
	"context"
	"fmt"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/fogo-db/fogo/internal/app"
	"github.com/fogo-db/fogo/internal/controlplane/store"
	"github.com/fogo-db/fogo/internal/link/target"
	"github.com/fogo-db/fogo/internal/testutil/etcdtest"
	"github.com/fogo-db/fogo/internal/testutil/pgtest"
)

// TestDuckDBLinkRunsOnItsWaitingController: in cluster mode a DuckDb link runs on the controller whose host holds
// its file, elected or not. ctl-a stores the DuckDb target and starts the link; ctl-a stops and ctl-b is elected:
// the link's status says it waits for ctl-a's host. ctl-a comes back and waits in its election while ctl-b leads:
// the link runs there (detailedstatus names it) and the rows written meanwhile arrive in ctl-a's file. Before
// links had leases of their own they ran only in the elected controller, and this link waited for ever.
func TestDuckDBLinkRunsOnItsWaitingController(t *testing.T) {
	etcd := etcdtest.Start(t)
	keyFile := filepath.Join(t.TempDir(), "secrets.key")
	dirA := pgtest.TempDir(t)
	onEtcd := func(name, dir string) func(*app.Options) {
		return func(o *app.Options) {
			o.Etcd = &store.EtcdConfig{Endpoints: etcd.Endpoints(), Prefix: "/fogo-test"}
			o.SecretsKeyFile, o.ControllerName, o.LeaderTTL = keyFile, name, 4*time.Second
			if dir != "" {
				o.DataDir = dir
			}
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()

	// The source: a plain PostgreSQL database (no failover group needed to place the link).
	pg := pgtest.NewPrimary(t)
	srcConn := fmt.Sprintf("host=127.0.0.1 port=%d user=%s password=%s dbname=postgres sslmode=disable", pg.Port, pg.SuperUser, pg.SuperPassword)
	src, err := pgx.Connect(ctx, srcConn)
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close(context.Background())
	if _, err := src.Exec(ctx, "CREATE TABLE t(id int PRIMARY KEY); INSERT INTO t SELECT generate_series(1, 10)"); err != nil {
		t.Fatal(err)
	}

	// ctl-a leads: the DuckDb target is pinned to its host, and the link runs there.
	a := startFogo(t, onEtcd("ctl-a", dirA))
	ws := "/workspaces/analytics"
	for _, step := range []struct {
		method, path string
		body         any
	}{
		{http.MethodPut, ws + "/linkedservices/src" + lsVer, map[string]any{"properties": map[string]any{"type": "PostgreSql",
			"typeProperties": map[string]any{"connectionString": srcConn}}}},
		{http.MethodPut, ws + "/linkedservices/duck" + lsVer, map[string]any{"properties": map[string]any{"type": "DuckDb",
			"typeProperties": map[string]any{"path": "pinned.duckdb"}}}},
		{http.MethodPut, ws + "/linkconnections/l" + lcVer, map[string]any{"properties": map[string]any{
			"sourceDatabase": map[string]any{"linkedService": map[string]any{"referenceName": "src"}},
			"targetDatabase": map[string]any{"linkedService": map[string]any{"referenceName": "duck"}}}}},
		{http.MethodPost, ws + "/linkconnections/l/edittables" + lcVer, map[string]any{"linkTables": []any{
			map[string]any{"id": "t", "source": map[string]any{"schemaName": "public", "tableName": "t"},
				"target": map[string]any{"schemaName": "public", "tableName": "t"}, "operationType": "add"}}}},
		{http.MethodPost, ws + "/linkconnections/l/start" + lcVer, nil},
	} {
		if r := a.do(step.method, step.path, step.body); r.Status != http.StatusOK {
			t.Fatalf("%s %s: %d %s", step.method, step.path, r.Status, r.Raw)
		}
	}
	status := func(f *fogo) map[string]any {
		return f.do(http.MethodGet, ws+"/linkconnections/l/detailedstatus"+lcVer, nil).Body
	}
	waitStatus := func(f *fogo, what string, ok func(map[string]any) bool) map[string]any {
		t.Helper()
		deadline := time.Now().Add(60 * time.Second)
		for {
			s := status(f)
			if ok(s) {
				return s
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: detailedstatus %v", what, s)
			}
			time.Sleep(200 * time.Millisecond)
		}
	}
	waitStatus(a, "the link does not run on ctl-a while it leads", func(s map[string]any) bool {
		return s["status"] == "Running" && s["runsOn"] == "ctl-a"
	})

	// ctl-b waits; ctl-a stops; ctl-b is elected. The link waits for ctl-a's host, and says so.
	optsB := fogoOptions(t, onEtcd("ctl-b", ""))
	startedB := make(chan error, 1)
	var appB *app.App
	go func() {
		var err error
		appB, err = app.Start(ctx, optsB)
		startedB <- err
	}()
	time.Sleep(time.Second)
	a.app.Close()
	select {
	case err := <-startedB:
		if err != nil {
			t.Fatalf("ctl-b: %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("ctl-b was not elected after ctl-a stopped")
	}
	b := ready(t, appB)
	waitStatus(b, "the link's status does not say that it waits for ctl-a's host", func(s map[string]any) bool {
		e, _ := s["error"].(map[string]any)
		msg, _ := e["message"].(string)
		return s["status"] == "Starting" && s["runsOn"] == nil && strings.Contains(msg, `controller "ctl-a"`) && strings.Contains(msg, "not running")
	})
	if _, err := src.Exec(ctx, "INSERT INTO t SELECT generate_series(11, 20)"); err != nil {
		t.Fatal(err)
	}

	// ctl-a is back, and waits in its election while ctl-b leads: it runs its DuckDb link all the same.
	optsA := fogoOptions(t, onEtcd("ctl-a", dirA))
	aCtx, stopA := context.WithCancel(ctx)
	startedA := make(chan error, 1)
	go func() {
		a2, err := app.Start(aCtx, optsA)
		if err == nil {
			a2.Close()
			err = fmt.Errorf("ctl-a was elected while ctl-b leads")
		}
		startedA <- err
	}()
	defer func() { stopA(); <-startedA }()
	if _, err := src.Exec(ctx, "INSERT INTO t SELECT generate_series(21, 30)"); err != nil {
		t.Fatal(err)
	}
	waitStatus(b, "the DuckDb link does not run on its waiting controller ctl-a", func(s map[string]any) bool {
		return s["status"] == "Running" && s["runsOn"] == "ctl-a" && s["error"] == nil
	})
	select {
	case err := <-startedA:
		t.Fatalf("ctl-a's start ended: %v", err)
	default:
	}

	// Stopped through ctl-b, the link stops on ctl-a (Stop answers once it does): its file holds every row once.
	if r := b.do(http.MethodPost, ws+"/linkconnections/l/stop"+lcVer, nil); r.Status != http.StatusOK {
		t.Fatalf("stop: %d %s", r.Status, r.Raw)
	}
	duck, err := target.OpenDuckDB(filepath.Join(dirA, "link-targets", "pinned.duckdb"))
	if err != nil {
		t.Fatalf("open ctl-a's DuckDb file after the stop: %v", err)
	}
	defer duck.Close()
	res, err := duck.Query(ctx, target.QueryRequest{SQL: "SELECT count(*), count(DISTINCT id), min(id), max(id) FROM public.t",
		Link: "analytics/l", Tables: []target.TableName{{Schema: "public", Name: "t"}}})
	if err != nil {
		t.Fatal(err)
	}
	if got := fmt.Sprint(res.Rows); got != "[[30 30 1 30]]" {
		t.Fatalf("ctl-a's DuckDb file holds %s (count, distinct, min, max), want [[30 30 1 30]]", got)
	}
}
