package main

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/spf13/pflag"

	"github.com/fogo-db/fogo/internal/controlplane/store"
)

// etcdFlags are serve's flags for keeping the state in etcd.
type etcdFlags struct {
	endpoints                 []string
	prefix                    string
	caFile, certFile, keyFile string
	username, passwordFile    string
}

func (e *etcdFlags) register(f *pflag.FlagSet) {
	f.StringSliceVar(&e.endpoints, "etcd-endpoints", nil, "keep fogo's state in etcd at these endpoints (host:port,...; https:// with the TLS flags) instead of DATA-DIR/state.db; several fogo processes may share it, one is elected the controller")
	f.StringVar(&e.prefix, "etcd-prefix", store.DefaultEtcdPrefix, "key prefix of fogo's state in etcd")
	f.StringVar(&e.caFile, "etcd-cacert", "", "CA certificate that signed the etcd servers' certificates (enables TLS)")
	f.StringVar(&e.certFile, "etcd-cert", "", "client certificate for etcd (with --etcd-key)")
	f.StringVar(&e.keyFile, "etcd-key", "", "client key for etcd")
	f.StringVar(&e.username, "etcd-username", "", "etcd user (with --etcd-password-file)")
	f.StringVar(&e.passwordFile, "etcd-password-file", "", "file holding the etcd user's password (never on the command line)")
}

// config is the store's etcd configuration, nil without --etcd-endpoints.
func (e *etcdFlags) config() (*store.EtcdConfig, error) {
	if len(e.endpoints) == 0 {
		if e.caFile != "" || e.certFile != "" || e.keyFile != "" || e.username != "" || e.passwordFile != "" {
			return nil, errors.New("the --etcd-* flags need --etcd-endpoints")
		}
		return nil, nil
	}
	cfg := &store.EtcdConfig{Endpoints: e.endpoints, Prefix: e.prefix, Username: e.username}
	if (e.username == "") != (e.passwordFile == "") {
		return nil, errors.New("--etcd-username and --etcd-password-file go together")
	}
	if e.passwordFile != "" {
		pw, err := os.ReadFile(e.passwordFile)
		if err != nil {
			return nil, fmt.Errorf("--etcd-password-file: %w", err)
		}
		cfg.Password = strings.TrimRight(string(pw), "\r\n")
	}
	if (e.certFile == "") != (e.keyFile == "") {
		return nil, errors.New("--etcd-cert and --etcd-key go together")
	}
	if e.caFile != "" || e.certFile != "" {
		t := &tls.Config{MinVersion: tls.VersionTLS12}
		if e.caFile != "" {
			pem, err := os.ReadFile(e.caFile)
			if err != nil {
				return nil, fmt.Errorf("--etcd-cacert: %w", err)
			}
			t.RootCAs = x509.NewCertPool()
			if !t.RootCAs.AppendCertsFromPEM(pem) {
				return nil, fmt.Errorf("--etcd-cacert %s: no PEM certificate in it", e.caFile)
			}
		}
		if e.certFile != "" {
			c, err := tls.LoadX509KeyPair(e.certFile, e.keyFile)
			if err != nil {
				return nil, fmt.Errorf("--etcd-cert/--etcd-key: %w", err)
			}
			t.Certificates = []tls.Certificate{c}
		}
		cfg.TLS = t
	}
	return cfg, nil
}
