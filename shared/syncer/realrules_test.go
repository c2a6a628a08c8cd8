package syncer

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nopsync/nopsync/shared/dataverse"
	"github.com/nopsync/nopsync/shared/dataverse/dataversetest"
	"github.com/nopsync/nopsync/shared/nop"
	"github.com/nopsync/nopsync/shared/state"
)

// oneChunk hands evs to the engine as one chunk message, the way a queue delivers an
// import chunk (bodies of this size come from smaller events than these test events).
func (e *env) oneChunk(entity state.Entity, evs []*nop.Event) {
	e.t.Helper()
	ids := make([]string, len(evs))
	raws := make([]string, len(evs))
	for i, ev := range evs {
		ids[i], raws[i] = ev.ID, string(ev.Raw)
	}
	body := `{"chunk":{"id":"` + nop.ChunkID(ids) + `","events":[` + strings.Join(raws, ",") + `]}}`
	if err := e.eng.HandleMessage(e.ctx, string(entity)+"s", []byte(body)); err != nil {
		e.t.Fatalf("chunk: %v", err)
	}
}

// A query holds at most 500 conditions (filter-rows, "Condition limits"): the look-ups of
// a 1000-event chunk with short product numbers or short emails fit the URL budget with
// far more than 500 conditions, and must be split by count too.
func TestChunkLookupsStayUnder500Conditions(t *testing.T) {
	e := newEnv(t, envOptions{})
	const n = 1000
	var prods []*nop.Event
	for i := 1; i <= n; i++ {
		prods = append(prods, mkEvent(t, example(t, "product-simple.json")[0], fmt.Sprintf("p%d", i), 1, func(d map[string]any) {
			d["id"], d["sku"], d["name"] = i, fmt.Sprintf("S%d", i), "P"
			d["shortDescription"], d["pictureUrls"] = nil, []any{}
		}))
	}
	e.oneChunk(state.Product, prods)
	var custs []*nop.Event
	for i := 1; i <= n; i++ {
		custs = append(custs, mkEvent(t, example(t, "customer-created.json")[0], fmt.Sprintf("c%d", i), 1, func(d map[string]any) {
			d["id"], d["email"], d["username"] = i, fmt.Sprintf("c%d@x.io", i), fmt.Sprintf("c%d", i)
			d["company"], d["phone"], d["address"], d["firstName"] = nil, nil, nil, nil
		}))
	}
	e.oneChunk(state.Customer, custs)
	for _, ent := range []state.Entity{state.Product, state.Customer} {
		failed := 0
		var reason string
		for i := 1; i <= n; i++ {
			if r := e.rec(ent, i); r.Status != state.Synced {
				failed++
				reason = r.Reason
			}
		}
		if failed > 0 {
			t.Errorf("%d of %d %ss not synced, e.g. %s", failed, n, ent, reason)
		}
	}
}

// Dynamics 365 won't retire a product that is in a price list
// (CannotRetireProductFromActiveBundle): the app takes the product's price list item away
// before retiring it, and brings it back when the store publishes the product again.
func TestProductRetireLeavesThePriceListFirst(t *testing.T) {
	for _, bulk := range []bool{false, true} {
		t.Run(fmt.Sprintf("bulk=%v", bulk), func(t *testing.T) {
			e := newEnv(t, envOptions{})
			send := func(seq int64, data func(d map[string]any)) {
				t.Helper()
				evs := []*nop.Event{productEvent(t, 3, seq, data)}
				if bulk { // a chunk: the product with another one
					evs = append(evs, productEvent(t, 100+int(seq), 1, nil))
				}
				if err := e.deliver(e.eng, state.Product, evs...); err != nil {
					t.Fatalf("seq %d: %v", seq, err)
				}
				if r := e.rec(state.Product, 3); r.Status != state.Synced {
					t.Fatalf("seq %d: %s %s", seq, r.Status, r.Reason)
				}
			}
			id := productID(1, 3)
			state := func() (float64, []map[string]any) { return numOf(e.row("products", id)["statecode"]), e.priceItems(id) }
			send(1, nil)
			if st, items := state(); st != productActive || len(items) != 1 {
				t.Fatalf("published: state %v, %d price list items", st, len(items))
			}
			send(2, func(d map[string]any) { d["published"] = false })
			if st, items := state(); st != productRetired || len(items) != 0 {
				t.Fatalf("unpublished: state %v, %d price list items, want Retired and none", st, len(items))
			}
			send(3, func(d map[string]any) { d["price"] = "9.9900" })
			if st, items := state(); st != productActive || len(items) != 1 || numOf(items[0]["amount"]) != 9.99 {
				t.Fatalf("published again: state %v, items %v", st, items)
			}
			send(4, func(d map[string]any) { d["deleted"] = true })
			if st, items := state(); st != productRetired || len(items) != 0 {
				t.Fatalf("deleted: state %v, %d price list items", st, len(items))
			}
		})
	}
}

