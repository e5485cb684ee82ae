package e2e

import (
	"bufio"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/fogo-db/fogo/internal/testutil/pgtest"
)

// process is a `fogo serve` child process (the real binary), so a test can kill -9 it.
type process struct {
	cmd  *exec.Cmd
	mu   sync.Mutex
	logs []string
	done chan struct{}
}

// fogoBinary is the fogo command built once for the whole run (removed by TestMain).
var fogoBinary struct {
	once sync.Once
	dir  string
	path string
	err  error
}

// buildFogo returns the fogo command, built once per test run.
func buildFogo(t *testing.T) string {
	t.Helper()
	fogoBinary.once.Do(func() {
		dir, err := os.MkdirTemp("", "fogo-e2e-bin-")
		if err != nil {
			fogoBinary.err = err
			return
		}
		fogoBinary.dir, fogoBinary.path = dir, filepath.Join(dir, "fogo")
		if out, err := exec.Command("go", "build", "-o", fogoBinary.path, "github.com/fogo-db/fogo/cmd/fogo").CombinedOutput(); err != nil {
			fogoBinary.err = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if fogoBinary.err != nil {
		t.Fatal(fogoBinary.err)
	}
	return fogoBinary.path
}

// startProcess runs `fogo serve` on dataDir and waits until /healthz answers.
func startProcess(t *testing.T, bin, dataDir, listen string, low int, token string, env ...string) *process {
	t.Helper()
	return startProcessArgs(t, bin, dataDir, listen, low, token, nil, env...)
}

// startProcessArgs is startProcess with more `fogo serve` flags.
func startProcessArgs(t *testing.T, bin, dataDir, listen string, low int, token string, args []string, env ...string) *process {
	t.Helper()
	cmd := exec.Command(bin, append([]string{"serve", "--data-dir", dataDir, "--listen", listen,
		"--port-range", fmt.Sprintf("%d-%d", low, low+98), "--min-grace-period-minutes", "1",
		"--planned-catch-up-timeout", "20s"}, args...)...)
	cmd.Env = append(append(os.Environ(), "FOGO_API_TOKEN="+token), env...)
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p := &process{cmd: cmd, done: make(chan struct{})}
	go func() {
		sc := bufio.NewScanner(stderr)
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		for sc.Scan() {
			p.mu.Lock()
			p.logs = append(p.logs, sc.Text())
			p.mu.Unlock()
		}
		_ = cmd.Wait()
		close(p.done)
	}()
	t.Cleanup(func() { p.stop(t) })
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) {
		if resp, err := http.Get("http://" + listen + "/healthz"); err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return p
			}
		}
		select {
		case <-p.done:
			t.Fatalf("fogo serve exited:\n%s", p.output())
		case <-time.After(100 * time.Millisecond):
		}
	}
	t.Fatalf("fogo serve not ready:\n%s", p.output())
	return nil
}

func (p *process) output() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return strings.Join(p.logs, "\n")
}

