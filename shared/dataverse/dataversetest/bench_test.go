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
