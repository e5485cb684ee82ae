package logrepl

import (
	"encoding/binary"
	"errors"
	"reflect"
	"testing"
)

// msg builds a pgoutput message from parts: byte, uint16, uint32, uint64, string (NUL-terminated) or []byte.
func msg(parts ...any) []byte {
	var b []byte
	for _, p := range parts {
		switch v := p.(type) {
		case byte:
			b = append(b, v)
		case uint16:
			b = binary.BigEndian.AppendUint16(b, v)
		case uint32:
			b = binary.BigEndian.AppendUint32(b, v)
		case uint64:
			b = binary.BigEndian.AppendUint64(b, v)
		case string:
			b = append(append(b, v...), 0)
		case []byte:
			b = append(b, v...)
		default:
			panic(p)
		}
	}
	return b
}

func TestDecode(t *testing.T) {
	rel := msg(byte('R'), uint32(16384), "public", "t", byte('d'), uint16(2),
		byte(1), "id", uint32(23), uint32(0xffffffff),
		byte(0), "note", uint32(25), uint32(0xffffffff))
	got, err := Decode(rel)
	if err != nil {
		t.Fatal(err)
	}
	want := Relation{ID: 16384, Namespace: "public", Name: "t", ReplicaIdentity: 'd', Columns: []Column{
		{Key: true, Name: "id", TypeOID: 23, TypMod: -1}, {Name: "note", TypeOID: 25, TypMod: -1}}}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("relation: %+v", got)
	}

	up := msg(byte('U'), uint32(16384), byte('K'), uint16(2), byte('t'), uint32(1), []byte("7"), byte('n'),
		byte('N'), uint16(2), byte('t'), uint32(1), []byte("7"), byte('u'))
	got, err = Decode(up)
	if err != nil {
		t.Fatal(err)
	}
	u := got.(Update)
	if u.OldKind != 'K' || string(u.Old[0].Data) != "7" || u.Old[1].Kind != Null || u.New[1].Kind != Unchanged {
		t.Fatalf("update: %+v", u)
	}

	tr, err := Decode(msg(byte('T'), uint32(2), byte(1), uint32(10), uint32(11)))
	if err != nil || !reflect.DeepEqual(tr, Truncate{Options: 1, RelationIDs: []uint32{10, 11}}) {
		t.Fatalf("truncate: %+v %v", tr, err)
	}
	c, err := Decode(msg(byte('C'), byte(0), uint64(0x10), uint64(0x20), uint64(0)))
	if err != nil || c.(Commit).EndLSN != 0x20 || c.(Commit).CommitLSN != 0x10 {
		t.Fatalf("commit: %+v %v", c, err)
	}

	for name, bad := range map[string][]byte{
		"truncated insert": msg(byte('I'), uint32(1), byte('N'), uint16(1), byte('t'), uint32(10), []byte("abc")),
		"truncated begin":  msg(byte('B'), uint64(1)),
		"empty":            {},
	} {
		if _, err := Decode(bad); !errors.Is(err, ErrShort) {
			t.Errorf("%s: %v", name, err)
		}
	}
	if _, err := Decode(msg(byte('Z'))); err == nil {
		t.Error("unknown message type accepted")
	}
	if _, err := Decode(msg(byte('I'), uint32(1), byte('N'), uint16(1), byte('x'))); err == nil {
		t.Error("unknown value kind accepted")
	}
}

func TestParseCopyData(t *testing.T) {
	k, err := parseCopyData(msg(byte('k'), uint64(0x1234), uint64(0), byte(1)))
	if err != nil || k.(Keepalive).ServerWALEnd != 0x1234 || !k.(Keepalive).ReplyRequested {
		t.Fatalf("keepalive: %+v %v", k, err)
	}
	w, err := parseCopyData(msg(byte('w'), uint64(1), uint64(2), uint64(0), []byte("B")))
	if err != nil || w.(XLogData).WALStart != 1 || string(w.(XLogData).Data) != "B" {
		t.Fatalf("xlogdata: %+v %v", w, err)
	}
	if _, err := parseCopyData(msg(byte('w'), uint64(1))); err == nil {
		t.Fatal("short XLogData accepted")
	}
}
