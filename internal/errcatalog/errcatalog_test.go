package errcatalog

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http/httptest"
	"os"
	"regexp"
	"strings"
	"testing"
)

// TestSeedComplete checks that every entry of the seed reference is in the catalogue with its exact status.
func TestSeedComplete(t *testing.T) {
	raw, err := os.ReadFile("testdata/failover-groups-reference.txt")
	if err != nil {
		t.Fatal(err)
	}
	re := regexp.MustCompile(`•\s+(\d{3}) (\w+) - `)
	n := 0
	for _, m := range re.FindAllStringSubmatch(string(raw), -1) {
		n++
		e, ok := Lookup(m[2])
		if !ok || fmt.Sprint(e.Status) != m[1] {
			t.Errorf("seed %s %s: catalogue has %+v", m[1], m[2], e)
		}
	}
	if n < 90 {
		t.Fatalf("parsed only %d seed entries", n)
	}
}

func TestNewFillsTemplateAndWrite(t *testing.T) {
	e := New("FailoverGroupCreateOrUpdateRequestLessThanMinimumGracePeriodValues", 60)
	if e.Status != 400 || !strings.Contains(e.Message, "'60' minutes") {
		t.Fatalf("got %+v", e)
	}
	if New("NoSuchCode").Code != "InternalServerError" {
		t.Fatal("unknown codes must not pass silently")
	}
	w := httptest.NewRecorder()
	Write(w, fmt.Errorf("wrapped: %w", New("FailoverGroupBusy")))
	var env struct {
		Error struct{ Code, Message string }
	}
	if err := json.Unmarshal(w.Body.Bytes(), &env); err != nil || w.Code != 409 || env.Error.Code != "FailoverGroupBusy" {
		t.Fatalf("write: %d %s", w.Code, w.Body)
	}
	w = httptest.NewRecorder()
	Write(w, errors.New("pg_ctl: password=secret"))
	if w.Code != 500 || strings.Contains(w.Body.String(), "secret") {
		t.Fatalf("internal error leaked: %s", w.Body)
	}
	if !IsConflict(New("FailoverGroupBusy")) || IsConflict(New("ServerNotFound")) {
		t.Fatal("IsConflict")
	}
}
