package e2e

import (
	"context"
	"errors"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/fogo-db/fogo/internal/app"
	"github.com/fogo-db/fogo/internal/controlplane/armid"
	"github.com/fogo-db/fogo/internal/controlplane/cluster"
	"github.com/fogo-db/fogo/internal/controlplane/model"
)

// The observer and the Automatic policy (issue 10, findings 5 and 10): the policy does not fail over toward a
// geo-secondary that cannot become primary, and one stuck instance holds up neither the other groups nor the
// policy.

// putAutomaticGroup creates group fg over db with the Automatic policy and a grace period of `grace` minutes.
func (f *fogo) putAutomaticGroup(east, west, fg string, grace int, dbs ...string) {
	f.t.Helper()
	var ids []any
	for _, d := range dbs {
		ids = append(ids, dbPath(east, d))
	}
	f.mustSucceed(f.do(http.MethodPut, fgPath(east, fg), map[string]any{"properties": map[string]any{
		"readWriteEndpoint": map[string]any{"failoverPolicy": "Automatic", "failoverWithDataLossGracePeriodMinutes": grace},
		"readOnlyEndpoint":  map[string]any{"failoverPolicy": "Disabled"},
		"partnerServers":    []any{map[string]any{"id": serverPath(west)}},
		"databases":         ids,
	}}), 201)
	f.waitGroupState(east, fg, "CATCH_UP")
}

// logWatch passes records on to fogo's logger and remembers their messages, so a test can wait for a decision.
type logWatch struct {
	inner slog.Handler
	s     *watchState
}

type watchState struct {
	mu   sync.Mutex
	msgs []string
}

func (w logWatch) Enabled(context.Context, slog.Level) bool { return true }
func (w logWatch) Handle(ctx context.Context, r slog.Record) error {
	w.s.mu.Lock()
	w.s.msgs = append(w.s.msgs, r.Message)
	w.s.mu.Unlock()
	if w.inner.Enabled(ctx, r.Level) {
		return w.inner.Handle(ctx, r)
	}
	return nil
}
func (w logWatch) WithAttrs(a []slog.Attr) slog.Handler { return logWatch{w.inner.WithAttrs(a), w.s} }
func (w logWatch) WithGroup(n string) slog.Handler      { return logWatch{w.inner.WithGroup(n), w.s} }

func (s *watchState) saw(prefix string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, m := range s.msgs {
		if strings.HasPrefix(m, prefix) {
			return true
		}
	}
	return false
}

// TestAutomaticPolicyWaitsForAHealthySecondary (finding 5): with the primary down past the grace period and the
// geo-secondary unusable, the Automatic policy does not fence the primary for a failover that cannot succeed (it
// says the failover is held); when the primary's host comes back, the primary serves again.
func TestAutomaticPolicyWaitsForAHealthySecondary(t *testing.T) {
	logs := &watchState{}
	f := startFogo(t, func(o *app.Options) {
		o.GraceUnit, o.MinGraceMinutes = time.Second, 1
		o.Logger = slog.New(logWatch{o.Logger.Handler(), logs})
	})
	f.createServer("ahs-east", "eastus")
	f.createServer("ahs-west", "westus")
	f.createDB("ahs-east", "ahs", "eastus")
	mustExec(t, f, "ahs-east", "ahs", "CREATE TABLE ledger(id bigserial PRIMARY KEY, note text)")
	f.putAutomaticGroup("ahs-east", "ahs-west", "ahs-fg", 1, "ahs")
	rw := f.listenerOf("ahs-east", "ahs-fg", "readWriteEndpoint")
	eastPort := f.instancePort(t, "ahs-east", "ahs")
	east := armid.ServerID{Subscription: sub, ResourceGroup: rg, Name: "ahs-east"}

	f.makeUnusable(t, "ahs-west", "ahs")
	f.killInstance(t, "ahs-east", "ahs")
	blocker := occupy(t, eastPort)
	deadline := time.Now().Add(45 * time.Second)
	for !logs.saw("automatic failover due but held") {
		if rec := f.instanceOf(t, "ahs-east", "ahs"); rec.NeedsRejoin {
			t.Fatalf("the Automatic policy fenced the only usable copy: %+v", rec)
		}
		if g, err := f.app.Service.GetGroup(east, "ahs-fg"); err != nil || g.Operation != "" || !g.LastFailoverAt.IsZero() {
			t.Fatalf("the Automatic policy started a failover toward an unusable secondary: %+v %v", g, err)
		}
		if time.Now().After(deadline) {
			t.Fatal("the Automatic policy never decided about the group whose primary is down")
		}
		time.Sleep(50 * time.Millisecond)
	}
	blocker.Close()
	waitWritableAt(t, rw, "ahs", eastPort, 30*time.Second)
	if rec := f.instanceOf(t, "ahs-east", "ahs"); rec.NeedsRejoin || role(t, f, "ahs-east", "ahs-fg") != "Primary" {
		t.Fatalf("east after its host came back: %+v", rec)
	}
}