// A retired family, or a retired child of a family, can never be Active again in
// Dynamics 365: a store that unpublishes and republishes a grouped product keeps the
// family and its children Active, says why, and orders for them get real product lines.
func TestGroupedProductUnpublishedStaysActive(t *testing.T) {
	h := newOrderHarness(t, harnessOptions{})
	evs := example(t, "products-grouped.json") // family 20, children 12 and 13
	send := func(seq int64, published bool) {
		t.Helper()
		var pevs []*nop.Event
		for i := range evs {
			pevs = append(pevs, mkEvent(t, evs[i], fmt.Sprintf("g%d-%d", i, seq), seq, func(d map[string]any) { d["published"] = published }))
		}
		msgs, err := nop.Messages(state.Product, pevs)
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range msgs {
			if err := h.eng.HandleMessage(h.ctx, "products", m.Body); err != nil {
				t.Fatalf("seq %d: %v", seq, err)
			}
		}
	}
	active := func(when string) {
		t.Helper()
		for _, id := range []int{20, 12, 13} {
			p, ok := h.srv.Row("products", productID(1, id))
			if !ok || num(t, p, "statecode") != productActive {
				t.Fatalf("%s: product %d state %v, want Active", when, id, p["statecode"])
			}
		}
	}
	send(1, true)
	active("published")
	send(2, false)
	active("unpublished")
	for _, id := range []int{20, 12, 13} {
		r, err := h.st.Get(h.ctx, state.Product, fmt.Sprint(id))
		if err != nil || r.Status != state.Synced || !strings.Contains(r.Reason, "unpublished in nopCommerce, kept Active: Dynamics 365 can't re-activate a retired family") {
			t.Fatalf("unpublished product %d: %+v %v", id, r, err)
		}
	}
	send(3, true)
	active("published again")
	h.mustSend(loadOrderEvents(t, "order-placed.json")[0]) // a line for product 12
	l, ok := h.srv.Row("salesorderdetails", orderLineID(1, 5002))
	if !ok || l["isproductoverridden"] == true || !strings.EqualFold(fmt.Sprint(l["_productid_value"]), productID(1, 12)) {
		t.Fatalf("line of the family's child: %v", l)
	}
}

