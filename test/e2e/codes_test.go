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

	"github.com/fogo-db/fogo/internal/api/errcatalog"
)

// asserted records every ARM error code (with its HTTP status) a test has seen fogo answer as expected.
var asserted sync.Map

func noteCode(code string, status int) { asserted.Store(code, status) }

// TestMain runs the tests and, when the whole suite ran on real PostgreSQL, checks that every error code the
// README's table claims was asserted by some test, with the status the README and the catalogue give.
func TestMain(m *testing.M) {
	flag.Parse()
	code := m.Run()
	if code == 0 && flag.Lookup("test.run").Value.String() == "" && os.Getenv("FOGO_REQUIRE_PG") == "1" {
		if problems := readmeCodeProblems("../../README.md"); len(problems) > 0 {
			fmt.Fprintln(os.Stderr, "README error-code table vs tests:\n  "+strings.Join(problems, "\n  "))
			code = 1
		}
	}
	os.Exit(code)
}

// readmeCodeProblems reads the rows "| `Code` | status | when |" under "## Error codes".
func readmeCodeProblems(path string) []string {
	f, err := os.Open(path)
	if err != nil {
		return []string{err.Error()}
	}
	defer f.Close()
	var problems []string
	in, rows := false, 0
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, "## ") {
			in = strings.HasPrefix(line, "## Error codes")
			continue
		}
		if !in || !strings.HasPrefix(line, "| `") {
			continue
		}
		cells := strings.Split(line, "|")
		if len(cells) < 4 {
			continue
		}
		rows++
		code := strings.Trim(strings.TrimSpace(cells[1]), "`")
		status, _ := strconv.Atoi(strings.TrimSpace(cells[2]))
		if e := errcatalog.New(code); e.Status != status {
			problems = append(problems, fmt.Sprintf("%s: README says %d, the catalogue %d", code, status, e.Status))
		}
		seen, ok := asserted.Load(code)
		switch {
		case !ok:
			problems = append(problems, code+": claimed in the README, asserted by no test")
		case seen.(int) != status:
			problems = append(problems, fmt.Sprintf("%s: README says %d, tests saw %d", code, status, seen))
		}
	}
	if rows == 0 {
		problems = append(problems, "no error-code table found under '## Error codes'")
	}
	sort.Strings(problems)
	return problems
}
