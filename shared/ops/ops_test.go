package ops

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nopsync/nopsync/shared/delivery"
	"github.com/nopsync/nopsync/shared/localqueue"
	"github.com/nopsync/nopsync/shared/localstore"
	"github.com/nopsync/nopsync/shared/nop"
	"github.com/nopsync/nopsync/shared/queue"
	"github.com/nopsync/nopsync/shared/state"
)

type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *clock) Add(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

type probe struct{ conn Connection }

type staleCounts map[state.Entity]int64

func (s staleCounts) StaleSkipped(context.Context) (map[state.Entity]int64, error) { return s, nil }

func (p probe) Probe(context.Context) Connection { return p.conn }

type expiry struct{ t *time.Time }

func (e expiry) ClientSecretExpiry(context.Context) (*time.Time, error) { return e.t, nil }

func customerEvent(id int, seq int64) []byte {
	return []byte(fmt.Sprintf(`{"id":"ev-%d-%d","type":"customer.updated","occurredOnUtc":"2026-11-25T09:00:00Z","sequence":%d,"storeId":1,"data":{"id":%d,"customerGuid":"5a3e7c1e-2f4b-4d7a-8a0e-6c1d2b3a4f42","email":"c%d@example.com","username":null,"firstName":"C","lastName":"Ustomer","company":null,"phone":null,"isGuest":false,"isRegistered":true,"active":true,"deleted":false,"createdOnUtc":"2026-11-25T09:00:00Z","address":null}}`, id, seq, seq, id, id))
}

type fixture struct {
	ops   *Ops
	store state.Store
	q     *localqueue.Queues
	clk   *clock
}

func newFixture(t *testing.T, mod func(*Options)) *fixture {
	t.Helper()
	st, err := localstore.Open("")
	if err != nil {
		t.Fatal(err)
	}
	clk := &clock{t: time.Date(2026, 11, 29, 12, 0, 0, 0, time.UTC)}
	q, err := localqueue.Open(localqueue.Options{MaxDeliveryCount: 2, RedeliveryDelay: time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { q.Close(); st.Close() })
	o := Options{State: st, Sender: q, DeadLetters: q, Inspector: q, Probe: probe{Connection{Reachable: true, OrganizationID: "org", UserID: "user", Currency: "USD"}},
		AutoSyncEnabled: true, AutoSyncPeriod: time.Hour, Now: clk.Now}
	if mod != nil {
		mod(&o)
	}
	return &fixture{ops: New(o), store: st, q: q, clk: clk}
}

func (f *fixture) put(t *testing.T, ent state.Entity, id string, status state.Status, transient bool, data []byte) {
	t.Helper()
	rec := &state.Record{Entity: ent, ID: id, Status: status, Transient: transient, Reason: "boom " + id, Data: data}
	if err := f.store.Save(context.Background(), rec); err != nil {
		t.Fatal(err)
	}
}

// drain receives every message currently on q and returns the events they hold.
func (f *fixture) drain(t *testing.T, q string, want int) []*nop.Event {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	var mu sync.Mutex
	var evs []*nop.Event
	go f.q.Run(ctx, q, 2, func(ctx context.Context, d localqueue.Delivery) error {
		got, _, err := nop.DecodeEnvelope(d.Body)
		if err != nil {
			t.Errorf("message %s does not decode: %v", d.MessageID, err)
			return nil
		}
		mu.Lock()
		evs = append(evs, got...)
		n := len(evs)
		mu.Unlock()
		if n >= want {
			cancel()
		}
		return nil
	})
	<-ctx.Done()
	mu.Lock()
	defer mu.Unlock()
	return evs
}

// deadLetterAll fails every delivery on q until want messages are dead-lettered (the
// fixture's max delivery count is 2).
func (f *fixture) deadLetterAll(t *testing.T, q string, want int64) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		f.q.Run(ctx, q, 2, func(context.Context, localqueue.Delivery) error { return errors.New("dataverse unreachable") })
	}()
	defer func() { cancel(); <-done }()
	deadline := time.Now().Add(5 * time.Second)
	for {
		if s, _ := f.q.Stats(ctx, q); s.DeadLettered == want {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: messages never dead-lettered", q)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestSyncScopes(t *testing.T) {
	f := newFixture(t, nil)
	for i := 1; i <= 30; i++ {
		st := state.Synced
		if i%3 == 0 {
			st = state.Failed
		}
		f.put(t, state.Customer, fmt.Sprint(i), st, false, customerEvent(i, 1))
	}
	f.put(t, state.Customer, "99", state.Failed, true, nil) // no data received: nothing to re-send
	f.put(t, state.Customer, "100", state.Pending, false, customerEvent(100, 1))
	run, err := f.ops.Sync(context.Background(), []state.Entity{state.Customer}, ScopeFailed, "manual")
	if err != nil {
		t.Fatal(err)
	}
	if run.Queued != 11 || run.Outcome != "succeeded" {
		t.Fatalf("failed scope: queued %d outcome %s, want 11 (10 failed, 1 pending) succeeded", run.Queued, run.Outcome)
	}
	evs := f.drain(t, queue.CustomersBulk, 11)
	if len(evs) != 11 {
		t.Fatalf("got %d events on the queue, want 11", len(evs))
	}
	for _, ev := range evs {
		var n int
		fmt.Sscan(ev.EntityID(), &n)
		if n%3 != 0 && n != 100 {
			t.Errorf("re-sent customer %s which had not failed", ev.EntityID())
		}
	}
	f.clk.Add(time.Second)
	run, err = f.ops.Sync(context.Background(), nil, ScopeAll, "manual")
	if err != nil {
		t.Fatal(err)
	}
	if run.Queued != 31 {
		t.Errorf("all scope: queued %d, want 31", run.Queued)
	}
	if got := f.drain(t, queue.CustomersBulk, 31); len(got) != 31 {
		t.Errorf("all scope: %d events on the queue, want 31", len(got))
	}
	runs, _ := f.ops.Runs(context.Background(), 10)
	if len(runs) != 2 || runs[0].ID != run.ID {
		t.Errorf("runs not recorded newest first: %+v", runs)
	}
}

func TestSyncChunksStayUnderServiceBusLimit(t *testing.T) {
	var sizes []int
	f := newFixture(t, func(o *Options) {
		o.Sender = senderFunc(func(_ context.Context, q string, msgs []queue.Message) error {
			for _, m := range msgs {
				sizes = append(sizes, len(m.Body))
			}
			return nil
		})
	})
	big := strings.Repeat("x", 3000)
	for i := 1; i <= 300; i++ {
		ev := customerEvent(i, 1)
		ev = []byte(strings.Replace(string(ev), `"firstName":"C"`, `"firstName":"`+big+`"`, 1))
		f.put(t, state.Customer, fmt.Sprint(i), state.Synced, false, ev)
	}
	run, err := f.ops.Sync(context.Background(), []state.Entity{state.Customer}, ScopeAll, "manual")
	if err != nil || run.Queued != 300 {
		t.Fatalf("queued %d err %v", run.Queued, err)
	}
	if len(sizes) < 4 {
		t.Errorf("300 events of 3 KB in %d messages: chunks not split", len(sizes))
	}
	for _, s := range sizes {
		if s > 256<<10 {
			t.Errorf("chunk of %d bytes exceeds 256 KiB", s)
		}
	}
}

type senderFunc func(context.Context, string, []queue.Message) error

func (s senderFunc) Send(ctx context.Context, q string, m []queue.Message) error { return s(ctx, q, m) }

func TestAutoSyncHonoursSettingsAndPeriod(t *testing.T) {
	f := newFixture(t, func(o *Options) { o.AutoSyncEnabled = false })
	if run, err := f.ops.AutoSync(context.Background()); run != nil || err != nil {
		t.Fatalf("disabled auto-sync ran: %+v %v", run, err)
	}

	f = newFixture(t, nil)
	f.put(t, state.Order, "7", state.Failed, true, []byte(`{"id":"o","type":"order.paid","data":{"id":7}}`))
	f.put(t, state.Order, "8", state.Failed, false, []byte(`{"id":"p","type":"order.paid","data":{"id":8}}`))
	run, err := f.ops.AutoSync(context.Background())
	if err != nil || run == nil {
		t.Fatalf("first auto-sync: %+v %v", run, err)
	}
	if run.Queued != 1 {
		t.Errorf("auto-sync re-drove %d entities, want only the transient failure (1)", run.Queued)
	}
	f.clk.Add(59 * time.Minute)
	if run, _ := f.ops.AutoSync(context.Background()); run != nil {
		t.Errorf("auto-sync ran again before its period")
	}
	f.clk.Add(time.Minute)
	if run, _ := f.ops.AutoSync(context.Background()); run == nil {
		t.Errorf("auto-sync did not run after its period")
	}
	st := f.ops.Status(context.Background())
	if st.AutoSync.LastRun == nil || st.AutoSync.LastRun.Trigger != "auto" || st.AutoSync.LastRun.FinishedAt == nil {
		t.Errorf("status lacks the last auto run: %+v", st.AutoSync)
	}
}

func TestAutoSyncRunsOnceAcrossInstances(t *testing.T) {
	f := newFixture(t, nil)
	var ran atomic.Int32
	var wg sync.WaitGroup
	for i := 0; i < 8; i++ {
		other := New(f.ops.o) // another instance sharing the state store
		wg.Add(1)
		go func() {
			defer wg.Done()
			if run, err := other.AutoSync(context.Background()); err == nil && run != nil {
				ran.Add(1)
			}
		}()
	}
	wg.Wait()
	if ran.Load() != 1 {
		t.Errorf("%d instances ran the same auto-sync period, want 1", ran.Load())
	}
}

func TestAutoSyncReplaysTransientDeadLetters(t *testing.T) {
	f := newFixture(t, nil)
	ctx := context.Background()
	ev := customerEvent(5, 1)
	if err := f.q.Send(ctx, queue.Customers, []queue.Message{{MessageID: "ev-5-1", SessionID: "customer-5", Body: []byte(`{"evt":` + string(ev) + `}`)}}); err != nil {
		t.Fatal(err)
	}
	f.deadLetterAll(t, queue.Customers, 1)

	rec := httptest.NewRecorder()
	mux := http.NewServeMux()
	f.ops.Routes(mux)
	mux.ServeHTTP(rec, httptest.NewRequest("GET", "/api/deadletters/customer", nil))
	var list struct {
		Count       int
		DeadLetters []DeadLetterView
	}
	json.Unmarshal(rec.Body.Bytes(), &list)
	if rec.Code != 200 || list.Count != 1 || list.DeadLetters[0].MessageID != "ev-5-1" || !list.DeadLetters[0].Transient || list.DeadLetters[0].Events != 1 {
		t.Fatalf("dead-letter list: %d %s", rec.Code, rec.Body)
	}

	run, err := f.ops.AutoSync(ctx)
	if err != nil || run == nil || run.Replayed != 1 {
		t.Fatalf("auto-sync replay: %+v %v", run, err)
	}
	evs := f.drain(t, queue.Customers, 1)
	if len(evs) != 1 || evs[0].ID != "ev-5-1" {
		t.Errorf("replayed message: %v", evs)
	}
	if s, _ := f.q.Stats(ctx, queue.Customers); s.DeadLettered != 0 {
		t.Errorf("dead-letter queue still holds %d", s.DeadLettered)
	}
}

func TestStatusPage(t *testing.T) {
	exp := time.Date(2026, 12, 19, 12, 0, 0, 0, time.UTC) // 20 days after the fixture's now
	f := newFixture(t, func(o *Options) {
		o.Secret = expiry{&exp}
		o.State = TrackFailures(o.State, o.Now)
		o.Stale = staleCounts{state.Customer: 4}
	})
	ctx := context.Background()
	tracked := f.ops.o.State
	for i := 1; i <= 3; i++ {
		tracked.Save(ctx, &state.Record{Entity: state.Product, ID: fmt.Sprint(i), Status: state.Synced})
	}
	tracked.Save(ctx, &state.Record{Entity: state.Order, ID: "1001", Status: state.Failed, Reason: "currency XYZ missing", Attempts: 3, Transient: true})
	tracked.Save(ctx, &state.Record{Entity: state.Customer, ID: "9", Status: state.Skipped, Reason: "guest"})

	mux := http.NewServeMux()
	f.ops.Routes(mux)
	rec := httptest.NewRecorder()
	mux.ServeHTTP(rec, httptest.NewRequest("GET", "/api/status", nil))
	if rec.Code != 200 || rec.Header().Get("Content-Type") != "application/json" {
		t.Fatalf("status: %d %s", rec.Code, rec.Header())
	}
	var page map[string]any
	if err := json.Unmarshal(rec.Body.Bytes(), &page); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"healthy", "dataverse", "secret", "entities", "queues", "autoSync", "recentFailures"} {
		if _, ok := page[k]; !ok {
			t.Errorf("status lacks %q", k)
		}
	}
	// docs/operations.md's shape: "error": null on a healthy connection.
	if dv, _ := page["dataverse"].(map[string]any); dv == nil || dv["reachable"] != true || dv["organizationId"] != "org" || dv["currency"] != "USD" {
		t.Errorf("dataverse: %v", page["dataverse"])
	} else if e, ok := dv["error"]; !ok || e != nil {
		t.Errorf("dataverse.error on a healthy connection: %#v, want null", e)
	}
	var st Status
	json.Unmarshal(rec.Body.Bytes(), &st)
	if !st.Healthy || st.Entities[state.Product].Synced != 3 || st.Entities[state.Order].Failed != 1 || st.Entities[state.Customer].Skipped != 1+4 || st.Entities[state.Customer].StaleEventsSkipped != 4 {
		t.Errorf("counts/health wrong: %+v", st)
	}
	if st.Secret.DaysLeft == nil || *st.Secret.DaysLeft != 20 || st.Secret.Warning == nil {
		t.Errorf("secret expiring in 20 days must warn: %+v", st.Secret)
	}
	if len(st.RecentFailures) != 1 || st.RecentFailures[0].ID != "1001" || st.RecentFailures[0].Attempts != 3 {
		t.Errorf("recent failures: %+v", st.RecentFailures)
	}
	// Once the order syncs, it leaves the recent failures.
	r, _ := tracked.Get(ctx, state.Order, "1001")
	r.Status = state.Synced
	tracked.Save(ctx, r)
	if st := f.ops.Status(ctx); len(st.RecentFailures) != 0 {
		t.Errorf("resolved failure still listed: %+v", st.RecentFailures)
	}

	rec = httptest.NewRecorder()
	mux.ServeHTTP(rec, httptest.NewRequest("GET", "/api/status/order/1001", nil))
	var es EntityStatus
	json.Unmarshal(rec.Body.Bytes(), &es)
	if rec.Code != 200 || es.ID != "1001" || es.Status != state.Synced {
		t.Errorf("entity status: %d %s", rec.Code, rec.Body)
	}
	// A synced entity's note (why the app wrote other than the store has it) shows, not as
	// an error.
	tracked.Save(ctx, &state.Record{Entity: state.Product, ID: "20", Status: state.Synced,
		Reason: "unpublished in nopCommerce, kept Active: Dynamics 365 can't re-activate a retired family"})
	rec = httptest.NewRecorder()
	mux.ServeHTTP(rec, httptest.NewRequest("GET", "/api/status/product/20", nil))
	es = EntityStatus{}
	json.Unmarshal(rec.Body.Bytes(), &es)
	if !strings.Contains(es.Note, "kept Active") || es.LastError != "" {
		t.Errorf("synced product with a note: %s", rec.Body)
	}
	// An entity whose last applied event is dated ahead of the clock says so: its events
	// dated earlier are skipped as stale until then. An hour ahead says so; a minute does not.
	for ahead, want := range map[time.Duration]bool{time.Hour: true, time.Minute: false} {
		id := strconv.Itoa(int(ahead / time.Second))
		if err := tracked.Save(ctx, &state.Record{Entity: state.Customer, ID: id, Status: state.Synced,
			OrderKey: nop.MakeOrderKey(nil, f.clk.Now().Add(ahead))}); err != nil {
			t.Fatal(err)
		}
		rec = httptest.NewRecorder()
		mux.ServeHTTP(rec, httptest.NewRequest("GET", "/api/status/customer/"+id, nil))
		es = EntityStatus{}
		json.Unmarshal(rec.Body.Bytes(), &es)
		if got := strings.Contains(es.Note, "ahead of the app's clock"); got != want || es.LastError != "" {
			t.Errorf("last applied event %v ahead: %s", ahead, rec.Body)
		}
	}
	rec = httptest.NewRecorder()
	mux.ServeHTTP(rec, httptest.NewRequest("GET", "/api/status/order/404", nil))
	if rec.Code != 404 {
		t.Errorf("unknown id: %d", rec.Code)
	}
	rec = httptest.NewRecorder()
	mux.ServeHTTP(rec, httptest.NewRequest("GET", "/api/status/invoice/1", nil))
	if rec.Code != 404 {
		t.Errorf("unknown entity: %d", rec.Code)
	}
}

func TestStatusRendersWhenBroken(t *testing.T) {
	f := newFixture(t, func(o *Options) {
		o.Probe = probe{Connection{Reachable: false, Error: "authentication failed: invalid client secret"}}
	})
	st := f.ops.Status(context.Background())
	if st.Healthy || st.Dataverse.Error == "" {
		t.Errorf("unreachable Dataverse must show unhealthy with the error: %+v", st.Dataverse)
	}
	// Every key of the page's dataverse object is there, null where unknown.
	b, _ := json.Marshal(st)
	var page struct {
		Dataverse map[string]any `json:"dataverse"`
	}
	json.Unmarshal(b, &page)
	for _, k := range []string{"organizationId", "userId", "currency"} {
		if v, ok := page.Dataverse[k]; !ok || v != nil {
			t.Errorf("dataverse.%s: %#v (present %v), want null", k, v, ok)
		}
	}
	if page.Dataverse["error"] != "authentication failed: invalid client secret" {
		t.Errorf("dataverse.error: %#v", page.Dataverse["error"])
	}
}

// failingQueues is a queue.Inspector that can't read its queues: failing at once, or
// hanging until its caller gives up.
type failingQueues struct{ hang bool }

func (q failingQueues) Stats(ctx context.Context, name string) (queue.Stats, error) {
	if q.hang {
		<-ctx.Done()
		return queue.Stats{}, fmt.Errorf("service bus: counting %s: %w", name, ctx.Err())
	}
	return queue.Stats{}, errors.New("service bus: 401 Unauthorized (Manage right missing)")
}

// The queues unreadable: events can't be queued either, so the page is not healthy and
// says why; queues that hang don't hold the page past the calls' deadline.
func TestStatusWhenTheQueuesFail(t *testing.T) {
	for _, hang := range []bool{false, true} {
		defer func(d time.Duration) { statusCallTimeout = d }(statusCallTimeout)
		statusCallTimeout = 200 * time.Millisecond
		f := newFixture(t, func(o *Options) { o.Inspector = failingQueues{hang: hang} })
		start := time.Now()
		st := f.ops.Status(context.Background())
		if took := time.Since(start); took > 5*time.Second {
			t.Errorf("hang=%v: the page took %s", hang, took)
		}
		if st.Healthy || st.Queues[state.Order].Error == "" || len(st.Errors) == 0 || !strings.Contains(strings.Join(st.Errors, "; "), "queues of order") {
			t.Errorf("hang=%v: healthy %v, queues %+v, errors %v", hang, st.Healthy, st.Queues, st.Errors)
		}
	}
}

// hangingDeadLetters is a Service Bus that does not answer: each call waits until its
// context ends.
type hangingDeadLetters struct{}

func (hangingDeadLetters) PeekDeadLetters(ctx context.Context, q string, max int) ([]queue.DeadLetter, error) {
	<-ctx.Done()
	return nil, ctx.Err()
}

func (hangingDeadLetters) Replay(ctx context.Context, q string, ids []string) ([]string, error) {
	<-ctx.Done()
	return nil, ctx.Err()
}

// An auto-sync run whose invocation ends while Service Bus hangs is recorded as failed,
// with its end and error (docs/operations.md: autosync "records the run (start, end,
// counts, outcome)"), not left "running" for good.
func TestAutoSyncCutShortIsRecorded(t *testing.T) {
	f := newFixture(t, func(o *Options) { o.DeadLetters = hangingDeadLetters{} })
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond) // the invocation's deadline
	_, err := f.ops.AutoSync(ctx)
	cancel()
	if err == nil {
		t.Fatal("auto-sync with Service Bus hanging: no error")
	}
	lr := f.ops.Status(context.Background()).AutoSync.LastRun
	if lr == nil {
		t.Fatal("no last run on the status page")
	}
	got, gerr := f.ops.GetRun(context.Background(), lr.ID)
	for _, r := range []*Run{lr, got} {
		if gerr != nil || r.Outcome != "failed" || r.FinishedAt == nil || r.Error == "" {
			t.Errorf("run %s: %v outcome %q finishedAt %v error %q, want failed with its end and error", lr.ID, gerr, r.Outcome, r.FinishedAt, r.Error)
		}
	}
}

