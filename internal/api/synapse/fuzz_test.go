package synapse

import (
	"bytes"
	"encoding/json"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/fogo-db/fogo/internal/controlplane/links"
	"github.com/fogo-db/fogo/internal/controlplane/store"
	"github.com/fogo-db/fogo/internal/secrets"
)

// FuzzRequestBodies: the Synapse API decodes and validates whatever body a caller PUTs for a linked service or a
// link connection (the real handler, on a bbolt store). For any body: never a 5xx, an error body of the catalogue
// (code and message) for every 4xx, and no file made outside the link-target directory (a DuckDb path is a path
// on a host fogo often runs as root on). Seeds: the specs' example bodies and the cases of the tests; the corpus
// the fuzzer found interesting is in testdata/fuzz. A short run is in the test command (make fuzz-short).
func FuzzRequestBodies(f *testing.F) {
	for _, s := range []struct{ kind, body string }{
		{"linkedservices", `{"properties":{"type":"PostgreSql","typeProperties":{"connectionString":"host=127.0.0.1 port=5432 dbname=db user=u password=p"}}}`},
		{"linkedservices", `{"properties":{"type":"AzureSqlDatabase","typeProperties":{"connectionString":{"type":"SecureString","value":"postgres://u:p@h/db"}}}}`},
		{"linkedservices", `{"properties":{"type":"DuckDb","typeProperties":{"path":"analytics.duckdb"}}}`},
		{"linkedservices", `{"properties":{"type":"DuckDb","typeProperties":{"path":"../../etc/passwd"}}}`},
		{"linkedservices", `{"properties":{"type":"DuckDb","typeProperties":{"path":"/etc/shadow"}}}`},
		{"linkedservices", `{"properties":{"type":"PostgreSql","typeProperties":{"connectionString":"host='unterminated"}}}`},
		{"linkconnections", `{"properties":{"sourceDatabase":{"linkedService":{"referenceName":"src"},"typeProperties":{"resourceId":"/subscriptions/s/resourceGroups/rg/providers/Microsoft.Sql/servers/east"}},"targetDatabase":{"linkedService":{"referenceName":"dst"},"typeProperties":{"crossTableTransaction":true,"dropExistingTargetTableOnStart":true}},"compute":{"dataProcessIntervalMinutes":0}}}`},
		{"linkconnections", `{"properties":{"sourceDatabase":{"linkedService":{"referenceName":"src"}},"targetDatabase":{"linkedService":{"referenceName":"dst"}},"compute":{"dataProcessIntervalMinutes":-1}}}`},
		{"linkconnections", `{"properties":{"sourceDatabase":{"linkedService":{"referenceName":"src"}},"targetDatabase":{"linkedService":{"referenceName":"src"}}}}`},
		{"linkconnections", `{"properties":{"sourceDatabase":{"linkedService":{"referenceName":7}}}}`},
		{"linkconnections", ``},
		{"linkedservices", `{"properties":`},
	} {
		f.Add(s.kind == "linkconnections", []byte(s.body))
	}
	dir := f.TempDir()
	keys, err := secrets.Generate()
	if err != nil {
		f.Fatal(err)
	}
	st, err := store.Open(filepath.Join(dir, "state.db"), keys)
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { st.Close() })
	targets, err := links.NewTargetDirs(dir, nil)
	if err != nil {
		f.Fatal(err)
	}
	api := New(links.NewCatalog(links.New(st, nil, slog.New(slog.DiscardHandler)), targets))
	put := func(path, version string, body []byte) *httptest.ResponseRecorder {
		w := httptest.NewRecorder()
		api.ServeHTTP(w, httptest.NewRequest(http.MethodPut, path+"?api-version="+version, bytes.NewReader(body)))
		return w
	}
	for _, ls := range []struct{ name, body string }{
		{"src", `{"properties":{"type":"PostgreSql","typeProperties":{"connectionString":"host=127.0.0.1 dbname=db"}}}`},
		{"dst", `{"properties":{"type":"DuckDb","typeProperties":{"path":"dst.duckdb"}}}`},
	} {
		if w := put("/workspaces/w/linkedservices/"+ls.name, LinkedServiceAPIVersion, []byte(ls.body)); w.Code != http.StatusOK {
			f.Fatalf("linked service %s: %d %s", ls.name, w.Code, w.Body)
		}
	}
	before := filesOutside(f, dir)
	f.Fuzz(func(t *testing.T, connection bool, body []byte) {
		path, version := "/workspaces/w/linkedservices/fuzzed", LinkedServiceAPIVersion
		if connection {
			path, version = "/workspaces/w/linkconnections/fuzzed", LinkAPIVersion
		}
		w := put(path, version, body)
		switch {
		case w.Code >= 500:
			t.Fatalf("PUT %s %q: %d %s", path, body, w.Code, w.Body)
		case w.Code >= 400:
			var e struct {
				Error struct{ Code, Message string } `json:"error"`
			}
			if err := json.Unmarshal(w.Body.Bytes(), &e); err != nil || e.Error.Code == "" || e.Error.Message == "" {
				t.Fatalf("PUT %s %q: %d without an error body of the catalogue: %s", path, body, w.Code, w.Body)
			}
		case w.Code != http.StatusOK:
			t.Fatalf("PUT %s %q: %d", path, body, w.Code)
		}
		if after := filesOutside(t, dir); after != before {
			t.Fatalf("PUT %s %q made files outside the link-target directory: %q, was %q", path, body, after, before)
		}
	})
}

// filesOutside lists the files under dir but outside dir/link-targets (the store and its key: the test's own).
func filesOutside(t testing.TB, dir string) string {
	var out []string
	err := filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() && p == filepath.Join(dir, "link-targets") {
			return filepath.SkipDir
		}
		out = append(out, strings.TrimPrefix(p, dir))
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return strings.Join(out, ",")
}
