package chaos

// Calls to fogo's API that outlast fogo's own restarts: a campaign kills fogo on purpose.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/fogo-db/fogo/internal/cli"
)

// get reads path into v, retrying while fogo does not answer (bounded).
func (c *campaign) get(ctx context.Context, path string, v any) error {
	var last error
	for deadline := time.Now().Add(60 * time.Second); time.Now().Before(deadline); sleep(ctx, 200*time.Millisecond) {
		cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		r, err := c.api.Do(cctx, http.MethodGet, path, nil)
		cancel()
		if err == nil {
			return json.Unmarshal(r.Body, v)
		}
		last = err
		var ae *cli.ARMError
		if errors.As(err, &ae) || ctx.Err() != nil {
			return err
		}
	}
	return fmt.Errorf("GET %s: %w", path, last)
}

// change sends a request and follows the operation it starts until it ends.
func (c *campaign) change(ctx context.Context, method, path string, body any) error {
	r, err := c.api.Do(ctx, method, path, body)
	if err != nil {
		return err
	}
	st, err := c.follow(ctx, r, 180*time.Second)
	if err != nil {
		return err
	}
	if st.Status != "Succeeded" {
		return fmt.Errorf("%s %s: operation %s: %s", method, path, st.Status, st.errorText())
	}
	return nil
}

// opStatus is the part of an operation's status a campaign reads.
type opStatus struct {
	Name       string `json:"name"`
	Status     string `json:"status"`
	Properties struct {
		Step     string   `json:"step"`
		Warnings []string `json:"warnings"`
	} `json:"properties"`
	Error *struct {
		Code    string `json:"code"`
		Message string `json:"message"`
	} `json:"error"`
}

func (s *opStatus) errorText() string {
	if s.Error == nil {
		return ""
	}
	return s.Error.Code + ": " + s.Error.Message
}

// operationURL is the Azure-AsyncOperation URL of an answer ("" for a synchronous one).
func operationURL(r *cli.Response) string { return r.Header.Get("Azure-AsyncOperation") }

// operationID is the operation's ID, the URL's last segment.
func operationID(url string) string {
	url, _, _ = strings.Cut(url, "?")
	return url[strings.LastIndexByte(url, '/')+1:]
}

// follow polls the operation r started until it ends, through fogo's restarts, bounded by within.
func (c *campaign) follow(ctx context.Context, r *cli.Response, within time.Duration) (*opStatus, error) {
	url := operationURL(r)
	if url == "" {
		return &opStatus{Status: "Succeeded"}, nil
	}
	return c.followURL(ctx, url, within)
}

func (c *campaign) followURL(ctx context.Context, url string, within time.Duration) (*opStatus, error) {
	deadline := time.Now().Add(within)
	for {
		var st opStatus
		cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		resp, err := c.api.Do(cctx, http.MethodGet, url, nil)
		cancel()
		if err == nil && json.Unmarshal(resp.Body, &st) == nil && st.Status != "InProgress" && st.Status != "" {
			return &st, nil
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("operation %s still %q after %s (%v)", operationID(url), st.Status, within, err)
		}
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		sleep(ctx, 100*time.Millisecond)
	}
}

// groupState is the group's replicationState and primary as the east server sees them.
func (c *campaign) groupState(ctx context.Context) (state, role string, err error) {
	var g struct {
		Properties struct {
			ReplicationState string `json:"replicationState"`
			ReplicationRole  string `json:"replicationRole"`
		} `json:"properties"`
	}
	cctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	r, err := c.api.Do(cctx, http.MethodGet, c.groupPath(east), nil)
	if err != nil {
		return "", "", err
	}
	if err := json.Unmarshal(r.Body, &g); err != nil {
		return "", "", err
	}
	return g.Properties.ReplicationState, g.Properties.ReplicationRole, nil
}

// secondaryServer is the server that is the group's geo-secondary now.
func (c *campaign) secondaryServer(ctx context.Context) (string, error) {
	_, role, err := c.groupState(ctx)
	if err != nil {
		return "", err
	}
	if role == "Primary" {
		return west, nil
	}
	return east, nil
}

func jsonInto(r *cli.Response, v any) error { return json.Unmarshal(r.Body, v) }
