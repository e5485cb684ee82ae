package instance

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"time"

	"github.com/fogo-db/fogo/internal/postgres/lsn"
)

// BaseBackup fills the (empty or partial) data directory with a copy of source, streaming WAL through the
// physical slot (which the caller created on the source). A partial copy from an interrupted attempt is wiped.
func (i *Instance) BaseBackup(ctx context.Context, source ConnInfo, slot string) error {
	if err := i.machine().RemoveAll(i.Dir); err != nil {
		return fmt.Errorf("base backup: clear %s: %w", i.Dir, err)
	}
	if err := i.MakeHome(); err != nil {
		return err
	}
	_, err := i.machine().Run(ctx, i.env(), "pg_basebackup", "-D", i.Dir, "-d", source.String(),
		"-X", "stream", "-S", slot, "-c", "fast", "--no-password")
	if err != nil {
		return fmt.Errorf("base backup from %s:%d: %w", source.Host, source.Port, err)
	}
	return i.writePassFile()
}

// RewindResult says whether pg_rewind had to rewrite anything, and from where the histories diverged.
type RewindResult struct {
	// AlreadyRewound: the directory still holds the backup_label of an earlier rewind; nothing was done.
	AlreadyRewound bool
	Rewound        bool
	DivergedAt     lsn.LSN
	Timeline       string
	// TargetEnd is the last checkpoint of the target before the rewind: what it had beyond DivergedAt is lost.
	TargetEnd lsn.LSN
}

var divergedRe = regexp.MustCompile(`diverged at WAL location ([0-9A-F]+/[0-9A-F]+) on timeline (\d+)`)

// Rewind makes the stopped (or crashed) data directory follow source's timeline with pg_rewind. pg_control is
// backed up first and put back if pg_rewind fails, because a failed rewind can leave it unusable; with it back, a
// failed rewind can be retried from scratch. "No rewind required" is a success with Rewound false.
func (i *Instance) Rewind(ctx context.Context, source ConnInfo) (RewindResult, error) {
	var res RewindResult
	if err := i.waitLockReleased(ctx, 30*time.Second); err != nil {
		return res, fmt.Errorf("rewind: %w", err)
	}
	// A backup_label means an earlier rewind (or base backup) finished but the instance has not yet recovered
	// past it. Rewinding again would run crash recovery over that state and break it; starting it as a standby
	// completes it.
	if labelled, err := i.machine().Exists(filepath.Join(i.Dir, "backup_label")); err != nil {
		return res, fmt.Errorf("rewind: %w", err)
	} else if labelled {
		res.AlreadyRewound = true
		return res, nil
	}
	if cd, err := i.ControlData(ctx); err == nil {
		res.TargetEnd = cd.CheckpointLSN
	}
	control := filepath.Join(i.Dir, "global", "pg_control")
	backup := filepath.Join(i.home(), "pg_control.before-rewind")
	saved, err := i.machine().ReadFile(control)
	if err != nil {
		return res, fmt.Errorf("rewind: read pg_control: %w", err)
	}
	if err := i.machine().WriteFile(backup, saved, 0o600); err != nil {
		return res, fmt.Errorf("rewind: back up pg_control: %w", err)
	}
	// pg_rewind replays a crashed directory's WAL in single-user mode first, which refuses to run with a
	// recovery signal present ("standby mode is not supported by single-user servers"). The caller writes
	// the standby configuration again after the rewind.
	for _, sig := range []string{"standby.signal", "recovery.signal"} {
		if err := i.machine().Remove(filepath.Join(i.Dir, sig)); err != nil {
			return res, fmt.Errorf("rewind: remove %s: %w", sig, err)
		}
	}
	out, err := i.machine().Run(ctx, i.env(), "pg_rewind", "--target-pgdata="+i.Dir, "--source-server="+source.String())
	if err != nil {
		if werr := i.machine().WriteFile(control, saved, 0o600); werr != nil {
			return res, fmt.Errorf("rewind: %w (and restoring pg_control failed: %v)", err, werr)
		}
		return res, fmt.Errorf("rewind: %w", err)
	}
	if m := divergedRe.FindStringSubmatch(out); m != nil {
		res.DivergedAt, _ = lsn.Parse(m[1])
		res.Timeline = m[2]
	}
	res.Rewound = !strings.Contains(out, "no rewind required")
	return res, nil
}

// ControlData is what pg_controldata says about the data directory.
type ControlData struct {
	State             string
	CheckpointLSN     lsn.LSN
	RedoLSN           lsn.LSN
	Timeline          string
	SystemIdentifier  string
	MinRecoveryEndLSN lsn.LSN
}

// ControlData runs pg_controldata.
func (i *Instance) ControlData(ctx context.Context) (ControlData, error) {
	out, err := i.machine().Run(ctx, nil, "pg_controldata", "-D", i.Dir)
	if err != nil {
		return ControlData{}, fmt.Errorf("pg_controldata %s: %w", i.Dir, err)
	}
	return parseControlData(out), nil
}

func parseControlData(out string) ControlData {
	var cd ControlData
	for _, line := range strings.Split(out, "\n") {
		k, v, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		v = strings.TrimSpace(v)
		switch strings.TrimSpace(k) {
		case "Database cluster state":
			cd.State = v
		case "Latest checkpoint location":
			cd.CheckpointLSN, _ = lsn.Parse(v)
		case "Latest checkpoint's REDO location":
			cd.RedoLSN, _ = lsn.Parse(v)
		case "Latest checkpoint's TimeLineID":
			cd.Timeline = v
		case "Database system identifier":
			cd.SystemIdentifier = v
		case "Minimum recovery ending location":
			cd.MinRecoveryEndLSN, _ = lsn.Parse(v)
		}
	}
	return cd
}

// RemoveSlotDirsOffline deletes the replication slots whose names start with prefix from a stopped data
// directory: a demoted primary must not keep WAL for standbys that no longer stream from it.
func (i *Instance) RemoveSlotDirsOffline(prefix string) error {
	if _, running := i.Running(); running {
		return fmt.Errorf("remove slots of %s: instance is running", i.Dir)
	}
	names, err := i.machine().ReadDir(filepath.Join(i.Dir, "pg_replslot"))
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil
		}
		return err
	}
	for _, name := range names {
		if strings.HasPrefix(name, prefix) {
			if err := i.machine().RemoveAll(filepath.Join(i.Dir, "pg_replslot", name)); err != nil {
				return err
			}
		}
	}
	return nil
}
