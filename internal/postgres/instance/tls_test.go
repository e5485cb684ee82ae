package instance_test

import (
	"context"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/fogo-db/fogo/internal/pki"
	"github.com/fogo-db/fogo/internal/postgres/instance"
	"github.com/fogo-db/fogo/internal/testutil/pgtest"
)

func TestConnStringsWithRootCert(t *testing.T) {
	in := &instance.Instance{Host: "10.0.0.1", Port: 5432, SuperUser: "fogo", SuperPassword: "pw"}
	plain := []string{in.ConnString("db"), in.SourceConnInfo().String(), in.ReplicationConnInfo("s1")}
	for _, s := range plain {
		if strings.Contains(s, "verify-full") || strings.Contains(s, "sslrootcert") {
			t.Errorf("without RootCert: %s", s)
		}
	}
	if !strings.Contains(plain[0], "sslmode=disable") {
		t.Errorf("ConnString without RootCert: %s", plain[0])
	}
	in.RootCert = "/etc/fogo/it's ca.pem"
	for _, s := range []string{in.ConnString("db"), in.SourceConnInfo().String(), in.ReplicationConnInfo("s1")} {
		if !strings.Contains(s, `sslmode=verify-full sslrootcert='/etc/fogo/it\'s ca.pem'`) || strings.Contains(s, "disable") {
			t.Errorf("with RootCert: %s", s)
		}
	}
}

// TestTLSVerifyFull: an instance configured with TLS accepts a verify-full connection against the CA, which
// pg_stat_ssl reports as TLS; a client trusting another CA is refused; the copied files belong to the postgres
// OS user with the key private; pg_hba.conf admits the allowed network over TLS only.
func TestTLSVerifyFull(t *testing.T) {
	ctx := context.Background()
	p, res := pgtest.NewTLSPrimary(t, netip.MustParsePrefix("192.0.2.0/24"))
	p.RootCert = res.CAFile
	conn, err := pgx.Connect(ctx, p.ConnString("postgres"))
	if err != nil {
		t.Fatalf("verify-full connection: %v", err)
	}
	defer conn.Close(ctx)
	var ssl bool
	var version string
	if err := conn.QueryRow(ctx, "SELECT ssl, version FROM pg_stat_ssl WHERE pid = pg_backend_pid()").Scan(&ssl, &version); err != nil {
		t.Fatal(err)
	}
	if !ssl || !strings.HasPrefix(version, "TLSv1.") {
		t.Fatalf("pg_stat_ssl: ssl=%v version=%q", ssl, version)
	}
	c2, err := p.Connect(ctx, "postgres") // Connect verifies too once RootCert is set
	if err != nil {
		t.Fatal(err)
	}
	if err := c2.QueryRow(ctx, "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()").Scan(&ssl); err != nil || !ssl {
		t.Fatalf("Connect: ssl=%v %v", ssl, err)
	}
	c2.Close(ctx)

	other, err := pki.EnsureCluster(t.TempDir(), []pki.Host{{Name: "x", Addrs: []string{"127.0.0.1"}}})
	if err != nil {
		t.Fatal(err)
	}
	p.RootCert = other.CAFile
	if c, err := pgx.Connect(ctx, p.ConnString("postgres")); err == nil {
		c.Close(ctx)
		t.Fatal("a client trusting another CA connected")
	}

	home := filepath.Dir(p.Dir)
	for name, mode := range map[string]os.FileMode{"server.crt": 0o644, "server.key": 0o600, "ca.crt": 0o644} {
		fi, err := os.Stat(filepath.Join(home, "tls", name))
		if err != nil {
			t.Fatal(err)
		}
		st := fi.Sys().(*syscall.Stat_t)
		if fi.Mode().Perm() != mode || (p.Bin.IsRoot() && st.Uid == 0) {
			t.Errorf("%s: mode %04o uid %d", name, fi.Mode().Perm(), st.Uid)
		}
	}
	hba, err := os.ReadFile(filepath.Join(p.Dir, "pg_hba.conf"))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range []string{"hostssl all all 192.0.2.0/24 scram-sha-256\n", "hostssl replication fogo 192.0.2.0/24 scram-sha-256\n"} {
		if !strings.Contains(string(hba), line) {
			t.Errorf("pg_hba.conf lacks %q:\n%s", line, hba)
		}
	}
}

// TestTLSReplication: a standby seeded (pg_basebackup) and streaming with verify-full against the primary's
// installed CA copy, which the postgres OS user can read; the primary's walsender runs over TLS.
func TestTLSReplication(t *testing.T) {
	ctx := context.Background()
	p, _ := pgtest.NewTLSPrimary(t, netip.MustParsePrefix("192.0.2.0/24"))
	p.RootCert = p.InstalledCAFile()
	if !strings.Contains(p.ReplicationConnInfo("s1"), "verify-full") {
		t.Fatal(p.ReplicationConnInfo("s1"))
	}
	exec(t, p, "CREATE TABLE t(id int primary key)")
	exec(t, p, "INSERT INTO t SELECT generate_series(1,5)")
	s := pgtest.NewStandby(t, p, "fogo_tls_s1")
	waitCount(t, s, 5)
	c, err := p.Connect(ctx, "postgres")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close(ctx)
	var ssl bool
	err = c.QueryRow(ctx, `SELECT s.ssl FROM pg_stat_replication r JOIN pg_stat_ssl s USING (pid)
		WHERE r.application_name = 'fogo_tls_s1'`).Scan(&ssl)
	if err != nil || !ssl {
		t.Fatalf("walsender over TLS: %v %v", ssl, err)
	}
}
