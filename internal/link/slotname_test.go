package link

import (
	"strings"
	"testing"
)

// TestSlotNamesFitPostgres: a link's slot and its table-synchronisation slot fit PostgreSQL's 63 bytes for the
// longest link keys (a 128-character workspace and name) and for long legacy slot names, and stay distinct.
func TestSlotNamesFitPostgres(t *testing.T) {
	long := strings.Repeat("w", 128) + "/" + strings.Repeat("n", 128)
	for _, slot := range []string{SlotNameFor(long), SlotNameFor("ws/a"), LegacySlotName(strings.Repeat("x", 50)), "fogo_link_lk"} {
		sync := syncSlotName(slot)
		if len(slot) > maxSlotName || len(sync) > maxSlotName || sync == slot {
			t.Errorf("slot %q (%d bytes), its sync slot %q (%d bytes)", slot, len(slot), sync, len(sync))
		}
	}
	if syncSlotName("fogo_link_lk") != "fogo_link_lk_sync" {
		t.Errorf("a short slot's sync slot is %s", syncSlotName("fogo_link_lk"))
	}
}
