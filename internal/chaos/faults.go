package chaos

// The faults. Each injects one fault and returns when the fault itself is over (a process it stopped is resumed, an
// operation it started has ended); the campaign then waits for the recovery and checks the invariants.

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/fogo-db/fogo/internal/cli"
)

// outcome is what a fault tells the checks.
type outcome struct {
	detail string
	// reports are the forced failovers (operation IDs) whose lost-transaction reports must match the ledger.
	reports []string
}

type faultFunc func(ctx context.Context, c *campaign) (outcome, error)

// faults are the fault kinds by name.
var faults = map[string]faultFunc{
	"kill-primary":        killPrimary,
	"freeze-primary":      freezePrimary(2, 8),
	"freeze-primary-long": freezePrimary(45, 50),
	"kill-standby":        killStandby,
	"cut-streaming":       cutStreaming,
	"planned":             plannedFailover,
	"forced":              forcedFailover,
	"try-planned":         tryPlanned,
	"kill-fogo-planned":   killFogoDuring("failover"),
	"kill-fogo-forced":    killFogoDuring("forceFailoverAllowDataLoss"),
	"link-target-restart": linkTargetRestart,
	"concurrent-api":      concurrentAPI,
	"host-loss":           hostLoss,
}

// clusterOnly are the fault kinds that need hosts of their own (the cluster mode).
var clusterOnly = map[string]bool{"host-loss": true}