func TestSyncEndpointValidation(t *testing.T) {
	f := newFixture(t, nil)
	mux := http.NewServeMux()
	f.ops.Routes(mux)
	for body, want := range map[string]int{
		``: 202,
		`{"entities":["customer"],"scope":"all"}`: 202,
		`{"entities":["invoice"]}`:                400,
		`{"scope":"some"}`:                        400,
		`{"entities":"customer"}`:                 400,
		`{"entity":["customer"]}`:                 400,
		`not json`:                                400,
		`{"scope":"all"} trailing`:                400,
		`{"scope":"all"}{"scope":"bogus"}`:        400,
		"{\"scope\":\"all\"}\n":                   202,
	} {
		rec := httptest.NewRecorder()
		mux.ServeHTTP(rec, httptest.NewRequest("POST", "/api/sync", strings.NewReader(body)))
		if rec.Code != want {
			t.Errorf("POST /api/sync %q: %d %s, want %d", body, rec.Code, rec.Body, want)
		}
		if want == 202 {
			var res map[string]any
			json.Unmarshal(rec.Body.Bytes(), &res)
			if res["runId"] == "" || res["queued"] == nil {
				t.Errorf("202 body lacks runId/queued: %s", rec.Body)
			}
		}
	}
	rec := httptest.NewRecorder()
	mux.ServeHTTP(rec, httptest.NewRequest("GET", "/api/sync", nil))
	if rec.Code != 405 {
		t.Errorf("GET /api/sync: %d", rec.Code)
	}

	// An entity named twice is re-driven once.
	f.put(t, state.Customer, "1", state.Failed, false, customerEvent(1, 1))
	rec = httptest.NewRecorder()
	mux.ServeHTTP(rec, httptest.NewRequest("POST", "/api/sync", strings.NewReader(`{"entities":["customer","customer"],"scope":"all"}`)))
	var res struct{ Queued int }
	if json.Unmarshal(rec.Body.Bytes(), &res); rec.Code != 202 || res.Queued != 1 {
		t.Errorf("customer named twice: %d %s, want 202 with 1 queued", rec.Code, rec.Body)
	}
}

