package syncer

import (
	"testing"

	"github.com/nopsync/nopsync/shared/dataverse/dataversetest"
	"github.com/nopsync/nopsync/shared/nop"
	"github.com/nopsync/nopsync/shared/state"
)

// ConvertSalesOrderToInvoice makes a new invoice each time it runs, so the client never
// sends it again blindly. Its answer is lost on the wire after Dataverse ran it: the
// message fails, and its redelivery finds the invoice instead of making a second one.
// (Before, the HTTP pipeline sent the conversion again and the order had two invoices.)
func TestOrderConversionAnswerLostOnTheWire(t *testing.T) {
	completed := loadOrderEvents(t, "order-lifecycle.json")[2]
	h := newOrderHarness(t, harnessOptions{})
	h.srv.SetFaults(dataversetest.Faults{DropAnswers: 1, DropAnswerPath: "ConvertSalesOrderToInvoice"})
	err := h.send(completed)
	if n := len(h.invoices(salesOrderID(1, 1001))); n != 1 {
		t.Fatalf("%d invoices after the lost answer, want the one made", n)
	}
	if err == nil {
		t.Fatal("lost answer acknowledged")
	}
	h.mustSend(completed)
	checkBusinessResult(t, h)
}

// A $batch of conversions fails with a 5xx at its third part: the first two ran. The
// batch is not sent again (that would run them twice); the orders without an invoice get
// theirs on redelivery, and every paid order ends with exactly one.
func TestOrderBulkConversionBatchFailsAtPart(t *testing.T) {
	h := newOrderHarness(t, harnessOptions{})
	orders, body := bulkLifecycleOrders(t, 40)
	h.srv.SetFaults(dataversetest.Faults{FailBatchPart: 3, FailBatchPartStatus: 500, FailBatchWith: "ConvertSalesOrderToInvoice"})
	err := h.eng.HandleMessage(h.ctx, "orders", body)
	for _, o := range orders {
		if n := len(h.invoices(salesOrderID(1, o.ID))); n > 1 {
			t.Errorf("order %d: %d invoices after the failed batch", o.ID, n)
		}
	}
	if err == nil {
		t.Fatal("chunk with a failed conversion acknowledged")
	}
	if err := h.eng.HandleMessage(h.ctx, "orders", body); err != nil {
		t.Fatalf("redelivery: %v", err)
	}
	checkBulkLifecycle(t, h, orders)
}

// A close (FulfillSalesOrder, CancelSalesOrder) runs once: Dataverse refuses to close a
// closed order. Its answer is lost on the wire after Dataverse ran it: the message fails
// (transient), and its redelivery reads the order closed and records it synced. (Before,
// the HTTP pipeline sent the close again, Dataverse refused it, and the order was
// recorded failed for good though Dynamics 365 held it closed.)
func TestOrderCloseAnswerLostOnTheWire(t *testing.T) {
	events := loadOrderEvents(t, "order-lifecycle.json")
	for _, action := range []string{"FulfillSalesOrder", "CancelSalesOrder"} {
		t.Run(action, func(t *testing.T) {
			ev := events[2] // completed
			if action == "CancelSalesOrder" {
				ev = reEvent(t, events[0], "cancel-1", "order.cancelled", 2, func(o map[string]any) { o["orderStatus"] = nop.OrderStatusCancelled })
			}
			h := newOrderHarness(t, harnessOptions{})
			h.srv.SetFaults(dataversetest.Faults{DropAnswers: 1, DropAnswerPath: action})
			if err := h.send(ev); err == nil {
				t.Fatal("lost answer acknowledged")
			}
			if rec := h.record(1001); rec.Status != state.Failed || !rec.Transient {
				t.Fatalf("after the lost answer: %s transient=%v %q, want a transient failure", rec.Status, rec.Transient, rec.Reason)
			}
			h.mustSend(ev)
			if rec := h.record(1001); rec.Status != state.Synced {
				t.Fatalf("after redelivery: %s %q, want synced", rec.Status, rec.Reason)
			}
			want := orderStateFulfilled
			if action == "CancelSalesOrder" {
				want = orderStateCanceled
			}
			if so := h.salesOrder(1, 1001); int(numOf(so["statecode"])) != want {
				t.Errorf("salesorder state %v, want %d", so["statecode"], want)
			}
		})
	}
}

// A $batch of lifecycle change sets (invoice Paid, then fulfil or cancel) fails with a
// 5xx at a later part: the change sets before it ran and closed their orders. The batch
// is not sent again whole (their closes would be refused and the orders recorded failed
// for good); the chunk's redelivery reads which orders are closed, and every order ends
// synced in its state.
func TestOrderBulkCloseBatchFailsAtPart(t *testing.T) {
	h := newOrderHarness(t, harnessOptions{})
	orders, body := bulkLifecycleOrders(t, 40)
	h.srv.SetFaults(dataversetest.Faults{FailBatchPart: 6, FailBatchPartStatus: 500, FailBatchWith: "FulfillSalesOrder"})
	if err := h.eng.HandleMessage(h.ctx, "orders", body); err == nil {
		t.Fatal("chunk with a failed close acknowledged")
	}
	for _, o := range orders {
		if rec := h.record(o.ID); rec.Status == state.Failed && !rec.Transient {
			t.Errorf("order %d recorded failed for good: %q", o.ID, rec.Reason)
		}
	}
	if err := h.eng.HandleMessage(h.ctx, "orders", body); err != nil {
		t.Fatalf("redelivery: %v", err)
	}
	checkBulkLifecycle(t, h, orders)
}
