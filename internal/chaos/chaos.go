// Package chaos runs a seeded fault campaign against a live fogo (the embedded mode, `fogo serve` as a child
// process): writers commit through the read-write listener and keep a ledger of what was acknowledged, a link
// streams the ledger into DuckDB, and a reproducible random sequence of faults hits the instances, the
// replication stream, the link and fogo itself. After every fault the campaign checks fogo's promises: one
// writable primary, behind the listener; nothing acknowledged lost by anything but a forced failover, and what a
// forced failover lost exactly what its report says; the link target equal to the source, without duplicates;
// no status claiming health past its heartbeat; the API answering throughout.
package chaos

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	mrand "math/rand/v2"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/fogo-db/fogo/internal/cli"
)

// Config is one campaign.
type Config struct {
	// Fogo is the fogo binary that runs `fogo serve`.
	Fogo string
	// DataDir is fogo's data directory; "" makes a temporary one, removed at the end unless Keep.
	DataDir string
	Keep    bool
	// Seed makes the sequence of faults; the same seed gives the same sequence.
	Seed int64
	// Faults is how many faults to inject.
	Faults int
	// Kinds restricts the faults to these kinds (all when empty; see Kinds).
	Kinds []string
	// PortLow is the first of 100 ports: 99 for instances and endpoints, the last for the API.
	PortLow int
	// Progress receives a line per fault; nil discards them.
	Progress io.Writer
	// Mode is "embedded" (the default: `fogo serve` alone) or "cluster" (etcd, an agent per region and a
	// controller in network namespaces, as fogo try-cluster makes them; root, Linux, etcd-server).
	Mode string
}

// Names used on the API.
const (
	subscription = "00000000-0000-0000-0000-00000000c4a0"
	group        = "chaos"
	east, west   = "chaos-east", "chaos-west"
	database     = "ledger"
	login        = "chaosadmin"
	workspace    = "/workspaces/chaos"
	lsVersion    = "?api-version=2020-12-01"
	lcVersion    = "?api-version=2022-12-01-preview"
)

// campaign is the state of one run.
type campaign struct {
	cfg      Config
	rng      *mrand.Rand
	world    world
	password string
	api      *cli.Client
	rw       string // the read-write listener: host:port, or a multi-host list h1:p1,h2:p2 (cluster mode)
	ledger   *ledger
	watch    *watcher
	progress io.Writer
}

// Run runs a campaign and returns its result. The error is for a campaign that could not run (fogo does not
// start, the set-up fails); a fault whose checks fail is in the result (Passed false), with the seed.
func Run(ctx context.Context, cfg Config) (*Result, error) {
	if cfg.Faults <= 0 {
		cfg.Faults = 10
	}
	if cfg.PortLow == 0 {
		cfg.PortLow = 27000
	}
	kinds, err := pickKinds(cfg.Kinds, cfg.Faults, cfg.Mode == "cluster")
	if err != nil {
		return nil, err
	}
	c := &campaign{cfg: cfg, rng: mrand.New(mrand.NewPCG(uint64(cfg.Seed), 0x636861)), ledger: newLedger(),
		password: "Ch4os-" + randomHex(8), progress: cfg.Progress}
	if c.progress == nil {
		c.progress = io.Discard
	}
	switch cfg.Mode {
	case "", "embedded":
		c.world = &embedded{cfg: cfg}
	case "cluster":
		c.world = &clustered{cfg: cfg, progress: c.progress}
	default:
		return nil, fmt.Errorf("unknown mode %q: embedded or cluster", cfg.Mode)
	}
	defer c.world.close()
	if c.api, err = c.world.start(ctx); err != nil {
		return nil, err
	}
	if err := c.setUp(ctx); err != nil {
		return nil, fmt.Errorf("set up (seed %d): %w\nfogo's log:\n%s", cfg.Seed, err, c.world.logTail())
	}

	wctx, stopWriters := context.WithCancel(ctx)
	var writers sync.WaitGroup
	for w := int64(1); w <= 2; w++ {
		writers.Add(1)
		go func() { defer writers.Done(); c.write(wctx, w) }()
	}
	c.watch = newWatcher(c)
	go c.watch.run(wctx)
	defer func() { stopWriters(); c.ledger.resume(); writers.Wait() }()

	res := &Result{Seed: cfg.Seed, Started: time.Now().UTC()}
	sequence := make([]string, cfg.Faults)
	for i := range sequence {
		sequence[i] = kinds[c.rng.IntN(len(kinds))]
	}
	for i, kind := range sequence {
		if ctx.Err() != nil {
			break
		}
		fr := c.runFault(ctx, i+1, kind)
		res.Faults = append(res.Faults, fr)
		fmt.Fprintln(c.progress, fr.line())
		if !fr.OK {
			fmt.Fprintf(c.progress, "chaos: fault %d (%s) broke an invariant; reproduce with --seed %d\nfogo's log:\n%s\n",
				i+1, kind, cfg.Seed, c.world.logTail())
			break
		}
	}
	res.Acked, res.InDoubt, res.Lost = c.ledger.counts()
	res.finish()
	return res, ctx.Err() // interrupted: what ran so far, and why it stopped
}

