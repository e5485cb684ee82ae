package agent

import (
	"context"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/fogo-db/fogo/internal/postgres/instance"
)

// maxRequestBytes bounds a request body: the largest is a slot's serialized snapshots written into a standby.
const maxRequestBytes = 600 << 20

// maxShutdownWait bounds how long a shutdown request waits for the postmaster to end.
const maxShutdownWait = 10 * time.Minute

// programs are the PostgreSQL programs the host API runs.
var programs = map[string]bool{"initdb": true, "pg_ctl": true, "pg_basebackup": true, "pg_rewind": true, "pg_controldata": true}

// pathFlags are the options whose value is a path: it must lie inside the instances directory.
var pathFlags = map[string]bool{
	"-D": true, "--pgdata": true, "-l": true, "--log": true, "--pwfile": true, "--target-pgdata": true,
	"--source-pgdata": true, "--waldir": true,
}

// refusedFlags are options that would let a caller reach beyond the instance: pg_ctl's -o passes any setting to
// the server (archive_command runs a shell); pg_basebackup's -T relocates tablespaces anywhere.
var refusedFlags = []string{"-o", "--options", "-T", "--tablespace-mapping", "-p", "--pgdata-path"}

// allowedEnv are the environment variables a caller may set for a program.
var allowedEnv = []string{"PGPASSWORD=", "PGCONNECT_TIMEOUT="}

// Server serves the host API for the instances under Root.
type Server struct {
	Name  string
	Root  string // the instances directory, absolute
	Host  instance.LocalHost
	Token string
	Log   *slog.Logger
	// Fenced, once set, refuses every request: the agent lost its lease and fences its primaries.
	Fenced atomic.Bool
	// Leader, when set, admits changes only from the elected controller (see LeaderFence).
	Leader *LeaderFence
}

// ServeHTTP answers one host API request.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost || !strings.HasPrefix(r.URL.Path, apiPrefix) {
		writeError(w, http.StatusNotFound, errors.New("no such host API operation"))
		return
	}
	if s.Fenced.Load() {
		writeError(w, http.StatusServiceUnavailable, errors.New("the agent lost its lease and fenced its primaries; it acts on nothing until it registers again"))
		return
	}
	if !s.authorized(r) {
		writeError(w, http.StatusUnauthorized, errors.New("missing or wrong agent token"))
		return
	}
	var req request
	if err := json.NewDecoder(io.LimitReader(r.Body, maxRequestBytes)).Decode(&req); err != nil {
		writeError(w, http.StatusBadRequest, fmt.Errorf("decode request: %w", err))
		return
	}
	op := strings.TrimPrefix(r.URL.Path, apiPrefix)
	var err error
	var resp *response
	if s.Leader != nil && !readOnlyOps[op] {
		rev, _ := strconv.ParseInt(r.Header.Get(leaderRevHeader), 10, 64)
		err = s.Leader.Check(r.Context(), rev)
	}
	if err == nil {
		resp, err = s.do(r.Context(), op, &req)
	}
	if err != nil {
		status := http.StatusInternalServerError
		var refused *refusal
		if errors.As(err, &refused) {
			status = http.StatusForbidden
			if strings.HasPrefix(refused.msg, "stale controller") {
				status = http.StatusConflict
			}
			s.Log.Warn("refused a host API request", "op", op, "reason", err)
		}
		writeError(w, status, err)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(resp)
}

func (s *Server) authorized(r *http.Request) bool {
	got, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	return ok && s.Token != "" && subtle.ConstantTimeCompare([]byte(got), []byte(s.Token)) == 1
}

// refusal is a request the agent will not act on (a path outside its directory, a program or option it does not
// run).
type refusal struct{ msg string }

func (r *refusal) Error() string { return r.msg }

func refuse(format string, args ...any) error { return &refusal{fmt.Sprintf(format, args...)} }

