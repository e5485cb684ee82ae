package pki

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"fmt"
	"math/big"
	"path/filepath"
	"time"
)

// authority is the loaded CA: its certificate and signing key.
type authority struct {
	cert *x509.Certificate
	key  crypto.Signer
}

// ensureCA loads the CA from dir, or creates it if neither of its files exists. Half a CA (one file without the
// other), a key that does not match, or an expired CA is an error: the CA is never overwritten.
func ensureCA(dir string, now time.Time) (*authority, Status, error) {
	certPath, keyPath := filepath.Join(dir, CACertName), filepath.Join(dir, CAKeyName)
	haveCert, err := exists(certPath)
	if err != nil {
		return nil, "", fmt.Errorf("CA: %w", err)
	}
	haveKey, err := exists(keyPath)
	if err != nil {
		return nil, "", fmt.Errorf("CA: %w", err)
	}
	switch {
	case haveCert && haveKey:
		ca, err := loadCA(certPath, keyPath, now)
		if err != nil {
			return nil, "", fmt.Errorf("CA: %w", err)
		}
		return ca, Kept, nil
	case haveCert || haveKey:
		return nil, "", fmt.Errorf("CA: %s and %s must both exist or both be absent; refusing to overwrite either",
			certPath, keyPath)
	}
	ca, err := newCA(now)
	if err != nil {
		return nil, "", fmt.Errorf("CA: %w", err)
	}
	keyPEM, err := encodeKey(ca.key.(*ecdsa.PrivateKey))
	if err != nil {
		return nil, "", fmt.Errorf("CA: %w", err)
	}
	// The key first: a crash in between leaves a key without a certificate, which the next run reports.
	if err := writeAtomic(keyPath, keyPEM, keyMode); err != nil {
		return nil, "", fmt.Errorf("CA: %w", err)
	}
	if err := writeAtomic(certPath, encodeCert(ca.cert.Raw), certMode); err != nil {
		return nil, "", fmt.Errorf("CA: %w", err)
	}
	return ca, Created, nil
}

func loadCA(certPath, keyPath string, now time.Time) (*authority, error) {
	cert, err := readCert(certPath)
	if err != nil {
		return nil, err
	}
	if !cert.IsCA || cert.KeyUsage&x509.KeyUsageCertSign == 0 {
		return nil, fmt.Errorf("%s is not a CA certificate", certPath)
	}
	if now.After(cert.NotAfter) {
		return nil, fmt.Errorf("%s expired on %s; renewing the CA is manual (see docs/certs.md)", certPath,
			cert.NotAfter.UTC().Format(time.DateOnly))
	}
	key, err := readKey(keyPath, cert)
	if err != nil {
		return nil, err
	}
	return &authority{cert: cert, key: key}, nil
}

// newCA makes a self-signed ECDSA P-256 CA valid for ten years that may sign only end-entity certificates.
func newCA(now time.Time) (*authority, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("generate key: %w", err)
	}
	serial, err := randomSerial()
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: "fogo cluster CA"},
		NotBefore:             now.Add(-clockSkew),
		NotAfter:              now.Add(caValidity),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, fmt.Errorf("create certificate: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	return &authority{cert: cert, key: key}, nil
}

// randomSerial is a random positive 128-bit serial number.
func randomSerial() (*big.Int, error) {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 128))
	if err != nil {
		return nil, fmt.Errorf("serial number: %w", err)
	}
	return n.Add(n, big.NewInt(1)), nil
}