// waitLog waits until a log line contains s.
func (p *process) waitLog(t *testing.T, s string, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		if strings.Contains(p.output(), s) {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("no log line with %q:\n%s", s, p.output())
}

// kill ends fogo with SIGKILL: no cleanup runs, its PostgreSQL instances keep running.
func (p *process) kill(t *testing.T) {
	t.Helper()
	if err := p.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	<-p.done
}

// stop ends fogo gracefully (it stops its instances).
func (p *process) stop(t *testing.T) {
	select {
	case <-p.done:
		return
	default:
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(60 * time.Second):
		_ = p.cmd.Process.Kill()
		<-p.done
		t.Errorf("fogo did not stop within 60s after SIGTERM")
	}
}

// TestKillFogoDuringFailover kills fogo (kill -9) in the middle of a planned failover (old primary already shut
// down, secondary not yet promoted) and of a forced failover (secondary promoted, roles not yet recorded),
// starts it again on the same data directory, and checks that each operation completes by itself with
// consistent roles, no acknowledged commit lost and replication running again.
func TestKillFogoDuringFailover(t *testing.T) {
	pgtest.Bin(t)
	bin := buildFogo(t)
	dir := pgtest.TempDir(t)
	low := portBase()
	listen := fmt.Sprintf("127.0.0.1:%d", low+99)
	const token = "crash-test-token"

	p1 := startProcess(t, bin, dir, listen, low, token, "FOGO_TEST_PAUSE_BEFORE_STEP=PlannedFailover:promote")
	f := &fogo{t: t, url: "http://" + listen, tok: token}
	f.groupWithLedger("crash-east", "crash-west", "crash-fg", "bank")
	ids := insertRows(t, f, "crash-east", "bank", 200)

	// 1. Planned failover, fogo killed after the demotion, before the promotion.
	planned := f.do(http.MethodPost, fgPath("crash-west", "crash-fg")+"/failover", nil)
	if planned.Status != 202 {
		t.Fatalf("failover: %d %s", planned.Status, planned.Raw)
	}
	p1.waitLog(t, "pausing before step", 60*time.Second)
	p1.kill(t)

	p2 := startProcess(t, bin, dir, listen, low, token, "FOGO_TEST_PAUSE_BEFORE_STEP=ForcedFailover:record")
	if st := f.wait(planned); st["status"] != "Succeeded" {
		t.Fatalf("planned failover after the restart: %v %v\n%s", st["status"], st["error"], p2.output())
	}
	if role(t, f, "crash-west", "crash-fg") != "Primary" || role(t, f, "crash-east", "crash-fg") != "Secondary" {
		t.Fatal("roles after the resumed planned failover are not swapped")
	}
	checkAllPresent(t, f, "crash-west", "bank", ids)
	f.waitGroupState("crash-west", "crash-fg", "CATCH_UP")
	mustExec(t, f, "crash-west", "bank", "INSERT INTO ledger(note) VALUES ('west-after-planned')")
	f.waitRowOn(t, "crash-east", "bank", "west-after-planned")
	ids = append(ids, insertRows(t, f, "crash-west", "bank", 50)...)

	// 2. Forced failover back to east, fogo killed after the promotion, before the roles are recorded.
	forced := f.do(http.MethodPost, fgPath("crash-east", "crash-fg")+"/forceFailoverAllowDataLoss", nil)
	if forced.Status != 202 {
		t.Fatalf("forced failover: %d %s", forced.Status, forced.Raw)
	}
	p2.waitLog(t, "pausing before step", 60*time.Second)
	p2.kill(t)

	// Killed again before its rejoin step, where the old primary is read for the lost-transaction report.
	p3 := startProcess(t, bin, dir, listen, low, token, "FOGO_TEST_PAUSE_BEFORE_STEP=ForcedFailover:rejoin")
	p3.waitLog(t, "pausing before step", 60*time.Second)
	p3.kill(t)
	p3 = startProcess(t, bin, dir, listen, low, token)
	if st := f.wait(forced); st["status"] != "Succeeded" {
		t.Fatalf("forced failover after the restart: %v %v\n%s", st["status"], st["error"], p3.output())
	}
	if role(t, f, "crash-east", "crash-fg") != "Primary" || role(t, f, "crash-west", "crash-fg") != "Secondary" {
		t.Fatal("roles after the resumed forced failover are not swapped")
	}
	// Everything was replicated before the forced failover (the writer had stopped), so nothing is lost, and the
	// report, made by the resumed operation, says so.
	checkAllPresent(t, f, "crash-east", "bank", ids)
	f.expectNothingLost(t, "crash-east", "crash-fg", operationID(forced))
	mustExec(t, f, "crash-east", "bank", "INSERT INTO ledger(note) VALUES ('east-after-forced')")
	f.waitGroupState("crash-east", "crash-fg", "CATCH_UP")
	f.waitRowOn(t, "crash-west", "bank", "east-after-forced")

	// 3. A graceful restart re-adopts the instances: the group is still streaming, nothing was reseeded.
	p3.stop(t)
	startProcess(t, bin, dir, listen, low, token)
	f.waitGroupState("crash-east", "crash-fg", "CATCH_UP")
	checkAllPresent(t, f, "crash-east", "bank", ids)
}

// insertRows commits n rows one by one on server/db (through the server's endpoint) and returns their ids.
func insertRows(t *testing.T, f *fogo, server, db string, n int) []int64 {
	t.Helper()
	return insertRowsAt(t, f.endpointOf(server), db, n)
}
