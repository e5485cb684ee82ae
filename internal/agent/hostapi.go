package agent

import (
	"syscall"

	"github.com/fogo-db/fogo/internal/postgres/instance"
)

// The host API: POST <agent URL>/host/v1/<op> with a JSON request, answered with a JSON response or an error.
const apiPrefix = "/host/v1/"

// Operations of the host API.
const (
	opRun             = "run"
	opReadFile        = "read-file"
	opWriteFile       = "write-file"
	opMkdirAll        = "mkdir-all"
	opRemove          = "remove"
	opRemoveAll       = "remove-all"
	opExists          = "exists"
	opReadDir         = "read-dir"
	opSyncDir         = "sync-dir"
	opPostmaster      = "postmaster"
	opRemoveStaleLock = "remove-stale-lock"
	opSignal          = "signal"
	opShutdown        = "shutdown"
	opKillPostmaster  = "kill-postmaster"
	opPing            = "ping"
)

// request is every operation's request: each uses the fields it needs.
type request struct {
	Path    string         `json:"path,omitempty"`
	Data    []byte         `json:"data,omitempty"`
	Mode    uint32         `json:"mode,omitempty"`
	Program string         `json:"program,omitempty"`
	Args    []string       `json:"args,omitempty"`
	Env     []string       `json:"env,omitempty"`
	Signal  syscall.Signal `json:"signal,omitempty"`
	// TimeoutMS bounds a shutdown's wait.
	TimeoutMS int64 `json:"timeoutMs,omitempty"`
}

// response is every operation's answer.
type response struct {
	Output     string              `json:"output,omitempty"`
	Data       []byte              `json:"data,omitempty"`
	Exists     bool                `json:"exists,omitempty"`
	Names      []string            `json:"names,omitempty"`
	Postmaster instance.Postmaster `json:"postmaster"`
	Agent      string              `json:"agent,omitempty"`
}

// apiError is an error's body. NotExist carries os.ErrNotExist across the wire.
type apiError struct {
	Error    string `json:"error"`
	NotExist bool   `json:"notExist,omitempty"`
}
