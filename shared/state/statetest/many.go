package statetest

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"strconv"
	"sync"
	"testing"

	"github.com/nopsync/nopsync/shared/state"
)

// The batched operations (GetMany, SaveMany) pinned down here:
//   - GetMany returns exactly the records that exist among the ids asked for, each as
//     Get returns it (ETag included); unknown and invalid ids are absent, not errors.
//   - SaveMany's result for each record is Save's: a conflicting record (stale ETag,
//     create of an existing record, ETag of a missing one) gets ErrConflict and is left
//     as stored, while every other record of the batch, in the same partition or not,
//     is saved. Invalid records get an error that is not ErrConflict.
//   - The same record twice in one batch: as two Saves one after the other.
//   - Counts equal a full Scan after batches, concurrent ones included.

func manyTests() []suiteTest {
	return []suiteTest{
		{"ManyRoundTrip", testManyRoundTrip},
		{"ManyConflictsInsideABatch", testManyConflicts},
		{"ManySameRecordTwice", testManyTwice},
		{"ManyLargeBatch", testManyLarge},
		{"ManyConcurrentBatches", testManyConcurrent},
	}
}

func saveMany(t *testing.T, s state.Store, recs []*state.Record) []error {
	t.Helper()
	errs := s.SaveMany(ctxT(t), recs)
	if len(errs) != len(recs) {
		t.Fatalf("SaveMany of %d records returned %d results", len(recs), len(errs))
	}
	return errs
}

func testManyRoundTrip(t *testing.T, newStore func(t *testing.T) state.Store) {
	s := newStore(t)
	var recs []*state.Record
	for i := 1; i <= 60; i++ {
		recs = append(recs, full(state.Customer, strconv.Itoa(i)))
	}
	recs = append(recs, full(state.Customer, "chunk-ab.1"), full(state.Order, "7"), rec(state.Product, "7", state.Pending))
	for i, err := range saveMany(t, s, recs) {
		if err != nil {
			t.Fatalf("SaveMany: record %d (%s %q): %v", i, recs[i].Entity, recs[i].ID, err)
		}
		if recs[i].ETag == "" || recs[i].UpdatedAt.IsZero() {
			t.Fatalf("SaveMany left record %q without ETag or UpdatedAt", recs[i].ID)
		}
	}
	ids := []string{"chunk-ab.1", "999", "", "\xff", "0042"}
	for i := 1; i <= 60; i += 3 {
		ids = append(ids, strconv.Itoa(i))
	}
	got, err := s.GetMany(ctxT(t), state.Customer, ids)
	if err != nil {
		t.Fatalf("GetMany: %v", err)
	}
	if len(got) != 21 {
		t.Fatalf("GetMany returned %d records, want 21 (20 decimal ids and chunk-ab.1)", len(got))
	}
	for _, r := range recs[:61] {
		id, _ := strconv.Atoi(r.ID)
		if r.ID != "chunk-ab.1" && id%3 != 1 {
			continue
		}
		g := got[r.ID]
		if g == nil {
			t.Fatalf("GetMany did not return %q", r.ID)
		}
		expectSame(t, "GetMany("+r.ID+")", g, r)
		expectSame(t, "Get("+r.ID+")", mustGet(t, s, state.Customer, r.ID), g)
	}
	if got, err := s.GetMany(ctxT(t), state.Order, []string{"7", "8"}); err != nil || len(got) != 1 || got["7"] == nil {
		t.Fatalf("GetMany(order 7, 8) = %v, %v; want order 7 alone", got, err)
	}
	if got, err := s.GetMany(ctxT(t), state.Order, nil); err != nil || len(got) != 0 {
		t.Fatalf("GetMany(no ids) = %v, %v", got, err)
	}
	expectCounts(t, s, state.Counts{
		state.Customer: {state.Failed: 61},
		state.Order:    {state.Failed: 1},
		state.Product:  {state.Pending: 1},
	})
}

func testManyConflicts(t *testing.T, newStore func(t *testing.T) state.Store) {
	s := newStore(t)
	var stored []*state.Record
	for i := 1; i <= 40; i++ {
		r := rec(state.Customer, strconv.Itoa(i), state.Pending)
		mustSave(t, s, r)
		stored = append(stored, r)
	}
	// Make the ETags of 5, 10, ..., 40 stale: another writer saves them.
	var stale []*state.Record
	for i := 5; i <= 40; i += 5 {
		old := *stored[i-1]
		stale = append(stale, &old)
		mustSave(t, s, stored[i-1])
	}
	var batch []*state.Record
	want := map[string]bool{} // id → expected conflict
	for i := 1; i <= 40; i++ {
		r := *stored[i-1]
		if i%5 == 0 {
			r = *stale[i/5-1]
		}
		r.Status = state.Synced
		batch = append(batch, &r)
		want[r.ID] = i%5 == 0
	}
	// Creates of new records go through; the create of one that exists conflicts.
	for i := 139; i <= 145; i += 2 {
		batch = append(batch, rec(state.Customer, strconv.Itoa(i), state.Failed))
	}
	dup := rec(state.Customer, "3", state.Failed)
	batch = append(batch, dup)
	missing := rec(state.Customer, "555", state.Synced) // an ETag for a record that is gone
	missing.ETag = stored[0].ETag
	batch = append(batch, missing)
	bad := rec(state.Customer, "", state.Synced)
	batch = append(batch, bad)

	errs := saveMany(t, s, batch)
	for i, r := range batch {
		err := errs[i]
		switch {
		case r == dup || r == missing:
			if !errors.Is(err, state.ErrConflict) {
				t.Errorf("%q: %v, want ErrConflict", r.ID, err)
			}
		case r == bad:
			if err == nil || errors.Is(err, state.ErrConflict) {
				t.Errorf("empty id: %v, want an error other than ErrConflict", err)
			}
		case want[r.ID]:
			if !errors.Is(err, state.ErrConflict) {
				t.Errorf("%q with a stale ETag: %v, want ErrConflict", r.ID, err)
			}
			if g := mustGet(t, s, state.Customer, r.ID); g.Status != state.Pending || g.ETag != stored[mustAtoi(t, r.ID)-1].ETag {
				t.Errorf("%q conflicted but was changed: %s", r.ID, g.Status)
			}
		default:
			if err != nil {
				t.Errorf("%q: %v (another record's conflict must not stop it)", r.ID, err)
				continue
			}
			expectSame(t, "saved "+r.ID, mustGet(t, s, state.Customer, r.ID), r)
		}
	}
	if _, err := s.Get(ctxT(t), state.Customer, "555"); !errors.Is(err, state.ErrNotFound) {
		t.Errorf("555 (update of a missing record): Get = %v, want ErrNotFound", err)
	}
	// 32 of 1-40 synced, 8 pending (stale ETags), 139, 141, 143, 145 failed (created).
	expectCounts(t, s, state.Counts{state.Customer: {state.Synced: 32, state.Pending: 8, state.Failed: 4}})
}

