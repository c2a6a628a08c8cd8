package syncer

// After a wiped sync state: closed orders compared with Dynamics 365, guests' own rows,
// and the products order lines need.

import (
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"strings"
	"testing"
	"time"

	"github.com/nopsync/nopsync/shared/dataverse/dataversetest"
	"github.com/nopsync/nopsync/shared/nop"
	"github.com/nopsync/nopsync/shared/state"
)

func cloneOrder(t *testing.T, o *nop.Order) *nop.Order {
	t.Helper()
	b, err := json.Marshal(o)
	if err != nil {
		t.Fatal(err)
	}
	var c nop.Order
	if err := json.Unmarshal(b, &c); err != nil {
		t.Fatal(err)
	}
	return &c
}

func paidComplete(o *nop.Order) *nop.Order {
	paid := o.CreatedOnUtc.Add(time.Hour)
	o.PaymentStatus, o.PaidDateUtc, o.OrderStatus = nop.PaymentStatusPaid, &paid, nop.OrderStatusComplete
	return o
}

// oneItem trims a generated order to one item and no header amounts.
func oneItem(o *nop.Order) *nop.Order {
	o.Items = o.Items[:1]
	o.OrderSubtotalInclTax, o.OrderTotal = o.Items[0].PriceInclTax, o.Items[0].PriceInclTax
	o.OrderSubTotalDiscountInclTax, o.OrderShippingInclTax, o.PaymentMethodAdditionalFeeInclTax, o.OrderDiscount = nop.Money{}, nop.Money{}, nop.Money{}, nop.Money{}
	return o
}

// closedShape gives a generated order one of the money shapes that stress the compare.
func closedShape(o *nop.Order, v int) {
	switch v % 7 {
	case 0: // gift card: orderTotal 7.00 below its parts
		o.OrderTotal = o.OrderTotal.Sub(nop.MoneyFromInt(7))
	case 1: // reward points with sub-cent digits
		o.OrderTotal = o.OrderTotal.Sub(nop.MoneyFromUnits(45678))
	case 2: // a negative payment fee with 4 decimals (a rebate: a discount)
		fee := nop.MoneyFromUnits(-23456)
		o.OrderTotal = o.OrderTotal.Sub(o.PaymentMethodAdditionalFeeInclTax).Add(fee)
		o.PaymentMethodAdditionalFeeInclTax, o.PaymentMethodAdditionalFeeExclTax = fee, fee
	case 3: // a positive fee that rounds to nothing at the currency's precision
		fee := nop.MoneyFromUnits(40)
		o.OrderTotal = o.OrderTotal.Sub(o.PaymentMethodAdditionalFeeInclTax).Add(fee)
		o.PaymentMethodAdditionalFeeInclTax, o.PaymentMethodAdditionalFeeExclTax = fee, fee
	case 4: // gift card and negative fee together, total far below the parts
		fee := nop.MoneyFromInt(-3)
		o.OrderTotal = o.OrderTotal.Sub(o.PaymentMethodAdditionalFeeInclTax).Add(fee).Sub(nop.MoneyFromUnits(123456))
		o.PaymentMethodAdditionalFeeInclTax, o.PaymentMethodAdditionalFeeExclTax = fee, fee
	case 5: // the retired product's line (write-in), see the battery
	case 6: // nothing special
	}
}

