package link

// The transaction buffer: the changes of the source transaction being decoded, until its commit. A transaction
// may be far larger than memory (one UPDATE of every row of a big table), so past spillAt bytes its changes go
// to a spool file, and the commit reads them back in chunks into one target transaction: fogo's memory stays
// bounded whatever the size of a source transaction.

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/fogo-db/fogo/internal/link/target"
)

// Variables, not constants, only so that tests can make them small.
var (
	// spillAt is the estimated size of a transaction's changes beyond which they go to the spool file.
	spillAt = 16 << 20
	// chunkBytes and chunkChanges bound one chunk read back from the spool (and written to the target at once).
	chunkBytes   = 8 << 20
	chunkChanges = 20000
)

// txnBuffer holds one source transaction's changes: its schema changes (few, applied first at the commit) and
// its row changes, in memory until they outgrow spillAt, then all of them in an unlinked spool file (nothing is
// left behind by a crash; a restarted link decodes the transaction again from its checkpoint).
type txnBuffer struct {
	dir string // where spool files are made ("" is the system's temporary directory)

	reshapes    []target.Change
	reshapeSrcs []*source

	rows    []target.Change
	srcs    []*source // the table of each row change
	size    int       // estimated bytes of rows
	count   int       // row changes, in memory and spooled
	spooled int       // row changes in the spool

	file    *os.File
	w       *bufio.Writer
	tables  []*target.Table // the spool's table references, by index
	sources []*source
	tableIx map[*target.Table]int
	srcIx   map[*source]int
	scratch []byte
}

// reset empties the buffer for the next transaction (the spool file, if any, is closed and so gone).
func (b *txnBuffer) reset() {
	b.reshapes, b.reshapeSrcs = b.reshapes[:0], b.reshapeSrcs[:0]
	clear(b.rows) // the values are not kept alive by the slice's spare capacity
	b.rows, b.srcs = b.rows[:0], b.srcs[:0]
	b.size, b.count, b.spooled = 0, 0, 0
	if b.file != nil {
		b.file.Close()
		b.file, b.w = nil, nil
		b.tables, b.sources, b.tableIx, b.srcIx = nil, nil, nil, nil
	}
	if cap(b.rows) > 4*chunkChanges {
		b.rows, b.srcs = nil, nil // a big transaction's arrays are not kept for the small ones that follow
	}
}

// addReshape adds a schema change of src.
func (b *txnBuffer) addReshape(c target.Change, src *source) {
	b.reshapes, b.reshapeSrcs = append(b.reshapes, c), append(b.reshapeSrcs, src)
}

// add adds a row change of src, spilling to the spool once the transaction outgrows spillAt.
func (b *txnBuffer) add(c target.Change, src *source) error {
	b.count++
	if b.file != nil {
		b.spooled++
		return b.encode(c, src)
	}
	b.rows, b.srcs = append(b.rows, c), append(b.srcs, src)
	b.size += changeSize(c)
	if b.size < spillAt {
		return nil
	}
	return b.spill()
}

// spilled reports whether the transaction's row changes are in the spool.
func (b *txnBuffer) spilled() bool { return b.file != nil }

// spill moves the row changes held in memory to a new spool file.
func (b *txnBuffer) spill() error {
	f, err := os.CreateTemp(b.dir, "fogo-link-txn-*.spool")
	if err != nil {
		return fmt.Errorf("spool a large transaction: %w", err)
	}
	os.Remove(f.Name()) // unlinked: the open file is all there is, and a crash leaves nothing behind
	b.file, b.w = f, bufio.NewWriterSize(f, 1<<20)
	b.tableIx, b.srcIx = map[*target.Table]int{}, map[*source]int{}
	for i, c := range b.rows {
		if err := b.encode(c, b.srcs[i]); err != nil {
			return err
		}
	}
	b.spooled = len(b.rows)
	clear(b.rows)
	b.rows, b.srcs, b.size = nil, nil, 0
	return nil
}

// Spool records: kind, table index, source index, the new row, the old row. A row: its length + 1 (0: none),
// then per value a tag (text, NULL, unchanged) and, for text, its length and bytes.
const (
	tagText = iota
	tagNull
	tagUnchanged
)

