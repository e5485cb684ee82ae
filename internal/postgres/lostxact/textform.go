package lostxact

// Parsing test_decoding's text form (contrib/test_decoding, PostgreSQL 15):
//
//	BEGIN 741
//	table public.ledger: INSERT: id[integer]:51 note[text]:'lost'
//	table public.ledger: UPDATE: old-key: id[integer]:5 new-tuple: id[integer]:7 note[text]:'x'
//	table public.ledger: DELETE: id[integer]:6
//	table public.a, public.b: TRUNCATE: (no-flags)
//	COMMIT 741 (at 2026-12-01 05:00:00.123456+00)
//
// Names are quote_identifier's output (double-quoted when needed, "" inside), types format_type_be's, and values
// are bare for numbers and booleans, B'…' for bit strings, null, unchanged-toast-datum, or single-quoted with ''
// doubled.

import (
	"errors"
	"fmt"
	"strings"
	"time"
)

// event is one parsed line.
type event struct {
	kind   string // begin, commit, change, other
	change Change
	time   time.Time // commit time (commit)
}

func parseLine(s string) (event, error) {
	switch {
	case s == "BEGIN" || strings.HasPrefix(s, "BEGIN "):
		return event{kind: "begin"}, nil
	case s == "COMMIT" || strings.HasPrefix(s, "COMMIT "):
		ev := event{kind: "commit"}
		if i := strings.Index(s, "(at "); i >= 0 && strings.HasSuffix(s, ")") {
			t, err := parseTimestamp(s[i+4 : len(s)-1])
			if err != nil {
				return ev, err
			}
			ev.time = t
		}
		return ev, nil
	case strings.HasPrefix(s, "table "):
		c, err := parseChange(s[len("table "):])
		return event{kind: "change", change: c}, err
	}
	return event{kind: "other"}, nil // a logical message: not a row change
}

// parseTimestamp reads timestamptz_to_str's ISO form (the session's time zone: UTC here).
func parseTimestamp(s string) (time.Time, error) {
	for _, layout := range []string{"2006-01-02 15:04:05.999999-07", "2006-01-02 15:04:05.999999-07:00", "2006-01-02 15:04:05.999999-07:00:00"} {
		if t, err := time.Parse(layout, s); err == nil {
			return t, nil
		}
	}
	return time.Time{}, fmt.Errorf("commit time %q is not in the ISO form", s)
}

// scanner walks one line.
type scanner struct {
	s string
	i int
}

func (p *scanner) rest() string { return p.s[p.i:] }

func (p *scanner) eat(lit string) bool {
	if strings.HasPrefix(p.rest(), lit) {
		p.i += len(lit)
		return true
	}
	return false
}

func (p *scanner) errf(format string, args ...any) error {
	return fmt.Errorf("test_decoding line %q at byte %d: %s", truncate(p.s, 200), p.i, fmt.Sprintf(format, args...))
}

// quoted reads the rest of a literal opened by q, in which a doubled q stands for itself.
func (p *scanner) quoted(q byte) (string, error) {
	var b strings.Builder
	for p.i < len(p.s) {
		c := p.s[p.i]
		p.i++
		if c != q {
			b.WriteByte(c)
			continue
		}
		if p.i < len(p.s) && p.s[p.i] == q {
			p.i++
			b.WriteByte(q)
			continue
		}
		return b.String(), nil
	}
	return "", p.errf("unterminated %c-quoted text", q)
}

// ident reads one identifier as quote_identifier writes it.
func (p *scanner) ident() (string, error) {
	if p.eat(`"`) {
		name, err := p.quoted('"')
		if err == nil && name == "" {
			err = p.errf("an empty name") // PostgreSQL has none
		}
		return name, err
	}
	start := p.i
	for p.i < len(p.s) {
		c := p.s[p.i]
		if c == '.' || c == ':' || c == ',' || c == ' ' || c == '[' {
			break
		}
		p.i++
	}
	if p.i == start {
		return "", p.errf("a name was expected")
	}
	return p.s[start:p.i], nil
}

