package storesync_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"

	"github.com/nopsync/nopsync/shared/localstore"
	"github.com/nopsync/nopsync/shared/nop"
	"github.com/nopsync/nopsync/shared/nopdb"
	"github.com/nopsync/nopsync/shared/state"
	"github.com/nopsync/nopsync/shared/storesync"
	"github.com/nopsync/nopsync/shared/storesync/storesynctest"
)

// applySink records what it is given and, like the engine, keeps each event in the
// entity's state record.
type applySink struct {
	st    state.Store
	mu    sync.Mutex
	sent  []string // entity ids, in order
	fail  func(n int) error
	calls int
}

func (s *applySink) Send(ctx context.Context, entity state.Entity, evs []*nop.Event) ([]storesync.RowFailure, error) {
	s.mu.Lock()
	s.calls++
	n := s.calls
	s.mu.Unlock()
	if s.fail != nil {
		if err := s.fail(n); err != nil {
			return nil, err
		}
	}
	for _, ev := range evs {
		rec, err := s.st.Get(ctx, entity, ev.EntityID())
		if errors.Is(err, state.ErrNotFound) {
			rec = &state.Record{Entity: entity, ID: ev.EntityID(), Status: state.Synced}
		} else if err != nil {
			return nil, err
		}
		rec.Data = slices.Clone([]byte(ev.Raw))
		rec.LastEventID = ev.ID
		if err := s.st.Save(ctx, rec); err != nil {
			return nil, err
		}
		s.mu.Lock()
		s.sent = append(s.sent, ev.EntityID())
		s.mu.Unlock()
	}
	return nil, nil
}

func (s *applySink) take() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := s.sent
	s.sent = nil
	return out
}

func newStore(t *testing.T) state.Store {
	st, err := localstore.Open("")
	if err != nil {
		t.Fatal(err)
	}
	return st
}

func fill(src *storesynctest.Source, n int) {
	for i := 1; i <= n; i++ {
		src.Put(state.Customer, int64(i), storesynctest.Customer(int64(i), fmt.Sprintf("c%d@example.com", i)))
	}
}

func ids(from, to int) []string {
	var out []string
	for i := from; i <= to; i++ {
		out = append(out, fmt.Sprint(i))
	}
	return out
}

func TestPassQueuesOnlyChanged(t *testing.T) {
	ctx := context.Background()
	src := storesynctest.New("USD")
	fill(src, 250)
	st := newStore(t)
	sink := &applySink{st: st}
	pass := &storesync.Pass{Source: src, Differ: &storesync.StateDiffer{State: st, Hash: storesynctest.Hash}, Sink: sink, PageSize: 100}

	var p storesync.Progress
	checkpoints := 0
	if err := pass.Entity(ctx, state.Customer, &p, func(context.Context) error { checkpoints++; return nil }); err != nil {
		t.Fatal(err)
	}
	if p.RowsRead != 250 || p.Queued != 250 || p.Unchanged != 0 || !p.Done || p.Cursor != 250 || checkpoints != 3 {
		t.Fatalf("first pass: %+v, %d checkpoints", p, checkpoints)
	}
	if got := sink.take(); !slices.Equal(got, ids(1, 250)) {
		t.Fatalf("first pass sent %d ids", len(got))
	}

	// Nothing changed: nothing is passed on.
	p = storesync.Progress{}
	if err := pass.Entity(ctx, state.Customer, &p, nil); err != nil {
		t.Fatal(err)
	}
	if p.Queued != 0 || p.Unchanged != 250 || p.RowsRead != 250 {
		t.Fatalf("unchanged pass: %+v", p)
	}
	if got := sink.take(); len(got) != 0 {
		t.Fatalf("unchanged pass sent %v", got)
	}

	// 1 % changed (and a new row): exactly those.
	for _, id := range []int64{7, 100, 201} {
		src.Put(state.Customer, id, storesynctest.Customer(id, fmt.Sprintf("new%d@example.com", id)))
	}
	src.Put(state.Customer, 300, storesynctest.Customer(300, "c300@example.com"))
	p = storesync.Progress{}
	if err := pass.Entity(ctx, state.Customer, &p, nil); err != nil {
		t.Fatal(err)
	}
	if got := sink.take(); !slices.Equal(got, []string{"7", "100", "201", "300"}) || p.Queued != 4 || p.Unchanged != 247 {
		t.Fatalf("changed pass sent %v, %+v", got, p)
	}
}

