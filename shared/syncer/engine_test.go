package syncer

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nopsync/nopsync/shared/dataverse"
	"github.com/nopsync/nopsync/shared/nop"
	"github.com/nopsync/nopsync/shared/state"
	"github.com/nopsync/nopsync/shared/tablestorage"
)

// A missing store currency fails products (transient, naming the code and
// what to do) while customers still sync; once the currency exists the next sync works
// without a restart.
func TestBootstrapMissingCurrency(t *testing.T) {
	e := newEnv(t, envOptions{settings: func(s *Settings) { s.StoreCurrencyCode = "EUR" }})
	err := e.deliver(e.eng, state.Product, productEvent(t, 1, 1, nil))
	if err == nil || !isTransient(err) || !errors.Is(err, ErrMissingCurrency) ||
		!strings.Contains(err.Error(), "add currency EUR in Dynamics 365 (Settings > Business Management > Currencies)") {
		t.Fatalf("product with a missing currency: %v (transient %v)", err, isTransient(err))
	}
	r := e.rec(state.Product, 1)
	if r.Status != state.Failed || !r.Transient || !strings.Contains(r.Reason, "EUR") {
		t.Fatalf("state %s transient %v %q", r.Status, r.Transient, r.Reason)
	}
	if info := e.eng.Connection(e.ctx); !info.Reachable || !strings.Contains(info.Error, "EUR") || info.OrganizationID != e.srv.OrganizationID() {
		t.Fatalf("connection info %+v", info)
	}
	e.each(state.Customer, customerEvent(t, example(t, "customer-created.json")[0], 1, 1, "c1@example.test", nil))
	if r := e.rec(state.Customer, 1); r.Status != state.Synced {
		t.Fatalf("customer with a missing currency: %s %q", r.Status, r.Reason)
	}
	if n := e.srv.Count("pricelevels"); n != 0 {
		t.Fatalf("%d price lists created without a currency", n)
	}

	if _, err := e.dv.Create(e.ctx, "transactioncurrencies", dataverse.Record{"isocurrencycode": "EUR", "currencyname": "Euro",
		"currencysymbol": "€", "currencyprecision": 2, "exchangerate": 0.9}); err != nil {
		t.Fatal(err)
	}
	// Redelivery of the same message succeeds now.
	if err := e.deliver(e.eng, state.Product, productEvent(t, 1, 1, nil)); err != nil {
		t.Fatalf("after adding the currency: %v", err)
	}
	if r := e.rec(state.Product, 1); r.Status != state.Synced || r.Attempts != 0 {
		t.Fatalf("state after adding the currency: %s attempts %d", r.Status, r.Attempts)
	}
	pl := e.where("pricelevels", "name", "nopCommerce EUR")
	if len(pl) != 1 {
		t.Fatalf("price lists: %v", e.srv.Rows("pricelevels"))
	}
	if info := e.eng.Connection(e.ctx); info.Error != "" || info.Currency != "EUR" {
		t.Fatalf("connection info %+v", info)
	}
}

// Instances bootstrapping at once converge on one price list and one unit
// group (deterministic ids); configured names are used.
func TestBootstrapConcurrentInstancesConverge(t *testing.T) {
	e := newEnv(t, envOptions{settings: func(s *Settings) { s.PriceListName = "Web shop"; s.UnitGroupName = "Shop units" }})
	var wg sync.WaitGroup
	ids := make([]*shared, 6)
	errs := make([]error, 6)
	for i := range ids {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ids[i], errs[i] = e.engine().boot.rows(e.ctx)
		}()
	}
	wg.Wait()
	for i := range ids {
		if errs[i] != nil {
			t.Fatalf("instance %d: %v", i, errs[i])
		}
		if *ids[i] != *ids[0] {
			t.Fatalf("instances disagree: %+v vs %+v", ids[i], ids[0])
		}
	}
	if n := len(e.where("pricelevels", "name", "Web shop")); n != 1 {
		t.Fatalf("%d price lists named Web shop", n)
	}
	if n := len(e.where("uomschedules", "name", "Shop units")); n != 1 {
		t.Fatalf("%d unit groups named Shop units", n)
	}
	if n := len(e.where("uoms", "_uomscheduleid_value", ids[0].UnitGroupID)); n != 1 {
		t.Fatalf("%d units in the group", n)
	}
}

