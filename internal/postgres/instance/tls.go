package instance

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
)

// TLSFiles are the PEM files an instance serves TLS with, as paths fogo can read on the instance's machine (for
// example the host's files from `fogo certs`). Configure copies them next to the data directory, owned by the
// postgres OS user, so they may live anywhere fogo can read.
type TLSFiles struct {
	CertFile string // the server certificate (its SANs must name the address clients connect to)
	KeyFile  string // its private key
	CAFile   string // the CA clients' certificates are checked against, if they send one
}

// Where Configure installs the TLS files, under the instance's home (the parent of the data directory).
const (
	tlsDirName     = "tls"
	tlsCertName    = "server.crt"
	tlsKeyName     = "server.key"
	tlsCAName      = "ca.crt"
	tlsMinProtocol = "TLSv1.2"
)

func (i *Instance) tlsDir() string { return filepath.Join(i.home(), tlsDirName) }

// InstalledCAFile is the copy of TLSFiles.CAFile that Configure installed for this instance, readable by the
// postgres OS user: a RootCert for connections that PostgreSQL's own processes make from this machine
// (primary_conninfo, pg_basebackup, pg_rewind).
func (i *Instance) InstalledCAFile() string { return filepath.Join(i.tlsDir(), tlsCAName) }

// installTLS checks the files (the key matches the certificate, the CA file holds a certificate), copies them
// into the instance's tls directory and returns the GUCs that serve them.
func (i *Instance) installTLS(t *TLSFiles) (map[string]string, error) {
	cert, err := os.ReadFile(t.CertFile)
	if err != nil {
		return nil, fmt.Errorf("read TLS certificate: %w", err)
	}
	key, err := os.ReadFile(t.KeyFile)
	if err != nil {
		return nil, fmt.Errorf("read TLS key: %w", err)
	}
	ca, err := os.ReadFile(t.CAFile)
	if err != nil {
		return nil, fmt.Errorf("read TLS CA: %w", err)
	}
	if _, err := tls.X509KeyPair(cert, key); err != nil {
		return nil, fmt.Errorf("TLS certificate %s and key %s: %w", t.CertFile, t.KeyFile, err)
	}
	if !x509.NewCertPool().AppendCertsFromPEM(ca) {
		return nil, fmt.Errorf("TLS CA %s: no PEM certificate", t.CAFile)
	}
	dir := i.tlsDir()
	if err := i.machine().MkdirAll(dir); err != nil {
		return nil, fmt.Errorf("create %s: %w", dir, err)
	}
	files := []struct {
		name string
		data []byte
		mode os.FileMode
	}{{tlsCertName, cert, 0o644}, {tlsKeyName, key, 0o600}, {tlsCAName, ca, 0o644}}
	for _, f := range files {
		if err := i.machine().WriteFile(filepath.Join(dir, f.name), f.data, f.mode); err != nil {
			return nil, fmt.Errorf("write %s: %w", f.name, err)
		}
	}
	return map[string]string{
		"ssl":                      "on",
		"ssl_cert_file":            filepath.Join(dir, tlsCertName),
		"ssl_key_file":             filepath.Join(dir, tlsKeyName),
		"ssl_ca_file":              filepath.Join(dir, tlsCAName),
		"ssl_min_protocol_version": tlsMinProtocol,
	}, nil
}

// hbaConf is pg_hba.conf: password (SCRAM) logins and replication for superUser from loopback, and from every
// allowFrom network: over TLS only (hostssl) when withTLS, else over plain TCP (host), which is for trusted
// networks only since nothing then protects the session's data.
func hbaConf(superUser string, allowFrom []netip.Prefix, withTLS bool) (string, error) {
	var b strings.Builder
	b.WriteString("# Written by fogo.\n" +
		"host all all 127.0.0.1/32 scram-sha-256\n" +
		"host all all ::1/128 scram-sha-256\n")
	fmt.Fprintf(&b, "host replication %s 127.0.0.1/32 scram-sha-256\n", superUser)
	fmt.Fprintf(&b, "host replication %s ::1/128 scram-sha-256\n", superUser)
	kind := "host"
	if withTLS {
		kind = "hostssl"
	}
	for _, p := range allowFrom {
		if !p.IsValid() {
			return "", fmt.Errorf("allowed network %q is not a valid prefix", p)
		}
		cidr := p.Masked().String()
		fmt.Fprintf(&b, "%s all all %s scram-sha-256\n", kind, cidr)
		fmt.Fprintf(&b, "%s replication %s %s scram-sha-256\n", kind, superUser, cidr)
	}
	return b.String(), nil
}
