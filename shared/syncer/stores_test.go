package syncer

import (
	"fmt"
	"math/rand/v2"
	"strings"
	"sync"
	"testing"

	"github.com/nopsync/nopsync/shared/nop"
	"github.com/nopsync/nopsync/shared/state"
)

// sharedEnv is a second app (another STORE_ID) with its own state store, writing into
// e's Dataverse.
func sharedEnv(t *testing.T, e *env) *env {
	e2 := newEnv(t, envOptions{})
	e2.srv, e2.fdv.Dataverse, e2.dv = e.srv, e.dv, e.dv
	e2.eng = e2.engine()
	return e2
}

// storeEvent is ev sent by another store.
func storeEvent(t testing.TB, ev *nop.Event, store int, entity state.Entity) *nop.Event {
	t.Helper()
	s := strings.Replace(string(ev.Raw), `"storeId":1`, fmt.Sprintf(`"storeId":%d`, store), 1)
	if !strings.Contains(s, fmt.Sprintf(`"storeId":%d`, store)) {
		s = strings.Replace(s, `{`, fmt.Sprintf(`{"storeId":%d,`, store), 1)
	}
	evs, err := nop.DecodeRequest(entity, []byte(s))
	if err != nil {
		t.Fatal(err)
	}
	return evs[0]
}

// Two stores in one Dataverse: product numbers are unique across it, and a second store's
// products have the first's ids, so a product without a sku (or whose sku the other store
// holds) gets NOP-<store>-<id> in a store other than the default one, not the first
// store's NOP-<id> (which Dataverse refuses as a duplicate, failing the product and its
// orders for good).
func TestSecondStoreProductNumbers(t *testing.T) {
	e := newEnv(t, envOptions{})
	noSku := func(d map[string]any) { d["sku"] = nil }
	e.each(state.Product, productEvent(t, 7, 1, noSku), productEvent(t, 9, 1, noSku),
		productEvent(t, 3, 1, func(d map[string]any) { d["sku"] = "SHARED" }))
	e2 := sharedEnv(t, e)
	for _, c := range []struct {
		id   int
		data func(d map[string]any)
	}{{7, noSku}, {9, func(d map[string]any) { d["sku"] = "SHARED" }}} {
		if err := e2.deliver(e2.eng, state.Product, storeEvent(t, productEvent(t, c.id, 1, c.data), 2, state.Product)); err != nil {
			t.Fatal(err)
		}
		r := e2.rec(state.Product, c.id)
		if r.Status != state.Synced {
			t.Errorf("store 2's product %d: %s %q", c.id, r.Status, r.Reason)
			continue
		}
		if n := e.row("products", productID(2, c.id))["productnumber"]; n != fmt.Sprintf("NOP-2-%d", c.id) {
			t.Errorf("store 2's product %d: productnumber %v, want NOP-2-%d", c.id, n, c.id)
		}
	}
	if n := e.row("products", productID(1, 7))["productnumber"]; n != "NOP-7" {
		t.Errorf("store 1's product 7: productnumber %v, want NOP-7 as before", n)
	}
}

// nopCommerce shares customers between the stores of an install: the customer sent under
// another storeId (a second deployment reading the same install, or one deployment hearing
// both stores) with its email is the contact it already has, not a second one; the same
// after the state was wiped.
func TestCustomerUnderTwoStoreIDsIsOneContact(t *testing.T) {
	e := newEnv(t, envOptions{})
	tmpl := example(t, "customer-created.json")[0]
	e.each(state.Customer, customerEvent(t, tmpl, 5, 1, "same@example.test", nil))
	e2 := sharedEnv(t, e)
	ev := storeEvent(t, customerEvent(t, tmpl, 5, 2, "same@example.test", func(d map[string]any) { d["firstName"] = "Again" }), 2, state.Customer)
	if err := e2.deliver(e2.eng, state.Customer, ev); err != nil {
		t.Fatal(err)
	}
	if r := e2.rec(state.Customer, 5); !strings.EqualFold(r.DataverseID, contactID(1, 5)) {
		t.Errorf("customer 5 under storeId 2 -> %s %q, want the contact it has, %s", r.DataverseID, r.Reason, contactID(1, 5))
	}
	e2.wipe()
	e2.each(state.Customer, storeEvent(t, customerEvent(t, tmpl, 5, 3, "same@example.test", nil), 2, state.Customer))
	if n := len(e.srv.Rows("contacts")); n != 1 {
		t.Errorf("%d contacts for one customer heard under two storeIds, want 1", n)
	}
}

