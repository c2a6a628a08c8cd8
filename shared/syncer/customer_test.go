package syncer

import (
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"strconv"
	"strings"
	"testing"

	"github.com/nopsync/nopsync/shared/dataverse"
	"github.com/nopsync/nopsync/shared/nop"
	"github.com/nopsync/nopsync/shared/state"
)

// The example customer becomes a contact with the mapped columns and its
// company as parent account.
func TestCustomerExampleBecomesContact(t *testing.T) {
	e := newEnv(t, envOptions{})
	ev := mkEvent(t, example(t, "customer-created.json")[0], "c1", 0, nil)
	e.each(state.Customer, ev)

	rec := e.rec(state.Customer, 42)
	if rec.Status != state.Synced || rec.DataverseID != contactID(1, 42) {
		t.Fatalf("state = %s %q id %s, want synced with the deterministic id", rec.Status, rec.Reason, rec.DataverseID)
	}
	c := e.row("contacts", contactID(1, 42))
	want := map[string]string{
		"firstname": "Ada", "lastname": "Lovelace", "emailaddress1": "ada.lovelace@example.com",
		"telephone1": "+44 20 7946 0001", "address1_line1": "12 St James's Square", "address1_city": "London",
		"address1_postalcode": "SW1Y 4JH", "address1_country": "United Kingdom", "description": "nopCommerce customer 42",
	}
	for col, v := range want {
		if c[col] != v {
			t.Errorf("contact %s = %v, want %q", col, c[col], v)
		}
	}
	if _, ok := c["address1_line2"]; ok {
		t.Errorf("address1_line2 = %v, want null", c["address1_line2"])
	}
	accounts := e.where("accounts", "name", "Analytical Engines Ltd")
	if len(accounts) != 1 {
		t.Fatalf("%d accounts named after the company, want 1", len(accounts))
	}
	if got := c["_parentcustomerid_value"]; !strings.EqualFold(fmt.Sprint(got), accounts[0]["accountid"].(string)) {
		t.Errorf("parent = %v, want the company's account %v", got, accounts[0]["accountid"])
	}
}

// Only registered non-guest customers with an email become contacts.
func TestCustomerSkippedWithReason(t *testing.T) {
	e := newEnv(t, envOptions{})
	tmpl := example(t, "customer-created.json")[0]
	cases := []struct {
		id     int
		data   func(d map[string]any)
		reason string
	}{
		{1, func(d map[string]any) { d["isGuest"] = true; d["isRegistered"] = false; d["email"] = nil }, "guest"},
		{2, func(d map[string]any) { d["isRegistered"] = false }, "not a registered"},
		{3, func(d map[string]any) { d["email"] = nil }, "no email"},
	}
	for _, c := range cases {
		e.each(state.Customer, customerEvent(t, tmpl, c.id, 1, fmt.Sprintf("c%d@example.test", c.id), c.data))
		rec := e.rec(state.Customer, c.id)
		if rec.Status != state.Skipped || !strings.Contains(rec.Reason, c.reason) {
			t.Errorf("customer %d: %s %q, want skipped mentioning %q", c.id, rec.Status, rec.Reason, c.reason)
		}
	}
	if n := e.srv.Count("contacts"); n != 0 {
		t.Errorf("%d contacts written for skipped customers", n)
	}
}

// Company removed → parent cleared; changed → another account (found by
// name case-insensitively, not duplicated).
func TestCustomerCompanyChangesAndClears(t *testing.T) {
	e := newEnv(t, envOptions{})
	existing, err := e.dv.Create(e.ctx, "accounts", dataverse.Record{"name": "Difference Engines"})
	if err != nil {
		t.Fatal(err)
	}
	tmpl := example(t, "customer-created.json")[0]
	e.each(state.Customer, customerEvent(t, tmpl, 7, 1, "c7@example.test", func(d map[string]any) { d["company"] = "DIFFERENCE engines" }))
	c := e.row("contacts", contactID(1, 7))
	if !strings.EqualFold(c["_parentcustomerid_value"].(string), existing) {
		t.Fatalf("parent = %v, want the existing account %s", c["_parentcustomerid_value"], existing)
	}
	if n := e.srv.Count("accounts"); n != 1 {
		t.Fatalf("%d accounts, want the existing one only", n)
	}
	e.each(state.Customer, customerEvent(t, tmpl, 7, 2, "c7@example.test", func(d map[string]any) { d["company"] = nil }))
	c = e.row("contacts", contactID(1, 7))
	if v, ok := c["_parentcustomerid_value"]; ok {
		t.Fatalf("parent = %v after the company was removed, want none", v)
	}
}

