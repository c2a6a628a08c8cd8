package tablestorage

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/data/aztables"
	"golang.org/x/sync/errgroup"

	"github.com/nopsync/nopsync/shared/state"
)

// benchRecords is how many records BenchmarkLargeTable puts in the table
// (BENCH_RECORDS overrides it).
var benchRecords = 100_000

func init() {
	if n, err := strconv.Atoi(os.Getenv("BENCH_RECORDS")); err == nil && n > 0 {
		benchRecords = n
	}
}

// seedStatus spreads the seeded records over the statuses like a busy shop:
// 90% synced, 5% pending, 3% failed, 2% skipped.
func seedStatus(i int) state.Status {
	switch r := i % 100; {
	case r < 90:
		return state.Synced
	case r < 95:
		return state.Pending
	case r < 98:
		return state.Failed
	}
	return state.Skipped
}

// seed fills the table with n records (ids 1..n, entities in turn) in transactions of
// 100 rows, then writes the counter shards that match them, as Save would have. It
// bypasses Save only to make the fixture fast to build.
func seed(tb testing.TB, s *Store, n int) state.Counts {
	ctx := context.Background()
	want := state.Counts{}
	shards := map[state.Entity][]map[state.Status]int64{}
	byEntity := map[state.Entity][]int{}
	for _, e := range state.Entities {
		want[e] = map[state.Status]int{}
		shards[e] = make([]map[state.Status]int64, s.placement().shards)
		for i := range shards[e] {
			shards[e][i] = map[state.Status]int64{}
		}
	}
	for i := 1; i <= n; i++ {
		e := state.Entities[i%len(state.Entities)]
		byEntity[e] = append(byEntity[e], i)
		st := seedStatus(i)
		want[e][st]++
		shards[e][s.placement().shardOf(fmt.Sprint(i))][st]++
	}
	data, _ := json.Marshal(map[string]any{"id": 1, "email": "someone@example.com", "firstName": "Some", "lastName": "One",
		"active": true, "createdOnUtc": "2026-01-01T00:00:00Z"})
	now := time.Now()
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(8)
	for _, e := range state.Entities {
		// A transaction stays in one partition: the records of one shard.
		byShard := make([][]int, s.placement().shards)
		for _, i := range byEntity[e] {
			k := s.placement().shardOf(fmt.Sprint(i))
			byShard[k] = append(byShard[k], i)
		}
		for _, ids := range byShard {
			for start := 0; start < len(ids); start += 100 {
				batch := ids[start:min(start+100, len(ids))]
				g.Go(func() error {
					ops := make([]aztables.TransactionAction, 0, len(batch))
					for _, i := range batch {
						r := &state.Record{Entity: e, ID: fmt.Sprint(i), Status: seedStatus(i), DataverseID: "00000000-0000-0000-0000-000000000001",
							OrderKey: "s00000000000000000001", LastEventID: fmt.Sprintf("evt-%d", i), SyncedAt: now, DataHash: "h", Data: data}
						if r.Status == state.Failed {
							r.Reason, r.Transient, r.Attempts = "dataverse: 503", true, 2
						}
						b, err := recordEntity(r, s.partitionOf(e, r.ID), now)
						if err != nil {
							return err
						}
						ops = append(ops, aztables.TransactionAction{ActionType: aztables.TransactionTypeAdd, Entity: b})
					}
					_, err := s.c.SubmitTransaction(gctx, ops, nil)
					return err
				})
			}
		}
	}
	if err := g.Wait(); err != nil {
		tb.Fatalf("seed: %v", err)
	}
	for _, e := range state.Entities {
		for i, c := range shards[e] {
			b, err := counterEntity(recordPartition(e, i), counterRowKey(i, 0), c)
			if err != nil {
				tb.Fatal(err)
			}
			if _, err := s.c.AddEntity(ctx, b, nil); err != nil {
				tb.Fatalf("seed counters: %v", err)
			}
		}
	}
	return want
}

// BenchmarkLargeTable measures the status page's Counts and the engine's Saves against a
// table holding 100,000 records. Run (Azurite started, see scripts/azurite):
//
//	go test -run '^$' -bench LargeTable -benchtime 200x ./shared/tablestorage/
func BenchmarkLargeTable(b *testing.B) {
	s := newTestStore(b, Options{})
	ctx := context.Background()
	t0 := time.Now()
	want := seed(b, s, benchRecords)
	fmt.Printf("seeded %d records in %v\n", benchRecords, time.Since(t0).Round(time.Millisecond))

	check := func(b *testing.B) {
		got, err := s.Counts(ctx)
		if err != nil {
			b.Fatal(err)
		}
		for _, e := range state.Entities {
			for _, st := range state.Statuses {
				if got[e][st] != want[e][st] {
					b.Fatalf("Counts[%s][%s] = %d, want %d", e, st, got[e][st], want[e][st])
				}
			}
		}
	}
	check(b)

	b.Run("Counts", func(b *testing.B) {
		for b.Loop() {
			if _, err := s.Counts(ctx); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("Get", func(b *testing.B) {
		i := 0
		for b.Loop() {
			i++
			if _, err := s.Get(ctx, state.Customer, fmt.Sprint(3*(i%30_000+1))); err != nil {
				b.Fatal(err)
			}
		}
	})
	// Status change: record and counter shard in one transaction.
	b.Run("SaveStatusChange", func(b *testing.B) {
		i := 0
		for b.Loop() {
			i++
			id := fmt.Sprint(3 * (i%30_000 + 1))
			b.StopTimer()
			r, err := s.Get(ctx, state.Customer, id)
			if err != nil {
				b.Fatal(err)
			}
			b.StartTimer()
			old := r.Status
			r.Status = state.Pending
			if old == state.Pending {
				r.Status = state.Synced
			}
			if err := s.Save(ctx, r); err != nil {
				b.Fatal(err)
			}
			want[state.Customer][old]--
			want[state.Customer][r.Status]++
		}
	})
	b.Run("SaveSameStatus", func(b *testing.B) {
		r, err := s.Get(ctx, state.Product, "1")
		if err != nil {
			b.Fatal(err)
		}
		for b.Loop() {
			r.Attempts++
			if err := s.Save(ctx, r); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("Create", func(b *testing.B) {
		i := 0
		for b.Loop() {
			i++
			r := &state.Record{Entity: state.Order, ID: fmt.Sprint(benchRecords + i), Status: state.Pending}
			if err := s.Save(ctx, r); err != nil {
				b.Fatal(err)
			}
			want[state.Order][state.Pending]++
		}
	})
	// 16 writers at once on different records of one entity (one instance's queue concurrency).
	b.Run("SaveStatusChangeParallel16", func(b *testing.B) {
		var mu sync.Mutex
		next := 0
		b.SetParallelism(8) // 8 x GOMAXPROCS(2) = 16 goroutines
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				mu.Lock()
				next++
				id := fmt.Sprint(3*(next%30_000+1) + 1) // products
				mu.Unlock()
				r, err := s.Get(ctx, state.Product, id)
				if err != nil {
					b.Error(err)
					return
				}
				old := r.Status
				r.Status = state.Failed
				if old == state.Failed {
					r.Status = state.Synced
				}
				if err := s.Save(ctx, r); err != nil {
					b.Error(err)
					return
				}
				mu.Lock()
				want[state.Product][old]--
				want[state.Product][r.Status]++
				mu.Unlock()
			}
		})
	})
	check(b)
}