// The organization's pricing settings decide how Dataverse computes a line; the app reads
// them at start and writes lines whose totalamount is the store's orderTotal, for every
// pricing precision (0–4) and both discount calculation methods.
func TestOrderTotalsExactForEveryPricingSetting(t *testing.T) {
	for prec := 0; prec <= 4; prec++ {
		for _, perUnit := range []bool{false, true} {
			t.Run(fmt.Sprintf("precision=%d,perUnit=%v", prec, perUnit), func(t *testing.T) {
				h := newOrderHarness(t, harnessOptions{sim: dataversetest.Options{
					PricingDecimalPrecision: dataversetest.Precision(prec), DiscountPerUnit: perUnit}})
				r := rand.New(rand.NewPCG(uint64(prec), 7))
				var raws []json.RawMessage
				orders := map[int]*nop.Order{}
				for i := range 12 {
					o := genOrder(r, 7000+i, genOptions{Round: i%2 == 0})
					orders[o.ID] = o
					raws = append(raws, orderEvent(t, o, "order.updated", 1))
				}
				for _, raw := range raws[:4] {
					body, _ := json.Marshal(map[string]json.RawMessage{"evt": raw})
					if err := h.eng.HandleMessage(h.ctx, "orders", body); err != nil {
						t.Fatal(err)
					}
				}
				body, _ := json.Marshal(map[string]any{"chunk": map[string]any{"id": "chunk-p", "events": raws[4:]}})
				if err := h.eng.HandleMessage(h.ctx, "orders", body); err != nil {
					t.Fatal(err)
				}
				discounted := 0
				for id, o := range orders {
					so := h.salesOrder(1, id)
					if so == nil {
						t.Fatalf("order %d not written: %+v", id, h.record(id))
					}
					if got, want := moneyCents(t, so, "totalamount"), o.OrderTotal.Round(2).Units()/100; got != want {
						t.Errorf("order %d: totalamount %.2f, orderTotal %s", id, float64(got)/100, o.OrderTotal)
					}
					for _, it := range o.Items {
						if !it.DiscountAmountExclTax.IsZero() {
							discounted++
						}
					}
				}
				if discounted == 0 {
					t.Fatal("no line with a discount: the discount method was not exercised")
				}
			})
		}
	}
}

// With system pricing off Dataverse computes no totals: the status page says so (not
// healthy, what to change) and orders are recorded failed with that reason, not written.
func TestSystemPricingOffRefusesOrders(t *testing.T) {
	h := newOrderHarness(t, harnessOptions{sim: dataversetest.Options{SystemPricingOff: true}})
	info := h.eng.Connection(h.ctx)
	if !info.Reachable || !strings.Contains(info.Error, "oobpricecalculationenabled") || !strings.Contains(info.Error, "Use system pricing calculation") {
		t.Fatalf("status: %+v", info)
	}
	if err := h.send(loadOrderEvents(t, "order-placed.json")[0]); err != nil {
		t.Fatalf("a setup problem is recorded, not redelivered: %v", err)
	}
	rec := h.record(1001)
	if rec.Status != state.Failed || !strings.Contains(rec.Reason, "system pricing") {
		t.Fatalf("order: %s %q", rec.Status, rec.Reason)
	}
	if n := h.srv.Count("salesorders"); n != 0 {
		t.Fatalf("%d sales orders written with system pricing off", n)
	}
	// Customers and products don't depend on pricing.
	for _, ex := range []struct {
		file   string
		entity state.Entity
		id     string
	}{{"customer-created.json", state.Customer, "42"}, {"product-simple.json", state.Product, "7"}} {
		ev := mkEvent(t, example(t, ex.file)[0], "x-"+ex.id, 0, func(d map[string]any) { delete(d, "pictureUrls") })
		msgs, _ := nop.Messages(ex.entity, []*nop.Event{ev})
		if err := h.eng.HandleMessage(h.ctx, string(ex.entity)+"s", msgs[0].Body); err != nil {
			t.Fatal(err)
		}
		if r, err := h.st.Get(h.ctx, ex.entity, ex.id); err != nil || r.Status != state.Synced {
			t.Fatalf("%s %s: %+v %v", ex.entity, ex.id, r, err)
		}
	}
}

