package syncer

import (
	"errors"
	"testing"
	"time"

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