// A product without a sku heard under two storeIds by one deployment keeps the number it
// was written with: not NOP-9 and NOP-2-9 in turn, each a write.
func TestProductFallbackNumberStableAcrossStoreIDs(t *testing.T) {
	e := newEnv(t, envOptions{})
	noSku := func(d map[string]any) { d["sku"] = nil }
	for seq, store := range []int{1, 2, 1, 2} {
		e.each(state.Product, storeEvent(t, productEvent(t, 9, int64(seq+1), noSku), store, state.Product))
		if n := e.row("products", productID(1, 9))["productnumber"]; n != "NOP-9" {
			t.Fatalf("after event %d (storeId %d): productnumber %v, want NOP-9 throughout", seq+1, store, n)
		}
	}
}

// The first event after a wiped state that removes a customer's company takes the contact
// out of the account the app had put it under (docs/dataverse-mapping.md: "cleared when it
// is removed"), alone and in an array, though the state no longer says it set one.
func TestCompanyRemovedAfterAWipe(t *testing.T) {
	for _, bulk := range []bool{false, true} {
		t.Run(fmt.Sprintf("bulk=%v", bulk), func(t *testing.T) {
			e := newEnv(t, envOptions{})
			tmpl := example(t, "customer-created.json")[0]
			e.each(state.Customer, customerEvent(t, tmpl, 6, 1, "six@example.test", func(d map[string]any) { d["company"] = "Acme Ltd" }))
			if p, _ := e.row("contacts", contactID(1, 6))["_parentcustomerid_value"].(string); p == "" {
				t.Fatal("the contact has no parent account to begin with")
			}
			e.wipe()
			v2 := customerEvent(t, tmpl, 6, 2, "six@example.test", func(d map[string]any) { d["company"] = nil; d["firstName"] = "NoCompany" })
			if bulk {
				if err := e.deliver(e.eng, state.Customer, v2, customerEvent(t, tmpl, 7, 1, "seven@example.test", nil)); err != nil {
					t.Fatal(err)
				}
			} else {
				e.each(state.Customer, v2)
			}
			c := e.row("contacts", contactID(1, 6))
			if c["firstname"] != "NoCompany" {
				t.Fatal("the event was not applied")
			}
			if p, _ := c["_parentcustomerid_value"].(string); p != "" {
				t.Errorf("company removed in the store, the contact is still under account %s", p)
			}
		})
	}
}

// wipe gives e a fresh state store and engine, as after the state table was deleted.
func (e *env) wipe() {
	e.wipeState()
	e.eng = e.engine()
}

// guestOrder is a placed order of a guest (no account, known by the billing email) sent
// under storeId store.
func guestOrder(t *testing.T, id, store, customerID int, email string) *nop.Event {
	t.Helper()
	o := genOrder(rand.New(rand.NewPCG(uint64(id), 7)), id, genOptions{Round: true})
	o.Customer = nop.Customer{ID: customerID, CustomerGUID: fmt.Sprintf("00000000-0000-4000-9000-%012d", customerID), IsGuest: true, Active: true}
	o.BillingAddress.Email, o.BillingAddress.FirstName, o.BillingAddress.LastName = genPtr(email), genPtr("Bob"), genPtr("Jones")
	evs, err := nop.DecodeRequest(state.Order, orderEvent(t, o, "order.placed", 1))
	if err != nil {
		t.Fatal(err)
	}
	if store == 1 {
		return evs[0]
	}
	return storeEvent(t, evs[0], store, state.Order)
}