func TestPassWipedStateRequeues(t *testing.T) {
	ctx := context.Background()
	src := storesynctest.New("USD")
	fill(src, 30)
	st := newStore(t)
	pass := &storesync.Pass{Source: src, Differ: &storesync.StateDiffer{State: st, Hash: storesynctest.Hash}, Sink: &applySink{st: st}, PageSize: 7}
	if err := pass.Entity(ctx, state.Customer, &storesync.Progress{}, nil); err != nil {
		t.Fatal(err)
	}
	// A wiped state table: every row goes again, none is lost.
	st2 := newStore(t)
	sink := &applySink{st: st2}
	pass = &storesync.Pass{Source: src, Differ: &storesync.StateDiffer{State: st2, Hash: storesynctest.Hash}, Sink: sink, PageSize: 7}
	var p storesync.Progress
	if err := pass.Entity(ctx, state.Customer, &p, nil); err != nil {
		t.Fatal(err)
	}
	if got := sink.take(); !slices.Equal(got, ids(1, 30)) || p.Queued != 30 {
		t.Fatalf("after a wipe sent %v (%+v)", got, p)
	}
}

// A record that holds no event (a stub) or an event with other data counts as changed.
func TestPassStubAndForeignData(t *testing.T) {
	ctx := context.Background()
	src := storesynctest.New("USD")
	fill(src, 3)
	st := newStore(t)
	if err := st.Save(ctx, &state.Record{Entity: state.Customer, ID: "1", Status: state.Pending}); err != nil {
		t.Fatal(err)
	}
	other := fmt.Sprintf(`{"id":"e1","type":"customer.updated","occurredOnUtc":"2026-11-25T09:00:00Z","storeId":1,"data":%s}`, storesynctest.Customer(2, "old@example.com"))
	if err := st.Save(ctx, &state.Record{Entity: state.Customer, ID: "2", Status: state.Synced, Data: []byte(other)}); err != nil {
		t.Fatal(err)
	}
	same := fmt.Sprintf(`{"id":"e3","type":"customer.updated","occurredOnUtc":"2026-11-25T09:00:00Z","storeId":1,"data":%s}`, storesynctest.Customer(3, "c3@example.com"))
	if err := st.Save(ctx, &state.Record{Entity: state.Customer, ID: "3", Status: state.Synced, Data: []byte(same)}); err != nil {
		t.Fatal(err)
	}
	sink := &applySink{st: st}
	pass := &storesync.Pass{Source: src, Differ: &storesync.StateDiffer{State: st, Hash: storesynctest.Hash}, Sink: sink}
	if err := pass.Entity(ctx, state.Customer, &storesync.Progress{}, nil); err != nil {
		t.Fatal(err)
	}
	if got := sink.take(); !slices.Equal(got, []string{"1", "2"}) {
		t.Fatalf("sent %v, want 1 and 2", got)
	}
}

// A pass cut off (sink or reader failing) resumes from its last checkpoint and passes
// every row on exactly once over the two attempts.
func TestPassResumesFromCheckpoint(t *testing.T) {
	ctx := context.Background()
	src := storesynctest.New("USD")
	fill(src, 50)
	st := newStore(t)
	sink := &applySink{st: st, fail: func(n int) error {
		if n == 3 {
			return errors.New("queue unreachable")
		}
		return nil
	}}
	pass := &storesync.Pass{Source: src, Differ: &storesync.StateDiffer{State: st, Hash: storesynctest.Hash}, Sink: sink, PageSize: 10}
	var saved storesync.Progress
	var p storesync.Progress
	save := func(context.Context) error { saved = p; return nil }
	err := pass.Entity(ctx, state.Customer, &p, save)
	if err == nil || saved.Cursor != 20 || saved.Queued != 20 {
		t.Fatalf("cut-off pass: err %v, checkpoint %+v", err, saved)
	}
	p = saved
	if err := pass.Entity(ctx, state.Customer, &p, save); err != nil {
		t.Fatal(err)
	}
	if got := sink.take(); !slices.Equal(got, ids(1, 50)) || p.Queued != 50 || p.RowsRead != 50 {
		t.Fatalf("resumed: sent %v, %+v", got, p)
	}
	// The reader failing mid-way stops the pass where it was.
	src.SetPageError(func(_ context.Context, _ state.Entity, after int64) error {
		if after == 30 {
			return errors.New("connection reset")
		}
		return nil
	})
	p = storesync.Progress{}
	if err := pass.Entity(ctx, state.Customer, &p, nil); err == nil || p.Cursor != 30 || p.Done {
		t.Fatalf("reader failure: err %v, %+v", err, p)
	}
}

