package link

import (
	"reflect"
	"strings"
	"testing"

	"github.com/fogo-db/fogo/internal/link/target"
)

// TestTxnBufferSpillsAndReadsBack: past spillAt a transaction's row changes go to the spool and come back in
// order, value for value (NULL, unchanged, empty and large text, no old row and an empty one), in chunks, after
// any number skipped; nothing stays in memory once spilled.
func TestTxnBufferSpillsAndReadsBack(t *testing.T) {
	defer func(b, c int) { spillAt, chunkChanges = b, c }(spillAt, chunkChanges)
	spillAt, chunkChanges = 4<<10, 7
	t1, t2 := &target.Table{Name: "a"}, &target.Table{Name: "b"}
	s1, s2 := &source{key: "public.a"}, &source{key: "public.b"}
	var want []target.Change
	var wantSrc []*source
	for i := range 100 {
		c := target.Change{Kind: target.Insert, Table: t1, New: []target.Value{{Text: strings.Repeat("x", i)}, {Null: true}, {Text: ""}}}
		src := s1
		switch i % 3 {
		case 1:
			c = target.Change{Kind: target.Update, Table: t2, Old: []target.Value{}, New: []target.Value{{Unchanged: true}, {Text: "é\x00"}}}
			src = s2
		case 2:
			c = target.Change{Kind: target.Delete, Table: t1, Old: []target.Value{{Text: "k"}, {Null: true}}}
		}
		want, wantSrc = append(want, c), append(wantSrc, src)
	}
	want = append(want, target.Change{Kind: target.Insert, Table: t2, New: []target.Value{{Text: strings.Repeat("big", 10000)}}})
	wantSrc = append(wantSrc, s2)
	b := &txnBuffer{dir: t.TempDir()}
	defer b.reset()
	for i, c := range want {
		if err := b.add(c, wantSrc[i]); err != nil {
			t.Fatal(err)
		}
	}
	if !b.spilled() || len(b.rows) != 0 || b.count != len(want) {
		t.Fatalf("spilled %v, %d rows in memory, count %d", b.spilled(), len(b.rows), b.count)
	}
	for _, skip := range []int{0, 1, 50, len(want)} {
		var got []target.Change
		var gotSrc []*source
		err := b.each(skip, func(rows []target.Change, srcs []*source) error {
			if len(rows) > chunkChanges {
				t.Errorf("a chunk of %d changes", len(rows))
			}
			for i := range rows {
				got, gotSrc = append(got, rows[i]), append(gotSrc, srcs[i])
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(got, want[skip:]) && !(len(got) == 0 && skip == len(want)) {
			t.Fatalf("skip %d: read back %d changes, differing from what was added", skip, len(got))
		}
		for i := range gotSrc {
			if gotSrc[i] != wantSrc[skip+i] || got[i].Table != want[skip+i].Table {
				t.Fatalf("skip %d: change %d has the wrong table or source", skip, i)
			}
		}
	}
	b.reset()
	if b.spilled() || b.count != 0 {
		t.Fatal("reset left the spool")
	}
}
