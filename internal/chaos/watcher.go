package chaos

// The watcher samples the API during each fault: it must answer whenever fogo runs, and what it says of health
// must not outlast the thing's heartbeat.

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"sync"
	"time"
)

// Heartbeats: how long a status may lag behind the facts.
const (
	// groupHeartbeat: the observer's pass (1 s) and its probe (2 s), with room for a loaded machine.
	groupHeartbeat = 6 * time.Second
	// linkHeartbeat: a link gives up on a source silent for 30 s.
	linkHeartbeat = 40 * time.Second
)

type watcher struct {
	c  *campaign
	mu sync.Mutex
	// fogoDown: fogo is down on purpose (killed, restarting); the API is not expected to answer.
	fogoDown bool
	// standbyDown and sourceDown: since when the geo-secondary, or the primary the link reads, is down (zero: up).
	standbyDown, sourceDown time.Time
	apiFails, statusFails   []string
	slowest                 time.Duration
}

func newWatcher(c *campaign) *watcher { return &watcher{c: c} }

// begin starts a fault's window.
func (w *watcher) begin() {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.apiFails, w.statusFails = nil, nil
}

// end closes the window and returns what went wrong in it.
func (w *watcher) end() (apiErr, statusErr error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.standbyDown, w.sourceDown = time.Time{}, time.Time{}
	return errs(w.apiFails), errs(w.statusFails)
}

func (w *watcher) set(fn func(w *watcher)) {
	w.mu.Lock()
	defer w.mu.Unlock()
	fn(w)
}

// run samples every 250 ms until ctx ends.
func (w *watcher) run(ctx context.Context) {
	lastLink := time.Time{}
	for ctx.Err() == nil {
		sleep(ctx, 250*time.Millisecond)
		w.mu.Lock()
		down, standbySince, sourceSince := w.fogoDown, w.standbyDown, w.sourceDown
		w.mu.Unlock()
		if down {
			continue
		}
		start := time.Now()
		state, _, err := w.c.groupState(ctx)
		took := time.Since(start)
		w.mu.Lock()
		if took > w.slowest {
			w.slowest = took
		}
		switch {
		case err != nil && !w.fogoDown && ctx.Err() == nil:
			w.apiFails = append(w.apiFails, fmt.Sprintf("%s: GET the group: %v", start.Format("15:04:05.000"), err))
		case err == nil && !standbySince.IsZero() && start.Sub(standbySince) > groupHeartbeat && state == "CATCH_UP" && w.standbyDown == standbySince:
			w.statusFails = append(w.statusFails, fmt.Sprintf("the group reads CATCH_UP %s after its geo-secondary went down",
				start.Sub(standbySince).Round(time.Millisecond)))
		}
		w.mu.Unlock()
		if !sourceSince.IsZero() && time.Since(sourceSince) > linkHeartbeat && time.Since(lastLink) > time.Second {
			lastLink = time.Now()
			var st struct {
				Status string `json:"status"`
			}
			cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			r, err := w.c.api.Do(cctx, http.MethodGet, workspace+"/linkconnections/lk/detailedstatus"+lcVersion, nil)
			cancel()
			if err == nil && json.Unmarshal(r.Body, &st) == nil && st.Status == "Running" {
				w.set(func(w *watcher) {
					if w.sourceDown == sourceSince {
						w.statusFails = append(w.statusFails, fmt.Sprintf("the link reads Running %s after its source went down",
							time.Since(sourceSince).Round(time.Millisecond)))
					}
				})
			}
		}
	}
}