// A closed order whose shipping changed by one cent in the store (freight and total
// +0.01): the closed order's conflict with the state intact, and after a wipe too (the
// compare tolerates less than half the currency's last digit).
func TestOrderClosedOneCentChangeAfterAWipe(t *testing.T) {
	for _, wipe := range []bool{false, true} {
		for _, bulk := range []bool{false, true} {
			t.Run(fmt.Sprintf("wipe=%v/bulk=%v", wipe, bulk), func(t *testing.T) {
				h := newOrderHarness(t, harnessOptions{})
				r := rand.New(rand.NewPCG(71, 72))
				o := paidComplete(genOrder(r, 8800, genOptions{Round: true}))
				sendOrder(t, h, o, "order.completed", 1, bulk)
				if rec := h.record(o.ID); rec.Status != state.Synced {
					t.Fatalf("%s %q", rec.Status, rec.Reason)
				}
				if wipe {
					h.wipeState()
					h.eng = h.engine()
				}
				cent := nop.MoneyFromUnits(100)
				ch := cloneOrder(t, o)
				ch.OrderShippingInclTax = ch.OrderShippingInclTax.Add(cent)
				ch.OrderShippingExclTax = ch.OrderShippingExclTax.Add(cent)
				ch.OrderTotal = ch.OrderTotal.Add(cent)
				sendOrder(t, h, ch, "order.updated", 2, bulk)
				if rec := h.record(o.ID); rec.Status != state.Failed || !strings.Contains(rec.Reason, "not applied") {
					t.Errorf("shipping +0.01 on a closed order: %s %q, want the closed order's conflict", rec.Status, rec.Reason)
				}
			})
		}
	}
}

// Unchanged closed orders (fulfilled, canceled) with gift cards, reward points, negative
// and sub-unit fees, write-in lines, 4-decimal amounts, in currencies of 0, 2, 3 and 4
// decimals and with pricing precision 0/4, per-unit discounts and the Invoiced conversion,
// re-sent after a wipe, one by one and in a chunk: all end synced, no false conflict.
func TestOrderClosedUnchangedAfterAWipe(t *testing.T) {
	usd := func(p int) dataversetest.Currency {
		return dataversetest.Currency{ISOCode: "USD", Name: "US Dollar", Symbol: "$", Precision: p}
	}
	sims := map[string]dataversetest.Options{
		"cur0":              {BaseCurrency: usd(0)},
		"cur0-perunit":      {BaseCurrency: usd(0), DiscountPerUnit: true, PricingDecimalPrecision: dataversetest.Precision(0)},
		"cur3-pricing4":     {BaseCurrency: usd(3), PricingDecimalPrecision: dataversetest.Precision(4)},
		"cur4-pricing4":     {BaseCurrency: usd(4), PricingDecimalPrecision: dataversetest.Precision(4), DiscountPerUnit: true},
		"pricing0-invoiced": {PricingDecimalPrecision: dataversetest.Precision(0), ConvertSetsOrderInvoiced: true},
		"perunit-invoiced":  {DiscountPerUnit: true, ConvertSetsOrderInvoiced: true},
	}
	for name, sim := range sims {
		for _, round := range []bool{true, false} {
			for _, bulk := range []bool{false, true} {
				t.Run(fmt.Sprintf("%s/round=%v/bulk=%v", name, round, bulk), func(t *testing.T) {
					h := newOrderHarness(t, harnessOptions{sim: sim})
					r := rand.New(rand.NewPCG(81, 82))
					var orders []*nop.Order
					for i := range 14 {
						o := genOrder(r, 8900+i, genOptions{Round: round})
						closedShape(o, i)
						if i%7 == 5 {
							o.Items[0].Product = nop.ItemProduct{ID: 900 + i, Name: "Discontinued lens", Sku: genPtr(fmt.Sprintf("RET-%d", i)), ProductType: nop.ProductTypeSimple}
						}
						if i%3 == 2 {
							o.OrderStatus = nop.OrderStatusCancelled
						} else {
							paidComplete(o)
						}
						orders = append(orders, o)
					}
					for i, o := range orders {
						if i%7 == 5 {
							h.retireProduct(t, o.Items[0].Product.ID, *o.Items[0].Product.Sku)
						}
					}
					send := func(seq int64) {
						if bulk {
							if err := h.eng.HandleMessage(h.ctx, "orders", updatedOrdersChunk(t, orders, fmt.Sprintf("rv2b-%d", seq), seq)); err != nil {
								t.Fatal(err)
							}
							return
						}
						for _, o := range orders {
							sendOrder(t, h, o, "order.updated", seq, false)
						}
					}
					send(1)
					for i, o := range orders {
						rec := h.record(o.ID)
						if rec.Status != state.Synced {
							t.Fatalf("order %d (shape %d) before the wipe: %s %q", o.ID, i%7, rec.Status, rec.Reason)
						}
						if i%7 == 5 && !strings.Contains(rec.Reason, "write-in") {
							t.Fatalf("order %d: no write-in line (%q)", o.ID, rec.Reason)
						}
					}
					h.wipeState()
					h.eng = h.engine()
					send(2)
					for i, o := range orders {
						if rec := h.record(o.ID); rec.Status != state.Synced {
							t.Errorf("order %d (shape %d) after the wipe: %s %q", o.ID, i%7, rec.Status, rec.Reason)
						}
					}
				})
			}
		}
	}
}