func mustAtoi(t *testing.T, s string) int {
	t.Helper()
	n, err := strconv.Atoi(s)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

func testManyTwice(t *testing.T, newStore func(t *testing.T) state.Store) {
	s := newStore(t)
	// One pointer twice: a create, then an update from the version the create made.
	r := rec(state.Order, "1", state.Pending)
	errs := saveMany(t, s, []*state.Record{r, r})
	if errs[0] != nil || errs[1] != nil {
		t.Fatalf("the same record twice: %v", errs)
	}
	// Two copies from one version: the second conflicts, as two Saves would.
	a, b := *r, *r
	a.Status, b.Status = state.Synced, state.Failed
	errs = saveMany(t, s, []*state.Record{&a, &b})
	if errs[0] != nil || !errors.Is(errs[1], state.ErrConflict) {
		t.Fatalf("two copies of one version: %v, want nil then ErrConflict", errs)
	}
	expectSame(t, "order 1", mustGet(t, s, state.Order, "1"), &a)
	expectCounts(t, s, state.Counts{state.Order: {state.Synced: 1}})
}

// testManyLarge saves more records than one transaction holds in every partition a
// store is likely to have, then moves them all again.
func testManyLarge(t *testing.T, newStore func(t *testing.T) state.Store) {
	s := newStore(t)
	var recs []*state.Record
	var ids []string
	for i := 1; i <= 2500; i++ {
		r := rec(state.Customer, strconv.Itoa(i), state.Pending)
		r.Data = []byte(fmt.Sprintf(`{"id":%d,"pad":"%0300d"}`, i, i))
		recs = append(recs, r)
		ids = append(ids, r.ID)
	}
	for i, err := range saveMany(t, s, recs) {
		if err != nil {
			t.Fatalf("record %d: %v", i, err)
		}
	}
	got, err := s.GetMany(ctxT(t), state.Customer, ids)
	if err != nil || len(got) != len(recs) {
		t.Fatalf("GetMany: %d records, %v; want %d", len(got), err, len(recs))
	}
	for i, r := range recs {
		if got[r.ID].ETag != r.ETag {
			t.Fatalf("record %q: GetMany ETag %q, SaveMany gave %q", r.ID, got[r.ID].ETag, r.ETag)
		}
		if i%2 == 0 {
			r.Status = state.Synced
		}
		r.Reason = "second"
	}
	for i, err := range saveMany(t, s, recs) {
		if err != nil {
			t.Fatalf("second save, record %d: %v", i, err)
		}
	}
	expectCounts(t, s, state.Counts{state.Customer: {state.Synced: 1250, state.Pending: 1250}})
}

// testManyConcurrent: writers read overlapping ranges with GetMany and save them back
// with another status, all at once. Whatever wins, counts equal a full scan.
func testManyConcurrent(t *testing.T, newStore func(t *testing.T) state.Store) {
	s := newStore(t)
	const n, writers, rounds = 120, 4, 3
	var wg sync.WaitGroup
	var mu sync.Mutex
	saved, conflicts := 0, 0
	for w := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(w), 9))
			for range rounds {
				lo := 1 + rng.IntN(n/2)
				var ids []string
				for i := lo; i < lo+n/2; i++ {
					ids = append(ids, strconv.Itoa(i))
				}
				got, err := s.GetMany(ctxT(t), state.Product, ids)
				if err != nil {
					t.Errorf("GetMany: %v", err)
					return
				}
				var batch []*state.Record
				for _, id := range ids {
					r := got[id]
					if r == nil {
						r = rec(state.Product, id, state.Pending)
					}
					r.Status = state.Statuses[rng.IntN(len(state.Statuses))]
					batch = append(batch, r)
				}
				for i, err := range s.SaveMany(ctxT(t), batch) {
					mu.Lock()
					switch {
					case err == nil:
						saved++
					case errors.Is(err, state.ErrConflict):
						conflicts++
					default:
						t.Errorf("SaveMany %q: %v", batch[i].ID, err)
					}
					mu.Unlock()
				}
			}
		}()
	}
	wg.Wait()
	t.Logf("%d saved, %d conflicts", saved, conflicts)
	if saved == 0 {
		t.Fatal("no batch saved anything")
	}
	expectCounts(t, s, nil)
}