// Stale events are acknowledged and counted, duplicates have one effect,
// unchanged data causes no write.
func TestLatestStateWins(t *testing.T) {
	e := newEnv(t, envOptions{})
	tmpl := example(t, "customer-created.json")[0]
	v := func(seq int64, name string) *nop.Event {
		return customerEvent(t, tmpl, 9, seq, "nine@example.test", func(d map[string]any) { d["firstName"] = name })
	}
	e.each(state.Customer, v(5, "five"))
	e.each(state.Customer, v(3, "three")) // stale
	if got := e.row("contacts", contactID(1, 9))["firstname"]; got != "five" {
		t.Fatalf("stale event applied: firstname %v", got)
	}
	if r := e.rec(state.Customer, 9); r.LastEventID != "cust-9-5" || r.Status != state.Synced {
		t.Fatalf("stale event changed the record: %+v", r)
	}
	counts, err := e.eng.StaleSkipped(e.ctx)
	if err != nil || counts[state.Customer] != 1 {
		t.Fatalf("stale count %v %v, want 1", counts, err)
	}
	writes := e.fdv.count("Upsert contacts")
	e.each(state.Customer, v(5, "five"), v(5, "five")) // duplicates
	e.each(state.Customer, customerEvent(t, tmpl, 9, 6, "nine@example.test", func(d map[string]any) { d["firstName"] = "five" }))
	if got := e.fdv.count("Upsert contacts"); got != writes {
		t.Fatalf("%d contact writes for duplicates and unchanged data, want none", got-writes)
	}
	if r := e.rec(state.Customer, 9); r.LastEventID != "cust-9-6" {
		t.Fatalf("newer unchanged event not recorded: %s", r.LastEventID)
	}
	e.each(state.Customer, v(7, "seven"))
	if got := e.row("contacts", contactID(1, 9))["firstname"]; got != "seven" {
		t.Fatalf("newer event not applied: %v", got)
	}
}

// A wiped state table leads to the same rows, not new ones (single and
// bulk paths, contacts adopted by email included).
func TestWipedStateSameRows(t *testing.T) {
	tmpl := example(t, "customer-created.json")[0]
	typed := ""
	var evs []*nop.Event
	for i := 1; i <= 8; i++ {
		evs = append(evs, customerEvent(t, tmpl, i, 1, fmt.Sprintf("w%d@example.test", i), nil))
	}
	run := func(e *env, bulk bool) {
		if bulk {
			if err := e.deliver(e.eng, state.Customer, evs...); err != nil {
				t.Fatal(err)
			}
		} else {
			e.each(state.Customer, evs...)
		}
		e.each(state.Product, productEvent(t, 1, 1, nil))
	}
	e := newEnv(t, envOptions{})
	var err error
	typed, err = e.dv.Create(e.ctx, "contacts", dataverse.Record{"lastname": "Typed", "emailaddress1": "w3@example.test"})
	if err != nil {
		t.Fatal(err)
	}
	run(e, false)
	contacts, products, accounts := e.srv.Count("contacts"), e.srv.Count("products"), e.srv.Count("accounts")
	for _, bulk := range []bool{false, true} {
		e.wipeState()
		e.eng = e.engine()
		run(e, bulk)
		if e.srv.Count("contacts") != contacts || e.srv.Count("products") != products || e.srv.Count("accounts") != accounts ||
			e.srv.Count("pricelevels") != 1 || e.srv.Count("productpricelevels") != 1 {
			t.Fatalf("bulk %v: rows after wiping state: contacts %d/%d products %d/%d accounts %d/%d", bulk,
				e.srv.Count("contacts"), contacts, e.srv.Count("products"), products, e.srv.Count("accounts"), accounts)
		}
		if got := e.rec(state.Customer, 3).DataverseID; !strings.EqualFold(got, typed) {
			t.Fatalf("bulk %v: customer 3 → %s, want the adopted %s", bulk, got, typed)
		}
	}
}

