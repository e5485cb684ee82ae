package lostxact

import (
	"reflect"
	"testing"
	"time"
)

func str(s string) *string { return &s }

// TestParseTextForm reads test_decoding's lines as PostgreSQL 15 writes them, quoting included.
func TestParseTextForm(t *testing.T) {
	for _, c := range []struct {
		line string
		want Change
	}{
		{`table public.ledger: INSERT: id[integer]:51 note[text]:'it''s lost'`,
			Change{Schema: "public", Table: "ledger", Op: "insert", New: []Column{{Name: "id", Type: "integer", Value: str("51")},
				{Name: "note", Type: "text", Value: str("it's lost")}}}},
		{`table public.ledger: UPDATE: old-key: id[integer]:5 new-tuple: id[integer]:7 note[text]:null`,
			Change{Schema: "public", Table: "ledger", Op: "update", Old: []Column{{Name: "id", Type: "integer", Value: str("5")}},
				New: []Column{{Name: "id", Type: "integer", Value: str("7")}, {Name: "note", Type: "text"}}}},
		{`table public.t: UPDATE: id[integer]:1 big[text]:unchanged-toast-datum ok[boolean]:false`,
			Change{Schema: "public", Table: "t", Op: "update", New: []Column{{Name: "id", Type: "integer", Value: str("1")},
				{Name: "big", Type: "text", Unchanged: true}, {Name: "ok", Type: "boolean", Value: str("f")}}}},
		{`table public.t: DELETE: (no-tuple-data)`, Change{Schema: "public", Table: "t", Op: "delete"}},
		{`table "My ""S"".x"."T:1": DELETE: "a b"[character varying]:' new-tuple: x' "x]:y"[text[]]:'{1}' b[bit(3)]:B'101'`,
			Change{Schema: `My "S".x`, Table: "T:1", Op: "delete", Old: []Column{
				{Name: "a b", Type: "character varying", Value: str(" new-tuple: x")},
				{Name: "x]:y", Type: "text[]", Value: str("{1}")}, {Name: "b", Type: "bit(3)", Value: str("101")}}}},
		{`table public.a, public.b: TRUNCATE: restart_seqs cascade`,
			Change{Schema: "public", Table: "a", Op: "truncate", AlsoTruncated: []string{`"public"."b"`}, TruncateFlags: "restart_seqs cascade"}},
		{`table public.a: TRUNCATE: (no-flags)`, Change{Schema: "public", Table: "a", Op: "truncate"}},
		{`table public.u: INSERT: v[public."odd]:type"]:'x'`,
			Change{Schema: "public", Table: "u", Op: "insert", New: []Column{{Name: "v", Type: `public."odd]:type"`, Value: str("x")}}}},
	} {
		ev, err := parseLine(c.line)
		if err != nil {
			t.Fatalf("%s: %v", c.line, err)
		}
		if ev.kind != "change" || !reflect.DeepEqual(ev.change, c.want) {
			t.Fatalf("%s:\n got %+v\nwant %+v", c.line, ev.change, c.want)
		}
	}
	ev, err := parseLine("COMMIT 741 (at 2026-12-01 05:00:00.123456+00)")
	if err != nil || ev.kind != "commit" || !ev.time.Equal(time.Date(2026, 12, 1, 5, 0, 0, 123456000, time.UTC)) {
		t.Fatalf("commit: %+v %v", ev, err)
	}
	for _, bad := range []string{`table public: INSERT: x[int]:1`, `table public.t: INSERT: x[int:1`,
		`table public.t: INSERT: x[integer]:'open`, `table public.t: MERGE:`, `table "open.t: INSERT:`,
		"COMMIT 1 (at yesterday)"} {
		if _, err := parseLine(bad); err == nil {
			t.Fatalf("%s: parsed, want an error", bad)
		}
	}
}

// TestReplaySQL writes each kind of change as the statement that replays it, and says so when it cannot.
func TestReplaySQL(t *testing.T) {
	key := []string{"id"}
	for _, c := range []struct {
		change Change
		want   string
	}{
		{Change{Schema: "public", Table: "t", Op: "insert", Key: key, New: []Column{{Name: "id", Value: str("1")}, {Name: "note", Value: str("it's")}, {Name: "n"}}},
			`INSERT INTO "public"."t" ("id", "note", "n") VALUES ('1', 'it''s', NULL);`},
		{Change{Schema: "public", Table: "t", Op: "update", Key: key, New: []Column{{Name: "id", Value: str("1")}, {Name: "big", Unchanged: true}, {Name: "note", Value: str("x")}}},
			`UPDATE "public"."t" SET "id" = '1', "note" = 'x' WHERE "id" = '1';`},
		{Change{Schema: "public", Table: "t", Op: "update", Key: key, Old: []Column{{Name: "id", Value: str("1")}}, New: []Column{{Name: "id", Value: str("2")}}},
			`UPDATE "public"."t" SET "id" = '2' WHERE "id" = '1';`},
		{Change{Schema: "s", Table: `a"b`, Op: "delete", Old: []Column{{Name: "id", Value: str("1")}, {Name: "v"}}},
			`DELETE FROM "s"."a""b" WHERE "id" = '1' AND "v" IS NULL;`},
		{Change{Schema: "public", Table: "nokey", Op: "update", New: []Column{{Name: "v", Value: str("b")}}},
			`-- cannot replay an update of "public"."nokey": the table has no key, and the WAL did not log the old row`},
		{Change{Schema: "public", Table: "nokey", Op: "delete"},
			`-- cannot replay a delete from "public"."nokey": the table has no key, and the WAL did not log the old row`},
		{Change{Schema: "public", Table: "a", Op: "truncate", AlsoTruncated: []string{`"public"."b"`}, TruncateFlags: "restart_seqs cascade"},
			`TRUNCATE "public"."a", "public"."b" RESTART IDENTITY CASCADE;`},
	} {
		if got := statement(c.change); got != c.want {
			t.Errorf("%+v:\n got %s\nwant %s", c.change, got, c.want)
		}
	}
}
