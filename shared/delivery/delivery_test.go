package delivery

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nopsync/nopsync/shared/localstore"
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

// fakeScheduler records what is scheduled.
type fakeScheduler struct {
	mu   sync.Mutex
	msgs []queue.Message
	at   []time.Time
	err  error
}

func (f *fakeScheduler) Schedule(ctx context.Context, q string, msgs []queue.Message, at time.Time) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.err != nil {
		return f.err
	}
	f.msgs = append(f.msgs, msgs...)
	for range msgs {
		f.at = append(f.at, at)
	}
	return nil
}

type fixture struct {
	h     *Handler
	st    state.Store
	sched *fakeScheduler
	clk   *clock
	fail  error // what Apply answers
	tried int
	mu    sync.Mutex
}

func newFixture(t *testing.T, mod func(*Options)) *fixture {
	t.Helper()
	st, err := localstore.Open("")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	f := &fixture{st: st, sched: &fakeScheduler{}, clk: &clock{t: time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC)}}
	o := Options{State: st, Scheduler: f.sched, Now: f.clk.Now, Apply: func(ctx context.Context, q string, body []byte) error {
		f.mu.Lock()
		defer f.mu.Unlock()
		f.tried++
		return f.fail
	}}
	if mod != nil {
		mod(&o)
	}
	if f.h, err = New(o); err != nil {
		t.Fatal(err)
	}
	return f
}

func (f *fixture) setFail(err error) { f.mu.Lock(); f.fail = err; f.mu.Unlock() }
func (f *fixture) triedN() int       { f.mu.Lock(); defer f.mu.Unlock(); return f.tried }

func msg(id string, delivery int) Message {
	return Message{Queue: queue.Customers, MessageID: id, SessionID: "customer-" + id, Subject: "customer.updated",
		ContentType: "application/json", Body: []byte(`{"evt":{"id":"` + id + `"}}`), DeliveryCount: delivery,
		ApplicationProperties: map[string]any{"source": "nop"}}
}

// The first deliveries of a failing message fail their invocation with the reason
// recorded first; from the third one on the message is completed once a copy (own id,
// same session and body, the original's id carried) is scheduled.
func TestFailureThenCopy(t *testing.T) {
	f := newFixture(t, nil)
	ctx := context.Background()
	f.setFail(errors.New("dataverse: 503 Service Unavailable"))
	for d := 1; d <= 2; d++ {
		err := f.h.Handle(ctx, msg("e1", d))
		if err == nil || !strings.Contains(err.Error(), "503") {
			t.Fatalf("delivery %d: %v, want the failure", d, err)
		}
		fl, _ := Lookup(ctx, f.st, queue.Customers, "e1")
		if fl == nil || fl.Deliveries != d || !strings.Contains(fl.Reason, "503") {
			t.Fatalf("after delivery %d the failure record is %+v", d, fl)
		}
	}
	if len(f.sched.msgs) != 0 {
		t.Fatal("a copy scheduled for a first delivery")
	}
	if err := f.h.Handle(ctx, msg("e1", 3)); err != nil {
		t.Fatalf("third delivery: %v, want it completed with a copy scheduled", err)
	}
	if len(f.sched.msgs) != 1 {
		t.Fatalf("%d copies scheduled, want 1", len(f.sched.msgs))
	}
	cp, at := f.sched.msgs[0], f.sched.at[0]
	if cp.MessageID != CopyID("e1", 1) || cp.MessageID == "e1" || cp.SessionID != "customer-e1" || string(cp.Body) != `{"evt":{"id":"e1"}}` ||
		cp.Subject != "customer.updated" || cp.ApplicationProperties["source"] != "nop" ||
		cp.ApplicationProperties[PropRetryOf] != "e1" || cp.ApplicationProperties[PropRetryCount] != "1" {
		t.Errorf("copy %+v", cp)
	}
	if d := at.Sub(f.clk.Now()); d < 8*time.Second || d > 12*time.Second {
		t.Errorf("first copy due in %s, want MinDelay (10 s) ±20 %%", d)
	}
	// The copy fails too: a second copy, later, with the original id and start carried.
	f.clk.Add(10 * time.Second)
	c1 := Message{Queue: queue.Customers, MessageID: cp.MessageID, SessionID: cp.SessionID, Body: cp.Body, DeliveryCount: 1, ApplicationProperties: cp.ApplicationProperties}
	if err := f.h.Handle(ctx, c1); err != nil {
		t.Fatal(err)
	}
	c2 := f.sched.msgs[1]
	if c2.MessageID != CopyID("e1", 2) || c2.ApplicationProperties[PropRetryOf] != "e1" || c2.ApplicationProperties[PropFailingSince] != cp.ApplicationProperties[PropFailingSince] {
		t.Errorf("second copy %+v", c2)
	}
	if d := f.sched.at[1].Sub(f.clk.Now()); d < 16*time.Second || d > 24*time.Second {
		t.Errorf("second copy due in %s, want 20 s ±20 %%", d)
	}
	if len(CopyID(strings.Repeat("x", 128), 99999)) > 128 {
		t.Error("a copy id is longer than Service Bus allows")
	}
}

