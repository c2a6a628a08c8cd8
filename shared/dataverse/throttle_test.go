package dataverse

import (
	"context"
	"errors"
	"net/http"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// A 429 holds back every request of the client, not only the one that got
// it, until Retry-After has passed.
func TestRetryAfterHoldsAllRequests(t *testing.T) {
	for _, h2 := range []bool{false, true} {
		t.Run(map[bool]string{false: "HTTP/1.1", true: "HTTP/2"}[h2], func(t *testing.T) { testRetryAfterHoldsAllRequests(t, h2) })
	}
}

func testRetryAfterHoldsAllRequests(t *testing.T, h2 bool) {
	var mu sync.Mutex
	var throttledAt time.Time
	var arrivals []time.Time
	var n atomic.Int64
	var protoSeen atomic.Int64
	f := newFakeEnvProto(t, func(w http.ResponseWriter, r *http.Request) {
		protoSeen.Store(int64(r.ProtoMajor))
		if n.Add(1) == 1 {
			mu.Lock()
			throttledAt = time.Now()
			mu.Unlock()
			w.Header().Set("Retry-After", "1")
			dvError(w, 429, "0x80072322", "Number of requests exceeded the limit of 6000 over time window of 300 seconds.")
			return
		}
		mu.Lock()
		arrivals = append(arrivals, time.Now())
		mu.Unlock()
		writeJSON(w, 200, map[string]any{"UserId": "u"})
	}, h2)
	c, logs := f.newClient(t, nil)
	held := make(chan struct{})
	var once sync.Once
	c.throttle.onHold = func() { once.Do(func() { close(held) }) }

	ctx := context.Background()
	var wg sync.WaitGroup
	errs := make(chan error, 21)
	wg.Add(1)
	go func() { defer wg.Done(); _, err := c.WhoAmI(ctx); errs <- err }()
	<-held
	for range 20 {
		wg.Add(1)
		go func() { defer wg.Done(); _, err := c.WhoAmI(ctx); errs <- err }()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	mu.Lock()
	defer mu.Unlock()
	if len(arrivals) != 21 {
		t.Fatalf("arrivals = %d", len(arrivals))
	}
	for i, a := range arrivals {
		if early := throttledAt.Add(time.Second).Sub(a); early > 0 {
			t.Errorf("request %d arrived %s before Retry-After expired", i, early)
		}
	}
	if want := map[bool]int64{false: 1, true: 2}[h2]; protoSeen.Load() != want {
		t.Fatalf("protocol HTTP/%d, want %d", protoSeen.Load(), want)
	}
	if !strings.Contains(logs.all(), "429") {
		t.Errorf("429 not logged: %s", logs.all())
	}
}

func TestThrottledPastDeadlineFailsFast(t *testing.T) {
	var calls atomic.Int64
	f := newFakeEnv(t, func(w http.ResponseWriter, r *http.Request) {
		calls.Add(1)
		w.Header().Set("Retry-After", "30")
		dvError(w, 429, "0x80072321", "Combined execution time of incoming requests exceeded limit")
	})
	c, _ := f.newClient(t, nil)
	// Retry-After (30 s) ends after the deadline (10 s): the 429 comes back
	// at once instead of waiting out the deadline
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err := c.WhoAmI(ctx)
	var de *Error
	if !IsThrottled(err) || !IsRetryable(err) || !errors.As(err, &de) || de.RetryAfter != 30*time.Second || de.Code != "0x80072321" {
		t.Fatalf("err = %#v", err)
	}
	if ctx.Err() != nil {
		t.Fatal("waited for the deadline")
	}
	// other requests of the client are held too, and fail at once as well
	_, err = c.WhoAmI(ctx)
	if !IsThrottled(err) || !errors.As(err, &de) || de.RetryAfter <= 0 || de.Op != "GET WhoAmI" || ctx.Err() != nil {
		t.Fatalf("second call: %#v", err)
	}
	if n := calls.Load(); n != 1 {
		t.Fatalf("server saw %d requests during Retry-After", n)
	}
	// without a deadline, a Retry-After above MaxRetryDelay also comes back at once
	c2, _ := f.newClient(t, func(o *Options) { o.MaxRetryDelay = time.Second })
	_, err = c2.WhoAmI(context.Background())
	if !errors.As(err, &de) || de.StatusCode != 429 || de.RetryAfter != 30*time.Second || !de.Retryable {
		t.Fatalf("err = %#v", err)
	}
	// a short deadline while waiting for a short Retry-After: the context error, classified as throttling
	f2 := newFakeEnv(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Retry-After", "1")
		dvError(w, 429, "0x80072322", "Number of requests exceeded the limit")
	})
	c3, _ := f2.newClient(t, nil)
	ctx3, cancel3 := context.WithCancel(context.Background())
	time.AfterFunc(100*time.Millisecond, cancel3)
	_, err = c3.WhoAmI(ctx3)
	if !IsThrottled(err) || IsRetryable(err) || !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled while throttled: %#v", err)
	}
}

