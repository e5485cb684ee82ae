package agent

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/fogo-db/fogo/internal/postgres/instance"
)

// callTimeout bounds every host API call but a program run (which its context bounds) and a file write (which
// gets a second more per 10 MB): an agent that does not answer within it is treated as unreachable.
const callTimeout = 10 * time.Second

// Client reaches one agent's host API; it is the instance.Host of the instances placed on that agent.
type Client struct {
	Name  string // the agent's name, for errors
	URL   string // https://host:port
	Token string
	HTTP  *http.Client
	// LeaderRev, when set, gives the caller's leadership revision, sent with every call (see LeaderFence).
	LeaderRev func() int64
	// Base, when set, also ends the calls that take no context of their own (see Within).
	Base context.Context
}

// Within returns a copy of c whose calls that take no context (the instance.Host file and process questions)
// also end with ctx, within their own bound: work that yields its lock to a failover stops at once, even in the
// middle of a question to a host that does not answer.
func (c *Client) Within(ctx context.Context) *Client {
	cp := *c
	cp.Base = ctx
	return &cp
}

// background is the context of a call that takes none: Base, or none, bounded by timeout.
func (c *Client) background(timeout time.Duration) (context.Context, context.CancelFunc) {
	base := c.Base
	if base == nil {
		base = context.Background()
	}
	return context.WithTimeout(base, timeout)
}

var _ instance.Host = (*Client)(nil)

// call posts one operation and decodes its answer.
func (c *Client) call(ctx context.Context, op string, req request) (*response, error) {
	if _, ok := ctx.Deadline(); !ok && op != opRun {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, callTimeout)
		defer cancel()
	}
	body, err := json.Marshal(req)
	if err != nil {
		return nil, err
	}
	hr, err := http.NewRequestWithContext(ctx, http.MethodPost, strings.TrimSuffix(c.URL, "/")+apiPrefix+op, bytes.NewReader(body))
	if err != nil {
		return nil, err
	}
	hr.Header.Set("Authorization", "Bearer "+c.Token)
	if c.LeaderRev != nil {
		hr.Header.Set(leaderRevHeader, strconv.FormatInt(c.LeaderRev(), 10))
	}
	hr.Header.Set("Content-Type", "application/json")
	res, err := c.HTTP.Do(hr)
	if err != nil {
		return nil, fmt.Errorf("agent %s: %w", c.Name, err)
	}
	defer res.Body.Close()
	raw, err := io.ReadAll(io.LimitReader(res.Body, maxRequestBytes))
	if err != nil {
		return nil, fmt.Errorf("agent %s: read answer: %w", c.Name, err)
	}
	if res.StatusCode != http.StatusOK {
		var e apiError
		if json.Unmarshal(raw, &e) != nil || e.Error == "" {
			return nil, fmt.Errorf("agent %s: %s", c.Name, res.Status)
		}
		if res.StatusCode == http.StatusForbidden || res.StatusCode == http.StatusConflict {
			return nil, fmt.Errorf("agent %s refused: %s", c.Name, e.Error)
		}
		if e.NotExist {
			return nil, fmt.Errorf("agent %s: %s: %w", c.Name, e.Error, os.ErrNotExist)
		}
		return nil, fmt.Errorf("agent %s: %s", c.Name, e.Error)
	}
	var out response
	if err := json.Unmarshal(raw, &out); err != nil {
		return nil, fmt.Errorf("agent %s: decode answer: %w", c.Name, err)
	}
	return &out, nil
}

func (c *Client) pathOp(op, path string) (*response, error) {
	ctx, cancel := c.background(callTimeout)
	defer cancel()
	return c.call(ctx, op, request{Path: path})
}

// Ping checks that the agent answers with this token.
func (c *Client) Ping(ctx context.Context) error {
	_, err := c.call(ctx, opPing, request{})
	return err
}

// Run runs a PostgreSQL program on the agent's host.
func (c *Client) Run(ctx context.Context, env []string, program string, args ...string) (string, error) {
	res, err := c.call(ctx, opRun, request{Program: program, Args: args, Env: env})
	if err != nil {
		return "", err
	}
	return res.Output, nil
}

// ReadFile reads a file on the agent's host.
func (c *Client) ReadFile(path string) ([]byte, error) {
	res, err := c.pathOp(opReadFile, path)
	if err != nil {
		return nil, err
	}
	return res.Data, nil
}

// WriteFile writes a file on the agent's host.
func (c *Client) WriteFile(path string, data []byte, mode os.FileMode) error {
	ctx, cancel := c.background(callTimeout + time.Duration(len(data)/(10<<20))*time.Second)
	defer cancel()
	_, err := c.call(ctx, opWriteFile, request{Path: path, Data: data, Mode: uint32(mode.Perm())})
	return err
}

// MkdirAll makes a directory on the agent's host.
func (c *Client) MkdirAll(dir string) error { _, err := c.pathOp(opMkdirAll, dir); return err }

// Remove deletes a file on the agent's host.
func (c *Client) Remove(path string) error { _, err := c.pathOp(opRemove, path); return err }

// RemoveAll deletes a tree on the agent's host.
func (c *Client) RemoveAll(path string) error { _, err := c.pathOp(opRemoveAll, path); return err }

// Exists reports whether path exists on the agent's host.
func (c *Client) Exists(path string) (bool, error) {
	res, err := c.pathOp(opExists, path)
	if err != nil {
		return false, err
	}
	return res.Exists, nil
}

// ReadDir lists the directories in dir on the agent's host.
func (c *Client) ReadDir(dir string) ([]string, error) {
	res, err := c.pathOp(opReadDir, dir)
	if err != nil {
		return nil, err
	}
	return res.Names, nil
}

// SyncDir makes a directory's entries durable on the agent's host.
func (c *Client) SyncDir(dir string) error { _, err := c.pathOp(opSyncDir, dir); return err }

// Postmaster identifies dir's postmaster on the agent's host.
func (c *Client) Postmaster(dir string) (instance.Postmaster, error) {
	res, err := c.pathOp(opPostmaster, dir)
	if err != nil {
		return instance.Postmaster{}, err
	}
	return res.Postmaster, nil
}

// RemoveStaleLock deletes a stale postmaster.pid on the agent's host.
func (c *Client) RemoveStaleLock(dir string) error {
	_, err := c.pathOp(opRemoveStaleLock, dir)
	return err
}

// Signal signals dir's postmaster on the agent's host.
func (c *Client) Signal(dir string, sig syscall.Signal) error {
	ctx, cancel := c.background(callTimeout)
	defer cancel()
	_, err := c.call(ctx, opSignal, request{Path: dir, Signal: sig})
	return err
}

// Shutdown stops dir's postmaster on the agent's host and waits there until it is gone.
func (c *Client) Shutdown(ctx context.Context, dir string, sig syscall.Signal, timeout time.Duration) error {
	cctx, cancel := context.WithTimeout(ctx, timeout+callTimeout)
	defer cancel()
	_, err := c.call(cctx, opShutdown, request{Path: dir, Signal: sig, TimeoutMS: timeout.Milliseconds()})
	return err
}

// KillPostmaster kills dir's postmaster and its processes on the agent's host.
func (c *Client) KillPostmaster(dir string) error {
	_, err := c.pathOp(opKillPostmaster, dir)
	return err
}