func TestReplayEndpointKeepsIDs(t *testing.T) {
	f := newFixture(t, nil)
	ctx := context.Background()
	for i := 1; i <= 3; i++ {
		f.q.Send(ctx, queue.Products, []queue.Message{{MessageID: fmt.Sprintf("m%d", i), SessionID: fmt.Sprintf("product-%d", i), Body: []byte(`{"evt":{}}`)}})
	}
	f.deadLetterAll(t, queue.Products, 3)
	mux := http.NewServeMux()
	f.ops.Routes(mux)
	rec := httptest.NewRecorder()
	mux.ServeHTTP(rec, httptest.NewRequest("POST", "/api/deadletters/product/replay?ids=m2", nil))
	var res struct{ Replayed []string }
	json.Unmarshal(rec.Body.Bytes(), &res)
	if rec.Code != 200 || len(res.Replayed) != 1 || res.Replayed[0] != "m2" {
		t.Fatalf("replay ?ids=m2: %d %s", rec.Code, rec.Body)
	}
	if s, _ := f.q.Stats(ctx, queue.Products); s.DeadLettered != 2 || s.Active != 1 {
		t.Errorf("after replaying one: %+v", s)
	}
}

// BenchmarkStatus100k measures the status page over a state store of 100,000 entities
// (counts are kept, not recounted; recent failures come from a short list).
//
//	go test -run '^$' -bench Status100k -benchtime 20x ./shared/ops
func BenchmarkStatus100k(b *testing.B) {
	st, err := localstore.Open("")
	if err != nil {
		b.Fatal(err)
	}
	defer st.Close()
	tracked := TrackFailures(st, nil)
	ctx := context.Background()
	for i := 0; i < 100_000; i++ {
		status := state.Synced
		if i%100 == 0 {
			status = state.Failed
		}
		ent := state.Entities[i%3]
		if err := tracked.Save(ctx, &state.Record{Entity: ent, ID: fmt.Sprint(i), Status: status, Reason: "x", Data: customerEvent(i, 1)}); err != nil {
			b.Fatal(err)
		}
	}
	o := New(Options{State: tracked, Probe: probe{Connection{Reachable: true}}, AutoSyncEnabled: true})
	b.ResetTimer()
	var worst time.Duration
	for i := 0; i < b.N; i++ {
		start := time.Now()
		s := o.Status(ctx)
		if d := time.Since(start); d > worst {
			worst = d
		}
		if s.Entities[state.Customer].Synced+s.Entities[state.Customer].Failed != 33_334 {
			b.Fatalf("counts: %v", s.Entities)
		}
	}
	b.ReportMetric(float64(worst.Microseconds())/1000, "worst-ms")
}