// Kinds lists the fault kinds. freeze-primary-long (a primary frozen past the link's heartbeat) is left out of
// campaigns of fewer than 30 faults unless asked for; host-loss is drawn in the cluster mode only.
func Kinds() []string {
	var out []string
	for k := range faults {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

func pickKinds(asked []string, n int, cluster bool) ([]string, error) {
	if len(asked) == 0 {
		var out []string
		for _, k := range Kinds() {
			if (k != "freeze-primary-long" || n >= 30) && (cluster || !clusterOnly[k]) {
				out = append(out, k)
			}
		}
		return out, nil
	}
	for _, k := range asked {
		if _, ok := faults[k]; !ok {
			return nil, fmt.Errorf("unknown fault kind %q (kinds: %s)", k, strings.Join(Kinds(), ", "))
		}
		if clusterOnly[k] && !cluster {
			return nil, fmt.Errorf("fault kind %q needs --mode cluster", k)
		}
	}
	return asked, nil
}

// roles finds the primary instance (where the read-write listener lands) and the geo-secondary (the other one).
// An instance may be restarting (a WAL receiver's kill restarts its whole standby; the group can read CATCH_UP
// from the observer's last pass meanwhile), so both are waited for, bounded.
func (c *campaign) roles(ctx context.Context) (primary, standby instance, err error) {
	for deadline := time.Now().Add(20 * time.Second); ; sleep(ctx, 100*time.Millisecond) {
		primary, standby, err = c.findRoles(ctx)
		if err == nil || time.Now().After(deadline) || ctx.Err() != nil {
			return primary, standby, err
		}
	}
}

func (c *campaign) findRoles(ctx context.Context) (primary, standby instance, err error) {
	cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	conn, err := c.dial(cctx, c.rw)
	if err != nil {
		return primary, standby, fmt.Errorf("find the primary: %w", err)
	}
	at, err := serverAddr(cctx, conn)
	conn.Close(context.Background())
	if err != nil {
		return primary, standby, fmt.Errorf("find the primary: %w", err)
	}
	found := 0
	for _, in := range c.instances() {
		if in.addr() == at {
			primary, found = in, found+1
		} else {
			standby, found = in, found+2
		}
	}
	if found != 3 {
		return primary, standby, fmt.Errorf("the primary (%s) and the geo-secondary are not both running: %+v", at, c.instances())
	}
	return primary, standby, nil
}

// waitBack waits until the instance in dir runs again under another postmaster than pid.
func (c *campaign) waitBack(ctx context.Context, dir string, pid int, within time.Duration) error {
	deadline := time.Now().Add(within)
	for time.Now().Before(deadline) && ctx.Err() == nil {
		for _, in := range c.instances() {
			if in.Dir == dir && in.PID != pid {
				return nil
			}
		}
		sleep(ctx, 100*time.Millisecond)
	}
	return fmt.Errorf("%s did not run again within %s", dir, within)
}

func killPrimary(ctx context.Context, c *campaign) (outcome, error) {
	return killInstance(ctx, c, true)
}

func killStandby(ctx context.Context, c *campaign) (outcome, error) {
	return killInstance(ctx, c, false)
}

// killInstance kills -9 the primary's postmaster or the geo-secondary's, and waits until fogo has started it
// again; the watcher knows it is down meanwhile.
func killInstance(ctx context.Context, c *campaign, primary bool) (outcome, error) {
	p, s, err := c.roles(ctx)
	if err != nil {
		return outcome{}, err
	}
	victim, mark := s, func(w *watcher, t time.Time) { w.standbyDown = t }
	if primary {
		victim, mark = p, func(w *watcher, t time.Time) { w.sourceDown = t }
	}
	c.watch.set(func(w *watcher) { mark(w, time.Now()) })
	if err := syscall.Kill(victim.PID, syscall.SIGKILL); err != nil {
		return outcome{}, err
	}
	err = c.waitBack(ctx, victim.Dir, victim.PID, 60*time.Second)
	c.watch.set(func(w *watcher) { mark(w, time.Time{}) })
	return outcome{detail: fmt.Sprintf("postmaster %d", victim.PID)}, err
}

func freezePrimary(minS, maxS int) faultFunc {
	return func(ctx context.Context, c *campaign) (outcome, error) {
		p, _, err := c.roles(ctx)
		if err != nil {
			return outcome{}, err
		}
		d := time.Duration(minS)*time.Second + time.Duration(c.rng.IntN((maxS-minS)*1000+1))*time.Millisecond
		c.watch.set(func(w *watcher) { w.sourceDown = time.Now() })
		signalAll(p, syscall.SIGSTOP)
		sleep(ctx, d)
		signalAll(p, syscall.SIGCONT)
		c.watch.set(func(w *watcher) { w.sourceDown = time.Time{} })
		return outcome{detail: fmt.Sprintf("frozen %s", d.Round(time.Millisecond))}, nil
	}
}

// cutStreaming kills the geo-secondary's WAL receiver, or blocks it (SIGSTOP) for 2-5 s: less than the group's
// heartbeat, since a stopped receiver still reads "streaming" in pg_stat_wal_receiver.
func cutStreaming(ctx context.Context, c *campaign) (outcome, error) {
	_, s, err := c.roles(ctx)
	if err != nil {
		return outcome{}, err
	}
	// The group may read CATCH_UP from the observer's last pass while the receiver restarts: wait for one.
	wr := 0
	for deadline := time.Now().Add(15 * time.Second); wr == 0 && time.Now().Before(deadline); sleep(ctx, 50*time.Millisecond) {
		wr = walReceiver(s)
	}
	if wr == 0 {
		return outcome{}, errors.New("the geo-secondary has had no WAL receiver for 15 s")
	}
	if c.rng.IntN(2) == 0 {
		if err := syscall.Kill(wr, syscall.SIGKILL); err != nil {
			return outcome{}, err
		}
		return outcome{detail: fmt.Sprintf("walreceiver %d killed", wr)}, nil
	}
	d := 2*time.Second + time.Duration(c.rng.IntN(3000))*time.Millisecond
	_ = syscall.Kill(wr, syscall.SIGSTOP)
	sleep(ctx, d)
	_ = syscall.Kill(wr, syscall.SIGCONT)
	return outcome{detail: fmt.Sprintf("walreceiver %d blocked %s", wr, d.Round(time.Millisecond))}, nil
}

// failover asks the geo-secondary's server to take the primary role with action and returns the operation's URL.
func (c *campaign) failover(ctx context.Context, action string) (string, error) {
	to, err := c.secondaryServer(ctx)
	if err != nil {
		return "", err
	}
	r, err := c.api.Do(ctx, http.MethodPost, c.groupPath(to)+"/"+action, nil)
	if err != nil {
		return "", fmt.Errorf("%s to %s: %w", action, to, err)
	}
	return operationURL(r), nil
}

func (c *campaign) failoverAndFollow(ctx context.Context, action string) (string, *opStatus, error) {
	url, err := c.failover(ctx, action)
	if err != nil {
		return "", nil, err
	}
	st, err := c.followURL(ctx, url, 180*time.Second)
	if err != nil {
		return url, nil, err
	}
	if st.Status != "Succeeded" {
		return url, st, fmt.Errorf("%s: %s %s", action, st.Status, st.errorText())
	}
	return url, st, nil
}

func plannedFailover(ctx context.Context, c *campaign) (outcome, error) {
	_, _, err := c.failoverAndFollow(ctx, "failover")
	return outcome{}, err
}

// induceLoss makes the next forced failover lose commits: the primary's WAL senders are stopped (SIGSTOP) while
// the writers go on, so the geo-secondary receives nothing more, then the primary is killed (kill -9).
func (c *campaign) induceLoss(ctx context.Context) (string, error) {
	p, _, err := c.roles(ctx)
	if err != nil {
		return "", err
	}
	var senders []int
	for deadline := time.Now().Add(15 * time.Second); len(senders) == 0 && time.Now().Before(deadline); sleep(ctx, 50*time.Millisecond) {
		senders = walSenders(p)
	}
	if len(senders) == 0 {
		return "", errors.New("the primary has had no WAL sender for 15 s")
	}
	for _, pid := range senders {
		_ = syscall.Kill(pid, syscall.SIGSTOP)
	}
	d := 300*time.Millisecond + time.Duration(c.rng.IntN(700))*time.Millisecond
	sleep(ctx, d)
	c.watch.set(func(w *watcher) { w.sourceDown = time.Now() })
	err = syscall.Kill(p.PID, syscall.SIGKILL)
	for _, pid := range senders {
		_ = syscall.Kill(pid, syscall.SIGKILL) // it would not see its postmaster die while stopped
		_ = syscall.Kill(pid, syscall.SIGCONT)
	}
	return fmt.Sprintf("WAL senders stopped %s, then the primary killed; ", d.Round(time.Millisecond)), err
}

func forcedFailover(ctx context.Context, c *campaign) (outcome, error) {
	var out outcome
	if c.rng.IntN(10) < 7 {
		d, err := c.induceLoss(ctx)
		out.detail = d
		if err != nil {
			return out, err
		}
	}
	url, _, err := c.failoverAndFollow(ctx, "forceFailoverAllowDataLoss")
	c.watch.set(func(w *watcher) { w.sourceDown = time.Time{} })
	if url != "" {
		out.reports = append(out.reports, operationID(url))
	}
	return out, err
}

// tryPlanned runs tryPlannedBeforeForcedFailover with the primary healthy (a planned failover), or frozen (the
// planned attempt times out, and the forced failover kills the frozen primary).
func tryPlanned(ctx context.Context, c *campaign) (outcome, error) {
	var out outcome
	var frozen *instance
	if c.rng.IntN(2) == 0 {
		p, _, err := c.roles(ctx)
		if err != nil {
			return out, err
		}
		c.watch.set(func(w *watcher) { w.sourceDown = time.Now() })
		signalAll(p, syscall.SIGSTOP)
		frozen = &p
		out.detail = "primary frozen; "
	}
	url, st, err := c.failoverAndFollow(ctx, "tryPlannedBeforeForcedFailover")
	if frozen != nil {
		signalAll(*frozen, syscall.SIGCONT)
		c.watch.set(func(w *watcher) { w.sourceDown = time.Time{} })
	}
	if url != "" && st != nil {
		out.reports = append(out.reports, operationID(url)) // it has one only if it fell back to forced
	}
	return out, err
}

// killFogoDuring starts a failover, kills fogo (kill -9) as soon as the operation is past its first step, starts
// it again and waits for the operation to end. A planned failover may end rolled back (Failed, roles unchanged);
// a forced one must succeed.
func killFogoDuring(action string) faultFunc {
	return func(ctx context.Context, c *campaign) (outcome, error) {
		var out outcome
		if action != "failover" && c.rng.IntN(10) < 7 {
			d, err := c.induceLoss(ctx)
			out.detail = d
			if err != nil {
				return out, err
			}
		}
		url, err := c.failover(ctx, action)
		if err != nil {
			return out, err
		}
		// The steps in their order; fogo is killed once the operation shows the step drawn, or a later one.
		steps := []string{"catch-up", "hold", "demote", "record", "promote", "release", "rejoin"}
		targets := []string{"catch-up", "demote", "promote", "rejoin"}
		if action != "failover" {
			steps = []string{"hold", "check", "fence", "promote", "record", "release", "rejoin"}
			targets = []string{"check", "fence", "promote", "rejoin"}
		}
		target := slices.Index(steps, targets[c.rng.IntN(len(targets))])
		step := ""
		for deadline := time.Now().Add(60 * time.Second); time.Now().Before(deadline); time.Sleep(2 * time.Millisecond) {
			var st opStatus
			r, err := c.api.Do(ctx, http.MethodGet, url, nil)
			if err == nil && jsonInto(r, &st) == nil {
				if st.Status != "InProgress" {
					step = "(after it ended)"
					break
				}
				if slices.Index(steps, st.Properties.Step) >= target {
					step = st.Properties.Step
					break
				}
			}
		}
		c.watch.set(func(w *watcher) { w.fogoDown = true })
		c.world.killFogo()
		err = c.world.startFogo(ctx)
		c.watch.set(func(w *watcher) { w.fogoDown = false; w.sourceDown = time.Time{} })
		out.detail += "fogo killed at step " + step
		if err != nil {
			return out, err
		}
		st, err := c.followURL(ctx, url, 180*time.Second)
		if err != nil {
			return out, err
		}
		if action != "failover" {
			out.reports = append(out.reports, operationID(url))
		}
		if st.Status != "Succeeded" && (action != "failover" || st.Error == nil || st.Error.Code == "InternalServerError") {
			return out, fmt.Errorf("%s after fogo's restart: %s %s", action, st.Status, st.errorText())
		}
		if st.Status != "Succeeded" {
			out.detail += ", rolled back: " + st.Error.Code
		}
		return out, nil
	}
}

func linkTargetRestart(ctx context.Context, c *campaign) (outcome, error) {
	if _, err := c.api.Do(ctx, http.MethodPost, workspace+"/linkconnections/lk/stop"+lcVersion, nil); err != nil {
		return outcome{}, fmt.Errorf("stop the link: %w", err)
	}
	d := 500*time.Millisecond + time.Duration(c.rng.IntN(1500))*time.Millisecond
	sleep(ctx, d)
	if _, err := c.api.Do(ctx, http.MethodPost, workspace+"/linkconnections/lk/start"+lcVersion, nil); err != nil {
		return outcome{}, fmt.Errorf("start the link: %w", err)
	}
	return outcome{detail: fmt.Sprintf("stopped %s", d.Round(time.Millisecond))}, nil
}

// concurrentAPI sends, at once, a planned and a forced failover toward the geo-secondary, a PATCH of the group and
// reads of it. Every answer must be a success or the catalogue's 4xx (never a 5xx), and every operation started
// must end, the failovers successfully or refused as busy.
func concurrentAPI(ctx context.Context, c *campaign) (outcome, error) {
	to, err := c.secondaryServer(ctx)
	if err != nil {
		return outcome{}, err
	}
	reqs := []struct {
		method, path string
		body         any
	}{
		{http.MethodPost, c.groupPath(to) + "/failover", nil},
		{http.MethodPost, c.groupPath(to) + "/forceFailoverAllowDataLoss", nil},
		{http.MethodPatch, c.groupPath(east), map[string]any{"properties": map[string]any{
			"readWriteEndpoint": map[string]any{"failoverPolicy": "Manual"}}}},
		{http.MethodGet, c.groupPath(east), nil},
		{http.MethodGet, c.groupPath(west), nil},
	}
	c.rng.Shuffle(len(reqs), func(i, j int) { reqs[i], reqs[j] = reqs[j], reqs[i] })
	type answer struct {
		i   int
		url string
		err error
	}
	answers := make([]answer, len(reqs))
	var wg sync.WaitGroup
	for i, r := range reqs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			resp, err := c.api.Do(ctx, r.method, r.path, r.body)
			answers[i] = answer{i: i, err: err}
			if err == nil {
				answers[i].url = operationURL(resp)
			}
		}()
	}
	wg.Wait()
	var out outcome
	var problems []string
	var accepted []string
	for _, a := range answers {
		r := reqs[a.i]
		var ae *cli.ARMError
		switch {
		case a.err == nil:
		case errors.As(a.err, &ae) && ae.Status >= 400 && ae.Status < 500:
			accepted = append(accepted, fmt.Sprintf("%s %s: %d %s", r.method, last(r.path), ae.Status, ae.Code))
			continue
		default:
			problems = append(problems, fmt.Sprintf("%s %s: %v", r.method, last(r.path), a.err))
			continue
		}
		if a.url == "" {
			continue
		}
		st, err := c.followURL(ctx, a.url, 180*time.Second)
		if err != nil {
			problems = append(problems, err.Error())
			continue
		}
		accepted = append(accepted, fmt.Sprintf("%s %s: %s", r.method, last(r.path), st.Status))
		if st.Status != "Succeeded" && (st.Error == nil || st.Error.Code == "InternalServerError") {
			problems = append(problems, fmt.Sprintf("%s %s ended %s %s", r.method, last(r.path), st.Status, st.errorText()))
		}
		if strings.HasSuffix(r.path, "forceFailoverAllowDataLoss") && st.Status == "Succeeded" {
			out.reports = append(out.reports, operationID(a.url))
		}
	}
	slices.Sort(accepted)
	out.detail = strings.Join(accepted, "; ")
	return out, errs(problems)
}