func TestPassRowFailures(t *testing.T) {
	ctx := context.Background()
	src := storesynctest.New("USD")
	fill(src, 5)
	for i := int64(10); i < 10+storesync.MaxFailures+5; i++ {
		src.Fail(state.Customer, i, fmt.Sprintf("row %d: email is 400 characters, over the contact's 100", i))
	}
	st := newStore(t)
	pass := &storesync.Pass{Source: src, Differ: &storesync.StateDiffer{State: st, Hash: storesynctest.Hash}, Sink: &applySink{st: st}, PageSize: 50}
	var p storesync.Progress
	if err := pass.Entity(ctx, state.Customer, &p, nil); err != nil {
		t.Fatal(err)
	}
	if p.Failed != storesync.MaxFailures+5 || len(p.Failures) != storesync.MaxFailures || p.FailuresOmitted != 5 || p.Queued != 5 {
		t.Fatalf("failures: %+v", p)
	}
	if p.Failures[0].ID != "10" || p.Failures[0].Reason == "" {
		t.Fatalf("first failure %+v", p.Failures[0])
	}
}

// Stored data laid out with other white space is unchanged under nopdb's hash (compact
// JSON); other data is changed.
func TestStateDifferCanonicalHash(t *testing.T) {
	ctx := context.Background()
	st := newStore(t)
	data := storesynctest.Customer(5, "c5@example.com")
	evs, err := nop.DecodeRequest(state.Customer, fmt.Appendf(nil, `{"id":"r5","type":"customer.updated","occurredOnUtc":"2026-12-04T00:00:00Z","storeId":1,"data":%s}`, data))
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	json.Indent(&buf, data, "", "   ") // other bytes, same JSON
	relaid := buf.Bytes()
	if bytes.Equal(relaid, data) {
		t.Fatal("the test needs other bytes")
	}
	d := &storesync.StateDiffer{State: st, Hash: nopdb.DataHash}
	for _, tc := range []struct {
		stored []byte
		want   bool
	}{
		{relaid, true},
		{storesynctest.Customer(5, "other@example.com"), false},
	} {
		rec := &state.Record{Entity: state.Customer, ID: "5", Status: state.Synced, Data: fmt.Appendf(nil, `{"id":"e","type":"customer.updated","data":%s}`, tc.stored)}
		if old, err := st.Get(ctx, state.Customer, "5"); err == nil {
			rec.ETag = old.ETag
		}
		if err := st.Save(ctx, rec); err != nil {
			t.Fatal(err)
		}
		got, err := d.Unchanged(ctx, state.Customer, evs, []string{nopdb.DataHash(evs[0].Data)})
		if err != nil || got[0] != tc.want {
			t.Fatalf("stored %s: unchanged %v, want %v (%v)", tc.stored, got, tc.want, err)
		}
	}
}

// countingState counts the record reads a differ makes.
type countingState struct {
	state.Store
	mu          sync.Mutex
	gets, manys int
	manyIDs     []int
}

func (c *countingState) Get(ctx context.Context, entity state.Entity, id string) (*state.Record, error) {
	c.mu.Lock()
	c.gets++
	c.mu.Unlock()
	return c.Store.Get(ctx, entity, id)
}

func (c *countingState) GetMany(ctx context.Context, entity state.Entity, ids []string) (map[string]*state.Record, error) {
	c.mu.Lock()
	c.manys++
	c.manyIDs = append(c.manyIDs, len(ids))
	c.mu.Unlock()
	return c.Store.GetMany(ctx, entity, ids)
}

// A pass reads the sync state of a page in one batched read, not row by row.
func TestPassReadsStatePerPage(t *testing.T) {
	ctx := context.Background()
	src := storesynctest.New("USD")
	fill(src, 250)
	st := newStore(t)
	cs := &countingState{Store: st}
	pass := &storesync.Pass{Source: src, Differ: &storesync.StateDiffer{State: cs, Hash: storesynctest.Hash}, Sink: &applySink{st: st}, PageSize: 100}
	for _, name := range []string{"first", "unchanged"} {
		cs.gets, cs.manys, cs.manyIDs = 0, 0, nil
		var p storesync.Progress
		if err := pass.Entity(ctx, state.Customer, &p, nil); err != nil {
			t.Fatal(err)
		}
		if cs.gets != 0 || cs.manys != 3 || !slices.Equal(cs.manyIDs, []int{100, 100, 50}) {
			t.Fatalf("%s pass over 250 rows in pages of 100: %d single reads, %d batched reads of %v ids; want 0 and 3 of [100 100 50]",
				name, cs.gets, cs.manys, cs.manyIDs)
		}
		if name == "unchanged" && (p.Unchanged != 250 || p.Queued != 0) {
			t.Fatalf("unchanged pass: %+v", p)
		}
	}
}
