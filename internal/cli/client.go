package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// APIVersion is the api-version the CLI sends.
const APIVersion = "2023-08-01"

// Client sends ARM requests to a fogo server.
type Client struct {
	Endpoint string // e.g. http://127.0.0.1:7400
	Token    string
	HTTP     *http.Client
	// Progress receives one line per change of a long-running operation's state; nil discards it.
	Progress io.Writer
	// PollInterval overrides the server's Retry-After when positive (tests).
	PollInterval time.Duration
}

// ARMError is an error answered by the API in the ARM envelope.
type ARMError struct {
	Status  int
	Code    string
	Message string
}

func (e *ARMError) Error() string {
	if e.Status == 0 {
		return fmt.Sprintf("(%s) %s", e.Code, e.Message)
	}
	return fmt.Sprintf("(%s) %s [HTTP %d]", e.Code, e.Message, e.Status)
}

// Response is a decoded API answer.
type Response struct {
	Status int
	Header http.Header
	Body   []byte
}

// Do sends one request. A non-2xx answer is returned as an *ARMError.
func (c *Client) Do(ctx context.Context, method, path string, body any) (*Response, error) {
	u, err := c.url(path)
	if err != nil {
		return nil, err
	}
	var rd io.Reader
	if body != nil {
		raw, err := json.Marshal(body)
		if err != nil {
			return nil, fmt.Errorf("encode request: %w", err)
		}
		rd = bytes.NewReader(raw)
	}
	req, err := http.NewRequestWithContext(ctx, method, u, rd)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Authorization", "Bearer "+c.Token)
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	hc := c.HTTP
	if hc == nil {
		hc = http.DefaultClient
	}
	resp, err := hc.Do(req)
	if err != nil {
		return nil, fmt.Errorf("%s %s: %w (is `fogo serve` running at %s?)", method, redactQuery(u), err, c.Endpoint)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, fmt.Errorf("%s %s: read answer: %w", method, redactQuery(u), err)
	}
	r := &Response{Status: resp.StatusCode, Header: resp.Header, Body: raw}
	if resp.StatusCode >= 300 {
		return r, decodeError(resp.StatusCode, raw)
	}
	return r, nil
}

// url makes an absolute URL with the api-version from a path or an absolute URL (operation links).
func (c *Client) url(path string) (string, error) {
	if !strings.HasPrefix(path, "http://") && !strings.HasPrefix(path, "https://") {
		path = strings.TrimRight(c.Endpoint, "/") + path
	}
	u, err := url.Parse(path)
	if err != nil {
		return "", fmt.Errorf("bad URL %q: %w", path, err)
	}
	q := u.Query()
	if !q.Has("api-version") {
		q.Set("api-version", APIVersion)
		u.RawQuery = q.Encode()
	}
	return u.String(), nil
}

func redactQuery(u string) string {
	if i := strings.IndexByte(u, '?'); i >= 0 {
		return u[:i]
	}
	return u
}

func decodeError(status int, raw []byte) error {
	var env struct {
		Error struct {
			Code    string `json:"code"`
			Message string `json:"message"`
		} `json:"error"`
	}
	if json.Unmarshal(raw, &env) == nil && env.Error.Code != "" {
		return &ARMError{Status: status, Code: env.Error.Code, Message: env.Error.Message}
	}
	msg := strings.TrimSpace(string(raw))
	if msg == "" {
		msg = http.StatusText(status)
	}
	return &ARMError{Status: status, Code: "HTTP" + strconv.Itoa(status), Message: msg}
}

// operationStatus is the Azure-AsyncOperation resource.
type operationStatus struct {
	Status     string `json:"status"`
	Properties struct {
		Step string `json:"step"`
	} `json:"properties"`
	Error *struct {
		Code    string `json:"code"`
		Message string `json:"message"`
	} `json:"error"`
}

// Wait follows a long-running operation started by r until it ends. It returns nil when the operation
// succeeded, the operation's ARM error when it failed, and nothing to wait for when r was synchronous.
func (c *Client) Wait(ctx context.Context, what string, r *Response) error {
	link := r.Header.Get("Azure-AsyncOperation")
	if link == "" {
		return nil
	}
	start := time.Now()
	last := ""
	for {
		resp, err := c.Do(ctx, http.MethodGet, link, nil)
		if err != nil {
			return fmt.Errorf("%s: poll operation: %w", what, err)
		}
		var st operationStatus
		if err := json.Unmarshal(resp.Body, &st); err != nil {
			return fmt.Errorf("%s: decode operation status: %w", what, err)
		}
		line := st.Status
		if st.Properties.Step != "" && st.Status == "InProgress" {
			line += " (" + st.Properties.Step + ")"
		}
		if line != last && c.Progress != nil {
			fmt.Fprintf(c.Progress, "%s: %s after %s\n", what, line, time.Since(start).Round(100*time.Millisecond))
		}
		last = line
		switch st.Status {
		case "Succeeded":
			return nil
		case "Failed", "Canceled":
			if st.Error != nil {
				return &ARMError{Code: st.Error.Code, Message: st.Error.Message}
			}
			return fmt.Errorf("%s: operation %s", what, strings.ToLower(st.Status))
		}
		if err := sleep(ctx, c.retryAfter(resp.Header)); err != nil {
			return fmt.Errorf("%s: %w (the operation goes on in fogo)", what, err)
		}
	}
}

func (c *Client) retryAfter(h http.Header) time.Duration {
	if c.PollInterval > 0 {
		return c.PollInterval
	}
	if s, err := strconv.Atoi(h.Get("Retry-After")); err == nil && s > 0 {
		return time.Duration(s) * time.Second
	}
	return time.Second
}

func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}
