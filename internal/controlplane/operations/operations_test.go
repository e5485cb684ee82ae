package operations

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/fogo-db/fogo/internal/controlplane/model"
	"github.com/fogo-db/fogo/internal/controlplane/store"
	"github.com/fogo-db/fogo/internal/errcatalog"
)

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

func openStore(t *testing.T, path string) *store.Store {
	t.Helper()
	st, err := store.Open(path, nil)
	if err != nil {
		t.Fatal(err)
	}
	return st
}

func submit(t *testing.T, st *store.Store, kind string, params any) string {
	t.Helper()
	op, err := NewOperation(kind, "/res", "", "eastus", params)
	if err != nil {
		t.Fatal(err)
	}
	if err := st.Update(func(tx *store.Tx) error { return Create(tx, op) }); err != nil {
		t.Fatal(err)
	}
	return op.ID
}

func waitDone(t *testing.T, r *Runner, id string) *model.Operation {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	op, err := r.WaitDone(ctx, id)
	if err != nil {
		t.Fatalf("operation %s: %v", id, err)
	}
	return op
}

// An operation interrupted by a shutdown stays InProgress with its recorded step and intent, and a new runner on
// the same store resumes it from the top; the handler sees the intent recorded before the interruption.
func TestResumeAfterShutdown(t *testing.T) {
	path := filepath.Join(t.TempDir(), "state.db")
	st := openStore(t, path)
	ctx, stop := context.WithCancel(context.Background())
	r1 := New(ctx, st, quiet)
	blocked := make(chan struct{})
	r1.Register("Two", Handler{Run: func(ctx context.Context, run *Run) error {
		if err := run.Step("first"); err != nil {
			return err
		}
		if err := run.SetParams(map[string]bool{"firstDone": true}); err != nil {
			return err
		}
		if err := run.Step("second"); err != nil {
			return err
		}
		close(blocked)
		<-ctx.Done()
		return ctx.Err()
	}})
	id := submit(t, st, "Two", nil)
	r1.Launch(id)
	<-blocked
	stop()
	r1.Wait()
	op, err := r1.Get(id)
	if err != nil || op.Status != model.OpInProgress || op.Step != "second" {
		t.Fatalf("after shutdown: %+v %v", op, err)
	}
	if err := st.Close(); err != nil {
		t.Fatal(err)
	}

	st = openStore(t, path)
	defer st.Close()
	r2 := New(context.Background(), st, quiet)
	var sawIntent atomic.Bool
	finished := make(chan string, 1)
	r2.Register("Two", Handler{
		Run: func(ctx context.Context, run *Run) error {
			var p map[string]bool
			if err := run.Params(&p); err != nil {
				return err
			}
			sawIntent.Store(p["firstDone"])
			return run.Step("second")
		},
		Finish: func(tx *store.Tx, op *model.Operation) error { finished <- op.Status; return nil },
	})
	if err := r2.ResumeAll(); err != nil {
		t.Fatal(err)
	}
	op = waitDone(t, r2, id)
	if op.Status != model.OpSucceeded || op.Attempts != 2 || !sawIntent.Load() {
		t.Fatalf("resumed: %+v intent=%v", op, sawIntent.Load())
	}
	if got := <-finished; got != model.OpSucceeded {
		t.Fatalf("finish hook saw %s", got)
	}
}

// A catalogue error keeps its code and status; any other error becomes InternalServerError; a panic fails the
// operation instead of the process; an operation restarted too often fails instead of looping.
func TestFailures(t *testing.T) {
	st := openStore(t, filepath.Join(t.TempDir(), "state.db"))
	defer st.Close()
	r := New(context.Background(), st, quiet)
	r.Register("Catalogue", Handler{Run: func(context.Context, *Run) error { return errcatalog.New("FailoverGroupBusy") }})
	r.Register("Plain", Handler{Run: func(context.Context, *Run) error { return errors.New("disk on fire") }})
	r.Register("Panics", Handler{Run: func(context.Context, *Run) error { panic("boom") }})
	r.Register("Loops", Handler{Run: func(context.Context, *Run) error { return nil }})

	cases := []struct {
		kind, code string
		status     int
	}{
		{"Catalogue", "FailoverGroupBusy", 409},
		{"Plain", "InternalServerError", 500},
		{"Panics", "InternalServerError", 500},
		{"Unknown", "InternalServerError", 500},
	}
	for _, c := range cases {
		id := submit(t, st, c.kind, nil)
		r.Launch(id)
		op := waitDone(t, r, id)
		if op.Status != model.OpFailed || op.Error == nil || op.Error.Code != c.code || op.Error.Status != c.status {
			t.Errorf("%s: %+v %+v", c.kind, op, op.Error)
		}
	}

	id := submit(t, st, "Loops", nil)
	if err := st.Update(func(tx *store.Tx) error {
		var op model.Operation
		if err := tx.MustGet(store.Operations, id, &op); err != nil {
			return err
		}
		op.Attempts = MaxAttempts
		return tx.Put(store.Operations, id, &op)
	}); err != nil {
		t.Fatal(err)
	}
	r.Launch(id)
	if op := waitDone(t, r, id); op.Status != model.OpFailed {
		t.Fatalf("an operation past MaxAttempts ran again: %+v", op)
	}
}