// Auto-sync leaves alone what a writer holds: an entity pending or failed with an
// unexpired lease is being synced right now (an import's chunk in flight); once the lease
// has expired (its writer died), it is re-sent.
func TestAutoSyncSkipsEntitiesBeingSynced(t *testing.T) {
	f := newFixture(t, func(o *Options) { o.WritesEnabled = true })
	now := f.clk.Now()
	for id, until := range map[int]time.Time{1: now.Add(time.Minute), 2: now.Add(-time.Second), 3: {}} {
		rec := &state.Record{Entity: state.Customer, ID: strconv.Itoa(id), Status: state.Pending, Data: customerEvent(id, 1)}
		if !until.IsZero() {
			rec.LeaseOwner, rec.LeaseUntil = "other-instance/1", until
		}
		if err := f.store.Save(context.Background(), rec); err != nil {
			t.Fatal(err)
		}
	}
	run, err := f.ops.AutoSync(context.Background())
	if err != nil || run == nil {
		t.Fatalf("%+v %v", run, err)
	}
	if run.Queued != 2 {
		t.Fatalf("auto-sync re-sent %d entities, want 2 (not the one with a live lease)", run.Queued)
	}
	var ids []string
	for _, ev := range f.drain(t, queue.CustomersBulk, 2) {
		ids = append(ids, ev.EntityID())
	}
	sort.Strings(ids)
	if fmt.Sprint(ids) != "[2 3]" {
		t.Fatalf("re-sent %v, want [2 3]", ids)
	}
}

