package syncer

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/nopsync/nopsync/shared/dataverse"
	"github.com/nopsync/nopsync/shared/nop"
	"github.com/nopsync/nopsync/shared/state"
)

// TestOrderWaitsForTheCustomersOwnSync: while the customer's own event is being written
// (its lease held), an order for that customer does not write the contact from its own,
// older copy; it is redelivered, and afterwards the contact still holds the customer's
// own data. (Found by the chaos test: the order's copy landed after the newer event.)
func TestOrderWaitsForTheCustomersOwnSync(t *testing.T) {
	e := newEnv(t, envOptions{})
	order := mkEvent(t, example(t, "order-placed.json")[0], "o1", 1, nil)

	// The customer's own event has claimed the record and is writing.
	own := &state.Record{Entity: state.Customer, ID: "42", Status: state.Pending, LeaseOwner: "other/1", LeaseUntil: time.Now().Add(time.Minute)}
	if err := e.st.Save(e.ctx, own); err != nil {
		t.Fatal(err)
	}
	err := e.deliver(e.eng, state.Order, order)
	if !errors.Is(err, errBusy) || !isTransient(err) {
		t.Fatalf("order while the customer is being written: %v, want a transient busy error", err)
	}
	if n := e.srv.Count("contacts"); n != 0 {
		t.Fatalf("the order wrote %d contacts while the customer's own sync held it", n)
	}

	// The customer's own, newer event lands (a new last name), then the order again.
	own, _ = e.st.Get(e.ctx, state.Customer, "42")
	own.LeaseOwner, own.LeaseUntil = "", time.Time{}
	if err := e.st.Save(e.ctx, own); err != nil {
		t.Fatal(err)
	}
	tmpl := example(t, "customer-created.json")[0]
	e.each(state.Customer, customerEvent(t, tmpl, 42, 5, "ada.lovelace@example.com", func(d map[string]any) { d["lastName"] = "King" }))
	e.each(state.Order, order)
	c := e.row("contacts", contactID(1, 42))
	if c["lastname"] != "King" {
		t.Errorf("contact lastname %v after the order: the order's older copy overwrote the customer's own event", c["lastname"])
	}
	if r := e.rec(state.Customer, 42); r.LeaseOwner != "" || r.Status != state.Synced {
		t.Errorf("customer record after the order: %+v", r)
	}
}

// TestOrderAfterTheEntitysOwnEventFailed: an order reads a product's and a customer's
// records while their own events are being written (claimed, nothing recorded yet), then
// waits for their leases; meanwhile those events fail and record themselves. The order
// writes the rows from its own copy but must not mark the records synced: the events'
// redelivery then applies them. (Found by the chaos test: a product kept the order
// line's name, its own newer event skipped as a duplicate.)
func TestOrderAfterTheEntitysOwnEventFailed(t *testing.T) {
	e := newEnv(t, envOptions{})
	fs := e.st
	prodEv := mkEvent(t, example(t, "product-simple.json")[0], "p7", 2, func(d map[string]any) {
		d["pictureUrls"], d["name"] = []any{}, "Nikon D5500 DSLR, its own event"
	})
	custEv := customerEvent(t, example(t, "customer-created.json")[0], 42, 5, "ada.lovelace@example.com", func(d map[string]any) { d["lastName"] = "King" })
	fs.stale = map[string]*state.Record{}
	for _, ev := range []*nop.Event{prodEv, custEv} {
		// Claimed by its own event: what the order reads.
		r := &state.Record{Entity: ev.Entity(), ID: ev.EntityID(), Status: state.Pending, Data: eventJSON(ev)}
		if err := e.st.Save(e.ctx, r); err != nil {
			t.Fatal(err)
		}
		claimedCopy := *r
		fs.stale[string(r.Entity)+"/"+r.ID] = &claimedCopy
		// Then the event's write failed, and its result was recorded.
		r.Status, r.OrderKey, r.LastEventID, r.Transient, r.Attempts, r.Reason = state.Failed, ev.OrderKey(), ev.ID, true, 1, "503"
		if err := e.st.Save(e.ctx, r); err != nil {
			t.Fatal(err)
		}
	}
	e.each(state.Order, mkEvent(t, example(t, "order-placed.json")[0], "o1", 1, nil))
	if len(fs.stale) != 0 {
		t.Fatalf("the order did not read %v", fs.stale)
	}
	for _, ev := range []*nop.Event{prodEv, custEv} {
		if r, _ := e.st.Get(e.ctx, ev.Entity(), ev.EntityID()); r.Status == state.Synced {
			t.Errorf("%s %s after the order: synced, with its own failed event %s never applied", ev.Entity(), ev.EntityID(), r.LastEventID)
		}
	}
	// The events' redelivery.
	e.each(state.Product, prodEv)
	e.each(state.Customer, custEv)
	if p := e.row("products", productID(1, 7)); p["name"] != "Nikon D5500 DSLR, its own event" {
		t.Errorf("product 7 after its own event's redelivery: name %v", p["name"])
	}
	if c := e.row("contacts", contactID(1, 42)); c["lastname"] != "King" {
		t.Errorf("customer 42 after its own event's redelivery: lastname %v", c["lastname"])
	}
	for _, ev := range []*nop.Event{prodEv, custEv} {
		if r, _ := e.st.Get(e.ctx, ev.Entity(), ev.EntityID()); r.Status != state.Synced || r.LastEventID != ev.ID {
			t.Errorf("%s %s: %s, last event %s; want synced by %s", ev.Entity(), ev.EntityID(), r.Status, r.LastEventID, ev.ID)
		}
	}
}