// A missing privilege (403 PrivilegeDenied) is a setup problem: the entity is recorded
// failed with the table and operation refused, the message is acknowledged (no
// redelivery), the status page names it, and auto-sync's retry lands it once the role is
// fixed.
func TestMissingPrivilegeIsASetupProblem(t *testing.T) {
	e := newEnv(t, envOptions{})
	e.srv.DenyPrivilege("contacts", dataversetest.PrivCreate)
	ev := customerEvent(t, example(t, "customer-created.json")[0], 42, 1, "ada@example.com", nil)
	if err := e.deliver(e.eng, state.Customer, ev); err != nil {
		t.Fatalf("a missing privilege must not be redelivered: %v", err)
	}
	r := e.rec(state.Customer, 42)
	if r.Status != state.Failed || !r.Transient || !strings.Contains(r.Reason, "prvCreateContact") || !strings.Contains(r.Reason, "create contact") {
		t.Fatalf("record: %s transient=%v %q", r.Status, r.Transient, r.Reason)
	}
	info := e.eng.Connection(e.ctx)
	if !strings.Contains(info.Error, "prvCreateContact") || !strings.Contains(info.Error, "create contact") {
		t.Fatalf("status: %+v", info)
	}
	// The role is fixed; auto-sync re-sends the stored event of failed entities marked
	// for retry (ops.AutoSync), as here.
	e.srv.AllowPrivilege("contacts", dataversetest.PrivCreate)
	if err := e.deliver(e.eng, state.Customer, ev); err != nil {
		t.Fatal(err)
	}
	if r := e.rec(state.Customer, 42); r.Status != state.Synced {
		t.Fatalf("after the role was fixed: %s %q", r.Status, r.Reason)
	}
	if info := e.eng.Connection(e.ctx); info.Error != "" {
		t.Fatalf("status after the fix: %+v", info)
	}
}

// Dynamics 365 can't change a product's parent once set: a child moved to another grouped
// product in the store stays in its first family, synced, with the reason.
func TestProductParentNotChanged(t *testing.T) {
	e := newEnv(t, envOptions{})
	evs := example(t, "products-grouped.json") // family 20, children 12 and 13
	for i := range evs {
		e.each(state.Product, mkEvent(t, evs[i], fmt.Sprintf("g%d", i), 1, nil))
	}
	e.each(state.Product, mkEvent(t, evs[0], "g30", 1, func(d map[string]any) { d["id"], d["sku"], d["associatedProductIds"] = 30, "FAM-30", []any{} }))
	e.each(state.Product, mkEvent(t, evs[1], "g1-2", 2, func(d map[string]any) { d["parentGroupedProductId"], d["name"] = 30, "Moved" }))
	r := e.rec(state.Product, 12)
	p := e.row("products", productID(1, 12))
	if r.Status != state.Synced || !strings.Contains(r.Reason, "can't change a product's parent") ||
		!strings.EqualFold(fmt.Sprint(p["_parentproductid_value"]), productID(1, 20)) || p["name"] != "Moved" {
		t.Fatalf("moved child: %s %q, parent %v name %v", r.Status, r.Reason, p["_parentproductid_value"], p["name"])
	}
}

// partFailDV refuses the $batch part addressed to failPath, as Dataverse does: the parts
// before it run, the rest don't.
type partFailDV struct {
	Dataverse
	failPath string
}

func (f *partFailDV) Batch(ctx context.Context, parts ...dataverse.BatchPart) ([]dataverse.BatchResult, error) {
	for k, p := range parts {
		if op, ok := p.(dataverse.Op); ok && strings.EqualFold(op.Path, f.failPath) {
			var res []dataverse.BatchResult
			if k > 0 {
				var err error
				if res, err = f.Dataverse.Batch(ctx, parts[:k]...); err != nil {
					return res, err
				}
			}
			return res, &dataverse.BatchError{Part: k + 1, Op: op.Method + " " + op.Path,
				Err: &dataverse.Error{StatusCode: 400, Code: "0x80040216", Message: "An unexpected error occurred."}}
		}
	}
	return f.Dataverse.Batch(ctx, parts...)
}

