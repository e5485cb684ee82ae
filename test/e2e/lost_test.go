package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/fogo-db/fogo/internal/app"
	"github.com/fogo-db/fogo/internal/controlplane/model"
	"github.com/fogo-db/fogo/internal/postgres/lostxact"
)

// ackLedger is a writer through the read-write listener that remembers every commit the server acknowledged, by
// the id it returned. It stops between statements, never during one: a commit cancelled on its way could have
// committed without its acknowledgment, and the ledger would not know.
type ackLedger struct {
	mu    sync.Mutex
	acked map[int64]bool
}

func (l *ackLedger) run(stop <-chan struct{}, rw, db string) {
	stopped := func() bool {
		select {
		case <-stop:
			return true
		default:
			return false
		}
	}
	for !stopped() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		conn, err := dial(ctx, rw, db)
		cancel()
		if err != nil {
			time.Sleep(20 * time.Millisecond)
			continue
		}
		for !stopped() {
			var id int64
			if err := conn.QueryRow(context.Background(), "INSERT INTO ledger(note) VALUES ('w') RETURNING id").Scan(&id); err != nil {
				break
			}
			l.mu.Lock()
			l.acked[id] = true
			l.mu.Unlock()
		}
		conn.Close(context.Background())
	}
}

// cutStreaming stops server's standby of db from receiving WAL (its primary_conninfo emptied at runtime; fogo
// writes its own configuration again at the next start) and waits until its WAL receiver is gone.
func (f *fogo) cutStreaming(t *testing.T, server, db string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := f.app.Cluster.Handle(f.instanceOf(t, server, db)).Connect(ctx, "postgres")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close(context.Background())
	for _, sql := range []string{"ALTER SYSTEM SET primary_conninfo = ''", "SELECT pg_reload_conf()"} {
		if _, err := c.Exec(ctx, sql); err != nil {
			t.Fatalf("%s: %v", sql, err)
		}
	}
	for {
		var receivers int
		if err := c.QueryRow(ctx, "SELECT count(*) FROM pg_stat_wal_receiver").Scan(&receivers); err != nil {
			t.Fatal(err)
		}
		if receivers == 0 {
			return
		}
		if ctx.Err() != nil {
			t.Fatal("the WAL receiver did not stop")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// lostReport reads the lost-transaction report of operation from server's view of group, once it is no longer
// Pending (the old primary is read before it rejoins).
func (f *fogo) lostReport(t *testing.T, server, group, operation string) map[string]any {
	t.Helper()
	deadline := time.Now().Add(90 * time.Second)
	for {
		r := f.do(http.MethodGet, fgPath(server, group)+"/lostTransactions/"+operation, nil)
		if r.Status != 200 {
			t.Fatalf("lost-transaction report: %d %s", r.Status, r.Raw)
		}
		dbs, _ := r.Body["properties"].(map[string]any)["databases"].([]any)
		pending := len(dbs) == 0
		for _, d := range dbs {
			if d.(map[string]any)["status"] == "Pending" {
				pending = true
			}
		}
		if !pending {
			return r.Body
		}
		if time.Now().After(deadline) {
			t.Fatalf("the lost-transaction report is still pending: %s", r.Raw)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// TestForcedFailoverReportsExactlyTheLostTransactions is issue 13's invariant. A writer commits through the
// read-write listener and keeps a ledger of what was acknowledged; a link streams the ledger into DuckDB. The
// geo-secondary stops receiving WAL; the primary goes on acknowledging inserts, an update and a delete, then is
// killed (kill -9) with a transaction in flight. After a forced failover, the set of acknowledged changes the new
// primary lacks equals the report's: nothing missing from it, nothing extra. The report says none of them reached
// the link target, and the target indeed has none of them. Replaying the report's SQL on the new primary brings
// every acknowledged commit back. The CLI prints it as a table, as JSON and as SQL, and the metric counts it.
func TestForcedFailoverReportsExactlyTheLostTransactions(t *testing.T) {
	f, rw, store := groupLink(t, "lost", 100, nil)
	convergeLink(t, f, rw, store)

	stop := make(chan struct{})
	l := &ackLedger{acked: map[int64]bool{}}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { defer wg.Done(); l.run(stop, rw, "shop") }()
	time.Sleep(400 * time.Millisecond)
	f.cutStreaming(t, "lost-west", "shop")
	time.Sleep(600 * time.Millisecond)
	close(stop)
	wg.Wait()
	// An update and a delete the geo-secondary never receives either (seed rows 1 and 2).
	mustExec(t, f, "lost-east", "shop", "UPDATE ledger SET note = 'lost update' WHERE id = 1")
	mustExec(t, f, "lost-east", "shop", "DELETE FROM ledger WHERE id = 2")
	inFlight, err := f.app.Cluster.Handle(f.instanceOf(t, "lost-east", "shop")).Connect(context.Background(), "shop")
	if err != nil {
		t.Fatal(err)
	}
	defer inFlight.Close(context.Background())
	if _, err := inFlight.Exec(context.Background(), "BEGIN; INSERT INTO ledger(id, note) VALUES (-1, 'in flight')"); err != nil {
		t.Fatal(err)
	}
	f.killInstance(t, "lost-east", "shop")

	r := f.do(http.MethodPost, fgPath("lost-west", "lost-fg")+"/forceFailoverAllowDataLoss", nil)
	st := f.wait(r)
	if st["status"] != "Succeeded" {
		t.Fatalf("forced failover: %v %v", st["status"], st["error"])
	}
	if w := fmt.Sprint(st["properties"].(map[string]any)["warnings"]); !strings.Contains(w, "never reached the new primary") {
		t.Fatalf("the operation status does not say what was lost: %s", w)
	}
	operation := f.lastFailoverOp(t, "lost-fg")
	report := f.lostReport(t, "lost-west", "lost-fg", operation)
	props := report["properties"].(map[string]any)
	db := props["databases"].([]any)[0].(map[string]any)
	if db["status"] != "Complete" || db["linkTargets"] == nil || !strings.Contains(db["linkTargets"].(string), "None of these") {
		t.Fatalf("report: %v", db)
	}

	// What the report lists, as "op id".
	raw, _ := json.Marshal(db["transactions"])
	var txns []lostxact.Txn
	if err := json.Unmarshal(raw, &txns); err != nil {
		t.Fatal(err)
	}
	reported := map[string]bool{}
	for _, txn := range txns {
		for _, c := range txn.Changes {
			if c.Table != "ledger" {
				t.Fatalf("a change of %s.%s in the report: fogo's own writes are not the user's", c.Schema, c.Table)
			}
			row := c.New
			if c.Op == "delete" {
				row = c.Old
			}
			reported[c.Op+" "+colValue(row, "id")] = true
		}
	}
	// What the new primary lacks of what was acknowledged.
	conn, err := dial(context.Background(), rw, "shop")
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	onNew := map[int64]string{}
	rows, err := conn.Query(context.Background(), "SELECT id, note FROM ledger")
	if err != nil {
		t.Fatal(err)
	}
	for rows.Next() {
		var id int64
		var note string
		if err := rows.Scan(&id, &note); err != nil {
			t.Fatal(err)
		}
		onNew[id] = note
	}
	if rows.Err() != nil {
		t.Fatal(rows.Err())
	}
	missing := map[string]bool{}
	for id := range l.acked {
		if _, ok := onNew[id]; !ok {
			missing["insert "+strconv.FormatInt(id, 10)] = true
		}
	}
	if onNew[1] != "lost update" {
		missing["update 1"] = true
	}
	if _, ok := onNew[2]; ok {
		missing["delete 2"] = true
	}
	if _, ok := onNew[-1]; ok {
		t.Fatal("the transaction in flight at the kill is on the new primary")
	}
	var notReported, notLost []string
	for k := range missing {
		if !reported[k] {
			notReported = append(notReported, k)
		}
	}
	for k := range reported {
		if !missing[k] {
			notLost = append(notLost, k)
		}
	}
	sort.Strings(notReported)
	sort.Strings(notLost)
	if len(notReported) > 0 || len(notLost) > 0 || len(missing) < 3 {
		t.Fatalf("acknowledged and lost but not reported: %v; reported but not lost: %v (%d lost, %d acknowledged inserts)",
			notReported, notLost, len(missing), len(l.acked))
	}
	if int(props["transactionCount"].(float64)) != len(txns) {
		t.Fatalf("transactionCount %v, %d listed", props["transactionCount"], len(txns))
	}
	t.Logf("%d acknowledged inserts, %d changes lost and reported exactly, in %d transactions", len(l.acked), len(missing), len(txns))

	// The link target has none of them, and equals the new primary.
	convergeLink(t, f, rw, store)
	for k := range missing {
		op, id, _ := strings.Cut(k, " ")
		if op != "insert" {
			continue
		}
		var n int
		if err := store.DB().QueryRow("SELECT count(*) FROM public.ledger WHERE id = " + id).Scan(&n); err != nil || n != 0 {
			t.Fatalf("the link target has lost row %s (%d, %v)", id, n, err)
		}
	}

	// The CLI: the list, the table, JSON, and SQL that replays every lost change on the new primary.
	list := f.mustCLI(t, "failover-group", "lost-transactions", "-s", "lost-west", "-n", "lost-fg")
	if !strings.Contains(list, operation) || !strings.Contains(list, "Complete") || !strings.Contains(list, strconv.Itoa(len(txns))) {
		t.Fatalf("lost-transactions list:\n%s", list)
	}
	table := f.mustCLI(t, "failover-group", "lost-transactions", "-s", "lost-east", "-n", "lost-fg", "--operation", operation)
	if !strings.Contains(table, "lost update") || !strings.Contains(table, "None of these transactions") {
		t.Fatalf("lost-transactions table:\n%s", table)
	}
	var fromCLI map[string]any
	if err := json.Unmarshal([]byte(f.mustCLI(t, "failover-group", "lost-transactions", "-s", "lost-west", "-n", "lost-fg",
		"--operation", operation, "-o", "json")), &fromCLI); err != nil || fromCLI["name"] != operation {
		t.Fatalf("lost-transactions -o json: %v %v", err, fromCLI["name"])
	}
	script := f.mustCLI(t, "failover-group", "lost-transactions", "-s", "lost-west", "-n", "lost-fg", "--operation", operation, "--sql")
	if _, err := conn.PgConn().Exec(context.Background(), script).ReadAll(); err != nil {
		t.Fatalf("replay the report's SQL: %v\n%.2000s", err, script)
	}
	acked := make([]int64, 0, len(l.acked))
	for id := range l.acked {
		acked = append(acked, id)
	}
	checkAllPresentAt(t, rw, "shop", acked)
	var note string
	var deleted int
	if err := conn.QueryRow(context.Background(), "SELECT (SELECT note FROM ledger WHERE id = 1), (SELECT count(*) FROM ledger WHERE id = 2)").Scan(&note, &deleted); err != nil || note != "lost update" || deleted != 0 {
		t.Fatalf("after the replay: row 1 %q, row 2 present %d (%v)", note, deleted, err)
	}

	metrics := f.do(http.MethodGet, "/metrics", nil)
	want := fmt.Sprintf(`fogo_lost_transactions_total{database="shop",group="lost-fg"} %d`, len(txns))
	if !strings.Contains(string(metrics.Raw), want) {
		t.Fatalf("no %s in the metrics", want)
	}
	if rec := f.instanceOf(t, "lost-east", "shop"); rec.LostReport != "" || rec.Role != model.RoleStandby {
		t.Fatalf("old primary after its report: %+v", rec)
	}
}

func colValue(cols []lostxact.Column, name string) string {
	for _, c := range cols {
		if c.Name == name && c.Value != nil {
			return *c.Value
		}
	}
	return ""
}

// lastFailoverOp is the operation ID of the group's last failover.
func (f *fogo) lastFailoverOp(t *testing.T, group string) string {
	t.Helper()
	groups, _, err := f.app.Service.GroupsWithInstances()
	if err != nil {
		t.Fatal(err)
	}
	for _, g := range groups {
		if g.Name == group && g.LastFailoverOp != "" {
			return g.LastFailoverOp
		}
	}
	t.Fatalf("group %s has no last failover", group)
	return ""
}

// expectNothingLost checks the lost-transaction report of the group's last failover (operation, or with "" the
// group's last failover as the store has it): complete, and saying that nothing was lost.
func (f *fogo) expectNothingLost(t *testing.T, server, group, operation string) {
	t.Helper()
	if operation == "" {
		operation = f.lastFailoverOp(t, group)
	}
	report := f.lostReport(t, server, group, operation)
	for _, d := range report["properties"].(map[string]any)["databases"].([]any) {
		db := d.(map[string]any)
		if db["status"] != "Complete" || db["transactionCount"].(float64) != 0 || !strings.HasPrefix(db["message"].(string), "Nothing was lost") {
			t.Fatalf("lost-transaction report of %v: %v %v %q", db["database"], db["status"], db["transactionCount"], db["message"])
		}
	}
}

// operationID is the ID of the operation a 202 answer started (the last segment of its Azure-AsyncOperation URL).
func operationID(r response) string {
	u := r.Header.Get("Azure-AsyncOperation")
	u, _, _ = strings.Cut(u, "?")
	return u[strings.LastIndexByte(u, '/')+1:]
}

// TestLostReportThatCannotBeProducedStillRewinds: the old primary's lost-transaction slot is gone when it is read
// (removed while the forced failover waits before its rejoin step). The report says plainly that it could not be
// produced, so does the operation, and the old primary is rewound and streams again all the same.
func TestLostReportThatCannotBeProducedStillRewinds(t *testing.T) {
	f := startFogo(t)
	f.groupWithLedger("nrp-east", "nrp-west", "nrp-fg", "nrp")
	eastRec := f.instanceOf(t, "nrp-east", "nrp")
	reached, release := make(chan struct{}), make(chan struct{})
	var once sync.Once
	f.app.Ops.PauseBeforeStep = func(op *model.Operation, step string) {
		if op.Kind == model.OpForced && step == "rejoin" {
			once.Do(func() { close(reached); <-release })
		}
	}
	// The slot exists once the observer has seen the geo-secondary stream.
	slot := filepath.Join(eastRec.Dir, "pg_replslot", lostxact.Slot)
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		if _, err := os.Stat(slot); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the primary has no lost-transaction slot")
		}
	}
	r := f.do(http.MethodPost, fgPath("nrp-west", "nrp-fg")+"/forceFailoverAllowDataLoss", nil)
	if r.Status != 202 {
		t.Fatalf("forced failover: %d %s", r.Status, r.Raw)
	}
	select {
	case <-reached:
	case <-time.After(60 * time.Second):
		t.Fatal("the forced failover never reached its rejoin step")
	}
	if _, running := f.app.Cluster.Handle(eastRec).Running(); running {
		t.Fatal("the fenced old primary runs")
	}
	if err := os.RemoveAll(slot); err != nil {
		t.Fatal(err)
	}
	close(release)
	st := f.wait(r)
	if st["status"] != "Succeeded" {
		t.Fatalf("forced failover: %v %v", st["status"], st["error"])
	}
	if w := fmt.Sprint(st["properties"].(map[string]any)["warnings"]); !strings.Contains(w, "could not be produced") {
		t.Fatalf("the operation does not say the report could not be produced: %s", w)
	}
	report := f.lostReport(t, "nrp-west", "nrp-fg", operationID(r))
	db := report["properties"].(map[string]any)["databases"].([]any)[0].(map[string]any)
	if db["status"] != "Failed" || !strings.Contains(db["message"].(string), "no lost-transaction slot") ||
		!strings.Contains(db["message"].(string), "rewound anyway") {
		t.Fatalf("report: %v %q", db["status"], db["message"])
	}
	f.waitGroupState("nrp-west", "nrp-fg", "CATCH_UP")
	mustExec(t, f, "nrp-west", "nrp", "INSERT INTO ledger(note) VALUES ('after')")
	f.waitRowOn(t, "nrp-east", "nrp", "after")

	// A planned failover has no report; neither has an ID that is not an operation's; the resource is read-only.
	planned := f.do(http.MethodPost, fgPath("nrp-east", "nrp-fg")+"/failover", nil)
	if st := f.wait(planned); st["status"] != "Succeeded" {
		t.Fatalf("planned failover: %v %v", st["status"], st["error"])
	}
	base := fgPath("nrp-east", "nrp-fg") + "/lostTransactions"
	for _, c := range []struct {
		method, path, code string
		status             int
	}{
		{http.MethodGet, base + "/" + operationID(planned), "ResourceNotFound", 404},
		{http.MethodGet, base + "/..%2F..%2Fsecrets", "ResourceNotFound", 404},
		{http.MethodGet, fgPath("nrp-east", "nope-fg") + "/lostTransactions", "ResourceNotFound", 404},
		{http.MethodPost, base, "UnsupportedHttpMethod", 405},
		{http.MethodDelete, base + "/" + operationID(r), "UnsupportedHttpMethod", 405},
	} {
		if got := f.do(c.method, c.path, nil); got.Status != c.status || got.errCode() != c.code {
			t.Errorf("%s %s: %d %s, want %d %s", c.method, c.path, got.Status, got.Raw, c.status, c.code)
		}
	}
	if l := f.do(http.MethodGet, base, nil); l.Status != 200 || len(l.Body["value"].([]any)) != 1 {
		t.Fatalf("the group's reports: %d %s, want the forced failover's alone", l.Status, l.Raw)
	}
}

// TestLostSlotIsMadeWithTheSeed: the lost-transaction slot is made on the primary when its geo-secondary is seeded,
// not only by the observer's upkeep. Here the observer never runs after the start (its interval is an hour), so
// nothing else makes it: a forced failover right after the group's creation still gets a complete report that
// lists exactly the one transaction the geo-secondary never received.
func TestLostSlotIsMadeWithTheSeed(t *testing.T) {
	f := startFogo(t, func(o *app.Options) { o.ReconcileInterval = time.Hour })
	f.createServer("lss-east", "eastus")
	f.createServer("lss-west", "westus")
	f.createDB("lss-east", "lss", "eastus")
	mustExec(t, f, "lss-east", "lss", "CREATE TABLE ledger(id bigint PRIMARY KEY, note text)")
	f.mustSucceed(f.createGroup("lss-east", "lss-west", "lss-fg", "lss"), 201)

	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	primary, err := f.app.Cluster.Handle(f.instanceOf(t, "lss-east", "lss")).Connect(ctx, "lss")
	if err != nil {
		t.Fatal(err)
	}
	defer primary.Close(context.Background())
	var slots int
	if err := primary.QueryRow(ctx, "SELECT count(*) FROM pg_replication_slots WHERE slot_name = $1", lostxact.Slot).Scan(&slots); err != nil || slots != 1 {
		t.Fatalf("the lost-transaction slot after the seed: %d (%v)", slots, err)
	}

	// One row the geo-secondary replays, then one it never receives.
	mustExec(t, f, "lss-east", "lss", "INSERT INTO ledger VALUES (1, 'kept')")
	standby, err := f.app.Cluster.Handle(f.instanceOf(t, "lss-west", "lss")).Connect(ctx, "lss")
	if err != nil {
		t.Fatal(err)
	}
	defer standby.Close(context.Background())
	for {
		var n int
		if err := standby.QueryRow(ctx, "SELECT count(*) FROM ledger WHERE id = 1").Scan(&n); err == nil && n == 1 {
			break
		}
		if ctx.Err() != nil {
			t.Fatal("the geo-secondary never replayed the first row")
		}
		time.Sleep(50 * time.Millisecond)
	}
	standby.Close(context.Background())
	f.cutStreaming(t, "lss-west", "lss")
	mustExec(t, f, "lss-east", "lss", "INSERT INTO ledger VALUES (2, 'lost')")
	f.killInstance(t, "lss-east", "lss")

	r := f.do(http.MethodPost, fgPath("lss-west", "lss-fg")+"/forceFailoverAllowDataLoss", nil)
	if st := f.wait(r); st["status"] != "Succeeded" {
		t.Fatalf("forced failover: %v %v", st["status"], st["error"])
	}
	report := f.lostReport(t, "lss-west", "lss-fg", operationID(r))
	db := report["properties"].(map[string]any)["databases"].([]any)[0].(map[string]any)
	raw, _ := json.Marshal(db["transactions"])
	var txns []lostxact.Txn
	if err := json.Unmarshal(raw, &txns); err != nil {
		t.Fatal(err)
	}
	if db["status"] != "Complete" || len(txns) != 1 || len(txns[0].Changes) != 1 ||
		txns[0].Changes[0].Op != "insert" || colValue(txns[0].Changes[0].New, "id") != "2" {
		t.Fatalf("report: %v %v %s", db["status"], db["message"], raw)
	}
}