// TestAutoSyncResendsPendingOnlyWithWritesOn: events recorded as pending while writes
// were off are re-sent by auto-sync once writes are on, and not before.
func TestAutoSyncResendsPendingOnlyWithWritesOn(t *testing.T) {
	for _, writes := range []bool{false, true} {
		f := newFixture(t, func(o *Options) { o.WritesEnabled = writes })
		f.put(t, state.Customer, "1", state.Pending, false, customerEvent(1, 1))
		run, err := f.ops.AutoSync(context.Background())
		if err != nil || run == nil {
			t.Fatalf("writes %v: %+v %v", writes, run, err)
		}
		want := 0
		if writes {
			want = 1
		}
		if run.Queued != want {
			t.Errorf("writes %v: auto-sync re-sent %d pending entities, want %d", writes, run.Queued, want)
		}
	}
}

// TestFailingMessageReplayedBoundedTimes: a message that fails on every delivery, in
// the host's way (the invocation fails, the queue keeps nothing of why and
// dead-letters it as MaxDeliveryCountExceeded), is replayed by auto-sync at most
// ReplaysPerMessage times; then it stays listed with the reason the app recorded.
func TestFailingMessageReplayedBoundedTimes(t *testing.T) {
	f := newFixture(t, func(o *Options) { o.ReplaysPerMessage = 3 })
	ctx := context.Background()
	h, err := delivery.New(delivery.Options{State: f.store, Now: f.clk.Now, Apply: func(context.Context, string, []byte) error {
		return errors.New("currency EUR is not in Dataverse")
	}})
	if err != nil {
		t.Fatal(err)
	}
	rctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		f.q.Run(rctx, queue.Customers, 2, func(ctx context.Context, d localqueue.Delivery) error {
			return h.Handle(ctx, delivery.Message{Queue: queue.Customers, MessageID: d.MessageID, SessionID: d.SessionID,
				Body: d.Body, DeliveryCount: d.DeliveryCount, ApplicationProperties: d.ApplicationProperties})
		})
	}()
	defer func() { cancel(); <-done }()
	if err := f.q.Send(ctx, queue.Customers, []queue.Message{{MessageID: "ev-9-1", SessionID: "customer-9", Body: []byte(`{"evt":` + string(customerEvent(9, 1)) + `}`)}}); err != nil {
		t.Fatal(err)
	}
	deadLettered := func() {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for {
			if s, _ := f.q.Stats(ctx, queue.Customers); s.DeadLettered == 1 && s.Active == 0 {
				return
			}
			if time.Now().After(deadline) {
				t.Fatal("the message was not dead-lettered")
			}
			time.Sleep(2 * time.Millisecond)
		}
	}
	replays := 0
	for round := 1; round <= 6; round++ {
		deadLettered()
		f.clk.Add(time.Hour)
		run, err := f.ops.AutoSync(ctx)
		if err != nil || run == nil {
			t.Fatalf("round %d: auto-sync %+v %v", round, run, err)
		}
		if run.Replayed == 0 {
			break
		}
		replays += run.Replayed
	}
	if replays != 3 {
		t.Fatalf("auto-sync replayed the message %d times, want 3 then no more", replays)
	}
	rec := httptest.NewRecorder()
	mux := http.NewServeMux()
	f.ops.Routes(mux)
	mux.ServeHTTP(rec, httptest.NewRequest("GET", "/api/deadletters/customer", nil))
	var list struct {
		Count       int
		DeadLetters []DeadLetterView
	}
	json.Unmarshal(rec.Body.Bytes(), &list)
	if rec.Code != 200 || list.Count != 1 {
		t.Fatalf("dead-letter list: %d %s", rec.Code, rec.Body)
	}
	d := list.DeadLetters[0]
	if d.MessageID != "ev-9-1" || !strings.Contains(d.Reason, "currency EUR") || d.Replays != 3 || d.AutoReplay ||
		d.BrokerReason != "MaxDeliveryCountExceeded" || d.Description != "Message could not be consumed after 2 delivery attempts." {
		t.Errorf("dead letter %+v, want the app's reason, 3 replays, no further auto replay, the broker's own reason and text", d)
	}
}

