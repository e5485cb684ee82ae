package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/fogo-db/fogo/internal/controlplane/model"
	"github.com/fogo-db/fogo/internal/controlplane/store"
	"github.com/fogo-db/fogo/internal/secrets"
	"github.com/fogo-db/fogo/internal/testutil/pgtest"
)

// TestSecretsAtRest: a server's admin password (kept as its SCRAM verifier), linked services' connection strings
// and fogo's internal superuser password are not in state.db, fogo's logs, API answers or error messages; the
// secrets open again after a restart (a PostgreSQL link target is reached with the stored password); the key
// rotates through the CLI, online and offline, and the secrets still open; the key file is 0600.
func TestSecretsAtRest(t *testing.T) {
	pgtest.Bin(t)
	bin := buildFogo(t)
	dir := pgtest.TempDir(t)
	low := portBase()
	listen := fmt.Sprintf("127.0.0.1:%d", low+99)
	const token = "secrets-token"
	const adminPw = "Sec-Adm1n-Pw!4821"       // the server admin's, also in the target linked service
	const srcPw = "Src-0nly-S3cret-77"        // a source linked service's, never used to connect
	const brokenPw = "Unterminated-S3cret-19" // in a connection string that does not parse
	var logs []string
	var procs []*process
	serve := func() *process {
		p := startProcessArgs(t, bin, dir, listen, low, token, []string{"--log-level", "debug"})
		procs = append(procs, p)
		return p
	}
	p := serve()
	f := &fogo{t: t, url: "http://" + listen, tok: token}
	var answers []string
	do := func(method, path string, body any, want int) response {
		t.Helper()
		r := f.do(method, path, body)
		answers = append(answers, string(r.Raw))
		if r.Status != want {
			t.Fatalf("%s %s: %d, want %d: %s", method, path, r.Status, want, r.Raw)
		}
		return r
	}

	f.mustSucceed(do(http.MethodPut, serverPath("sec-srv"), map[string]any{"location": "eastus",
		"properties": map[string]any{"administratorLogin": login, "administratorLoginPassword": adminPw}}, 201), 201)
	f.createDB("sec-srv", "mart", "eastus")
	host, port, _ := strings.Cut(f.endpointOf("sec-srv"), ":")
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	conn, err := pgx.Connect(ctx, fmt.Sprintf("host=%s port=%s dbname=mart user=%s password=%s", host, port, login, adminPw))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := conn.Exec(ctx, "CREATE TABLE facts(id int PRIMARY KEY); INSERT INTO facts SELECT generate_series(1, 3)"); err != nil {
		t.Fatal(err)
	}
	conn.Close(ctx)

	ws := "/workspaces/sec"
	ls := func(cs string) map[string]any {
		return map[string]any{"properties": map[string]any{"type": "PostgreSql", "typeProperties": map[string]any{
			"connectionString": map[string]any{"type": "SecureString", "value": cs}}}}
	}
	do(http.MethodPut, ws+"/linkedservices/src"+lsVer, ls("host=127.0.0.1 port=1 dbname=shop user=reader password="+srcPw), 200)
	do(http.MethodPut, ws+"/linkedservices/tgt"+lsVer, ls(fmt.Sprintf("host=%s port=%s dbname=mart user=%s password=%s", host, port, login, adminPw)), 200)
	do(http.MethodPut, ws+"/linkedservices/down"+lsVer, ls("host=127.0.0.1 port=1 dbname=mart user=appadmin password="+srcPw), 200)
	do(http.MethodPut, ws+"/linkedservices/broken"+lsVer, ls("host=127.0.0.1 password='"+brokenPw), 400)
	do(http.MethodPut, ws+"/linkedservices/broken"+lsVer, ls("host=127.0.0.1 statement_cache_capacity=many password="+brokenPw), 400)
	do(http.MethodGet, ws+"/linkedservices"+lsVer, nil, 200)
	do(http.MethodGet, ws+"/linkedservices/tgt"+lsVer, nil, 200)
	do(http.MethodGet, serverPath("sec-srv"), nil, 200)
	for name, target := range map[string]string{"lk": "tgt", "lk-down": "down"} {
		do(http.MethodPut, ws+"/linkconnections/"+name+lcVer, map[string]any{"properties": map[string]any{
			"sourceDatabase": map[string]any{"linkedService": map[string]any{"referenceName": "src"}},
			"targetDatabase": map[string]any{"linkedService": map[string]any{"referenceName": target}}}}, 200)
	}
	// The query extension opens the PostgreSQL target with the stored connection string (it works only if the
	// secret opens) and runs the query as the link's read-only reader role, which fogo creates on a target it
	// manages with its own superuser: a query that needs no table works, one of a table the link does not
	// replicate is refused.
	queryTarget := func() {
		t.Helper()
		r := do(http.MethodPost, ws+"/linkconnections/lk/query"+lcVer, map[string]any{"query": "SELECT 41 + 1"}, 200)
		if fmt.Sprint(r.Body["rows"]) != "[[42]]" {
			t.Fatalf("query through the target linked service: %s", r.Raw)
		}
		r = do(http.MethodPost, ws+"/linkconnections/lk/query"+lcVer, map[string]any{"query": "SELECT count(*) FROM public.facts"}, 400)
		if !strings.Contains(string(r.Raw), "permission denied for table facts") {
			t.Fatalf("a table the link does not replicate: %s", r.Raw)
		}
	}
	queryTarget()
	// A target that refuses the connection: the error names the login and database, not the password.
	if r := f.do(http.MethodPost, ws+"/linkconnections/lk-down/query"+lcVer, map[string]any{"query": "SELECT 1"}); r.Status < 400 {
		t.Fatalf("query on a target that is down: %d %s", r.Status, r.Raw)
	} else {
		answers = append(answers, string(r.Raw))
	}

	keyFile := filepath.Join(dir, "secrets.key")
	checkAtRest := func(when string) (verifier, superPw string) {
		t.Helper()
		if fi, err := os.Stat(keyFile); err != nil || fi.Mode().Perm() != 0o600 {
			t.Fatalf("%s: key file %v %v", when, fi, err)
		}
		if _, err := os.Stat(filepath.Join(dir, "internal-secret")); !os.IsNotExist(err) {
			t.Fatalf("%s: internal-secret file: %v", when, err)
		}
		// Read the secrets back with the key file, as fogo does.
		keys, err := secrets.LoadFile(keyFile)
		if err != nil {
			t.Fatal(err)
		}
		st, err := store.Open(filepath.Join(dir, "state.db"), keys)
		if err != nil {
			t.Fatal(err)
		}
		err = st.View(func(tx *store.Tx) error {
			srvs, err := store.List[model.Server](tx, store.Servers, "")
			if err != nil || len(srvs) != 1 {
				return fmt.Errorf("servers: %v %v", srvs, err)
			}
			verifier = srvs[0].AdminVerifier
			var c struct{ Password string }
			if err := tx.MustGet(store.Secrets, "internal-superuser", &c); err != nil {
				return err
			}
			superPw = c.Password
			return nil
		})
		st.Close()
		if err != nil {
			t.Fatalf("%s: %v", when, err)
		}
		raw, err := os.ReadFile(filepath.Join(dir, "state.db"))
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Contains(raw, []byte(secrets.Prefix)) {
			t.Fatalf("%s: no sealed value in state.db", when)
		}
		// SCRAM-SHA-256$4096:<salt>$<StoredKey>:<ServerKey>
		parts := strings.FieldsFunc(verifier, func(r rune) bool { return r == '$' || r == ':' })
		if len(parts) != 5 || superPw == "" {
			t.Fatalf("%s: verifier %q, internal password %q", when, verifier, superPw)
		}
		for _, s := range append([]string{adminPw, srcPw, brokenPw, superPw, "SCRAM-SHA-256", "password="}, parts[2:]...) {
			if bytes.Contains(raw, []byte(s)) {
				t.Fatalf("%s: state.db contains %q", when, s)
			}
		}
		return verifier, superPw
	}

	p.stop(t)
	verifier, superPw := checkAtRest("after the first run")
	p = serve()
	queryTarget()
	do(http.MethodGet, serverPath("sec-srv"), nil, 200)

	cli := func(args ...string) map[string]any {
		t.Helper()
		cmd := exec.Command(bin, append([]string{"secrets", "rotate-key", "-o", "json"}, args...)...)
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		out, err := cmd.Output()
		logs = append(logs, string(out), stderr.String())
		var res map[string]any
		if err != nil || json.Unmarshal(out, &res) != nil || res["keyId"] == nil {
			t.Fatalf("fogo secrets rotate-key %v: %v\n%s%s", args, err, out, stderr.String())
		}
		return res
	}
	if r := f.doRaw(http.MethodPost, "/admin/secrets/rotate-key", nil, ""); r.Status != 401 {
		t.Fatalf("rotate-key without the token: %d %s", r.Status, r.Raw)
	}
	if r := f.do(http.MethodGet, "/admin/secrets/rotate-key", nil); r.Status != 405 {
		t.Fatalf("GET rotate-key: %d %s", r.Status, r.Raw)
	}
	before, _ := secrets.LoadFile(keyFile)
	rot := cli("--endpoint", f.url, "--token", token)
	after, _ := secrets.LoadFile(keyFile)
	if ids := after.IDs(); len(ids) != 1 || ids[0] != rot["keyId"] || ids[0] == before.Current() || fmt.Sprint(rot["resealed"]) != "5" {
		t.Fatalf("online rotation %v: key file %v (before %v)", rot, after.IDs(), before.IDs())
	}
	queryTarget()
	p.stop(t)
	if v, pw := checkAtRest("after the online rotation"); v != verifier || pw != superPw {
		t.Fatal("the verifier or the internal password changed")
	}

	off := cli("--offline", "--data-dir", dir)
	raw, _ := os.ReadFile(filepath.Join(dir, "state.db"))
	for _, old := range []string{before.Current(), fmt.Sprint(rot["keyId"])} {
		if bytes.Contains(raw, []byte(secrets.Prefix+old)) {
			t.Fatalf("offline rotation %v: ciphertext under the retired key %s left in state.db", off, old)
		}
	}
	checkAtRest("after the offline rotation")
	p = serve()
	queryTarget()

	secretsList := []string{adminPw, srcPw, brokenPw, verifier, superPw}
	for _, s := range secretsList {
		for i, a := range answers {
			if strings.Contains(a, s) {
				t.Fatalf("API answer %d contains a secret: %s", i, a)
			}
		}
	}
	p.stop(t)
	for _, p := range procs {
		logs = append(logs, p.output())
	}
	all := strings.Join(logs, "\n")
	if !strings.Contains(all, "rotated the secrets key") {
		t.Fatalf("logs not captured:\n%s", all)
	}
	for _, s := range secretsList {
		if strings.Contains(all, s) {
			t.Fatalf("a secret is in fogo's logs")
		}
	}
}
