// Package pki creates the certificates a small fogo cluster needs: one private certificate authority and, for
// every host, one certificate it signs. The host certificate is valid for both TLS server and client
// authentication, so the same pair serves etcd (peer and client), the agent's RPC, PostgreSQL and the API.
//
// EnsureCluster is idempotent. An existing CA is always reused and never overwritten; an existing host
// certificate is kept while it is signed by that CA, has its key beside it, covers the requested names and
// addresses and is not about to expire, and is reissued (with a new key) otherwise. Files are written atomically:
// keys 0600, certificates 0644, in a directory that only its owner can write.
package pki

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"
)

// Host is one machine of the cluster: its name (used for the file names and as a DNS name in its certificate)
// and the IP addresses or DNS names other hosts reach it by.
type Host struct {
	Name  string
	Addrs []string
}

// Status says what EnsureCluster did with a certificate.
type Status string

const (
	// Created: there was no certificate; a new one (and key) was written.
	Created Status = "created"
	// Kept: the existing certificate was valid for the request and left untouched.
	Kept Status = "kept"
	// Reissued: the existing certificate did not fit (see HostResult.Reason); a new one and a new key replaced it.
	Reissued Status = "reissued"
)

// HostResult is what happened to one host's certificate.
type HostResult struct {
	Name     string
	Status   Status
	Reason   string // why it was reissued; empty otherwise
	CertFile string
	KeyFile  string
}

// Result is what EnsureCluster did, in the order of the hosts it was given.
type Result struct {
	CA        Status // Created or Kept
	CAFile    string
	CAKeyFile string
	Hosts     []HostResult
}

// Validity periods. A host certificate lives 397 days, the longest browsers accept; renewBefore is how close to
// its end a host certificate is reissued by a new run.
const (
	caValidity   = 10 * 365 * 24 * time.Hour
	hostValidity = 397 * 24 * time.Hour
	renewBefore  = 30 * 24 * time.Hour
	// clockSkew backdates NotBefore so that a host whose clock is a little behind accepts a fresh certificate.
	clockSkew = time.Hour
)

// CA file names inside the output directory.
const (
	CACertName = "ca.pem"
	CAKeyName  = "ca-key.pem"
)

// EnsureCluster makes sure dir holds a CA and a certificate for every host (see the package comment). It checks
// every host before writing anything, so a bad name or address changes nothing on disk.
func EnsureCluster(dir string, hosts []Host) (Result, error) {
	if len(hosts) == 0 {
		return Result{}, errors.New("pki: no hosts given")
	}
	reqs := make([]request, 0, len(hosts))
	seen := map[string]bool{}
	for _, h := range hosts {
		r, err := newRequest(h)
		if err != nil {
			return Result{}, fmt.Errorf("pki: %w", err)
		}
		if seen[r.name] {
			return Result{}, fmt.Errorf("pki: host %q given twice", r.name)
		}
		seen[r.name] = true
		reqs = append(reqs, r)
	}
	if err := ensureDir(dir); err != nil {
		return Result{}, fmt.Errorf("pki: %w", err)
	}
	res := Result{CAFile: filepath.Join(dir, CACertName), CAKeyFile: filepath.Join(dir, CAKeyName)}
	ca, status, err := ensureCA(dir, time.Now())
	if err != nil {
		return Result{}, fmt.Errorf("pki: %w", err)
	}
	res.CA = status
	for _, r := range reqs {
		hr, err := ensureHost(dir, ca, r, time.Now())
		if err != nil {
			return res, fmt.Errorf("pki: host %s: %w", r.name, err)
		}
		res.Hosts = append(res.Hosts, hr)
	}
	return res, nil
}

// ensureDir creates dir (0700) if it is missing, and refuses an existing one that others can write: whoever can
// write there could swap the CA.
func ensureDir(dir string) error {
	if dir == "" {
		return errors.New("no output directory given")
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("create %s: %w", dir, err)
	}
	fi, err := os.Stat(dir)
	if err != nil {
		return err
	}
	if !fi.IsDir() {
		return fmt.Errorf("%s is not a directory", dir)
	}
	if fi.Mode().Perm()&0o022 != 0 {
		return fmt.Errorf("%s is writable by group or others (mode %04o); use a private directory", dir, fi.Mode().Perm())
	}
	return nil
}
