package localstore_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/nopsync/nopsync/shared/localstore"
	"github.com/nopsync/nopsync/shared/state"
	"github.com/nopsync/nopsync/shared/state/statetest"
)

func TestConformanceMemory(t *testing.T) {
	statetest.Run(t, func(t *testing.T) state.Store {
		s, err := localstore.Open("")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close() })
		return s
	})
}

func TestConformanceDir(t *testing.T) {
	statetest.Run(t, func(t *testing.T) state.Store {
		s, err := localstore.Open(t.TempDir())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close() })
		return s
	})
}

// TestConformanceReopened runs the suite against stores that are closed and reopened
// from their journal before every read, so replay must give back exactly what was saved.
func TestConformanceReopened(t *testing.T) {
	statetest.Run(t, func(t *testing.T) state.Store {
		r := &reopening{t: t, dir: t.TempDir()}
		r.reopen()
		return r
	})
}

type reopening struct {
	t   *testing.T
	dir string
	mu  sync.Mutex
	s   *localstore.Store
}

func (r *reopening) store() *localstore.Store {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.s
}

// reopen closes and opens the store again. The suite calls Counts and ListDocs only
// once its writers are done, so no write races with a reopen.
func (r *reopening) reopen() *localstore.Store {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.s != nil {
		if err := r.s.Close(); err != nil {
			r.t.Errorf("close: %v", err)
		}
	}
	s, err := localstore.Open(r.dir)
	if err != nil {
		r.t.Fatalf("reopen: %v", err)
	}
	r.s = s
	r.t.Cleanup(func() { s.Close() })
	return s
}

func (r *reopening) Get(ctx context.Context, e state.Entity, id string) (*state.Record, error) {
	return r.store().Get(ctx, e, id)
}
func (r *reopening) Save(ctx context.Context, rec *state.Record) error {
	return r.store().Save(ctx, rec)
}
func (r *reopening) GetMany(ctx context.Context, e state.Entity, ids []string) (map[string]*state.Record, error) {
	return r.store().GetMany(ctx, e, ids)
}
func (r *reopening) SaveMany(ctx context.Context, recs []*state.Record) []error {
	return r.store().SaveMany(ctx, recs)
}
func (r *reopening) Scan(ctx context.Context, e state.Entity, sts []state.Status, fn func(*state.Record) error) error {
	return r.store().Scan(ctx, e, sts, fn)
}
func (r *reopening) Counts(ctx context.Context) (state.Counts, error) {
	// Counts is only called once writers are done: reopen so counts come from replay.
	return r.reopen().Counts(ctx)
}
func (r *reopening) GetDoc(ctx context.Context, kind, key string) (*state.Doc, error) {
	return r.store().GetDoc(ctx, kind, key)
}
func (r *reopening) SaveDoc(ctx context.Context, d *state.Doc) error {
	return r.store().SaveDoc(ctx, d)
}
func (r *reopening) SaveDocs(ctx context.Context, ds []*state.Doc) []error {
	return r.store().SaveDocs(ctx, ds)
}
func (r *reopening) ListDocs(ctx context.Context, kind string) ([]*state.Doc, error) {
	return r.reopen().ListDocs(ctx, kind)
}

func TestRestart(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	s, err := localstore.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	data := bytes.Repeat([]byte("0123456789abcdef"), 16<<10) // 256 KiB
	want := map[string]*state.Record{}
	for i := range 20 {
		r := &state.Record{Entity: state.Entities[i%3], ID: fmt.Sprint(i), Status: state.Statuses[i%4],
			Data: data[:i*1000], Extra: map[string]string{"i": fmt.Sprint(i)}, SyncedAt: time.Now(),
			LeaseOwner: "me", LeaseUntil: time.Now().Add(time.Hour)}
		if err := s.Save(ctx, r); err != nil {
			t.Fatal(err)
		}
		r.Status = state.Statuses[(i+1)%4]
		if err := s.Save(ctx, r); err != nil {
			t.Fatal(err)
		}
		want[string(r.Entity)+"/"+r.ID] = r
	}
	if err := s.SaveDoc(ctx, &state.Doc{Kind: "run", Key: "a", Value: []byte("v")}); err != nil {
		t.Fatal(err)
	}
	counts, _ := s.Counts(ctx)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Get(ctx, state.Customer, "0"); err == nil {
		t.Fatal("Get on a closed store succeeded")
	}

	s2, err := localstore.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer s2.Close()
	for _, w := range want {
		g, err := s2.Get(ctx, w.Entity, w.ID)
		if err != nil {
			t.Fatalf("after restart: %v", err)
		}
		if g.ETag != w.ETag || g.Status != w.Status || !bytes.Equal(g.Data, w.Data) || g.Extra["i"] != w.Extra["i"] ||
			!g.UpdatedAt.Equal(w.UpdatedAt) || !g.SyncedAt.Equal(w.SyncedAt) || !g.LeaseUntil.Equal(w.LeaseUntil) || g.LeaseOwner != "me" {
			t.Fatalf("after restart %s %s: got %+v", w.Entity, w.ID, g)
		}
		// Versions carry over: the old ETag still works, a create still conflicts.
		g.Attempts = 9
		if err := s2.Save(ctx, g); err != nil {
			t.Fatalf("update after restart: %v", err)
		}
	}
	if err := s2.Save(ctx, &state.Record{Entity: state.Customer, ID: "0", Status: state.Synced}); !errors.Is(err, state.ErrConflict) {
		t.Fatalf("create after restart: %v, want ErrConflict", err)
	}
	counts2, _ := s2.Counts(ctx)
	for _, e := range state.Entities {
		for _, st := range state.Statuses {
			if counts[e][st] != counts2[e][st] {
				t.Fatalf("counts after restart %v, before %v", counts2, counts)
			}
		}
	}
	if d, err := s2.GetDoc(ctx, "run", "a"); err != nil || string(d.Value) != "v" {
		t.Fatalf("doc after restart: %v %v", d, err)
	}
}

