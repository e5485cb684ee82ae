package bench

import (
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/fogo-db/fogo/internal/postgres/pgbin"
)

// ProxyOptions configure the proxy benchmark.
type ProxyOptions struct {
	Clients  []int         // pgbench client counts (default 1, 8, 32)
	Duration time.Duration // per pgbench run (default 10s)
	Scale    int           // pgbench -s (default 10)
	Rounds   int           // runs per path and configuration, interleaved across paths; the median counts (default 3)
	PGBin    string
	Dir      string
	PortLow  int
	Progress io.Writer
}

// ProxyRow is one pgbench configuration measured on every path, in transactions per second.
type ProxyRow struct {
	Mode    string             `json:"mode"` // select-only (-S) or simple-update (-N)
	Clients int                `json:"clients"`
	TPS     map[string]float64 `json:"tps"` // path -> tps
}

// ProxyResult is the whole table; a path whose program is not installed is listed in Missing.
type ProxyResult struct {
	Paths   []string   `json:"paths"`
	Rows    []ProxyRow `json:"rows"`
	Missing []string   `json:"missing,omitempty"`
}

// Paths measured, in table order.
const (
	PathDirect    = "direct"
	PathFogo      = "fogo rw listener"
	PathPgBouncer = "pgbouncer (session)"
	PathHAProxy   = "haproxy (tcp)"
)

// Summary prints the table with each path's ratio to direct.
func (r ProxyResult) Summary() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%-14s %7s", "pgbench", "clients")
	for _, p := range r.Paths {
		fmt.Fprintf(&b, " %22s", p)
	}
	b.WriteString("\n")
	for _, row := range r.Rows {
		fmt.Fprintf(&b, "%-14s %7d", row.Mode, row.Clients)
		direct := row.TPS[PathDirect]
		for _, p := range r.Paths {
			if p == PathDirect {
				fmt.Fprintf(&b, " %22s", fmt.Sprintf("%.0f tps", direct))
				continue
			}
			fmt.Fprintf(&b, " %22s", fmt.Sprintf("%.0f (%.2fx)", row.TPS[p], row.TPS[p]/max(direct, 1)))
		}
		b.WriteString("\n")
	}
	for _, m := range r.Missing {
		fmt.Fprintf(&b, "not measured: %s\n", m)
	}
	return b.String()
}

// Proxy measures pgbench -S and -N against one primary directly, through fogo's read-write listener, through
// pgbouncer in session mode and through HAProxy in TCP mode, side by side in one run.
func Proxy(ctx context.Context, o ProxyOptions) (*ProxyResult, error) {
	if len(o.Clients) == 0 {
		o.Clients = []int{1, 8, 32}
	}
	if o.Duration <= 0 {
		o.Duration = 10 * time.Second
	}
	if o.Scale <= 0 {
		o.Scale = 10
	}
	if o.Rounds <= 0 {
		o.Rounds = 3
	}
	if o.PortLow == 0 {
		o.PortLow = 32000
	}
	if o.Progress == nil {
		o.Progress = io.Discard
	}
	bin, dir, cleanup, err := scratch(o.PGBin, o.Dir)
	if err != nil {
		return nil, err
	}
	defer cleanup()
	o.Dir = dir
	e, err := startFogoGroup(ctx, filepath.Join(o.Dir, "fogo"), o.PGBin, o.PortLow)
	if err != nil {
		return nil, err
	}
	defer e.close()
	direct := net.JoinHostPort("127.0.0.1", strconv.Itoa(e.primaryPort))
	res := &ProxyResult{Paths: []string{PathDirect, PathFogo}}
	addrs := map[string]string{PathDirect: direct, PathFogo: e.rwAddr}

	if addr, stop, err := startPgBouncer(ctx, bin, o, e, direct); err != nil {
		res.Missing = append(res.Missing, PathPgBouncer+": "+err.Error())
	} else {
		defer stop()
		res.Paths, addrs[PathPgBouncer] = append(res.Paths, PathPgBouncer), addr
	}
	if addr, stop, err := startHAProxy(ctx, o, direct); err != nil {
		res.Missing = append(res.Missing, PathHAProxy+": "+err.Error())
	} else {
		defer stop()
		res.Paths, addrs[PathHAProxy] = append(res.Paths, PathHAProxy), addr
	}

	pw := "PGPASSWORD=" + e.pw
	if out, err := pgbench(ctx, bin, pw, direct, e.login, "-i", "-q", "-s", strconv.Itoa(o.Scale)); err != nil {
		return nil, fmt.Errorf("pgbench -i: %w: %s", err, out)
	}
	for _, mode := range []struct{ name, flag string }{{"select-only", "-S"}, {"simple-update", "-N"}} {
		for _, clients := range o.Clients {
			row := ProxyRow{Mode: mode.name, Clients: clients, TPS: map[string]float64{}}
			runs := map[string][]float64{}
			// Interleave the paths round by round so that drift on a noisy machine hits them all alike.
			for round := 0; round < o.Rounds; round++ {
				for _, p := range res.Paths {
					tps, err := pgbenchTPS(ctx, bin, pw, addrs[p], e.login, mode.flag, clients, o.Duration)
					if err != nil {
						return nil, fmt.Errorf("%s %s %d clients: %w", p, mode.name, clients, err)
					}
					runs[p] = append(runs[p], tps)
					fmt.Fprintf(o.Progress, "%-13s %2d clients round %d %-20s %8.0f tps\n", mode.name, clients, round+1, p, tps)
				}
			}
			for p, v := range runs {
				slices.Sort(v)
				row.TPS[p] = v[len(v)/2]
			}
			res.Rows = append(res.Rows, row)
		}
	}
	return res, nil
}

