package errcatalog

import (
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"sort"
	"strconv"
	"strings"
)

// Entry is one catalogue line.
type Entry struct {
	Code     string
	Status   int
	Template string
}

var catalogue = func() map[string]Entry {
	m := map[string]Entry{}
	for _, list := range [][]Entry{seedEntries, platformEntries} {
		for _, e := range list {
			if _, dup := m[e.Code]; !dup {
				m[e.Code] = e
			}
		}
	}
	return m
}()

// Lookup returns the catalogue entry of a code.
func Lookup(code string) (Entry, bool) {
	e, ok := catalogue[code]
	return e, ok
}

// Entries returns the whole catalogue sorted by code.
func Entries() []Entry {
	out := make([]Entry, 0, len(catalogue))
	for _, e := range catalogue {
		out = append(out, e)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Code < out[j].Code })
	return out
}

// Error is an ARM error with its HTTP status.
type Error struct {
	Code    string
	Status  int
	Message string
	Target  string
}

func (e *Error) Error() string { return e.Code + ": " + e.Message }

// New makes the catalogue's error for code, filling `{0}`, `{1}`… from args. An unknown code is a programming
// error: it becomes an InternalServerError that names it (and the catalogue test catches it).
func New(code string, args ...any) *Error {
	e, ok := catalogue[code]
	if !ok {
		return &Error{Code: "InternalServerError", Status: 500, Message: "unknown error code " + code}
	}
	msg := e.Template
	for i, a := range args {
		msg = strings.ReplaceAll(msg, "{"+strconv.Itoa(i)+"}", fmt.Sprint(a))
	}
	return &Error{Code: code, Status: e.Status, Message: msg}
}

// Newf makes the catalogue's error for code with a specific message.
func Newf(code, format string, args ...any) *Error {
	e := New(code)
	if e.Code == code {
		e.Message = fmt.Sprintf(format, args...)
	}
	return e
}

// WithTarget names the request field the error is about.
func (e *Error) WithTarget(target string) *Error { e.Target = target; return e }

// As finds an *Error in err's chain.
func As(err error) (*Error, bool) {
	var e *Error
	if errors.As(err, &e) {
		return e, true
	}
	return nil, false
}

// IsConflict reports whether err is a 409: the request may succeed later, once the conflicting operation ends.
func IsConflict(err error) bool {
	e, ok := As(err)
	return ok && e.Status == http.StatusConflict
}

type envelope struct {
	Error body `json:"error"`
}

type body struct {
	Code    string `json:"code"`
	Message string `json:"message"`
	Target  string `json:"target,omitempty"`
}

// Write answers with the ARM error envelope. Errors that are not *Error are answered as a generic 500, and
// logged (slog's default logger): the caller reads only "an unexpected error", so the log is the one place
// that says what it was.
func Write(w http.ResponseWriter, err error) {
	e, ok := As(err)
	if !ok {
		e = New("InternalServerError")
		slog.Error("answered 500 InternalServerError", "err", err)
	}
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	w.Header().Set("x-ms-failure-cause", failureCause(e.Status))
	w.WriteHeader(e.Status)
	_ = json.NewEncoder(w).Encode(envelope{Error: body{Code: e.Code, Message: e.Message, Target: e.Target}})
}

func failureCause(status int) string {
	if status >= 500 {
		return "service"
	}
	return "gateway"
}

// MarkdownTable renders the codes given (or all) as a Markdown table: code, status, message.
func MarkdownTable(codes []string) string {
	var b strings.Builder
	b.WriteString("| code | HTTP | message |\n|---|---|---|\n")
	for _, c := range codes {
		e, ok := catalogue[c]
		if !ok {
			continue
		}
		fmt.Fprintf(&b, "| `%s` | %d | %s |\n", e.Code, e.Status, strings.ReplaceAll(e.Template, "|", "\\|"))
	}
	return b.String()
}