// Permanent failures (Dataverse refuses the data) are recorded and
// acknowledged; transient ones are returned (redelivery) and recorded too.
func TestFailuresRecordedAndClassified(t *testing.T) {
	e := newEnv(t, envOptions{})
	tmpl := example(t, "customer-created.json")[0]
	e.fdv.setFail(func(op, set string, recs []dataverse.Record) error {
		switch {
		case set == "contacts" && hasEmail(recs, "bad@example.test"):
			return refuse("A validation error occurred.")
		case set == "contacts" && hasEmail(recs, "flaky@example.test"):
			return unavailable()
		}
		return nil
	})
	if err := e.deliver(e.eng, state.Customer, customerEvent(t, tmpl, 1, 1, "bad@example.test", nil)); err != nil {
		t.Fatalf("permanent failure returned an error (would be redelivered): %v", err)
	}
	if r := e.rec(state.Customer, 1); r.Status != state.Failed || r.Transient || r.Attempts != 1 || !strings.Contains(r.Reason, "validation") {
		t.Fatalf("permanent: %+v", r)
	}
	err := e.deliver(e.eng, state.Customer, customerEvent(t, tmpl, 2, 1, "flaky@example.test", nil))
	if err == nil {
		t.Fatal("transient failure acknowledged")
	}
	if r := e.rec(state.Customer, 2); r.Status != state.Failed || !r.Transient || r.LeaseOwner != "" {
		t.Fatalf("transient: %+v", r)
	}
	e.fdv.setFail(nil)
	if err := e.deliver(e.eng, state.Customer, customerEvent(t, tmpl, 2, 1, "flaky@example.test", nil)); err != nil {
		t.Fatalf("redelivery: %v", err)
	}
	if r := e.rec(state.Customer, 2); r.Status != state.Synced || r.Attempts != 0 {
		t.Fatalf("after redelivery: %+v", r)
	}
}

// A lease held by another instance makes the event transient ("busy");
// an expired lease is taken over.
func TestLeaseHeldByAnotherInstance(t *testing.T) {
	e := newEnv(t, envOptions{})
	tmpl := example(t, "customer-created.json")[0]
	e.each(state.Customer, customerEvent(t, tmpl, 4, 1, "four@example.test", nil))
	r := e.rec(state.Customer, 4)
	r.LeaseOwner, r.LeaseUntil = "other-instance/1", time.Now().Add(time.Minute)
	if err := e.st.Save(e.ctx, r); err != nil {
		t.Fatal(err)
	}
	err := e.deliver(e.eng, state.Customer, customerEvent(t, tmpl, 4, 2, "four@example.test", func(d map[string]any) { d["firstName"] = "New" }))
	if err == nil || !errors.Is(err, errBusy) || !isTransient(err) {
		t.Fatalf("busy lease: %v", err)
	}
	r = e.rec(state.Customer, 4)
	r.LeaseUntil = time.Now().Add(-time.Second)
	if err := e.st.Save(e.ctx, r); err != nil {
		t.Fatal(err)
	}
	e.each(state.Customer, customerEvent(t, tmpl, 4, 2, "four@example.test", func(d map[string]any) { d["firstName"] = "New" }))
	if got := e.row("contacts", contactID(1, 4))["firstname"]; got != "New" {
		t.Fatalf("after the lease expired: %v", got)
	}

	// With BusyWait, a claim waits for the other writer to finish instead of failing.
	r = e.rec(state.Customer, 4)
	r.LeaseOwner, r.LeaseUntil = "other-instance/2", time.Now().Add(time.Minute)
	if err := e.st.Save(e.ctx, r); err != nil {
		t.Fatal(err)
	}
	e.busyWait = time.Minute
	waiting := e.engine()
	done := make(chan error, 1)
	go func() {
		done <- e.deliver(waiting, state.Customer, customerEvent(t, tmpl, 4, 3, "four@example.test", func(d map[string]any) { d["firstName"] = "Third" }))
	}()
	time.Sleep(50 * time.Millisecond)
	r = e.rec(state.Customer, 4)
	r.LeaseOwner, r.LeaseUntil = "", time.Time{}
	if err := e.st.Save(e.ctx, r); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatalf("waiting claim: %v", err)
	}
	if got := e.row("contacts", contactID(1, 4))["firstname"]; got != "Third" {
		t.Fatalf("after waiting for the lease: %v", got)
	}
}