func TestConcurrencyBoundAndDopHint(t *testing.T) {
	var inFlight, peak atomic.Int64
	var hint atomic.Value
	hint.Store("")
	f := newFakeEnv(t, func(w http.ResponseWriter, r *http.Request) {
		n := inFlight.Add(1)
		for {
			p := peak.Load()
			if n <= p || peak.CompareAndSwap(p, n) {
				break
			}
		}
		time.Sleep(15 * time.Millisecond)
		inFlight.Add(-1)
		if h := hint.Load().(string); h != "" {
			w.Header().Set("x-ms-dop-hint", h)
		}
		writeJSON(w, 200, map[string]any{"UserId": "u"})
	})
	c, _ := f.newClient(t, nil)
	run := func(n int) {
		var wg sync.WaitGroup
		for range n {
			wg.Add(1)
			go func() {
				defer wg.Done()
				if _, err := c.WhoAmI(context.Background()); err != nil {
					t.Error(err)
				}
			}()
		}
		wg.Wait()
	}
	run(120)
	if p := peak.Load(); p > MaxConcurrentRequests {
		t.Fatalf("peak in flight = %d, limit %d", p, MaxConcurrentRequests)
	}
	hint.Store("3")
	run(1) // learn the hint
	if c.Concurrency() != 3 {
		t.Fatalf("concurrency after hint = %d", c.Concurrency())
	}
	peak.Store(0)
	run(30)
	if p := peak.Load(); p > 3 {
		t.Fatalf("peak in flight after x-ms-dop-hint 3 = %d", p)
	}
	hint.Store("500") // grows back one step per answer, never above 52
	run(80)
	if n := c.Concurrency(); n <= 3 || n > MaxConcurrentRequests {
		t.Fatalf("concurrency after hint 500 = %d", n)
	}
}

func TestThrottledAnswersHalveConcurrency(t *testing.T) {
	th := newThrottle(52)
	for range 30 {
		th.adapt(false, 20)
	}
	if n := th.sem.Limit(); n != 20 {
		t.Fatalf("after 30 answers with hint 20: %d", n)
	}
	th.adapt(true, 0)
	th.adapt(true, 0)
	if n := th.sem.Limit(); n != 5 {
		t.Fatalf("after two 429s: %d", n)
	}
	for range 10 {
		th.adapt(true, 0)
	}
	if n := th.sem.Limit(); n != 1 {
		t.Fatalf("floor: %d", n)
	}
	th.adapt(false, 0)
	if n := th.sem.Limit(); n != 2 {
		t.Fatalf("additive increase: %d", n)
	}
}

func TestServerErrorsAndDroppedConnectionsAreRetried(t *testing.T) {
	var n atomic.Int64
	var failAll atomic.Bool
	f := newFakeEnv(t, func(w http.ResponseWriter, r *http.Request) {
		if failAll.Load() {
			n.Add(1)
			dvError(w, 500, "0x80040216", "An unexpected error occurred.")
			return
		}
		switch n.Add(1) {
		case 1:
			dvError(w, 503, "", "Service Unavailable")
		case 2:
			conn, _, err := w.(http.Hijacker).Hijack()
			if err == nil {
				conn.Close()
			}
		case 3:
			dvError(w, 502, "", "Bad Gateway")
		default:
			writeJSON(w, 200, map[string]any{"UserId": "u"})
		}
	})
	c, _ := f.newClient(t, nil)
	if _, err := c.WhoAmI(context.Background()); err != nil {
		t.Fatal(err)
	}
	if n.Load() != 4 {
		t.Fatalf("attempts = %d", n.Load())
	}
	// retries are bounded; the last error says a retry can help
	n.Store(0)
	failAll.Store(true)
	c2, _ := f.newClient(t, func(o *Options) { o.MaxRetries = 2 })
	_, err := c2.WhoAmI(context.Background())
	var de *Error
	if !IsRetryable(err) || !errors.As(err, &de) || de.StatusCode != 500 || n.Load() != 3 {
		t.Fatalf("err = %v after %d attempts", err, n.Load())
	}
}

