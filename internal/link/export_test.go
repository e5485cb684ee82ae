package link

// SetAfterMerge sets a function run after each table a snapshot was merged into (nil: none).
func SetAfterMerge(f func(table string) error) { afterMerge = f }

// SetSpill makes transactions spill to their spool beyond bytes, read back in chunks of chunk changes; the
// returned function restores the defaults.
func SetSpill(bytes, chunk int) (restore func()) {
	b, c := spillAt, chunkChanges
	spillAt, chunkChanges = bytes, chunk
	return func() { spillAt, chunkChanges = b, c }
}

// SetAfterPart sets a function run after each part of a transaction applied in parts (nil: none).
func SetAfterPart(f func(done int) error) { afterPart = f }
