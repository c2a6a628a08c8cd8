package syncer

import (
	"context"
	"errors"

	"golang.org/x/sync/errgroup"

	"github.com/nopsync/nopsync/shared/dataverse"
	"github.com/nopsync/nopsync/shared/nop"
	"github.com/nopsync/nopsync/shared/state"
)

// ordersPerBatch bounds the orders packed into one $batch. Dataverse runs a batch's
// requests one after another, so a smaller batch sent in parallel with others finishes
// sooner than one large batch (research dataverse.md §5: start around 10).
const ordersPerBatch = 20

var _ bulkSyncer = (*orderSyncer)(nil)

// syncMany is the bulk path for import chunks: every order is planned in parallel, the
// header-and-lines writes are packed into $batch requests (each order its own change set,
// so one bad order never takes another down), then invoices and closes run in parallel.
func (s *orderSyncer) syncMany(ctx context.Context, evs []*nop.Event, recs []*state.Record) ([]outcome, []error) {
	outs := make([]outcome, len(evs))
	errs := make([]error, len(evs))
	plans := make([]*orderPlan, len(evs))

	refs := newRefResolver(s.e)
	var ids []string
	for i, ev := range evs {
		if ev.Order != nil && !ev.Order.Deleted {
			id := recs[i].DataverseID
			if id == "" {
				id = salesOrderID(ev.StoreID, ev.Order.ID)
			}
			ids = append(ids, id)
		}
	}
	pre := s.prefetch(ctx, ids)
	s.parallel(ctx, len(evs), func(ctx context.Context, i int) {
		plans[i], errs[i] = s.plan(ctx, refs, pre, evs[i], recs[i])
		if errs[i] == nil && plans[i].done {
			outs[i] = plans[i].out
		}
	})

	var pending []int // plans with a write
	for i, p := range plans {
		if errs[i] == nil && p != nil && !p.done && p.write != nil {
			pending = append(pending, i)
		}
	}
	var groups [][]int
	for len(pending) > 0 {
		g, ops := []int{}, 0
		for len(pending) > 0 && len(g) < ordersPerBatch && ops+len(plans[pending[0]].ops) <= dataverse.MaxBatchRequests {
			ops += len(plans[pending[0]].ops)
			g = append(g, pending[0])
			pending = pending[1:]
		}
		if len(g) == 0 { // one order alone above the limit: let Dataverse say so
			g, pending = pending[:1], pending[1:]
		}
		groups = append(groups, g)
	}
	s.parallel(ctx, len(groups), func(ctx context.Context, gi int) {
		s.writeGroup(ctx, plans, groups[gi], errs)
	})

	s.parallel(ctx, len(evs), func(ctx context.Context, i int) {
		p := plans[i]
		if errs[i] != nil || p == nil || p.done {
			return
		}
		outs[i], errs[i] = s.finish(ctx, p)
	})
	return outs, errs
}

// writeGroup sends the change sets of a group of orders. Dataverse stops a batch at the
// first failing change set: that order gets the error, those before it are written, and
// those after it are sent again in a new batch.
func (s *orderSyncer) writeGroup(ctx context.Context, plans []*orderPlan, group []int, errs []error) {
	for len(group) > 0 {
		parts := make([]dataverse.BatchPart, len(group))
		for k, i := range group {
			parts[k] = dataverse.ChangeSet(plans[i].ops...)
		}
		_, err := s.e.dv.Batch(ctx, parts...)
		if err == nil {
			for _, i := range group {
				plans[i].written()
			}
			return
		}
		var be *dataverse.BatchError
		if !errors.As(err, &be) || be.ChangeSet < 1 || be.ChangeSet > len(group) {
			// The request as a whole failed: none of it is known to be written.
			for _, i := range group {
				errs[i] = plans[i].writeFailed(err)
			}
			return
		}
		failed := be.ChangeSet - 1
		for _, i := range group[:failed] {
			plans[i].written()
		}
		errs[group[failed]] = plans[group[failed]].writeFailed(err)
		group = group[failed+1:]
	}
}

// parallel runs fn for 0..n-1 with the engine's concurrency.
func (s *orderSyncer) parallel(ctx context.Context, n int, fn func(ctx context.Context, i int)) {
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(s.e.conc)
	for i := range n {
		g.Go(func() error {
			fn(gctx, i)
			return nil
		})
	}
	_ = g.Wait()
}
