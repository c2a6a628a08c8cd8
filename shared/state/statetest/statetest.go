// Package statetest is the conformance suite every state.Store implementation must pass.
//
// Behaviour it pins down, beyond the comments in package state:
//   - Save with a non-empty ETag on a record that does not exist returns state.ErrConflict
//     (the version the caller holds is not the stored one), as does a create of an existing record.
//   - Invalid input (unknown entity or status, empty id, invalid UTF-8) is an error that is
//     neither ErrConflict nor ErrNotFound, and nothing is stored.
//   - Scan order: decimal ids (no leading zeros, up to 20 digits) in numeric order first,
//     then every other key in byte order (only asserted for keys of [A-Za-z0-9._-]).
//   - Times come back in UTC, equal to what was saved to the millisecond at least; zero stays zero.
//   - Counts reports every entity in state.Entities; it always equals what a full Scan counts.
//   - Data and Extra: nil and empty are the same; Data up to 256 KiB round-trips byte for byte.
//   - GetMany and SaveMany: see many.go.
package statetest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/nopsync/nopsync/shared/state"
)

// suiteTest is one subtest of the suite: its name and what it runs on new stores.
type suiteTest struct {
	name string
	fn   func(t *testing.T, newStore func(t *testing.T) state.Store)
}

// Run runs the suite. newStore must return a new, empty store each time it is called
// (a "wiped" store); the suite calls it once per subtest, sometimes twice.
func Run(t *testing.T, newStore func(t *testing.T) state.Store) {
	tests := []suiteTest{
		{"CreateGet", testCreateGet},
		{"ETagRules", testETagRules},
		{"InvalidInput", testInvalidInput},
		{"EntitiesApart", testEntitiesApart},
		{"ScanOrderAndFilter", testScan},
		{"CountsFollowTransitions", testCountsTransitions},
		{"ConcurrentDifferentRecords", testConcurrentDifferent},
		{"ConcurrentSameRecords", testConcurrentSame},
		{"DataRoundTrip", testData},
		{"Extra", testExtra},
		{"Times", testTimes},
		{"Leases", testLeases},
		{"Docs", testDocs},
		{"OddIDs", testOddIDs},
		{"CopiesNotShared", testCopies},
		{"WipedStore", testWiped},
		{"Limits", testLimits},
	}
	tests = append(tests, manyTests()...)
	tests = append(tests, docsTests()...)
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) { tc.fn(t, newStore) })
	}
}

