package syncer

import (
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

// Issue "Orders", point 1: header and lines in one change set, fee as a write-in line,
// addresses, name, description, price list and currency, freight and discount; the
// customer's contact and the items' products created on the way; lines that disappear
// are deleted.
func TestOrderPlacedWritesHeaderAndLines(t *testing.T) {
	h := newOrderHarness(t, harnessOptions{})
	ev := loadOrderEvents(t, "order-placed.json")[0]
	h.mustSend(ev)

	rec := h.record(1001)
	if rec.Status != state.Synced {
		t.Fatalf("order state %s (%s), want synced", rec.Status, rec.Reason)
	}
	orderID := salesOrderID(1, 1001)
	if !strings.EqualFold(rec.DataverseID, orderID) {
		t.Errorf("DataverseID %s, want the deterministic %s", rec.DataverseID, orderID)
	}
	so := h.salesOrder(1, 1001)
	if so == nil {
		t.Fatal("no salesorder")
	}
	if got := h.fdv.count("Batch"); got != 1 {
		t.Errorf("%d $batch calls, want header and lines in one", got)
	}
	for col, want := range map[string]any{
		"name": "1001", "billto_line1": "12 St James's Square", "billto_city": "London",
		"shipto_postalcode": "SW1Y 4JH", "billto_country": "United Kingdom",
	} {
		if so[col] != want {
			t.Errorf("salesorder %s = %#v, want %#v", col, so[col], want)
		}
	}
	if num(t, so, "statecode") != orderStateActive || num(t, so, "statuscode") != orderStatusNew {
		t.Errorf("salesorder state %v/%v, want Active/New", so["statecode"], so["statuscode"])
	}
	if d, _ := so["description"].(string); !strings.Contains(d, "nopCommerce order 1001 (9d2c6b7a-1e3f-4a5b-8c7d-0e1f2a3b1001)") {
		t.Errorf("description %q", d)
	}
	if moneyCents(t, so, "freightamount") != 1100 || moneyCents(t, so, "discountamount") != 500 {
		t.Errorf("freight %v discount %v, want 11.00 and 5.00", so["freightamount"], so["discountamount"])
	}
	if moneyCents(t, so, "totalamount") != 23810 {
		t.Errorf("totalamount %v, want the store's orderTotal 238.10", so["totalamount"])
	}
	// The contact (created from the order's customer) and the price list/currency.
	contacts := h.where("contacts", "emailaddress1", "ada.lovelace@example.com")
	if len(contacts) != 1 {
		t.Fatalf("%d contacts for the customer, want 1", len(contacts))
	}
	if !strings.EqualFold(fmt.Sprint(so["_customerid_value"]), fmt.Sprint(contacts[0]["contactid"])) {
		t.Errorf("salesorder customer %v, want contact %v", so["_customerid_value"], contacts[0]["contactid"])
	}
	if len(h.where("pricelevels", "pricelevelid", fmt.Sprint(so["_pricelevelid_value"]))) != 1 {
		t.Errorf("salesorder price list %v does not exist", so["_pricelevelid_value"])
	}
	cur := h.where("transactioncurrencies", "isocurrencycode", "USD")
	if len(cur) != 1 || !strings.EqualFold(fmt.Sprint(so["_transactioncurrencyid_value"]), fmt.Sprint(cur[0]["transactioncurrencyid"])) {
		t.Errorf("salesorder currency %v, want USD", so["_transactioncurrencyid_value"])
	}

	lines := h.lines(orderID)
	if len(lines) != 3 {
		t.Fatalf("%d lines, want 2 items and the payment fee", len(lines))
	}
	byID := map[string]map[string]any{}
	for _, l := range lines {
		byID[strings.ToLower(fmt.Sprint(l["salesorderdetailid"]))] = l
	}
	l1, l2, fee := byID[orderLineID(1, 5001)], byID[orderLineID(1, 5002)], byID[orderFeeLineID(1, 1001)]
	if l1 == nil || l2 == nil || fee == nil {
		t.Fatalf("lines %v lack a deterministic id", byID)
	}
	if num(t, l1, "quantity") != 2 || moneyCents(t, l1, "priceperunit") != 10000 || moneyCents(t, l1, "extendedamount") != 22000 {
		t.Errorf("line 1 qty %v price %v extended %v", l1["quantity"], l1["priceperunit"], l1["extendedamount"])
	}
	if l1["ispriceoverridden"] != true {
		t.Errorf("line 1 ispriceoverridden %v", l1["ispriceoverridden"])
	}
	if moneyCents(t, l2, "manualdiscountamount") != 100 || moneyCents(t, l2, "tax") != 90 || moneyCents(t, l2, "extendedamount") != 990 {
		t.Errorf("line 2 discount %v tax %v extended %v", l2["manualdiscountamount"], l2["tax"], l2["extendedamount"])
	}
	if l2["description"] != "Colour: black" {
		t.Errorf("line 2 description %v", l2["description"])
	}
	for _, p := range []struct {
		line map[string]any
		sku  string
	}{{l1, "N5500"}, {l2, "CAP-52"}} {
		prods := h.where("products", "productnumber", p.sku)
		if len(prods) != 1 || !strings.EqualFold(fmt.Sprint(p.line["_productid_value"]), fmt.Sprint(prods[0]["productid"])) {
			t.Errorf("line product %v, want the product created for %s", p.line["_productid_value"], p.sku)
		}
		if p.line["_uomid_value"] == nil {
			t.Errorf("line for %s has no unit", p.sku)
		}
	}
	if fee["isproductoverridden"] != true || fee["productdescription"] != "Payment fee" || fee["_productid_value"] != nil ||
		moneyCents(t, fee, "extendedamount") != 220 {
		t.Errorf("fee line %v", fee)
	}

	// The store edits the order: item 5002 is gone, item 5001 now 3 × 100 (+10% tax).
	upd := reEvent(t, ev, "upd-1", "order.updated", 5, func(o map[string]any) {
		items := o["items"].([]any)
		it := items[0].(map[string]any)
		it["quantity"], it["priceInclTax"], it["priceExclTax"] = 3, "330.0000", "300.0000"
		o["items"] = items[:1]
		o["orderSubtotalInclTax"], o["orderSubtotalExclTax"] = "330.0000", "300.0000"
		o["orderTotal"] = "338.2000" // 330 + 11 + 2.20 − 5
	})
	h.mustSend(upd)
	if got := h.lines(orderID); len(got) != 2 {
		t.Fatalf("%d lines after the edit, want the remaining item and the fee", len(got))
	}
	if _, ok := h.srv.Row("salesorderdetails", orderLineID(1, 5002)); ok {
		t.Error("the removed item's line is still there")
	}
	if so := h.salesOrder(1, 1001); moneyCents(t, so, "totalamount") != 33820 {
		t.Errorf("totalamount after the edit %v, want 338.20", so["totalamount"])
	}
}

// Point 1: nothing half-written when the change set fails, and the order lands on
// redelivery.
func TestOrderWriteFailsAtomically(t *testing.T) {
	h := newOrderHarness(t, harnessOptions{})
	ev := loadOrderEvents(t, "order-placed.json")[0]
	h.fdv.failBefore("Batch", 1)
	if err := h.send(ev); err == nil {
		t.Fatal("a failed write was acknowledged: Service Bus would not redeliver")
	}
	if rec := h.record(1001); rec.Status != state.Failed || !rec.Transient {
		t.Errorf("state %s transient=%v, want failed and transient", rec.Status, rec.Transient)
	}
	if h.salesOrder(1, 1001) != nil || len(h.lines(salesOrderID(1, 1001))) != 0 {
		t.Fatal("a salesorder or lines exist after the failed change set")
	}
	h.mustSend(ev) // redelivery
	if rec := h.record(1001); rec.Status != state.Synced {
		t.Fatalf("after redelivery: %s (%s)", rec.Status, rec.Reason)
	}
	if n := len(h.lines(salesOrderID(1, 1001))); n != 3 {
		t.Errorf("%d lines after redelivery, want 3", n)
	}
}

// orderEvent wraps a generated order in an event as the emitter would send it.
func orderEvent(t testing.TB, o *nop.Order, typ string, seq int64) json.RawMessage {
	t.Helper()
	data, err := json.Marshal(o)
	if err != nil {
		t.Fatal(err)
	}
	b, err := json.Marshal(map[string]any{
		"id": fmt.Sprintf("gen-%d-%d", o.ID, seq), "type": typ, "sequence": seq,
		"occurredOnUtc": time.Date(2026, 11, 25, 10, 0, 0, 0, time.UTC).Add(time.Duration(seq) * time.Second),
		"storeId":       1, "data": json.RawMessage(data),
	})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// Point 2: totalamount read back from Dataverse equals orderTotal to the cent over many
// orders computed the way nopCommerce computes them (several tax rates, item and order
// discounts, shipping, fees; half with 4-decimal amounts), sent one by one and as import
// chunks.
func TestOrderTotalsMatchStoreEndToEnd(t *testing.T) {
	h := newOrderHarness(t, harnessOptions{})
	r := rand.New(rand.NewPCG(11, 12))
	n := 120
	if testing.Short() {
		n = 40
	}
	var raws []json.RawMessage
	orders := map[int]*nop.Order{}
	for i := range n {
		o := genOrder(r, 5000+i, genOptions{Round: i%2 == 0})
		orders[o.ID] = o
		raws = append(raws, orderEvent(t, o, "order.updated", 1))
	}
	// The first 20 one by one (the single-event path), the rest as import chunks.
	for _, raw := range raws[:20] {
		body, _ := json.Marshal(map[string]json.RawMessage{"evt": raw})
		if err := h.eng.HandleMessage(h.ctx, "orders", body); err != nil {
			t.Fatal(err)
		}
	}
	for start := 20; start < len(raws); start += 40 {
		body, err := json.Marshal(map[string]any{"chunk": map[string]any{"id": fmt.Sprintf("chunk-%d", start), "events": raws[start:min(start+40, len(raws))]}})
		if err != nil {
			t.Fatal(err)
		}
		if err := h.eng.HandleMessage(h.ctx, "orders", body); err != nil {
			t.Fatalf("chunk %d: %v", start, err)
		}
	}
	for id, o := range orders {
		so := h.salesOrder(1, id)
		if so == nil {
			t.Fatalf("order %d not written: %+v", id, h.record(id))
		}
		want := o.OrderTotal.Round(2).Units() / 100
		if got := moneyCents(t, so, "totalamount"); got != want {
			t.Errorf("order %d (%d items): totalamount %.2f, orderTotal %s", id, len(o.Items), float64(got)/100, o.OrderTotal)
		}
	}
}

// Point 3: the status table, in business order.
func TestOrderStatusTable(t *testing.T) {
	h := newOrderHarness(t, harnessOptions{})
	evs := loadOrderEvents(t, "order-lifecycle.json")
	placed, paid, completed := evs[0], evs[1], evs[2]
	orderID := salesOrderID(1, 1001)
	state2 := func() (int, int) {
		so := h.salesOrder(1, 1001)
		return int(num(t, so, "statecode")), int(num(t, so, "statuscode"))
	}

	h.mustSend(placed)
	if s, c := state2(); s != 0 || c != 1 {
		t.Errorf("placed: %d/%d, want Active/New", s, c)
	}
	processing := reEvent(t, placed, "proc", "order.status_changed", 2, func(o map[string]any) { o["orderStatus"] = 20 })
	h.mustSend(processing)
	if s, c := state2(); s != 0 || c != 2 {
		t.Errorf("processing: %d/%d, want Active/Pending", s, c)
	}
	paid = reEvent(t, paid, "paid", "order.paid", 3, nil)
	h.mustSend(paid)
	inv := h.invoices(orderID)
	if len(inv) != 1 {
		t.Fatalf("paid: %d invoices, want 1", len(inv))
	}
	if num(t, inv[0], "statecode") != invoiceStatePaid || num(t, inv[0], "statuscode") != invoiceStatusComplete {
		t.Errorf("invoice %v/%v, want Paid/Complete", inv[0]["statecode"], inv[0]["statuscode"])
	}
	if rec := h.record(1001); !strings.EqualFold(rec.Extra[extraInvoiceID], fmt.Sprint(inv[0]["invoiceid"])) {
		t.Errorf("state invoice %q, want %v", rec.Extra[extraInvoiceID], inv[0]["invoiceid"])
	}
	completed = reEvent(t, completed, "done", "order.completed", 4, nil)
	h.mustSend(completed)
	if s, c := state2(); s != orderStateFulfilled || c != orderStatusComplete {
		t.Errorf("completed: %d/%d, want Fulfilled/Complete", s, c)
	}
	if n := len(h.invoices(orderID)); n != 1 {
		t.Errorf("%d invoices after completion, want still 1", n)
	}

	// A refund after completion is recorded, not a conflict, and leaves the invoice alone.
	refunded := reEvent(t, completed, "refund", "order.refunded", 5, func(o map[string]any) {
		o["paymentStatus"], o["refundedAmount"] = 40, "238.1000"
	})
	h.mustSend(refunded)
	rec := h.record(1001)
	if rec.Status != state.Synced || !strings.Contains(rec.Reason, "Refunded in nopCommerce: 238.10") {
		t.Errorf("refund: %s %q, want synced with the refund noted", rec.Status, rec.Reason)
	}
	if inv := h.invoices(orderID); len(inv) != 1 || num(t, inv[0], "statecode") != invoiceStatePaid {
		t.Errorf("refund changed the invoices: %v", inv)
	}

	// Fulfilled is final: a later edit is a conflict, not applied.
	before := len(h.lines(orderID))
	edited := reEvent(t, refunded, "edit", "order.updated", 6, func(o map[string]any) {
		o["items"] = o["items"].([]any)[:1]
	})
	if err := h.send(edited); err != nil {
		t.Fatalf("a conflict must be acknowledged: %v", err)
	}
	rec = h.record(1001)
	if rec.Status != state.Failed || rec.Transient || !strings.Contains(rec.Reason, "order closed in Dynamics 365") {
		t.Errorf("edit of a fulfilled order: %s transient=%v %q", rec.Status, rec.Transient, rec.Reason)
	}
	if n := len(h.lines(orderID)); n != before {
		t.Errorf("lines %d → %d on a fulfilled order", before, n)
	}

	// Deleting a paid order keeps it.
	del := reEvent(t, edited, "del", "order.deleted", 7, func(o map[string]any) { o["deleted"] = true })
	h.mustSend(del)
	if rec := h.record(1001); rec.Status != state.Skipped || rec.Reason != reasonPaidNotDeletable {
		t.Errorf("delete of a paid order: %s %q", rec.Status, rec.Reason)
	}
	if h.salesOrder(1, 1001) == nil {
		t.Error("the paid salesorder was deleted")
	}
}

// Point 3: cancellation, and deleting an unpaid order.
func TestOrderCancelAndDelete(t *testing.T) {
	h := newOrderHarness(t, harnessOptions{})
	ev := loadOrderEvents(t, "order-cancelled.json")[0]
	h.mustSend(ev)
	so := h.salesOrder(1, 1001)
	if so == nil || num(t, so, "statecode") != orderStateCanceled || num(t, so, "statuscode") != orderStatusNoMoney {
		t.Fatalf("cancelled order: %v", so)
	}
	if n := len(h.invoices(salesOrderID(1, 1001))); n != 0 {
		t.Errorf("%d invoices for an unpaid order", n)
	}
	// Canceled is final: completing it later is a conflict.
	h.mustSend(reEvent(t, ev, "late-complete", "order.completed", 3, func(o map[string]any) { o["orderStatus"] = 30 }))
	if rec := h.record(1001); rec.Status != state.Failed || !strings.Contains(rec.Reason, "order closed in Dynamics 365") {
		t.Errorf("completing a canceled order: %s %q", rec.Status, rec.Reason)
	}
	if so := h.salesOrder(1, 1001); num(t, so, "statecode") != orderStateCanceled {
		t.Errorf("canceled order moved to state %v", so["statecode"])
	}
	// Paid after the cancellation: Dynamics 365 does not invoice canceled orders.
	h.mustSend(reEvent(t, ev, "late-paid", "order.paid", 4, func(o map[string]any) {
		o["paymentStatus"], o["paidDateUtc"] = 30, "2026-11-25T12:00:00.000Z"
	}))
	if rec := h.record(1001); rec.Status != state.Failed || !strings.Contains(rec.Reason, conflictPaidCanceled) {
		t.Errorf("paying a canceled order: %s %q", rec.Status, rec.Reason)
	}
	if n := len(h.invoices(salesOrderID(1, 1001))); n != 0 {
		t.Errorf("%d invoices for a canceled order", n)
	}
	h.mustSend(reEvent(t, ev, "del", "order.deleted", 5, func(o map[string]any) { o["deleted"] = true }))
	if h.salesOrder(1, 1001) != nil {
		t.Error("the unpaid order was not deleted")
	}
	if n := len(h.lines(salesOrderID(1, 1001))); n != 0 {
		t.Errorf("%d lines left after the delete", n)
	}
	if rec := h.record(1001); rec.Status != state.Synced || rec.Reason != "deleted in nopCommerce; salesorder deleted" {
		t.Errorf("delete: %s %q", rec.Status, rec.Reason)
	}
}

// The sync state was lost while Dynamics 365 holds an order Fulfilled. The order's
// newest event, sent again (the agent's -resend), matches what Dynamics 365 holds: synced,
// also with a refund recorded since (a closed order's description never gets the note)
// and another shipping method (text is not compared: see closedOrderDiffers). An event
// that changed the order's amounts or items meanwhile is the conflict it is with the state
// intact ("changes ... not applied"), not synced as if applied; one by one and in a chunk.
func TestOrderClosedChangedWhileTheStateWasLost(t *testing.T) {
	evs := loadOrderEvents(t, "order-lifecycle.json")
	completed := evs[2]
	for _, bulk := range []bool{false, true} {
		for _, change := range []string{"", "refunded", "shipping method", "shipping fee", "item removed"} {
			t.Run(fmt.Sprintf("bulk=%v/change=%q", bulk, change), func(t *testing.T) {
				h := newOrderHarness(t, harnessOptions{})
				h.mustSend(completed)
				checkBusinessResult(t, h)
				h.wipeState()
				h.eng = h.engine()
				ev := reEvent(t, completed, "resent", "order.updated", 9, func(o map[string]any) {
					switch change {
					case "refunded":
						o["paymentStatus"], o["refundedAmount"] = 40, "238.1000"
					case "shipping method":
						o["shippingMethod"] = "Next day air"
					case "shipping fee":
						o["orderShippingInclTax"], o["orderShippingExclTax"], o["orderTotal"] = "16.0000", "15.0000", "243.1000"
					case "item removed":
						o["items"] = o["items"].([]any)[:1]
					}
				})
				if bulk {
					chunk, _ := json.Marshal(map[string]any{"chunk": map[string]any{"id": "chunk-resent", "events": []json.RawMessage{ev.Raw}}})
					if err := h.eng.HandleMessage(h.ctx, "orders", chunk); err != nil {
						t.Fatal(err)
					}
				} else {
					h.mustSend(ev)
				}
				rec := h.record(1001)
				amounts := change == "shipping fee" || change == "item removed"
				switch {
				case !amounts && rec.Status != state.Synced:
					t.Errorf("order re-sent after the wipe (%s): %s %q", change, rec.Status, rec.Reason)
				case amounts && (rec.Status != state.Failed || !strings.Contains(rec.Reason, "not applied")):
					t.Errorf("order changed while the state was lost: %s %q, want the closed order's conflict", rec.Status, rec.Reason)
				}
			})
		}
	}
}

// nopCommerce lets staff edit a paid order. Where converting leaves the salesorder Active,
// the edit lands on it, but its Paid invoice (made from the earlier lines, read-only in
// Dynamics 365) can't follow: the order's record says so, and keeps saying so after the
// order is completed; one by one and in a chunk.
func TestOrderEditedAfterItsInvoice(t *testing.T) {
	evs := loadOrderEvents(t, "order-lifecycle.json")
	paid, completed := evs[1], evs[2]
	edit := func(o map[string]any) { o["items"] = o["items"].([]any)[:1] }
	for _, bulk := range []bool{false, true} {
		t.Run(fmt.Sprintf("bulk=%v", bulk), func(t *testing.T) {
			h := newOrderHarness(t, harnessOptions{})
			send := func(ev *nop.Event) {
				if !bulk {
					h.mustSend(ev)
					return
				}
				chunk, _ := json.Marshal(map[string]any{"chunk": map[string]any{"id": "chunk-" + ev.ID, "events": []json.RawMessage{ev.Raw}}})
				if err := h.eng.HandleMessage(h.ctx, "orders", chunk); err != nil {
					t.Fatal(err)
				}
			}
			send(paid)
			if rec := h.record(1001); strings.Contains(rec.Reason, "invoice") {
				t.Fatalf("paid order, unchanged: %q", rec.Reason)
			}
			send(reEvent(t, paid, "edited", "order.updated", 5, edit))
			send(reEvent(t, completed, "done", "order.completed", 6, edit))
			rec := h.record(1001)
			if rec.Status != state.Synced || !strings.Contains(rec.Reason, "changed after invoice") {
				t.Errorf("order edited after its invoice: %s %q, want the invoice's mismatch said", rec.Status, rec.Reason)
			}
			if n := len(h.lines(salesOrderID(1, 1001))); n != 2 { // the kept item and the payment fee
				t.Errorf("%d lines after the edit, want 2", n)
			}
			if n := len(h.invoices(salesOrderID(1, 1001))); n != 1 {
				t.Errorf("%d invoices, want 1", n)
			}
		})
	}
}

// An order deleted in the store before any of its events reached Dynamics 365: nothing to
// delete, and its note says so (as a customer's and a product's do), not "salesorder
// deleted".
func TestOrderDeletedBeforeItReachedDynamics(t *testing.T) {
	h := newOrderHarness(t, harnessOptions{})
	placed := loadOrderEvents(t, "order-lifecycle.json")[0]
	h.mustSend(reEvent(t, placed, "del-first", "order.deleted", 5, func(o map[string]any) { o["deleted"] = true }))
	if rec := h.record(1001); rec.Status != state.Synced || rec.Reason != "deleted in nopCommerce before it reached Dynamics 365" {
		t.Errorf("order deleted before it reached Dynamics 365: %s %q", rec.Status, rec.Reason)
	}
	if h.salesOrder(1, 1001) != nil {
		t.Error("a salesorder exists for an order deleted before it was written")
	}
}

// checkBusinessResult asserts the end state of the lifecycle example: Fulfilled (or
// Invoiced where converting to an invoice closes the order), one Paid invoice, 3 lines,
// total 238.10, synced.
func checkBusinessResult(t *testing.T, h *env) {
	t.Helper()
	orderID := salesOrderID(1, 1001)
	so := h.salesOrder(1, 1001)
	if so == nil {
		t.Fatal("no salesorder")
	}
	wantState, wantStatus := orderStateFulfilled, orderStatusComplete
	if h.sim.ConvertSetsOrderInvoiced {
		wantState, wantStatus = orderStateInvoiced, 100003
	}
	if num(t, so, "statecode") != float64(wantState) || num(t, so, "statuscode") != float64(wantStatus) {
		t.Errorf("salesorder %v/%v, want %d/%d", so["statecode"], so["statuscode"], wantState, wantStatus)
	}
	if moneyCents(t, so, "totalamount") != 23810 {
		t.Errorf("totalamount %v", so["totalamount"])
	}
	inv := h.invoices(orderID)
	if len(inv) != 1 {
		t.Fatalf("%d invoices, want exactly 1", len(inv))
	}
	if num(t, inv[0], "statecode") != invoiceStatePaid {
		t.Errorf("invoice state %v, want Paid", inv[0]["statecode"])
	}
	if n := len(h.lines(orderID)); n != 3 {
		t.Errorf("%d lines, want 3", n)
	}
	if n := len(h.srv.Rows("salesorders")); n != 1 {
		t.Errorf("%d salesorders, want 1", n)
	}
	if rec := h.record(1001); rec.Status != state.Synced {
		t.Errorf("state %s %q", rec.Status, rec.Reason)
	}
	// The customer's and products' own events (when sent) landed on the rows the order made.
	if n := len(h.where("contacts", "emailaddress1", "ada.lovelace@example.com")); n != 1 {
		t.Errorf("%d contacts for the customer, want 1", n)
	}
	for _, sku := range []string{"N5500", "CAP-52"} {
		if n := len(h.where("products", "productnumber", sku)); n != 1 {
			t.Errorf("%d products %s, want 1", n, sku)
		}
	}
}

// Point 4: events in any order, duplicated, interleaved with customer and product events,
// give the business-order result; also where converting to an invoice closes the order.
func TestOrderEventsAnyOrder(t *testing.T) {
	evs := loadOrderEvents(t, "order-lifecycle.json")
	p, pd, c := evs[0], evs[1], evs[2]
	for _, invoiced := range []bool{false, true} {
		for name, seq := range map[string][]*nop.Event{
			"business":             {p, pd, c},
			"reversed":             {c, pd, p},
			"completed first":      {c, p, pd},
			"paid first":           {pd, c, p},
			"duplicated":           {p, p, pd, c, pd, c, p},
			"interleaved entities": {pd, nil, p, nil, c},
		} {
			t.Run(fmt.Sprintf("%s/convert-invoices-order=%v", name, invoiced), func(t *testing.T) {
				h := newOrderHarness(t, harnessOptions{sim: dataversetest.Options{ConvertSetsOrderInvoiced: invoiced}})
				for _, ev := range seq {
					if ev == nil {
						h.sendOther(t)
						continue
					}
					h.mustSend(ev)
				}
				checkBusinessResult(t, h)
			})
		}
	}
}

// sendOther delivers examples/' customer and product events on their queues.
func (h *env) sendOther(t *testing.T) {
	t.Helper()
	for _, x := range []struct {
		file, queue string
		entity      state.Entity
	}{{"customer-created.json", "customers", state.Customer}, {"product-simple.json", "products", state.Product}} {
		b := readExample(t, x.file)
		evs, err := nop.DecodeRequest(x.entity, b)
		if err != nil {
			t.Fatal(err)
		}
		msgs, err := nop.Messages(x.entity, evs)
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range msgs {
			if err := h.eng.HandleMessage(h.ctx, x.queue, m.Body); err != nil {
				t.Fatalf("%s: %v", x.file, err)
			}
		}
	}
}

// Point 4: a crash between two steps never produces a second invoice or order.
func TestOrderCrashBetweenSteps(t *testing.T) {
	completed := loadOrderEvents(t, "order-lifecycle.json")[2]

	t.Run("invoice created, answer lost", func(t *testing.T) {
		h := newOrderHarness(t, harnessOptions{})
		h.fdv.failAfter("ConvertSalesOrderToInvoice", 1)
		if err := h.send(completed); err == nil {
			t.Fatal("lost answer acknowledged")
		}
		if n := len(h.invoices(salesOrderID(1, 1001))); n != 1 {
			t.Fatalf("%d invoices after the lost answer, want the one created", n)
		}
		h.mustSend(completed) // redelivery
		checkBusinessResult(t, h)
		if got := h.fdv.count("ConvertSalesOrderToInvoice"); got != 1 {
			t.Errorf("ConvertSalesOrderToInvoice called %d times, want 1", got)
		}
	})
	t.Run("invoice created, state not saved", func(t *testing.T) {
		h := newOrderHarness(t, harnessOptions{})
		once := true
		h.st.failSave(func(r *state.Record) bool {
			if once && r.Entity == state.Order && r.Extra[extraInvoiceID] != "" {
				once = false
				return true
			}
			return false
		})
		if err := h.send(completed); err == nil {
			t.Fatal("failed state save acknowledged")
		}
		h.mustSend(completed)
		checkBusinessResult(t, h)
	})
	t.Run("fulfilled, answer lost", func(t *testing.T) {
		h := newOrderHarness(t, harnessOptions{})
		h.fdv.failAfter("FulfillSalesOrder", 1)
		if err := h.send(completed); err == nil {
			t.Fatal("lost answer acknowledged")
		}
		h.mustSend(completed)
		checkBusinessResult(t, h)
		if got := h.fdv.count("FulfillSalesOrder"); got != 1 {
			t.Errorf("FulfillSalesOrder called %d times, want 1 (the retry reads the state first)", got)
		}
	})
	t.Run("state table wiped", func(t *testing.T) {
		h := newOrderHarness(t, harnessOptions{})
		h.mustSend(completed)
		// A new engine with an empty state store over the same Dataverse: replays of every
		// event land on the same rows.
		h2 := newOrderHarness(t, harnessOptions{})
		h2.srv, h2.fdv.Dataverse = h.srv, h.dv
		for _, ev := range loadOrderEvents(t, "order-lifecycle.json") {
			h2.mustSend(ev)
		}
		checkBusinessResult(t, h2)
	})
}

// Point 5: a missing store currency fails the order visibly; it lands once the currency
// exists, by redelivery or by the engine's resync.
func TestOrderMissingCurrency(t *testing.T) {
	for _, via := range []string{"redelivery", "resync"} {
		t.Run(via, func(t *testing.T) {
			h := newOrderHarness(t, harnessOptions{currency: "GBP"})
			ev := reEvent(t, loadOrderEvents(t, "order-placed.json")[0], "gbp-1", "order.placed", 1, func(o map[string]any) {
				o["currencyCode"], o["customerCurrencyCode"] = "GBP", "GBP"
			})
			if err := h.send(ev); err == nil {
				t.Fatal("order without currency acknowledged: it would never be retried")
			}
			rec := h.record(1001)
			if rec.Status != state.Failed || !rec.Transient || !strings.Contains(rec.Reason, "GBP") {
				t.Fatalf("state %s transient=%v %q, want failed naming GBP", rec.Status, rec.Transient, rec.Reason)
			}
			if h.salesOrder(1, 1001) != nil {
				t.Fatal("salesorder written without currency")
			}
			h.addCurrency(t, "GBP")
			switch via {
			case "redelivery":
				h.mustSend(ev)
			case "resync":
				n, err := h.eng.Resync(h.ctx, state.Order, "failed")
				if err != nil || n != 1 {
					t.Fatalf("resync: %d, %v", n, err)
				}
			}
			if rec := h.record(1001); rec.Status != state.Synced {
				t.Fatalf("after adding GBP: %s %q", rec.Status, rec.Reason)
			}
			so := h.salesOrder(1, 1001)
			gbp := h.where("transactioncurrencies", "isocurrencycode", "GBP")
			if so == nil || len(gbp) != 1 || !strings.EqualFold(fmt.Sprint(so["_transactioncurrencyid_value"]), fmt.Sprint(gbp[0]["transactioncurrencyid"])) {
				t.Errorf("salesorder %v not in GBP", so)
			}
		})
	}
}

// Point 1: a guest's order gets a contact made from the billing address.
func TestOrderGuestContact(t *testing.T) {
	h := newOrderHarness(t, harnessOptions{})
	ev := reEvent(t, loadOrderEvents(t, "order-placed.json")[0], "guest-1", "order.placed", 1, func(o map[string]any) {
		c := o["customer"].(map[string]any)
		c["id"], c["isGuest"], c["isRegistered"], c["email"], c["username"] = 77, true, false, nil, nil
		c["firstName"], c["lastName"], c["address"] = nil, nil, nil
		b := o["billingAddress"].(map[string]any)
		b["email"], b["firstName"], b["lastName"] = "grace.hopper@example.com", "Grace", "Hopper"
	})
	h.mustSend(ev)
	contacts := h.where("contacts", "emailaddress1", "grace.hopper@example.com")
	if len(contacts) != 1 {
		t.Fatalf("%d contacts for the guest's billing email, want 1", len(contacts))
	}
	if contacts[0]["lastname"] != "Hopper" {
		t.Errorf("guest contact lastname %v, want Hopper", contacts[0]["lastname"])
	}
	so := h.salesOrder(1, 1001)
	if so == nil || !strings.EqualFold(fmt.Sprint(so["_customerid_value"]), fmt.Sprint(contacts[0]["contactid"])) {
		t.Errorf("salesorder customer %v, want the guest contact", so)
	}
}

// Point 5: a price list in another currency than the store's fails the order visibly;
// once the admin removes it, the next sync creates the right one and the order lands.
func TestOrderPriceListInOtherCurrency(t *testing.T) {
	plID := "6a7c3c1e-0000-4000-8000-000000000001"
	h := newOrderHarness(t, harnessOptions{sim: dataversetest.Options{
		Currencies: []dataversetest.Currency{{ISOCode: "EUR", Name: "Euro", Symbol: "€", Precision: 2, ExchangeRate: 0.9}},
		PriceLists: []dataversetest.PriceList{{ID: plID, Name: "nopCommerce USD", Currency: "EUR"}}}})
	ev := loadOrderEvents(t, "order-placed.json")[0]
	if err := h.send(ev); err == nil {
		t.Fatal("order acknowledged with a price list in the wrong currency")
	}
	rec := h.record(1001)
	if rec.Status != state.Failed || !rec.Transient || !strings.Contains(rec.Reason, "price list") {
		t.Fatalf("state %s transient=%v %q, want failed naming the price list", rec.Status, rec.Transient, rec.Reason)
	}
	if h.salesOrder(1, 1001) != nil {
		t.Fatal("salesorder written with the wrong price list")
	}
	if err := h.dv.Delete(h.ctx, "pricelevels", plID); err != nil {
		t.Fatal(err)
	}
	if _, err := h.eng.Resync(h.ctx, state.Order, "failed"); err != nil {
		t.Fatalf("resync: %v", err)
	}
	if rec := h.record(1001); rec.Status != state.Synced {
		t.Fatalf("after the fix: %s %q", rec.Status, rec.Reason)
	}
}

// retireProduct sends a product event for an unpublished product: Dynamics 365 holds it
// Retired, and refuses it on order lines.
func (h *env) retireProduct(t *testing.T, id int, sku string) {
	t.Helper()
	var pm map[string]any
	if err := json.Unmarshal(readExample(t, "product-simple.json"), &pm); err != nil {
		t.Fatal(err)
	}
	d := pm["data"].(map[string]any)
	d["id"], d["sku"], d["name"], d["published"], d["pictureUrls"] = id, sku, "Discontinued lens", false, []any{}
	pb, _ := json.Marshal(pm)
	pevs, err := nop.DecodeRequest(state.Product, pb)
	if err != nil {
		t.Fatal(err)
	}
	msgs, _ := nop.Messages(state.Product, pevs)
	if err := h.eng.HandleMessage(h.ctx, "products", msgs[0].Body); err != nil {
		t.Fatal(err)
	}
	if p := h.where("products", "productnumber", sku); len(p) != 1 || num(t, p[0], "statecode") != 1 {
		t.Fatalf("product %s not retired: %v", sku, p)
	}
}

// Point 1: an order line whose product Dynamics 365 refuses (Retired) lands as a write-in
// line named after the product, with the same amounts; the reason says so. A product
// deleted meanwhile (DELETE_POLICY=delete applied its delete before this older order
// arrived) is written in the same way (it was a 404, failed for good).
func TestOrderRetiredProductWrittenIn(t *testing.T) {
	for _, c := range []struct{ bulk, deleted bool }{{false, false}, {true, false}, {false, true}, {true, true}} {
		bulk := c.bulk
		t.Run(fmt.Sprintf("bulk=%v,deleted=%v", c.bulk, c.deleted), func(t *testing.T) {
			h := newOrderHarness(t, harnessOptions{})
			h.retireProduct(t, 12, "CAP-52")
			if c.deleted {
				if err := h.dv.Delete(h.ctx, "products", productID(1, 12)); err != nil {
					t.Fatal(err)
				}
			}
			ev := loadOrderEvents(t, "order-placed.json")[0]
			if bulk {
				body, _ := json.Marshal(map[string]any{"chunk": map[string]any{"id": "c1", "events": []json.RawMessage{ev.Raw}}})
				if err := h.eng.HandleMessage(h.ctx, "orders", body); err != nil {
					t.Fatal(err)
				}
			} else {
				h.mustSend(ev)
			}
			rec := h.record(1001)
			if rec.Status != state.Synced || !strings.Contains(rec.Reason, "write-in lines: Lens cap 52mm (CAP-52)") {
				t.Fatalf("state %s %q", rec.Status, rec.Reason)
			}
			l, ok := h.srv.Row("salesorderdetails", orderLineID(1, 5002))
			if !ok || l["isproductoverridden"] != true || l["productdescription"] != "Lens cap 52mm (CAP-52)" || l["_productid_value"] != nil {
				t.Errorf("line of the retired product: %v", l)
			}
			if so := h.salesOrder(1, 1001); moneyCents(t, so, "totalamount") != 23810 {
				t.Errorf("totalamount %v, want 238.10", so["totalamount"])
			}
		})
	}
}

// updatedOrdersChunk is a chunk message of an order.updated event (sequence seq) for
// each order.
func updatedOrdersChunk(t testing.TB, orders []*nop.Order, name string, seq int64) []byte {
	t.Helper()
	var raws []json.RawMessage
	for _, o := range orders {
		raws = append(raws, orderEvent(t, o, "order.updated", seq))
	}
	b, _ := json.Marshal(map[string]any{"chunk": map[string]any{"id": name, "events": raws}})
	return b
}

// Bulk path, paid orders: a chunk's new invoices are set to Paid with one UpdateMultiple
// (not a PATCH per invoice in each order's change set). Refused, the per-order change sets
// set them one by one; with the answer lost, the orders fail transiently and their
// redelivery finds the invoices Paid, each order with exactly one invoice.
func TestOrderBulkInvoicesPaidTogether(t *testing.T) {
	for _, fault := range []string{"", "refused", "answer lost"} {
		t.Run("fault "+fault, func(t *testing.T) {
			h := newOrderHarness(t, harnessOptions{})
			r := rand.New(rand.NewPCG(71, 72))
			var raws []json.RawMessage
			var orders []*nop.Order
			for id := 7400; id < 7406; id++ {
				o := genOrder(r, id, genOptions{Round: true})
				o.PaymentStatus = nop.PaymentStatusPaid
				if id%2 == 0 {
					o.OrderStatus = nop.OrderStatusComplete
				}
				orders = append(orders, o)
				raws = append(raws, orderEvent(t, o, "order.paid", 1))
			}
			chunk, _ := json.Marshal(map[string]any{"chunk": map[string]any{"id": "chunk-paid", "events": raws}})
			switch fault {
			case "refused":
				h.fdv.setFail(func(op, set string, _ []dataverse.Record) error {
					if op == "UpdateMultiple" && set == "invoices" {
						return refuse("refused in bulk")
					}
					return nil
				})
			case "answer lost":
				h.fdv.failAfter("UpdateMultiple invoices", 1)
			}
			err := h.eng.HandleMessage(h.ctx, "orders", chunk)
			if fault == "answer lost" {
				if err == nil {
					t.Fatal("chunk whose invoices' answer was lost: nil, want a transient failure")
				}
				for _, o := range orders {
					if rec := h.record(o.ID); rec.Status != state.Failed || !rec.Transient {
						t.Errorf("order %d after the lost answer: %s transient=%v", o.ID, rec.Status, rec.Transient)
					}
				}
				err = h.eng.HandleMessage(h.ctx, "orders", chunk) // Service Bus redelivers
			}
			if err != nil {
				t.Fatalf("chunk: %v", err)
			}
			if got := h.fdv.count("UpdateMultiple invoices"); got != 1 {
				t.Errorf("%d UpdateMultiple requests for the invoices, want 1", got)
			}
			for _, o := range orders {
				so := h.salesOrder(1, o.ID)
				if rec := h.record(o.ID); so == nil || rec.Status != state.Synced {
					t.Fatalf("order %d: salesorder %v, state %s %q", o.ID, so != nil, rec.Status, rec.Reason)
				}
				invs := h.invoices(salesOrderID(1, o.ID))
				if len(invs) != 1 {
					t.Fatalf("order %d: %d invoices, want 1", o.ID, len(invs))
				}
				if st, sc := num(t, invs[0], "statecode"), num(t, invs[0], "statuscode"); st != invoiceStatePaid || sc != invoiceStatusComplete {
					t.Errorf("order %d: invoice state %v/%v, want Paid %d/%d", o.ID, st, sc, invoiceStatePaid, invoiceStatusComplete)
				}
				wantState := 0.0
				if o.OrderStatus == nop.OrderStatusComplete {
					wantState = 3 // Fulfilled
				}
				if got := num(t, so, "statecode"); got != wantState && got != 4 {
					t.Errorf("order %d: salesorder statecode %v, want %v", o.ID, got, wantState)
				}
			}
		})
	}
}

// A paid order whose salesorder an admin canceled in Dynamics 365 after its invoice was
// made: Dynamics 365 invoices no canceled order, but the invoice that exists is set to
// Paid, as the store says, on the bulk path and one by one alike. (Before, the order was
// recorded synced with its invoice left unpaid and nothing said.)
func TestOrderCanceledInDynamicsKeepsItsInvoicePaid(t *testing.T) {
	for _, bulk := range []bool{true, false} {
		t.Run(fmt.Sprintf("bulk=%v", bulk), func(t *testing.T) {
			h := newOrderHarness(t, harnessOptions{})
			raws, orders := placedChunk(t, 81, 7500, 7503)
			chunk, _ := json.Marshal(map[string]any{"chunk": map[string]any{"id": "chunk-placed", "events": raws}})
			if err := h.eng.HandleMessage(h.ctx, "orders", chunk); err != nil {
				t.Fatal(err)
			}
			for _, o := range orders {
				id := salesOrderID(1, o.ID)
				if _, err := h.dv.ConvertSalesOrderToInvoice(h.ctx, id); err != nil {
					t.Fatal(err)
				}
				if err := h.dv.CancelSalesOrder(h.ctx, id, orderStatusNoMoney); err != nil {
					t.Fatal(err)
				}
				paid := o.CreatedOnUtc.Add(time.Hour)
				o.OrderStatus, o.PaymentStatus, o.PaidDateUtc = nop.OrderStatusCancelled, nop.PaymentStatusPaid, &paid
			}
			if bulk {
				if err := h.eng.HandleMessage(h.ctx, "orders", updatedOrdersChunk(t, orders, "chunk-paid", 2)); err != nil {
					t.Fatal(err)
				}
			} else {
				for _, o := range orders {
					evs, err := nop.DecodeRequest(state.Order, orderEvent(t, o, "order.updated", 2))
					if err != nil {
						t.Fatal(err)
					}
					h.mustSend(evs[0])
				}
			}
			for _, o := range orders {
				invs := h.invoices(salesOrderID(1, o.ID))
				if rec := h.record(o.ID); rec.Status != state.Synced {
					t.Errorf("order %d: %s %q", o.ID, rec.Status, rec.Reason)
				}
				if len(invs) != 1 || num(t, invs[0], "statecode") != invoiceStatePaid {
					t.Errorf("order %d: %d invoices, want one Paid: %v", o.ID, len(invs), invs)
				}
				if so := h.salesOrder(1, o.ID); num(t, so, "statecode") != orderStateCanceled {
					t.Errorf("order %d: salesorder statecode %v, want Canceled", o.ID, so["statecode"])
				}
			}
		})
	}
}

// A chunk's UpdateMultiple of invoices is refused although its invoices are Paid: the
// answer a real environment may give rows the client sent again after a lost answer (a
// bulk request goes again in halves), when the first request had set them Paid. The
// invoices are read, and those Paid are not sent again one by one (a PATCH of a Paid
// invoice, read-only in Dynamics 365, would fail the order for good).
func TestOrderBulkInvoicesPaidRefusedThoughApplied(t *testing.T) {
	h := newOrderHarness(t, harnessOptions{})
	r := rand.New(rand.NewPCG(91, 92))
	var raws []json.RawMessage
	var orders []*nop.Order
	for id := 7600; id < 7605; id++ {
		o := genOrder(r, id, genOptions{Round: true})
		o.PaymentStatus, o.OrderStatus = nop.PaymentStatusPaid, nop.OrderStatusComplete
		orders = append(orders, o)
		raws = append(raws, orderEvent(t, o, "order.paid", 1))
	}
	h.fdv.setFail(func(op, set string, recs []dataverse.Record) error {
		if op != "UpdateMultiple" || set != "invoices" {
			return nil
		}
		if err := h.dv.UpdateMultiple(h.ctx, set, "invoice", recs); err != nil {
			t.Errorf("setting the invoices Paid: %v", err)
		}
		// Were any invoice PATCHed one by one now, its change set would be refused.
		for _, rec := range recs {
			h.fdv.poisonPath(dataverse.EntityPath("invoices", rec["invoiceid"].(string)))
		}
		return refuse("The object cannot be updated because it is read-only.")
	})
	chunk, _ := json.Marshal(map[string]any{"chunk": map[string]any{"id": "chunk-paid-refused", "events": raws}})
	if err := h.eng.HandleMessage(h.ctx, "orders", chunk); err != nil {
		t.Fatal(err)
	}
	for _, o := range orders {
		rec := h.record(o.ID)
		invs := h.invoices(salesOrderID(1, o.ID))
		if rec.Status != state.Synced || len(invs) != 1 || num(t, invs[0], "statecode") != invoiceStatePaid {
			t.Errorf("order %d: %s %q, %d invoices %v", o.ID, rec.Status, rec.Reason, len(invs), invs)
		}
		if so := h.salesOrder(1, o.ID); num(t, so, "statecode") != orderStateFulfilled {
			t.Errorf("order %d: salesorder statecode %v, want Fulfilled", o.ID, so["statecode"])
		}
	}
}

// The sync state was lost, and orders arrive whose products Dynamics 365 holds Active
// (the store's push agent run without -resend after a wipe sends only what changed):
// the orders use the products as they are. Before, each product was written again from
// its order line alone, and Dynamics 365 was left with price 0, no description and a
// price list item of 0.00, with the products recorded synced.
func TestOrderAfterAWipeLeavesItsProductsAsTheyAre(t *testing.T) {
	for _, bulk := range []bool{false, true} {
		t.Run(fmt.Sprintf("bulk=%v", bulk), func(t *testing.T) {
			h := newOrderHarness(t, harnessOptions{})
			raws, orders := placedChunk(t, 101, 7700, 7703)
			used := map[int]bool{}
			for _, o := range orders {
				for _, it := range o.Items {
					used[it.Product.ID] = true
				}
			}
			before := map[int]map[string]any{}
			for id := range used {
				h.each(state.Product, productEvent(t, id, 1, func(d map[string]any) { d["price"] = fmt.Sprintf("%d.5000", 12+id) }))
				before[id] = h.row("products", productID(1, id))
			}
			h.wipeState()
			h.eng = h.engine()
			if bulk {
				chunk, _ := json.Marshal(map[string]any{"chunk": map[string]any{"id": "chunk-after-wipe", "events": raws}})
				if err := h.eng.HandleMessage(h.ctx, "orders", chunk); err != nil {
					t.Fatal(err)
				}
			} else {
				for _, raw := range raws {
					evs, err := nop.DecodeRequest(state.Order, raw)
					if err != nil {
						t.Fatal(err)
					}
					h.mustSend(evs[0])
				}
			}
			for id := range used {
				after := h.row("products", productID(1, id))
				for _, col := range []string{"price", "description", "productnumber", "name", "statecode"} {
					if fmt.Sprint(after[col]) != fmt.Sprint(before[id][col]) {
						t.Errorf("product %d: %s %v after the orders, was %v", id, col, after[col], before[id][col])
					}
				}
				rec := h.rec(state.Product, id)
				if rec.Status != state.Synced || !strings.Contains(rec.Reason, "found in Dynamics 365") {
					t.Errorf("product %d: %s %q", id, rec.Status, rec.Reason)
				}
			}
			for _, o := range orders {
				if rec := h.record(o.ID); rec.Status != state.Synced || h.salesOrder(1, o.ID) == nil {
					t.Errorf("order %d: %s %q", o.ID, rec.Status, rec.Reason)
				}
			}
		})
	}
}

// Bulk path, orders Dynamics 365 already has: a chunk's changes are packed into one
// $batch, each order its own change set; an order Dynamics 365 refuses is rolled back
// alone and the others land.
func TestOrderBulkOneBadOrder(t *testing.T) {
	h := newOrderHarness(t, harnessOptions{})
	r := rand.New(rand.NewPCG(21, 22))
	var orders []*nop.Order
	chunk := func(name string, seq int64) []byte { return updatedOrdersChunk(t, orders, name, seq) }
	for id := 7001; id <= 7004; id++ {
		orders = append(orders, genOrder(r, id, genOptions{Round: true}))
	}
	if err := h.eng.HandleMessage(h.ctx, "orders", chunk("chunk-v1", 1)); err != nil {
		t.Fatal(err)
	}
	for _, o := range orders {
		o.CustomOrderNumber = fmt.Sprintf("R-%d", o.ID)
	}
	h.fdv.poisonPath("salesorders(" + salesOrderID(1, 7002) + ")")
	before := h.fdv.count("Batch")
	if err := h.eng.HandleMessage(h.ctx, "orders", chunk("chunk-v2", 2)); err != nil {
		t.Fatalf("a permanent failure of one order must not fail the chunk: %v", err)
	}
	for _, o := range orders {
		so, rec := h.salesOrder(1, o.ID), h.record(o.ID)
		if o.ID == 7002 {
			if so == nil || so["name"] != "7002" || rec.Status != state.Failed || rec.Transient {
				t.Errorf("bad order: salesorder %v, state %s transient=%v %q", so, rec.Status, rec.Transient, rec.Reason)
			}
			continue
		}
		if so == nil || so["name"] != o.CustomOrderNumber || rec.Status != state.Synced {
			t.Errorf("order %d: salesorder %v, state %s %q", o.ID, so != nil, rec.Status, rec.Reason)
		}
	}
	if got := h.fdv.count("Batch") - before; got != 2 {
		t.Errorf("%d $batch requests, want 2 (all four orders, then the ones after the bad one again)", got)
	}
}

// Bulk path, new orders: headers in one CreateMultiple, lines in another. An order whose
// header or line Dynamics 365 refuses is isolated, tried alone, and when refused even so
// leaves nothing behind; the others land whole.
func TestOrderBulkCreate(t *testing.T) {
	for _, bad := range []string{"", "header", "line", "bulk unsupported"} {
		t.Run("refused "+bad, func(t *testing.T) {
			var ho harnessOptions
			if bad == "bulk unsupported" {
				// An environment without the bulk messages for orders: change sets instead.
				ho.sim.BulkUnsupported = []string{"salesorders", "salesorderdetails"}
			}
			h := newOrderHarness(t, ho)
			raws, orders := placedChunk(t, 31, 7101, 7112)
			const badID = 7105
			switch bad {
			case "header":
				h.fdv.poisonPath("salesorders(" + salesOrderID(1, badID) + ")")
			case "line":
				h.fdv.poisonPath("salesorderdetails(" + orderLineID(1, orders[badID-7101].Items[0].ID) + ")")
			}
			chunk, _ := json.Marshal(map[string]any{"chunk": map[string]any{"id": "chunk-new", "events": raws}})
			before := h.srv.Stats().Requests
			if err := h.eng.HandleMessage(h.ctx, "orders", chunk); err != nil {
				t.Fatalf("chunk: %v", err)
			}
			if bad == "bulk unsupported" {
				if n := h.srv.Stats().BatchParts; n == 0 {
					t.Errorf("no $batch parts: the orders were not written as change sets")
				}
				bad = "" // every order lands
			}
			if bad == "" && len(ho.sim.BulkUnsupported) == 0 {
				if n := h.fdv.count("CreateMultiple salesorders") + h.fdv.count("CreateMultiple salesorderdetails"); n != 2 {
					t.Errorf("%d CreateMultiple requests, want 2 (headers, lines)", n)
				}
				if n := h.fdv.count("Batch"); n != 0 {
					t.Errorf("%d $batch requests for new orders, want 0", n)
				}
				t.Logf("%d Dataverse requests for %d new orders", h.srv.Stats().Requests-before, len(orders))
			}
			for _, o := range orders {
				so, rec := h.salesOrder(1, o.ID), h.record(o.ID)
				if bad != "" && o.ID == badID {
					if so != nil || len(h.lines(salesOrderID(1, o.ID))) != 0 || rec.Status != state.Failed || rec.Transient {
						t.Errorf("refused order: salesorder %v, %d lines, state %s transient=%v %q",
							so != nil, len(h.lines(salesOrderID(1, o.ID))), rec.Status, rec.Transient, rec.Reason)
					}
					continue
				}
				if so == nil || rec.Status != state.Synced {
					t.Fatalf("order %d: salesorder %v, state %s %q", o.ID, so != nil, rec.Status, rec.Reason)
				}
				items := 0
				for _, l := range h.lines(salesOrderID(1, o.ID)) {
					if l["productdescription"] != "Payment fee" {
						items++
					}
				}
				if items != len(o.Items) {
					t.Errorf("order %d: %d item lines, want %d", o.ID, items, len(o.Items))
				}
				if got, want := moneyCents(t, so, "totalamount"), o.OrderTotal.Round(2).Units()/100; got != want {
					t.Errorf("order %d: totalamount %d cents, want %d", o.ID, got, want)
				}
			}
		})
	}
}

// bulkLifecycleOrders generates n orders in mixed end states: complete and paid,
// cancelled unpaid, processing and paid, pending.
func bulkLifecycleOrders(t testing.TB, n int) ([]*nop.Order, []byte) {
	r := rand.New(rand.NewPCG(41, 42))
	var orders []*nop.Order
	var evs []*nop.Event
	for i := range n {
		o := genOrder(r, 8000+i, genOptions{Round: true})
		o.Customer.ID = 900 + i%7
		paid := o.CreatedOnUtc.Add(time.Hour)
		switch i % 4 {
		case 0:
			o.OrderStatus, o.PaymentStatus, o.PaidDateUtc = nop.OrderStatusComplete, nop.PaymentStatusPaid, &paid
		case 1:
			o.OrderStatus = nop.OrderStatusCancelled
		case 2:
			o.OrderStatus, o.PaymentStatus, o.PaidDateUtc = nop.OrderStatusProcessing, nop.PaymentStatusPaid, &paid
		}
		orders = append(orders, o)
		ev, err := nop.DecodeRequest(state.Order, orderEvent(t, o, "order.updated", 1))
		if err != nil {
			t.Fatal(err)
		}
		evs = append(evs, ev...)
	}
	msgs, err := nop.Messages(state.Order, evs)
	if err != nil || len(msgs) != 1 {
		t.Fatalf("%d messages, %v", len(msgs), err)
	}
	return orders, msgs[0].Body
}

// checkBulkLifecycle asserts every order's end state after a chunk.
func checkBulkLifecycle(t *testing.T, h *env, orders []*nop.Order) {
	t.Helper()
	for i, o := range orders {
		so := h.salesOrder(1, o.ID)
		if so == nil {
			t.Errorf("order %d missing: %+v", o.ID, h.record(o.ID).Reason)
			continue
		}
		wantState, wantStatus, wantInvoices := []int{orderStateFulfilled, orderStateCanceled, orderStateActive, orderStateActive}[i%4],
			[]int{orderStatusComplete, orderStatusNoMoney, orderStatusPending, orderStatusNew}[i%4], []int{1, 0, 1, 0}[i%4]
		if int(num(t, so, "statecode")) != wantState || int(num(t, so, "statuscode")) != wantStatus {
			t.Errorf("order %d: %v/%v, want %d/%d", o.ID, so["statecode"], so["statuscode"], wantState, wantStatus)
		}
		inv := h.invoices(salesOrderID(1, o.ID))
		if len(inv) != wantInvoices {
			t.Errorf("order %d: %d invoices, want %d", o.ID, len(inv), wantInvoices)
		} else if wantInvoices == 1 && num(t, inv[0], "statecode") != invoiceStatePaid {
			t.Errorf("order %d: invoice not paid", o.ID)
		}
		if got, want := moneyCents(t, so, "totalamount"), o.OrderTotal.Round(2).Units()/100; got != want {
			t.Errorf("order %d: totalamount %d cents, want %d", o.ID, got, want)
		}
		if rec := h.record(o.ID); rec.Status != state.Synced {
			t.Errorf("order %d: %s %q", o.ID, rec.Status, rec.Reason)
		}
	}
}

// Point 3 on the bulk path: a chunk of orders in mixed states lands like single events,
// with invoices and closes packed into $batch requests.
func TestOrderBulkLifecycle(t *testing.T) {
	h := newOrderHarness(t, harnessOptions{})
	orders, body := bulkLifecycleOrders(t, 40)
	before := h.srv.Stats().Requests
	if err := h.eng.HandleMessage(h.ctx, "orders", body); err != nil {
		t.Fatal(err)
	}
	checkBulkLifecycle(t, h, orders)
	t.Logf("%d Dataverse requests for 40 orders", h.srv.Stats().Requests-before)
	// Redelivery of the same chunk changes nothing.
	rows := len(h.srv.Rows("salesorderdetails"))
	if err := h.eng.HandleMessage(h.ctx, "orders", body); err != nil {
		t.Fatal(err)
	}
	checkBulkLifecycle(t, h, orders)
	if n := len(h.srv.Rows("salesorderdetails")); n != rows {
		t.Errorf("lines %d → %d on redelivery", rows, n)
	}
}

// A chunk of orders the state has never seen creates their headers without reading
// them first; after the state table was wiped, the same chunk finds the salesorders
// that exist (the headers' CreateMultiple is refused) and lands them once, each paid
// order with its one invoice.
func TestOrderBulkUnseenOrdersNotRead(t *testing.T) {
	h := newOrderHarness(t, harnessOptions{})
	r := rand.New(rand.NewPCG(33, 34))
	var raws []json.RawMessage
	for id := 7201; id <= 7212; id++ {
		raws = append(raws, orderEvent(t, genOrder(r, id, genOptions{Round: true}), "order.placed", 1))
	}
	chunk, _ := json.Marshal(map[string]any{"chunk": map[string]any{"id": "chunk-placed", "events": raws}})
	if err := h.eng.HandleMessage(h.ctx, "orders", chunk); err != nil {
		t.Fatal(err)
	}
	if n := h.srv.Count("salesorders"); n != len(raws) {
		t.Fatalf("%d salesorders for %d new orders", n, len(raws))
	}
	if n := h.fdv.count("Query salesorders"); n != 0 {
		t.Errorf("%d salesorder queries for a chunk of new orders, want 0", n)
	}

	// Another harness: the client's pacing to the request limit would hold the rest back.
	h = newOrderHarness(t, harnessOptions{})
	orders, body := bulkLifecycleOrders(t, 20)
	if err := h.eng.HandleMessage(h.ctx, "orders", body); err != nil {
		t.Fatal(err)
	}
	checkBulkLifecycle(t, h, orders)
	created, read := h.fdv.count("CreateMultiple salesorders"), h.fdv.count("Query salesorders")

	// The orders' state is lost (the customers' and products' is kept: this is about orders).
	kept := h.st
	h.wipeState()
	for _, ent := range []state.Entity{state.Customer, state.Product} {
		if err := kept.Scan(h.ctx, ent, nil, func(r *state.Record) error {
			r.ETag = ""
			return h.st.Save(h.ctx, r)
		}); err != nil {
			t.Fatal(err)
		}
	}
	h.eng = h.engine()
	if err := h.eng.HandleMessage(h.ctx, "orders", body); err != nil {
		t.Fatalf("chunk after wiping state: %v", err)
	}
	checkBulkLifecycle(t, h, orders)
	if n := h.srv.Count("salesorders"); n != len(orders) {
		t.Errorf("%d salesorders for %d orders", n, len(orders))
	}
	if n := h.fdv.count("Query salesorders") - read; n == 0 {
		t.Error("existing salesorders not read after the refused CreateMultiple")
	}
	if n := h.fdv.count("CreateMultiple salesorders") - created; n != 1 {
		t.Errorf("%d header CreateMultiple requests after wiping state, want the 1 refused", n)
	}
}

// Point 4 on the bulk path: the answer to a $batch is lost (the process died) at each
// stage; the redelivered chunk creates no second invoice or order.
func TestOrderBulkCrashBetweenSteps(t *testing.T) {
	for _, lost := range []string{"CreateMultiple salesorders", "CreateMultiple salesorderdetails", "ConvertSalesOrderToInvoice", "FulfillSalesOrder", "CancelSalesOrder"} {
		t.Run("batch with "+lost, func(t *testing.T) {
			h := newOrderHarness(t, harnessOptions{})
			orders, body := bulkLifecycleOrders(t, 40)
			if strings.HasPrefix(lost, "CreateMultiple") {
				h.fdv.failAfter(lost, 1)
			} else {
				h.fdv.failAfterBatchWith(lost)
			}
			if err := h.eng.HandleMessage(h.ctx, "orders", body); err == nil {
				t.Fatal("chunk with a lost answer acknowledged")
			}
			if err := h.eng.HandleMessage(h.ctx, "orders", body); err != nil {
				t.Fatalf("redelivery: %v", err)
			}
			checkBulkLifecycle(t, h, orders)
			if n := h.srv.Count("salesorders"); n != len(orders) {
				t.Errorf("%d salesorders for %d orders", n, len(orders))
			}
		})
	}
}

// Point 5: an order in another currency than STORE_CURRENCY_CODE fails visibly instead
// of landing with its amounts in the wrong currency.
func TestOrderCurrencyMismatch(t *testing.T) {
	h := newOrderHarness(t, harnessOptions{currency: "EUR", sim: dataversetest.Options{
		Currencies: []dataversetest.Currency{{ISOCode: "EUR", Name: "Euro", Symbol: "€", Precision: 2, ExchangeRate: 0.9}}}})
	if err := h.send(loadOrderEvents(t, "order-placed.json")[0]); err == nil {
		t.Fatal("a USD order was acknowledged by an EUR store")
	}
	rec := h.record(1001)
	if rec.Status != state.Failed || !rec.Transient || !strings.Contains(rec.Reason, "STORE_CURRENCY_CODE is EUR") {
		t.Errorf("state %s transient=%v %q", rec.Status, rec.Transient, rec.Reason)
	}
	if h.salesOrder(1, 1001) != nil {
		t.Error("salesorder written in the wrong currency")
	}
}

// Point 4 with concurrency: orders are delivered at the same time (one session per order,
// as Service Bus does), each order's placed/paid/completed events shuffled and duplicated,
// sharing customers and products: every order ends in its business-order state, with one
// invoice, and no customer or product is created twice.
func TestOrderConcurrentSessions(t *testing.T) {
	h := newOrderHarness(t, harnessOptions{})
	r := rand.New(rand.NewPCG(51, 52))
	const n = 12
	var orders []*nop.Order
	sessions := make([][]*nop.Event, n)
	for i := range n {
		o := genOrder(r, 9000+i, genOptions{Round: true})
		cid := 950 + i%3
		o.Customer.ID = cid
		o.Customer.Email = genPtr(fmt.Sprintf("shared%d@example.test", cid))
		o.BillingAddress.Email = o.Customer.Email
		orders = append(orders, o)
		placed := *o
		paid := *o
		paidAt := o.CreatedOnUtc.Add(time.Hour)
		paid.OrderStatus, paid.PaymentStatus, paid.PaidDateUtc = nop.OrderStatusProcessing, nop.PaymentStatusPaid, &paidAt
		done := paid
		done.OrderStatus, done.ShippingStatus = nop.OrderStatusComplete, nop.ShippingStatusDelivered
		var evs []*nop.Event
		for seq, x := range []*nop.Order{&placed, &paid, &done} {
			ev, err := nop.DecodeRequest(state.Order, orderEvent(t, x, "order.updated", int64(seq+1)))
			if err != nil {
				t.Fatal(err)
			}
			evs = append(evs, ev[0])
		}
		evs = append(evs, evs[r.IntN(3)]) // a duplicate
		r.Shuffle(len(evs), func(a, b int) { evs[a], evs[b] = evs[b], evs[a] })
		sessions[i] = evs
	}
	var wg sync.WaitGroup
	errs := make(chan error, n*4)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for _, ev := range sessions[i] {
				// Service Bus redelivers what failed transiently (e.g. a lease held by a
				// sync of a shared customer): retry like it would.
				var err error
				for attempt := 0; attempt < 20; attempt++ {
					if err = h.send(ev); err == nil {
						break
					}
					time.Sleep(20 * time.Millisecond)
				}
				if err != nil {
					errs <- fmt.Errorf("order %s event %s: %w", ev.EntityID(), ev.ID, err)
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	for _, o := range orders {
		so := h.salesOrder(1, o.ID)
		if so == nil {
			t.Errorf("order %d missing: %q", o.ID, h.record(o.ID).Reason)
			continue
		}
		if num(t, so, "statecode") != orderStateFulfilled {
			t.Errorf("order %d: state %v, want Fulfilled", o.ID, so["statecode"])
		}
		if inv := h.invoices(salesOrderID(1, o.ID)); len(inv) != 1 {
			t.Errorf("order %d: %d invoices", o.ID, len(inv))
		}
		if got, want := moneyCents(t, so, "totalamount"), o.OrderTotal.Round(2).Units()/100; got != want {
			t.Errorf("order %d: totalamount %d, want %d cents", o.ID, got, want)
		}
	}
	for cid := 950; cid < 953; cid++ {
		if c := h.where("contacts", "emailaddress1", fmt.Sprintf("shared%d@example.test", cid)); len(c) != 1 {
			t.Errorf("customer %d: %d contacts", cid, len(c))
		}
	}
	seen := map[string]int{}
	for _, p := range h.srv.Rows("products") {
		seen[fmt.Sprint(p["productnumber"])]++
	}
	for num, c := range seen {
		if c != 1 {
			t.Errorf("product %s: %d rows", num, c)
		}
	}
}

// Resync "all" repairs an Active order changed in Dynamics 365 (a line deleted by hand)
// and leaves a closed one alone.
func TestOrderResyncAllRepairs(t *testing.T) {
	h := newOrderHarness(t, harnessOptions{})
	h.mustSend(loadOrderEvents(t, "order-placed.json")[0])
	orderID := salesOrderID(1, 1001)
	if err := h.dv.Delete(h.ctx, "salesorderdetails", orderLineID(1, 5002)); err != nil {
		t.Fatal(err)
	}
	if n := len(h.lines(orderID)); n != 2 {
		t.Fatalf("%d lines after the manual delete", n)
	}
	if n, err := h.eng.Resync(h.ctx, state.Order, "all"); err != nil || n != 1 {
		t.Fatalf("resync: %d, %v", n, err)
	}
	if n := len(h.lines(orderID)); n != 3 {
		t.Errorf("%d lines after resync, want 3", n)
	}
	if so := h.salesOrder(1, 1001); moneyCents(t, so, "totalamount") != 23810 {
		t.Errorf("totalamount %v after resync", so["totalamount"])
	}
}

// An import chunk's guest orders get their contacts together: one email look-up and one
// CreateMultiple for the guests without a contact, not a look-up and a write per guest.
// A guest whose email an active contact has adopts it; two orders of one guest share
// one contact.
func TestOrderBulkGuestContactsTogether(t *testing.T) {
	h := newOrderHarness(t, harnessOptions{})
	adopted, err := h.dv.Create(h.ctx, "contacts", dataverse.Record{"lastname": "Existing", "emailaddress1": "guest3@example.test"})
	if err != nil {
		t.Fatal(err)
	}
	r := rand.New(rand.NewPCG(51, 52))
	var raws []json.RawMessage
	var orders []*nop.Order
	email := func(id int) string { return fmt.Sprintf("guest%d@example.test", (id-7200)%10) } // 10 guests, 12 orders
	for id := 7200; id < 7212; id++ {
		o := genOrder(r, id, genOptions{Round: true})
		o.Customer.ID = 500 + (id-7200)%10
		o.Customer.IsGuest, o.Customer.IsRegistered, o.Customer.Email = true, false, nil
		o.BillingAddress.Email = genPtr(email(id))
		orders = append(orders, o)
		raws = append(raws, orderEvent(t, o, "order.placed", 1))
	}
	chunk, _ := json.Marshal(map[string]any{"chunk": map[string]any{"id": "chunk-guests", "events": raws}})
	if err := h.eng.HandleMessage(h.ctx, "orders", chunk); err != nil {
		t.Fatalf("chunk: %v", err)
	}
	if n, m := h.fdv.count("Upsert contacts"), h.fdv.count("CreateMultiple contacts"); n != 0 || m != 1 {
		t.Errorf("contacts of 10 guests (one adopted): %d single writes and %d CreateMultiple, want 0 and 1", n, m)
	}
	for _, o := range orders {
		contacts := h.where("contacts", "emailaddress1", email(o.ID))
		if len(contacts) != 1 {
			t.Fatalf("order %d: %d contacts with the guest's email, want 1", o.ID, len(contacts))
		}
		want := fmt.Sprint(contacts[0]["contactid"])
		if email(o.ID) == "guest3@example.test" && !strings.EqualFold(want, adopted) {
			t.Errorf("guest 3 has contact %s, want the existing %s", want, adopted)
		}
		so := h.salesOrder(1, o.ID)
		if so == nil || !strings.EqualFold(fmt.Sprint(so["_customerid_value"]), want) {
			t.Errorf("order %d: salesorder customer %v, want %s", o.ID, so["_customerid_value"], want)
		}
	}
}

// When an order chunk can't read its customers' state ahead, its guests are not given
// contacts in bulk: a customer the guest path serves (here: a synced customer whose email
// was removed) keeps the contact its state names, and no contact is made from its
// billing address.
func TestOrderBulkGuestsWithoutCustomerState(t *testing.T) {
	h := newOrderHarness(t, harnessOptions{})
	tmpl := example(t, "customer-created.json")[0]
	h.each(state.Customer, customerEvent(t, tmpl, 600, 1, "before@example.test", func(d map[string]any) { d["company"] = nil }))
	rec, err := h.st.Get(h.ctx, state.Customer, "600")
	if err != nil || rec.DataverseID == "" {
		t.Fatalf("customer 600: %v %+v", err, rec)
	}
	r := rand.New(rand.NewPCG(61, 62))
	var raws []json.RawMessage
	for id := 7300; id < 7304; id++ {
		o := genOrder(r, id, genOptions{Round: true})
		o.Customer.ID, o.Customer.Email = 600, nil // registered, now without email: the guest path
		o.BillingAddress.Email = genPtr("billing600@example.test")
		raws = append(raws, orderEvent(t, o, "order.placed", 1))
	}
	h.st.mu.Lock()
	h.st.failGetMany = state.Customer
	h.st.mu.Unlock()
	chunk, _ := json.Marshal(map[string]any{"chunk": map[string]any{"id": "chunk-no-customer-state", "events": raws}})
	if err := h.eng.HandleMessage(h.ctx, "orders", chunk); err != nil {
		t.Fatalf("chunk: %v", err)
	}
	if got := h.where("contacts", "emailaddress1", "billing600@example.test"); len(got) != 0 {
		t.Errorf("%d contacts made from the billing address of a customer whose contact the state names, want 0", len(got))
	}
	for id := 7300; id < 7304; id++ {
		so := h.salesOrder(1, id)
		if so == nil || !strings.EqualFold(fmt.Sprint(so["_customerid_value"]), rec.DataverseID) {
			t.Errorf("order %d: salesorder customer %v, want the customer's contact %s", id, so, rec.DataverseID)
		}
	}
}

// A paid order deleted in the store is kept in Dynamics 365 with its one invoice, and the
// result is the same whatever order its events arrive in, one by one or in one import
// chunk (which applies only the newest event): its delete carries the paid state.
func TestOrderPaidThenDeletedKeptInAnyOrder(t *testing.T) {
	evs := loadOrderEvents(t, "order-lifecycle.json")
	placed, paid := evs[0], evs[1]
	deleted := reEvent(t, paid, "del-1001", "order.deleted", 3, func(o map[string]any) { o["deleted"] = true })
	check := func(t *testing.T, h *env) {
		t.Helper()
		if rec := h.record(1001); rec.Status != state.Skipped || rec.Reason != reasonPaidNotDeletable {
			t.Errorf("record %s %q, want skipped: %s", rec.Status, rec.Reason, reasonPaidNotDeletable)
		}
		if h.salesOrder(1, 1001) == nil {
			t.Fatal("the paid salesorder was deleted")
		}
		if inv := h.invoices(salesOrderID(1, 1001)); len(inv) != 1 || num(t, inv[0], "statecode") != invoiceStatePaid {
			t.Errorf("invoices %v, want one, Paid", inv)
		}
	}
	for name, order := range map[string][]*nop.Event{
		"business order":    {placed, paid, deleted},
		"delete before pay": {placed, deleted, paid},
		"delete first":      {deleted, paid, placed},
		"delete alone":      {deleted},
	} {
		t.Run(name, func(t *testing.T) {
			h := newOrderHarness(t, harnessOptions{})
			for _, ev := range order {
				h.mustSend(ev)
			}
			check(t, h)
		})
	}
	t.Run("one import chunk", func(t *testing.T) {
		h := newOrderHarness(t, harnessOptions{})
		var raws []json.RawMessage
		for _, ev := range []*nop.Event{placed, paid, deleted} {
			raws = append(raws, ev.Raw)
		}
		chunk, _ := json.Marshal(map[string]any{"chunk": map[string]any{"id": "chunk-paid-deleted", "events": raws}})
		if err := h.eng.HandleMessage(h.ctx, "orders", chunk); err != nil {
			t.Fatal(err)
		}
		check(t, h)
	})
}

// A guest's billing email longer than a contact's emailaddress1 fails the order for good
// with the reason (the store reader refuses such an order alike), alone and in a chunk,
// instead of a contact with a cut address; no contact is written.
func TestOrderGuestEmailOverContactLength(t *testing.T) {
	long := strings.Repeat("g", 96) + ".second@example.com"
	for _, bulk := range []bool{false, true} {
		t.Run(fmt.Sprintf("bulk=%v", bulk), func(t *testing.T) {
			h := newOrderHarness(t, harnessOptions{})
			r := rand.New(rand.NewPCG(61, 62))
			var raws []json.RawMessage
			for id := 7300; id < 7302; id++ {
				o := genOrder(r, id, genOptions{Round: true})
				o.Customer.ID = 800 + id - 7300
				o.Customer.IsGuest, o.Customer.IsRegistered, o.Customer.Email = true, false, nil
				o.BillingAddress.Email = genPtr(fmt.Sprintf("guest%d@example.test", id))
				if id == 7300 {
					o.BillingAddress.Email = genPtr(long)
				}
				raws = append(raws, orderEvent(t, o, "order.placed", 1))
			}
			if bulk {
				chunk, _ := json.Marshal(map[string]any{"chunk": map[string]any{"id": "chunk-long-email", "events": raws}})
				if err := h.eng.HandleMessage(h.ctx, "orders", chunk); err != nil {
					t.Fatalf("chunk: %v", err)
				}
			} else {
				for _, raw := range raws {
					msg, _ := json.Marshal(map[string]json.RawMessage{"evt": raw})
					if err := h.eng.HandleMessage(h.ctx, "orders", msg); err != nil {
						t.Fatalf("order: %v", err)
					}
				}
			}
			rec, err := h.st.Get(h.ctx, state.Order, "7300")
			if err != nil || rec.Status != state.Failed || !strings.Contains(rec.Reason, "billingAddress.email is 115 characters") {
				t.Fatalf("order 7300: %v %+v, want failed with the reason", err, rec)
			}
			if got := h.where("contacts", "emailaddress1", long[:100]); len(got) != 0 {
				t.Errorf("a contact with the cut email was written: %v", got)
			}
			if rec, err := h.st.Get(h.ctx, state.Order, "7301"); err != nil || rec.Status != state.Synced {
				t.Errorf("order 7301: %v %+v, want synced", err, rec)
			}
		})
	}
}

// An import chunk's order that Dynamics 365 refuses for good, even alone, has the header
// bulk created taken back; when that delete fails too, the order's failure says the
// salesorder is still in Dynamics 365 with part of its lines, rather than reading as if
// nothing of it were there.
func TestOrderBulkRefusedHeaderLeftBehindIsSaid(t *testing.T) {
	h := newOrderHarness(t, harnessOptions{})
	raws, orders := placedChunk(t, 31, 7101, 7112)
	const badID = 7105
	bad := orders[badID-7101]
	h.fdv.poisonPath("salesorderdetails(" + orderLineID(1, bad.Items[0].ID) + ")")
	h.fdv.failBefore("Delete salesorders", 100) // the clean-up answered 503
	chunk, _ := json.Marshal(map[string]any{"chunk": map[string]any{"id": "chunk-new", "events": raws}})
	if err := h.eng.HandleMessage(h.ctx, "orders", chunk); err != nil {
		t.Fatal(err)
	}
	if h.salesOrder(1, badID) == nil {
		t.Skip("the refused order's header was removed: nothing left behind to report")
	}
	rec := h.record(badID)
	if rec.Status != state.Failed || !strings.Contains(rec.Reason, "stays in Dynamics 365 with part of its lines") || !strings.Contains(rec.Reason, salesOrderID(1, badID)) {
		t.Errorf("order %d: %s %q, want failed naming the salesorder left in Dynamics 365", badID, rec.Status, rec.Reason)
	}
}

// placedChunk generates orders from..to (seeded with seed) and their "placed" events.
func placedChunk(t *testing.T, seed uint64, from, to int) ([]json.RawMessage, []*nop.Order) {
	r := rand.New(rand.NewPCG(seed, seed+1))
	var raws []json.RawMessage
	var orders []*nop.Order
	for id := from; id <= to; id++ {
		o := genOrder(r, id, genOptions{Round: true})
		orders = append(orders, o)
		raws = append(raws, orderEvent(t, o, "order.placed", 1))
	}
	return raws, orders
}