func TestSemaphoreCancelAndResize(t *testing.T) {
	s := newSemaphore(1)
	ctx := context.Background()
	if err := s.Acquire(ctx); err != nil {
		t.Fatal(err)
	}
	cctx, cancel := context.WithCancel(ctx)
	done := make(chan error)
	go func() { done <- s.Acquire(cctx) }()
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled acquire = %v", err)
	}
	got := make(chan struct{})
	go func() { _ = s.Acquire(ctx); close(got) }()
	s.SetLimit(2) // growing the limit admits the waiter
	<-got
	s.Release()
	s.Release()
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.used != 0 || len(s.waiters[Live])+len(s.waiters[Bulk]) != 0 {
		t.Fatalf("used %d waiters %d", s.used, len(s.waiters[Live])+len(s.waiters[Bulk]))
	}
}

// waiting reports how many requests of each priority wait for a slot.
func waiting(s *semaphore) (live, bulk int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.waiters[Live]), len(s.waiters[Bulk])
}

// A live request that waits for a slot gets the next one, ahead of bulk requests that
// were waiting before it; the bulk ones then go in their order.
func TestLiveRequestTakesNextSlot(t *testing.T) {
	release := make(chan struct{})
	var mu sync.Mutex
	var order []string
	f := newFakeEnv(t, func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		order = append(order, r.URL.Query().Get("who"))
		first := len(order) == 1
		mu.Unlock()
		if first {
			<-release // hold the only slot while the others queue for it
		}
		w.Header().Set("x-ms-dop-hint", "1")
		writeJSON(w, 200, map[string]any{"value": []any{}})
	})
	c, _ := f.newClient(t, nil)
	if c.Concurrency() != 1 {
		t.Fatalf("concurrency %d, want 1 at start", c.Concurrency())
	}
	bulk := WithPriority(context.Background(), Bulk)
	get := func(ctx context.Context, who string) error {
		return c.Invoke(ctx, http.MethodGet, "contacts?who="+who, nil, nil)
	}
	var wg sync.WaitGroup
	errs := make(chan error, 5)
	start := func(ctx context.Context, who string, wantLive, wantBulk int) {
		wg.Add(1)
		go func() { defer wg.Done(); errs <- get(ctx, who) }()
		for { // until it queues (the first takes the slot and waits at the server)
			l, b := waiting(c.throttle.sem)
			mu.Lock()
			n := len(order)
			mu.Unlock()
			if l == wantLive && b == wantBulk && (who != "bulk0" || n == 1) {
				return
			}
			runtime.Gosched()
		}
	}
	start(bulk, "bulk0", 0, 0)
	start(bulk, "bulk1", 0, 1)
	start(bulk, "bulk2", 0, 2)
	start(context.Background(), "live", 1, 2)
	close(release)
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	if got := strings.Join(order, ","); got != "bulk0,live,bulk1,bulk2" {
		t.Fatalf("server saw %s, want the live request right after the one in flight", got)
	}
}

// Bulk work takes a free slot only when no live request waits; a live request never
// waits behind queued bulk ones.
func TestSemaphoreBulkYieldsToLive(t *testing.T) {
	s := newSemaphore(2)
	live, bulk := context.Background(), WithPriority(context.Background(), Bulk)
	if PriorityOf(live) != Live || PriorityOf(bulk) != Bulk {
		t.Fatal("priority not carried by the context")
	}
	_ = s.Acquire(bulk)
	_ = s.Acquire(bulk) // both slots held by bulk work
	got := make(chan string, 3)
	go func() { _ = s.Acquire(bulk); got <- "bulk" }()
	for _, b := waiting(s); b != 1; _, b = waiting(s) {
		runtime.Gosched()
	}
	go func() { _ = s.Acquire(live); got <- "live" }()
	for l, _ := waiting(s); l != 1; l, _ = waiting(s) {
		runtime.Gosched()
	}
	s.Release()
	if first := <-got; first != "live" {
		t.Fatalf("first slot went to %s, want live", first)
	}
	s.Release()
	if second := <-got; second != "bulk" {
		t.Fatalf("second slot went to %s", second)
	}
}

