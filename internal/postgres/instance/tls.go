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
	// InPlace says the files are already installed on the instance's machine where the postgres OS user reads
	// them (an agent installs its host's files once): they are served from there, not copied.
	InPlace bool
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
	if t.InPlace {
		return tlsSettings(t.CertFile, t.KeyFile, t.CAFile), nil
	}
	in, err := InstallHostTLS(i.machine(), i.tlsDir(), *t)
	if err != nil {
		return nil, err
	}
	return tlsSettings(in.CertFile, in.KeyFile, in.CAFile), nil
}

// tlsSettings are the GUCs that serve TLS with these files.
func tlsSettings(cert, key, ca string) map[string]string {
	return map[string]string{
		"ssl":                      "on",
		"ssl_cert_file":            cert,
		"ssl_key_file":             key,
		"ssl_ca_file":              ca,
		"ssl_min_protocol_version": tlsMinProtocol,
	}
}

// InstallHostTLS installs a host's TLS files for every instance of the host in dir (an agent's, at its start):
// owned by the postgres OS user, the key 0600. It returns them as in-place TLSFiles.
func InstallHostTLS(h Host, dir string, src TLSFiles) (*TLSFiles, error) {
	cert, err := os.ReadFile(src.CertFile)
	if err != nil {
		return nil, fmt.Errorf("read TLS certificate: %w", err)
	}
	key, err := os.ReadFile(src.KeyFile)
	if err != nil {
		return nil, fmt.Errorf("read TLS key: %w", err)
	}
	ca, err := os.ReadFile(src.CAFile)
	if err != nil {
		return nil, fmt.Errorf("read TLS CA: %w", err)
	}
	if _, err := tls.X509KeyPair(cert, key); err != nil {
		return nil, fmt.Errorf("TLS certificate %s and key %s: %w", src.CertFile, src.KeyFile, err)
	}
	if !x509.NewCertPool().AppendCertsFromPEM(ca) {
		return nil, fmt.Errorf("TLS CA %s: no PEM certificate", src.CAFile)
	}
	if err := h.MkdirAll(dir); err != nil {
		return nil, fmt.Errorf("create %s: %w", dir, err)
	}
	out := &TLSFiles{CertFile: filepath.Join(dir, tlsCertName), KeyFile: filepath.Join(dir, tlsKeyName),
		CAFile: filepath.Join(dir, tlsCAName), InPlace: true}
	for _, f := range []struct {
		path string
		data []byte
		mode os.FileMode
	}{{out.CertFile, cert, 0o644}, {out.KeyFile, key, 0o600}, {out.CAFile, ca, 0o644}} {
		if err := h.WriteFile(f.path, f.data, f.mode); err != nil {
			return nil, fmt.Errorf("write %s: %w", f.path, err)
		}
	}
	return out, nil
}

// hbaConf is pg_hba.conf: password (SCRAM) logins and replication for superUser from loopback, and from every
// allowFrom network: over TLS only (hostssl) when withTLS, else over plain TCP (host), which is for trusted
// networks only since nothing then protects the session's data.
func hbaConf(superUser string, allowFrom []netip.Prefix, withTLS, isolated bool) (string, error) {
	var b strings.Builder
	b.WriteString("# Written by fogo.\n")
	users := "all"
	if isolated {
		b.WriteString("# Isolated: only fogo's superuser may log in, and nothing may replicate.\n")
		users = superUser
	}
	fmt.Fprintf(&b, "host all %s 127.0.0.1/32 scram-sha-256\n", users)
	fmt.Fprintf(&b, "host all %s ::1/128 scram-sha-256\n", users)
	if !isolated {
		fmt.Fprintf(&b, "host replication %s 127.0.0.1/32 scram-sha-256\n", superUser)
		fmt.Fprintf(&b, "host replication %s ::1/128 scram-sha-256\n", superUser)
	}
	kind := "host"
	if withTLS {
		kind = "hostssl"
	}
	for _, p := range allowFrom {
		if !p.IsValid() {
			return "", fmt.Errorf("allowed network %q is not a valid prefix", p)
		}
		cidr := p.Masked().String()
		fmt.Fprintf(&b, "%s all %s %s scram-sha-256\n", kind, users, cidr)
		if !isolated {
			fmt.Fprintf(&b, "%s replication %s %s scram-sha-256\n", kind, superUser, cidr)
		}
	}
	return b.String(), nil
}
