package instance

import (
	"net/netip"
	"strings"
	"testing"
)

func TestHbaAllowFrom(t *testing.T) {
	nets := []netip.Prefix{netip.MustParsePrefix("10.0.0.7/8"), netip.MustParsePrefix("fd00::/64")}
	loopback := "# Written by fogo.\n" +
		"host all all 127.0.0.1/32 scram-sha-256\n" +
		"host all all ::1/128 scram-sha-256\n" +
		"host replication fogo 127.0.0.1/32 scram-sha-256\n" +
		"host replication fogo ::1/128 scram-sha-256\n"
	for _, c := range []struct {
		tls  bool
		nets []netip.Prefix
		want string
	}{
		{false, nil, loopback},
		{true, nil, loopback},
		{false, nets, loopback +
			"host all all 10.0.0.0/8 scram-sha-256\n" +
			"host replication fogo 10.0.0.0/8 scram-sha-256\n" +
			"host all all fd00::/64 scram-sha-256\n" +
			"host replication fogo fd00::/64 scram-sha-256\n"},
		{true, nets, loopback +
			"hostssl all all 10.0.0.0/8 scram-sha-256\n" +
			"hostssl replication fogo 10.0.0.0/8 scram-sha-256\n" +
			"hostssl all all fd00::/64 scram-sha-256\n" +
			"hostssl replication fogo fd00::/64 scram-sha-256\n"},
	} {
		got, err := hbaConf("fogo", c.nets, c.tls, false)
		if err != nil || got != c.want {
			t.Errorf("tls=%v nets=%v: %v\n%s\nwant\n%s", c.tls, c.nets, err, got, c.want)
		}
	}
	if _, err := hbaConf("fogo", []netip.Prefix{{}}, true, false); err == nil || !strings.Contains(err.Error(), "not a valid prefix") {
		t.Errorf("zero prefix: %v", err)
	}
}

// TestHbaIsolated: an isolated instance lets only fogo's superuser log in, from loopback and the allowed networks,
// and nobody replicate from it.
func TestHbaIsolated(t *testing.T) {
	got, err := hbaConf("fogo", []netip.Prefix{netip.MustParsePrefix("10.0.0.7/8")}, true, true)
	want := "# Written by fogo.\n" +
		"# Isolated: only fogo's superuser may log in, and nothing may replicate.\n" +
		"host all fogo 127.0.0.1/32 scram-sha-256\n" +
		"host all fogo ::1/128 scram-sha-256\n" +
		"hostssl all fogo 10.0.0.0/8 scram-sha-256\n"
	if err != nil || got != want {
		t.Fatalf("%v\n%s\nwant\n%s", err, got, want)
	}
}
