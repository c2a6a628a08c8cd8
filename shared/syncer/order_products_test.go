package syncer

// Products an order line needs when the state has no record of them (after a wipe, or
// before their own events): found in Dynamics 365, made by the app or an admin's.

import (
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"strings"
	"testing"

	"github.com/nopsync/nopsync/shared/dataverse/dataversetest"
	"github.com/nopsync/nopsync/shared/nop"
	"github.com/nopsync/nopsync/shared/state"
)

// sendOrder delivers one generated order event, one by one or as a one-event import chunk.
func sendOrder(t *testing.T, h *env, o *nop.Order, typ string, seq int64, bulk bool) {
	t.Helper()
	raw := orderEvent(t, o, typ, seq)
	var body []byte
	if bulk {
		body, _ = json.Marshal(map[string]any{"chunk": map[string]any{"id": fmt.Sprintf("rv-chunk-%d-%d", o.ID, seq), "events": []json.RawMessage{raw}}})
	} else {
		body, _ = json.Marshal(map[string]json.RawMessage{"evt": raw})
	}
	if err := h.eng.HandleMessage(h.ctx, "orders", body); err != nil {
		t.Fatalf("order %d seq %d: %v", o.ID, seq, err)
	}
}

// An admin's Active product has productnumber DUP-SKU, and two store products share that
// sku (nopCommerce does not make skus unique). The first product's order line adopts the
// row by number and claims the number; the second product's order line then gets a row of
// its own (NOP-<id>), never the same row as the first.
func TestOrderLineProductWithAnAdminsSku(t *testing.T) {
	for _, bulk := range []bool{false, true} {
		t.Run(fmt.Sprintf("bulk=%v", bulk), func(t *testing.T) {
			h := newOrderHarness(t, harnessOptions{sim: dataversetest.Options{ProductsCreatedActive: true}})
			r := rand.New(rand.NewPCG(31, 32))
			boot := genOrder(r, 8400, genOptions{Round: true})
			sendOrder(t, h, boot, "order.placed", 1, false) // bootstrap
			sh, err := h.eng.boot.rows(h.ctx)
			if err != nil {
				t.Fatal(err)
			}
			admin, err := h.srv.Insert("products", map[string]any{"name": "Typed in", "productnumber": "DUP-SKU",
				"defaultuomscheduleid@odata.bind": "/uomschedules(" + sh.UnitGroupID + ")",
				"defaultuomid@odata.bind":         "/uoms(" + sh.BaseUnitID + ")"})
			if err != nil {
				t.Fatal(err)
			}
			if st := numOf(h.row("products", admin)["statecode"]); st != productActive {
				t.Fatalf("admin product state %v, want Active", st)
			}
			var orders []*nop.Order
			for k, pid := range []int{501, 502} {
				o := genOrder(r, 8401+k, genOptions{Round: true})
				o.Items = o.Items[:1]
				o.Items[0].Product = nop.ItemProduct{ID: pid, Name: fmt.Sprintf("Store product %d", pid), Sku: genPtr("DUP-SKU"), ProductType: nop.ProductTypeSimple}
				o.OrderSubtotalInclTax, o.OrderTotal = o.Items[0].PriceInclTax, o.Items[0].PriceInclTax
				o.OrderSubTotalDiscountInclTax, o.OrderShippingInclTax, o.PaymentMethodAdditionalFeeInclTax, o.OrderDiscount = nop.Money{}, nop.Money{}, nop.Money{}, nop.Money{}
				orders = append(orders, o)
			}
			for k, o := range orders {
				sendOrder(t, h, o, "order.placed", int64(2+k), bulk)
			}
			prod := func(o *nop.Order) string {
				ls := h.lines(salesOrderID(1, o.ID))
				if len(ls) != 1 {
					t.Fatalf("order %d: %d lines (%q)", o.ID, len(ls), h.record(o.ID).Reason)
				}
				return strings.ToLower(fmt.Sprint(ls[0]["_productid_value"]))
			}
			a, b := prod(orders[0]), prod(orders[1])
			if a == b {
				t.Errorf("store products 501 and 502 share Dynamics 365 product %s (records: %q / %q)", a,
					h.rec(state.Product, 501).Reason, h.rec(state.Product, 502).Reason)
			}
		})
	}
}