func TestTornLastLine(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	s, err := localstore.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		if err := s.Save(ctx, &state.Record{Entity: state.Order, ID: fmt.Sprint(i), Status: state.Synced}); err != nil {
			t.Fatal(err)
		}
	}
	s.Close()
	path := filepath.Join(dir, localstore.JournalName)
	good, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	for _, tail := range []string{
		`{"rec":{"Entity":"order","ID":"99","Sta`, // crash mid-line
		"{\"rec\":{\"Entity\":\"order\"\n",        // newline made it, the rest did not
		"\x00\x00\x00\x00",                        // zero-filled tail after a crash
	} {
		if err := os.WriteFile(path, append(bytes.Clone(good), tail...), 0o600); err != nil {
			t.Fatal(err)
		}
		s, err := localstore.Open(dir)
		if err != nil {
			t.Fatalf("open with torn tail %q: %v", tail, err)
		}
		c, _ := s.Counts(ctx)
		if c[state.Order][state.Synced] != 3 {
			t.Fatalf("after torn tail %q: counts %v", tail, c)
		}
		if _, err := s.Get(ctx, state.Order, "99"); !errors.Is(err, state.ErrNotFound) {
			t.Fatalf("torn record came back: %v", err)
		}
		// New writes land after the good lines and survive another restart.
		if err := s.Save(ctx, &state.Record{Entity: state.Order, ID: "3", Status: state.Failed}); err != nil {
			t.Fatal(err)
		}
		s.Close()
		s, err = localstore.Open(dir)
		if err != nil {
			t.Fatal(err)
		}
		if r, err := s.Get(ctx, state.Order, "3"); err != nil || r.Status != state.Failed {
			t.Fatalf("write after a torn tail lost: %v %v", r, err)
		}
		s.Close()
	}

	// A bad line in the middle is corruption, not a crash: refuse to open.
	lines := bytes.SplitAfter(good, []byte("\n"))
	bad := append(append(bytes.Clone(lines[0]), "garbage\n"...), lines[1]...)
	if err := os.WriteFile(path, bad, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := localstore.Open(dir); err == nil {
		t.Fatal("opened a journal with a corrupt line in the middle")
	}
}

func TestCompaction(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	s, err := localstore.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	r := &state.Record{Entity: state.Product, ID: "1", Status: state.Pending, Data: bytes.Repeat([]byte("x"), 200<<10)}
	if err := s.Save(ctx, r); err != nil {
		t.Fatal(err)
	}
	other := &state.Record{Entity: state.Product, ID: "2", Status: state.Skipped}
	if err := s.Save(ctx, other); err != nil {
		t.Fatal(err)
	}
	max := int64(0)
	for i := range 60 { // ~16 MiB written in total, live data ~270 KiB
		r.Status = state.Statuses[i%4]
		r.Attempts = i
		if err := s.Save(ctx, r); err != nil {
			t.Fatal(err)
		}
		s.WaitCompaction() // compaction runs in the background: let each one finish
		max = maxI(max, s.JournalSize())
	}
	if max > 10<<20 {
		t.Fatalf("journal grew to %d bytes without compaction", max)
	}
	fi, err := os.Stat(filepath.Join(dir, localstore.JournalName))
	if err != nil {
		t.Fatal(err)
	}
	if fi.Size() != s.JournalSize() {
		t.Fatalf("journal file %d bytes, store thinks %d", fi.Size(), s.JournalSize())
	}
	s.Close()
	s, err = localstore.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	g, err := s.Get(ctx, state.Product, "1")
	if err != nil || g.Attempts != 59 || g.ETag != r.ETag || len(g.Data) != 200<<10 {
		t.Fatalf("after compaction and restart: %+v %v", g, err)
	}
	if _, err := s.Get(ctx, state.Product, "2"); err != nil {
		t.Fatal(err)
	}
	c, _ := s.Counts(ctx)
	want := map[state.Status]int{state.Skipped: 1}
	want[r.Status]++
	if c[state.Product][state.Skipped] != want[state.Skipped] || c[state.Product][r.Status] != want[r.Status] {
		t.Fatalf("counts after compaction: %v", c)
	}
	if _, err := os.Stat(filepath.Join(dir, localstore.JournalName+".tmp")); !os.IsNotExist(err) {
		t.Fatalf("temporary file left behind: %v", err)
	}
}

func maxI(a, b int64) int64 {
	if a > b {
		return a
	}
	return b
}

func TestOpenTwice(t *testing.T) {
	dir := t.TempDir()
	s, err := localstore.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := localstore.Open(dir + "/."); err == nil {
		t.Fatal("a second Open of the same directory succeeded")
	}
	s.Close()
	s2, err := localstore.Open(dir)
	if err != nil {
		t.Fatalf("open after close: %v", err)
	}
	s2.Close()
}
