package syncer

import (
	"context"
	"errors"

	"golang.org/x/sync/errgroup"

	"github.com/nopsync/nopsync/shared/dataverse"
)

// The bulk path writes import chunks with CreateMultiple (rows the state and a look-up
// say are new, carrying our deterministic primary key) and UpdateMultiple (rows that
// exist). UpsertMultiple is not used: Microsoft documents it for rows identified by
// alternate keys, and the app's rows are identified by primary key on standard tables
// (no custom keys, docs/dataverse-mapping.md). Bulk requests on standard tables are atomic, so a failed
// request is split in halves until the failing rows are isolated; those go through the
// single-row path, which records each row's own error and handles rows that turned out
// to exist (wiped state) with a plain upsert. Tables without the bulk messages
// (productpricelevel) are the client's concern: it writes them as $batch change sets,
// with the same atomic chunks.

// bulkRow is one row of a bulk write.
type bulkRow struct {
	i   int              // index of the row in the caller's slice
	id  string           // primary key
	rec dataverse.Record // columns
}

// bulkGroup writes rows with one *Multiple message, isolating failures.
type bulkGroup struct {
	d       *deps
	create  bool // CreateMultiple (else UpdateMultiple)
	set     string
	logical string
	pk      string
	// key names the kind of write for remembering that bulk is refused (default set).
	key string
	// noSplit: after a refused request write its rows one by one at once; when they all
	// succeed that way, the message itself is refused and this key stays single.
	noSplit bool
	// single writes one row on its own (fallback and isolation).
	single func(ctx context.Context, r bulkRow) error
}

// minBulk: below this many rows, rows are written one by one.
const minBulk = 3

// write writes rows and stores each row's error in errs[r.i].
func (g *bulkGroup) write(ctx context.Context, rows []bulkRow, errs []error) {
	if len(rows) == 0 {
		return
	}
	if g.key == "" {
		g.key = g.set
	}
	if _, off := g.d.noBulk.Load(g.key); off || len(rows) < minBulk {
		g.singles(ctx, rows, errs)
		return
	}
	recs := make([]dataverse.Record, len(rows))
	for k, r := range rows {
		rec := make(dataverse.Record, len(r.rec)+1)
		for c, v := range r.rec {
			rec[c] = v
		}
		rec[g.pk] = r.id
		recs[k] = rec
	}
	var err error
	if g.create {
		_, err = g.d.dv.CreateMultiple(ctx, g.set, g.logical, recs)
	} else {
		err = g.d.dv.UpdateMultiple(ctx, g.set, g.logical, recs)
	}
	if err == nil {
		return
	}
	var be *dataverse.BulkError
	if !errors.As(err, &be) {
		g.failed(ctx, rows, err, errs)
		return
	}
	for _, ch := range be.Chunks {
		if ch.Start < 0 || ch.End > len(rows) || ch.Start >= ch.End {
			continue
		}
		g.failed(ctx, rows[ch.Start:ch.End], ch.Err, errs)
	}
}

// failed handles a failed request over rows: transient failures stay with all rows
// (splitting can't help), others are isolated by halving.
func (g *bulkGroup) failed(ctx context.Context, rows []bulkRow, err error, errs []error) {
	if isTransient(err) {
		for _, r := range rows {
			errs[r.i] = err
		}
		return
	}
	if g.noSplit {
		g.singles(ctx, rows, errs)
		for _, r := range rows {
			if errs[r.i] != nil {
				return // the data, not the message, was refused
			}
		}
		// Every row went through on its own: the environment refuses the message.
		g.d.noBulk.Store(g.key, true)
		return
	}
	if len(rows) < 2*minBulk {
		g.singles(ctx, rows, errs)
		return
	}
	h := len(rows) / 2
	g.write(ctx, rows[:h], errs)
	g.write(ctx, rows[h:], errs)
}

func (g *bulkGroup) singles(ctx context.Context, rows []bulkRow, errs []error) {
	eg, gctx := errgroup.WithContext(ctx)
	eg.SetLimit(g.d.conc)
	for _, r := range rows {
		eg.Go(func() error {
			errs[r.i] = g.single(gctx, r)
			return nil
		})
	}
	_ = eg.Wait()
}
