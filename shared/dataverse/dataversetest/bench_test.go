package dataversetest

import (
	"fmt"
	"testing"

	"github.com/google/uuid"
)

// BenchmarkUpsertMultiple measures the simulator itself (not a client): UpsertMultiple of
// 1000 contacts per request.
func BenchmarkUpsertMultiple(b *testing.B) {
	c := newTC(b, Options{Limits: Limits{Disabled: true}})
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		var recs []map[string]any
		for j := 0; j < 1000; j++ {
			recs = append(recs, map[string]any{"contactid": uuid.NewString(), "lastname": fmt.Sprint(j)})
		}
		r := c.do("POST", "contacts/Microsoft.Dynamics.CRM.UpsertMultiple", targets("contact", recs...))
		if r.status != 204 {
			b.Fatalf("status %d: %s", r.status, r.raw)
		}
	}
	b.ReportMetric(float64(b.N*1000)/b.Elapsed().Seconds(), "rows/s")
}

// BenchmarkOrders measures deep-inserting orders with 3 lines each (totals recomputed per line).
func BenchmarkOrders(b *testing.B) {
	f := newSales(b, Options{Limits: Limits{Disabled: true}})
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		var lines []any
		for j := 0; j < 3; j++ {
			lines = append(lines, map[string]any{"productid@odata.bind": "/products(" + f.product + ")", "uomid@odata.bind": "/uoms(" + f.unit + ")", "quantity": j + 1})
		}
		r := f.c.do("POST", "salesorders", map[string]any{"name": "SO", "customerid_contact@odata.bind": "/contacts(" + f.contact + ")",
			"pricelevelid@odata.bind": "/pricelevels(" + f.priceList + ")", "order_details": lines})
		if r.status != 204 {
			b.Fatalf("status %d: %s", r.status, r.raw)
		}
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "orders/s")
}
