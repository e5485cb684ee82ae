package e2e

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// TestLinkWithAdminLogin: a link given nothing but the server admin's own connection string (no resourceId), as
// on a managed PostgreSQL service, runs: through the server's gateway endpoint and through the failover group's
// read-write listener it creates its publication (the admin owns the table), its slot (fogo gave the admin
// REPLICATION), snapshots and streams a later change.
func TestLinkWithAdminLogin(t *testing.T) {
	f := startFogo(t)
	f.groupWithLedger("adm-east", "adm-west", "adm-fg", "shop")
	mustExec(t, f, "adm-east", "shop", "INSERT INTO ledger(note) SELECT 'seed' FROM generate_series(1, 40)")

	// A server created by an older fogo: its admin login lacks REPLICATION and its instance was never checked.
	// The reconciler grants it.
	f.execOnInstance(t, "adm-east", "shop", "ALTER ROLE "+login+" NOREPLICATION")
	rec := f.instanceOf(t, "adm-east", "shop")
	rec.AdminRights = 0
	if err := f.app.Cluster.SaveInstance(rec); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(20 * time.Second)
	for f.instanceOf(t, "adm-east", "shop").AdminRights == 0 {
		if time.Now().After(deadline) {
			t.Fatal("the reconciler never checked the admin login's rights")
		}
		time.Sleep(100 * time.Millisecond)
	}
	ws := "/workspaces/admin"
	endpoints := map[string]string{"viaserver": f.endpointOf("adm-east"), "vialistener": f.listenerOf("adm-east", "adm-fg", "readWriteEndpoint")}
	for name, ep := range endpoints {
		host, port, _ := strings.Cut(ep, ":")
		for _, s := range []struct {
			method, path string
			body         any
		}{
			{http.MethodPut, ws + "/linkedservices/" + name + "-src" + lsVer, map[string]any{"properties": map[string]any{"type": "PostgreSql",
				"typeProperties": map[string]any{"connectionString": fmt.Sprintf("host=%s port=%s dbname=shop user=%s password=%s", host, port, login, password)}}}},
			{http.MethodPut, ws + "/linkedservices/" + name + "-duck" + lsVer, map[string]any{"properties": map[string]any{"type": "DuckDb",
				"typeProperties": map[string]any{"path": name + ".duckdb"}}}},
			{http.MethodPut, ws + "/linkconnections/" + name + lcVer, map[string]any{"properties": map[string]any{
				"sourceDatabase": map[string]any{"linkedService": map[string]any{"referenceName": name + "-src"}},
				"targetDatabase": map[string]any{"linkedService": map[string]any{"referenceName": name + "-duck"}}}}},
			{http.MethodPost, ws + "/linkconnections/" + name + "/edittables" + lcVer, map[string]any{"linkTables": []any{map[string]any{"id": "t1",
				"source": map[string]any{"schemaName": "public", "tableName": "ledger"}, "target": map[string]any{"schemaName": "public", "tableName": "ledger"}}}}},
			{http.MethodPost, ws + "/linkconnections/" + name + "/start" + lcVer, nil},
		} {
			if r := f.do(s.method, s.path, s.body); r.Status != 200 {
				t.Fatalf("%s %s: %d %s", s.method, s.path, r.Status, r.Raw)
			}
		}
	}
	for name, ep := range endpoints {
		waitLinkQuery(t, f, ws, name, "SELECT count(*) FROM public.ledger", "40")
		adminReplicationLimits(t, ep)
	}
	mustExec(t, f, "adm-east", "shop", "UPDATE ledger SET note = 'later' WHERE id <= 5; INSERT INTO ledger(note) VALUES ('later')")
	for name := range endpoints {
		waitLinkQuery(t, f, ws, name, "SELECT count(*) FILTER (WHERE note = 'later') FROM public.ledger", "6")
		st := f.do(http.MethodGet, ws+"/linkconnections/"+name+"/detailedstatus"+lcVer, nil)
		if st.Body["status"] != "Running" || st.Body["error"] != nil {
			t.Fatalf("%s: detailedstatus: %s", name, st.Raw)
		}
		ts := f.do(http.MethodPost, ws+"/linkconnections/"+name+"/querytablestatus"+lcVer, nil)
		if v, _ := ts.Body["value"].([]any); len(v) != 1 || v[0].(map[string]any)["status"] != "Replicating" {
			t.Fatalf("%s: querytablestatus: %s", name, ts.Raw)
		}
	}
}

