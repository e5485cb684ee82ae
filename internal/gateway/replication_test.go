package gateway

import "testing"

func TestReplicationMode(t *testing.T) {
	for v, want := range map[string]string{"database": replLogical, "false": replNone, "off": replNone, "0": replNone, "no": replNone,
		"true": replPhysical, "on": replPhysical, "1": replPhysical, "yes": replPhysical, "Database": replPhysical, "bogus": replPhysical} {
		if got := replicationMode(map[string]string{"replication": v}); got != want {
			t.Errorf("replication=%s: %q, want %q", v, got, want)
		}
	}
	if got := replicationMode(map[string]string{"user": "u"}); got != replNone {
		t.Errorf("no replication parameter: %q", got)
	}
}

func TestPhysicalCommand(t *testing.T) {
	refused := []string{
		"BASE_BACKUP",
		"  base_backup (PROGRESS)",
		"/* x */ BASE_BACKUP",
		"-- c\nBASE_BACKUP;",
		"START_REPLICATION 0/0",
		"START_REPLICATION PHYSICAL 0/0 TIMELINE 1",
		`START_REPLICATION SLOT "x" PHYSICAL 0/0`,
		`START_REPLICATION SLOT "LOGICAL" 0/0`,
		"START_REPLICATION SLOT x 0/0",
		"CREATE_REPLICATION_SLOT x PHYSICAL",
		"CREATE_REPLICATION_SLOT x TEMPORARY PHYSICAL RESERVE_WAL",
		`CREATE_REPLICATION_SLOT "a""b" PHYSICAL`,
		`CREATE_REPLICATION_SLOT "LOGICAL" PHYSICAL`,
	}
	for _, q := range refused {
		if physicalCommand(q) == "" {
			t.Errorf("%q was let through", q)
		}
	}
	allowed := []string{
		"IDENTIFY_SYSTEM",
		`CREATE_REPLICATION_SLOT "fogo_link_a" LOGICAL pgoutput EXPORT_SNAPSHOT`,
		`CREATE_REPLICATION_SLOT "a""b" TEMPORARY LOGICAL pgoutput`,
		`START_REPLICATION SLOT "fogo_link_a" LOGICAL 0/16B3748 (proto_version '1', publication_names '"p"')`,
		`DROP_REPLICATION_SLOT "x" WAIT`,
		"TIMELINE_HISTORY 2",
		"SELECT 1",
		"",
	}
	for _, q := range allowed {
		if cmd := physicalCommand(q); cmd != "" {
			t.Errorf("%q was refused as %s", q, cmd)
		}
	}
}