// hangingStore never answers a read before its context ends, as a state store that
// can't be reached while its SDK retries.
type hangingStore struct{ state.Store }

func (hangingStore) Counts(ctx context.Context) (state.Counts, error) {
	<-ctx.Done()
	return nil, ctx.Err()
}
func (hangingStore) GetDoc(ctx context.Context, kind, key string) (*state.Doc, error) {
	<-ctx.Done()
	return nil, ctx.Err()
}
func (hangingStore) ListDocs(ctx context.Context, kind string) ([]*state.Doc, error) {
	<-ctx.Done()
	return nil, ctx.Err()
}

// The status page renders while the state store does not answer: its reads are
// bounded, and what could not be read is listed.
func TestStatusPageWhileTheStoreHangs(t *testing.T) {
	f := newFixture(t, func(o *Options) { o.State = hangingStore{o.State}; o.InvalidMessageKind = "invalid-message" })
	done := make(chan *Status, 1)
	go func() { done <- f.ops.Status(context.Background()) }()
	select {
	case st := <-done:
		if st.Healthy || len(st.Errors) == 0 {
			t.Errorf("status %+v: want unhealthy with the store's errors", st)
		}
	case <-time.After(StatusStoreBudget + 50*time.Second): // a hang guard only
		t.Fatal("the status page waits for the state store without bound")
	}
}

type webhookSecretsFunc func(context.Context) ([]string, error)

func (f webhookSecretsFunc) WebhookSecrets(ctx context.Context) ([]string, error) { return f(ctx) }