// The one active contact with the email is adopted (and kept); with two
// the app creates its own and records the ambiguity.
func TestCustomerAdoptionByEmail(t *testing.T) {
	e := newEnv(t, envOptions{})
	tmpl := example(t, "customer-created.json")[0]
	adopt, err := e.dv.Create(e.ctx, "contacts", dataverse.Record{"lastname": "Typed in", "emailaddress1": "Grace@Example.test"})
	if err != nil {
		t.Fatal(err)
	}
	for _, email := range []string{"twice@example.test", "TWICE@example.test"} {
		if _, err := e.dv.Create(e.ctx, "contacts", dataverse.Record{"lastname": "Dup", "emailaddress1": email}); err != nil {
			t.Fatal(err)
		}
	}
	e.each(state.Customer,
		customerEvent(t, tmpl, 1, 1, "grace@example.test", nil),
		customerEvent(t, tmpl, 2, 1, "twice@example.test", nil))

	r1 := e.rec(state.Customer, 1)
	if !strings.EqualFold(r1.DataverseID, adopt) || r1.Extra[extraAdoptedFrom] == "" {
		t.Fatalf("customer 1 → %s (extra %v), want the adopted contact %s", r1.DataverseID, r1.Extra, adopt)
	}
	if got := e.row("contacts", adopt)["lastname"]; got != "Lovelace" {
		t.Errorf("adopted contact lastname = %v, want the store's", got)
	}
	r2 := e.rec(state.Customer, 2)
	if r2.DataverseID != contactID(1, 2) || r2.Extra[extraAmbiguousEmail] != "2" || !strings.Contains(r2.Reason, "2 active contacts") {
		t.Fatalf("customer 2 → %s extra %v reason %q, want its own contact and the ambiguity recorded", r2.DataverseID, r2.Extra, r2.Reason)
	}
	// Updates change the same rows.
	e.each(state.Customer, customerEvent(t, tmpl, 1, 2, "grace@example.test", func(d map[string]any) { d["firstName"] = "Grace" }))
	if got := e.row("contacts", adopt)["firstname"]; got != "Grace" {
		t.Errorf("adopted contact not updated: firstname %v", got)
	}
	if n := e.srv.Count("contacts"); n != 4 {
		t.Errorf("%d contacts, want 4 (3 typed in + 1 of ours)", n)
	}
}