// Copies stop after RetryFor: the message then fails its deliveries (and is
// dead-lettered by the broker) with its reason recorded under the original id.
func TestCopiesStopAfterRetryFor(t *testing.T) {
	f := newFixture(t, func(o *Options) { o.RetryFor = time.Hour })
	ctx := context.Background()
	f.setFail(errors.New("currency EUR missing in Dataverse"))
	since := f.clk.Now().Add(-time.Hour - time.Second).Format(time.RFC3339Nano)
	m := msg(CopyID("e2", 40), 5)
	m.ApplicationProperties = map[string]any{PropRetryOf: "e2", PropRetryCount: "40", PropFailingSince: since}
	if err := f.h.Handle(ctx, m); err == nil {
		t.Fatal("a message failing for longer than RetryFor was copied again")
	}
	fl, _ := Lookup(ctx, f.st, queue.Customers, "e2")
	if fl == nil || !strings.Contains(fl.Reason, "EUR") {
		t.Fatalf("failure record %+v, want the reason under the original id", fl)
	}
	// A replay of it (replayOf set by the queue) starts afresh.
	m.ApplicationProperties["replayOf"] = int64(7)
	m.DeliveryCount = 3
	if err := f.h.Handle(ctx, m); err != nil {
		t.Fatalf("a replayed message was not copied: %v", err)
	}
	if c := f.sched.msgs[len(f.sched.msgs)-1]; c.MessageID != CopyID("e2", 1) || c.ApplicationProperties["replayOf"] != nil {
		t.Errorf("copy of a replay %+v, want copy 1 without replayOf", c)
	}
}

// When every delivery fails, the breaker opens: messages are copied without being
// tried, one probe goes through every ProbeEvery, and a success closes it.
func TestBreaker(t *testing.T) {
	f := newFixture(t, func(o *Options) { o.BreakerThreshold = 3; o.ProbeEvery = 5 * time.Second })
	ctx := context.Background()
	f.setFail(errors.New("connection refused"))
	for i := range 3 {
		f.h.Handle(ctx, msg("a"+string(rune('0'+i)), 1))
	}
	// The third failure opened it: that message is copied rather than failed.
	if f.triedN() != 3 || len(f.sched.msgs) != 1 {
		t.Fatalf("tried %d, scheduled %d; want 3 and 1", f.triedN(), len(f.sched.msgs))
	}
	// Open: a first delivery is copied at once, untried.
	if err := f.h.Handle(ctx, msg("b", 1)); err != nil {
		t.Fatal(err)
	}
	if f.triedN() != 3 || len(f.sched.msgs) != 2 {
		t.Fatalf("breaker open: tried %d, scheduled %d; want 3 and 2", f.triedN(), len(f.sched.msgs))
	}
	// A probe after ProbeEvery; Dataverse is back: closed.
	f.clk.Add(5 * time.Second)
	f.setFail(nil)
	if err := f.h.Handle(ctx, msg("c", 1)); err != nil || f.triedN() != 4 {
		t.Fatalf("probe: %v, tried %d", err, f.triedN())
	}
	if err := f.h.Handle(ctx, msg("d", 1)); err != nil || f.triedN() != 5 {
		t.Fatalf("after the probe: %v, tried %d", err, f.triedN())
	}
	// Without a scheduler (or when scheduling fails) a failure fails the invocation.
	f.sched.err = errors.New("service bus unreachable")
	f.setFail(errors.New("503"))
	if err := f.h.Handle(ctx, msg("e", 4)); err == nil {
		t.Fatal("completed although no copy could be scheduled")
	}
}

