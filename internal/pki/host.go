package pki

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"fmt"
	"net"
	"net/netip"
	"path/filepath"
	"slices"
	"strings"
	"time"
)

// ensureHost keeps the host's certificate if it still fits the request and issues a new one (with a new key)
// otherwise.
func ensureHost(dir string, ca *authority, r request, now time.Time) (HostResult, error) {
	hr := HostResult{
		Name:     r.name,
		CertFile: filepath.Join(dir, r.name+".pem"),
		KeyFile:  filepath.Join(dir, r.name+"-key.pem"),
	}
	haveCert, err := exists(hr.CertFile)
	if err != nil {
		return hr, err
	}
	haveKey, err := exists(hr.KeyFile)
	if err != nil {
		return hr, err
	}
	hr.Status = Created
	if haveCert || haveKey {
		reason := unfit(hr.CertFile, hr.KeyFile, ca, r, now)
		if reason == "" {
			hr.Status = Kept
			return hr, nil
		}
		hr.Status, hr.Reason = Reissued, reason
	}
	if err := issueHost(hr.CertFile, hr.KeyFile, ca, r, now); err != nil {
		return hr, err
	}
	return hr, nil
}

// unfit says why the existing certificate and key cannot be kept, or "" if they can.
func unfit(certPath, keyPath string, ca *authority, r request, now time.Time) string {
	cert, err := readCert(certPath)
	if err != nil {
		return fmt.Sprintf("certificate unreadable: %v", err)
	}
	if _, err := readKey(keyPath, cert); err != nil {
		return fmt.Sprintf("key unusable: %v", err)
	}
	roots := x509.NewCertPool()
	roots.AddCert(ca.cert)
	for _, usage := range []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth} {
		_, err := cert.Verify(x509.VerifyOptions{Roots: roots, CurrentTime: now, KeyUsages: []x509.ExtKeyUsage{usage}})
		if err != nil {
			return fmt.Sprintf("not valid from this CA: %v", err)
		}
	}
	if cert.NotAfter.Sub(now) < renewBefore {
		return fmt.Sprintf("expires on %s", cert.NotAfter.UTC().Format(time.DateOnly))
	}
	var missing []string
	for _, ip := range r.ips {
		if !slices.ContainsFunc(cert.IPAddresses, func(c net.IP) bool {
			a, ok := netip.AddrFromSlice(c)
			return ok && a.Unmap() == ip
		}) {
			missing = append(missing, ip.String())
		}
	}
	for _, name := range r.dns {
		if !slices.ContainsFunc(cert.DNSNames, func(c string) bool { return strings.EqualFold(c, name) }) {
			missing = append(missing, name)
		}
	}
	if len(missing) > 0 {
		return "does not cover " + strings.Join(missing, ", ")
	}
	return ""
}

// issueHost writes a new key and a certificate for it signed by ca, for TLS server and client authentication.
// The key is written first: after a crash in between, the old certificate no longer matches it and the next run
// reissues.
func issueHost(certPath, keyPath string, ca *authority, r request, now time.Time) error {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return fmt.Errorf("generate key: %w", err)
	}
	serial, err := randomSerial()
	if err != nil {
		return err
	}
	notAfter := now.Add(hostValidity)
	if notAfter.After(ca.cert.NotAfter) {
		notAfter = ca.cert.NotAfter
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: r.name},
		NotBefore:    now.Add(-clockSkew),
		NotAfter:     notAfter,
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		DNSNames:     r.dns,
	}
	for _, ip := range r.ips {
		tmpl.IPAddresses = append(tmpl.IPAddresses, net.IP(ip.AsSlice()))
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		return fmt.Errorf("create certificate: %w", err)
	}
	keyPEM, err := encodeKey(key)
	if err != nil {
		return err
	}
	if err := writeAtomic(keyPath, keyPEM, keyMode); err != nil {
		return err
	}
	return writeAtomic(certPath, encodeCert(der), certMode)
}
