package pki_test

import (
	"crypto/tls"
	"io"
	"net"
	"path/filepath"
	"testing"
	"time"
)

// TestTLSHandshake: a server with db3's certificate on 127.0.0.1, a client trusting ca.pem, then mutual
// authentication with db1's certificate as the client's, which the server verifies against the same CA.
func TestTLSHandshake(t *testing.T) {
	dir := t.TempDir()
	res := ensure(t, dir, cluster)
	serverPair, err := tls.LoadX509KeyPair(filepath.Join(dir, "db3.pem"), filepath.Join(dir, "db3-key.pem"))
	if err != nil {
		t.Fatal(err)
	}
	clientPair, err := tls.LoadX509KeyPair(res.Hosts[0].CertFile, res.Hosts[0].KeyFile)
	if err != nil {
		t.Fatal(err)
	}
	roots := pool(t, dir)
	l, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{
		Certificates: []tls.Certificate{serverPair},
		ClientCAs:    roots,
		ClientAuth:   tls.VerifyClientCertIfGiven,
		MinVersion:   tls.VersionTLS12,
	})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	peers := make(chan string, 2)
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			tc := c.(*tls.Conn)
			_ = tc.SetDeadline(time.Now().Add(5 * time.Second))
			if err := tc.Handshake(); err != nil {
				peers <- "error: " + err.Error()
				c.Close()
				continue
			}
			name := "anonymous"
			if st := tc.ConnectionState(); len(st.PeerCertificates) > 0 {
				name = st.PeerCertificates[0].Subject.CommonName
			}
			_, _ = io.WriteString(tc, "hi")
			peers <- name
			c.Close()
		}
	}()
	dial := func(certs []tls.Certificate) string {
		t.Helper()
		c, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", l.Addr().String(),
			&tls.Config{RootCAs: roots, ServerName: "127.0.0.1", Certificates: certs})
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		b, err := io.ReadAll(c)
		if err != nil || string(b) != "hi" {
			t.Fatalf("read %q %v", b, err)
		}
		return <-peers
	}
	if got := dial(nil); got != "anonymous" {
		t.Errorf("server-auth only: server saw %q", got)
	}
	if got := dial([]tls.Certificate{clientPair}); got != "db1" {
		t.Errorf("mutual: server saw %q, want db1", got)
	}
	// A client trusting another CA refuses the server.
	other := t.TempDir()
	ensure(t, other, cluster[:1])
	_, err = tls.Dial("tcp", l.Addr().String(), &tls.Config{RootCAs: pool(t, other), ServerName: "127.0.0.1"})
	if err == nil {
		t.Error("client trusting another CA connected")
	}
	<-peers
}
