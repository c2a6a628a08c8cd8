package syncer

import (
	"testing"

	"github.com/nopsync/nopsync/shared/dataverse/dataversetest"
)

// ConvertSalesOrderToInvoice makes a new invoice each time it runs, so the client never
// sends it again blindly. Its answer is lost on the wire after Dataverse ran it: the
// engine reads the order's invoices, finds the one made and uses it, in the same
// invocation. (Before, the HTTP pipeline sent the conversion again and the order had two
// invoices.)
func TestOrderConversionAnswerLostOnTheWire(t *testing.T) {
	completed := loadOrderEvents(t, "order-lifecycle.json")[2]
	h := newOrderHarness(t, harnessOptions{})
	h.srv.SetFaults(dataversetest.Faults{DropAnswers: 1, DropAnswerPath: "ConvertSalesOrderToInvoice"})
	if err := h.send(completed); err != nil {
		t.Fatalf("lost answer not settled in the invocation: %v", err)
	}
	if n := len(h.invoices(salesOrderID(1, 1001))); n != 1 {
		t.Fatalf("%d invoices after the lost answer, want the one made", n)
	}
	checkBusinessResult(t, h)
	// A redelivery changes nothing.
	h.mustSend(completed)
	if n := len(h.invoices(salesOrderID(1, 1001))); n != 1 {
		t.Fatalf("%d invoices after a redelivery", n)
	}
}

// A $batch of conversions fails with a 5xx at its third part: the first two ran. The
// batch is not sent again (that would run them twice); the failed part's order reads its
// invoices and is converted alone when it has none, the later parts go on, and every
// paid order ends with exactly one invoice without a redelivery.
func TestOrderBulkConversionBatchFailsAtPart(t *testing.T) {
	h := newOrderHarness(t, harnessOptions{})
	orders, body := bulkLifecycleOrders(t, 40)
	h.srv.SetFaults(dataversetest.Faults{FailBatchPart: 3, FailBatchPartStatus: 500, FailBatchWith: "ConvertSalesOrderToInvoice"})
	if err := h.eng.HandleMessage(h.ctx, "orders", body); err != nil {
		t.Fatalf("chunk with a failed conversion part not settled in the invocation: %v", err)
	}
	for _, o := range orders {
		if n := len(h.invoices(salesOrderID(1, o.ID))); n > 1 {
			t.Errorf("order %d: %d invoices after the failed batch", o.ID, n)
		}
	}
	checkBulkLifecycle(t, h, orders)
	if err := h.eng.HandleMessage(h.ctx, "orders", body); err != nil {
		t.Fatalf("redelivery: %v", err)
	}
	checkBulkLifecycle(t, h, orders)
}