var tpsRe = regexp.MustCompile(`tps = ([0-9.]+) \(without initial connection time\)`)

func pgbenchTPS(ctx context.Context, bin *pgbin.Bin, pw, addr, user, flag string, clients int, d time.Duration) (float64, error) {
	out, err := pgbench(ctx, bin, pw, addr, user, "-n", flag, "-c", strconv.Itoa(clients), "-j", strconv.Itoa(min(clients, 2)),
		"-T", strconv.Itoa(int(d.Seconds())))
	if err != nil {
		return 0, fmt.Errorf("%w: %s", err, out)
	}
	m := tpsRe.FindStringSubmatch(out)
	if m == nil {
		return 0, fmt.Errorf("no tps in pgbench output: %s", out)
	}
	return strconv.ParseFloat(m[1], 64)
}

// pgbench runs the pgbench next to the server binaries (or on PATH) against addr.
func pgbench(ctx context.Context, bin *pgbin.Bin, pw, addr, user string, args ...string) (string, error) {
	host, port, _ := strings.Cut(addr, ":")
	prog := bin.Path("pgbench")
	if _, err := os.Stat(prog); err != nil {
		if prog, err = exec.LookPath("pgbench"); err != nil {
			return "", fmt.Errorf("pgbench is not installed")
		}
	}
	cmd := exec.CommandContext(ctx, prog, append([]string{"-h", host, "-p", port, "-U", user}, append(args, "bench")...)...)
	cmd.Env = append(os.Environ(), pw, "PGSSLMODE=disable")
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// startPgBouncer runs pgbouncer in session mode in front of backend, as the postgres OS user when root.
func startPgBouncer(ctx context.Context, bin *pgbin.Bin, o ProxyOptions, e *fogoEnv, backend string) (string, func(), error) {
	prog, err := exec.LookPath("pgbouncer")
	if err != nil {
		if _, serr := os.Stat("/usr/sbin/pgbouncer"); serr != nil {
			return "", nil, fmt.Errorf("not installed (apt-get install pgbouncer)")
		}
		prog = "/usr/sbin/pgbouncer"
	}
	dir := filepath.Join(o.Dir, "pgbouncer")
	if err := bin.MkdirOwned(dir); err != nil {
		return "", nil, err
	}
	port := o.PortLow + 95
	host, bport, _ := strings.Cut(backend, ":")
	ini := fmt.Sprintf(`[databases]
bench = host=%s port=%s dbname=bench
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = %d
unix_socket_dir =
auth_type = scram-sha-256
auth_file = %s
pool_mode = session
max_client_conn = 500
default_pool_size = 100
logfile = %s
pidfile = %s
`, host, bport, port, filepath.Join(dir, "users.txt"), filepath.Join(dir, "pgbouncer.log"), filepath.Join(dir, "pgbouncer.pid"))
	users := fmt.Sprintf("%q %q\n", e.login, e.pw)
	if err := bin.WriteFileOwned(filepath.Join(dir, "pgbouncer.ini"), []byte(ini), 0o600); err != nil {
		return "", nil, err
	}
	if err := bin.WriteFileOwned(filepath.Join(dir, "users.txt"), []byte(users), 0o600); err != nil {
		return "", nil, err
	}
	cmd := bin.Command(ctx, nil, prog, filepath.Join(dir, "pgbouncer.ini"))
	return startDaemon(cmd, port, "pgbouncer")
}

// startHAProxy runs HAProxy in TCP mode in front of backend.
func startHAProxy(ctx context.Context, o ProxyOptions, backend string) (string, func(), error) {
	prog, err := exec.LookPath("haproxy")
	if err != nil {
		if _, serr := os.Stat("/usr/sbin/haproxy"); serr != nil {
			return "", nil, fmt.Errorf("not installed (apt-get install haproxy)")
		}
		prog = "/usr/sbin/haproxy"
	}
	port := o.PortLow + 96
	cfg := fmt.Sprintf(`global
    maxconn 1000
defaults
    mode tcp
    timeout connect 5s
    timeout client 1h
    timeout server 1h
listen pg
    bind 127.0.0.1:%d
    server db %s
`, port, backend)
	path := filepath.Join(o.Dir, "haproxy.cfg")
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		return "", nil, err
	}
	return startDaemon(exec.CommandContext(ctx, prog, "-db", "-f", path), port, "haproxy")
}

// startDaemon starts cmd and waits until it listens on port.
func startDaemon(cmd *exec.Cmd, port int, name string) (string, func(), error) {
	var out strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		return "", nil, fmt.Errorf("start %s: %w", name, err)
	}
	stop := func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		if c, err := net.Dial("tcp", addr); err == nil {
			c.Close()
			return addr, stop, nil
		}
	}
	stop()
	return "", nil, fmt.Errorf("%s did not listen on %s: %s", name, addr, out.String())
}
