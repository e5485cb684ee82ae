package e2e

import (
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/fogo-db/fogo/internal/app"
)

const lcVer = "?api-version=2022-12-01-preview"
const lsVer = "?api-version=2020-12-01"

// TestLinkConnectionAPI drives a link only through the Synapse-style API: linked services (secrets never
// returned), a link connection on a failover group, edittables, linktables, start, detailedstatus from facts,
// the query extension (read-only), stop, and the errors a user meets.
func TestLinkConnectionAPI(t *testing.T) {
	var dataDir string
	f := startFogo(t, func(o *app.Options) { dataDir = o.DataDir })
	f.groupWithLedger("api-east", "api-west", "api-fg", "shop")
	mustExec(t, f, "api-east", "shop", "INSERT INTO ledger(note) SELECT 'seed' FROM generate_series(1, 100)")
	rw := f.listenerOf("api-east", "api-fg", "readWriteEndpoint")
	host, port, _ := strings.Cut(rw, ":")
	ws := "/workspaces/analytics"

	expect := func(r response, status int, code string) {
		t.Helper()
		if r.Status != status || (code != "" && r.errCode() != code) {
			t.Fatalf("got %d %s, want %d %s: %s", r.Status, r.errCode(), status, code, r.Raw)
		}
	}
	src := map[string]any{"properties": map[string]any{"type": "PostgreSql", "typeProperties": map[string]any{
		"connectionString": map[string]any{"type": "SecureString",
			"value": fmt.Sprintf("host=%s port=%s dbname=shop user=%s password=%s", host, port, login, password)}}}}
	r := f.do(http.MethodPut, ws+"/linkedservices/src"+lsVer, src)
	expect(r, 200, "")
	if strings.Contains(string(r.Raw), password) {
		t.Fatal("a linked service answer contains the password")
	}
	if g := f.do(http.MethodGet, ws+"/linkedservices/src"+lsVer, nil); strings.Contains(string(g.Raw), password) || g.Status != 200 {
		t.Fatalf("GET linked service: %d %s", g.Status, g.Raw)
	}
	expect(f.do(http.MethodPut, ws+"/linkedservices/duck"+lsVer, map[string]any{"properties": map[string]any{
		"type": "DuckDb", "typeProperties": map[string]any{"path": "analytics.duckdb"}}}), 200, "")
	expect(f.do(http.MethodPut, ws+"/linkedservices/bad"+lsVer, map[string]any{"properties": map[string]any{"type": "Oracle"}}), 400, "InvalidParameterValue")
	expect(f.do(http.MethodGet, ws+"/linkedservices/src?api-version=", nil), 400, "MissingApiVersionParameter")
	expect(f.doRaw(http.MethodGet, ws+"/linkedservices"+lsVer, nil, ""), 401, "AuthenticationFailed")

	lc := map[string]any{"properties": map[string]any{
		"sourceDatabase": map[string]any{"linkedService": map[string]any{"referenceName": "src"},
			"typeProperties": map[string]any{"resourceId": fgPath("api-east", "api-fg")}},
		"targetDatabase": map[string]any{"linkedService": map[string]any{"referenceName": "duck"},
			"typeProperties": map[string]any{"dropExistingTargetTableOnStart": true}},
	}}
	expect(f.do(http.MethodPut, ws+"/linkconnections/lc1"+lcVer, lc), 200, "")
	expect(f.do(http.MethodPost, ws+"/linkconnections/lc1/start"+lcVer, nil), 400, "InvalidParameterValue") // no tables yet
	expect(f.do(http.MethodPost, ws+"/linkconnections/lc1/edittables"+lcVer, map[string]any{"linkTables": []any{
		map[string]any{"id": "t1", "source": map[string]any{"schemaName": "public", "tableName": "ledger"},
			"target": map[string]any{"schemaName": "dbo", "tableName": "ledger"}, "operationType": "add"}}}), 200, "")
	if lt := f.do(http.MethodGet, ws+"/linkconnections/lc1/linktables"+lcVer, nil); len(lt.Body["value"].([]any)) != 1 {
		t.Fatalf("linktables: %s", lt.Raw)
	}
	expect(f.do(http.MethodPost, ws+"/linkconnections/lc1/start"+lcVer, nil), 200, "")
	expect(f.do(http.MethodPut, ws+"/linkconnections/lc1"+lcVer, lc), 409, "ConflictingDatabaseOperation")

	mustExec(t, f, "api-east", "shop", "INSERT INTO ledger(note) SELECT 'after start' FROM generate_series(1, 50)")
	deadline := time.Now().Add(60 * time.Second)
	for {
		q := f.do(http.MethodPost, ws+"/linkconnections/lc1/query"+lcVer, map[string]any{"query": "SELECT count(*) AS n FROM dbo.ledger"})
		if q.Status == 200 {
			rows := q.Body["rows"].([]any)
			if len(rows) == 1 && fmt.Sprint(rows[0].([]any)[0]) == "150" {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("the target never reached 150 rows: %d %s", q.Status, q.Raw)
		}
		time.Sleep(200 * time.Millisecond)
	}
	st := f.do(http.MethodGet, ws+"/linkconnections/lc1/detailedstatus"+lcVer, nil)
	if st.Body["status"] != "Running" || st.Body["isApplyingChanges"] != true || st.Body["checkpointLsn"] == "0/0" {
		t.Fatalf("detailedstatus: %s", st.Raw)
	}
	ts := f.do(http.MethodPost, ws+"/linkconnections/lc1/querytablestatus"+lcVer, map[string]any{"maxSegmentCount": 50})
	if v, _ := ts.Body["value"].([]any); ts.Status != 200 || len(v) != 1 || v[0].(map[string]any)["id"] != "t1" ||
		v[0].(map[string]any)["status"] != "Replicating" || v[0].(map[string]any)["lastProcessedData"] == nil {
		t.Fatalf("querytablestatus: %d %s", ts.Status, ts.Raw)
	}
	expect(f.do(http.MethodPost, ws+"/linkconnections/lc1/querytablestatus"+lcVer, map[string]any{"maxSegmentCount": 5000}), 400, "InvalidParameterValue")
	expect(f.do(http.MethodPost, ws+"/linkconnections/lc1/query"+lcVer, map[string]any{"query": "DELETE FROM dbo.ledger"}), 400, "InvalidParameterValue")
	queryContainment(t, f, dataDir, ws+"/linkconnections/lc1/query"+lcVer)
	expect(f.do(http.MethodPost, ws+"/linkconnections/lc1/stop"+lcVer, nil), 200, "")
	if st := f.do(http.MethodGet, ws+"/linkconnections/lc1/detailedstatus"+lcVer, nil); st.Body["status"] != "Stopped" {
		t.Fatalf("after stop: %s", st.Raw)
	}
	if l := f.do(http.MethodGet, ws+"/linkconnections"+lcVer, nil); len(l.Body["value"].([]any)) != 1 {
		t.Fatalf("list: %s", l.Raw)
	}
	expect(f.do(http.MethodDelete, ws+"/linkedservices/duck"+lsVer, nil), 409, "ConflictingDatabaseOperation")
	expect(f.do(http.MethodDelete, ws+"/linkconnections/lc1"+lcVer, nil), 200, "")
	expect(f.do(http.MethodGet, ws+"/linkconnections/lc1"+lcVer, nil), 404, "ResourceNotFound")

	// The same through the CLI.
	f.mustCLI(t, "link", "create", "lk2", "-w", "analytics", "--source-resource-id", serverPath("api-west"), // the partner server
		"--source-connection", fmt.Sprintf("host=%s port=%s dbname=shop user=%s password=%s", host, port, login, password),
		"--target-duckdb", "cli.duckdb", "--table", "public.ledger:mart.ledger")
	f.mustCLI(t, "link", "start", "lk2", "-w", "analytics")
	deadline = time.Now().Add(60 * time.Second)
	for {
		out, _, err := f.runCLI("link", "query", "lk2", "SELECT count(*) AS n FROM mart.ledger", "-w", "analytics")
		if err == nil && strings.Contains(out, "150") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("fogo link query: %q %v", out, err)
		}
		time.Sleep(200 * time.Millisecond)
	}
	if st := f.do(http.MethodGet, ws+"/linkconnections/lk2/detailedstatus"+lcVer, nil); st.Body["sourceFailoverGroup"] != "api-fg" {
		t.Fatalf("a link on a server of a failover group does not follow the group: %s", st.Raw)
	}
	if out := f.mustCLI(t, "link", "status", "lk2", "-w", "analytics"); !strings.Contains(out, "Running") {
		t.Fatalf("fogo link status:\n%s", out)
	}
	if out := f.mustCLI(t, "link", "tables", "lk2", "-w", "analytics"); !strings.Contains(out, "public.ledger") || !strings.Contains(out, "Replicating") {
		t.Fatalf("fogo link tables:\n%s", out)
	}
	f.mustCLI(t, "link", "stop", "lk2", "-w", "analytics")
	f.mustCLI(t, "link", "delete", "lk2", "-w", "analytics")
}

