package instance

import (
	"encoding/binary"
	"fmt"
	"hash/crc32"

	"github.com/fogo-db/fogo/internal/postgres/lsn"
)

// A replication slot's state file (PostgreSQL 15, slot.c ReplicationSlotOnDisk), little-endian: magic, checksum
// (CRC-32C of everything after it), version, length, then ReplicationSlotPersistentData: name (64 bytes), database,
// persistency, xmin, catalog_xmin, restart_lsn, invalidated_at, confirmed_flush, two_phase_at, two_phase, plugin.
const (
	slotMagic           = 0x1051CA1
	slotVersion         = 2
	slotChecksummedFrom = 8
	slotRestartAt       = 16 + 64 + 4*4
	slotConfirmedAt     = slotRestartAt + 2*8
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

func (f *SlotFiles) checkState() error {
	s := f.State
	if len(s) < slotConfirmedAt+8 || binary.LittleEndian.Uint32(s) != slotMagic || binary.LittleEndian.Uint32(s[8:]) != slotVersion {
		return fmt.Errorf("slot state file of %d bytes is not a PostgreSQL 15 slot (magic, version)", len(s))
	}
	if got, want := crc32.Checksum(s[slotChecksummedFrom:], castagnoli), binary.LittleEndian.Uint32(s[4:]); got != want {
		return fmt.Errorf("slot state file checksum %08x, want %08x", got, want)
	}
	return nil
}

// Positions reads the copied slot's restart_lsn and confirmed_flush from its state file.
func (f *SlotFiles) Positions() (restart, confirmed lsn.LSN, err error) {
	if err := f.checkState(); err != nil {
		return 0, 0, err
	}
	return lsn.LSN(binary.LittleEndian.Uint64(f.State[slotRestartAt:])), lsn.LSN(binary.LittleEndian.Uint64(f.State[slotConfirmedAt:])), nil
}

// CapConfirmedFlush lowers the copied slot's confirmed_flush to at most upTo (what the standby that gets the copy
// has flushed): a copy confirming WAL the standby does not hold would, after a forced failover, start decoding past
// the new timeline's fork point and skip the new primary's transactions in between. It fails when the slot's
// restart point is past upTo (the standby must catch up first). It returns the copy's confirmed_flush.
func (f *SlotFiles) CapConfirmedFlush(upTo lsn.LSN) (lsn.LSN, error) {
	restart, confirmed, err := f.Positions()
	if err != nil {
		return 0, err
	}
	if confirmed <= upTo {
		return confirmed, nil
	}
	if restart > upTo {
		return 0, fmt.Errorf("the slot's restart point %s is past what the standby flushed (%s)", restart, upTo)
	}
	s := append([]byte(nil), f.State...)
	binary.LittleEndian.PutUint64(s[slotConfirmedAt:], uint64(upTo))
	binary.LittleEndian.PutUint32(s[4:], crc32.Checksum(s[slotChecksummedFrom:], castagnoli))
	f.State = s
	return upTo, nil
}