// With bulk work spending the pacer's share of a span, the next bulk request waits and a
// live one still goes: it may spend the margin, at its own (smaller) estimate.
func TestBudgetLetsLiveThroughWhenBulkIsAtItsShare(t *testing.T) {
	b := newBudget(Limits{Window: 100 * time.Second, Requests: 100000, Execution: 100 * time.Second, Share: 0.9})
	// a span is 10 s with 9 s for bulk; 7 answered bulk requests of 1.2 s each fill it
	for range 7 {
		r, d, _ := b.try(Bulk, requestKind{}, 0)
		if r == nil {
			t.Fatalf("bulk request held after %v", d)
		}
		r.start = time.Now().Add(-1200 * time.Millisecond)
		b.done(r, nil)
	}
	if r, d, _ := b.try(Bulk, requestKind{}, 0); r != nil || d <= 0 {
		t.Fatalf("a bulk request beyond the share went (wait %v)", d)
	}
	r, d, _ := b.try(Live, requestKind{}, 0)
	if r == nil {
		t.Fatalf("the live request was held %v behind bulk work", d)
	}
	r.start = time.Now().Add(-10 * time.Millisecond)
	b.done(r, nil)
	if b.estimate(Live) >= b.estimate(Bulk) {
		t.Fatalf("live estimate %v not apart from bulk %v", b.estimate(Live), b.estimate(Bulk))
	}
}

// A request is charged at the moment it was sent: the span has room again a span after
// that, not a span after its answer, as a server that counts requests as they arrive
// (and their execution as it ends, a latency later for both) sees it; one far longer
// than estimated, its estimate before its answer. Answers that come in another
// order than their requests went keep the charges in time order.
func TestBudgetChargesWhenSent(t *testing.T) {
	b := newBudget(Limits{Window: 20 * time.Second, Requests: 100000, Execution: 10 * time.Second, Share: 0.9})
	// a span is 2 s with 0.9 s to spend; a request of 0.8 s fills it
	r, d, _ := b.try(Bulk, requestKind{}, 0)
	if r == nil {
		t.Fatalf("first request held %v", d)
	}
	r.start = time.Now().Add(-800 * time.Millisecond)
	b.done(r, nil)
	r, d, _ = b.try(Bulk, requestKind{}, 0)
	if r != nil {
		t.Fatal("a request beyond the span's budget went")
	}
	// room again 2 s after it was sent: 1.2 s from now (charged at the answer: 2 s)
	if d < 1100*time.Millisecond || d > 1300*time.Millisecond {
		t.Fatalf("wait %v, want about 1.2 s", d)
	}

	// A request far longer than it was estimated to take (0.8 s: its class's latency, its
	// kind unknown) is charged that estimate before its answer, not when it was sent:
	// 2.5 s, not 3.3 s, ago.
	b = newBudget(Limits{Window: 20 * time.Second, Requests: 100000, Execution: 100 * time.Second})
	r, _, _ = b.try(Bulk, requestKind{}, 0)
	r.start = time.Now().Add(-800 * time.Millisecond)
	b.done(r, nil)
	r, _, _ = b.try(Bulk, requestKind{}, 0)
	sent := time.Now().Add(-3300 * time.Millisecond)
	r.start = sent
	b.done(r, nil)
	if len(b.spent) != 2 {
		t.Fatalf("%d charges", len(b.spent))
	}
	if at := b.spent[1].at; at.Sub(sent) < 2400*time.Millisecond || at.Sub(sent) > 2600*time.Millisecond {
		t.Fatalf("a 3.3 s request charged %v after it was sent, want 2.5 s", at.Sub(sent))
	}

	// After requests of about 1 s, one of 0.1 s is answered before one of 0.5 s sent
	// earlier: both are charged when sent, the second before the first.
	b = newBudget(Limits{Window: 20 * time.Second, Requests: 100000, Execution: 100 * time.Second})
	r, _, _ = b.try(Bulk, requestKind{}, 0)
	r.start = time.Now().Add(-time.Second)
	b.done(r, nil)
	b.spent = nil
	first, _, _ := b.try(Bulk, requestKind{}, 0)
	second, _, _ := b.try(Bulk, requestKind{}, 0)
	now := time.Now()
	first.start, second.start = now.Add(-100*time.Millisecond), now.Add(-500*time.Millisecond)
	b.done(first, nil)
	b.done(second, nil)
	if len(b.spent) != 2 || !b.spent[0].at.Equal(second.start) || !b.spent[1].at.Equal(first.start) {
		t.Fatalf("charges not in the order their requests were sent: %+v", b.spent)
	}
}

