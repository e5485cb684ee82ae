package e2e

import (
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/fogo-db/fogo/internal/testutil/pgtest"
)

// TestLinkSurvivesFogoKill: a running link connection, fogo killed with kill -9 mid-stream and started again:
// the link resumes by itself from its checkpoint and the target ends equal to the source, no duplicates.
func TestLinkSurvivesFogoKill(t *testing.T) {
	pgtest.Bin(t)
	bin := buildFogo(t)
	dir := pgtest.TempDir(t)
	low := portBase()
	listen := fmt.Sprintf("127.0.0.1:%d", low+99)
	const token = "link-kill-token"
	p1 := startProcess(t, bin, dir, listen, low, token)
	f := &fogo{t: t, url: "http://" + listen, tok: token}
	f.groupWithLedger("lkk-east", "lkk-west", "lkk-fg", "shop")
	rw := f.listenerOf("lkk-east", "lkk-fg", "readWriteEndpoint")
	host, port, _ := strings.Cut(rw, ":")
	ws := "/workspaces/w1"
	for path, body := range map[string]any{
		ws + "/linkedservices/src" + lsVer: map[string]any{"properties": map[string]any{"type": "PostgreSql", "typeProperties": map[string]any{
			"connectionString": fmt.Sprintf("host=%s port=%s dbname=shop user=%s password=%s", host, port, login, password)}}},
		ws + "/linkedservices/duck" + lsVer: map[string]any{"properties": map[string]any{"type": "DuckDb", "typeProperties": map[string]any{"path": "w1.duckdb"}}},
	} {
		if r := f.do(http.MethodPut, path, body); r.Status != 200 {
			t.Fatalf("PUT %s: %d %s", path, r.Status, r.Raw)
		}
	}
	steps := []struct {
		method, path string
		body         any
	}{
		{http.MethodPut, ws + "/linkconnections/lk" + lcVer, map[string]any{"properties": map[string]any{
			"sourceDatabase": map[string]any{"linkedService": map[string]any{"referenceName": "src"},
				"typeProperties": map[string]any{"resourceId": fgPath("lkk-east", "lkk-fg")}},
			"targetDatabase": map[string]any{"linkedService": map[string]any{"referenceName": "duck"}}}}},
		{http.MethodPost, ws + "/linkconnections/lk/edittables" + lcVer, map[string]any{"linkTables": []any{map[string]any{
			"source": map[string]any{"schemaName": "public", "tableName": "ledger"}, "target": map[string]any{"schemaName": "public", "tableName": "ledger"}}}}},
		{http.MethodPost, ws + "/linkconnections/lk/start" + lcVer, nil},
	}
	for _, s := range steps {
		if r := f.do(s.method, s.path, s.body); r.Status != 200 {
			t.Fatalf("%s %s: %d %s", s.method, s.path, r.Status, r.Raw)
		}
	}
	insertRowsAt(t, rw, "shop", 300)
	waitLinkCount(t, f, ws, 300)
	insertRowsAt(t, rw, "shop", 200) // some of these are in flight when fogo dies
	p1.kill(t)

	startProcess(t, bin, dir, listen, low, token)
	insertRowsAt(t, rw, "shop", 100)
	waitLinkCount(t, f, ws, 600)
	q := f.do(http.MethodPost, ws+"/linkconnections/lk/query"+lcVer, map[string]any{"query": "SELECT count(DISTINCT id), min(id), max(id) FROM public.ledger"})
	row := q.Body["rows"].([]any)[0].([]any)
	if fmt.Sprint(row...) != fmt.Sprint(600, 1, 600) {
		t.Fatalf("target after the restart: %v", row)
	}
}

func waitLinkCount(t *testing.T, f *fogo, ws string, want int) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	var last string
	for time.Now().Before(deadline) {
		q := f.do(http.MethodPost, ws+"/linkconnections/lk/query"+lcVer, map[string]any{"query": "SELECT count(*) FROM public.ledger"})
		last = string(q.Raw)
		if q.Status == 200 && fmt.Sprint(q.Body["rows"].([]any)[0].([]any)[0]) == fmt.Sprint(want) {
			return
		}
		time.Sleep(200 * time.Millisecond)
	}
	t.Fatalf("target never had %d rows: %s", want, last)
}
