package chaos

// The invariants checked after every fault.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/fogo-db/fogo/internal/cli"
)

// waitWritable waits until a new session through the read-write listener commits (a row of the probe table).
func (c *campaign) waitWritable(ctx context.Context, within time.Duration) (bool, error) {
	deadline := time.Now().Add(within)
	var last error
	for time.Now().Before(deadline) && ctx.Err() == nil {
		cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		conn, err := c.dial(cctx, c.rw)
		if err == nil {
			_, err = conn.Exec(cctx, "INSERT INTO probe VALUES (now())")
			conn.Close(context.Background())
		}
		cancel()
		if err == nil {
			return true, nil
		}
		last = err
		sleep(ctx, 50*time.Millisecond)
	}
	return false, fmt.Errorf("no commit through the read-write listener within %s: %v", within, last)
}

// waitCatchUp waits until the group reads CATCH_UP: the geo-secondary streams again.
func (c *campaign) waitCatchUp(ctx context.Context, within time.Duration) error {
	deadline := time.Now().Add(within)
	state := ""
	for time.Now().Before(deadline) && ctx.Err() == nil {
		st, _, err := c.groupState(ctx)
		if err == nil && st == "CATCH_UP" {
			return nil
		}
		state = st
		sleep(ctx, 200*time.Millisecond)
	}
	return fmt.Errorf("the group reads %q, not CATCH_UP, after %s", state, within)
}

// checkOnePrimary: of the instances that run, exactly one takes writes, and the read-write listener lands on it.
func (c *campaign) checkOnePrimary(ctx context.Context) error {
	var writable []string
	for _, in := range c.instances() {
		cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		conn, err := c.dial(cctx, in.addr())
		if err == nil {
			var recovery, readOnly bool
			err = conn.QueryRow(cctx, "SELECT pg_is_in_recovery(), current_setting('default_transaction_read_only')::bool").Scan(&recovery, &readOnly)
			if err == nil && !recovery && !readOnly {
				writable = append(writable, in.addr())
			}
			conn.Close(context.Background())
		}
		cancel()
	}
	if len(writable) != 1 {
		return fmt.Errorf("%d instances take writes (%v), want exactly one", len(writable), writable)
	}
	cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	conn, err := c.dial(cctx, c.rw)
	if err != nil {
		return fmt.Errorf("the read-write listener: %w", err)
	}
	defer conn.Close(context.Background())
	at, err := serverAddr(cctx, conn)
	if err != nil {
		return err
	}
	if at != writable[0] {
		return fmt.Errorf("the read-write listener lands on %s, the writable primary is %s", at, writable[0])
	}
	return nil
}

// serverAddr is the address and port of the instance a session landed on, as host:port.
func serverAddr(ctx context.Context, conn *pgx.Conn) (string, error) {
	var addr *string
	var port int
	if err := conn.QueryRow(ctx, "SELECT host(inet_server_addr()), inet_server_port()").Scan(&addr, &port); err != nil {
		return "", err
	}
	host := "127.0.0.1"
	if addr != nil {
		host = *addr
	}
	return fmt.Sprintf("%s:%d", host, port), nil
}

// missingOnPrimary returns which of ids the primary (through the read-write listener) does not have.
func (c *campaign) missingOnPrimary(ctx context.Context, ids []int64) ([]int64, error) {
	cctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	conn, err := c.dial(cctx, c.rw)
	if err != nil {
		return nil, err
	}
	defer conn.Close(context.Background())
	var missing []int64
	err = conn.QueryRow(cctx, `SELECT coalesce(array_agg(a.id ORDER BY a.id), '{}') FROM unnest($1::bigint[]) AS a(id)
		WHERE NOT EXISTS (SELECT 1 FROM ledger l WHERE l.id = a.id)`, ids).Scan(&missing)
	return missing, err
}

// checkAcked: every acknowledged commit is on the primary, but those a forced failover's report said were lost.
func (c *campaign) checkAcked(ctx context.Context) error {
	missing, err := c.missingOnPrimary(ctx, c.ledger.expected())
	if err != nil {
		return err
	}
	if len(missing) > 0 {
		return fmt.Errorf("%d acknowledged commits are missing on the primary (ids %v)", len(missing), head(missing))
	}
	return nil
}

// checkReport compares the lost-transaction reports of a fault's forced failovers with the ledger: every
// acknowledged commit the primary lacks is in one, and everything in them was acknowledged or in doubt, and is not
// on the primary.
func (c *campaign) checkReport(ctx context.Context, operations []string) error {
	reported := map[int64]bool{}
	for _, op := range operations {
		ids, err := c.reportedIDs(ctx, op)
		if err != nil {
			return err
		}
		for id := range ids {
			reported[id] = true
		}
	}
	ids := c.ledger.expected()
	c.ledger.mu.Lock()
	for id := range c.ledger.inDoubt {
		ids = append(ids, id)
	}
	c.ledger.mu.Unlock()
	for id := range reported {
		ids = append(ids, id)
	}
	missing, err := c.missingOnPrimary(ctx, ids)
	if err != nil {
		return err
	}
	absent := map[int64]bool{}
	for _, id := range missing {
		absent[id] = true
	}
	c.ledger.mu.Lock()
	defer c.ledger.mu.Unlock()
	var unreported, extra, present []int64
	for id := range c.ledger.acked {
		if absent[id] && !c.ledger.lost[id] && !reported[id] {
			unreported = append(unreported, id)
		}
	}
	for id := range reported {
		switch {
		case !absent[id]:
			present = append(present, id)
		case !c.ledger.acked[id] && !c.ledger.inDoubt[id]:
			extra = append(extra, id)
		}
	}
	if len(unreported)+len(extra)+len(present) > 0 {
		return fmt.Errorf("acknowledged, lost and not reported: %v; reported but never written: %v; reported but on the primary: %v",
			head(unreported), head(extra), head(present))
	}
	for id := range reported {
		if c.ledger.acked[id] {
			c.ledger.lost[id] = true
		}
	}
	return nil
}