// DELETE_POLICY for customers, and a deleted customer's contact is never
// matched by email again.
func TestCustomerDeletePolicies(t *testing.T) {
	tmpl := example(t, "customer-created.json")[0]
	deleted := func(d map[string]any) { d["deleted"] = true; d["email"] = "x@example.test-DELETED" }

	t.Run("deactivate", func(t *testing.T) {
		e := newEnv(t, envOptions{})
		e.each(state.Customer, customerEvent(t, tmpl, 5, 1, "x@example.test", nil),
			customerEvent(t, tmpl, 5, 2, "x@example.test", deleted))
		c := e.row("contacts", contactID(1, 5))
		if numOf(c["statecode"]) != 1 || numOf(c["statuscode"]) != 2 {
			t.Fatalf("contact state %v/%v, want 1/2", c["statecode"], c["statuscode"])
		}
		// A new customer with the same email gets its own contact.
		e.each(state.Customer, customerEvent(t, tmpl, 6, 1, "x@example.test", nil))
		if got := e.rec(state.Customer, 6).DataverseID; got != contactID(1, 6) {
			t.Fatalf("new customer → %s, want its own contact", got)
		}
	})
	t.Run("ignore", func(t *testing.T) {
		e := newEnv(t, envOptions{settings: func(s *Settings) { s.DeletePolicy = "ignore" }})
		e.each(state.Customer, customerEvent(t, tmpl, 5, 1, "x@example.test", nil),
			customerEvent(t, tmpl, 5, 2, "x@example.test", deleted))
		c := e.row("contacts", contactID(1, 5))
		if numOf(c["statecode"]) != 0 {
			t.Fatalf("ignore changed the contact state to %v", c["statecode"])
		}
		if r := e.rec(state.Customer, 5); r.Status != state.Skipped {
			t.Fatalf("state %s, want skipped", r.Status)
		}
		// The contact is still active, yet never adopted by a new customer with its email.
		e.each(state.Customer, customerEvent(t, tmpl, 6, 1, "x@example.test", nil))
		if got := e.rec(state.Customer, 6).DataverseID; got != contactID(1, 6) {
			t.Fatalf("new customer → %s, want its own contact, not the deleted customer's", got)
		}
	})
	t.Run("delete", func(t *testing.T) {
		e := newEnv(t, envOptions{settings: func(s *Settings) { s.DeletePolicy = "delete" }})
		e.each(state.Customer, customerEvent(t, tmpl, 5, 1, "x@example.test", nil),
			customerEvent(t, tmpl, 5, 2, "x@example.test", deleted))
		if _, ok := e.srv.Row("contacts", contactID(1, 5)); ok {
			t.Fatal("contact still there with DELETE_POLICY=delete")
		}
	})
	t.Run("delete refused because orders point at it", func(t *testing.T) {
		e := newEnv(t, envOptions{settings: func(s *Settings) { s.DeletePolicy = "delete" }})
		e.each(state.Customer, customerEvent(t, tmpl, 42, 1, "ada.lovelace@example.com", nil))
		e.each(state.Order, mkEvent(t, example(t, "order-placed.json")[0], "o1", 0, nil))
		e.each(state.Customer, customerEvent(t, tmpl, 42, 9, "ada.lovelace@example.com", deleted))
		c := e.row("contacts", contactID(1, 42))
		if numOf(c["statecode"]) != 1 {
			t.Fatalf("contact state %v, want deactivated after the refused delete", c["statecode"])
		}
		if r := e.rec(state.Customer, 42); !strings.Contains(r.Reason, "refused") {
			t.Errorf("reason %q, want the refusal recorded", r.Reason)
		}
	})
}

// ensureContact (used by orders): a guest is matched by the billing email like anyone
// else (here the registered customer's contact), a new guest email gets one contact for
// all its orders, and an unsynced registered customer gets the contact its own event
// will update.
func TestEnsureContactForOrders(t *testing.T) {
	e := newEnv(t, envOptions{})
	tmpl := example(t, "customer-created.json")[0]
	e.each(state.Customer, customerEvent(t, tmpl, 1, 1, "known@example.test", nil))
	s := func(v string) *string { return &v }
	guest := &nop.Customer{ID: 500, IsGuest: true}
	id, err := e.eng.customers.ensureContact(e.ctx, 1, guest, &nop.Address{Email: s("KNOWN@example.test"), LastName: s("Other")})
	if err != nil || id != contactID(1, 1) {
		t.Fatalf("guest with a known email → %s %v, want the customer's contact", id, err)
	}
	var ids []string
	for i := 0; i < 2; i++ {
		g := &nop.Customer{ID: 600 + i, IsGuest: true}
		id, err := e.eng.customers.ensureContact(e.ctx, 1, g, &nop.Address{Email: s("new.guest@example.test"), FirstName: s("Grace"), LastName: s("Hopper")})
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, id)
	}
	if ids[0] != ids[1] || len(e.where("contacts", "emailaddress1", "new.guest@example.test")) != 1 {
		t.Fatalf("two orders of one guest email → %v", ids)
	}
	if c := e.row("contacts", ids[0]); c["lastname"] != "Hopper" || c["firstname"] != "Grace" {
		t.Fatalf("guest contact %v", c)
	}
	reg := &nop.Customer{ID: 700, IsRegistered: true, Email: s("later@example.test"), LastName: s("Later")}
	id, err = e.eng.customers.ensureContact(e.ctx, 1, reg, nil)
	if err != nil || id != contactID(1, 700) {
		t.Fatalf("unsynced registered customer → %s %v", id, err)
	}
	if r := e.rec(state.Customer, 700); r.DataverseID != id {
		t.Fatalf("state not remembered: %+v", r)
	}
	e.each(state.Customer, customerEvent(t, tmpl, 700, 1, "later@example.test", nil))
	if r := e.rec(state.Customer, 700); r.DataverseID != id || e.row("contacts", id)["lastname"] != "Lovelace" {
		t.Fatalf("customer event after the order: %+v", r)
	}
}

