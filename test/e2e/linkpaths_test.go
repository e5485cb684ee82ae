package e2e

import (
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/fogo-db/fogo/internal/app"
	"github.com/fogo-db/fogo/internal/controlplane/links"
	"github.com/fogo-db/fogo/internal/controlplane/store"
	"github.com/fogo-db/fogo/internal/testutil/pgtest"
)

// TestLinkTargetPathsContained: DuckDB target paths stay inside DATA-DIR/link-targets/ or a --link-target-dir.
// The probes of issue 9 (an absolute path elsewhere, "..") and a symbolic link leading out get a 400 at PUT and
// create nothing; a link planted after the PUT is caught when the target is opened; and a definition an older
// fogo stored unchecked makes its link Failed with the reason, not a file elsewhere or a crash.
func TestLinkTargetPathsContained(t *testing.T) {
	extra, outside := pgtest.TempDir(t), pgtest.TempDir(t)
	var dataDir string
	f := startFogo(t, func(o *app.Options) { o.LinkTargetDirs, dataDir = []string{extra}, o.DataDir })
	base := filepath.Join(dataDir, "link-targets")
	ws := "/workspaces/paths"
	duck := func(name, path string) response {
		return f.do(http.MethodPut, ws+"/linkedservices/"+name+lsVer, map[string]any{"properties": map[string]any{
			"type": "DuckDb", "typeProperties": map[string]any{"path": path}}})
	}
	if err := os.Symlink(outside, filepath.Join(base, "out")); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{"/etc/fogo-probe.duckdb", "../../escape.duckdb", "out/x.duckdb", filepath.Join(outside, "y.duckdb"), "sub/../../z.duckdb"} {
		r := duck("probe", p)
		e, _ := r.Body["error"].(map[string]any)
		if r.Status != 400 || r.errCode() != "InvalidParameterValue" || e["target"] != "properties.typeProperties.path" {
			t.Fatalf("PUT path %q: %d %s", p, r.Status, r.Raw)
		}
		if msg := e["message"].(string); !strings.Contains(msg, "link-targets/") || !strings.Contains(msg, extra) || strings.Contains(msg, outside) {
			t.Fatalf("PUT path %q: the message should name the allowed directories and not where a link leads: %s", p, msg)
		}
	}
	for _, gone := range []string{"/etc/fogo-probe.duckdb", filepath.Join(dataDir, "../escape.duckdb"), filepath.Dir(dataDir) + "/escape.duckdb"} {
		if _, err := os.Stat(gone); err == nil {
			t.Fatalf("%s was created", gone)
		}
	}
	if entries, _ := os.ReadDir(outside); len(entries) != 0 {
		t.Fatalf("files were created outside: %v", entries)
	}
	if r := f.do(http.MethodGet, ws+"/linkedservices/probe"+lsVer, nil); r.Status != 404 {
		t.Fatalf("a refused linked service was stored: %d %s", r.Status, r.Raw)
	}
	for _, p := range []string{"sub/ok.duckdb", filepath.Join(base, "abs.duckdb"), filepath.Join(extra, "a.duckdb")} {
		if r := duck("ok", p); r.Status != 200 {
			t.Fatalf("PUT allowed path %q: %d %s", p, r.Status, r.Raw)
		}
	}

	// A directory replaced by a symbolic link after the PUT: the start refuses to open the target.
	src := map[string]any{"properties": map[string]any{"type": "PostgreSql", "typeProperties": map[string]any{
		"connectionString": "host=127.0.0.1 port=1 dbname=shop user=u password=p"}}}
	if r := f.do(http.MethodPut, ws+"/linkedservices/src"+lsVer, src); r.Status != 200 {
		t.Fatalf("PUT source: %d %s", r.Status, r.Raw)
	}
	if r := duck("later", "later/x.duckdb"); r.Status != 200 {
		t.Fatalf("PUT later: %d %s", r.Status, r.Raw)
	}
	lc := func(target string) map[string]any {
		return map[string]any{"properties": map[string]any{
			"sourceDatabase": map[string]any{"linkedService": map[string]any{"referenceName": "src"}},
			"targetDatabase": map[string]any{"linkedService": map[string]any{"referenceName": target}}}}
	}
	tables := map[string]any{"linkTables": []any{map[string]any{"source": map[string]any{"schemaName": "public", "tableName": "t"}}}}
	for _, step := range []struct {
		method, path string
		body         any
	}{
		{http.MethodPut, ws + "/linkconnections/lk" + lcVer, lc("later")},
		{http.MethodPost, ws + "/linkconnections/lk/edittables" + lcVer, tables},
	} {
		if r := f.do(step.method, step.path, step.body); r.Status != 200 {
			t.Fatalf("%s %s: %d %s", step.method, step.path, r.Status, r.Raw)
		}
	}
	if err := os.Symlink(outside, filepath.Join(base, "later")); err != nil {
		t.Fatal(err)
	}
	if r := f.do(http.MethodPost, ws+"/linkconnections/lk/start"+lcVer, nil); r.Status != 400 || !strings.Contains(string(r.Raw), "symbolic link") {
		t.Fatalf("start with a planted link: %d %s", r.Status, r.Raw)
	}
	if entries, _ := os.ReadDir(outside); len(entries) != 0 {
		t.Fatalf("files were created outside: %v", entries)
	}

	// A definition stored by an older fogo, unchecked, of a link that should run: at fogo's start the link
	// reports Failed with the reason and opens nothing; a stop and start answers 400 until the path is fixed.
	err := f.app.Store.Update(func(tx *store.Tx) error {
		if err := tx.Put(store.LinkedServices, "paths/old", &links.LinkedService{Workspace: "paths", Name: "old", Type: links.TypeDuckDB, Path: "/etc/fogo-probe.duckdb"}); err != nil {
			return err
		}
		return tx.Put(store.LinkConnections, "paths/oldlk", &links.LinkConnection{Workspace: "paths", Name: "oldlk", SourceService: "src",
			TargetService: "old", Running: true, Tables: []links.LinkTable{{ID: "t1", SourceSchema: "public", SourceTable: "t"}}})
	})
	if err != nil {
		t.Fatal(err)
	}
	f.app.LinkCatalog.Resume() // what fogo does at its start
	st := f.do(http.MethodGet, ws+"/linkconnections/oldlk/detailedstatus"+lcVer, nil)
	if e, _ := st.Body["error"].(map[string]any); st.Body["status"] != "Failed" || !strings.Contains(e["message"].(string), "outside the allowed directories") {
		t.Fatalf("detailedstatus of a link with a stored bad path: %s", st.Raw)
	}
	ts := f.do(http.MethodPost, ws+"/linkconnections/oldlk/querytablestatus"+lcVer, nil)
	if v, _ := ts.Body["value"].([]any); len(v) != 1 || v[0].(map[string]any)["status"] != "Failed" {
		t.Fatalf("querytablestatus of a link with a stored bad path: %s", ts.Raw)
	}
	if r := f.do(http.MethodPost, ws+"/linkconnections/oldlk/query"+lcVer, map[string]any{"query": "SELECT 1"}); r.Status != 400 {
		t.Fatalf("query of a link with a stored bad path: %d %s", r.Status, r.Raw)
	}
	if r := f.do(http.MethodPost, ws+"/linkconnections/oldlk/start"+lcVer, nil); r.Status != 400 {
		t.Fatalf("start of a link with a stored bad path: %d %s", r.Status, r.Raw)
	}
	if r := f.do(http.MethodPut, ws+"/linkconnections/oldlk2"+lcVer, lc("old")); r.Status != 400 {
		t.Fatalf("a link connection to a stored bad path: %d %s", r.Status, r.Raw)
	}
	if r := f.do(http.MethodPost, ws+"/linkconnections/oldlk/stop"+lcVer, nil); r.Status != 200 {
		t.Fatalf("stop: %d %s", r.Status, r.Raw)
	}
	if st := f.do(http.MethodGet, ws+"/linkconnections/oldlk/detailedstatus"+lcVer, nil); st.Body["status"] != "Stopped" {
		t.Fatalf("after stop: %s", st.Raw)
	}
	if _, err := os.Stat("/etc/fogo-probe.duckdb"); err == nil {
		t.Fatal("/etc/fogo-probe.duckdb was created")
	}
}