// TestOrderReleasesWhatItClaimed: an order that creates a product it has not seen leaves
// no lease behind, so the product's own event is applied at once.
func TestOrderReleasesWhatItClaimed(t *testing.T) {
	e := newEnv(t, envOptions{})
	e.each(state.Order, mkEvent(t, example(t, "order-placed.json")[0], "o1", 1, nil))
	for _, id := range []int{7, 12} {
		if r := e.rec(state.Product, id); r.LeaseOwner != "" || r.DataverseID == "" {
			t.Errorf("product %d after the order: lease %q id %q", id, r.LeaseOwner, r.DataverseID)
		}
	}
	if r := e.rec(state.Customer, 42); r.LeaseOwner != "" {
		t.Errorf("customer lease left behind: %+v", r)
	}
	e.each(state.Product, mkEvent(t, example(t, "product-simple.json")[0], "p1", 2, func(d map[string]any) { d["pictureUrls"] = []any{} }))
	if p := e.row("products", productID(1, 7)); numOf(p["price"]) != 100 {
		t.Errorf("product 7 after its own event: %v", p["price"])
	}
}

// leaseEngine is an engine of e with a short lease, so tests can outlast it.
func leaseEngine(t *testing.T, e *env, lease time.Duration) *Engine {
	t.Helper()
	eng, err := New(Options{DV: e.fdv, State: e.st, Settings: e.set, BulkSize: e.bulkSize, BusyWait: -1,
		LeaseDuration: lease, Log: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	return eng
}

// holdContactWrite makes the first write to contacts wait until release is closed (or
// 10 s), closing writing when it starts; before runs first, inside the hook.
func holdContactWrite(e *env, before func()) (writing, release chan struct{}) {
	writing, release = make(chan struct{}), make(chan struct{})
	var once sync.Once
	e.fdv.setFail(func(op, set string, recs []dataverse.Record) error {
		if set != "contacts" {
			return nil
		}
		once.Do(func() {
			if before != nil {
				before()
			}
			close(writing)
			select {
			case <-release:
			case <-time.After(10 * time.Second):
			}
		})
		return nil
	})
	return writing, release
}

// TestLeaseKeptWhileWriting: a writer that takes longer than its lease (a chunk held up
// by throttling, a single event too) keeps the entity's lease while it writes, so a
// newer event for the entity is answered busy instead of being written at the same
// time; it lands once redelivered, and its data is what Dynamics 365 keeps. (Found by
// the chaos test: an older chunk's write landed after a newer event whose writer had
// claimed the entity once the older lease ran out.)
func TestLeaseKeptWhileWriting(t *testing.T) {
	for _, chunked := range []bool{false, true} {
		t.Run(map[bool]string{false: "single event", true: "chunk"}[chunked], func(t *testing.T) {
			e := newEnv(t, envOptions{})
			slow := leaseEngine(t, e, 300*time.Millisecond)
			tmpl := example(t, "customer-created.json")[0]
			first := []*nop.Event{customerEvent(t, tmpl, 42, 1, "ada.lovelace@example.com", func(d map[string]any) { d["lastName"] = "One" })}
			if chunked {
				first = append(first, customerEvent(t, tmpl, 43, 1, "grace.hopper@example.com", nil))
			}
			writing, release := holdContactWrite(e, nil)
			done := make(chan error, 1)
			go func() { done <- e.deliver(slow, state.Customer, first...) }()
			<-writing
			time.Sleep(900 * time.Millisecond) // three leases

			newer := customerEvent(t, tmpl, 42, 2, "ada.lovelace@example.com", func(d map[string]any) { d["lastName"] = "Two" })
			if err := e.deliver(e.eng, state.Customer, newer); !IsBusy(err) {
				close(release)
				<-done
				t.Fatalf("newer event while the first writer still writes: %v, want busy (lease kept)", err)
			}
			close(release)
			if err := <-done; err != nil {
				t.Fatalf("slow writer: %v", err)
			}
			if err := e.deliver(e.eng, state.Customer, newer); err != nil {
				t.Fatalf("newer event redelivered: %v", err)
			}
			if c := e.row("contacts", contactID(1, 42)); c["lastname"] != "Two" {
				t.Errorf("contact lastname %v, want the newer event's Two", c["lastname"])
			}
			if r := e.rec(state.Customer, 42); r.LastEventID != newer.ID || r.Status != state.Synced || r.LeaseOwner != "" {
				t.Errorf("record: last event %s status %s lease %q; want %s synced, no lease", r.LastEventID, r.Status, r.LeaseOwner, newer.ID)
			}
		})
	}
}

// TestNothingSentOnceTheLeaseCannotBeKept: when the state store refuses the lease's
// renewal, the writer stops before its lease runs out (another writer may claim the
// entity from then on): the held-up write is never sent, and the event fails
// transiently, to be redelivered.
func TestNothingSentOnceTheLeaseCannotBeKept(t *testing.T) {
	e := newEnv(t, envOptions{})
	slow := leaseEngine(t, e, 300*time.Millisecond)
	tmpl := example(t, "customer-created.json")[0]
	writing, release := holdContactWrite(e, func() {
		// From now on the lease can't be renewed (saves that keep a lease fail).
		e.st.failSave(func(r *state.Record) bool { return r.LeaseOwner != "" })
	})
	done := make(chan error, 1)
	go func() {
		done <- e.deliver(slow, state.Customer,
			customerEvent(t, tmpl, 42, 1, "ada.lovelace@example.com", nil),
			customerEvent(t, tmpl, 43, 1, "grace.hopper@example.com", nil))
	}()
	<-writing
	time.Sleep(600 * time.Millisecond) // past the lease
	close(release)
	err := <-done
	if !errors.Is(err, errLeaseRunningOut) || !isTransient(err) {
		t.Fatalf("writer whose lease could not be kept: %v, want a transient error naming the lease", err)
	}
	if n := e.srv.Count("contacts"); n != 0 {
		t.Fatalf("%d contacts written after the writer's lease could no longer be kept", n)
	}
	e.st.failSave(nil)
	if r := e.rec(state.Customer, 42); r.Status != state.Failed || !r.Transient || r.LeaseOwner != "" {
		t.Errorf("record after the cut: status %s transient %v lease %q", r.Status, r.Transient, r.LeaseOwner)
	}
}

// TestKeepRenewsALeaseClaimedAWhileAgo: a record claimed long enough ago that its lease
// is nearly over (a chunk's claims can wait for other writers) is renewed when keeping
// starts, rather than the work being cut at once.
func TestKeepRenewsALeaseClaimedAWhileAgo(t *testing.T) {
	e := newEnv(t, envOptions{})
	l := &leases{st: e.st, now: time.Now, log: slog.New(slog.DiscardHandler), instance: "a", duration: 300 * time.Millisecond}
	rec := &state.Record{Entity: state.Customer, ID: "42", Status: state.Pending, LeaseOwner: "a/1", LeaseUntil: time.Now().Add(50 * time.Millisecond)}
	if err := e.st.Save(e.ctx, rec); err != nil {
		t.Fatal(err)
	}
	ctx, stop := l.keep(e.ctx, []*state.Record{rec})
	time.Sleep(100 * time.Millisecond) // the original lease is over
	err := context.Cause(ctx)
	stop()
	if err != nil {
		t.Fatalf("work cut although its lease could be renewed: %v", err)
	}
	stored := e.rec(state.Customer, 42)
	if !stored.LeaseUntil.After(time.Now()) || stored.LeaseOwner != "a/1" || stored.ETag != rec.ETag {
		t.Fatalf("stored lease %q until %v (etag %s, kept %s), want a/1 renewed into the future", stored.LeaseOwner, stored.LeaseUntil, stored.ETag, rec.ETag)
	}
}
