package ops

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nopsync/nopsync/shared/localstore"
	"github.com/nopsync/nopsync/shared/nop"
	"github.com/nopsync/nopsync/shared/queue"
	"github.com/nopsync/nopsync/shared/state"
	"github.com/nopsync/nopsync/shared/storesync/storesynctest"
)

// applyingSender stands in for queue + engine: it decodes what is sent and keeps each
// event in its entity's state record, as the engine does when it applies it.
type applyingSender struct {
	st   state.Store
	mu   sync.Mutex
	ids  map[state.Entity][]string
	msgs []string
}

func (a *applyingSender) Send(ctx context.Context, q string, msgs []queue.Message) error {
	for _, m := range msgs {
		evs, _, err := nop.DecodeEnvelope(m.Body)
		if err != nil {
			return err
		}
		for _, ev := range evs {
			rec, err := a.st.Get(ctx, ev.Entity(), ev.EntityID())
			if errors.Is(err, state.ErrNotFound) {
				rec = &state.Record{Entity: ev.Entity(), ID: ev.EntityID(), Status: state.Synced}
			} else if err != nil {
				return err
			}
			rec.Data = slices.Clone([]byte(ev.Raw))
			if err := a.st.Save(ctx, rec); err != nil {
				return err
			}
			a.mu.Lock()
			a.ids[ev.Entity()] = append(a.ids[ev.Entity()], ev.EntityID())
			a.mu.Unlock()
		}
		a.mu.Lock()
		a.msgs = append(a.msgs, m.MessageID)
		a.mu.Unlock()
	}
	return nil
}

func (a *applyingSender) take(e state.Entity) []string {
	a.mu.Lock()
	defer a.mu.Unlock()
	out := a.ids[e]
	a.ids[e] = nil
	return out
}

type storeFixture struct {
	ops    *Ops
	st     state.Store
	src    *storesynctest.Source
	sender *applyingSender
	clk    *clock
	opts   Options
}

func newStoreFixture(t *testing.T, customers int, mod func(*Options)) *storeFixture {
	t.Helper()
	st, err := localstore.Open("")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	src := storesynctest.New("USD")
	for i := 1; i <= customers; i++ {
		src.Put(state.Customer, int64(i), storesynctest.Customer(int64(i), fmt.Sprintf("c%d@example.com", i)))
	}
	clk := &clock{t: time.Date(2026, 12, 4, 12, 0, 0, 0, time.UTC)}
	sender := &applyingSender{st: st, ids: map[state.Entity][]string{}}
	o := Options{State: st, Sender: sender, Probe: probe{Connection{Reachable: true, Currency: "USD"}},
		Store: src, StoreHash: storesynctest.Hash, StoreCurrencyCode: "USD", StorePageSize: 10,
		AutoSyncEnabled: false, AutoSyncPeriod: time.Hour, Now: clk.Now}
	if mod != nil {
		mod(&o)
	}
	f := &storeFixture{ops: New(o), st: st, src: src, sender: sender, clk: clk, opts: o}
	t.Cleanup(f.ops.Close)
	return f
}

// wait polls the run until it is no longer running (no time assertion: a hung run
// fails the test after a generous bound).
func (f *storeFixture) wait(t *testing.T, id string) *Run {
	t.Helper()
	for start := time.Now(); time.Since(start) < 30*time.Second; time.Sleep(2 * time.Millisecond) {
		r, err := f.ops.GetRun(context.Background(), id)
		if err != nil {
			t.Fatal(err)
		}
		if r.Outcome != "running" {
			return r
		}
	}
	t.Fatalf("run %s still running", id)
	return nil
}

func postSync(t *testing.T, o *Ops, body string) (int, map[string]any) {
	t.Helper()
	mux := http.NewServeMux()
	o.Routes(mux)
	rec := httptest.NewRecorder()
	mux.ServeHTTP(rec, httptest.NewRequest(http.MethodPost, "/api/sync", strings.NewReader(body)))
	var m map[string]any
	json.Unmarshal(rec.Body.Bytes(), &m)
	return rec.Code, m
}

func getJSON(t *testing.T, o *Ops, path string, v any) int {
	t.Helper()
	mux := http.NewServeMux()
	o.Routes(mux)
	rec := httptest.NewRecorder()
	mux.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, path, nil))
	if err := json.Unmarshal(rec.Body.Bytes(), v); err != nil {
		t.Fatalf("%s: %v: %s", path, err, rec.Body)
	}
	return rec.Code
}

