package store

import (
	"errors"
	"path/filepath"
	"testing"
)

type item struct {
	Name string
	N    int
}

func TestPutGetScanSurvivesReopen(t *testing.T) {
	path := filepath.Join(t.TempDir(), "state.db")
	keys := testKeys(t)
	s, err := Open(path, keys)
	if err != nil {
		t.Fatal(err)
	}
	err = s.Update(func(tx *Tx) error {
		for i, k := range []string{"a/1", "a/2", "b/1"} {
			if err := tx.Put(Servers, k, item{Name: k, N: i}); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	// A failing transaction leaves nothing behind.
	boom := errors.New("boom")
	if err := s.Update(func(tx *Tx) error {
		_ = tx.Put(Servers, "a/3", item{Name: "x"})
		return boom
	}); !errors.Is(err, boom) {
		t.Fatalf("want boom, got %v", err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s, err = Open(path, keys)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if _, err := Open(path, keys); err == nil {
		t.Fatal("second Open of the same file must fail while the first holds it")
	}
	err = s.View(func(tx *Tx) error {
		got, err := List[item](tx, Servers, "a/")
		if err != nil {
			return err
		}
		if len(got) != 2 || got[0].Name != "a/1" || got[1].N != 1 {
			t.Errorf("scan a/: %+v", got)
		}
		var it item
		if err := tx.MustGet(Servers, "a/3", &it); !errors.Is(err, ErrNotFound) {
			t.Errorf("rolled-back key: %v", err)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}