// An admin's Active product, adopted by number for an order line, in a unit group other
// than the app's: the order line names the app's base unit, so the adopted product is
// written (into the app's unit group) and the order lands.
func TestOrderLineProductAdoptedInAnotherUnitGroup(t *testing.T) {
	h := newOrderHarness(t, harnessOptions{sim: dataversetest.Options{ProductsCreatedActive: true}})
	r := rand.New(rand.NewPCG(41, 42))
	sendOrder(t, h, genOrder(r, 8500, genOptions{Round: true}), "order.placed", 1, false) // bootstrap
	sched, err := h.srv.Insert("uomschedules", map[string]any{"name": "Boxes", "baseuomname": "Box"})
	if err != nil {
		t.Fatal(err)
	}
	box := h.where("uoms", "name", "Box")
	if len(box) != 1 {
		t.Fatalf("%d Box units", len(box))
	}
	admin, err := h.srv.Insert("products", map[string]any{"name": "Typed in", "productnumber": "ADMIN-BOX",
		"defaultuomscheduleid@odata.bind": "/uomschedules(" + sched + ")",
		"defaultuomid@odata.bind":         "/uoms(" + fmt.Sprint(box[0]["uomid"]) + ")"})
	if err != nil {
		t.Fatal(err)
	}
	o := genOrder(r, 8501, genOptions{Round: true})
	o.Items = o.Items[:1]
	o.Items[0].Product = nop.ItemProduct{ID: 601, Name: "Store product 601", Sku: genPtr("ADMIN-BOX"), ProductType: nop.ProductTypeSimple}
	o.OrderSubtotalInclTax, o.OrderTotal = o.Items[0].PriceInclTax, o.Items[0].PriceInclTax
	o.OrderSubTotalDiscountInclTax, o.OrderShippingInclTax, o.PaymentMethodAdditionalFeeInclTax, o.OrderDiscount = nop.Money{}, nop.Money{}, nop.Money{}, nop.Money{}
	raw := orderEvent(t, o, "order.placed", 2)
	body, _ := json.Marshal(map[string]json.RawMessage{"evt": raw})
	if err := h.eng.HandleMessage(h.ctx, "orders", body); err != nil {
		t.Fatal(err)
	}
	rec := h.record(o.ID)
	if ls := h.lines(salesOrderID(1, o.ID)); len(ls) != 1 || !strings.EqualFold(fmt.Sprint(ls[0]["_productid_value"]), admin) {
		t.Errorf("the order line is not of the adopted product %s: %v", admin, ls)
	}
	if rec.Status != state.Synced || h.salesOrder(1, o.ID) == nil {
		t.Errorf("order with an adopted product of another unit group: %s %q", rec.Status, rec.Reason)
	}
}

// A product unpublished in the store (Retired in Dynamics 365), then the sync state is
// lost, then an order of it arrives (an old order re-sent, or one placed before the
// unpublish): the product is not written from the order line (made Active again, its price
// and description lost); the order takes a write-in line for it, as with the state intact.
func TestOrderLineProductRetiredAfterAWipe(t *testing.T) {
	h := newOrderHarness(t, harnessOptions{})
	r := rand.New(rand.NewPCG(61, 62))
	o := genOrder(r, 8700, genOptions{Round: true})
	o.Items = o.Items[:1]
	o.OrderSubtotalInclTax, o.OrderTotal = o.Items[0].PriceInclTax, o.Items[0].PriceInclTax
	o.OrderSubTotalDiscountInclTax, o.OrderShippingInclTax, o.PaymentMethodAdditionalFeeInclTax, o.OrderDiscount = nop.Money{}, nop.Money{}, nop.Money{}, nop.Money{}
	pid := o.Items[0].Product.ID
	o.Items[0].Product.Sku = genPtr(fmt.Sprintf("SKU-%d", pid))
	h.each(state.Product, productEvent(t, pid, 1, func(d map[string]any) { d["price"] = "99.5000" }))
	h.each(state.Product, productEvent(t, pid, 2, func(d map[string]any) { d["price"] = "99.5000"; d["published"] = false }))
	before := h.row("products", productID(1, pid))
	h.wipeState()
	h.eng = h.engine()
	sendOrder(t, h, o, "order.placed", 1, false)
	after := h.row("products", productID(1, pid))
	for _, col := range []string{"statecode", "price", "description", "name"} {
		if fmt.Sprint(after[col]) != fmt.Sprint(before[col]) {
			t.Errorf("unpublished product %s %v → %v after an order line wrote it", col, before[col], after[col])
		}
	}
}