// DELETE_POLICY=delete deleted a customer's contact, then an older order of that customer
// arrives (orders and customers travel on different queues). In business order the order
// comes first, the delete is refused and the contact deactivated: the same lands now, the
// contact written again from the order's copy, deactivated, and the order on it. (The
// order failed for good with a 404 on the contact.) The same when the customer was never
// synced before its delete (an initial import reads a deleted customer before its
// orders), and when the orders come in an array (a chunk reads its customers' state
// ahead: a record whose contact was deleted must not be taken as the contact).
func TestOrderAfterItsCustomersDeleteLands(t *testing.T) {
	for _, synced := range []bool{true, false} {
		for _, orders := range []int{0, 1, 2} { // 0: one order alone; 1, 2: a chunk of that many
			t.Run(fmt.Sprintf("synced=%v/chunk=%d", synced, orders), func(t *testing.T) { orderAfterCustomersDelete(t, synced, orders) })
		}
	}
}

func orderAfterCustomersDelete(t *testing.T, synced bool, chunk int) {
	e := newEnv(t, envOptions{settings: func(s *Settings) { s.DeletePolicy = "delete" }})
	tmpl := example(t, "customer-created.json")[0]
	if synced {
		e.each(state.Customer, customerEvent(t, tmpl, 42, 1, "ada.lovelace@example.com", nil))
	}
	e.each(state.Customer, customerEvent(t, tmpl, 42, 2, "ada.lovelace@example.com", func(d map[string]any) { d["deleted"] = true }))
	if _, ok := e.srv.Row("contacts", contactID(1, 42)); ok {
		t.Fatal("the contact was not deleted")
	}
	ids := []int{1001}
	if chunk == 0 {
		e.each(state.Order, mkEvent(t, example(t, "order-placed.json")[0], "o1", 0, nil))
	} else {
		var raws []json.RawMessage
		for k := range chunk {
			id := 1001 + k
			if k > 0 {
				ids = append(ids, id)
			}
			raws = append(raws, mkEvent(t, example(t, "order-placed.json")[0], fmt.Sprintf("o%d", id), 0, func(d map[string]any) {
				d["id"] = id
				d["customOrderNumber"] = strconv.Itoa(id)
				d["orderGuid"] = fmt.Sprintf("00000000-0000-4000-8000-%012d", id)
			}).Raw)
		}
		body, _ := json.Marshal(map[string]any{"chunk": map[string]any{"id": "c1", "events": raws}})
		if err := e.eng.HandleMessage(e.ctx, "orders", body); err != nil {
			t.Fatal(err)
		}
	}
	c, ok := e.srv.Row("contacts", contactID(1, 42))
	if !ok || numOf(c["statecode"]) != 1 {
		t.Fatalf("contact %v (present %v), want it written again, deactivated", c, ok)
	}
	for _, id := range ids {
		so, ok := e.srv.Row("salesorders", salesOrderID(1, id))
		if !ok || so["_customerid_value"] != contactID(1, 42) {
			t.Fatalf("salesorder %d %v, want it on the contact", id, so)
		}
		if r := e.rec(state.Order, id); r.Status != state.Synced {
			t.Errorf("order %d %s %q", id, r.Status, r.Reason)
		}
	}
	// The customer's delete, replayed, leaves it as it is.
	e.each(state.Customer, customerEvent(t, tmpl, 42, 2, "ada.lovelace@example.com", func(d map[string]any) { d["deleted"] = true }))
	if c, ok := e.srv.Row("contacts", contactID(1, 42)); !ok || numOf(c["statecode"]) != 1 {
		t.Errorf("after the delete's replay: contact %v (present %v)", c, ok)
	}
}

