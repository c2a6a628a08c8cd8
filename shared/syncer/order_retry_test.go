package syncer

import (
	"fmt"
	"math/rand/v2"
	"slices"
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

// A $batch of order rewrites (change sets of upserts) whose answer is lost as a whole is
// not sent again whole: its halves go on their own, and every order lands. The batches
// are sized by DATAVERSE_BULK_SIZE (rows per request), not a fixed number of orders.
func TestOrderBulkRewriteBatchSplitAndSized(t *testing.T) {
	const bulkSize = 40
	h := newOrderHarness(t, harnessOptions{bulkSize: bulkSize})
	r := rand.New(rand.NewPCG(51, 52))
	var orders []*nop.Order
	chunk := func(name string, seq int64) []byte { return updatedOrdersChunk(t, orders, name, seq) }
	for id := 7301; id <= 7324; id++ {
		orders = append(orders, genOrder(r, id, genOptions{Round: true}))
	}
	if err := h.eng.HandleMessage(h.ctx, "orders", chunk("chunk-v1", 1)); err != nil {
		t.Fatal(err)
	}
	for _, o := range orders {
		o.CustomOrderNumber = fmt.Sprintf("R-%d", o.ID)
	}
	h.fdv.mu.Lock()
	h.fdv.batchOps = nil
	h.fdv.mu.Unlock()
	h.srv.SetFaults(dataversetest.Faults{DropAnswers: 1, DropAnswerPath: "$batch"})
	if err := h.eng.HandleMessage(h.ctx, "orders", chunk("chunk-v2", 2)); err != nil {
		t.Fatalf("chunk: %v", err)
	}
	for _, o := range orders {
		if so, rec := h.salesOrder(1, o.ID), h.record(o.ID); so == nil || so["name"] != o.CustomOrderNumber || rec.Status != state.Synced {
			t.Errorf("order %d: salesorder %v, state %s %q", o.ID, so != nil, rec.Status, rec.Reason)
		}
	}
	h.fdv.mu.Lock()
	ops := slices.Clone(h.fdv.batchOps)
	h.fdv.mu.Unlock()
	if len(ops) == 0 || slices.Max(ops) > bulkSize {
		t.Errorf("$batch operations %v, want none above DATAVERSE_BULK_SIZE %d", ops, bulkSize)
	}
	// The lost one, then its halves, later (the chunk's batches go side by side).
	split := false
	for i := range ops {
		for j := i + 1; j < len(ops); j++ {
			for k := j + 1; k < len(ops); k++ {
				if ops[j] < ops[i] && ops[k] < ops[i] && ops[j]+ops[k] == ops[i] {
					split = true
				}
			}
		}
	}
	if !split {
		t.Errorf("$batch operations %v: the batch whose answer was lost was not sent again in halves", ops)
	}
}

// Setting a chunk's invoices to Paid (UpdateMultiple) ran in Dataverse, but its answer
// was lost on the wire; the client sends it again in halves (a lost answer is splittable),
// which meet invoices already Paid. The orders must not end failed for good for that: they
// end synced or fail transiently, and their redelivery finds the invoices Paid.
func TestOrderBulkInvoicesPaidAnswerLostOnTheWire(t *testing.T) {
	h := newOrderHarness(t, harnessOptions{})
	orders, body := bulkLifecycleOrders(t, 40)
	h.srv.SetFaults(dataversetest.Faults{DropAnswers: 1, DropAnswerPath: "invoices/Microsoft.Dynamics.CRM.UpdateMultiple"})
	_ = h.eng.HandleMessage(h.ctx, "orders", body) // acknowledged, or failed transiently
	if op := h.srv.Stats().Operations["POST invoices/Microsoft.Dynamics.CRM.UpdateMultiple"]; op.Requests < 2 {
		t.Fatalf("%d UpdateMultiple requests for the invoices: the lost answer was not followed by another request", op.Requests)
	}
	for _, o := range orders {
		if rec := h.record(o.ID); rec.Status == state.Failed && !rec.Transient {
			t.Errorf("order %d failed for good after a lost answer: %s", o.ID, rec.Reason)
		}
	}
	if err := h.eng.HandleMessage(h.ctx, "orders", body); err != nil {
		t.Fatalf("redelivery: %v", err)
	}
	checkBulkLifecycle(t, h, orders)
}