// docs/operations.md: a chunk and single events for the same entities, on
// two instances at the same moment: whatever interleaving, the newest state ends up in
// Dynamics 365 and in state, once every transient failure has been redelivered.
func TestChunkAndSingleEventsConcurrently(t *testing.T) {
	e := newEnv(t, envOptions{})
	tmpl := example(t, "customer-created.json")[0]
	const n = 40
	var old, newer []*nop.Event
	for i := 1; i <= n; i++ {
		old = append(old, customerEvent(t, tmpl, i, 1, fmt.Sprintf("r%d@example.test", i), func(d map[string]any) { d["firstName"] = "old" }))
		newer = append(newer, customerEvent(t, tmpl, i, 2, fmt.Sprintf("r%d@example.test", i), func(d map[string]any) { d["firstName"] = "new" }))
	}
	e.busyWait = 5 * time.Second // as deployed: wait a little for the other writer
	a, b := e.engine(), e.engine()
	var wg sync.WaitGroup
	redeliver := func(eng *Engine, entity state.Entity, evs ...*nop.Event) {
		defer wg.Done()
		// Like Service Bus: redeliver until applied (busy leases are transient).
		deadline := time.Now().Add(time.Minute)
		for time.Now().Before(deadline) {
			err := e.deliver(eng, entity, evs...)
			if err == nil {
				return
			}
			if !isTransient(err) {
				t.Errorf("permanent failure: %v", err)
				return
			}
			time.Sleep(2 * time.Millisecond)
		}
		t.Errorf("never applied")
	}
	wg.Add(1 + n)
	go redeliver(a, state.Customer, old...)
	for _, ev := range newer {
		go redeliver(b, state.Customer, ev)
	}
	wg.Wait()
	for i := 1; i <= n; i++ {
		if got := e.row("contacts", contactID(1, i))["firstname"]; got != "new" {
			t.Errorf("customer %d: firstname %v, want new", i, got)
		}
		if r := e.rec(state.Customer, i); r.LastEventID != fmt.Sprintf("cust-%d-2", i) || r.Status != state.Synced {
			t.Errorf("customer %d: state %s last %s", i, r.Status, r.LastEventID)
		}
	}
}

// DATAVERSE_WRITES_ENABLED=false: events are recorded as pending, nothing is written;
// a later resync (writes enabled) writes them.
func TestWritesDisabledThenResync(t *testing.T) {
	e := newEnv(t, envOptions{settings: func(s *Settings) { s.WritesEnabled = false }})
	tmpl := example(t, "customer-created.json")[0]
	e.each(state.Customer, customerEvent(t, tmpl, 1, 1, "p1@example.test", nil), customerEvent(t, tmpl, 2, 1, "p2@example.test", nil))
	if r := e.rec(state.Customer, 1); r.Status != state.Pending {
		t.Fatalf("state %s, want pending", r.Status)
	}
	if e.srv.Count("contacts") != 0 || e.fdv.count("Upsert contacts") != 0 {
		t.Fatalf("written with writes disabled")
	}
	e.set.WritesEnabled = true
	e.eng = e.engine()
	n, err := e.eng.Resync(e.ctx, state.Customer, "failed")
	if err != nil || n != 2 {
		t.Fatalf("resync: %d %v", n, err)
	}
	if e.srv.Count("contacts") != 2 || e.rec(state.Customer, 2).Status != state.Synced {
		t.Fatalf("after resync: %d contacts", e.srv.Count("contacts"))
	}
}

// Resync "all" re-sends every known entity from its last received data, repairing rows
// changed or deleted in Dynamics 365, through the bulk path.
func TestResyncAllRepairs(t *testing.T) {
	e := newEnv(t, envOptions{})
	tmpl := example(t, "customer-created.json")[0]
	var evs []*nop.Event
	for i := 1; i <= 10; i++ {
		evs = append(evs, customerEvent(t, tmpl, i, 1, fmt.Sprintf("a%d@example.test", i), nil))
	}
	if err := e.deliver(e.eng, state.Customer, evs...); err != nil {
		t.Fatal(err)
	}
	if err := e.dv.Update(e.ctx, "contacts", contactID(1, 3), dataverse.Record{"firstname": "Changed in D365"}); err != nil {
		t.Fatal(err)
	}
	if err := e.dv.Delete(e.ctx, "contacts", contactID(1, 4)); err != nil {
		t.Fatal(err)
	}
	n, err := e.eng.Resync(e.ctx, state.Customer, "all")
	if err != nil || n != 10 {
		t.Fatalf("resync all: %d %v", n, err)
	}
	if got := e.row("contacts", contactID(1, 3))["firstname"]; got != "Ada" {
		t.Errorf("changed row not repaired: %v", got)
	}
	if _, ok := e.srv.Row("contacts", contactID(1, 4)); !ok {
		t.Errorf("deleted row not recreated")
	}
	if e.srv.Count("contacts") != 10 {
		t.Errorf("%d contacts, want 10", e.srv.Count("contacts"))
	}
}

