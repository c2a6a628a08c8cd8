package syncer

import (
	"testing"

	"github.com/nopsync/nopsync/shared/dataverse/dataversetest"
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