func last(path string) string { return path[strings.LastIndexByte(path, '/')+1:] }

// hostLoss (the cluster mode) cuts the primary's host off the network: its agent cannot renew its lease, fences
// the primary and exits. A forced failover is asked meanwhile (it waits for the lease to lapse, never for the
// host); then the host is healed, its agent started again as a supervisor would, and the old primary rejoins,
// read for its lost-transaction report first.
func hostLoss(ctx context.Context, c *campaign) (outcome, error) {
	hl, ok := c.world.(hostLoser)
	if !ok {
		return outcome{}, errors.New("host-loss needs the cluster mode")
	}
	p, _, err := c.roles(ctx)
	if err != nil {
		return outcome{}, err
	}
	heal, name, err := hl.cutHostOf(p.addr())
	if err != nil {
		return outcome{}, err
	}
	c.watch.set(func(w *watcher) { w.sourceDown = time.Now() })
	cut := time.Now()
	url, _, ferr := c.failoverAndFollow(ctx, "forceFailoverAllowDataLoss")
	took := time.Since(cut)
	herr := heal(ctx)
	c.watch.set(func(w *watcher) { w.sourceDown = time.Time{} })
	out := outcome{detail: fmt.Sprintf("%s cut; forced failover done %s after the cut", name, took.Round(time.Millisecond))}
	if url != "" {
		out.reports = append(out.reports, operationID(url))
	}
	if herr != nil {
		herr = fmt.Errorf("heal %s: %w", name, herr)
	}
	return out, errors.Join(ferr, herr)
}