// The engine never panics on events it can't map and drops undecodable messages.
func TestInvalidMessageAcknowledged(t *testing.T) {
	e := newEnv(t, envOptions{})
	for _, body := range []string{`{}`, `not json`, `{"evt": {"id": "x"}}`} {
		if err := e.eng.HandleMessage(e.ctx, "customers", []byte(body)); err != nil {
			t.Errorf("%s: %v", body, err)
		}
	}
	if err := e.eng.HandleMessage(e.ctx, "nope", []byte(`{}`)); err == nil {
		t.Error("unknown queue accepted")
	}
}

func TestDeterministicIDs(t *testing.T) {
	a := deterministicID(1, "contact", "42")
	if a != deterministicID(1, "contact", "42") || a == deterministicID(2, "contact", "42") ||
		a == deterministicID(1, "account", "42") || a == deterministicID(1, "contact", "43") {
		t.Fatal("ids not deterministic per store/kind/key")
	}
	if len(a) != 36 || a[14] != '5' {
		t.Fatalf("%s is not a version 5 UUID", a)
	}
}

// Sync runs re-send stored events as resync chunks (nop.ResyncChunk): those are
// written again (repairing Dynamics 365), while a replayed ordinary message is a
// duplicate with no effect.
func TestResyncChunkMessagesForceWrites(t *testing.T) {
	e := newEnv(t, envOptions{})
	tmpl := example(t, "customer-created.json")[0]
	ev := customerEvent(t, tmpl, 1, 1, "f1@example.test", nil)
	e.each(state.Customer, ev)
	if err := e.dv.Update(e.ctx, "contacts", contactID(1, 1), dataverse.Record{"firstname": "Changed"}); err != nil {
		t.Fatal(err)
	}
	e.each(state.Customer, ev) // a replayed message: nothing happens
	if got := e.row("contacts", contactID(1, 1))["firstname"]; got != "Changed" {
		t.Fatalf("duplicate rewrote the contact: %v", got)
	}
	// A chunk is a re-sync by its flag, not by its id.
	plain := fmt.Sprintf(`{"chunk":{"id":"resync-run0-customer-1","events":[%s]}}`, ev.Raw)
	if err := e.eng.HandleMessage(e.ctx, "customers", []byte(plain)); err != nil {
		t.Fatal(err)
	}
	if got := e.row("contacts", contactID(1, 1))["firstname"]; got != "Changed" {
		t.Fatalf("a chunk without the resync flag rewrote the contact: %v", got)
	}
	msg, err := nop.ResyncChunk("run1-customer-1", []json.RawMessage{ev.Raw})
	if err != nil {
		t.Fatal(err)
	}
	if err := e.eng.HandleMessage(e.ctx, "customers", msg.Body); err != nil {
		t.Fatal(err)
	}
	if got := e.row("contacts", contactID(1, 1))["firstname"]; got != "Ada" {
		t.Fatalf("resync chunk did not repair the contact: %v", got)
	}
}

// The status page's view of Dynamics 365 when it cannot be reached.
func TestConnectionUnreachable(t *testing.T) {
	e := newEnv(t, envOptions{})
	if info := e.eng.Connection(e.ctx); !info.Reachable || info.Error != "" || info.UserID != e.srv.UserID() || info.Currency != "USD" {
		t.Fatalf("connected: %+v", info)
	}
	e.srv.Close()
	info := e.eng.Connection(e.ctx)
	if info.Reachable || info.Error == "" || strings.Contains(info.Error, e.srv.ClientSecret()) {
		t.Fatalf("unreachable: %+v", info)
	}
}

