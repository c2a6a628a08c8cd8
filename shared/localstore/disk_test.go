package localstore_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nopsync/nopsync/shared/localstore"
	"github.com/nopsync/nopsync/shared/state"
)

// payload is Data that names its record and version, so a read of the wrong journal
// line (or a stale one) shows.
func payload(id string, version, size int) []byte {
	head := fmt.Sprintf("%s@%d;", id, version)
	return []byte(head + strings.Repeat("x", max(0, size-len(head))))
}

func checkPayload(r *state.Record) error {
	want := fmt.Sprintf("%s@%d;", r.ID, r.Attempts)
	if !bytes.HasPrefix(r.Data, []byte(want)) {
		return fmt.Errorf("%s %s: data starts %q, want %q (Attempts %d)", r.Entity, r.ID, r.Data[:min(len(r.Data), 20)], want, r.Attempts)
	}
	return nil
}

func open(t *testing.T, dir string) *localstore.Store {
	t.Helper()
	s, err := localstore.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// TestReadsComeFromTheJournal: a change made to the journal file behind the store's
// back shows in Get, Scan and GetDoc, so the store keeps no copy of the data.
func TestReadsComeFromTheJournal(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	s := open(t, dir)
	orig := bytes.Repeat([]byte("A"), 3000)
	if err := s.Save(ctx, &state.Record{Entity: state.Customer, ID: "7", Status: state.Synced, Data: orig}); err != nil {
		t.Fatal(err)
	}
	if err := s.SaveDoc(ctx, &state.Doc{Kind: "k", Key: "d", Value: orig}); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, localstore.JournalName)
	j, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	from, to := base64.StdEncoding.EncodeToString(orig), base64.StdEncoding.EncodeToString(bytes.Repeat([]byte("B"), 3000))
	if bytes.Count(j, []byte(from)) != 2 {
		t.Fatalf("journal does not hold the data as base64 twice:\n%s", j)
	}
	// Same length, so the offsets stay right.
	if err := os.WriteFile(path, bytes.ReplaceAll(j, []byte(from), []byte(to)), 0o600); err != nil {
		t.Fatal(err)
	}
	r, err := s.Get(ctx, state.Customer, "7")
	if err != nil {
		t.Fatal(err)
	}
	if r.Data[0] != 'B' {
		t.Fatalf("Get returned %q..., not what the journal now holds", r.Data[:5])
	}
	err = s.Scan(ctx, state.Customer, nil, func(r *state.Record) error {
		if r.Data[0] != 'B' {
			return fmt.Errorf("Scan returned %q..., not what the journal now holds", r.Data[:5])
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if d, err := s.GetDoc(ctx, "k", "d"); err != nil || d.Value[0] != 'B' {
		t.Fatalf("GetDoc: %v, not what the journal now holds", err)
	}
}

// TestMisplacedLineIsAnError: if the index and the journal disagree, reads fail rather
// than hand out another record's state.
func TestMisplacedLineIsAnError(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	s := open(t, dir)
	for _, id := range []string{"1", "2"} {
		if err := s.Save(ctx, &state.Record{Entity: state.Order, ID: id, Status: state.Pending}); err != nil {
			t.Fatal(err)
		}
	}
	path := filepath.Join(dir, localstore.JournalName)
	j, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	lines := bytes.SplitAfter(j, []byte("\n"))
	swapped := bytes.Replace(lines[0], []byte(`"ID":"1"`), []byte(`"ID":"2"`), 1)
	if err := os.WriteFile(path, append(swapped, lines[1]...), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Get(ctx, state.Order, "1"); err == nil || errors.Is(err, state.ErrNotFound) {
		t.Fatalf("Get of a record whose journal line names another: %v, want an error", err)
	}
	if err := s.Scan(ctx, state.Order, nil, func(*state.Record) error { return nil }); err == nil {
		t.Fatal("Scan over a misplaced journal line succeeded")
	}
}

// heap returns the live heap after a full collection.
func heap() uint64 {
	var m runtime.MemStats
	runtime.GC()
	runtime.GC()
	runtime.ReadMemStats(&m)
	return m.HeapAlloc
}

// TestMemoryStaysSmall: saving (and replaying) records with large Data grows the heap
// by a small fraction of the data stored.
func TestMemoryStaysSmall(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	const n, size = 600, 32 << 10 // ~19 MiB of Data
	bound := uint64(n * size / 16)

	before := heap()
	s, err := localstore.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	for i := range n {
		id := strconv.Itoa(i + 1)
		if err := s.Save(ctx, &state.Record{Entity: state.Customer, ID: id, Status: state.Synced, Data: payload(id, 0, size)}); err != nil {
			t.Fatal(err)
		}
	}
	after := heap()
	grew := int64(after) - int64(before)
	t.Logf("after %d saves of %d bytes: heap grew %d bytes (%d per record)", n, size, grew, grew/n)
	if grew > int64(bound) {
		t.Fatalf("heap grew %d bytes after saving %d bytes of Data; want under %d", grew, n*size, bound)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	before = heap()
	s = open(t, dir)
	after = heap()
	grew = int64(after) - int64(before)
	t.Logf("after replaying %d records: heap grew %d bytes", n, grew)
	if grew > int64(bound) {
		t.Fatalf("heap grew %d bytes replaying %d bytes of Data; want under %d", grew, n*size, bound)
	}
	// And the data is all there.
	k := 0
	err = s.Scan(ctx, state.Customer, nil, func(r *state.Record) error {
		k++
		if len(r.Data) != size {
			return fmt.Errorf("%s: %d bytes of data, want %d", r.ID, len(r.Data), size)
		}
		return checkPayload(r)
	})
	if err != nil || k != n {
		t.Fatalf("scan after reopen: %d records, %v", k, err)
	}
}

// TestIndexFootprint: what memory keeps per record once a large journal is opened.
func TestIndexFootprint(t *testing.T) {
	const n = 50_000
	dir := t.TempDir()
	f, err := os.Create(filepath.Join(dir, localstore.JournalName))
	if err != nil {
		t.Fatal(err)
	}
	w := bufio.NewWriter(f)
	enc := json.NewEncoder(w)
	now := time.Now().UTC()
	data := payload("x", 0, 700)
	for i := 1; i <= n; i++ {
		r := &state.Record{Entity: state.Entities[i%3], ID: strconv.Itoa(i), Status: state.Statuses[i%4], DataverseID: "00000000-0000-0000-0000-000000000001",
			LastEventID: fmt.Sprintf("evt-%d", i), SyncedAt: now, UpdatedAt: now, Data: data, ETag: strconv.Itoa(i)}
		if err := enc.Encode(struct {
			Rec *state.Record `json:"rec"`
		}{r}); err != nil {
			t.Fatal(err)
		}
	}
	if err := w.Flush(); err != nil {
		t.Fatal(err)
	}
	f.Close()

	before := heap()
	s := open(t, dir)
	after := heap()
	onHeap := (int64(after) - int64(before)) / n
	mapped, offHeap := s.IndexBytes()
	per := onHeap
	if offHeap {
		per += int64(mapped) / n
	}
	t.Logf("index: %d bytes per record, %d of them on the heap (Data %d bytes each)", per, onHeap, len(data))
	// A loc (offset, length, status) and an id (ids with gaps: every third per entity here)
	// in numIndex: 12 bytes. A Go map of the same takes about 35; a record kept whole more
	// than its Data.
	if per > 16 {
		t.Fatalf("the store keeps %d bytes per record in memory, want at most 16", per)
	}
	// Outside the heap, the index does not raise the garbage collector's target.
	if offHeap && onHeap > 2 {
		t.Fatalf("the index keeps %d bytes per record on the heap, want its slices outside it", onHeap)
	}
	c, err := s.Counts(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	total := 0
	for _, m := range c {
		for _, v := range m {
			total += v
		}
	}
	if total != n {
		t.Fatalf("counts after opening add up to %d, want %d", total, n)
	}
	runtime.KeepAlive(s)
}

// TestConcurrentCompaction: writers rewrite records with large Data (so the journal is
// compacted several times) while readers Get, Scan, list docs and count; every read
// must be a whole, current-or-earlier version of the record asked for.
func TestConcurrentCompaction(t *testing.T) {
	for _, mode := range []string{"dir", "memory"} {
		t.Run(mode, func(t *testing.T) {
			dir := ""
			if mode == "dir" {
				dir = t.TempDir()
			}
			testConcurrentCompaction(t, dir)
		})
	}
}

func testConcurrentCompaction(t *testing.T, dir string) {
	ctx := context.Background()
	t.Cleanup(localstore.SetCompactSlack(64 << 10)) // restored after the store is closed
	s := open(t, dir)
	const ids, writers, rounds, size = 20, 4, 15, 4 << 10
	total := ids * len(state.Entities)
	for _, e := range state.Entities {
		for i := range ids {
			id := strconv.Itoa(i + 1)
			if err := s.Save(ctx, &state.Record{Entity: e, ID: id, Status: state.Pending, Data: payload(id, 0, size)}); err != nil {
				t.Fatal(err)
			}
		}
	}
	var wg sync.WaitGroup
	errc := make(chan error, 100)
	done := make(chan struct{})
	last := make([]map[string]int, writers) // per writer: entity/id → last Attempts saved
	for w := range writers {
		last[w] = map[string]int{}
		wg.Add(1)
		go func() {
			defer wg.Done()
			for round := 1; round <= rounds; round++ {
				for _, e := range state.Entities {
					for i := w; i < ids; i += writers { // each writer owns its ids: no conflicts
						id := strconv.Itoa(i + 1)
						r, err := s.Get(ctx, e, id)
						if err != nil {
							errc <- err
							return
						}
						if r.Attempts != round-1 {
							errc <- fmt.Errorf("%s %s: read back attempts %d, want %d", e, id, r.Attempts, round-1)
							return
						}
						r.Attempts, r.Status, r.Data = round, state.Statuses[round%4], payload(id, round, size)
						if err := s.Save(ctx, r); err != nil {
							errc <- err
							return
						}
						last[w][string(e)+"/"+id] = round
					}
				}
				if w == 0 {
					if err := s.SaveDoc(ctx, &state.Doc{Kind: "run", Key: fmt.Sprintf("%04d", round), Value: []byte(strconv.Itoa(round))}); err != nil {
						errc <- err
						return
					}
				}
			}
		}()
	}
	var rg sync.WaitGroup
	reader := func(fn func() error) {
		rg.Add(1)
		go func() {
			defer rg.Done()
			for {
				select {
				case <-done:
					return
				default:
				}
				if err := fn(); err != nil {
					errc <- err
					return
				}
			}
		}()
	}
	k := 0
	reader(func() error {
		k++
		r, err := s.Get(ctx, state.Entities[k%3], strconv.Itoa(k%ids+1))
		if err != nil {
			return err
		}
		return checkPayload(r)
	})
	reader(func() error {
		want := []state.Status{state.Synced, state.Failed}
		return s.Scan(ctx, state.Product, want, func(r *state.Record) error {
			if r.Status != state.Synced && r.Status != state.Failed {
				return fmt.Errorf("Scan(synced, failed) returned a %s record", r.Status)
			}
			return checkPayload(r)
		})
	})
	reader(func() error {
		docs, err := s.ListDocs(ctx, "run")
		if err != nil {
			return err
		}
		for i, d := range docs {
			if d.Key != fmt.Sprintf("%04d", i+1) || string(d.Value) != strconv.Itoa(i+1) {
				return fmt.Errorf("ListDocs: doc %d is %s=%q", i, d.Key, d.Value)
			}
		}
		c, err := s.Counts(ctx)
		if err != nil {
			return err
		}
		n := 0
		for _, m := range c {
			for _, v := range m {
				n += v
			}
		}
		if n != total {
			return fmt.Errorf("counts add up to %d, want %d", n, total)
		}
		return nil
	})
	wg.Wait()
	close(done)
	rg.Wait()
	close(errc)
	for err := range errc {
		t.Fatal(err)
	}
	t.Logf("%d compactions", s.Compactions())
	if s.Compactions() < 5 {
		t.Fatalf("%d compactions ran during the test, want at least 5 (the test did not exercise compaction)", s.Compactions())
	}
	check := func(s *localstore.Store) {
		t.Helper()
		for _, m := range last {
			for key, attempts := range m {
				e, id, _ := strings.Cut(key, "/")
				r, err := s.Get(ctx, state.Entity(e), id)
				if err != nil {
					t.Fatal(err)
				}
				if r.Attempts != attempts || r.Status != state.Statuses[attempts%4] {
					t.Fatalf("%s: attempts %d status %s, want %d %s", key, r.Attempts, r.Status, attempts, state.Statuses[attempts%4])
				}
				if err := checkPayload(r); err != nil {
					t.Fatal(err)
				}
			}
		}
		if docs, err := s.ListDocs(ctx, "run"); err != nil || len(docs) != rounds {
			t.Fatalf("ListDocs: %d docs, %v; want %d", len(docs), err, rounds)
		}
	}
	check(s)
	if dir == "" {
		return
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	check(open(t, dir))
}

// TestTornTailAfterCompaction: a crash mid-write after a compaction loses only the
// torn line; everything else comes back at the right offsets.
func TestTornTailAfterCompaction(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	s := open(t, dir)
	const size = 100 << 10
	recs := map[string]*state.Record{}
	for i := range 10 {
		id := strconv.Itoa(i + 1)
		r := &state.Record{Entity: state.Customer, ID: id, Status: state.Pending, Data: payload(id, 0, size)}
		if err := s.Save(ctx, r); err != nil {
			t.Fatal(err)
		}
		recs[id] = r
	}
	if err := s.SaveDoc(ctx, &state.Doc{Kind: "k", Key: "a", Value: []byte("doc")}); err != nil {
		t.Fatal(err)
	}
	for round := 1; s.Compactions() == 0; round++ {
		if round > 200 {
			t.Fatal("no compaction after 200 rounds")
		}
		r := recs[strconv.Itoa(round%10+1)]
		r.Attempts++
		r.Data = payload(r.ID, r.Attempts, size)
		if err := s.Save(ctx, r); err != nil {
			t.Fatal(err)
		}
		s.WaitCompaction()
	}
	// One more write after the compaction, then a torn one.
	r := recs["3"]
	r.Attempts++
	r.Data = payload(r.ID, r.Attempts, size)
	r.Status = state.Synced
	if err := s.Save(ctx, r); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	f, err := os.OpenFile(filepath.Join(dir, localstore.JournalName), os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteString(`{"rec":{"Entity":"customer","ID":"3","Status":"failed","Attempts":99,"Data":"QUJD`); err != nil {
		t.Fatal(err)
	}
	f.Close()

	s = open(t, dir)
	for id, want := range recs {
		g, err := s.Get(ctx, state.Customer, id)
		if err != nil {
			t.Fatal(err)
		}
		if g.ETag != want.ETag || g.Attempts != want.Attempts || g.Status != want.Status || len(g.Data) != size {
			t.Fatalf("%s after compaction and a torn tail: %+v, want attempts %d status %s", id, g.Attempts, want.Attempts, want.Status)
		}
		if err := checkPayload(g); err != nil {
			t.Fatal(err)
		}
	}
	c, _ := s.Counts(ctx)
	if c[state.Customer][state.Synced] != 1 || c[state.Customer][state.Pending] != 9 || c[state.Customer][state.Failed] != 0 {
		t.Fatalf("counts: %v", c)
	}
	if d, err := s.GetDoc(ctx, "k", "a"); err != nil || string(d.Value) != "doc" {
		t.Fatalf("doc: %v", err)
	}
	// The store carries on: an update with the ETag from before the crash, then a reopen.
	r.Attempts++
	r.Data = payload(r.ID, r.Attempts, size)
	if err := s.Save(ctx, r); err != nil {
		t.Fatal(err)
	}
	s.Close()
	s = open(t, dir)
	if g, err := s.Get(ctx, state.Customer, "3"); err != nil || g.Attempts != r.Attempts || checkPayload(g) != nil {
		t.Fatalf("after another reopen: %v %v", g, err)
	}
}

// Group commit: concurrent Saves share fsyncs, and every Save that returned is on disk.
// A failed fsync fails the Saves waiting for it and stops writes until the store is
// reopened.
func TestSavesShareFsyncs(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	s, err := localstore.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	var syncs atomic.Int64
	var fail atomic.Bool
	s.CountSyncs(&syncs, &fail)
	const n = 400
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for w := range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := w; i < n; i += 16 {
				id := strconv.Itoa(i)
				errs <- s.Save(ctx, &state.Record{Entity: state.Customer, ID: id, Status: state.Synced, Data: payload(id, 0, 100)})
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	if got := syncs.Load(); got == 0 || got >= n/2 {
		t.Fatalf("%d fsyncs for %d concurrent saves: want at least one and far fewer than saves", got, n)
	}
	t.Logf("%d fsyncs for %d saves", syncs.Load(), n)

	fail.Store(true)
	if err := s.Save(ctx, &state.Record{Entity: state.Customer, ID: "late", Status: state.Synced}); err == nil {
		t.Fatal("a save whose fsync failed succeeded")
	}
	fail.Store(false)
	if err := s.Save(ctx, &state.Record{Entity: state.Customer, ID: "later", Status: state.Synced}); err == nil {
		t.Fatal("a save after a failed fsync succeeded: what is on disk is unknown until reopened")
	}
	if err := s.Close(); err != nil {
		t.Log("close:", err)
	}
	s, err = localstore.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	for i := range n {
		id := strconv.Itoa(i)
		r, err := s.Get(ctx, state.Customer, id)
		if err != nil || !bytes.Equal(r.Data, payload(id, 0, 100)) {
			t.Fatalf("record %s after reopen: %v", id, err)
		}
	}
	if err := s.Save(ctx, &state.Record{Entity: state.Customer, ID: "after-reopen", Status: state.Synced}); err != nil {
		t.Fatalf("save after reopen: %v", err)
	}
}

// TestIDsAtTheIndexEdge: decimal ids up to 2^32-1 are kept by number, larger or
// non-canonical ones by string; every one reads back what was saved, after a reopen too,
// and Scan lists them all. A closed store answers with an error, not from a freed index.
func TestIDsAtTheIndexEdge(t *testing.T) {
	dir := t.TempDir()
	ctx := context.Background()
	ids := []string{"0", "1", "4294967296", "18446744073709551615", "18446744073709551616", "007", "abc"}
	// 200 consecutive ids up to 2^32-1, saved from the top down (all but the first wait
	// out of order; the reopened store's replay merges them into blocks), and some with gaps.
	for n := uint64(1<<32 - 1); n > 1<<32-201; n-- {
		ids = append(ids, strconv.FormatUint(n, 10))
	}
	for n := uint64(1 << 31); n < 1<<31+1000; n += 7 {
		ids = append(ids, strconv.FormatUint(n, 10))
	}
	s := open(t, dir)
	for i, id := range ids {
		if err := s.Save(ctx, &state.Record{Entity: state.Order, ID: id, Status: state.Synced, LastEventID: "e" + strconv.Itoa(i)}); err != nil {
			t.Fatalf("save %s: %v", id, err)
		}
	}
	check := func(s *localstore.Store, when string) {
		for i, id := range ids {
			r, err := s.Get(ctx, state.Order, id)
			if err != nil || r == nil || r.ID != id || r.LastEventID != "e"+strconv.Itoa(i) {
				t.Fatalf("%s: get %s = %+v, %v", when, id, r, err)
			}
		}
		var seen []string
		if err := s.Scan(ctx, state.Order, nil, func(r *state.Record) error { seen = append(seen, r.ID); return nil }); err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(slices.Sorted(slices.Values(seen)), slices.Sorted(slices.Values(ids))) {
			t.Fatalf("%s: scan listed %d ids, want the %d saved", when, len(seen), len(ids))
		}
	}
	check(s, "open")
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Get(ctx, state.Order, "1"); err == nil || !strings.Contains(err.Error(), "closed") {
		t.Fatalf("a closed store answered a Get with %v, want its closed error", err)
	}
	check(open(t, dir), "reopened")
}