// reportedIDs waits until the operation's lost-transaction report is produced and returns the ledger ids it
// lists as lost.
func (c *campaign) reportedIDs(ctx context.Context, operation string) (map[int64]bool, error) {
	var body struct {
		Properties struct {
			Databases []struct {
				Status       string `json:"status"`
				Message      string `json:"message"`
				Truncated    bool   `json:"truncated"`
				Transactions []struct {
					Changes []struct {
						Table string `json:"table"`
						Op    string `json:"op"`
						New   []struct {
							Name  string  `json:"name"`
							Value *string `json:"value"`
						} `json:"new"`
					} `json:"changes"`
				} `json:"transactions"`
			} `json:"databases"`
		} `json:"properties"`
	}
	deadline := time.Now().Add(120 * time.Second)
	for {
		cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		r, err := c.api.Do(cctx, http.MethodGet, c.groupPath(east)+"/lostTransactions/"+operation, nil)
		cancel()
		var ae *cli.ARMError
		if errors.As(err, &ae) && ae.Status == http.StatusNotFound {
			return map[int64]bool{}, nil // no report: the failover was planned (tryPlanned), or changed nothing
		}
		if err == nil {
			if err := json.Unmarshal(r.Body, &body); err != nil {
				return nil, err
			}
			if len(body.Properties.Databases) == 1 && body.Properties.Databases[0].Status != "Pending" {
				break
			}
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("the lost-transaction report of %s is not produced after 120 s (%v)", operation, err)
		}
		sleep(ctx, 250*time.Millisecond)
	}
	db := body.Properties.Databases[0]
	if db.Status != "Complete" || db.Truncated {
		return nil, fmt.Errorf("the lost-transaction report reads %s (truncated %v): %s", db.Status, db.Truncated, db.Message)
	}
	out := map[int64]bool{}
	for _, t := range db.Transactions {
		for _, ch := range t.Changes {
			if ch.Table != "ledger" {
				continue // the probe table's rows
			}
			if ch.Op != "insert" {
				return nil, fmt.Errorf("the report has a %s of the ledger, which the writers only insert into", ch.Op)
			}
			for _, col := range ch.New {
				if col.Name == "id" && col.Value != nil {
					id, err := strconv.ParseInt(*col.Value, 10, 64)
					if err != nil {
						return nil, err
					}
					out[id] = true
				}
			}
		}
	}
	return out, nil
}

// checkLink: with the writers paused, the link's DuckDB target catches up with the primary: the same rows (an
// md5 over every row's id and note), no duplicate.
func (c *campaign) checkLink(ctx context.Context) error {
	c.ledger.pause()
	defer c.ledger.resume()
	cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	conn, err := c.dial(cctx, c.rw)
	if err != nil {
		cancel()
		return err
	}
	var n int64
	var want string
	err = conn.QueryRow(cctx, "SELECT count(*), coalesce(md5(string_agg(id::text || ':' || note, ',' ORDER BY id)), '') FROM ledger").Scan(&n, &want)
	conn.Close(context.Background())
	cancel()
	if err != nil {
		return fmt.Errorf("the source's digest: %w", err)
	}
	const q = "SELECT count(*) AS n, count(DISTINCT id) AS d, coalesce(md5(string_agg(CAST(id AS VARCHAR) || ':' || note, ',' ORDER BY id)), '') AS h FROM public.ledger"
	deadline := time.Now().Add(120 * time.Second)
	last := ""
	for time.Now().Before(deadline) && ctx.Err() == nil {
		qctx, qcancel := context.WithTimeout(ctx, 30*time.Second)
		r, err := c.api.Do(qctx, http.MethodPost, workspace+"/linkconnections/lk/query"+lcVersion, map[string]any{"query": q})
		qcancel()
		if err == nil {
			var res struct {
				Rows [][]any `json:"rows"`
			}
			if err := json.Unmarshal(r.Body, &res); err == nil && len(res.Rows) == 1 && len(res.Rows[0]) == 3 {
				got, dup := fmt.Sprint(res.Rows[0][2]), fmt.Sprint(res.Rows[0][0]) != fmt.Sprint(res.Rows[0][1])
				if dup {
					return fmt.Errorf("the target has duplicate ids: %v rows, %v distinct", res.Rows[0][0], res.Rows[0][1])
				}
				if got == want {
					return nil
				}
				last = fmt.Sprintf("target %v rows, source %d", res.Rows[0][0], n)
			}
		} else {
			last = err.Error()
		}
		sleep(ctx, 300*time.Millisecond)
	}
	var status struct {
		Status string `json:"status"`
		Error  string `json:"error"`
	}
	if r, err := c.api.Do(ctx, http.MethodGet, workspace+"/linkconnections/lk/detailedstatus"+lcVersion, nil); err == nil {
		_ = json.Unmarshal(r.Body, &status)
	}
	return fmt.Errorf("the link target did not catch up with the source in 120 s (%s; link %s %s)", last, status.Status, status.Error)
}

func head(ids []int64) []int64 {
	sort.Slice(ids, func(i, j int) bool { return ids[i] < ids[j] })
	return ids[:min(len(ids), 8)]
}

// errs joins a list of problems into one error, nil for none.
func errs(list []string) error {
	if len(list) == 0 {
		return nil
	}
	return errors.New(strings.Join(list, "; "))
}
