package e2e

import (
	"bufio"
	"flag"
	"fmt"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/fogo-db/fogo/internal/errcatalog"
)

// errorCodesPage is the page whose table lists the error codes fogo answers (docs/error-codes.md).
const errorCodesPage = "../../docs/error-codes.md"

// asserted records every ARM error code (with its HTTP status) a test has seen fogo answer as expected.
var asserted sync.Map

func noteCode(code string, status int) { asserted.Store(code, status) }

// TestMain runs the tests and, when the whole suite ran on real PostgreSQL, checks that every error code the
// table of docs/error-codes.md claims was asserted by some test, with the status the page and the catalogue give.
func TestMain(m *testing.M) {
	flag.Parse()
	code := m.Run()
	if fogoBinary.dir != "" {
		os.RemoveAll(fogoBinary.dir)
	}
	if code == 0 && flag.Lookup("test.run").Value.String() == "" && os.Getenv("FOGO_REQUIRE_PG") == "1" {
		if problems := codeTableProblems(errorCodesPage); len(problems) > 0 {
			fmt.Fprintln(os.Stderr, "docs/error-codes.md table vs tests:\n  "+strings.Join(problems, "\n  "))
			code = 1
		}
	}
	os.Exit(code)
}

// TestErrorCodesPage checks, without PostgreSQL, that docs/error-codes.md has its table and that every row's
// status is the catalogue's. Whether a test asserted each code is checked by TestMain after the whole suite.
func TestErrorCodesPage(t *testing.T) {
	rows, err := codeTable(errorCodesPage)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range rows {
		if e := errcatalog.New(r.code); e.Status != r.status {
			t.Errorf("%s: docs/error-codes.md says %d, the catalogue %d", r.code, r.status, e.Status)
		}
	}
}

// codeRow is one row of the error-code table.
type codeRow struct {
	code   string
	status int
}

// codeTable reads the rows "| `Code` | status | when |" under the heading "Error codes" (of any level, up to the
// next heading).
func codeTable(path string) ([]codeRow, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var rows []codeRow
	in := false
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, "#") {
			in = strings.TrimSpace(strings.TrimLeft(line, "#")) == "Error codes"
			continue
		}
		if !in || !strings.HasPrefix(line, "| `") {
			continue
		}
		cells := strings.Split(line, "|")
		if len(cells) < 4 {
			continue
		}
		status, _ := strconv.Atoi(strings.TrimSpace(cells[2]))
		rows = append(rows, codeRow{code: strings.Trim(strings.TrimSpace(cells[1]), "`"), status: status})
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	if len(rows) == 0 {
		return nil, fmt.Errorf("%s: no error-code table found under the heading 'Error codes'", path)
	}
	return rows, nil
}

// codeTableProblems compares the table of the page at path with the catalogue and with the codes the tests
// asserted.
func codeTableProblems(path string) []string {
	rows, err := codeTable(path)
	if err != nil {
		return []string{err.Error()}
	}
	var problems []string
	for _, r := range rows {
		code, status := r.code, r.status
		if e := errcatalog.New(code); e.Status != status {
			problems = append(problems, fmt.Sprintf("%s: docs/error-codes.md says %d, the catalogue %d", code, status, e.Status))
		}
		seen, ok := asserted.Load(code)
		switch {
		case !ok:
			problems = append(problems, code+": claimed in docs/error-codes.md, asserted by no test")
		case seen.(int) != status:
			problems = append(problems, fmt.Sprintf("%s: docs/error-codes.md says %d, tests saw %d", code, status, seen))
		}
	}
	sort.Strings(problems)
	return problems
}