func parseChange(s string) (Change, error) {
	p := &scanner{s: s}
	var tables [][2]string
	for {
		schema, err := p.ident()
		if err != nil {
			return Change{}, err
		}
		if !p.eat(".") {
			return Change{}, p.errf("a qualified table name was expected")
		}
		table, err := p.ident()
		if err != nil {
			return Change{}, err
		}
		tables = append(tables, [2]string{schema, table})
		if !p.eat(", ") {
			break
		}
	}
	if !p.eat(": ") {
		return Change{}, p.errf("': ' was expected after the table")
	}
	c := Change{Schema: tables[0][0], Table: tables[0][1]}
	switch {
	case p.eat("INSERT:"):
		c.Op = "insert"
		cols, err := p.tuple()
		c.New = cols
		return c, err
	case p.eat("UPDATE:"):
		c.Op = "update"
		if p.eat(" old-key:") {
			cols, err := p.tuple()
			if err != nil {
				return c, err
			}
			c.Old = cols
			if !p.eat(" new-tuple:") {
				return c, p.errf("new-tuple was expected")
			}
		}
		cols, err := p.tuple()
		c.New = cols
		return c, err
	case p.eat("DELETE:"):
		c.Op = "delete"
		cols, err := p.tuple()
		c.Old = cols
		return c, err
	case p.eat("TRUNCATE:"):
		c.Op = "truncate"
		if len(tables) > 1 {
			c.AlsoTruncated = make([]string, 0, len(tables)-1)
			for _, t := range tables[1:] {
				c.AlsoTruncated = append(c.AlsoTruncated, quoteIdent(t[0])+"."+quoteIdent(t[1]))
			}
		}
		c.TruncateFlags = strings.TrimSpace(p.rest())
		if c.TruncateFlags == "(no-flags)" {
			c.TruncateFlags = ""
		}
		return c, nil
	}
	return c, p.errf("an operation was expected")
}

// tuple reads " name[type]:value" repeated to the end of the line or to " new-tuple:"; " (no-tuple-data)" is nil.
func (p *scanner) tuple() ([]Column, error) {
	if p.eat(" (no-tuple-data)") {
		return nil, nil
	}
	var cols []Column
	for p.i < len(p.s) && !strings.HasPrefix(p.rest(), " new-tuple:") {
		if !p.eat(" ") {
			return nil, p.errf("a space was expected before a column")
		}
		name, err := p.ident()
		if err != nil {
			return nil, err
		}
		if !p.eat("[") {
			return nil, p.errf("'[' was expected after column %q", name)
		}
		typ, err := p.typeName()
		if err != nil {
			return nil, err
		}
		col := Column{Name: name, Type: typ}
		switch {
		case p.eat("null"):
		case p.eat("unchanged-toast-datum"):
			col.Unchanged = true
		default:
			v, err := p.value()
			if err != nil {
				return nil, err
			}
			col.Value = &v
		}
		cols = append(cols, col)
	}
	return cols, nil
}

// typeName reads format_type_be's output up to "]:" outside double quotes (array types end in "[]").
func (p *scanner) typeName() (string, error) {
	start, quoted := p.i, false
	for p.i < len(p.s) {
		c := p.s[p.i]
		switch {
		case c == '"':
			quoted = !quoted // a doubled quote toggles twice
		case !quoted && c == ']' && p.i+1 < len(p.s) && p.s[p.i+1] == ':':
			t := p.s[start:p.i]
			p.i += 2
			return t, nil
		}
		p.i++
	}
	return "", p.errf("unterminated column type")
}

// value reads a single-quoted literal, a bit string, or a bare token (numbers, true, false).
func (p *scanner) value() (string, error) {
	if p.eat("B'") || p.eat("'") {
		return p.quoted('\'')
	}
	start := p.i
	for p.i < len(p.s) && p.s[p.i] != ' ' {
		p.i++
	}
	if p.i == start {
		return "", errors.New("an empty value")
	}
	v := p.s[start:p.i]
	switch v {
	case "true":
		return "t", nil
	case "false":
		return "f", nil
	}
	return v, nil
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}