// One guest email ordering in store 1 and in store 2 gets one contact, also when both
// orders come in one import array or are written at the same moment by two workers (a
// guest contact's id no longer depends on the store; before, each store made its own).
func TestGuestOneContactAcrossStores(t *testing.T) {
	contactOf := func(h *env, store, id int) string {
		so := h.salesOrder(store, id)
		if so == nil {
			t.Fatalf("store %d order %d: no salesorder", store, id)
		}
		return fmt.Sprint(so["_customerid_value"])
	}
	t.Run("one array", func(t *testing.T) {
		h := newOrderHarness(t, harnessOptions{})
		if err := h.deliver(h.eng, state.Order, guestOrder(t, 9201, 1, 601, "bob@example.test"), guestOrder(t, 9202, 2, 602, "bob@example.test")); err != nil {
			t.Fatal(err)
		}
		if n := len(h.where("contacts", "emailaddress1", "bob@example.test")); n != 1 {
			t.Errorf("%d contacts for one guest email in two stores, want 1", n)
		}
		if a, b := contactOf(h, 1, 9201), contactOf(h, 2, 9202); a != b {
			t.Errorf("the stores' orders point at %s and %s", a, b)
		}
	})
	t.Run("at once", func(t *testing.T) {
		h := newOrderHarness(t, harnessOptions{})
		const n = 12
		var wg sync.WaitGroup
		for i := range n {
			for store := 1; store <= 2; store++ {
				ev := guestOrder(t, 9300+10*i+store, store, 700+10*i+store, fmt.Sprintf("race%d@example.test", i))
				wg.Add(1)
				go func() {
					defer wg.Done()
					if err := h.deliver(h.eng, state.Order, ev); err != nil {
						t.Errorf("delivery: %v", err)
					}
				}()
			}
		}
		wg.Wait()
		for i := range n {
			if c := len(h.where("contacts", "emailaddress1", fmt.Sprintf("race%d@example.test", i))); c != 1 {
				t.Errorf("race%d@example.test: %d contacts, want 1", i, c)
			}
		}
	})
}

// A guest's contact, adopted when the guest registered, is deactivated when that customer
// is deleted; a new guest order with the email gets a contact of its own, not the deleted
// customer's (docs/dataverse-mapping.md: a deleted customer is never matched by email
// again): on another instance (nothing cached), on the instance that cached the guest's
// contact, and after a wipe (the record of the release gone: the contact is inactive).
// Before, the order's guest was written over the deactivated contact and the order pointed
// at it; one by one and in an array alike.
func TestGuestAfterTheRegisteredCustomerWasDeleted(t *testing.T) {
	for _, where := range []string{"another instance", "same instance", "after a wipe"} {
		for _, bulk := range []bool{false, true} {
			t.Run(fmt.Sprintf("%s/bulk=%v", where, bulk), func(t *testing.T) {
				h := newOrderHarness(t, harnessOptions{})
				tmpl := example(t, "customer-created.json")[0]
				h.each(state.Order, guestOrder(t, 9702, 1, 1103, "was.guest@example.test"))
				guest := h.salesOrder(1, 9702)["_customerid_value"]
				h.each(state.Customer, customerEvent(t, tmpl, 1103, 1, "was.guest@example.test", nil))
				h.each(state.Customer, customerEvent(t, tmpl, 1103, 2, "was.guest@example.test", func(d map[string]any) { d["deleted"] = true }))
				if c := h.row("contacts", fmt.Sprint(guest)); numOf(c["statecode"]) == 0 {
					t.Fatalf("the deleted customer's contact %v (the guest's, adopted) is still active", guest)
				}
				eng := h.eng
				switch where {
				case "another instance":
					eng = h.engine()
				case "after a wipe":
					h.wipeState()
					h.eng = h.engine()
					eng = h.eng
				}
				evs := []*nop.Event{guestOrder(t, 9703, 1, 1104, "was.guest@example.test")}
				if bulk {
					evs = append(evs, guestOrder(t, 9704, 1, 1105, "was.guest@example.test"))
				}
				if err := h.deliver(eng, state.Order, evs...); err != nil {
					t.Fatal(err)
				}
				for _, ev := range evs {
					so := h.salesOrder(1, ev.Order.ID)
					if so == nil {
						t.Fatalf("order %d: no salesorder (%q)", ev.Order.ID, h.record(ev.Order.ID).Reason)
					}
					c := h.row("contacts", fmt.Sprint(so["_customerid_value"]))
					if numOf(c["statecode"]) != 0 || strings.EqualFold(fmt.Sprint(c["contactid"]), fmt.Sprint(guest)) {
						t.Errorf("order %d points at contact %v (state %v), the deleted customer's was %v", ev.Order.ID, c["contactid"], c["statecode"], guest)
					}
				}
			})
		}
	}
}