// Every event is refused while the webhook secret can't be read (Key Vault) or none is
// set: the page says so and is not healthy. The secret itself never shows.
func TestStatusNamesAMissingWebhookSecret(t *testing.T) {
	const secret = "whsec-not-real-0123456789"
	for name, c := range map[string]struct {
		src     webhookSecretsFunc
		healthy bool
		says    string
	}{
		"set":   {func(context.Context) ([]string, error) { return []string{secret}, nil }, true, ""},
		"empty": {func(context.Context) ([]string, error) { return nil, nil }, false, "none is set"},
		"unreadable": {func(context.Context) ([]string, error) {
			return nil, errors.New(`webhook secret "webhook-secret" from Key Vault: 404 SecretNotFound`)
		}, false, "SecretNotFound"},
	} {
		f := newFixture(t, func(o *Options) { o.WebhookSecrets = c.src })
		st := f.ops.Status(context.Background())
		all := strings.Join(st.Errors, "; ")
		if st.Healthy != c.healthy || (c.says != "" && (!strings.Contains(all, "webhook secret") || !strings.Contains(all, c.says))) {
			t.Errorf("%s: healthy %v, errors %q", name, st.Healthy, all)
		}
		if b, _ := json.Marshal(st); strings.Contains(string(b), secret) {
			t.Errorf("%s: the secret is on the page", name)
		}
	}
}

// ctxStore fails a read whose context has ended, as the Table Storage SDK does.
type ctxStore struct{ state.Store }

func (s ctxStore) ListDocs(ctx context.Context, kind string) ([]*state.Doc, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	return s.Store.ListDocs(ctx, kind)
}

func (s ctxStore) Counts(ctx context.Context) (state.Counts, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	return s.Store.Counts(ctx)
}

// A Service Bus that hangs for its whole deadline neither takes the state store's budget
// (whose reads would then fail as if the store were down, and the page would list no
// runs and no failures) nor adds its deadline to the page's time.
func TestStatusQueuesHangingDoNotBlameTheStateStore(t *testing.T) {
	defer func(d time.Duration) { statusCallTimeout = d }(statusCallTimeout)
	statusCallTimeout = StatusStoreBudget
	f := newFixture(t, func(o *Options) {
		o.Inspector = failingQueues{hang: true}
		o.State = TrackFailures(ctxStore{o.State}, o.Now)
	})
	ctx := context.Background()
	if err := f.ops.o.State.Save(ctx, &state.Record{Entity: state.Order, ID: "1001", Status: state.Failed, Reason: "currency XYZ missing"}); err != nil {
		t.Fatal(err)
	}
	if _, err := f.ops.sync(ctx, nil, ScopeFailed, "manual", ""); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	st := f.ops.Status(context.Background())
	took := time.Since(start)
	errs := strings.Join(st.Errors, "; ")
	if strings.Contains(errs, "runs:") || strings.Contains(errs, "recent failures:") || strings.Contains(errs, "sync state:") {
		t.Errorf("the state store is blamed for the queues' hang: %s", errs)
	}
	if !strings.Contains(errs, "queues of order") || len(st.RecentFailures) != 1 || len(st.RecentRuns) != 1 {
		t.Errorf("errors %s; recent failures %+v; runs %+v", errs, st.RecentFailures, st.RecentRuns)
	}
	if took > StatusStoreBudget+5*time.Second {
		t.Errorf("the page took %s, more than one budget", took)
	}
}

// docs/operations.md's shape: a run under way has "finishedAt": null, not no key.
func TestRunUnderWayHasFinishedAtNull(t *testing.T) {
	b, err := json.Marshal(Run{ID: "r1", Outcome: "running", StartedAt: time.Date(2026, 12, 5, 1, 0, 0, 0, time.UTC)})
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	json.Unmarshal(b, &m)
	if v, ok := m["finishedAt"]; !ok || v != nil {
		t.Errorf("run under way: %s, want \"finishedAt\": null", b)
	}
}

// listCountingStore counts ListDocs calls per kind.
type listCountingStore struct {
	state.Store
	mu    sync.Mutex
	lists map[string]int
}

func (s *listCountingStore) ListDocs(ctx context.Context, kind string) ([]*state.Doc, error) {
	s.mu.Lock()
	s.lists[kind]++
	s.mu.Unlock()
	return s.Store.ListDocs(ctx, kind)
}

// The status page reads the newest runs through the run index, not every run ever made
// (one per auto-sync period, never deleted): with many runs it still lists the newest
// five, the last auto-sync run and the last store run, without listing the runs. A state
// table from before the index is read by listing, as before.
func TestStatusReadsRecentRunsOnly(t *testing.T) {
	counting := &listCountingStore{lists: map[string]int{}}
	f := newFixture(t, func(o *Options) { counting.Store = o.State; o.State = counting })
	ctx := context.Background()
	// An old table's run, written without the index.
	old := Run{ID: newRunID(f.clk.Now().Add(-time.Hour)), Trigger: "auto", Source: SourceStore, Outcome: "succeeded"}
	b, _ := json.Marshal(old)
	if err := f.store.SaveDoc(ctx, &state.Doc{Kind: docRuns, Key: old.ID, Value: b}); err != nil {
		t.Fatal(err)
	}
	st := f.ops.Status(ctx)
	if counting.lists[docRuns] != 1 || len(st.RecentRuns) != 1 || st.AutoSync.LastRun == nil || st.AutoSync.LastRun.ID != old.ID || st.Store.LastRun == nil || st.Store.LastRun.ID != old.ID {
		t.Fatalf("a table without the index: %d lists, runs %+v, last auto %+v", counting.lists[docRuns], st.RecentRuns, st.AutoSync.LastRun)
	}
	var ids []string
	for range 30 {
		f.clk.Add(time.Second)
		run, err := f.ops.Sync(ctx, nil, ScopeFailed, "manual")
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, run.ID)
	}
	counting.lists[docRuns] = 0
	st = f.ops.Status(ctx)
	if counting.lists[docRuns] != 0 {
		t.Errorf("the status page listed every run (%d lists)", counting.lists[docRuns])
	}
	if len(st.RecentRuns) != 5 || st.RecentRuns[0].ID != ids[29] || st.RecentRuns[4].ID != ids[25] {
		t.Errorf("recent runs %+v, want the newest five", st.RecentRuns)
	}
	// The old run is not in the index: the last auto-sync run is the next one made.
	f.clk.Add(time.Hour + time.Second)
	auto, err := f.ops.AutoSync(ctx)
	if err != nil || auto == nil {
		t.Fatalf("auto-sync: %+v %v", auto, err)
	}
	for range 25 {
		f.clk.Add(time.Second)
		if _, err := f.ops.Sync(ctx, nil, ScopeFailed, "manual"); err != nil {
			t.Fatal(err)
		}
	}
	st = f.ops.Status(ctx)
	if st.AutoSync.LastRun == nil || st.AutoSync.LastRun.ID != auto.ID || len(st.RecentRuns) != 5 || st.RecentRuns[0].Trigger != "manual" {
		t.Errorf("after 25 newer manual runs: last auto %+v, recent %+v", st.AutoSync.LastRun, st.RecentRuns)
	}
}

