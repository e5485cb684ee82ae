package pki

import (
	"strings"
	"testing"
	"time"
)

// TestReissueNearExpiry: a host certificate is kept until 30 days before its end, then reissued; the CA is kept.
func TestReissueNearExpiry(t *testing.T) {
	dir := t.TempDir()
	now := time.Now()
	ca, status, err := ensureCA(dir, now)
	if err != nil || status != Created {
		t.Fatal(status, err)
	}
	r, err := newRequest(Host{Name: "db1", Addrs: []string{"10.0.0.1"}})
	if err != nil {
		t.Fatal(err)
	}
	if hr, err := ensureHost(dir, ca, r, now); err != nil || hr.Status != Created {
		t.Fatal(hr, err)
	}
	if hr, err := ensureHost(dir, ca, r, now.Add(360*24*time.Hour)); err != nil || hr.Status != Kept {
		t.Fatal(hr, err)
	}
	later := now.Add(370 * 24 * time.Hour)
	if _, status, err := ensureCA(dir, later); err != nil || status != Kept {
		t.Fatal(status, err)
	}
	hr, err := ensureHost(dir, ca, r, later)
	if err != nil || hr.Status != Reissued || !strings.Contains(hr.Reason, "expires") {
		t.Fatal(hr, err)
	}
	if _, _, err := ensureCA(dir, now.Add(11*365*24*time.Hour)); err == nil || !strings.Contains(err.Error(), "expired") {
		t.Fatalf("expired CA: %v", err)
	}
}