func (b *txnBuffer) encode(c target.Change, src *source) error {
	ti, ok := b.tableIx[c.Table]
	if !ok {
		ti = len(b.tables)
		b.tables, b.tableIx[c.Table] = append(b.tables, c.Table), ti
	}
	si, ok := b.srcIx[src]
	if !ok {
		si = len(b.sources)
		b.sources, b.srcIx[src] = append(b.sources, src), si
	}
	p := b.scratch[:0]
	p = binary.AppendUvarint(p, uint64(c.Kind))
	p = binary.AppendUvarint(p, uint64(ti))
	p = binary.AppendUvarint(p, uint64(si))
	for _, row := range [][]target.Value{c.New, c.Old} {
		if row == nil {
			p = binary.AppendUvarint(p, 0)
			continue
		}
		p = binary.AppendUvarint(p, uint64(len(row))+1)
		for _, v := range row {
			switch {
			case v.Null:
				p = append(p, tagNull)
			case v.Unchanged:
				p = append(p, tagUnchanged)
			default:
				p = append(p, tagText)
				p = binary.AppendUvarint(p, uint64(len(v.Text)))
				p = append(p, v.Text...)
			}
		}
	}
	b.scratch = p[:0]
	var n [binary.MaxVarintLen64]byte
	if _, err := b.w.Write(n[:binary.PutUvarint(n[:], uint64(len(p)))]); err != nil {
		return fmt.Errorf("spool a large transaction: %w", err)
	}
	if _, err := b.w.Write(p); err != nil {
		return fmt.Errorf("spool a large transaction: %w", err)
	}
	return nil
}

// each calls fn with the row changes in order after the first skip, in chunks (at most chunkChanges changes or
// about chunkBytes). The chunk's slices are reused by the next call.
func (b *txnBuffer) each(skip int, fn func(rows []target.Change, srcs []*source) error) error {
	if b.file == nil {
		for i := min(skip, len(b.rows)); i < len(b.rows); i += chunkChanges {
			j := min(i+chunkChanges, len(b.rows))
			if err := fn(b.rows[i:j], b.srcs[i:j]); err != nil {
				return err
			}
		}
		return nil
	}
	if err := b.w.Flush(); err != nil {
		return fmt.Errorf("spool a large transaction: %w", err)
	}
	if _, err := b.file.Seek(0, io.SeekStart); err != nil {
		return fmt.Errorf("read the spooled transaction back: %w", err)
	}
	r := bufio.NewReaderSize(b.file, 1<<20)
	rows := make([]target.Change, 0, chunkChanges)
	srcs := make([]*source, 0, chunkChanges)
	size := 0
	var rec []byte
	for n := 0; n < b.spooled; n++ {
		l, err := binary.ReadUvarint(r)
		if err != nil {
			return fmt.Errorf("read the spooled transaction back: %w", err)
		}
		if uint64(cap(rec)) < l {
			rec = make([]byte, l)
		}
		rec = rec[:l]
		if _, err := io.ReadFull(r, rec); err != nil {
			return fmt.Errorf("read the spooled transaction back: %w", err)
		}
		if n < skip {
			continue
		}
		c, src, err := b.decode(rec)
		if err != nil {
			return fmt.Errorf("read the spooled transaction back: %w", err)
		}
		rows, srcs = append(rows, c), append(srcs, src)
		size += changeSize(c)
		if len(rows) == chunkChanges || size >= chunkBytes || n == b.spooled-1 {
			if err := fn(rows, srcs); err != nil {
				return err
			}
			clear(rows)
			rows, srcs, size = rows[:0], srcs[:0], 0
		}
	}
	return nil
}

var errSpoolCorrupt = errors.New("corrupt spool record")

func (b *txnBuffer) decode(p []byte) (target.Change, *source, error) {
	next := func() (uint64, error) {
		v, n := binary.Uvarint(p)
		if n <= 0 {
			return 0, errSpoolCorrupt
		}
		p = p[n:]
		return v, nil
	}
	var c target.Change
	kind, err := next()
	if err != nil {
		return c, nil, err
	}
	ti, err := next()
	if err != nil || ti >= uint64(len(b.tables)) {
		return c, nil, errSpoolCorrupt
	}
	si, err := next()
	if err != nil || si >= uint64(len(b.sources)) {
		return c, nil, errSpoolCorrupt
	}
	c.Kind, c.Table = int(kind), b.tables[ti]
	for _, row := range []*[]target.Value{&c.New, &c.Old} {
		n, err := next()
		if err != nil || n > uint64(len(p))+1 {
			return c, nil, errSpoolCorrupt
		}
		if n == 0 {
			continue
		}
		vals := make([]target.Value, n-1)
		for i := range vals {
			if len(p) == 0 {
				return c, nil, errSpoolCorrupt
			}
			tag := p[0]
			p = p[1:]
			switch tag {
			case tagNull:
				vals[i].Null = true
			case tagUnchanged:
				vals[i].Unchanged = true
			case tagText:
				l, err := next()
				if err != nil || l > uint64(len(p)) {
					return c, nil, errSpoolCorrupt
				}
				vals[i].Text, p = string(p[:l]), p[l:]
			default:
				return c, nil, errSpoolCorrupt
			}
		}
		*row = vals
	}
	return c, b.sources[si], nil
}

// changeSize estimates the memory a row change takes.
func changeSize(c target.Change) int {
	n := 96 + 24*(len(c.New)+len(c.Old))
	for _, v := range c.New {
		n += len(v.Text)
	}
	for _, v := range c.Old {
		n += len(v.Text)
	}
	return n
}