// runFault injects one fault, waits for the recovery and checks every invariant.
func (c *campaign) runFault(ctx context.Context, n int, kind string) FaultResult {
	fr := FaultResult{N: n, Kind: kind, Started: time.Now().UTC()}
	c.watch.begin()
	out, err := faults[kind](ctx, c)
	fr.Detail = out.detail
	if err != nil {
		fr.add("fault", err)
	}
	writable, err := c.waitWritable(ctx, 120*time.Second)
	fr.Writable = time.Since(fr.Started)
	fr.add("writable", err)
	if writable {
		err = c.waitCatchUp(ctx, 180*time.Second)
		fr.Redundant = time.Since(fr.Started)
		fr.add("geo-secondary streams again", err)
		fr.add("one writable primary", c.checkOnePrimary(ctx))
		if len(out.reports) > 0 {
			fr.add("lost = report", c.checkReport(ctx, out.reports))
		}
		fr.add("no acknowledged commit lost", c.checkAcked(ctx))
		fr.add("link target = source", c.checkLink(ctx))
	}
	apiErrs, statusErrs := c.watch.end()
	fr.add("API answered", apiErrs)
	fr.add("statuses true", statusErrs)
	fr.OK = true
	for _, ch := range fr.Checks {
		fr.OK = fr.OK && ch.OK
	}
	return fr
}

// setUp makes the servers, the database and its ledger, the failover group and the link, and waits until the
// geo-secondary streams and the link has copied the ledger.
func (c *campaign) setUp(ctx context.Context) error {
	for _, s := range []struct{ name, location string }{{east, "eastus"}, {west, "westus"}} {
		if err := c.change(ctx, "PUT", c.serverPath(s.name), map[string]any{"location": s.location,
			"properties": map[string]any{"administratorLogin": login, "administratorLoginPassword": c.password}}); err != nil {
			return fmt.Errorf("create server %s: %w", s.name, err)
		}
	}
	if err := c.change(ctx, "PUT", c.serverPath(east)+"/databases/"+database, map[string]any{"location": "eastus"}); err != nil {
		return fmt.Errorf("create database: %w", err)
	}
	var ep struct {
		Properties struct {
			Endpoint string `json:"endpoint"`
		} `json:"properties"`
	}
	if err := c.get(ctx, c.serverPath(east), &ep); err != nil {
		return err
	}
	conn, err := c.dial(ctx, ep.Properties.Endpoint)
	if err != nil {
		return fmt.Errorf("connect to %s: %w", east, err)
	}
	for _, sql := range []string{"CREATE TABLE ledger(id bigint PRIMARY KEY, note text NOT NULL)", "CREATE TABLE probe(at timestamptz)"} {
		if _, err := conn.Exec(ctx, sql); err != nil {
			conn.Close(context.Background())
			return fmt.Errorf("%s: %w", sql, err)
		}
	}
	conn.Close(context.Background())
	if err := c.change(ctx, "PUT", c.groupPath(east), map[string]any{"properties": map[string]any{
		"readWriteEndpoint": map[string]any{"failoverPolicy": "Manual"},
		"readOnlyEndpoint":  map[string]any{"failoverPolicy": "Disabled"},
		"partnerServers":    []any{map[string]any{"id": c.serverPath(west)}},
		"databases":         []string{c.serverPath(east) + "/databases/" + database},
	}}); err != nil {
		return fmt.Errorf("create failover group: %w", err)
	}
	var g struct {
		Properties struct {
			ReadWriteEndpoint struct {
				Endpoint string `json:"endpoint"`
			} `json:"readWriteEndpoint"`
		} `json:"properties"`
	}
	if err := c.get(ctx, c.groupPath(east), &g); err != nil {
		return err
	}
	c.rw = g.Properties.ReadWriteEndpoint.Endpoint
	if err := c.waitCatchUp(ctx, 120*time.Second); err != nil {
		return err
	}
	return c.setUpLink(ctx)
}

