package tablestorage

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/nopsync/nopsync/shared/state"
)

// BenchmarkConcurrentClaims: an import's state traffic, 256 writers at once: each record
// created pending (a counted Save) and then marked synced (another counted Save).
func BenchmarkConcurrentClaims(b *testing.B) {
	for _, shards := range []int{1, 16, 64} {
		b.Run(fmt.Sprint("shards=", shards), func(b *testing.B) {
			for range b.N {
				s := newTestStore(b, Options{Shards: shards})
				ctx := context.Background()
				const n, workers = 3000, 256
				ids := make(chan int, n)
				for i := 1; i <= n; i++ {
					ids <- i
				}
				close(ids)
				start := time.Now()
				var wg sync.WaitGroup
				for range workers {
					wg.Add(1)
					go func() {
						defer wg.Done()
						for i := range ids {
							r := &state.Record{Entity: state.Customer, ID: fmt.Sprint(i), Status: state.Pending}
							if err := s.Save(ctx, r); err != nil {
								b.Error(err)
								return
							}
							r.Status = state.Synced
							if err := s.Save(ctx, r); err != nil {
								b.Error(err)
								return
							}
						}
					}()
				}
				wg.Wait()
				b.ReportMetric(float64(n)/time.Since(start).Seconds(), "records/s")
			}
		})
	}
}