func TestStoreRunQueuesChangesOnly(t *testing.T) {
	f := newStoreFixture(t, 95, nil)
	f.src.Put(state.Product, 1, []byte(`{"id":1,"productType":5,"parentGroupedProductId":0,"name":"Mug","shortDescription":null,"fullDescription":null,"sku":"MUG","gtin":null,"manufacturerPartNumber":null,"price":"9.5000","productCost":"2.0000","oldPrice":"0.0000","stockQuantity":4,"manageInventoryMethod":1,"published":true,"deleted":false,"updatedOnUtc":"2026-11-25T09:00:00Z","pictureUrls":[],"associatedProductIds":[]}`))
	f.src.Fail(state.Product, 2, "price 1e20 is beyond Dataverse's money range")

	code, body := postSync(t, f.ops, `{"source":"store"}`)
	if code != http.StatusAccepted || body["runId"] == nil {
		t.Fatalf("POST /api/sync: %d %v", code, body)
	}
	id := body["runId"].(string)
	run := f.wait(t, id)
	if run.Outcome != "succeeded" || run.Source != SourceStore {
		t.Fatalf("run: %+v", run)
	}
	c, p := run.Store[state.Customer], run.Store[state.Product]
	if c.RowsRead != 95 || c.Queued != 95 || !c.Done || p.RowsRead != 2 || p.Queued != 1 || p.Failed != 1 || run.Queued != 96 {
		t.Fatalf("progress: customers %+v products %+v queued %d", c, p, run.Queued)
	}
	var shown Run
	if code := getJSON(t, f.ops, "/api/sync/"+id, &shown); code != 200 || shown.Store[state.Product].Failures[0].Reason != "price 1e20 is beyond Dataverse's money range" {
		t.Fatalf("GET /api/sync/%s: %d %+v", id, code, shown.Store[state.Product])
	}
	if got := f.sender.take(state.Customer); len(got) != 95 {
		t.Fatalf("queued %d customers", len(got))
	}
	f.sender.take(state.Product)

	// Nothing changed: nothing queued.
	f.clk.Add(time.Minute)
	code, body = postSync(t, f.ops, `{"source":"store","entities":["customer"]}`)
	if code != http.StatusAccepted {
		t.Fatalf("second POST: %d %v", code, body)
	}
	run = f.wait(t, body["runId"].(string))
	if c := run.Store[state.Customer]; c.Queued != 0 || c.Unchanged != 95 || run.Store[state.Product] != nil {
		t.Fatalf("unchanged run: %+v", run.Store)
	}
	// Two changed rows: exactly those.
	f.src.Put(state.Customer, 3, storesynctest.Customer(3, "changed3@example.com"))
	f.src.Put(state.Customer, 77, storesynctest.Customer(77, "changed77@example.com"))
	f.clk.Add(time.Minute)
	_, body = postSync(t, f.ops, `{"source":"store","entities":["customer"]}`)
	run = f.wait(t, body["runId"].(string))
	if got := f.sender.take(state.Customer); !slices.Equal(got, []string{"3", "77"}) || run.Store[state.Customer].Queued != 2 {
		t.Fatalf("changed run queued %v", got)
	}

	var st Status
	getJSON(t, f.ops, "/api/status", &st)
	if !st.Store.Configured || !st.Store.Reachable || st.Store.LastRun == nil || st.Store.LastRun.ID != run.ID || st.Store.Error != nil || !st.Healthy {
		t.Fatalf("status store: %+v healthy %v", st.Store, st.Healthy)
	}
}

func TestStoreRunFailsClearly(t *testing.T) {
	t.Run("currency mismatch", func(t *testing.T) {
		f := newStoreFixture(t, 5, nil)
		f.src.SetCurrency("EUR")
		_, body := postSync(t, f.ops, `{"source":"store"}`)
		run := f.wait(t, body["runId"].(string))
		if run.Outcome != "failed" || !strings.Contains(run.Error, "the store's primary currency is EUR") || !strings.Contains(run.Error, "STORE_CURRENCY_CODE is USD") {
			t.Fatalf("run: %+v", run)
		}
		if len(f.sender.take(state.Customer)) != 0 {
			t.Fatal("queued despite the currency mismatch")
		}
		var st Status
		getJSON(t, f.ops, "/api/status", &st)
		if st.Healthy || st.Store.Error == nil || !strings.Contains(*st.Store.Error, "currency mismatch") || st.Store.LastRun.Outcome != "failed" {
			t.Fatalf("status: healthy %v store %+v", st.Healthy, st.Store)
		}
	})
	t.Run("unreachable", func(t *testing.T) {
		f := newStoreFixture(t, 5, nil)
		f.src.SetCheckError(errors.New("nopdb: connecting to the store database: dial tcp 10.0.0.9:5432: connect: connection refused"))
		_, body := postSync(t, f.ops, `{"source":"store"}`)
		run := f.wait(t, body["runId"].(string))
		if run.Outcome != "failed" || !strings.Contains(run.Error, "connection refused") {
			t.Fatalf("run: %+v", run)
		}
		var st Status
		if code := getJSON(t, f.ops, "/api/status", &st); code != 200 || st.Healthy || st.Store.Reachable || st.Store.Error == nil {
			t.Fatalf("status: %d %+v", code, st.Store)
		}
	})
	t.Run("not configured", func(t *testing.T) {
		f := newStoreFixture(t, 0, func(o *Options) { o.Store = nil })
		// docs/store-reader.md: "Without the reader configured, both behave as before
		// (re-drive from the app's own state)": 202, a state run, and a note saying so.
		code, body := postSync(t, f.ops, `{"source":"store"}`)
		if code != http.StatusAccepted || body["source"] != SourceState || !strings.Contains(fmt.Sprint(body["note"]), "NOP_DB_PROVIDER") {
			t.Fatalf("%d %v", code, body)
		}
		run, err := f.ops.GetRun(context.Background(), body["runId"].(string))
		if err != nil || run.Source != SourceState || run.Outcome != "succeeded" || !strings.Contains(run.Note, "not configured") {
			t.Fatalf("run %+v %v", run, err)
		}
		if code, _ := postSync(t, f.ops, `{"source":"shop"}`); code != http.StatusBadRequest {
			t.Fatalf("unknown source: %d", code)
		}
	})
}