// adminReplicationLimits: through a server endpoint the admin login opens logical replication sessions only:
// a physical replication connection, BASE_BACKUP, a physical START_REPLICATION or physical slot in a logical
// session are refused (the walsender would serve them: REPLICATION is all it checks), as is reading files.
func adminReplicationLimits(t *testing.T, endpoint string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	host, port, _ := strings.Cut(endpoint, ":")
	dsn := fmt.Sprintf("host=%s port=%s dbname=shop user=%s password=%s sslmode=disable", host, port, login, password)
	if pc, err := pgconn.Connect(ctx, dsn+" replication=true"); err == nil {
		pc.Close(ctx)
		t.Fatal("a physical replication connection as the admin login was accepted")
	}
	for _, cmd := range []string{"BASE_BACKUP", "START_REPLICATION 0/0", "CREATE_REPLICATION_SLOT adminphys PHYSICAL"} {
		pc, err := pgconn.Connect(ctx, dsn+" replication=database")
		if err != nil {
			t.Fatalf("a logical replication connection as the admin login: %v", err)
		}
		if _, err := pc.Exec(ctx, "IDENTIFY_SYSTEM").ReadAll(); err != nil {
			t.Fatalf("IDENTIFY_SYSTEM: %v", err)
		}
		if _, err := pc.Exec(ctx, cmd).ReadAll(); err == nil || !strings.Contains(err.Error(), "not allowed") {
			t.Fatalf("%s in a logical replication session: %v", cmd, err)
		}
		pc.Close(ctx)
	}
	c, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close(ctx)
	var super bool
	if err := c.QueryRow(ctx, "SELECT rolsuper FROM pg_roles WHERE rolname = current_user").Scan(&super); err != nil || super {
		t.Fatalf("the admin login is superuser (%v, %v)", super, err)
	}
	if _, err := c.Exec(ctx, "SELECT pg_read_file('postgresql.conf')"); err == nil {
		t.Fatal("the admin login can read the server's files")
	}
	var slots int
	if err := c.QueryRow(ctx, "SELECT count(*) FROM pg_replication_slots WHERE slot_type = 'physical' AND slot_name = 'adminphys'").Scan(&slots); err != nil || slots != 0 {
		t.Fatalf("a physical slot was created: %d %v", slots, err)
	}
}

// waitLinkQuery polls the link's query extension until the single value of query is want.
func waitLinkQuery(t *testing.T, f *fogo, ws, name, query, want string) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	var last response
	for time.Now().Before(deadline) {
		last = f.do(http.MethodPost, ws+"/linkconnections/"+name+"/query"+lcVer, map[string]any{"query": query})
		if rows, _ := last.Body["rows"].([]any); last.Status == 200 && len(rows) == 1 && fmt.Sprint(rows[0].([]any)[0]) == want {
			return
		}
		time.Sleep(200 * time.Millisecond)
	}
	st := f.do(http.MethodGet, ws+"/linkconnections/"+name+"/detailedstatus"+lcVer, nil)
	t.Fatalf("link %s: %q never gave %s: %d %s (status %s)", name, query, want, last.Status, last.Raw, st.Raw)
}

// TestLinkStatusAgrees: a link whose source cannot be reached reports Failed, and so do its tables, with the
// link's error: no table claims to be starting.
func TestLinkStatusAgrees(t *testing.T) {
	f := startFogo(t)
	ws := "/workspaces/agree"
	for _, s := range []struct {
		method, path string
		body         any
	}{
		{http.MethodPut, ws + "/linkedservices/src" + lsVer, map[string]any{"properties": map[string]any{"type": "PostgreSql",
			"typeProperties": map[string]any{"connectionString": "host=127.0.0.1 port=1 dbname=shop user=u password=p connect_timeout=2"}}}},
		{http.MethodPut, ws + "/linkedservices/duck" + lsVer, map[string]any{"properties": map[string]any{"type": "DuckDb",
			"typeProperties": map[string]any{"path": "agree.duckdb"}}}},
		{http.MethodPut, ws + "/linkconnections/lk" + lcVer, map[string]any{"properties": map[string]any{
			"sourceDatabase": map[string]any{"linkedService": map[string]any{"referenceName": "src"}},
			"targetDatabase": map[string]any{"linkedService": map[string]any{"referenceName": "duck"}}}}},
		{http.MethodPost, ws + "/linkconnections/lk/edittables" + lcVer, map[string]any{"linkTables": []any{
			map[string]any{"id": "a", "source": map[string]any{"tableName": "a"}}, map[string]any{"id": "b", "source": map[string]any{"tableName": "b"}}}}},
		{http.MethodPost, ws + "/linkconnections/lk/start" + lcVer, nil},
	} {
		if r := f.do(s.method, s.path, s.body); r.Status != 200 {
			t.Fatalf("%s %s: %d %s", s.method, s.path, r.Status, r.Raw)
		}
	}
	deadline := time.Now().Add(20 * time.Second)
	seenFailed := false
	for time.Now().Before(deadline) {
		st := f.do(http.MethodGet, ws+"/linkconnections/lk/detailedstatus"+lcVer, nil)
		ts := f.do(http.MethodPost, ws+"/linkconnections/lk/querytablestatus"+lcVer, nil)
		st2 := f.do(http.MethodGet, ws+"/linkconnections/lk/detailedstatus"+lcVer, nil)
		if st.Body["status"] != st2.Body["status"] {
			continue // it changed in between: compare the next sample
		}
		for _, v := range ts.Body["value"].([]any) {
			row := v.(map[string]any)
			switch st.Body["status"] {
			case "Failed":
				msg := st.Body["error"].(map[string]any)["message"]
				if row["status"] != "Failed" || row["errorMessage"] != msg || row["errorCode"] != "LinkFailed" {
					t.Fatalf("the link is Failed (%v) but table %v says %s", msg, row["id"], ts.Raw)
				}
				if st.Body["isPartiallyFailed"] != false {
					t.Fatalf("a failed link is not partially failed: %s", st.Raw)
				}
				seenFailed = true
			case "Starting":
				if row["status"] == "Replicating" || row["status"] == "Snapshotting" {
					t.Fatalf("a starting link's table says %s", ts.Raw)
				}
			default:
				t.Fatalf("a link with an unreachable source: %s", st.Raw)
			}
		}
		if seenFailed {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatal("the link with an unreachable source never reported Failed")
}
