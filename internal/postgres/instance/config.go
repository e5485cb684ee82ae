package instance

import (
	"fmt"
	"net/netip"
	"path/filepath"
	"sort"
	"strings"
)

// Settings is the configuration fogo owns for an instance.
type Settings struct {
	Port            int
	ListenAddresses string // default 127.0.0.1
	// Standby writes standby.signal with primary_conninfo/primary_slot_name; otherwise standby.signal is removed.
	Standby         bool
	PrimaryConnInfo string
	PrimarySlotName string
	// Extra are more GUCs (e.g. the fence default_transaction_read_only=on); they override fogo's own.
	Extra map[string]string
	// TLS, when set, serves TLS (ssl=on, TLS 1.2 or later) with these files, copied next to the data directory.
	// When nil, the TLS settings are left out (PostgreSQL's default: no TLS).
	TLS *TLSFiles
	// AllowFrom are networks besides loopback that may log in (SCRAM) and replicate as the superuser: over TLS
	// only (hostssl) when TLS is set, else over plain TCP (host), for trusted networks only. ListenAddresses must
	// include an address they can reach.
	AllowFrom []netip.Prefix
	// Isolated lets only the superuser log in (no other login, no replication) and makes transactions read-only by
	// default: a fenced former primary started only so that fogo can read it.
	Isolated bool
}

// baseSettings are what every fogo instance needs (DESIGN.md, "Running Postgres").
var baseSettings = map[string]string{
	"wal_level":                    "logical",
	"max_wal_senders":              "10",
	"max_replication_slots":        "10",
	"hot_standby":                  "on",
	"hot_standby_feedback":         "on",
	"wal_log_hints":                "on",
	"shared_buffers":               "16MB",
	"max_connections":              "256",
	"wal_keep_size":                "256MB",
	"password_encryption":          "scram-sha-256",
	"unix_socket_directories":      "",
	"logging_collector":            "off",
	"log_line_prefix":              "%m [%p] %q%u@%d ",
	"log_min_messages":             "warning",
	"wal_receiver_status_interval": "1s",
	"wal_retrieve_retry_interval":  "1s",
	"checkpoint_timeout":           "5min",
	"max_wal_size":                 "512MB",
	"min_wal_size":                 "80MB",
}

// confValue quotes a value for postgresql.conf, whose strings take backslash escapes (GUC_scanstr) besides the doubled quote.
func confValue(v string) string {
	return "'" + strings.NewReplacer(`\`, `\\`, `'`, `''`).Replace(v) + "'"
}

const includeLine = "include_if_exists = 'fogo.conf'\n"

// Configure writes fogo.conf, pg_hba.conf, the passfile, the TLS files and standby.signal as settings say. It
// takes effect at the next start, or at a reload for reloadable settings.
func (i *Instance) Configure(s Settings) error {
	hba, err := hbaConf(i.SuperUser, s.AllowFrom, s.TLS != nil, s.Isolated) // checked before anything is written
	if err != nil {
		return fmt.Errorf("configure %s: %w", i.Dir, err)
	}
	if err := i.ensureInclude(); err != nil {
		return fmt.Errorf("configure %s: %w", i.Dir, err)
	}
	if err := i.writePassFile(); err != nil {
		return err
	}
	conf := map[string]string{}
	for k, v := range baseSettings {
		conf[k] = v
	}
	listen := s.ListenAddresses
	if listen == "" {
		listen = "127.0.0.1"
	}
	conf["listen_addresses"] = listen
	conf["port"] = fmt.Sprint(s.Port)
	if s.Standby {
		conf["primary_conninfo"] = s.PrimaryConnInfo + " passfile=" + ConnValue(i.passFile())
		conf["primary_slot_name"] = s.PrimarySlotName
	}
	if s.TLS != nil {
		ssl, err := i.installTLS(s.TLS)
		if err != nil {
			return fmt.Errorf("configure %s: %w", i.Dir, err)
		}
		for k, v := range ssl {
			conf[k] = v
		}
	}
	for k, v := range s.Extra {
		conf[k] = v
	}
	if s.Isolated {
		conf["default_transaction_read_only"] = "on"
	}
	keys := make([]string, 0, len(conf))
	for k := range conf {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var b strings.Builder
	b.WriteString("# Written by fogo before every start; edits are lost.\n")
	for _, k := range keys {
		fmt.Fprintf(&b, "%s = %s\n", k, confValue(conf[k]))
	}
	if err := i.machine().WriteFile(filepath.Join(i.Dir, "fogo.conf"), []byte(b.String()), 0o600); err != nil {
		return fmt.Errorf("configure %s: write fogo.conf: %w", i.Dir, err)
	}
	if err := i.machine().WriteFile(filepath.Join(i.Dir, "pg_hba.conf"), []byte(hba), 0o600); err != nil {
		return fmt.Errorf("configure %s: write pg_hba.conf: %w", i.Dir, err)
	}
	signal := filepath.Join(i.Dir, "standby.signal")
	if s.Standby {
		if err := i.machine().WriteFile(signal, nil, 0o600); err != nil {
			return fmt.Errorf("configure %s: write standby.signal: %w", i.Dir, err)
		}
	} else if err := i.machine().Remove(signal); err != nil {
		return fmt.Errorf("configure %s: remove standby.signal: %w", i.Dir, err)
	}
	return nil
}

// ensureInclude appends the include of fogo.conf to postgresql.conf once, and empties postgresql.auto.conf of
// anything that could override fogo.conf (fogo never uses ALTER SYSTEM).
func (i *Instance) ensureInclude() error {
	path := filepath.Join(i.Dir, "postgresql.conf")
	b, err := i.machine().ReadFile(path)
	if err != nil {
		return err
	}
	if !strings.Contains(string(b), includeLine) {
		if err := i.machine().WriteFile(path, append(b, []byte("\n"+includeLine)...), 0o600); err != nil {
			return err
		}
	}
	auto := filepath.Join(i.Dir, "postgresql.auto.conf")
	if b, err := i.machine().ReadFile(auto); err == nil && strings.Contains(string(b), "=") {
		return i.machine().WriteFile(auto, []byte("# Do not edit this file manually!\n# It will be overwritten by the ALTER SYSTEM command.\n"), 0o600)
	}
	return nil
}