// gatedSender holds every Send until open is closed.
type gatedSender struct {
	queue.Sender
	open chan struct{}
}

func (g gatedSender) Send(ctx context.Context, q string, msgs []queue.Message) error {
	select {
	case <-g.open:
	case <-ctx.Done():
		return ctx.Err()
	}
	return g.Sender.Send(ctx, q, msgs)
}

// A re-drive that outlasts syncAnswerWait is answered 202 with its run id and where its
// progress shows, and goes on: the front end cuts an HTTP request at 230 s, and a "scope":
// "all" re-drive of a large state takes longer.
func TestSyncAnsweredBeforeALongRedriveEnds(t *testing.T) {
	defer func(d time.Duration) { syncAnswerWait = d }(syncAnswerWait)
	syncAnswerWait = 50 * time.Millisecond
	gate := make(chan struct{})
	f := newFixture(t, func(o *Options) { o.Sender = gatedSender{Sender: o.Sender, open: gate} })
	f.put(t, state.Customer, "7", state.Failed, true, customerEvent(7, 1))
	mux := http.NewServeMux()
	f.ops.Routes(mux)
	rec := httptest.NewRecorder()
	mux.ServeHTTP(rec, httptest.NewRequest("POST", "/api/sync", strings.NewReader(`{"scope":"all"}`)))
	var res struct {
		RunID    string `json:"runId"`
		Progress string `json:"progress"`
		Running  bool   `json:"running"`
	}
	json.Unmarshal(rec.Body.Bytes(), &res)
	if rec.Code != 202 || res.RunID == "" || !res.Running || res.Progress != "/api/sync/"+res.RunID {
		t.Fatalf("POST /api/sync while the re-drive waits: %d %s", rec.Code, rec.Body)
	}
	if run, err := f.ops.GetRun(context.Background(), res.RunID); err != nil || run.Outcome != "running" {
		t.Fatalf("run under way: %+v %v", run, err)
	}
	close(gate)
	deadline := time.Now().Add(5 * time.Second)
	for {
		run, err := f.ops.GetRun(context.Background(), res.RunID)
		if err == nil && run.Outcome == "succeeded" && run.Queued == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the re-drive did not finish after the answer: %+v %v", run, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
	f.drain(t, "customers-bulk", 1)
}

// The recent failures list keeps the latest 50 failures, resolved or not: an old failure
// still open that fell off it (an order failed for good, then 50 customers failed and
// synced) is still named on the page, from the failed records.
func TestOldOpenFailureStillListed(t *testing.T) {
	f := newFixture(t, nil)
	st := TrackFailures(f.store, time.Now)
	ctx := context.Background()
	if err := st.Save(ctx, &state.Record{Entity: state.Order, ID: "1001", Status: state.Failed, Reason: "order 1001: product 7 was deleted in Dynamics 365", Attempts: 1}); err != nil {
		t.Fatal(err)
	}
	for i := range 50 {
		c := &state.Record{Entity: state.Customer, ID: fmt.Sprint(i + 1), Status: state.Failed, Reason: "Dataverse unavailable (503)", Transient: true, Attempts: 1}
		if err := st.Save(ctx, c); err != nil {
			t.Fatal(err)
		}
		c.Status, c.Reason, c.Transient, c.Attempts = state.Synced, "", false, 0
		if err := st.Save(ctx, c); err != nil {
			t.Fatal(err)
		}
	}
	page := f.ops.Status(ctx)
	if len(page.RecentFailures) != 1 || page.RecentFailures[0].ID != "1001" || !strings.Contains(page.RecentFailures[0].Error, "product 7") {
		t.Errorf("recent failures %+v, want order 1001 with its reason", page.RecentFailures)
	}
}

// Twenty entities failing at the same moment (twenty sessions or instances) are all named
// on the page, though they contend for the one recent failures list (ten times over).
func TestConcurrentFailuresAllListed(t *testing.T) {
	for round := range 10 {
		f := newFixture(t, nil)
		st := TrackFailures(f.store, time.Now)
		ctx := context.Background()
		var wg sync.WaitGroup
		start := make(chan struct{})
		for i := range 20 {
			wg.Go(func() {
				<-start
				id := fmt.Sprint(1000 + i)
				if err := st.Save(ctx, &state.Record{Entity: state.Order, ID: id, Status: state.Failed, Reason: "order " + id + " refused", Attempts: 1}); err != nil {
					t.Error(err)
				}
			})
		}
		close(start)
		wg.Wait()
		listed := map[string]bool{}
		for _, fl := range f.ops.Status(ctx).RecentFailures {
			listed[fl.ID] = true
		}
		if len(listed) != 20 {
			t.Errorf("round %d: %d of 20 concurrent failures listed", round, len(listed))
		}
	}
}