// A chunk's publishes travel as $batch parts; a refused part is retried alone and the
// parts after it go in the next batch: every product ends Active.
func TestBulkPublishPartRefused(t *testing.T) {
	e := newEnv(t, envOptions{})
	e.fdv.Dataverse = &partFailDV{Dataverse: e.dv, failPath: dataverse.EntityPath("products", productID(1, 5))}
	evs := newProducts(t, 10)
	if err := e.deliver(e.eng, state.Product, evs...); err != nil {
		t.Fatal(err)
	}
	for i := 1; i <= 10; i++ {
		if r, p := e.rec(state.Product, i), e.row("products", productID(1, i)); r.Status != state.Synced || numOf(p["statecode"]) != productActive {
			t.Errorf("product %d: %s %q, state %v", i, r.Status, r.Reason, p["statecode"])
		}
	}
	if n := e.fdv.count("Update products"); n != 1 {
		t.Errorf("%d single publishes, want 1 (the refused part)", n)
	}
}

// concurrentBatchDV counts the $batch requests carrying product publishes and how many
// were in flight at once; each waits up to a second for another to come in beside it,
// so requests sent side by side are seen so whatever the machine's timing.
type concurrentBatchDV struct {
	Dataverse
	mu       sync.Mutex
	in, most int
	parts    []int
	met      chan struct{}
}

func (f *concurrentBatchDV) Batch(ctx context.Context, parts ...dataverse.BatchPart) ([]dataverse.BatchResult, error) {
	publishes := 0
	for _, p := range parts {
		if op, ok := p.(dataverse.Op); ok && op.Method == "PATCH" && strings.HasPrefix(op.Path, "products(") {
			publishes++
		}
	}
	if publishes == 0 {
		return f.Dataverse.Batch(ctx, parts...)
	}
	f.mu.Lock()
	f.in++
	f.most = max(f.most, f.in)
	f.parts = append(f.parts, publishes)
	if f.in == 2 {
		select {
		case <-f.met: // two were in flight before: closed already
		default:
			close(f.met)
		}
	}
	f.mu.Unlock()
	select {
	case <-f.met:
	case <-time.After(time.Second):
	}
	defer func() {
		f.mu.Lock()
		f.in--
		f.mu.Unlock()
	}()
	return f.Dataverse.Batch(ctx, parts...)
}

// A chunk's publishes are spread over the requests the client may have in flight and
// sent side by side: each part of a $batch runs after the one before, so one request of
// 40 parts would keep one slot busy for all of them while the others wait.
func TestBulkPublishSpreadOverSlots(t *testing.T) {
	e := newEnv(t, envOptions{})
	if err := e.deliver(e.eng, state.Product, productEvent(t, 100, 1, nil)); err != nil { // bootstrap, and the client's slots open up
		t.Fatal(err)
	}
	slots := e.dv.BatchParts(1000, 1000)
	f := &concurrentBatchDV{Dataverse: e.dv, met: make(chan struct{})}
	e.fdv.Dataverse = f
	evs := newProducts(t, 40)
	if err := e.deliver(e.eng, state.Product, evs...); err != nil {
		t.Fatal(err)
	}
	for i := 1; i <= 40; i++ {
		if p := e.row("products", productID(1, i)); numOf(p["statecode"]) != productActive {
			t.Fatalf("product %d state %v", i, p["statecode"])
		}
	}
	if slots == 1000 {
		t.Fatal("the client has one slot: nothing to spread over")
	}
	total := 0
	for _, n := range f.parts {
		total += n
		if n < 10 {
			t.Errorf("a $batch of %d publishes: spread below 10 parts a request", n)
		}
	}
	if total != 40 || len(f.parts) < 2 || f.most < 2 {
		t.Fatalf("40 publishes in $batch requests of %v, at most %d at once: want them spread and side by side", f.parts, f.most)
	}
}