// Failures Outage does not count (another writer holds the entity, as after a crash)
// leave the breaker closed however many there are: the next message is tried, not
// copied untried. Outage failures still open it, and an entity failure between them
// does not close it.
func TestBreakerCountsOutagesOnly(t *testing.T) {
	errHeld := errors.New("customer 7: lease held")
	f := newFixture(t, func(o *Options) {
		o.BreakerThreshold = 3
		o.Outage = func(err error) bool { return !errors.Is(err, errHeld) }
	})
	ctx := context.Background()
	f.setFail(fmt.Errorf("1 of 1 customer rows failed: %w", errHeld))
	for i := range 10 {
		_ = f.h.Handle(ctx, msg("held"+strconv.Itoa(i), 1))
	}
	if f.triedN() != 10 || len(f.sched.msgs) != 0 {
		t.Fatalf("entity failures: tried %d, scheduled %d; want every message tried (10) and none copied", f.triedN(), len(f.sched.msgs))
	}
	if f.h.open() {
		t.Fatal("breaker opened on failures an outage does not cause")
	}
	f.setFail(errors.New("connection refused"))
	_ = f.h.Handle(ctx, msg("out0", 1))
	_ = f.h.Handle(ctx, msg("out1", 1))
	f.setFail(errHeld)
	_ = f.h.Handle(ctx, msg("held-between", 1))
	f.setFail(errors.New("connection refused"))
	_ = f.h.Handle(ctx, msg("out2", 1))
	if !f.h.open() {
		t.Fatal("breaker closed after three outage failures in a row (an entity failure between them)")
	}
}

func TestCountReplay(t *testing.T) {
	f := newFixture(t, nil)
	ctx := context.Background()
	for want := range 3 {
		n, err := CountReplay(ctx, f.st, queue.Orders, "o1", f.clk.Now())
		if err != nil || n != want {
			t.Fatalf("CountReplay = %d, %v; want %d", n, err, want)
		}
	}
	fl, _ := Lookup(ctx, f.st, queue.Orders, "o1")
	if fl.Replays != 3 || fl.Reason != NoReason {
		t.Errorf("record %+v", fl)
	}
	if fl, _ := Lookup(ctx, f.st, queue.Customers, "o1"); fl != nil {
		t.Error("failure records of two queues share a key")
	}
}

// A message whose id is 128 non-ASCII characters (384 bytes, longer than the state
// store's keys) still has its failure recorded, with its reason, and found again.
func TestFailureOfALongID(t *testing.T) {
	f := newFixture(t, nil)
	ctx := context.Background()
	f.setFail(errors.New("dataverse: 503 Service Unavailable"))
	id := strings.Repeat("€", 128)
	if err := f.h.Handle(ctx, msg(id, 1)); err == nil {
		t.Fatal("the failing delivery succeeded")
	}
	fl, err := Lookup(ctx, f.st, queue.Customers, id)
	if err != nil || fl == nil || fl.MessageID != id || fl.Deliveries != 1 || !strings.Contains(fl.Reason, "503") {
		t.Fatalf("failure record %+v, %v", fl, err)
	}
	if other, _ := Lookup(ctx, f.st, queue.Customers, strings.Repeat("€", 127)+"e"); other != nil {
		t.Errorf("another id found its record: %+v", other)
	}
}

// Apply learns whether the message was delivered before (queue.IsRedelivery): a broker
// redelivery, a scheduled copy or a replay; a first delivery is not one.
func TestApplySeesRedeliveries(t *testing.T) {
	var seen []bool
	f := newFixture(t, func(o *Options) {
		o.Apply = func(ctx context.Context, q string, body []byte) error {
			seen = append(seen, queue.IsRedelivery(ctx))
			return nil
		}
	})
	ctx := context.Background()
	copyOf := msg("e2-copy", 1)
	copyOf.ApplicationProperties = map[string]any{PropRetryOf: "e2", PropRetryCount: "1"}
	replayed := msg("e3", 1)
	replayed.ApplicationProperties = map[string]any{propReplayOf: "e3"}
	for _, m := range []Message{msg("e1", 1), msg("e1", 2), copyOf, replayed} {
		if err := f.h.Handle(ctx, m); err != nil {
			t.Fatal(err)
		}
	}
	if want := []bool{false, true, true, true}; !slices.Equal(seen, want) {
		t.Errorf("redelivery seen %v, want %v", seen, want)
	}
}