// An email longer than a contact's emailaddress1 (100) is not cut into an address that
// does not exist: the customer fails for good with the reason the store reader gives,
// alone and in an array; the other customers of the array land.
func TestCustomerEmailOverContactLength(t *testing.T) {
	tmpl := example(t, "customer-created.json")[0]
	long := strings.Repeat("a", 95) + ".first@example.com"
	for _, bulk := range []bool{false, true} {
		t.Run(fmt.Sprintf("bulk=%v", bulk), func(t *testing.T) {
			e := newEnv(t, envOptions{})
			evs := []*nop.Event{customerEvent(t, tmpl, 501, 1, long, nil), customerEvent(t, tmpl, 502, 1, "ok@example.com", nil)}
			if bulk {
				if err := e.deliver(e.eng, state.Customer, evs...); err != nil {
					t.Fatal(err)
				}
			} else {
				e.each(state.Customer, evs...)
			}
			rec := e.rec(state.Customer, 501)
			if rec.Status != state.Failed || !strings.Contains(rec.Reason, "email is 113 characters") {
				t.Errorf("customer 501: %s %q, want failed with the reason", rec.Status, rec.Reason)
			}
			if _, ok := e.srv.Row("contacts", contactID(1, 501)); ok {
				t.Error("a contact was written with a cut email")
			}
			if rec := e.rec(state.Customer, 502); rec.Status != state.Synced {
				t.Errorf("customer 502: %s %q, want synced", rec.Status, rec.Reason)
			}
		})
	}
}

// An order that writes its customer's contact records the customer as the order left it:
// a failed save of that record fails the order transiently (its redelivery writes the
// contact again), rather than leaving the customer "being written from an order" for
// good with nothing to re-send; a contact the order could not write says why.
func TestContactWrittenFromOrderRecorded(t *testing.T) {
	h := newOrderHarness(t, harnessOptions{})
	r := rand.New(rand.NewPCG(51, 52))
	o := genOrder(r, 9101, genOptions{Round: true})
	cid := o.Customer.ID
	h.st.failSave(func(rec *state.Record) bool {
		return rec.Entity == state.Customer && rec.LeaseOwner == "" && rec.DataverseID != ""
	})
	evs, err := nop.DecodeRequest(state.Order, orderEvent(t, o, "order.placed", 1))
	if err != nil {
		t.Fatal(err)
	}
	if err := h.send(evs[0]); err == nil || !isTransient(err) {
		t.Fatalf("order whose customer's record could not be saved: %v, want a transient failure", err)
	}
	h.st.failSave(nil)

	// A long email: the contact can't be written; the customer's record says why.
	o2 := genOrder(r, 9102, genOptions{Round: true})
	o2.Customer.ID = cid + 1000
	o2.Customer.IsGuest, o2.Customer.IsRegistered = false, true
	o2.Customer.Email = genPtr(strings.Repeat("c", 101) + "@example.com")
	evs, err = nop.DecodeRequest(state.Order, orderEvent(t, o2, "order.placed", 1))
	if err != nil {
		t.Fatal(err)
	}
	_ = h.send(evs[0])
	crec, err := h.st.Get(h.ctx, state.Customer, itoa(o2.Customer.ID))
	if err != nil || crec.Status != state.Failed || !strings.Contains(crec.Reason, "email is 113 characters") {
		t.Errorf("customer %d: %v %+v, want failed with the reason its contact was not written", o2.Customer.ID, err, crec)
	}
}

// A customer an order failed to write (a 503) says so; the order's redelivery writes the
// contact and the customer's record says synced, "written from an order", not the old
// failure.
func TestContactWrittenFromOrderAfterAFailure(t *testing.T) {
	h := newOrderHarness(t, harnessOptions{})
	r := rand.New(rand.NewPCG(53, 54))
	o := genOrder(r, 9103, genOptions{Round: true})
	o.Customer.IsGuest, o.Customer.IsRegistered = false, true
	evs, err := nop.DecodeRequest(state.Order, orderEvent(t, o, "order.placed", 1))
	if err != nil {
		t.Fatal(err)
	}
	h.fdv.failBefore("Upsert contacts", 100)
	if err := h.send(evs[0]); err == nil {
		t.Fatal("the order landed though its customer's contact could not be written")
	}
	crec, err := h.st.Get(h.ctx, state.Customer, itoa(o.Customer.ID))
	if err != nil || crec.Status != state.Failed || !strings.Contains(crec.Reason, "writing it for an order failed") {
		t.Fatalf("customer after the failed write: %v %+v", err, crec)
	}
	h.fdv.failBefore("Upsert contacts", 0)
	if err := h.send(evs[0]); err != nil {
		t.Fatalf("redelivery: %v", err)
	}
	crec, err = h.st.Get(h.ctx, state.Customer, itoa(o.Customer.ID))
	if err != nil || crec.Status != state.Synced || crec.DataverseID == "" {
		t.Errorf("customer after the order's redelivery: %v %+v, want synced with its contact", err, crec)
	}
}
