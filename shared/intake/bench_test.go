package intake_test

import (
	"context"
	"fmt"
	"strings"
	"testing"

	"github.com/nopsync/nopsync/shared/intake"
	"github.com/nopsync/nopsync/shared/queue"
)

// discard is a Sender that keeps nothing (the fake records every message, which would
// dominate the figures).
type discard struct{}

func (discard) Send(context.Context, string, []queue.Message) error { return nil }

// BenchmarkIntake measures a signed request end to end (signature, validation, message
// building, a sender that keeps nothing): one order, and a 1000-product import array.
func BenchmarkIntake(b *testing.B) {
	order := testdata(b, "order.json")
	prod := string(testdata(b, "product.json"))
	parts := make([]string, 1000)
	for i := range parts {
		p := strings.Replace(prod, "evt-product-0001", fmt.Sprintf("imp-%04d", i), 1)
		parts[i] = strings.Replace(p, `"id": 30,`, fmt.Sprintf(`"id": %d,`, 100+i), 1)
	}
	array := []byte("[" + strings.Join(parts, ",") + "]")

	for _, bc := range []struct {
		name, entity string
		body         []byte
		events       int
	}{
		{"single-order", "order", order, 1},
		{"array-1000-products", "product", array, 1000},
	} {
		b.Run(bc.name, func(b *testing.B) {
			e := newEnv(b, func(o *intake.Options) { o.Sender = discard{} })
			req := e.signed(bc.entity, bc.body)
			ctx := context.Background()
			b.ReportAllocs()
			b.SetBytes(int64(len(bc.body)))
			b.ResetTimer()
			for b.Loop() {
				if resp := e.in.Handle(ctx, req); resp.Status != 202 {
					b.Fatalf("%d %s", resp.Status, resp.Body)
				}
			}
			secs := b.Elapsed().Seconds()
			b.ReportMetric(float64(b.N)/secs, "req/s")
			b.ReportMetric(float64(b.N*bc.events)/secs, "events/s")
		})
	}
}