// RunConcurrency runs only the concurrent parts of the suite (for extra configurations
// of a store, e.g. a single counter shard, where the rest adds nothing).
func RunConcurrency(t *testing.T, newStore func(t *testing.T) state.Store) {
	t.Run("ConcurrentDifferentRecords", func(t *testing.T) { testConcurrentDifferent(t, newStore) })
	t.Run("ConcurrentSameRecords", func(t *testing.T) { testConcurrentSame(t, newStore) })
	t.Run("Leases", func(t *testing.T) { testLeases(t, newStore) })
	t.Run("CountsFollowTransitions", func(t *testing.T) { testCountsTransitions(t, newStore) })
	t.Run("ManyConcurrentBatches", func(t *testing.T) { testManyConcurrent(t, newStore) })
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

// full returns a record with every field set to something distinctive.
func full(entity state.Entity, id string) *state.Record {
	loc := time.FixedZone("X", 5*3600+1800)
	return &state.Record{
		Entity:      entity,
		ID:          id,
		DataverseID: "3f2504e0-4f89-11d3-9a0c-0305e82c3301",
		Status:      state.Failed,
		Reason:      "dataverse: 400 Bad Request: \"name\" is required; ünïcode ✓",
		Transient:   true,
		Attempts:    3,
		OrderKey:    "s00000000000000000042|t2026-11-29T01:02:03.123456789Z",
		LastEventID: "evt-" + id,
		SyncedAt:    time.Date(2026, 11, 28, 23, 59, 58, 123_000_000, loc),
		DataHash:    "sha256:0123456789abcdef",
		Data:        []byte(`{"id":` + fmt.Sprintf("%q", id) + `,"name":"x"}`),
		Extra:       map[string]string{"invoiceId": "abc", "steps": "header,lines", "empty": ""},
		LeaseOwner:  "instance-1",
		LeaseUntil:  time.Date(2026, 11, 29, 0, 1, 0, 456_000_000, time.UTC),
	}
}

func rec(entity state.Entity, id string, st state.Status) *state.Record {
	return &state.Record{Entity: entity, ID: id, Status: st}
}

func mustSave(t *testing.T, s state.Store, r *state.Record) {
	t.Helper()
	if err := s.Save(ctxT(t), r); err != nil {
		t.Fatalf("Save(%s %q, etag %q): %v", r.Entity, r.ID, r.ETag, err)
	}
}

func mustGet(t *testing.T, s state.Store, e state.Entity, id string) *state.Record {
	t.Helper()
	r, err := s.Get(ctxT(t), e, id)
	if err != nil {
		t.Fatalf("Get(%s %q): %v", e, id, err)
	}
	return r
}

func sameTime(a, b time.Time) bool {
	if a.IsZero() || b.IsZero() {
		return a.IsZero() && b.IsZero()
	}
	d := a.Sub(b)
	return d < time.Millisecond && d > -time.Millisecond
}

// diff lists the fields where got differs from want (ETag and UpdatedAt included).
func diff(got, want *state.Record) []string {
	var d []string
	add := func(f string, g, w any) { d = append(d, fmt.Sprintf("%s: got %#v, want %#v", f, g, w)) }
	if got.Entity != want.Entity {
		add("Entity", got.Entity, want.Entity)
	}
	if got.ID != want.ID {
		add("ID", got.ID, want.ID)
	}
	if got.DataverseID != want.DataverseID {
		add("DataverseID", got.DataverseID, want.DataverseID)
	}
	if got.Status != want.Status {
		add("Status", got.Status, want.Status)
	}
	if got.Reason != want.Reason {
		add("Reason", got.Reason, want.Reason)
	}
	if got.Transient != want.Transient {
		add("Transient", got.Transient, want.Transient)
	}
	if got.Attempts != want.Attempts {
		add("Attempts", got.Attempts, want.Attempts)
	}
	if got.OrderKey != want.OrderKey {
		add("OrderKey", got.OrderKey, want.OrderKey)
	}
	if got.LastEventID != want.LastEventID {
		add("LastEventID", got.LastEventID, want.LastEventID)
	}
	if got.DataHash != want.DataHash {
		add("DataHash", got.DataHash, want.DataHash)
	}
	if !bytes.Equal(got.Data, want.Data) {
		add("Data", fmt.Sprintf("%d bytes", len(got.Data)), fmt.Sprintf("%d bytes", len(want.Data)))
	}
	if len(got.Extra) != len(want.Extra) {
		add("Extra", got.Extra, want.Extra)
	} else {
		for k, v := range want.Extra {
			if gv, ok := got.Extra[k]; !ok || gv != v {
				add("Extra", got.Extra, want.Extra)
				break
			}
		}
	}
	if got.LeaseOwner != want.LeaseOwner {
		add("LeaseOwner", got.LeaseOwner, want.LeaseOwner)
	}
	for _, f := range []struct {
		name   string
		g, w   time.Time
		stored bool
	}{{"SyncedAt", got.SyncedAt, want.SyncedAt, false}, {"LeaseUntil", got.LeaseUntil, want.LeaseUntil, false}, {"UpdatedAt", got.UpdatedAt, want.UpdatedAt, true}} {
		if !sameTime(f.g, f.w) {
			add(f.name, f.g.String(), f.w.String())
		}
		if !f.g.IsZero() && f.g.Location() != time.UTC {
			add(f.name+" location", f.g.Location().String(), "UTC")
		}
	}
	if got.ETag != want.ETag {
		add("ETag", got.ETag, want.ETag)
	}
	return d
}

func expectSame(t *testing.T, what string, got, want *state.Record) {
	t.Helper()
	if d := diff(got, want); len(d) > 0 {
		t.Errorf("%s differs:\n  %s", what, strings.Join(d, "\n  "))
	}
}

// tally counts records per entity and status with a full Scan.
func tally(t *testing.T, s state.Store) state.Counts {
	t.Helper()
	c := state.Counts{}
	for _, e := range state.Entities {
		c[e] = map[state.Status]int{}
		err := s.Scan(ctxT(t), e, nil, func(r *state.Record) error {
			if r.Entity != e {
				return fmt.Errorf("scan of %s returned a %s record %q", e, r.Entity, r.ID)
			}
			c[e][r.Status]++
			return nil
		})
		if err != nil {
			t.Fatalf("Scan(%s): %v", e, err)
		}
	}
	return c
}

// expectCounts checks Counts against want and against a full scan.
func expectCounts(t *testing.T, s state.Store, want state.Counts) {
	t.Helper()
	got, err := s.Counts(ctxT(t))
	if err != nil {
		t.Fatalf("Counts: %v", err)
	}
	scanned := tally(t, s)
	for _, e := range state.Entities {
		if _, ok := got[e]; !ok {
			t.Errorf("Counts has no entry for %s", e)
		}
		for _, st := range state.Statuses {
			if got[e][st] != scanned[e][st] {
				t.Errorf("Counts[%s][%s] = %d, a full scan finds %d", e, st, got[e][st], scanned[e][st])
			}
			if want != nil && got[e][st] != want[e][st] {
				t.Errorf("Counts[%s][%s] = %d, want %d", e, st, got[e][st], want[e][st])
			}
		}
	}
	if t.Failed() {
		t.FailNow()
	}
}

func testCreateGet(t *testing.T, newStore func(t *testing.T) state.Store) {
	s := newStore(t)
	ctx := ctxT(t)
	if _, err := s.Get(ctx, state.Customer, "1"); !errors.Is(err, state.ErrNotFound) {
		t.Fatalf("Get of a missing record: err = %v, want ErrNotFound", err)
	}
	r := full(state.Customer, "1")
	want := *r
	before := time.Now()
	mustSave(t, s, r)
	after := time.Now()
	if r.ETag == "" {
		t.Fatal("Save left rec.ETag empty")
	}
	if r.UpdatedAt.Location() != time.UTC || r.UpdatedAt.Before(before.Add(-time.Second)) || r.UpdatedAt.After(after.Add(time.Second)) {
		t.Fatalf("Save set UpdatedAt = %v, want about now in UTC (%v..%v)", r.UpdatedAt, before.UTC(), after.UTC())
	}
	want.ETag, want.UpdatedAt = r.ETag, r.UpdatedAt
	got := mustGet(t, s, state.Customer, "1")
	expectSame(t, "Get after create", got, &want)

	// A second Get gives the same version.
	again := mustGet(t, s, state.Customer, "1")
	if again.ETag != got.ETag {
		t.Fatalf("two Gets disagree on ETag: %q vs %q", got.ETag, again.ETag)
	}

	// An update of every field round-trips too, including clearing fields.
	got.Status = state.Synced
	got.Reason, got.Transient, got.Attempts = "", false, 0
	got.Extra, got.Data = nil, nil
	got.LeaseOwner, got.LeaseUntil = "", time.Time{}
	got.SyncedAt = time.Date(2026, 11, 29, 1, 0, 0, 7_000_000, time.UTC)
	got.DataverseID = "other"
	oldETag := got.ETag
	mustSave(t, s, got)
	if got.ETag == oldETag || got.ETag == "" {
		t.Fatalf("update kept ETag %q (now %q)", oldETag, got.ETag)
	}
	expectSame(t, "Get after update", mustGet(t, s, state.Customer, "1"), got)
	expectCounts(t, s, state.Counts{state.Customer: {state.Synced: 1}})
}

func testETagRules(t *testing.T, newStore func(t *testing.T) state.Store) {
	s := newStore(t)
	ctx := ctxT(t)
	r := rec(state.Order, "7", state.Pending)
	mustSave(t, s, r)
	v1 := r.ETag

	// create-only: a second create of the same key conflicts, leaving the stored record alone.
	dup := rec(state.Order, "7", state.Synced)
	if err := s.Save(ctx, dup); !errors.Is(err, state.ErrConflict) {
		t.Fatalf("create of an existing record: err = %v, want ErrConflict", err)
	}
	if dup.ETag != "" {
		t.Errorf("failed create set ETag %q", dup.ETag)
	}
	if got := mustGet(t, s, state.Order, "7"); got.Status != state.Pending || got.ETag != v1 {
		t.Fatalf("after a failed create: status %s etag %q, want pending %q", got.Status, got.ETag, v1)
	}

	// update with the current ETag works, and changes it.
	a := mustGet(t, s, state.Order, "7")
	b := mustGet(t, s, state.Order, "7")
	a.Status = state.Synced
	mustSave(t, s, a)
	if a.ETag == v1 {
		t.Fatal("ETag unchanged by an update")
	}
	// a stale ETag conflicts, whether or not the status changes.
	b.Status = state.Failed
	if err := s.Save(ctx, b); !errors.Is(err, state.ErrConflict) {
		t.Fatalf("save with a stale ETag: err = %v, want ErrConflict", err)
	}
	b.Status = state.Synced
	if err := s.Save(ctx, b); !errors.Is(err, state.ErrConflict) {
		t.Fatalf("save with a stale ETag (same status): err = %v, want ErrConflict", err)
	}
	if b.ETag != v1 {
		t.Errorf("failed save changed rec.ETag to %q", b.ETag)
	}
	// a made-up ETag conflicts.
	c := mustGet(t, s, state.Order, "7")
	c.ETag = "W/\"not-a-real-etag\""
	if err := s.Save(ctx, c); !errors.Is(err, state.ErrConflict) {
		t.Fatalf("save with a made-up ETag: err = %v, want ErrConflict", err)
	}
	// an ETag on a record that does not exist conflicts and creates nothing.
	ghost := rec(state.Order, "8", state.Failed)
	ghost.ETag = a.ETag
	if err := s.Save(ctx, ghost); !errors.Is(err, state.ErrConflict) {
		t.Fatalf("save with an ETag of a missing record: err = %v, want ErrConflict", err)
	}
	if _, err := s.Get(ctx, state.Order, "8"); !errors.Is(err, state.ErrNotFound) {
		t.Fatalf("conflicting save created the record: Get err = %v", err)
	}
	// chained updates with the returned ETag keep working.
	for i := range 5 {
		a.Attempts = i
		mustSave(t, s, a)
	}
	got := mustGet(t, s, state.Order, "7")
	if got.Attempts != 4 || got.Status != state.Synced || got.ETag != a.ETag {
		t.Fatalf("after chained updates: %+v", got)
	}
	expectCounts(t, s, state.Counts{state.Order: {state.Synced: 1}})
}

func testInvalidInput(t *testing.T, newStore func(t *testing.T) state.Store) {
	s := newStore(t)
	ctx := ctxT(t)
	bad := []*state.Record{
		rec(state.Customer, "", state.Pending),
		rec("", "1", state.Pending),
		rec("invoice", "1", state.Pending),
		rec(state.Customer, "1", ""),
		rec(state.Customer, "1", "done"),
		rec(state.Customer, "bad\xffutf8", state.Pending),
		rec(state.Customer, strings.Repeat("9", 600), state.Pending),
	}
	for _, r := range bad {
		err := s.Save(ctx, r)
		if err == nil {
			t.Errorf("Save(entity %q id %q status %q) succeeded, want an error", r.Entity, r.ID, r.Status)
			continue
		}
		if errors.Is(err, state.ErrConflict) || errors.Is(err, state.ErrNotFound) {
			t.Errorf("Save(entity %q id %q status %q): %v, want an input error, not conflict/not found", r.Entity, r.ID, r.Status, err)
		}
	}
	if err := s.Save(ctx, nil); err == nil {
		t.Error("Save(nil) succeeded")
	}
	if err := s.SaveDoc(ctx, nil); err == nil {
		t.Error("SaveDoc(nil) succeeded")
	}
	if err := s.SaveDoc(ctx, &state.Doc{Kind: "", Key: "k"}); err == nil {
		t.Error("SaveDoc with an empty kind succeeded")
	}
	if err := s.SaveDoc(ctx, &state.Doc{Kind: "run", Key: ""}); err == nil {
		t.Error("SaveDoc with an empty key succeeded")
	}
	expectCounts(t, s, state.Counts{})
	if docs, err := s.ListDocs(ctx, "run"); err != nil || len(docs) != 0 {
		t.Fatalf("ListDocs after invalid saves: %d docs, err %v", len(docs), err)
	}
}

func testEntitiesApart(t *testing.T, newStore func(t *testing.T) state.Store) {
	s := newStore(t)
	for i, e := range state.Entities {
		r := full(e, "42")
		r.DataverseID = string(e)
		r.Status = state.Statuses[i%len(state.Statuses)]
		mustSave(t, s, r)
	}
	want := state.Counts{}
	for i, e := range state.Entities {
		got := mustGet(t, s, e, "42")
		if got.Entity != e || got.DataverseID != string(e) {
			t.Fatalf("Get(%s 42) returned entity %s dataverse id %q", e, got.Entity, got.DataverseID)
		}
		want[e] = map[state.Status]int{state.Statuses[i%len(state.Statuses)]: 1}
	}
	expectCounts(t, s, want)
}

func testScan(t *testing.T, newStore func(t *testing.T) state.Store) {
	s := newStore(t)
	ctx := ctxT(t)
	ids := []string{"10", "9", "100", "1", "2", "chunk-abd", "chunk-abc", "0", "18446744073709551615", "1000000", "A.b_c"}
	wantAll := []string{"0", "1", "2", "9", "10", "100", "1000000", "18446744073709551615", "A.b_c", "chunk-abc", "chunk-abd"}
	status := func(id string) state.Status {
		switch {
		case strings.HasPrefix(id, "1"):
			return state.Failed
		case strings.HasPrefix(id, "chunk"):
			return state.Skipped
		case id == "0":
			return state.Synced
		}
		return state.Pending
	}
	for _, id := range ids {
		mustSave(t, s, rec(state.Product, id, status(id)))
	}
	// Noise in another entity must not show up.
	mustSave(t, s, rec(state.Customer, "5", state.Failed))

	scan := func(sts ...state.Status) []string {
		t.Helper()
		var got []string
		err := s.Scan(ctx, state.Product, sts, func(r *state.Record) error {
			if r.ETag == "" || r.Entity != state.Product {
				return fmt.Errorf("scan returned %s %q with etag %q", r.Entity, r.ID, r.ETag)
			}
			if len(sts) > 0 && !slices.Contains(sts, r.Status) {
				return fmt.Errorf("scan for %v returned %q with status %s", sts, r.ID, r.Status)
			}
			got = append(got, r.ID)
			return nil
		})
		if err != nil {
			t.Fatalf("Scan(%v): %v", sts, err)
		}
		return got
	}
	filter := func(sts ...state.Status) []string {
		var out []string
		for _, id := range wantAll {
			if slices.Contains(sts, status(id)) {
				out = append(out, id)
			}
		}
		return out
	}
	if got := scan(); !slices.Equal(got, wantAll) {
		t.Errorf("Scan(all) = %q, want %q", got, wantAll)
	}
	if got := scan(state.Statuses...); !slices.Equal(got, wantAll) {
		t.Errorf("Scan(every status) = %q, want %q", got, wantAll)
	}
	if got, want := scan(state.Failed), filter(state.Failed); !slices.Equal(got, want) {
		t.Errorf("Scan(failed) = %q, want %q", got, want)
	}
	if got, want := scan(state.Skipped, state.Synced), filter(state.Skipped, state.Synced); !slices.Equal(got, want) {
		t.Errorf("Scan(skipped, synced) = %q, want %q", got, want)
	}
	if got := scan(state.Pending, state.Pending); !slices.Equal(got, filter(state.Pending)) {
		t.Errorf("Scan(pending, pending) = %q", got)
	}
	var none int
	if err := s.Scan(ctx, state.Order, nil, func(*state.Record) error { none++; return nil }); err != nil || none != 0 {
		t.Errorf("Scan of an empty entity: %d records, err %v", none, err)
	}

	// fn's error stops the scan and comes back as is.
	stop := errors.New("stop here")
	var seen int
	err := s.Scan(ctx, state.Product, nil, func(*state.Record) error {
		seen++
		if seen == 3 {
			return stop
		}
		return nil
	})
	if err != stop {
		t.Errorf("Scan returned %v, want fn's error as is", err)
	}
	if seen != 3 {
		t.Errorf("Scan called fn %d times after it failed on the 3rd", seen)
	}

	// fn may write to the store while scanning (the engine re-saves what it scans).
	err = s.Scan(ctx, state.Product, []state.Status{state.Failed}, func(r *state.Record) error {
		r.Status = state.Pending
		return s.Save(ctx, r)
	})
	if err != nil {
		t.Fatalf("Scan with Save inside fn: %v", err)
	}
	if got := scan(state.Failed); len(got) != 0 {
		t.Errorf("after re-saving every failed record as pending, Scan(failed) = %q", got)
	}
	expectCounts(t, s, nil)
}

func testCountsTransitions(t *testing.T, newStore func(t *testing.T) state.Store) {
	s := newStore(t)
	ctx := ctxT(t)
	want := state.Counts{state.Customer: {}, state.Product: {}, state.Order: {}}
	expectCounts(t, s, want)

	r := rec(state.Customer, "1", state.Pending)
	mustSave(t, s, r)
	want[state.Customer][state.Pending] = 1
	expectCounts(t, s, want)

	path := []state.Status{state.Synced, state.Synced, state.Failed, state.Skipped, state.Pending, state.Failed, state.Synced}
	for _, st := range path {
		want[state.Customer][r.Status]--
		r.Status = st
		want[state.Customer][st]++
		mustSave(t, s, r)
		expectCounts(t, s, want)
	}
	// A conflicting save changes no count.
	stale := *r
	r.Attempts = 1
	mustSave(t, s, r)
	stale.Status = state.Failed
	if err := s.Save(ctx, &stale); !errors.Is(err, state.ErrConflict) {
		t.Fatalf("stale save: %v, want ErrConflict", err)
	}
	expectCounts(t, s, want)

	// Several records, several entities.
	for i := range 30 {
		e := state.Entities[i%3]
		st := state.Statuses[i%4]
		mustSave(t, s, rec(e, fmt.Sprint(100+i), st))
		want[e][st]++
	}
	expectCounts(t, s, want)
}

// testConcurrentDifferent: many goroutines, each moving its own records through statuses.
func testConcurrentDifferent(t *testing.T, newStore func(t *testing.T) state.Store) {
	s := newStore(t)
	ctx := ctxT(t)
	const workers, perWorker, steps = 12, 6, 4
	var wg sync.WaitGroup
	errs := make(chan error, workers)
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rnd := rand.New(rand.NewPCG(uint64(w), 1))
			e := state.Entities[w%3]
			for i := range perWorker {
				r := rec(e, fmt.Sprint(w*1000+i), state.Pending)
				if err := s.Save(ctx, r); err != nil {
					errs <- err
					return
				}
				for range steps {
					r.Status = state.Statuses[rnd.IntN(4)]
					if err := s.Save(ctx, r); err != nil {
						errs <- fmt.Errorf("worker %d record %s: %w", w, r.ID, err)
						return
					}
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	c := tally(t, s)
	total := 0
	for _, e := range state.Entities {
		for _, st := range state.Statuses {
			total += c[e][st]
		}
	}
	if total != workers*perWorker {
		t.Fatalf("a full scan finds %d records, want %d", total, workers*perWorker)
	}
	expectCounts(t, s, nil)
}

// testConcurrentSame: many goroutines fighting over the same records with Get/modify/Save,
// retrying on ErrConflict, plus racing creates of the same keys.
func testConcurrentSame(t *testing.T, newStore func(t *testing.T) state.Store) {
	s := newStore(t)
	ctx := ctxT(t)
	const workers, rounds = 10, 8
	ids := []string{"1", "2", "3"}
	var wg sync.WaitGroup
	var mu sync.Mutex
	created, applied, conflicts := 0, 0, 0
	errs := make(chan error, workers)
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rnd := rand.New(rand.NewPCG(uint64(w), 2))
			for _, id := range ids {
				err := s.Save(ctx, rec(state.Order, id, state.Statuses[w%4]))
				switch {
				case err == nil:
					mu.Lock()
					created++
					mu.Unlock()
				case errors.Is(err, state.ErrConflict):
				default:
					errs <- err
					return
				}
			}
			for i := range rounds {
				id := ids[(w+i)%len(ids)]
				for {
					r, err := s.Get(ctx, state.Order, id)
					if err != nil {
						errs <- err
						return
					}
					r.Status = state.Statuses[rnd.IntN(4)]
					r.Attempts++
					err = s.Save(ctx, r)
					if errors.Is(err, state.ErrConflict) {
						mu.Lock()
						conflicts++
						mu.Unlock()
						continue
					}
					if err != nil {
						errs <- err
						return
					}
					mu.Lock()
					applied++
					mu.Unlock()
					break
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	if created != len(ids) {
		t.Fatalf("%d racing creates succeeded, want exactly %d", created, len(ids))
	}
	// Every successful update incremented Attempts exactly once: no lost update.
	sum := 0
	for _, id := range ids {
		sum += mustGet(t, s, state.Order, id).Attempts
	}
	if sum != applied || applied != workers*rounds {
		t.Fatalf("attempts sum %d, successful updates %d, want both %d", sum, applied, workers*rounds)
	}
	t.Logf("%d updates, %d conflicts retried", applied, conflicts)
	expectCounts(t, s, nil)
	c, _ := s.Counts(ctx)
	n := 0
	for _, st := range state.Statuses {
		n += c[state.Order][st]
	}
	if n != len(ids) {
		t.Fatalf("Counts sum for orders = %d, want %d", n, len(ids))
	}
}

func testData(t *testing.T, newStore func(t *testing.T) state.Store) {
	s := newStore(t)
	rnd := rand.New(rand.NewPCG(7, 7))
	sizes := []int{0, 1, 64<<10 - 1, 64 << 10, 64<<10 + 1, state.MaxData - 1, state.MaxData}
	for i, n := range sizes {
		data := make([]byte, n)
		for j := range data {
			data[j] = byte(rnd.UintN(256))
		}
		if n > 0 {
			data[0], data[n-1] = 0, 0xff
		}
		r := rec(state.Product, fmt.Sprint(i+1), state.Synced)
		r.Data = data
		mustSave(t, s, r)
		got := mustGet(t, s, state.Product, r.ID)
		if !bytes.Equal(got.Data, data) {
			t.Fatalf("Data of %d bytes came back as %d bytes, not byte for byte", n, len(got.Data))
		}
	}
	// Shrinking a blob leaves nothing of the old one behind; growing it works too.
	r := mustGet(t, s, state.Product, fmt.Sprint(len(sizes)))
	r.Data = []byte("small")
	mustSave(t, s, r)
	if got := mustGet(t, s, state.Product, r.ID); string(got.Data) != "small" {
		t.Fatalf("after shrinking: %d bytes", len(got.Data))
	}
	r.Data = bytes.Repeat([]byte("{}"), state.MaxData/2)
	mustSave(t, s, r)
	if got := mustGet(t, s, state.Product, r.ID); !bytes.Equal(got.Data, r.Data) {
		t.Fatalf("after growing: %d bytes", len(got.Data))
	}
	// Scan returns Data too.
	n := 0
	err := s.Scan(ctxT(t), state.Product, nil, func(g *state.Record) error {
		if g.ID == r.ID && !bytes.Equal(g.Data, r.Data) {
			return fmt.Errorf("got %d bytes of Data from Scan, want %d", len(g.Data), len(r.Data))
		}
		n++
		return nil
	})
	if err != nil || n != len(sizes) {
		t.Fatalf("Scan: %d records, err %v", n, err)
	}
	expectCounts(t, s, state.Counts{state.Product: {state.Synced: len(sizes)}})
}

func testExtra(t *testing.T, newStore func(t *testing.T) state.Store) {
	s := newStore(t)
	r := rec(state.Order, "5", state.Synced)
	r.Extra = map[string]string{
		"invoiceId":   "0b5f6a3e-0000-0000-0000-000000000001",
		"steps":       "header,lines,fulfil",
		"adopted":     `{"contact":"x","account":"y"}`,
		"with space":  "line1\nline2\t\"quoted\"",
		"ünï":         "✓",
		"empty value": "",
	}
	mustSave(t, s, r)
	got := mustGet(t, s, state.Order, "5")
	expectSame(t, "Extra round trip", got, r)

	delete(got.Extra, "steps")
	got.Extra["conflict"] = "nop 1001 vs dataverse SO-1001"
	mustSave(t, s, got)
	again := mustGet(t, s, state.Order, "5")
	if _, ok := again.Extra["steps"]; ok {
		t.Error("a removed Extra key came back")
	}
	expectSame(t, "Extra after edit", again, got)

	got.Extra = nil
	mustSave(t, s, got)
	if again := mustGet(t, s, state.Order, "5"); len(again.Extra) != 0 {
		t.Errorf("Extra after clearing: %v", again.Extra)
	}
}

func testTimes(t *testing.T, newStore func(t *testing.T) state.Store) {
	s := newStore(t)
	east := time.FixedZone("UTC+9", 9*3600)
	west := time.FixedZone("UTC-3:30", -(3*3600 + 1800))
	cases := []struct{ synced, lease time.Time }{
		{time.Date(2026, 1, 2, 3, 4, 5, 678_000_000, east), time.Date(2030, 12, 31, 23, 59, 59, 999_000_000, west)},
		{time.Date(1999, 12, 31, 23, 59, 59, 1_000_000, time.UTC), time.Time{}},
		{time.Time{}, time.Date(2026, 11, 29, 0, 0, 0, 0, time.UTC)},
		{time.Now(), time.Now().Add(30 * time.Second)}, // monotonic reading and nanoseconds
	}
	for i, c := range cases {
		r := rec(state.Customer, fmt.Sprint(i+1), state.Synced)
		r.SyncedAt, r.LeaseUntil = c.synced, c.lease
		if !c.lease.IsZero() {
			r.LeaseOwner = "me"
		}
		mustSave(t, s, r)
		got := mustGet(t, s, state.Customer, r.ID)
		expectSame(t, fmt.Sprintf("times case %d", i), got, r)
		if !c.synced.IsZero() && !got.SyncedAt.Truncate(time.Millisecond).Equal(c.synced.Truncate(time.Millisecond)) {
			t.Errorf("case %d: SyncedAt %v lost millisecond precision (saved %v)", i, got.SyncedAt, c.synced)
		}
		if !c.lease.IsZero() && !got.LeaseUntil.Truncate(time.Millisecond).Equal(c.lease.Truncate(time.Millisecond)) {
			t.Errorf("case %d: LeaseUntil %v lost millisecond precision (saved %v)", i, got.LeaseUntil, c.lease)
		}
	}
	// UpdatedAt moves forward with each save.
	r := mustGet(t, s, state.Customer, "1")
	first := r.UpdatedAt
	time.Sleep(3 * time.Millisecond)
	mustSave(t, s, r)
	if !r.UpdatedAt.After(first) {
		t.Errorf("UpdatedAt did not move forward: %v then %v", first, r.UpdatedAt)
	}
	// A caller-set UpdatedAt is ignored: the store sets it.
	r.UpdatedAt = time.Date(2001, 1, 1, 0, 0, 0, 0, time.UTC)
	mustSave(t, s, r)
	if r.UpdatedAt.Year() == 2001 {
		t.Error("Save kept a caller-set UpdatedAt")
	}
}

func testLeases(t *testing.T, newStore func(t *testing.T) state.Store) {
	s := newStore(t)
	ctx := ctxT(t)
	mustSave(t, s, rec(state.Order, "1001", state.Pending))

	// Two instances read the record and both try to claim it: exactly one wins.
	const claimers = 6
	var wg sync.WaitGroup
	var mu sync.Mutex
	var winners []string
	errs := make(chan error, claimers)
	readers := make([]*state.Record, claimers)
	for i := range readers { // everyone reads before anyone writes
		readers[i] = mustGet(t, s, state.Order, "1001")
	}
	for i, r := range readers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r.LeaseOwner = fmt.Sprintf("instance-%d", i)
			r.LeaseUntil = time.Now().Add(time.Minute)
			err := s.Save(ctx, r)
			if errors.Is(err, state.ErrConflict) {
				return
			}
			if err != nil {
				errs <- err
				return
			}
			mu.Lock()
			winners = append(winners, r.LeaseOwner)
			mu.Unlock()
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	if len(winners) != 1 {
		t.Fatalf("%d claims won (%v), want exactly 1", len(winners), winners)
	}
	got := mustGet(t, s, state.Order, "1001")
	if got.LeaseOwner != winners[0] || !got.LeaseUntil.After(time.Now()) {
		t.Fatalf("stored lease %q until %v, want %q in the future", got.LeaseOwner, got.LeaseUntil, winners[0])
	}
	// Releasing the lease clears both fields.
	got.LeaseOwner, got.LeaseUntil = "", time.Time{}
	got.Status = state.Synced
	mustSave(t, s, got)
	if r := mustGet(t, s, state.Order, "1001"); r.LeaseOwner != "" || !r.LeaseUntil.IsZero() {
		t.Fatalf("released lease still stored: %q until %v", r.LeaseOwner, r.LeaseUntil)
	}
	expectCounts(t, s, state.Counts{state.Order: {state.Synced: 1}})
}

func testDocs(t *testing.T, newStore func(t *testing.T) state.Store) {
	s := newStore(t)
	ctx := ctxT(t)
	if _, err := s.GetDoc(ctx, "autosync", "lease"); !errors.Is(err, state.ErrNotFound) {
		t.Fatalf("GetDoc of a missing doc: %v, want ErrNotFound", err)
	}
	if docs, err := s.ListDocs(ctx, "run"); err != nil || len(docs) != 0 {
		t.Fatalf("ListDocs of an empty kind: %v, %v", docs, err)
	}
	d := &state.Doc{Kind: "autosync", Key: "lease", Value: []byte(`{"owner":"a","until":"2026-11-29T01:00:00Z"}`)}
	if err := s.SaveDoc(ctx, d); err != nil {
		t.Fatalf("SaveDoc create: %v", err)
	}
	if d.ETag == "" {
		t.Fatal("SaveDoc left ETag empty")
	}
	got, err := s.GetDoc(ctx, "autosync", "lease")
	if err != nil {
		t.Fatal(err)
	}
	if got.Kind != d.Kind || got.Key != d.Key || !bytes.Equal(got.Value, d.Value) || got.ETag != d.ETag {
		t.Fatalf("GetDoc = %+v, want %+v", got, d)
	}
	// create-only and ETag rules.
	if err := s.SaveDoc(ctx, &state.Doc{Kind: "autosync", Key: "lease", Value: []byte("x")}); !errors.Is(err, state.ErrConflict) {
		t.Fatalf("second create of a doc: %v, want ErrConflict", err)
	}
	stale := *got
	got.Value = []byte(`{"owner":"b"}`)
	if err := s.SaveDoc(ctx, got); err != nil {
		t.Fatalf("SaveDoc update: %v", err)
	}
	if got.ETag == stale.ETag {
		t.Fatal("doc ETag unchanged by an update")
	}
	stale.Value = []byte(`{"owner":"c"}`)
	if err := s.SaveDoc(ctx, &stale); !errors.Is(err, state.ErrConflict) {
		t.Fatalf("SaveDoc with a stale ETag: %v, want ErrConflict", err)
	}
	if err := s.SaveDoc(ctx, &state.Doc{Kind: "autosync", Key: "nope", ETag: got.ETag}); !errors.Is(err, state.ErrConflict) {
		t.Fatalf("SaveDoc with an ETag of a missing doc: %v, want ErrConflict", err)
	}
	if again, _ := s.GetDoc(ctx, "autosync", "lease"); again == nil || string(again.Value) != `{"owner":"b"}` {
		t.Fatalf("doc after a stale save: %+v", again)
	}
	// Racing claims of a doc (the auto-sync lease): exactly one wins.
	var wg sync.WaitGroup
	var mu sync.Mutex
	wins := 0
	claims := make([]*state.Doc, 5)
	for i := range claims { // everyone reads before anyone writes
		c, err := s.GetDoc(ctx, "autosync", "lease")
		if err != nil {
			t.Fatal(err)
		}
		claims[i] = c
	}
	for i, c := range claims {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c.Value = []byte(fmt.Sprint(i))
			if s.SaveDoc(ctx, c) == nil {
				mu.Lock()
				wins++
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	if wins != 1 {
		t.Fatalf("%d racing doc saves won, want 1", wins)
	}

	// ListDocs: one kind only, keys in order (newest last), values intact.
	keys := []string{"2026-11-29T01:00:00Z", "2026-11-28T23:00:00Z", "2026-11-29T00:30:00.5Z", "2026-11-29T00:30:00Z"}
	rnd := rand.New(rand.NewPCG(3, 3))
	big := make([]byte, 100<<10)
	for i := range big {
		big[i] = byte(rnd.UintN(256))
	}
	for i, k := range keys {
		v := []byte(fmt.Sprintf(`{"run":%d}`, i))
		if i == 0 {
			v = big
		}
		if err := s.SaveDoc(ctx, &state.Doc{Kind: "run", Key: k, Value: v}); err != nil {
			t.Fatalf("SaveDoc run %s: %v", k, err)
		}
	}
	if err := s.SaveDoc(ctx, &state.Doc{Kind: "runs", Key: "zzz", Value: []byte("other kind")}); err != nil {
		t.Fatal(err)
	}
	if err := s.SaveDoc(ctx, &state.Doc{Kind: "ru", Key: "zzz", Value: nil}); err != nil {
		t.Fatal(err)
	}
	docs, err := s.ListDocs(ctx, "run")
	if err != nil {
		t.Fatal(err)
	}
	sorted := slices.Clone(keys)
	slices.Sort(sorted)
	var gotKeys []string
	for _, d := range docs {
		if d.Kind != "run" || d.ETag == "" {
			t.Fatalf("ListDocs(run) returned %+v", d)
		}
		gotKeys = append(gotKeys, d.Key)
		if d.Key == keys[0] && !bytes.Equal(d.Value, big) {
			t.Fatalf("ListDocs returned %d bytes for the big doc", len(d.Value))
		}
	}
	if !slices.Equal(gotKeys, sorted) {
		t.Fatalf("ListDocs(run) keys = %q, want %q", gotKeys, sorted)
	}
	if d, err := s.GetDoc(ctx, "ru", "zzz"); err != nil || len(d.Value) != 0 {
		t.Fatalf("empty doc: %+v, %v", d, err)
	}
	// Docs do not show up as records or in counts.
	expectCounts(t, s, state.Counts{})
}

// OddIDs are keys the store must keep apart and give back exactly.
var OddIDs = []string{
	"chunk-abc", "chunk-0123456789abcdef", "a/b", `a\b`, "a#b", "a?b", "a%2Fb", "a%b", "a_2Fb",
	"o'brien", `say "hi"`, "with space", " lead", "trail ", "tab\tx", "nl\nx", "del\x7fx",
	"ünïcødé", "日本", "emoji🙂", "~count-00", "~", "-1", "007", "+5", "1e3", "x:y", "a&b=c",
	"%", "''", "..", ".", "123456789012345678901", "00000000000000000001", "c1\u0085x",
	"a+b", "+", "a!2Fb", "!", "!!", "a%20b", "k", "kk", "~count-", "*", "$x", "a,b;c", "[x]", "{y}", "<z>", "a|b",
}

func testOddIDs(t *testing.T, newStore func(t *testing.T) state.Store) {
	s := newStore(t)
	ctx := ctxT(t)
	for i, id := range OddIDs {
		r := rec(state.Product, id, state.Statuses[i%4])
		r.Data = []byte(id)
		mustSave(t, s, r)
	}
	// Decimal ids next to them, which they must not collide with.
	mustSave(t, s, rec(state.Product, "1", state.Pending))
	mustSave(t, s, rec(state.Product, "7", state.Pending))
	for i, id := range OddIDs {
		got, err := s.Get(ctx, state.Product, id)
		if err != nil {
			t.Fatalf("Get(%q): %v", id, err)
		}
		if got.ID != id || string(got.Data) != id || got.Status != state.Statuses[i%4] {
			t.Fatalf("Get(%q) returned id %q data %q status %s", id, got.ID, got.Data, got.Status)
		}
		got.Reason = "updated " + id
		mustSave(t, s, got)
	}
	if _, err := s.Get(ctx, state.Product, "a%252Fb"); !errors.Is(err, state.ErrNotFound) {
		t.Fatalf("Get of an escaped form: %v, want ErrNotFound", err)
	}
	seen := map[string]bool{}
	err := s.Scan(ctx, state.Product, nil, func(r *state.Record) error {
		if seen[r.ID] {
			return fmt.Errorf("got %q twice from Scan", r.ID)
		}
		seen[r.ID] = true
		if r.ID != "1" && r.ID != "7" && r.Reason != "updated "+r.ID {
			return fmt.Errorf("got %q with reason %q from Scan", r.ID, r.Reason)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(seen) != len(OddIDs)+2 {
		t.Fatalf("Scan returned %d records, want %d", len(seen), len(OddIDs)+2)
	}
	// Odd doc kinds and keys work too.
	for _, k := range []string{"a/b", "o'brien", "~", "x#y?z", "日本"} {
		if err := s.SaveDoc(ctx, &state.Doc{Kind: "odd/" + k, Key: k, Value: []byte(k)}); err != nil {
			t.Fatalf("SaveDoc(%q): %v", k, err)
		}
		d, err := s.GetDoc(ctx, "odd/"+k, k)
		if err != nil || string(d.Value) != k {
			t.Fatalf("GetDoc(%q): %+v, %v", k, d, err)
		}
		if docs, err := s.ListDocs(ctx, "odd/"+k); err != nil || len(docs) != 1 || docs[0].Key != k {
			t.Fatalf("ListDocs(%q): %v, %v", "odd/"+k, docs, err)
		}
	}
	expectCounts(t, s, nil)
}

func testCopies(t *testing.T, newStore func(t *testing.T) state.Store) {
	s := newStore(t)
	r := full(state.Customer, "9")
	mustSave(t, s, r)
	// Changing the caller's record after Save does not change what is stored.
	r.Data[0] = 'X'
	r.Extra["invoiceId"] = "changed"
	got := mustGet(t, s, state.Customer, "9")
	if got.Data[0] == 'X' || got.Extra["invoiceId"] == "changed" {
		t.Fatal("the store shares Data or Extra with the saved record")
	}
	// Changing a returned record does not change what is stored.
	got.Data[0] = 'Y'
	got.Extra["invoiceId"] = "changed"
	got.Status = state.Synced
	again := mustGet(t, s, state.Customer, "9")
	if again.Data[0] == 'Y' || again.Extra["invoiceId"] == "changed" || again.Status != state.Failed {
		t.Fatal("the store shares a returned record with its own copy")
	}
	d := &state.Doc{Kind: "k", Key: "v", Value: []byte("abc")}
	if err := s.SaveDoc(ctxT(t), d); err != nil {
		t.Fatal(err)
	}
	d.Value[0] = 'z'
	if g, _ := s.GetDoc(ctxT(t), "k", "v"); g == nil || string(g.Value) != "abc" {
		t.Fatal("the store shares a doc's Value with the caller")
	}
}

func testWiped(t *testing.T, newStore func(t *testing.T) state.Store) {
	old := newStore(t)
	ctx := ctxT(t)
	r := rec(state.Customer, "1", state.Synced)
	mustSave(t, old, r)
	if err := old.SaveDoc(ctx, &state.Doc{Kind: "autosync", Key: "last", Value: []byte("x")}); err != nil {
		t.Fatal(err)
	}

	s := newStore(t)
	if _, err := s.Get(ctx, state.Customer, "1"); !errors.Is(err, state.ErrNotFound) {
		t.Fatalf("a new store has the old record: %v", err)
	}
	if _, err := s.GetDoc(ctx, "autosync", "last"); !errors.Is(err, state.ErrNotFound) {
		t.Fatalf("a new store has the old doc: %v", err)
	}
	expectCounts(t, s, state.Counts{})
	// A version from the old store means nothing in the new one.
	stale := *r
	if err := s.Save(ctx, &stale); !errors.Is(err, state.ErrConflict) {
		t.Fatalf("saving with an ETag from the wiped store: %v, want ErrConflict", err)
	}
	// Starting over works: create, then count.
	fresh := rec(state.Customer, "1", state.Pending)
	mustSave(t, s, fresh)
	expectCounts(t, s, state.Counts{state.Customer: {state.Pending: 1}})
}

// testLimits: what no store can keep is refused with an input error (not a conflict),
// leaving the stored record as it was; an over-long Reason is cut, not refused.
func testLimits(t *testing.T, newStore func(t *testing.T) state.Store) {
	s := newStore(t)
	ctx := ctxT(t)
	r := rec(state.Product, "1", state.Pending)
	mustSave(t, s, r)
	for name, mod := range map[string]func(*state.Record){
		"Data one byte over state.MaxData": func(r *state.Record) { r.Data = make([]byte, state.MaxData+1) },
		"Extra over state.MaxExtra as JSON": func(r *state.Record) {
			r.Extra = map[string]string{"big": strings.Repeat("x", state.MaxExtra-len(`{"big":""}`)+1)}
		},
		"a data hash over state.MaxString": func(r *state.Record) { r.DataHash = strings.Repeat("h", state.MaxString+1) },
		"negative attempts":                func(r *state.Record) { r.Attempts = -1 },
	} {
		c := *r
		c.Status = state.Synced
		mod(&c)
		err := s.Save(ctx, &c)
		if err == nil || errors.Is(err, state.ErrConflict) || errors.Is(err, state.ErrNotFound) {
			t.Errorf("Save with %s: %v, want an input error", name, err)
		}
		if c.ETag != r.ETag {
			t.Errorf("Save with %s changed rec.ETag", name)
		}
	}
	expectSame(t, "record after refused saves", mustGet(t, s, state.Product, "1"), r)
	expectCounts(t, s, state.Counts{state.Product: {state.Pending: 1}})

	// At the limits everything is kept.
	edge := rec(state.Customer, strings.Repeat("k", state.MaxKeyLen), state.Synced)
	edge.Extra = map[string]string{"big": strings.Repeat("x", state.MaxExtra-len(`{"big":""}`))}
	edge.DataHash = strings.Repeat("h", state.MaxString)
	mustSave(t, s, edge)
	if got := mustGet(t, s, state.Customer, edge.ID); len(got.Extra["big"]) != len(edge.Extra["big"]) || got.DataHash != edge.DataHash {
		t.Fatalf("a record at the limits came back changed")
	}
	if err := s.Save(ctx, rec(state.Customer, strings.Repeat("k", state.MaxKeyLen+1), state.Synced)); err == nil {
		t.Errorf("an id of state.MaxKeyLen+1 bytes was saved")
	}
	if err := s.SaveDoc(ctx, &state.Doc{Kind: "limits", Key: "big", Value: make([]byte, state.MaxData+1)}); err == nil {
		t.Errorf("a doc value of state.MaxData+1 bytes was saved")
	}

	long := strings.Repeat("é", 50<<10) // 100 KiB
	r.Reason = long
	mustSave(t, s, r)
	got := mustGet(t, s, state.Product, "1")
	if len(got.Reason) < 4<<10 || len(got.Reason) > state.MaxString || !strings.HasPrefix(long, got.Reason) || !utf8.ValidString(got.Reason) {
		t.Fatalf("a 100 KiB Reason came back as %d bytes, want a valid prefix of at least 4 KiB", len(got.Reason))
	}
}