// A deployment that wrote a store-2 guest's contact under the store-2 id (guest ids were
// per store before they were one across stores), beside another active contact with the
// same email (a registered customer's or an admin's): the guest's new store-2 orders keep
// pointing at its contact; the two are not taken for an ambiguous email with a third
// contact created.
func TestGuestContactUnderItsStoresEarlierID(t *testing.T) {
	for _, bulk := range []bool{false, true} {
		t.Run(fmt.Sprintf("bulk=%v", bulk), func(t *testing.T) {
			h := newOrderHarness(t, harnessOptions{})
			const email = "shared@example.test"
			g2 := deterministicID(2, "contact", "guest:"+email)
			if _, err := h.srv.Insert("contacts", map[string]any{"contactid": g2, "lastname": "Jones", "firstname": "Bob",
				"emailaddress1": email, "description": "nopCommerce guest (customer 801)"}); err != nil {
				t.Fatal(err)
			}
			if _, err := h.srv.Insert("contacts", map[string]any{"lastname": "Other", "emailaddress1": email}); err != nil {
				t.Fatal(err)
			}
			evs := []*nop.Event{guestOrder(t, 9801, 2, 801, email)}
			if bulk {
				evs = append(evs, guestOrder(t, 9802, 2, 802, email))
			}
			if err := h.deliver(h.eng, state.Order, evs...); err != nil {
				t.Fatal(err)
			}
			if n := len(h.where("contacts", "emailaddress1", email)); n != 2 {
				t.Errorf("%d contacts with the email, want the 2 there were", n)
			}
			for _, ev := range evs {
				if got := fmt.Sprint(h.salesOrder(2, ev.Order.ID)["_customerid_value"]); !strings.EqualFold(got, g2) {
					t.Errorf("order %d points at %s, want the guest's store-2 contact %s", ev.Order.ID, got, g2)
				}
			}
		})
	}
}

// A guest's first order costs one look-up of contacts with an email (the email's active
// contacts and the guest's own row, active or not, in one query) and none without one.
func TestGuestFirstOrderLookups(t *testing.T) {
	gets := func(h *env) int {
		n := 0
		for k, v := range h.srv.Stats().Operations {
			if k == "GET contacts" || k == "GET contacts()" {
				n += v.Requests
			}
		}
		return n
	}
	for _, withEmail := range []bool{true, false} {
		t.Run(fmt.Sprintf("email=%v", withEmail), func(t *testing.T) {
			h := newOrderHarness(t, harnessOptions{})
			h.each(state.Order, guestOrder(t, 9860, 1, 860, "first.warm@example.test")) // the shared rows read
			email, want := "", 0
			if withEmail {
				email, want = "first.time@example.test", 1
			}
			before := gets(h)
			h.each(state.Order, guestOrder(t, 9861, 1, 861, email))
			if got := gets(h) - before; got != want {
				t.Errorf("a new guest's first order: %d GET contacts, want %d", got, want)
			}
		})
	}
}

// New guests' first orders, one by one and in an array: their contacts do not exist, so
// no record of a released contact is read (one state read per new guest on an import's
// hot path otherwise); their contacts are made, one per guest.
func TestNewGuestsReadNoReleaseRecords(t *testing.T) {
	for _, bulk := range []bool{false, true} {
		t.Run(fmt.Sprintf("bulk=%v", bulk), func(t *testing.T) {
			h := newOrderHarness(t, harnessOptions{})
			h.each(state.Order, guestOrder(t, 9870, 1, 870, "warm.up@example.test")) // the shared rows read
			var evs []*nop.Event
			for k := 1; k <= 5; k++ {
				evs = append(evs, guestOrder(t, 9870+k, 1, 870+k, fmt.Sprintf("new.guest%d@example.test", k)))
			}
			before := h.st.docReadsOf(releasedContactKind)
			if bulk {
				if err := h.deliver(h.eng, state.Order, evs...); err != nil {
					t.Fatal(err)
				}
			} else {
				h.each(state.Order, evs...)
			}
			if n := h.st.docReadsOf(releasedContactKind) - before; n != 0 {
				t.Errorf("5 new guests' orders read %d records of released contacts, want 0", n)
			}
			for _, ev := range evs {
				if r := h.record(ev.Order.ID); r.Status != state.Synced {
					t.Errorf("order %d: %s %q", ev.Order.ID, r.Status, r.Reason)
				}
			}
			if n := h.srv.Count("contacts"); n != 6 {
				t.Errorf("%d contacts, want 6 (one per guest)", n)
			}
		})
	}
}
