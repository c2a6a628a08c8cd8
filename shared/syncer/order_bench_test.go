package syncer

import (
	"encoding/json"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/nopsync/nopsync/shared/nop"
	"github.com/nopsync/nopsync/shared/state"
)

// BenchmarkImportOrderChunks imports 500 historical orders (paid and completed, so each
// needs header and lines, an invoice set to Paid and a fulfilment) in import chunks, and
// reports Dataverse requests per order and orders per second.
func BenchmarkImportOrderChunks(b *testing.B) {
	const n = 500
	for it := 0; it < b.N; it++ {
		b.StopTimer()
		h := newOrderHarness(b, harnessOptions{})
		r := rand.New(rand.NewPCG(31, 32))
		var evs []*nop.Event
		for i := range n {
			o := genOrder(r, 10000+i, genOptions{Round: i%2 == 0})
			o.Customer.ID = 500 + i%50 // 50 customers with 10 orders each
			o.OrderStatus, o.PaymentStatus, o.ShippingStatus = nop.OrderStatusComplete, nop.PaymentStatusPaid, nop.ShippingStatusDelivered
			paid := o.CreatedOnUtc.Add(time.Hour)
			o.PaidDateUtc = &paid
			raw := orderEvent(b, o, "order.updated", 1)
			ev, err := nop.DecodeRequest(state.Order, raw)
			if err != nil {
				b.Fatal(err)
			}
			evs = append(evs, ev...)
		}
		msgs, err := nop.Messages(state.Order, evs)
		if err != nil {
			b.Fatal(err)
		}
		before := h.srv.Stats().Requests
		start := time.Now()
		b.StartTimer()
		for _, m := range msgs {
			if err := h.eng.HandleMessage(h.ctx, "orders", m.Body); err != nil {
				b.Fatal(err)
			}
		}
		b.StopTimer()
		elapsed := time.Since(start)
		b.ReportMetric(float64(h.srv.Stats().Requests-before)/n, "requests/order")
		b.ReportMetric(n/elapsed.Seconds(), "orders/s")
		b.ReportMetric(float64(len(msgs)), "messages")
		b.ReportMetric(float64(h.srv.Stats().Throttled), "throttled")
		b.ReportMetric(h.fdv.batchTime.Seconds(), "batch-s")
		if got := h.srv.Count("salesorders"); got != n {
			b.Fatalf("%d salesorders", got)
		}
		if got := h.srv.Count("invoices"); got != n {
			b.Fatalf("%d invoices", got)
		}
		_ = json.Valid
	}
}