// setUpLink streams the ledger into DuckDB through a link that follows the group.
func (c *campaign) setUpLink(ctx context.Context) error {
	host, port := splitHostPort(strings.Split(c.rw, ",")[0])
	steps := []struct {
		method, path string
		body         any
	}{
		{"PUT", workspace + "/linkedservices/duck" + lsVersion, map[string]any{"properties": map[string]any{
			"type": "DuckDb", "typeProperties": map[string]any{"path": "chaos.duckdb"}}}},
		{"PUT", workspace + "/linkedservices/src" + lsVersion, map[string]any{"properties": map[string]any{
			"type": "PostgreSql", "typeProperties": map[string]any{"connectionString": map[string]any{"type": "SecureString",
				"value": fmt.Sprintf("host=%s port=%s dbname=%s user=%s password=%s", host, port, database, login, c.password)}}}}},
		{"PUT", workspace + "/linkconnections/lk" + lcVersion, map[string]any{"properties": map[string]any{
			"sourceDatabase": map[string]any{"linkedService": map[string]any{"referenceName": "src"},
				"typeProperties": map[string]any{"resourceId": c.groupPath(east)}},
			"targetDatabase": map[string]any{"linkedService": map[string]any{"referenceName": "duck"},
				"typeProperties": map[string]any{"dropExistingTargetTableOnStart": true}}}}},
		{"POST", workspace + "/linkconnections/lk/edittables" + lcVersion, map[string]any{"linkTables": []any{map[string]any{
			"id": "ledger", "source": map[string]any{"schemaName": "public", "tableName": "ledger"},
			"target": map[string]any{"schemaName": "public", "tableName": "ledger"}, "operationType": "add"}}}},
		{"POST", workspace + "/linkconnections/lk/start" + lcVersion, nil},
	}
	for _, s := range steps {
		if _, err := c.api.Do(ctx, s.method, s.path, s.body); err != nil {
			return fmt.Errorf("%s %s: %w", s.method, s.path, err)
		}
	}
	return nil
}

func (c *campaign) serverPath(name string) string {
	return fmt.Sprintf("/subscriptions/%s/resourceGroups/chaos/providers/Microsoft.Sql/servers/%s", subscription, name)
}

func (c *campaign) groupPath(server string) string {
	return c.serverPath(server) + "/failoverGroups/" + group
}

// dial opens a session as the admin login through endpoint: host:port, or a libpq multi-host list h1:p1,h2:p2.
func (c *campaign) dial(ctx context.Context, endpoint string) (*pgx.Conn, error) {
	var hosts, ports []string
	for _, ep := range strings.Split(endpoint, ",") {
		h, p := splitHostPort(ep)
		hosts, ports = append(hosts, h), append(ports, p)
	}
	return pgx.Connect(ctx, fmt.Sprintf("host=%s port=%s user=%s password=%s dbname=%s sslmode=%s connect_timeout=5",
		strings.Join(hosts, ","), strings.Join(ports, ","), login, c.password, database, c.world.sslmode()))
}

func splitHostPort(ep string) (string, string) {
	for i := len(ep) - 1; i >= 0; i-- {
		if ep[i] == ':' {
			return ep[:i], ep[i+1:]
		}
	}
	return ep, ""
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}
