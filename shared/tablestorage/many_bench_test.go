package tablestorage

import (
	"context"
	"strconv"
	"testing"

	"golang.org/x/sync/errgroup"

	"github.com/nopsync/nopsync/shared/state"
)

// BenchmarkChunkState: the state work of one import chunk of 500 entities (read, claim,
// result), entity by entity (32 in flight, as the engine did) and batched (GetMany,
// SaveMany). The reads alone compare GetMany's queries with point reads in parallel.
// Figures are records per second.
func BenchmarkChunkState(b *testing.B) {
	const n = 500
	ctx := context.Background()
	s := newTestStore(b, Options{})
	next := 0
	ids := func() []string {
		out := make([]string, n)
		for i := range out {
			next++
			out[i] = strconv.Itoa(next)
		}
		return out
	}
	b.Run("ReadsPointInParallel", func(b *testing.B) {
		for range b.N {
			got := make([]*state.Record, n)
			var g errgroup.Group
			g.SetLimit(32)
			for i, id := range ids() {
				g.Go(func() error { got[i], _ = s.Get(ctx, state.Customer, id); return nil })
			}
			_ = g.Wait()
		}
		b.ReportMetric(float64(n*b.N)/b.Elapsed().Seconds(), "records/s")
	})
	// Reads of existing records: the chunk before, then read.
	seeded := ids()
	recs := make([]*state.Record, n)
	for i, id := range seeded {
		recs[i] = &state.Record{Entity: state.Customer, ID: id, Status: state.Pending}
	}
	for _, err := range s.SaveMany(ctx, recs) {
		if err != nil {
			b.Fatal(err)
		}
	}
	b.Run("ReadsGetMany", func(b *testing.B) {
		for range b.N {
			got, err := s.GetMany(ctx, state.Customer, seeded)
			if err != nil || len(got) != n {
				b.Fatalf("%d records, %v", len(got), err)
			}
		}
		b.ReportMetric(float64(n*b.N)/b.Elapsed().Seconds(), "records/s")
	})
	b.Run("ReadsPointInParallelExisting", func(b *testing.B) {
		for range b.N {
			var g errgroup.Group
			g.SetLimit(32)
			for _, id := range seeded {
				g.Go(func() error { _, err := s.Get(ctx, state.Customer, id); return err })
			}
			if err := g.Wait(); err != nil {
				b.Fatal(err)
			}
		}
		b.ReportMetric(float64(n*b.N)/b.Elapsed().Seconds(), "records/s")
	})
	b.Run("ChunkOneByOne", func(b *testing.B) {
		for range b.N {
			var g errgroup.Group
			g.SetLimit(32)
			for _, id := range ids() {
				g.Go(func() error {
					if _, err := s.Get(ctx, state.Customer, id); err == nil {
						b.Error("record exists")
					}
					r := &state.Record{Entity: state.Customer, ID: id, Status: state.Pending, LeaseOwner: "x"}
					if err := s.Save(ctx, r); err != nil {
						return err
					}
					r.Status, r.LeaseOwner = state.Synced, ""
					return s.Save(ctx, r)
				})
			}
			if err := g.Wait(); err != nil {
				b.Fatal(err)
			}
		}
		b.ReportMetric(float64(n*b.N)/b.Elapsed().Seconds(), "records/s")
	})
	b.Run("ChunkBatched", func(b *testing.B) {
		for range b.N {
			ids := ids()
			if got, err := s.GetMany(ctx, state.Customer, ids); err != nil || len(got) != 0 {
				b.Fatalf("%d records, %v", len(got), err)
			}
			recs := make([]*state.Record, n)
			for i, id := range ids {
				recs[i] = &state.Record{Entity: state.Customer, ID: id, Status: state.Pending, LeaseOwner: "x"}
			}
			for _, err := range s.SaveMany(ctx, recs) {
				if err != nil {
					b.Fatal(err)
				}
			}
			for _, r := range recs {
				r.Status, r.LeaseOwner = state.Synced, ""
			}
			for _, err := range s.SaveMany(ctx, recs) {
				if err != nil {
					b.Fatal(err)
				}
			}
		}
		b.ReportMetric(float64(n*b.N)/b.Elapsed().Seconds(), "records/s")
	})
}
