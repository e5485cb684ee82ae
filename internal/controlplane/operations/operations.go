// Package operations runs fogo's long-running operations (ARM LROs) durably.
//
// The API creates an operation record (status InProgress) in the same store transaction as the change that
// needs it, then calls Launch. Only the runner advances a record: it calls the kind's handler, which moves through
// named steps (Run.Step persists each before it starts), and finally records Succeeded or Failed together with the
// handler's Finish hook in one transaction (e.g. clearing a failover group's busy marker).
//
// A control plane killed mid-operation calls ResumeAll at start: every InProgress record runs its handler again
// from the top. Handlers must therefore be sequences of idempotent steps that judge "already done?" from facts
// (and from the intent recorded in the operation's params), never from the recorded step alone. An operation that
// has been resumed too many times fails instead of looping.
package operations

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/google/uuid"

	"github.com/fogo-db/fogo/internal/controlplane/model"
	"github.com/fogo-db/fogo/internal/controlplane/store"
	"github.com/fogo-db/fogo/internal/errcatalog"
)

// MaxAttempts bounds how many times an operation is (re)started before it is failed.
const MaxAttempts = 5

// Handler runs one kind of operation.
type Handler struct {
	// Run does the work. Its error fails the operation; an *errcatalog.Error keeps its code and status.
	Run func(ctx context.Context, run *Run) error
	// Finish, if set, runs in the transaction that records the terminal status.
	Finish func(tx *store.Tx, op *model.Operation) error
}

// Runner owns the execution of operations.
type Runner struct {
	store    *store.Store
	log      *slog.Logger
	handlers map[string]Handler

	mu      sync.Mutex
	running map[string]bool
	ctx     context.Context
	wg      sync.WaitGroup
	// AfterFinish, if set, is called after an operation's terminal status is recorded.
	AfterFinish func(op *model.Operation)
	// PauseBeforeStep, if set, is called before each step (test hook for crash tests).
	PauseBeforeStep func(op *model.Operation, step string)
}

// New returns a runner whose operations stop when ctx is cancelled (they resume on the next start).
func New(ctx context.Context, st *store.Store, log *slog.Logger) *Runner {
	return &Runner{store: st, log: log, handlers: map[string]Handler{}, running: map[string]bool{}, ctx: ctx}
}

// Register sets the handler for a kind.
func (r *Runner) Register(kind string, h Handler) { r.handlers[kind] = h }

// NewOperation returns a fresh InProgress record; the caller stores it with Create in its own transaction.
func NewOperation(kind, resource, resultKind, location string, params any) (*model.Operation, error) {
	op := &model.Operation{
		ID: uuid.NewString(), Kind: kind, Status: model.OpInProgress, Resource: resource,
		ResultKind: resultKind, Location: location, Created: time.Now().UTC(),
	}
	if params != nil {
		raw, err := json.Marshal(params)
		if err != nil {
			return nil, fmt.Errorf("encode operation params: %w", err)
		}
		op.Params = raw
	}
	return op, nil
}

// Create stores op in tx.
func Create(tx *store.Tx, op *model.Operation) error { return tx.Put(store.Operations, op.ID, op) }

// Get reads an operation.
func (r *Runner) Get(id string) (*model.Operation, error) {
	var op model.Operation
	err := r.store.View(func(tx *store.Tx) error { return tx.MustGet(store.Operations, id, &op) })
	if err != nil {
		return nil, err
	}
	return &op, nil
}

// Launch starts running a stored InProgress operation in the background (no-op if it already runs).
func (r *Runner) Launch(id string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.running[id] || r.ctx.Err() != nil {
		return
	}
	r.running[id] = true
	r.wg.Add(1)
	go func() {
		defer r.wg.Done()
		defer func() { r.mu.Lock(); delete(r.running, id); r.mu.Unlock() }()
		r.execute(id)
	}()
}

// ResumeAll launches every InProgress operation (called once at start).
func (r *Runner) ResumeAll() error {
	var ids []string
	err := r.store.View(func(tx *store.Tx) error {
		ops, err := store.List[model.Operation](tx, store.Operations, "")
		for _, op := range ops {
			if op.Status == model.OpInProgress {
				ids = append(ids, op.ID)
			}
		}
		return err
	})
	if err != nil {
		return fmt.Errorf("list operations: %w", err)
	}
	for _, id := range ids {
		r.log.Info("resuming operation", "op", id)
		r.Launch(id)
	}
	return nil
}

// Wait blocks until all running operations have returned (after the runner's context is cancelled).
func (r *Runner) Wait() { r.wg.Wait() }