// One store run at a time, across instances sharing the state store.
func TestStoreRunClaimedOnce(t *testing.T) {
	f := newStoreFixture(t, 30, nil)
	release := make(chan struct{})
	f.src.SetPageError(func(context.Context, state.Entity, int64) error { <-release; return nil })
	other := New(f.opts) // a second instance
	defer other.Close()

	var wg sync.WaitGroup
	codes := make([]int, 4)
	for i := range codes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			o := f.ops
			if i%2 == 1 {
				o = other
			}
			codes[i], _ = postSync(t, o, `{"source":"store"}`)
		}()
	}
	wg.Wait()
	close(release)
	slices.Sort(codes)
	if !slices.Equal(codes, []int{http.StatusAccepted, http.StatusConflict, http.StatusConflict, http.StatusConflict}) {
		t.Fatalf("answers %v, want one 202", codes)
	}
}

// A run cut off (the instance stopped) resumes from its checkpoint on the next timer tick
// of any instance, even with auto-sync off, and queues every row once.
func TestStoreRunResumesAfterStop(t *testing.T) {
	f := newStoreFixture(t, 50, nil)
	stopped := make(chan struct{})
	var once sync.Once
	f.src.SetPageError(func(ctx context.Context, _ state.Entity, after int64) error {
		if after == 30 {
			once.Do(func() { close(stopped) })
			<-ctx.Done() // the instance stops while this page is being read
			return ctx.Err()
		}
		return nil
	})
	_, body := postSync(t, f.ops, `{"source":"store","entities":["customer"]}`)
	id := body["runId"].(string)
	<-stopped
	f.ops.Close()
	run, err := f.ops.GetRun(context.Background(), id)
	// Stopped while the page after 30 was read; the page before it may not have been
	// checkpointed yet (pages are read one ahead).
	if c := run.Store[state.Customer].Cursor; err != nil || run.Outcome != "running" || (c != 30 && c != 20) {
		t.Fatalf("after stop: %+v %v", run, err)
	}
	f.src.SetPageError(nil)

	next := New(f.opts)
	defer next.Close()
	if _, err := next.AutoSync(context.Background()); err != nil {
		t.Fatal(err)
	}
	run = f.wait(t, id)
	// A page passed on but not checkpointed before the stop is read again and found
	// unchanged: every row is queued exactly once.
	if p := run.Store[state.Customer]; run.Outcome != "succeeded" || p.RowsRead != 50 || p.Queued+p.Unchanged != 50 {
		t.Fatalf("resumed: %+v %+v", run, run.Store[state.Customer])
	}
	got := f.sender.take(state.Customer)
	want := make([]string, 50)
	for i := range want {
		want[i] = fmt.Sprint(i + 1)
	}
	if !slices.Equal(got, want) {
		t.Fatalf("queued %v", got)
	}
}

