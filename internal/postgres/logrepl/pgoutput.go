package logrepl

import (
	"encoding/binary"
	"errors"
	"fmt"
	"time"

	"github.com/fogo-db/fogo/internal/postgres/lsn"
)

// Begin starts a transaction.
type Begin struct {
	FinalLSN   lsn.LSN // the commit record's LSN
	CommitTime time.Time
	XID        uint32
}

// Commit ends a transaction.
type Commit struct {
	Flags      uint8
	CommitLSN  lsn.LSN
	EndLSN     lsn.LSN // the end of the commit record: the position to confirm once the transaction is applied
	CommitTime time.Time
}

// Origin names the replication origin of the transaction's changes.
type Origin struct {
	CommitLSN lsn.LSN
	Name      string
}

// Column describes one column of a relation.
type Column struct {
	Key     bool // part of the replica identity
	Name    string
	TypeOID uint32
	TypMod  int32
}

// Relation describes a table before its first change in a session (and again after it changed).
type Relation struct {
	ID              uint32
	Namespace, Name string
	ReplicaIdentity byte // d(efault), n(othing), f(ull), i(ndex)
	Columns         []Column
}

// Type describes a non-builtin type used by a relation.
type Type struct {
	ID              uint32
	Namespace, Name string
}

// ValueKind says what a tuple column holds.
type ValueKind byte

// Value kinds, as pgoutput spells them.
const (
	Null      ValueKind = 'n'
	Unchanged ValueKind = 'u' // an unchanged TOASTed value the update did not send: keep the old one
	Text      ValueKind = 't'
)

// Value is one column of a tuple.
type Value struct {
	Kind ValueKind
	Data []byte // text format, for Kind Text
}

// Tuple is a row image.
type Tuple []Value

// Insert is a new row.
type Insert struct {
	RelationID uint32
	New        Tuple
}

// Update carries the new row and, when the replica identity requires it, the old key ('K') or whole old row ('O').
type Update struct {
	RelationID uint32
	OldKind    byte // 0, 'K' or 'O'
	Old        Tuple
	New        Tuple
}

// Delete carries the old key ('K') or whole old row ('O').
type Delete struct {
	RelationID uint32
	OldKind    byte
	Old        Tuple
}

// Truncate empties relations.
type Truncate struct {
	Options     uint8 // 1: CASCADE, 2: RESTART IDENTITY
	RelationIDs []uint32
}

// LogicalMessage is a pg_logical_emit_message.
type LogicalMessage struct {
	Transactional bool
	LSN           lsn.LSN
	Prefix        string
	Content       []byte
}

// ErrShort reports a truncated message.
var ErrShort = errors.New("pgoutput message is truncated")

// reader walks a message.
type reader struct {
	b   []byte
	err error
}

func (r *reader) need(n int) bool {
	if r.err == nil && len(r.b) < n {
		r.err = ErrShort
	}
	return r.err == nil
}

func (r *reader) u8() byte {
	if !r.need(1) {
		return 0
	}
	v := r.b[0]
	r.b = r.b[1:]
	return v
}

func (r *reader) u16() uint16 {
	if !r.need(2) {
		return 0
	}
	v := binary.BigEndian.Uint16(r.b)
	r.b = r.b[2:]
	return v
}

func (r *reader) u32() uint32 {
	if !r.need(4) {
		return 0
	}
	v := binary.BigEndian.Uint32(r.b)
	r.b = r.b[4:]
	return v
}

func (r *reader) u64() uint64 {
	if !r.need(8) {
		return 0
	}
	v := binary.BigEndian.Uint64(r.b)
	r.b = r.b[8:]
	return v
}

func (r *reader) str() string {
	if r.err != nil {
		return ""
	}
	for i, c := range r.b {
		if c == 0 {
			s := string(r.b[:i])
			r.b = r.b[i+1:]
			return s
		}
	}
	r.err = ErrShort
	return ""
}