// DELETE_POLICY=ignore keeps a deleted customer's contact active, but "a deleted customer
// is never matched by email again" (docs/dataverse-mapping.md). A guest contact a
// registered customer adopted, that customer then deleted, is not the next guest's, whether
// it is the guest's own row (store 1) or its store's earlier one (store 2).
func TestGuestOwnRowReleasedUnderIgnorePolicy(t *testing.T) {
	for _, store := range []int{1, 2} {
		for _, bulk := range []bool{false, true} {
			t.Run(fmt.Sprintf("store=%d/bulk=%v", store, bulk), func(t *testing.T) {
				h := newOrderHarness(t, harnessOptions{})
				h.set.DeletePolicy = DeleteIgnore
				h.eng = h.engine()
				email := fmt.Sprintf("ignored%d@example.test", store)
				tmpl := example(t, "customer-created.json")[0]
				var guest string
				if store == 1 {
					h.each(state.Order, guestOrder(t, 9850, 1, 850, email))
					guest = strings.ToLower(fmt.Sprint(h.salesOrder(1, 9850)["_customerid_value"]))
				} else {
					// A store-2 guest contact written before guests were one across stores.
					guest = deterministicID(2, "contact", "guest:"+email)
					if _, err := h.srv.Insert("contacts", map[string]any{"contactid": guest, "lastname": "Jones", "firstname": "Bob",
						"emailaddress1": email, "description": "nopCommerce guest (customer 850)"}); err != nil {
						t.Fatal(err)
					}
				}
				reg := customerEvent(t, tmpl, 850, 1, email, nil)
				del := customerEvent(t, tmpl, 850, 2, email, func(d map[string]any) { d["deleted"] = true })
				if store != 1 {
					reg, del = storeEvent(t, reg, store, state.Customer), storeEvent(t, del, store, state.Customer)
				}
				h.each(state.Customer, reg)
				if id := h.rec(state.Customer, 850).DataverseID; !strings.EqualFold(id, guest) {
					t.Fatalf("the registered customer has contact %s, want the guest's %s (adopted)", id, guest)
				}
				h.each(state.Customer, del)
				if _, err := h.st.GetDoc(h.ctx, releasedContactKind, guest); err != nil {
					t.Fatalf("no release recorded for %s: %v", guest, err)
				}
				evs := []*nop.Event{guestOrder(t, 9851, store, 851, email)}
				if bulk {
					evs = append(evs, guestOrder(t, 9852, store, 852, email))
				}
				if err := h.deliver(h.eng, state.Order, evs...); err != nil {
					t.Fatal(err)
				}
				for _, ev := range evs {
					so := h.salesOrder(store, ev.Order.ID)
					if so == nil {
						t.Fatalf("order %d: no salesorder (%q)", ev.Order.ID, h.record(ev.Order.ID).Reason)
					}
					if got := strings.ToLower(fmt.Sprint(so["_customerid_value"])); got == guest {
						c := h.row("contacts", got)
						t.Errorf("order %d points at the deleted customer's contact %s (description %q), released", ev.Order.ID, got, c["description"])
					}
				}
			})
		}
	}
}