// oneLineOrder is one tax-free line (qty × unit − discount) plus freight, its orderTotal
// the exact sum.
func oneLineOrder(t testing.TB, id, qty int, unit, disc, freight string) *nop.Order {
	t.Helper()
	money := func(s string) nop.Money {
		m, err := nop.ParseMoney(s)
		if err != nil {
			t.Fatal(err)
		}
		return m
	}
	o := genOrder(rand.New(rand.NewPCG(1, 1)), id, genOptions{Round: true})
	u, d, f := money(unit), money(disc), money(freight)
	line := u.Mul(qty).Sub(d)
	it := o.Items[0]
	it.Quantity = qty
	it.UnitPriceExclTax, it.UnitPriceInclTax = u, u
	it.DiscountAmountExclTax, it.DiscountAmountInclTax = d, d
	it.PriceExclTax, it.PriceInclTax = line, line
	o.Items = []nop.OrderItem{it}
	o.OrderSubtotalExclTax, o.OrderSubtotalInclTax = line, line
	o.OrderSubTotalDiscountExclTax, o.OrderSubTotalDiscountInclTax = nop.Money{}, nop.Money{}
	o.OrderShippingExclTax, o.OrderShippingInclTax = f, f
	o.PaymentMethodAdditionalFeeExclTax, o.PaymentMethodAdditionalFeeInclTax = nop.Money{}, nop.Money{}
	o.OrderDiscount, o.OrderTax = nop.Money{}, nop.Money{}
	o.OrderTotal = line.Add(f)
	return o
}

// An administrator changing the organization's pricing settings while the app runs: the
// app reads them again (every sharedRecheck), so later orders' totals are still the
// store's, or, with system pricing turned off, the orders are refused with the reason
// rather than written without totals.
func TestPricingSettingsChangedWhileRunning(t *testing.T) {
	defer func(d time.Duration) { sharedRecheck = d }(sharedRecheck)
	sharedRecheck = 50 * time.Millisecond
	for _, c := range []struct {
		name   string
		change dataverse.Record
	}{
		{"discount per unit", dataverse.Record{"discountcalculationmethod": 1}},
		{"pricing precision 0", dataverse.Record{"pricingdecimalprecision": 0}},
		{"system pricing off", dataverse.Record{"oobpricecalculationenabled": false}},
	} {
		t.Run(c.name, func(t *testing.T) {
			h := newOrderHarness(t, harnessOptions{})
			send := func(o *nop.Order) {
				body, _ := json.Marshal(map[string]json.RawMessage{"evt": orderEvent(t, o, "order.placed", 1)})
				if err := h.eng.HandleMessage(h.ctx, "orders", body); err != nil {
					t.Fatal(err)
				}
			}
			first := oneLineOrder(t, 8101, 3, "10.49", "3.00", "5.00")
			send(first)
			if got := moneyCents(t, h.salesOrder(1, first.ID), "totalamount"); got != 3347 {
				t.Fatalf("before the change: totalamount %d cents, want 3347", got)
			}
			if err := h.dv.Update(h.ctx, "organizations", h.srv.OrganizationID(), c.change); err != nil {
				t.Fatal(err)
			}
			time.Sleep(2 * sharedRecheck)
			second := oneLineOrder(t, 8102, 3, "10.49", "3.00", "5.00")
			send(second)
			so := h.salesOrder(1, second.ID)
			if c.change["oobpricecalculationenabled"] != nil {
				if rec := h.record(second.ID); so != nil || rec.Status != state.Failed || !strings.Contains(rec.Reason, "system pricing") {
					t.Errorf("system pricing off: salesorder %v, record %s %q, want refused with the reason", so != nil, rec.Status, rec.Reason)
				}
				return
			}
			if so == nil {
				t.Fatalf("second order not written: %+v", h.record(second.ID))
			}
			if got := moneyCents(t, so, "totalamount"); got != 3347 {
				t.Errorf("after the change: totalamount %d cents, store orderTotal %s", got, second.OrderTotal)
			}
		})
	}
}
