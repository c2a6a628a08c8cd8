package syncer

import (
	"context"
	"log/slog"
	"sync"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/nopsync/nopsync/shared/state"
)

// deps are the dependencies the Engine and every entity syncer share; New builds them
// once.
type deps struct {
	dv       Dataverse
	st       state.Store
	settings Settings
	now      func() time.Time
	log      *slog.Logger
	conc     int           // parallel work inside one chunk
	leases   *leases       // one writer per entity
	boot     *bootstrapper // the rows every product and order refers to
	noBulk   *sync.Map     // entity sets (and kinds of write) without CreateMultiple/UpdateMultiple
	setup    *setupIssues  // setup problems for the status page
}

// parallel runs fn(i) for every index in idx with the chunk concurrency.
func (d *deps) parallel(ctx context.Context, idx []int, fn func(ctx context.Context, i int)) {
	eg, gctx := errgroup.WithContext(ctx)
	eg.SetLimit(d.conc)
	for _, i := range idx {
		eg.Go(func() error {
			fn(gctx, i)
			return nil
		})
	}
	_ = eg.Wait()
}

// parallelN runs fn(i) for i in 0..n-1 with the chunk concurrency.
func (d *deps) parallelN(ctx context.Context, n int, fn func(ctx context.Context, i int)) {
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(d.conc)
	for i := range n {
		g.Go(func() error {
			fn(gctx, i)
			return nil
		})
	}
	_ = g.Wait()
}
