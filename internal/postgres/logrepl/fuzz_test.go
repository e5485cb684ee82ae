package logrepl

import "testing"

// The pgoutput decoder and the CopyData parser read what the source server streams; a link must stop with an
// error, never panic, on anything malformed (a bug, a proxy, a hostile server). For any bytes: no panic, an
// error or a message, and an allocation bounded by the input. Seeds: the messages of the tests; the corpus the
// fuzzer found interesting is in testdata/fuzz. A short run is in the test command (make fuzz-short).
func FuzzDecode(f *testing.F) {
	tuple := []any{uint16(3), byte('t'), uint32(2), []byte("42"), byte('n'), byte('u')}
	for _, m := range [][]byte{
		msg(byte('B'), uint64(0x10), uint64(0), uint32(7)),
		msg(byte('C'), byte(0), uint64(0x10), uint64(0x20), uint64(0)),
		msg(byte('O'), uint64(0x10), "origin"),
		msg(byte('R'), uint32(1), "public", "t", byte('d'), uint16(2), byte(1), "id", uint32(23), uint32(0xffffffff), byte(0), "v", uint32(25), uint32(0xffffffff)),
		msg(byte('Y'), uint32(600), "public", "mytype"),
		msg(append([]any{byte('I'), uint32(1), byte('N')}, tuple...)...),
		msg(append(append([]any{byte('U'), uint32(1), byte('K')}, tuple...), append([]any{byte('N')}, tuple...)...)...),
		msg(append([]any{byte('D'), uint32(1), byte('O')}, tuple...)...),
		msg(byte('T'), uint32(2), byte(1), uint32(10), uint32(11)),
		msg(byte('M'), byte(1), uint64(0x10), "prefix", uint32(3), []byte("abc")),
		msg(byte('I'), uint32(1), byte('N'), uint16(1), byte('t'), uint32(0xffffffff)),
		msg(byte('I'), uint32(1), byte('N'), uint16(0xffff)),
		msg(byte('k'), uint64(0x1234), uint64(0), byte(1)),
		msg(byte('w'), uint64(1), uint64(2), uint64(0), []byte("B")),
		{},
	} {
		f.Add(m)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := Decode(b)
		if err == nil && m == nil {
			t.Fatalf("%q: no message and no error", b)
		}
		if err != nil && m != nil {
			t.Fatalf("%q: a message and an error (%v)", b, err)
		}
		if tup, ok := tupleOf(m); ok && len(tup) > len(b) {
			t.Fatalf("%q: %d values from %d bytes", b, len(tup), len(b))
		}
		if c, err := parseCopyData(b); err == nil && (len(b) == 0 || c == nil) {
			t.Fatalf("%q: CopyData parsed to %v without an error", b, c)
		}
	})
}

// tupleOf returns the new tuple of an insert or update.
func tupleOf(m any) (Tuple, bool) {
	switch v := m.(type) {
	case Insert:
		return v.New, true
	case Update:
		return v.New, true
	}
	return nil, false
}