// do runs one operation after checking its path.
func (s *Server) do(ctx context.Context, op string, req *request) (*response, error) {
	resp := &response{Agent: s.Name}
	if op == opPing {
		return resp, nil
	}
	if op == opRun {
		if err := s.checkRun(req); err != nil {
			return nil, err
		}
		out, err := s.Host.Run(ctx, req.Env, req.Program, req.Args...)
		resp.Output = out
		return resp, err
	}
	if err := s.inside(req.Path); err != nil {
		return nil, err
	}
	var err error
	switch op {
	case opReadFile:
		resp.Data, err = s.Host.ReadFile(req.Path)
	case opWriteFile:
		err = s.Host.WriteFile(req.Path, req.Data, os.FileMode(req.Mode)&0o777)
	case opMkdirAll:
		err = s.Host.MkdirAll(req.Path)
	case opRemove:
		err = s.Host.Remove(req.Path)
	case opRemoveAll:
		err = s.Host.RemoveAll(req.Path)
	case opExists:
		resp.Exists, err = s.Host.Exists(req.Path)
	case opReadDir:
		resp.Names, err = s.Host.ReadDir(req.Path)
	case opSyncDir:
		err = s.Host.SyncDir(req.Path)
	case opPostmaster:
		resp.Postmaster, err = s.Host.Postmaster(req.Path)
	case opRemoveStaleLock:
		err = s.Host.RemoveStaleLock(req.Path)
	case opSignal:
		switch req.Signal {
		case syscall.SIGTERM, syscall.SIGINT, syscall.SIGQUIT, syscall.SIGHUP:
			err = s.Host.Signal(req.Path, req.Signal)
		default:
			return nil, refuse("signal %d is not one fogo sends to a postmaster", req.Signal)
		}
	case opShutdown:
		switch req.Signal {
		case syscall.SIGTERM, syscall.SIGINT, syscall.SIGQUIT:
			timeout := min(max(time.Duration(req.TimeoutMS)*time.Millisecond, time.Second), maxShutdownWait)
			start := time.Now()
			err = s.Host.Shutdown(ctx, req.Path, req.Signal, timeout)
			s.Log.Debug("host api: shutdown", "path", req.Path, "signal", req.Signal, "took", time.Since(start).Round(time.Millisecond), "err", err)
		default:
			return nil, refuse("signal %d is not a shutdown signal", req.Signal)
		}
	case opKillPostmaster:
		err = s.Host.KillPostmaster(req.Path)
	default:
		return nil, refuse("no host API operation %q", op)
	}
	return resp, err
}

// inside checks that path names something strictly inside the instances directory.
func (s *Server) inside(path string) error {
	if !filepath.IsAbs(path) || filepath.Clean(path) != path {
		return refuse("path %q is not a clean absolute path", path)
	}
	if !strings.HasPrefix(path, s.Root+string(filepath.Separator)) {
		return refuse("path %q is outside the agent's instances directory %s", path, s.Root)
	}
	return nil
}

// checkRun checks a program run: a known program, allowed environment, no refused option, and every path inside
// the instances directory.
func (s *Server) checkRun(req *request) error {
	if !programs[req.Program] {
		return refuse("program %q is not one fogo runs", req.Program)
	}
	for _, e := range req.Env {
		ok := false
		for _, p := range allowedEnv {
			ok = ok || strings.HasPrefix(e, p)
		}
		if !ok {
			name, _, _ := strings.Cut(e, "=")
			return refuse("environment variable %q may not be set", name)
		}
	}
	for k := 0; k < len(req.Args); k++ {
		a := req.Args[k]
		for _, f := range refusedFlags {
			if a == f || (strings.HasPrefix(f, "--") && strings.HasPrefix(a, f+"=")) {
				return refuse("option %s is refused", f)
			}
		}
		name, value, hasValue := strings.Cut(a, "=")
		switch {
		case pathFlags[a]:
			if k+1 >= len(req.Args) {
				return refuse("option %s needs a value", a)
			}
			k++
			if err := s.inside(req.Args[k]); err != nil {
				return err
			}
		case strings.HasPrefix(name, "--") && hasValue && pathFlags[name]:
			if err := s.inside(value); err != nil {
				return err
			}
		case strings.HasPrefix(a, "-D") && len(a) > 2:
			if err := s.inside(a[2:]); err != nil {
				return err
			}
		case strings.HasPrefix(a, "/"):
			if err := s.inside(a); err != nil {
				return err
			}
		}
	}
	return nil
}

func writeError(w http.ResponseWriter, status int, err error) {
	body := apiError{Error: err.Error(), NotExist: errors.Is(err, os.ErrNotExist)}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(body)
}