// A writer whose lease ran out while its (older) write was stalled must
// not leave its older data in Dynamics 365 once a newer state has been applied.
func TestStalledWriterDoesNotWinOverNewerState(t *testing.T) {
	e := newEnv(t, envOptions{})
	tmpl := example(t, "customer-created.json")[0]
	e.each(state.Customer, customerEvent(t, tmpl, 8, 1, "stall@example.test", nil))

	stalled, release := make(chan struct{}), make(chan struct{})
	var once sync.Once
	e.fdv.setFail(func(op, set string, recs []dataverse.Record) error {
		if op == "Upsert" && set == "contacts" && len(recs) > 0 && recs[0]["firstname"] == "old" {
			once.Do(func() { close(stalled); <-release })
		}
		return nil
	})
	mk := func(now func() time.Time) *Engine {
		eng, err := New(Options{DV: e.fdv, State: e.st, Settings: e.set, BusyWait: -1, Now: now, LeaseDuration: time.Minute,
			Log: e.eng.log})
		if err != nil {
			t.Fatal(err)
		}
		return eng
	}
	slow := mk(nil)
	later := mk(func() time.Time { return time.Now().Add(time.Hour) }) // sees the slow writer's lease expired
	done := make(chan error, 1)
	go func() {
		done <- e.deliver(slow, state.Customer, customerEvent(t, tmpl, 8, 2, "stall@example.test", func(d map[string]any) { d["firstName"] = "old" }))
	}()
	<-stalled
	if err := e.deliver(later, state.Customer, customerEvent(t, tmpl, 8, 3, "stall@example.test", func(d map[string]any) { d["firstName"] = "new" })); err != nil {
		t.Fatal(err)
	}
	close(release)
	if err := <-done; err != nil {
		t.Fatalf("stalled writer: %v", err)
	}
	if got := e.row("contacts", contactID(1, 8))["firstname"]; got != "new" {
		t.Fatalf("contact firstname %v after the stalled write, want new", got)
	}
	if r := e.rec(state.Customer, 8); r.LastEventID != "cust-8-3" || r.Status != state.Synced || r.LeaseOwner != "" {
		t.Fatalf("state %+v", r)
	}
}

// An event delivered on another entity's queue (a message sent or replayed by hand) is
// acknowledged and listed with the invalid messages, not dropped with a log line only.
func TestEventOnTheWrongQueueListed(t *testing.T) {
	e := newEnv(t, envOptions{})
	ev := customerEvent(t, example(t, "customer-created.json")[0], 42, 1, "x@example.com", nil)
	body, _ := json.Marshal(map[string]json.RawMessage{"evt": ev.Raw})
	if err := e.eng.HandleMessage(e.ctx, "orders", body); err != nil {
		t.Fatal(err)
	}
	docs, err := e.st.ListDocs(e.ctx, InvalidMessageKind)
	if err != nil || len(docs) != 1 || !strings.Contains(string(docs[0].Value), "not for the orders queue") {
		t.Fatalf("invalid messages %v %v, want the message listed with the reason", docs, err)
	}
	if _, err := e.st.Get(e.ctx, state.Customer, "42"); err == nil {
		t.Error("the customer event was applied from the orders queue")
	}
}

// Stale events acknowledged at the same moment by many instances are all counted: the
// count is spread over several docs per entity (with the state in Table Storage, where
// the writers contend; the embedded store when Azurite is not running). A count kept
// under the entity's own key, as before the shards, still adds up.
func TestConcurrentStaleEventsAllCounted(t *testing.T) {
	e := newEnv(t, envOptions{})
	if cs := os.Getenv("TEST_TABLE_CONNECTION_STRING"); cs != "" {
		ts, err := tablestorage.NewFromConnectionString(e.ctx, cs, tablestorage.Options{Table: fmt.Sprintf("stale%d", time.Now().UnixNano())})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { ts.DeleteTable(context.Background()) })
		e.st = &faultStore{Store: ts}
		e.eng = e.engine()
	}
	if err := e.st.SaveDoc(e.ctx, &state.Doc{Kind: staleDocKind, Key: string(state.Customer), Value: []byte(`{"count":3}`)}); err != nil {
		t.Fatal(err)
	}
	tmpl := example(t, "customer-created.json")[0]
	const n = 20
	ev := func(id int, seq int64) *nop.Event {
		return customerEvent(t, tmpl, id, seq, fmt.Sprintf("c%d@example.test", id), nil)
	}
	for i := range n {
		e.each(state.Customer, ev(100+i, 5))
	}
	for round := range 3 {
		before, err := e.eng.StaleSkipped(e.ctx)
		if err != nil {
			t.Fatal(err)
		}
		if round == 0 && before[state.Customer] != 3 {
			t.Fatalf("the count kept before the shards: %d, want 3", before[state.Customer])
		}
		var wg sync.WaitGroup
		start := make(chan struct{})
		for i := range n {
			eng := e.engine() // one instance per session
			wg.Go(func() {
				<-start
				if err := e.deliver(eng, state.Customer, ev(100+i, int64(4-round))); err != nil {
					t.Errorf("stale event: %v", err)
				}
			})
		}
		close(start)
		wg.Wait()
		after, err := e.eng.StaleSkipped(e.ctx)
		if err != nil {
			t.Fatal(err)
		}
		if got := after[state.Customer] - before[state.Customer]; got != n {
			t.Errorf("round %d: %d stale events acknowledged at once, %d counted", round, n, got)
		}
	}
}