func (r *reader) bytes(n int) []byte {
	if n < 0 || !r.need(n) {
		if r.err == nil {
			r.err = fmt.Errorf("pgoutput: invalid length %d", n)
		}
		return nil
	}
	v := append([]byte(nil), r.b[:n]...)
	r.b = r.b[n:]
	return v
}

func (r *reader) time() time.Time { return pgTime(int64(r.u64())) }

func (r *reader) tuple() Tuple {
	n := int(r.u16())
	t := make(Tuple, 0, min(n, len(r.b))) // each value takes a byte at least: a short message allocates little
	for i := 0; i < n && r.err == nil; i++ {
		kind := ValueKind(r.u8())
		switch kind {
		case Null, Unchanged:
			t = append(t, Value{Kind: kind})
		case Text:
			t = append(t, Value{Kind: Text, Data: r.bytes(int(int32(r.u32())))})
		default:
			if r.err == nil {
				r.err = fmt.Errorf("pgoutput: unknown tuple value kind %q", byte(kind))
			}
		}
	}
	return t
}

// Decode parses one pgoutput message (protocol version 1).
func Decode(b []byte) (any, error) {
	if len(b) == 0 {
		return nil, ErrShort
	}
	r := &reader{b: b[1:]}
	var msg any
	switch b[0] {
	case 'B':
		msg = Begin{FinalLSN: lsn.LSN(r.u64()), CommitTime: r.time(), XID: r.u32()}
	case 'C':
		msg = Commit{Flags: r.u8(), CommitLSN: lsn.LSN(r.u64()), EndLSN: lsn.LSN(r.u64()), CommitTime: r.time()}
	case 'O':
		msg = Origin{CommitLSN: lsn.LSN(r.u64()), Name: r.str()}
	case 'R':
		rel := Relation{ID: r.u32(), Namespace: r.str(), Name: r.str(), ReplicaIdentity: r.u8()}
		n := int(r.u16())
		for i := 0; i < n && r.err == nil; i++ {
			rel.Columns = append(rel.Columns, Column{Key: r.u8()&1 == 1, Name: r.str(), TypeOID: r.u32(), TypMod: int32(r.u32())})
		}
		msg = rel
	case 'Y':
		msg = Type{ID: r.u32(), Namespace: r.str(), Name: r.str()}
	case 'I':
		ins := Insert{RelationID: r.u32()}
		if k := r.u8(); r.err == nil && k != 'N' {
			return nil, fmt.Errorf("pgoutput insert: tuple kind %q", k)
		}
		ins.New = r.tuple()
		msg = ins
	case 'U':
		up := Update{RelationID: r.u32()}
		k := r.u8()
		if k == 'K' || k == 'O' {
			up.OldKind, up.Old = k, r.tuple()
			k = r.u8()
		}
		if r.err == nil && k != 'N' {
			return nil, fmt.Errorf("pgoutput update: tuple kind %q", k)
		}
		up.New = r.tuple()
		msg = up
	case 'D':
		del := Delete{RelationID: r.u32(), OldKind: r.u8()}
		if r.err == nil && del.OldKind != 'K' && del.OldKind != 'O' {
			return nil, fmt.Errorf("pgoutput delete: tuple kind %q", del.OldKind)
		}
		del.Old = r.tuple()
		msg = del
	case 'T':
		n := int(r.u32())
		tr := Truncate{Options: r.u8()}
		for i := 0; i < n && r.err == nil; i++ {
			tr.RelationIDs = append(tr.RelationIDs, r.u32())
		}
		msg = tr
	case 'M':
		lm := LogicalMessage{Transactional: r.u8() == 1, LSN: lsn.LSN(r.u64()), Prefix: r.str()}
		lm.Content = r.bytes(int(int32(r.u32())))
		msg = lm
	default:
		return nil, fmt.Errorf("pgoutput: unknown message type %q", b[0])
	}
	if r.err != nil {
		return nil, fmt.Errorf("pgoutput %q: %w", b[0], r.err)
	}
	return msg, nil
}
