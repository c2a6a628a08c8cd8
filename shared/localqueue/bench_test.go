package localqueue_test

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"

	"github.com/nopsync/nopsync/shared/localqueue"
	"github.com/nopsync/nopsync/shared/queue"
)

// BenchmarkSendAndDeliver measures durable throughput: b.N messages over 64 sessions,
// sent in batches of 100 and handled by 8 workers (each delivery journals a lock and a
// completion, fsynced with group commit).
func BenchmarkSendAndDeliver(b *testing.B) {
	for _, dir := range []bool{false, true} {
		b.Run(fmt.Sprintf("durable=%v", dir), func(b *testing.B) {
			o := localqueue.Options{}
			if dir {
				o.Dir = b.TempDir()
			}
			q, err := localqueue.Open(o)
			if err != nil {
				b.Fatal(err)
			}
			defer q.Close()
			var done atomic.Int64
			all := make(chan struct{})
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			go q.Run(ctx, queue.Customers, 8, func(context.Context, localqueue.Delivery) error {
				if done.Add(1) == int64(b.N) {
					close(all)
				}
				return nil
			})
			b.ResetTimer()
			for i := 0; i < b.N; i += 100 {
				var batch []queue.Message
				for k := i; k < min(i+100, b.N); k++ {
					batch = append(batch, queue.Message{MessageID: fmt.Sprint(k), SessionID: fmt.Sprintf("customer-%d", k%64), Body: []byte(`{"evt":{}}`)})
				}
				if err := q.Send(context.Background(), queue.Customers, batch); err != nil {
					b.Fatal(err)
				}
			}
			<-all
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "msgs/s")
		})
	}
}