// WaitDone polls until the operation is terminal or ctx ends (used by tests and the bench).
func (r *Runner) WaitDone(ctx context.Context, id string) (*model.Operation, error) {
	for {
		op, err := r.Get(id)
		if err != nil {
			return nil, err
		}
		if op.Done() {
			return op, nil
		}
		select {
		case <-ctx.Done():
			return op, ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}

func (r *Runner) execute(id string) {
	var op model.Operation
	err := r.store.Update(func(tx *store.Tx) error {
		op = model.Operation{} // fn may run again (the etcd store retries a conflicting update)
		if err := tx.MustGet(store.Operations, id, &op); err != nil {
			return err
		}
		op.Attempts++
		return tx.Put(store.Operations, id, &op)
	})
	if err != nil || op.Done() {
		return
	}
	h, ok := r.handlers[op.Kind]
	var runErr error
	switch {
	case !ok:
		runErr = fmt.Errorf("no handler for operation kind %s", op.Kind)
	case op.Attempts > MaxAttempts:
		runErr = fmt.Errorf("operation restarted %d times without finishing", op.Attempts-1)
	default:
		run := &Run{Op: &op, r: r}
		runErr = safeRun(r.ctx, h.Run, run)
	}
	if r.ctx.Err() != nil {
		// Shutting down: leave it InProgress; ResumeAll picks it up on the next start.
		r.log.Info("operation interrupted by shutdown", "op", id, "kind", op.Kind, "step", op.Step)
		return
	}
	r.finish(&op, h, runErr)
}

func safeRun(ctx context.Context, fn func(context.Context, *Run) error, run *Run) (err error) {
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("operation panicked: %v", p)
		}
	}()
	return fn(ctx, run)
}

func (r *Runner) finish(op *model.Operation, h Handler, runErr error) {
	op.Finished = time.Now().UTC()
	if runErr == nil {
		op.Status = model.OpSucceeded
		op.Step = "done"
	} else {
		op.Status = model.OpFailed
		op.Error = toOpError(runErr)
		r.log.Error("operation failed", "op", op.ID, "kind", op.Kind, "step", op.Step, "err", runErr)
	}
	err := r.store.Update(func(tx *store.Tx) error {
		if h.Finish != nil {
			if err := h.Finish(tx, op); err != nil {
				return err
			}
		}
		return tx.Put(store.Operations, op.ID, op)
	})
	if err != nil {
		r.log.Error("record operation result", "op", op.ID, "err", err)
		return
	}
	r.log.Info("operation finished", "op", op.ID, "kind", op.Kind, "status", op.Status,
		"duration", op.Finished.Sub(op.Created).Round(time.Millisecond))
	r.log.Debug("operation steps", "op", op.ID, "steps", strings.Join(op.Log, ", "))
	if r.AfterFinish != nil {
		r.AfterFinish(op)
	}
}

func toOpError(err error) *model.OpError {
	if e, ok := errcatalog.As(err); ok {
		return &model.OpError{Code: e.Code, Message: e.Message, Status: e.Status}
	}
	return &model.OpError{Code: "InternalServerError", Message: err.Error(), Status: http.StatusInternalServerError}
}

// Run is one execution of an operation, handed to its handler.
type Run struct {
	Op *model.Operation
	r  *Runner
}

// Params decodes the operation's recorded intent.
func (run *Run) Params(v any) error {
	if len(run.Op.Params) == 0 {
		return errors.New("operation has no params")
	}
	return json.Unmarshal(run.Op.Params, v)
}

// SetParams replaces the recorded intent (e.g. to remember a decision before acting on it).
func (run *Run) SetParams(v any) error {
	raw, err := json.Marshal(v)
	if err != nil {
		return err
	}
	run.Op.Params = raw
	return run.r.store.Update(func(tx *store.Tx) error { return tx.Put(store.Operations, run.Op.ID, run.Op) })
}

// Warn records, durably, something the caller should know although the operation goes on (e.g. an old primary
// that had to be killed); the operation status shows it.
func (run *Run) Warn(msg string) error {
	run.Op.Warnings = append(run.Op.Warnings, msg)
	return run.r.store.Update(func(tx *store.Tx) error { return tx.Put(store.Operations, run.Op.ID, run.Op) })
}

// Step records that the named step starts (durably, before it acts).
func (run *Run) Step(name string) error {
	run.Begin(name)
	return run.r.store.Update(func(tx *store.Tx) error { return tx.Put(store.Operations, run.Op.ID, run.Op) })
}

// Begin starts the named step without a write of its own, for a step that has nothing to redo or undo when the
// operation is resumed, or whose intent the caller writes at once (SetParams, UpdateWith): the next write records
// it. Each store write inside a failover's hold window is time the clients wait (several milliseconds on etcd).
func (run *Run) Begin(name string) {
	if run.r.PauseBeforeStep != nil {
		run.r.PauseBeforeStep(run.Op, name)
	}
	run.Op.Step = name
	run.Op.Log = append(run.Op.Log, time.Now().UTC().Format("15:04:05.000")+" "+name)
	if len(run.Op.Log) > 50 {
		run.Op.Log = run.Op.Log[len(run.Op.Log)-50:]
	}
}

// UpdateWith runs fn in a store transaction that also records v as the operation's intent: both are written, or
// neither (the operation in memory keeps its old intent when the transaction fails).
func (run *Run) UpdateWith(v any, fn func(tx *store.Tx) error) error {
	raw, err := json.Marshal(v)
	if err != nil {
		return err
	}
	op := *run.Op
	op.Params = raw
	err = run.r.store.Update(func(tx *store.Tx) error {
		if err := fn(tx); err != nil {
			return err
		}
		return tx.Put(store.Operations, op.ID, &op)
	})
	if err == nil {
		run.Op.Params = raw
	}
	return err
}