// A run whose instance died (its claim not released) is resumed once the claim expires.
func TestStoreRunResumedAfterCrash(t *testing.T) {
	f := newStoreFixture(t, 40, nil)
	ctx := context.Background()
	// What a crashed instance leaves: a running run with a checkpoint and an unexpired claim.
	run := &Run{ID: "20261204T120000.000000000Z-dead", Trigger: "manual", Scope: ScopeAll, Entities: []state.Entity{state.Customer}, StartedAt: f.clk.Now(),
		Outcome: "running", Source: SourceStore, Store: newProgress([]state.Entity{state.Customer})}
	run.Store[state.Customer].Cursor = 20
	run.Store[state.Customer].RowsRead = 20
	if err := f.ops.saveRun(ctx, run); err != nil {
		t.Fatal(err)
	}
	lease, _ := json.Marshal(storeLease{RunID: run.ID, Owner: "dead", Until: f.clk.Now().Add(time.Minute)})
	if err := f.st.SaveDoc(ctx, &state.Doc{Kind: docStoreLease, Key: keyStoreLease, Value: lease}); err != nil {
		t.Fatal(err)
	}
	if r, _ := f.ops.ResumeStoreRun(ctx); r != nil {
		t.Fatal("resumed while the claim holds")
	}
	if code, _ := postSync(t, f.ops, `{"source":"store"}`); code != http.StatusConflict {
		t.Fatalf("a new run while the claim holds: %d", code)
	}
	f.clk.Add(2 * time.Minute)
	if r, err := f.ops.ResumeStoreRun(ctx); err != nil || r == nil || r.ID != run.ID {
		t.Fatalf("resume: %v %v", r, err)
	}
	got := f.wait(t, run.ID)
	if got.Outcome != "succeeded" || got.Store[state.Customer].RowsRead != 40 {
		t.Fatalf("%+v", got.Store[state.Customer])
	}
	if ids := f.sender.take(state.Customer); len(ids) != 20 || ids[0] != "21" {
		t.Fatalf("queued %v, want 21..40", ids)
	}
}

func TestAutoSyncReadsStore(t *testing.T) {
	f := newStoreFixture(t, 12, func(o *Options) { o.AutoSyncEnabled = true })
	run, err := f.ops.AutoSync(context.Background())
	if err != nil || run == nil || run.Source != SourceStore || run.Trigger != "auto" {
		t.Fatalf("auto run: %+v %v", run, err)
	}
	done := f.wait(t, run.ID)
	if done.Outcome != "succeeded" || done.Store[state.Customer].Queued != 12 {
		t.Fatalf("%+v", done)
	}
	// Not due again within the period.
	if r, _ := f.ops.AutoSync(context.Background()); r != nil {
		t.Fatal("ran again within the period")
	}
	var st Status
	getJSON(t, f.ops, "/api/status", &st)
	if st.AutoSync.LastRun == nil || st.AutoSync.LastRun.ID != run.ID || st.Store.LastRun.ID != run.ID {
		t.Fatalf("status: %+v", st.AutoSync)
	}
	if !bytes.Contains(mustJSON(st), []byte(`"rowsRead":12`)) {
		t.Fatal("status does not show the run's progress")
	}
}

func mustJSON(v any) []byte { b, _ := json.Marshal(v); return b }

// busyQueues is a queue.Inspector whose queues hold messages until drained is closed;
// each Stats call is signalled on asked.
type busyQueues struct {
	drained chan struct{}
	asked   chan struct{}
}

func (b *busyQueues) Stats(context.Context, string) (queue.Stats, error) {
	select {
	case b.asked <- struct{}{}:
	default:
	}
	select {
	case <-b.drained:
		return queue.Stats{}, nil
	default:
		return queue.Stats{Active: 1}, nil
	}
}

// A run waiting, before its orders, for the customers it queued to be applied keeps its
// claim: the wait may last longer than the claim (up to StoreDrainWait), and a timer
// tick must not take the run over and read the store a second time meanwhile.
func TestStoreRunKeepsItsClaimWhileWaitingForCustomers(t *testing.T) {
	qs := &busyQueues{drained: make(chan struct{}), asked: make(chan struct{}, 1)}
	const lease = 3 * time.Minute
	f := newStoreFixture(t, 30, func(o *Options) { o.Inspector, o.StoreLease = qs, lease })
	_, body := postSync(t, f.ops, `{"source":"store","entities":["customer","order"]}`)
	id, _ := body["runId"].(string)
	if id == "" {
		t.Fatalf("no run: %v", body)
	}
	other := New(f.opts) // a second instance, its timer ticking
	defer other.Close()
	ctx := context.Background()
	<-qs.asked // the run waits for the customers' queue
	for range 3 {
		f.clk.Add(lease/2 + time.Second) // the second time, a claim not renewed runs out
		<-qs.asked                       // the run's next look at the queue, after its renewal
		<-qs.asked
		if r, err := other.ResumeStoreRun(ctx); err != nil || r != nil {
			t.Fatalf("the waiting run was taken over (%v, %v)", r, err)
		}
	}
	close(qs.drained)
	run := f.wait(t, id)
	if run.Outcome != "succeeded" || run.Store[state.Customer].Queued != 30 {
		t.Fatalf("%s: %+v", run.Outcome, run.Store[state.Customer])
	}
}