// TestStuckInstanceDoesNotDelayOtherGroups (finding 10): one group's instance hangs in its start (a test hook
// blocks it); another group's primary dies meanwhile and the Automatic policy still fails it over on time.
func TestStuckInstanceDoesNotDelayOtherGroups(t *testing.T) {
	f := startFogo(t, func(o *app.Options) { o.GraceUnit = time.Second; o.MinGraceMinutes = 1 })
	f.createServer("sig-east", "eastus")
	f.createServer("sig-west", "westus")
	for _, db := range []string{"stuck", "free"} {
		f.createDB("sig-east", db, "eastus")
		mustExec(t, f, "sig-east", db, "CREATE TABLE ledger(id bigserial PRIMARY KEY, note text)")
	}
	f.mustSucceed(f.createGroup("sig-east", "sig-west", "sig-stuck", "stuck"), 201)
	f.waitGroupState("sig-east", "sig-stuck", "CATCH_UP")
	f.putAutomaticGroup("sig-east", "sig-west", "sig-free", 1, "free")

	stuck := f.instanceOf(t, "sig-east", "stuck")
	h := f.hangStart(t, stuck.ID)
	f.killInstance(t, "sig-east", "stuck")
	h.waitEntered(t)

	freePort := f.instancePort(t, "sig-east", "free")
	f.killInstance(t, "sig-east", "free")
	occupy(t, freePort)
	deadline := time.Now().Add(20 * time.Second)
	for role(t, f, "sig-west", "sig-free") != "Primary" {
		if time.Now().After(deadline) {
			t.Fatal("the Automatic policy did not fail the other group over while one instance was stuck")
		}
		time.Sleep(100 * time.Millisecond)
	}
	waitWritableAt(t, f.listenerOf("sig-west", "sig-free", "readWriteEndpoint"), "free", f.instancePort(t, "sig-west", "free"), 30*time.Second)

	// The stuck start completes: its group serves again.
	h.release()
	waitWritableAt(t, f.listenerOf("sig-east", "sig-stuck", "readWriteEndpoint"), "stuck", stuck.Port, 30*time.Second)
}