// Rows of a table without the bulk messages are spread over the slots in flight, down
// to 10 parts a $batch, never above the bulk size.
func TestBatchSpread(t *testing.T) {
	for _, c := range []struct{ n, size, slots, want int }{
		{100, 100, 4, 25},   // four requests side by side
		{100, 100, 1, 100},  // one slot: one request
		{30, 100, 4, 10},    // not below 10 parts
		{8, 100, 4, 100},    // few rows: one request
		{1000, 100, 4, 100}, // never above the bulk size
		{41, 100, 4, 11},
	} {
		if got := batchSpread(c.n, c.size, c.slots); got != c.want {
			t.Errorf("batchSpread(%d rows, size %d, %d slots) = %d, want %d", c.n, c.size, c.slots, got, c.want)
		}
	}
}

// A request is held in flight at what requests of its kind took per byte of body: a
// $batch four times as long as the last is estimated four times as costly, where the
// average of all requests would count it at a fraction; a kind not seen yet gets its
// class's estimate. Kinds leave keys out.
func TestBudgetEstimatesByKindAndSize(t *testing.T) {
	b := newBudget(Limits{Window: 100 * time.Second, Requests: 100000, Execution: 1000 * time.Second})
	batch := requestKind{name: "POST /api/data/v9.2/$batch", size: 25_000}
	send := func(k requestKind, lat time.Duration) {
		t.Helper()
		r, d, _ := b.try(Bulk, k, 0)
		if r == nil {
			t.Fatalf("held %v", d)
		}
		r.start = time.Now().Add(-lat)
		b.done(r, nil)
	}
	for range 3 {
		send(requestKind{name: "GET /api/data/v9.2/contacts"}, 30*time.Millisecond)
		send(batch, time.Second)
	}
	big := requestKind{name: batch.name, size: 100_000}
	r, _, _ := b.try(Bulk, big, 0)
	if r.est < 3800*time.Millisecond || r.est > 4200*time.Millisecond {
		t.Fatalf("a $batch of 100,000 bytes after ones of 25,000 taking 1 s: estimated %v, want 4 s", r.est)
	}
	if b.inflight != r.est {
		t.Fatalf("in flight %v, want its estimate %v", b.inflight, r.est)
	}
	b.done(r, nil)
	get, _, _ := b.try(Bulk, requestKind{name: "GET /api/data/v9.2/contacts"}, 0)
	if get.est < 20*time.Millisecond || get.est > 40*time.Millisecond {
		t.Fatalf("a look-up after look-ups of 30 ms: estimated %v", get.est)
	}
	if other, _, _ := b.try(Bulk, requestKind{name: "POST /api/data/v9.2/accounts"}, 0); other.est != b.estimate(Bulk) {
		t.Fatalf("a kind not seen yet: estimated %v, want its class's %v", other.est, b.estimate(Bulk))
	}

	for path, want := range map[string]string{
		"/api/data/v9.2/products(9b1d7c1e-0000-0000-0000-000000000001)": "PATCH /api/data/v9.2/products()",
		"/api/data/v9.2/contacts(emailaddress1='a(b)@x')":               "PATCH /api/data/v9.2/contacts()",
		"/api/data/v9.2/contacts":                                       "PATCH /api/data/v9.2/contacts",
	} {
		req, _ := http.NewRequest(http.MethodPatch, "https://org.example"+path, strings.NewReader("{}"))
		if k := kindOf(req); k.name != want || k.size != 2 {
			t.Errorf("kindOf(%s) = %+v, want %q of 2 bytes", path, k, want)
		}
	}
}
