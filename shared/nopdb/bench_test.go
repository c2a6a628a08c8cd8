package nopdb

import (
	"context"
	"flag"
	"syscall"
	"testing"
	"time"

	"github.com/nopsync/nopsync/shared/nopdb/nopdbtest"
	"github.com/nopsync/nopsync/shared/state"
)

var benchScale = flag.Float64("nopdb.scale", 0.1, "size of the benchmark store: 1 is 100,000 customers, 20,000 products, 200,000 orders")

// BenchmarkReadStore generates a store (scaled by -nopdb.scale) on each engine and reads
// every entity in pages of 1000, reporting the load time and rows read per second.
//
//	go test ./shared/nopdb -run '^$' -bench ReadStore -benchtime 1x -nopdb.scale 1
func BenchmarkReadStore(b *testing.B) {
	for _, provider := range nopdbtest.Providers {
		b.Run(provider, func(b *testing.B) {
			ctx := context.Background()
			conn, db := nopdbtest.NewDatabase(b, provider)
			sz := nopdbtest.Sizes{Customers: int(100000 * *benchScale), Products: int(20000 * *benchScale), GroupedShare: 0.1,
				Orders: int(200000 * *benchScale), MaxItems: 5, Seed: 1}
			start := time.Now()
			st, err := nopdbtest.Generate(ctx, db, provider, sz)
			if err != nil {
				b.Fatal(err)
			}
			load := time.Since(start)
			rows := st.Customers + st.Guests + st.Addresses + st.Products + st.Pictures*2 + st.Orders + st.Items
			b.Logf("%s: generated %+v (%d rows) in %v (%.0f rows/s)", provider, st, rows, load.Round(time.Millisecond), float64(rows)/load.Seconds())
			r, err := Open(ctx, Options{Provider: provider, Connection: conn, StoreURL: "https://store.example.com"})
			if err != nil {
				b.Fatal(err)
			}
			defer r.Close()
			b.ResetTimer()
			for range b.N {
				for _, e := range state.Entities {
					t0, c0 := time.Now(), cpuTime()
					var after int64
					n := 0
					for {
						p, err := r.ReadPage(ctx, e, after, 1000)
						if err != nil {
							b.Fatal(err)
						}
						n += p.Rows
						after = p.Last
						if p.Done {
							break
						}
					}
					d, c := time.Since(t0), cpuTime()-c0
					b.Logf("%s: read %d %ss in %v (%.0f rows/s), reader CPU %v", provider, n, e, d.Round(time.Millisecond),
						float64(n)/d.Seconds(), c.Round(time.Millisecond))
				}
			}
		})
	}
}

// cpuTime is this process's user and system CPU time so far (the database server's is
// not included).
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