// The chunk path: guests without email (contact id per customer) whose contacts exist,
// resolved by a process that has not cached them (another instance, a restart, an expired
// cache): their rows, read Active, are updated, not sent in a CreateMultiple that
// Dynamics 365 refuses as duplicates.
func TestGuestBulkExistingContactsUpdated(t *testing.T) {
	h := newOrderHarness(t, harnessOptions{})
	chunk := func(from int) []*nop.Event {
		var evs []*nop.Event
		for i := range 8 {
			evs = append(evs, guestOrder(t, from+i, 1, 870+i, ""))
		}
		return evs
	}
	if err := h.deliver(h.eng, state.Order, chunk(9870)...); err != nil {
		t.Fatal(err)
	}
	h.eng = h.engine() // another instance: nothing cached
	before := h.fdv.counts()
	if err := h.deliver(h.eng, state.Order, chunk(9880)...); err != nil {
		t.Fatal(err)
	}
	after := h.fdv.counts()
	cm, up := after["CreateMultiple contacts"]-before["CreateMultiple contacts"], after["Upsert contacts"]-before["Upsert contacts"]
	for i := range 8 {
		if rec := h.record(9880 + i); rec.Status != state.Synced {
			t.Errorf("order %d: %s %q", 9880+i, rec.Status, rec.Reason)
		}
	}
	if cm != 0 {
		t.Errorf("8 guests whose contacts exist (read Active just before): %d CreateMultiple contacts (refused) and %d single Upserts, want 0 CreateMultiple", cm, up)
	}
}

// After a wipe an order line for the app's own product row in each state: Active and
// Under Revision are left as they are and used; Retired is left Retired (price, name kept)
// and the line is a write-in; Draft (an interrupted first write) is written from the line
// and published; an Active row whose price list item is missing is used as it is (the
// line's price is overridden). One by one and in a chunk.
func TestOrderLineOwnProductStatesAfterAWipe(t *testing.T) {
	type tc struct {
		name          string
		state, status int
		noPriceItem   bool
	}
	for _, c := range []tc{
		{"active", productActive, 1, false},
		{"active-no-price-item", productActive, 1, true},
		{"under-revision", productUnderRevision, 3, false},
		{"retired", productRetired, 2, false},
		{"draft", productDraft, 0, false},
	} {
		for _, bulk := range []bool{false, true} {
			t.Run(fmt.Sprintf("%s/bulk=%v", c.name, bulk), func(t *testing.T) {
				h := newOrderHarness(t, harnessOptions{})
				r := rand.New(rand.NewPCG(91, 92))
				o := oneItem(genOrder(r, 8950, genOptions{Round: true}))
				pid := o.Items[0].Product.ID
				o.Items[0].Product.Sku = genPtr(fmt.Sprintf("SKU-%d", pid))
				row := productID(1, pid)
				switch c.state {
				case productDraft:
					// An interrupted first write: the row is there, never published.
					sendOrder(t, h, oneItem(genOrder(r, 8949, genOptions{Round: true})), "order.placed", 1, false) // bootstrap
					sh, err := h.eng.boot.rows(h.ctx)
					if err != nil {
						t.Fatal(err)
					}
					if _, err := h.srv.Insert("products", map[string]any{"productid": row, "name": "Half written", "productnumber": fmt.Sprintf("SKU-%d", pid),
						"defaultuomscheduleid@odata.bind": "/uomschedules(" + sh.UnitGroupID + ")",
						"defaultuomid@odata.bind":         "/uoms(" + sh.BaseUnitID + ")"}); err != nil {
						t.Fatal(err)
					}
				case productRetired:
					h.each(state.Product, productEvent(t, pid, 1, func(d map[string]any) { d["price"] = "99.5000" }))
					h.each(state.Product, productEvent(t, pid, 2, func(d map[string]any) { d["price"] = "99.5000"; d["published"] = false }))
				default:
					h.each(state.Product, productEvent(t, pid, 1, func(d map[string]any) { d["price"] = "99.5000" }))
				}
				if c.noPriceItem {
					for _, it := range h.priceItems(row) {
						if err := h.srv.Delete("productpricelevels", fmt.Sprint(it["productpricelevelid"])); err != nil {
							t.Fatal(err)
						}
					}
				}
				if c.state == productUnderRevision {
					if err := h.srv.Update("products", row, map[string]any{"statecode": c.state, "statuscode": c.status}); err != nil {
						t.Fatal(err)
					}
				}
				if st := numOf(h.row("products", row)["statecode"]); int(st) != c.state {
					t.Fatalf("product state %v, want %d", st, c.state)
				}
				before := h.row("products", row)
				h.wipeState()
				h.eng = h.engine()
				sendOrder(t, h, o, "order.placed", 1, bulk)
				rec := h.record(o.ID)
				if rec.Status != state.Synced {
					t.Fatalf("order: %s %q", rec.Status, rec.Reason)
				}
				after := h.row("products", row)
				lines := h.lines(salesOrderID(1, o.ID))
				if len(lines) != 1 {
					t.Fatalf("%d lines", len(lines))
				}
				l := lines[0]
				switch c.state {
				case productDraft:
					if numOf(after["statecode"]) != productActive || !strings.EqualFold(fmt.Sprint(l["_productid_value"]), row) {
						t.Errorf("draft: product state %v, line product %v", after["statecode"], l["_productid_value"])
					}
				default:
					for _, col := range []string{"statecode", "price", "name", "description", "productnumber"} {
						if fmt.Sprint(after[col]) != fmt.Sprint(before[col]) {
							t.Errorf("%s: product %s %v → %v", c.name, col, before[col], after[col])
						}
					}
					if c.state == productRetired {
						if l["isproductoverridden"] != true || l["_productid_value"] != nil {
							t.Errorf("retired: line not a write-in: %v", l)
						}
					} else if !strings.EqualFold(fmt.Sprint(l["_productid_value"]), row) {
						t.Errorf("%s: line product %v, want %s", c.name, l["_productid_value"], row)
					}
				}
			})
		}
	}
}

