package pki_test

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/fogo-db/fogo/internal/pki"
)

var cluster = []pki.Host{
	{Name: "db1", Addrs: []string{"10.0.0.1", "db1.example.internal"}},
	{Name: "db2", Addrs: []string{"10.0.0.2", "fd00::2"}},
	{Name: "db3", Addrs: []string{"127.0.0.1"}},
}

func ensure(t *testing.T, dir string, hosts []pki.Host) pki.Result {
	t.Helper()
	res, err := pki.EnsureCluster(dir, hosts)
	if err != nil {
		t.Fatal(err)
	}
	return res
}

func pool(t *testing.T, dir string) *x509.CertPool {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dir, pki.CACertName))
	if err != nil {
		t.Fatal(err)
	}
	p := x509.NewCertPool()
	if !p.AppendCertsFromPEM(b) {
		t.Fatal("ca.pem holds no certificate")
	}
	return p
}

func leaf(t *testing.T, certFile, keyFile string) *x509.Certificate {
	t.Helper()
	pair, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		t.Fatal(err)
	}
	return pair.Leaf
}

// snapshot is every file of dir by name.
func snapshot(t *testing.T, dir string) map[string][]byte {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	m := map[string][]byte{}
	for _, e := range entries {
		b, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		m[e.Name()] = b
	}
	return m
}

func TestChainVerifiesForEveryAddrAndBothUsages(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "certs")
	res := ensure(t, dir, cluster)
	if res.CA != pki.Created || len(res.Hosts) != 3 {
		t.Fatalf("result %+v", res)
	}
	roots := pool(t, dir)
	for i, h := range res.Hosts {
		if h.Status != pki.Created {
			t.Errorf("%s: %s, want created", h.Name, h.Status)
		}
		cert := leaf(t, h.CertFile, h.KeyFile)
		if got := cert.NotAfter.Sub(cert.NotBefore).Hours() / 24; got < 397 || got > 398 {
			t.Errorf("%s: valid %.1f days", h.Name, got)
		}
		for _, name := range append([]string{h.Name}, cluster[i].Addrs...) {
			for _, usage := range []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth} {
				_, err := cert.Verify(x509.VerifyOptions{DNSName: name, Roots: roots, KeyUsages: []x509.ExtKeyUsage{usage}})
				if err != nil {
					t.Errorf("%s for %s usage %v: %v", h.Name, name, usage, err)
				}
			}
		}
		if _, err := cert.Verify(x509.VerifyOptions{DNSName: "10.9.9.9", Roots: roots}); err == nil {
			t.Errorf("%s verifies for an address it was not given", h.Name)
		}
	}
	ca := leaf(t, res.CAFile, res.CAKeyFile)
	if !ca.IsCA || ca.Subject.CommonName != "fogo cluster CA" || ca.NotAfter.Sub(ca.NotBefore).Hours() < 10*365*24 {
		t.Errorf("CA %v IsCA=%v until %v", ca.Subject, ca.IsCA, ca.NotAfter)
	}
}

func TestModes(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "certs")
	res := ensure(t, dir, cluster)
	want := map[string]os.FileMode{res.CAKeyFile: 0o600}
	want[res.CAFile] = 0o644
	for _, h := range res.Hosts {
		want[h.CertFile], want[h.KeyFile] = 0o644, 0o600
	}
	for path, mode := range want {
		fi, err := os.Stat(path)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != mode {
			t.Errorf("%s: mode %04o, want %04o", path, fi.Mode().Perm(), mode)
		}
	}
	if fi, err := os.Stat(dir); err != nil || fi.Mode().Perm() != 0o700 {
		t.Errorf("dir: %v %v", fi.Mode(), err)
	}
	if len(snapshot(t, dir)) != 8 { // no temporary file left behind
		t.Errorf("files: %v", len(snapshot(t, dir)))
	}
}