// queryContainment sends the probes of issue 9 to a running link's query extension (a DuckDB target holding
// dbo.ledger with 150 rows): each is a 400 that says what is not allowed and shows nothing it read; the
// connection's settings are locked with no external access; analytical queries work; rows are limited and the
// limits are in the answer.
func queryContainment(t *testing.T, f *fogo, dataDir, queryURL string) {
	t.Helper()
	key, err := os.ReadFile(filepath.Join(dataDir, "secrets.key")) // the key that seals every secret in state.db
	if err != nil || len(strings.Fields(string(key))) < 2 {
		t.Fatalf("secrets.key: %v", err)
	}
	secret := strings.Fields(string(key))[1]
	written := filepath.Join(dataDir, "probe.csv")
	for _, q := range []string{
		"select * from read_text('/etc/passwd')",
		"select * from glob('/root/*')",
		"select * from read_csv('" + filepath.Join(dataDir, "secrets.key") + "', header=false)",
		"select * from read_blob('" + filepath.Join(dataDir, "state.db") + "')",
		"select * from read_csv('" + filepath.Join(dataDir, "api-token") + "', header=false)",
		"EXPLAIN ANALYZE COPY (SELECT 1) TO '" + written + "'",
		"SELECT 1; COPY (SELECT 1) TO '" + written + "'",
		"INSTALL httpfs",
		"SET enable_external_access = true",
		"ATTACH '" + filepath.Join(dataDir, "state.db") + "' AS st",
		"SELECT * FROM query_table('_fogo_link_checkpoints')",
	} {
		r := f.do(http.MethodPost, queryURL, map[string]any{"query": q})
		if r.Status != 400 || r.errCode() != "InvalidParameterValue" || !strings.Contains(string(r.Raw), "refused") {
			t.Errorf("%s: %d %s", q, r.Status, r.Raw)
		}
		if strings.Contains(string(r.Raw), "root:") || strings.Contains(string(r.Raw), secret) ||
			strings.Contains(string(r.Raw), f.tok) {
			t.Errorf("%s: the answer shows what it read: %s", q, r.Raw)
		}
	}
	if _, err := os.Stat(written); !os.IsNotExist(err) {
		t.Errorf("a refused query wrote %s", written)
	}
	r := f.do(http.MethodPost, queryURL, map[string]any{"query": "SELECT name, value FROM duckdb_settings() WHERE name IN ('enable_external_access', 'lock_configuration') ORDER BY name"})
	if got := fmt.Sprint(r.Body["rows"]); r.Status != 200 || got != "[[enable_external_access false] [lock_configuration true]]" {
		t.Errorf("settings: %d %s", r.Status, r.Raw)
	}
	r = f.do(http.MethodPost, queryURL, map[string]any{"query": `SELECT id, sum(id) OVER (ORDER BY id) AS running, count(*) OVER () AS n
		FROM dbo.ledger WHERE id <= 3 ORDER BY id`})
	if got := fmt.Sprint(r.Body["rows"]); r.Status != 200 || got != "[[1 1 3] [2 3 3] [3 6 3]]" {
		t.Errorf("window query: %d %s", r.Status, r.Raw)
	}
	r = f.do(http.MethodPost, queryURL, map[string]any{"query": "SELECT * FROM dbo.ledger", "maxRows": 10, "timeoutSeconds": 5})
	if r.Status != 200 || r.Body["rowCount"] != float64(10) || r.Body["truncated"] != true || r.Body["maxRows"] != float64(10) ||
		r.Body["timeoutSeconds"] != float64(5) {
		t.Errorf("row limit: %d %s", r.Status, r.Raw)
	}
	r = f.do(http.MethodPost, queryURL, map[string]any{"query": "SELECT count(*) FROM dbo.ledger"})
	if r.Status != 200 || r.Body["truncated"] != false || r.Body["maxRows"] != float64(1000) || r.Body["timeoutSeconds"] != float64(30) {
		t.Errorf("default limits: %d %s", r.Status, r.Raw)
	}
	for _, bad := range []map[string]any{{"query": "SELECT 1", "maxRows": 0}, {"query": "SELECT 1", "maxRows": 100001},
		{"query": "SELECT 1", "timeoutSeconds": 3600}} {
		if r := f.do(http.MethodPost, queryURL, bad); r.Status != 400 || r.errCode() != "InvalidParameterValue" {
			t.Errorf("%v: %d %s", bad, r.Status, r.Raw)
		}
	}
}