// TestStuckReconcileYieldsToForcedFailover: the reconciler is starting the group's dead primary and hangs there
// (a test hook blocks it as a call to a host that does not answer would, until its context ends), holding the
// group's lock. A forced failover asked meanwhile preempts it: it finishes long before the reconciliation's own
// bound (reconcileTimeout, 2 minutes), and the reconciliation ends because of the failover, not by timing out.
// Before, the failover waited for the whole bound.
func TestStuckReconcileYieldsToForcedFailover(t *testing.T) {
	f := startFogo(t)
	f.groupWithLedger("syf-east", "syf-west", "syf-fg", "syf")
	old := f.instanceOf(t, "syf-east", "syf")
	h := f.hangStart(t, old.ID)
	f.killInstance(t, "syf-east", "syf")
	h.waitEntered(t)

	r := f.do(http.MethodPost, fgPath("syf-west", "syf-fg")+"/forceFailoverAllowDataLoss", nil)
	if r.Status != 202 {
		t.Fatalf("forced failover: %d %s", r.Status, r.Raw)
	}
	// Well under the reconciliation's 2-minute bound, which the failover used to wait out.
	deadline := time.Now().Add(60 * time.Second)
	for role(t, f, "syf-west", "syf-fg") != "Primary" {
		if time.Now().After(deadline) {
			t.Fatal("the forced failover waited for the stuck reconciliation")
		}
		time.Sleep(100 * time.Millisecond)
	}
	if st := f.wait(r); st["status"] != "Succeeded" {
		t.Fatalf("forced failover: %v", st)
	}
	select {
	case err := <-h.ended:
		if !errors.Is(err, cluster.ErrPreempted) {
			t.Fatalf("the stuck reconciliation ended with %v, want the failover's preemption", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the stuck reconciliation did not end")
	}
	waitWritableAt(t, f.listenerOf("syf-west", "syf-fg", "readWriteEndpoint"), "syf", f.instancePort(t, "syf-west", "syf"), 30*time.Second)
}

// TestStaleFenceIsLifted (finding 5): a forced failover that ended without new roles and without undoing its fence
// (it failed after too many restarts, or ran under an older fogo) leaves the group's primary fenced and stopped
// while the geo-secondary is still a standby. The reconciler lifts that fence: the primary serves again.
func TestStaleFenceIsLifted(t *testing.T) {
	f := startFogo(t)
	f.groupWithLedger("slf-east", "slf-west", "slf-fg", "slf")
	rw := f.listenerOf("slf-east", "slf-fg", "readWriteEndpoint")
	rec := f.instanceOf(t, "slf-east", "slf")
	rec.NeedsRejoin = true
	if err := f.app.Cluster.SaveInstance(rec); err != nil {
		t.Fatal(err)
	}
	f.killInstance(t, "slf-east", "slf")
	waitWritableAt(t, rw, "slf", rec.Port, 30*time.Second)
	if rec := f.instanceOf(t, "slf-east", "slf"); rec.NeedsRejoin || rec.Role != model.RolePrimary {
		t.Fatalf("primary after the stale fence: %+v", rec)
	}
	if _, standby, err := tryWhere(f.listenerOf("slf-east", "slf-fg", "readOnlyEndpoint"), "slf"); err != nil || !standby {
		t.Fatalf("the geo-secondary is not a standby any more: standby %v err %v", standby, err)
	}
}

// startHang is a start of one instance that the reconciler's start hook blocks, as a call to a host that does not
// answer would, until release or until the reconciliation's context ends.
type startHang struct {
	entered chan struct{}
	unblock chan struct{}
	once    sync.Once
	ended   chan error // why the context ended, once it did
}

// hangStart installs the hang for the instance id; the test's end releases it and removes the hook.
func (f *fogo) hangStart(t *testing.T, id string) *startHang {
	h := &startHang{entered: make(chan struct{}, 1), unblock: make(chan struct{}), ended: make(chan error, 1)}
	f.app.Cluster.SetStartHook(func(ctx context.Context, rec *model.Instance) error {
		if rec.ID != id {
			return nil
		}
		select {
		case h.entered <- struct{}{}:
		default:
		}
		select {
		case <-h.unblock:
			return nil
		case <-ctx.Done():
			select {
			case h.ended <- context.Cause(ctx):
			default:
			}
			return ctx.Err()
		}
	})
	t.Cleanup(func() { f.app.Cluster.SetStartHook(nil); h.release() })
	return h
}

func (h *startHang) release() { h.once.Do(func() { close(h.unblock) }) }

// waitEntered waits until the reconciler is in the hung start.
func (h *startHang) waitEntered(t *testing.T) {
	t.Helper()
	select {
	case <-h.entered:
	case <-time.After(30 * time.Second):
		t.Fatal("the reconciler never tried to start the instance")
	}
}