// A family's child, its own row found Active after a wipe, is left as it is, and so is its
// family.
func TestOrderLineFamilyChildAfterAWipe(t *testing.T) {
	h := newOrderHarness(t, harnessOptions{})
	famData := func(d map[string]any) {
		d["productType"] = 10
		d["price"] = "0.0000"
		d["associatedProductIds"] = []any{41}
	}
	h.each(state.Product, productEvent(t, 40, 1, famData),
		productEvent(t, 41, 1, func(d map[string]any) { d["parentGroupedProductId"] = 40; d["price"] = "55.0000" }))
	fam, child := h.row("products", productID(1, 40)), h.row("products", productID(1, 41))
	h.wipeState()
	h.eng = h.engine()
	r := rand.New(rand.NewPCG(93, 94))
	o := oneItem(genOrder(r, 8960, genOptions{Round: true}))
	o.Items[0].Product = nop.ItemProduct{ID: 41, Name: "Line name", Sku: genPtr("SKU-41"), ProductType: nop.ProductTypeSimple, ParentGroupedProductID: 40}
	sendOrder(t, h, o, "order.placed", 1, false)
	if rec := h.record(o.ID); rec.Status != state.Synced {
		t.Fatalf("order: %s %q", rec.Status, rec.Reason)
	}
	for name, pair := range map[string][2]map[string]any{"family": {fam, h.row("products", productID(1, 40))}, "child": {child, h.row("products", productID(1, 41))}} {
		for _, col := range []string{"statecode", "price", "name", "productnumber", "_parentproductid_value"} {
			if fmt.Sprint(pair[0][col]) != fmt.Sprint(pair[1][col]) {
				t.Errorf("%s: %s %v → %v", name, col, pair[0][col], pair[1][col])
			}
		}
	}
}
