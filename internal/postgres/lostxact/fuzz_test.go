package lostxact

import (
	"strings"
	"testing"
)

// FuzzParseLine: whatever test_decoding's line, parsing it neither panics nor hangs, and a change it accepts names
// its table and operation.
func FuzzParseLine(f *testing.F) {
	for _, s := range []string{
		"BEGIN 741", "COMMIT 741 (at 2026-12-01 05:00:00.123456+00)",
		`table public.ledger: INSERT: id[integer]:51 note[text]:'it''s lost'`,
		`table public.ledger: UPDATE: old-key: id[integer]:5 new-tuple: id[integer]:7 note[text]:null`,
		`table "My ""S"".x"."T:1": DELETE: "a b"[character varying]:' new-tuple: x' b[bit(3)]:B'101'`,
		`table public.a, public.b: TRUNCATE: restart_seqs cascade`, `table public.t: DELETE: (no-tuple-data)`,
		`table public.u: INSERT: v[public."odd]:type"]:'x' w[boolean]:true z[text]:unchanged-toast-datum`,
		"message: transactional: 1 prefix: p, sz: 1 content:x",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, line string) {
		ev, err := parseLine(line)
		if err != nil || ev.kind != "change" {
			return
		}
		c := ev.change
		if c.Table == "" || c.Schema == "" {
			t.Fatalf("%q: a change without its table: %+v", line, c)
		}
		switch c.Op {
		case "insert", "update", "delete", "truncate":
		default:
			t.Fatalf("%q: operation %q", line, c.Op)
		}
		if !strings.HasPrefix(line, "table ") {
			t.Fatalf("%q parsed as a change", line)
		}
		_ = statement(c) // the replay SQL of anything parsed is writable
	})
}