func TestIdempotentAndReissue(t *testing.T) {
	dir := t.TempDir()
	ensure(t, dir, cluster)
	before := snapshot(t, dir)
	res := ensure(t, dir, cluster)
	if res.CA != pki.Kept {
		t.Errorf("CA %s on second run", res.CA)
	}
	for _, h := range res.Hosts {
		if h.Status != pki.Kept {
			t.Errorf("%s: %s (%s) on second run", h.Name, h.Status, h.Reason)
		}
	}
	after := snapshot(t, dir)
	if len(after) != len(before) {
		t.Fatalf("%d files, then %d", len(before), len(after))
	}
	for name, b := range before {
		if !bytes.Equal(b, after[name]) {
			t.Errorf("%s changed on a second run", name)
		}
	}

	// A new address for db2 reissues db2 only; db1 and the CA stay byte-identical.
	more := append([]pki.Host(nil), cluster...)
	more[1] = pki.Host{Name: "db2", Addrs: []string{"10.0.0.2", "fd00::2", "db2.example.internal"}}
	res = ensure(t, dir, more)
	if res.CA != pki.Kept || res.Hosts[0].Status != pki.Kept || res.Hosts[1].Status != pki.Reissued {
		t.Fatalf("result %+v", res)
	}
	if !strings.Contains(res.Hosts[1].Reason, "db2.example.internal") {
		t.Errorf("reason %q", res.Hosts[1].Reason)
	}
	now := snapshot(t, dir)
	for _, name := range []string{"ca.pem", "ca-key.pem", "db1.pem", "db1-key.pem"} {
		if !bytes.Equal(before[name], now[name]) {
			t.Errorf("%s changed", name)
		}
	}
	if bytes.Equal(before["db2-key.pem"], now["db2-key.pem"]) {
		t.Error("db2 reissued with its old key")
	}
	cert := leaf(t, res.Hosts[1].CertFile, res.Hosts[1].KeyFile)
	if _, err := cert.Verify(x509.VerifyOptions{DNSName: "db2.example.internal", Roots: pool(t, dir)}); err != nil {
		t.Error(err)
	}

	// A host certificate from another CA is reissued; a deleted host key too.
	other := t.TempDir()
	ensure(t, other, cluster[:1])
	for _, f := range []string{"db1.pem", "db1-key.pem"} {
		if err := os.WriteFile(filepath.Join(dir, f), snapshot(t, other)[f], 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Remove(filepath.Join(dir, "db3-key.pem")); err != nil {
		t.Fatal(err)
	}
	res = ensure(t, dir, more)
	if res.Hosts[0].Status != pki.Reissued || res.Hosts[2].Status != pki.Reissued || res.Hosts[1].Status != pki.Kept {
		t.Fatalf("result %+v", res)
	}
	leaf(t, res.Hosts[2].CertFile, res.Hosts[2].KeyFile)
	db1 := leaf(t, res.Hosts[0].CertFile, res.Hosts[0].KeyFile)
	if _, err := db1.Verify(x509.VerifyOptions{Roots: pool(t, dir)}); err != nil {
		t.Error(err)
	}
}

func TestCANeverOverwritten(t *testing.T) {
	dir := t.TempDir()
	ensure(t, dir, cluster)
	if err := os.Remove(filepath.Join(dir, "ca.pem")); err != nil {
		t.Fatal(err)
	}
	key := snapshot(t, dir)["ca-key.pem"]
	if _, err := pki.EnsureCluster(dir, cluster); err == nil || !strings.Contains(err.Error(), "both") {
		t.Fatalf("half a CA: %v", err)
	}
	if !bytes.Equal(key, snapshot(t, dir)["ca-key.pem"]) {
		t.Fatal("ca-key.pem changed")
	}
}

func TestHostileInputRefused(t *testing.T) {
	for _, h := range []pki.Host{
		{Name: "../x"}, {Name: "a/b"}, {Name: ".."}, {Name: "."}, {Name: ""}, {Name: strings.Repeat("a", 64)},
		{Name: "x\x00"}, {Name: "-rf"}, {Name: ".hidden"}, {Name: "ca"}, {Name: "db1-key"}, {Name: "a b"},
		{Name: `a\b`}, {Name: "db1", Addrs: []string{"../etc"}}, {Name: "db1", Addrs: []string{"fe80::1%eth0"}},
		{Name: "db1", Addrs: []string{""}}, {Name: "db1", Addrs: []string{"a..b"}},
	} {
		dir := t.TempDir()
		_, err := pki.EnsureCluster(dir, []pki.Host{h})
		if err == nil {
			t.Errorf("%q %q accepted", h.Name, h.Addrs)
			continue
		}
		if len(snapshot(t, dir)) != 0 {
			t.Errorf("%q: files written before the refusal", h.Name)
		}
	}
	_, err := pki.EnsureCluster(t.TempDir(), []pki.Host{{Name: "../x"}})
	if err == nil || !strings.Contains(err.Error(), `"../x"`) {
		t.Errorf("error does not name the host: %v", err)
	}
	if _, err := pki.EnsureCluster(t.TempDir(), []pki.Host{{Name: "a"}, {Name: "a"}}); err == nil {
		t.Error("duplicate host accepted")
	}
	open := t.TempDir()
	if err := os.Chmod(open, 0o777); err != nil {
		t.Fatal(err)
	}
	if _, err := pki.EnsureCluster(open, cluster); err == nil {
		t.Error("world-writable directory accepted")
	}
}
