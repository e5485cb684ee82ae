package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/fogo-db/fogo/internal/clustersim"
	"github.com/fogo-db/fogo/internal/testutil/etcdtest"
	"github.com/fogo-db/fogo/internal/testutil/netns"
	"github.com/fogo-db/fogo/internal/testutil/pgtest"
)

// testCluster starts a cluster whose fogo processes are this test binary (see TestMain).
func testClusterOptions(t *testing.T) clustersim.Options {
	t.Helper()
	netns.Require(t)
	pgtest.Bin(t)
	etcdtest.Bin(t)
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	return clustersim.Options{Bin: exe, Env: []string{"FOGO_TEST_AS_FOGO=1"}, LeaseTTL: 6 * time.Second,
		GraceUnit: time.Second, Progress: testLog{t}}
}

type testLog struct{ t *testing.T }

func (l testLog) Write(p []byte) (int, error) {
	l.t.Log(strings.TrimSpace(string(p)))
	return len(p), nil
}

// TestTryCluster runs try-cluster's core (everything but the wait for Ctrl-C): the API answers with the token
// printed, a server in each region is placed on that region's agent, and Close leaves no namespace, link or file.
func TestTryCluster(t *testing.T) {
	o := testClusterOptions(t)
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	var out bytes.Buffer
	c, err := startTryCluster(ctx, o, &out)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	defer func() {
		if t.Failed() {
			for _, p := range []*clustersim.Proc{c.Controller, c.East, c.West} {
				t.Logf("%s log:\n%s", p.Name, p.LogTail())
			}
		}
	}()
	for _, want := range []string{c.URL, c.Token, c.East.Host.Veth(), "fogo fg set-primary", "ip link set"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("the instructions lack %q:\n%s", want, out.String())
		}
	}
	cl := c.Client()
	base := "/subscriptions/" + defaultSubscription + "/resourceGroups/default/providers/Microsoft.Sql/servers/"
	for name, want := range map[string]string{"east": "east-1", "west": "west-1"} {
		r, err := cl.Do(ctx, http.MethodPut, base+name, map[string]any{"location": name + "us",
			"properties": map[string]any{"administratorLogin": "fogoadmin", "administratorLoginPassword": "Try-Cluster-1!"}})
		if err == nil {
			err = cl.Wait(ctx, "create "+name, r)
		}
		if err != nil {
			t.Fatalf("create server %s: %v", name, err)
		}
		r, err = cl.Do(ctx, http.MethodGet, base+name, nil)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Contains(r.Body, []byte(`"host":"`+want+`"`)) {
			t.Fatalf("server %s not placed on %s: %s", name, want, r.Body)
		}
	}
	// The agents serve the endpoints too, with TLS as the controller's: the list names every host, and the east
	// agent's endpoint answers an SSLRequest with S.
	r, err := cl.Do(ctx, http.MethodGet, base+"east", nil)
	if err != nil {
		t.Fatal(err)
	}
	var srv struct {
		Properties struct {
			Endpoint string `json:"endpoint"`
		} `json:"properties"`
	}
	if err := json.Unmarshal(r.Body, &srv); err != nil {
		t.Fatal(err)
	}
	var onEast string
	for _, h := range []*netns.Host{c.East.Host, c.West.Host, c.Controller.Host} {
		found := false
		for _, ep := range strings.Split(srv.Properties.Endpoint, ",") {
			if host, _, _ := strings.Cut(ep, ":"); host == h.Addr().String() {
				found = true
				if h == c.East.Host {
					onEast = ep
				}
			}
		}
		if !found {
			t.Fatalf("server east's endpoint %q does not name %s", srv.Properties.Endpoint, h.Addr())
		}
	}
	if err := answersTLS(onEast, 20*time.Second); err != nil {
		t.Fatalf("the east agent's endpoint %s: %v", onEast, err)
	}
	// A wrong token is refused.
	bad := c.Client()
	bad.Token = "wrong"
	if _, err := bad.Do(ctx, http.MethodGet, base+"east", nil); err == nil {
		t.Fatal("a wrong token was accepted")
	}

	c.Close()
	if _, err := os.Stat(c.Dir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the cluster's directory %s is still there: %v", c.Dir, err)
	}
	for _, args := range [][]string{{"netns", "list"}, {"link", "show"}} {
		raw, err := exec.Command("ip", args...).Output()
		if err != nil {
			t.Fatal(err)
		}
		if strings.Contains(string(raw), "fg"+c.Net.ID) {
			t.Errorf("ip %s still shows the cluster's id %s:\n%s", strings.Join(args, " "), c.Net.ID, raw)
		}
	}
}

// answersTLS waits up to limit for the gateway endpoint at addr to answer a PostgreSQL SSLRequest with S.
func answersTLS(addr string, limit time.Duration) error {
	deadline := time.Now().Add(limit)
	for {
		err := sslRequest(addr)
		if err == nil || time.Now().After(deadline) {
			return err
		}
		time.Sleep(200 * time.Millisecond)
	}
}

func sslRequest(addr string) error {
	conn, err := net.DialTimeout("tcp", addr, time.Second)
	if err != nil {
		return err
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(2 * time.Second))
	if _, err := conn.Write([]byte{0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f}); err != nil {
		return err
	}
	b := make([]byte, 1)
	if _, err := conn.Read(b); err != nil {
		return err
	}
	if b[0] != 'S' {
		return fmt.Errorf("SSLRequest answered %q, want S", b[0])
	}
	return nil
}
