package localstore

import (
	"context"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/nopsync/nopsync/shared/state"
)

// TestCompactionKeepsWritesMadeDuringTheCopy: records and docs saved while a compaction
// copies the journal (without the lock) end up in the new journal, at the right offsets,
// and survive a reopen; versions saved over during the copy stay dead.
func TestCompactionKeepsWritesMadeDuringTheCopy(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	s, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	data := []byte(strings.Repeat("d", 5000))
	recs := map[string]*state.Record{}
	for i := 1; i <= 10; i++ {
		r := &state.Record{Entity: state.Order, ID: strconv.Itoa(i), Status: state.Pending, Data: data}
		if err := s.Save(ctx, r); err != nil {
			t.Fatal(err)
		}
		recs[r.ID] = r
	}
	for round := range 3 { // dead versions for the compaction to drop
		for _, r := range recs {
			r.Attempts = round + 1
			if err := s.Save(ctx, r); err != nil {
				t.Fatal(err)
			}
		}
	}
	before := s.JournalSize()

	old := compactSlack
	compactSlack = 1 << 40 // the saves in the hook must not start another compaction
	defer func() { compactSlack = old }()
	ran := false
	afterCopy = func() {
		ran = true
		r := recs["4"]
		r.Status, r.Attempts = state.Synced, 40
		if err := s.Save(ctx, r); err != nil {
			t.Error(err)
		}
		r.Attempts = 41 // and once more: the version just written dies before the swap
		if err := s.Save(ctx, r); err != nil {
			t.Error(err)
		}
		n := &state.Record{Entity: state.Customer, ID: "new", Status: state.Failed, Data: []byte("fresh")}
		if err := s.Save(ctx, n); err != nil {
			t.Error(err)
		}
		recs["new"] = n
		if err := s.SaveDoc(ctx, &state.Doc{Kind: "k", Key: "during", Value: []byte("v")}); err != nil {
			t.Error(err)
		}
	}
	defer func() { afterCopy = nil }()
	if err := s.compact(); err != nil {
		t.Fatal(err)
	}
	if !ran {
		t.Fatal("the hook did not run")
	}
	if s.Compactions() != 1 || s.JournalSize() >= before {
		t.Fatalf("compactions %d, journal %d bytes (was %d before the hook's writes)", s.Compactions(), s.JournalSize(), before)
	}
	fi, err := os.Stat(filepath.Join(dir, JournalName))
	if err != nil || fi.Size() != s.JournalSize() {
		t.Fatalf("journal file %v bytes (%v), store thinks %d", fi.Size(), err, s.JournalSize())
	}
	check := func(s *Store) {
		t.Helper()
		for _, want := range recs {
			g, err := s.Get(ctx, want.Entity, want.ID)
			if err != nil {
				t.Fatal(err)
			}
			if g.ETag != want.ETag || g.Attempts != want.Attempts || g.Status != want.Status || string(g.Data) != string(want.Data) {
				t.Fatalf("%s %s: got attempts %d status %s etag %s, want %d %s %s", want.Entity, want.ID, g.Attempts, g.Status, g.ETag, want.Attempts, want.Status, want.ETag)
			}
		}
		if d, err := s.GetDoc(ctx, "k", "during"); err != nil || string(d.Value) != "v" {
			t.Fatalf("doc saved during the copy: %v", err)
		}
		c, _ := s.Counts(ctx)
		if c[state.Order][state.Pending] != 9 || c[state.Order][state.Synced] != 1 || c[state.Customer][state.Failed] != 1 {
			t.Fatalf("counts: %v", c)
		}
	}
	check(s)
	// Updates keep working on the new journal, with the ETags from before.
	r := recs["7"]
	r.Attempts = 70
	if err := s.Save(ctx, r); err != nil {
		t.Fatal(err)
	}
	s.Close()
	s2, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer s2.Close()
	check(s2)
}
