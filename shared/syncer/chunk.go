package syncer

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/nopsync/nopsync/shared/nop"
	"github.com/nopsync/nopsync/shared/state"
)

// chunk is the working state of one chunk message: one row per entity, in the order the
// entities first appear, holding the entity's newest event and what became of it.
type chunk struct {
	entity state.Entity
	force  bool
	events int // events in the message
	rows   []*chunkRow

	stale int // events not applied because a newer one was (in the chunk or before)
}

// chunkRow is one entity of a chunk.
type chunkRow struct {
	id      string
	ev      *nop.Event    // the entity's newest event in the chunk
	rec     *state.Record // its claimed record (nil: stale, duplicate or not claimed)
	out     outcome       // the sync's outcome
	syncErr error         // the sync's error
	err     error         // what the message reports for this entity (transient only)
}

// processMany applies the events of one chunk: per entity only the newest event counts
// (older ones in the chunk are stale), each record is claimed, then the rows go through
// the entity's bulk path.
func (e *Engine) processMany(ctx context.Context, entity state.Entity, evs []*nop.Event, force bool) error {
	syn, ok := e.syncers[entity]
	if !ok {
		e.log.Error("no syncer for entity", "entity", entity)
		return nil
	}
	c := newChunk(entity, evs, force)
	e.claimChunk(ctx, c)
	if c.stale > 0 {
		e.countStale(ctx, entity, c.stale)
	}
	claimed := c.claimed()
	e.syncChunk(ctx, syn, claimed, force)
	e.finishChunk(ctx, claimed)
	return c.result(e.log)
}

// newChunk keeps each entity's newest event; the older ones are counted stale (the same
// event twice is a duplicate, not stale).
func newChunk(entity state.Entity, evs []*nop.Event, force bool) *chunk {
	c := &chunk{entity: entity, force: force, events: len(evs)}
	byID := map[string]*chunkRow{}
	for _, ev := range evs {
		id := ev.EntityID()
		r, seen := byID[id]
		if !seen {
			r = &chunkRow{id: id, ev: ev}
			byID[id] = r
			c.rows = append(c.rows, r)
			continue
		}
		if ev.ID == r.ev.ID {
			continue // the same event twice: a duplicate, not a stale event
		}
		c.stale++
		if nop.CompareOrderKeys(ev.OrderKey(), r.ev.OrderKey()) >= 0 {
			r.ev = ev
		}
	}
	return c
}

// claimChunk claims every row's record: the reads and claims in batches (claimEvents),
// entities held by another writer one by one, StateConcurrency at a time.
func (e *Engine) claimChunk(ctx context.Context, c *chunk) {
	evs := make([]*nop.Event, len(c.rows))
	for i, r := range c.rows {
		evs[i] = r.ev
	}
	recs, res, errs := e.leases.claimEvents(ctx, c.entity, evs, c.force, e.stateConc)
	for i, r := range c.rows {
		switch {
		case errs[i] != nil:
			r.err = errs[i]
		case res[i] == claimStale:
			c.stale++
		case res[i] == claimed:
			r.rec = recs[i]
		}
	}
}

// claimed returns the rows whose record was claimed.
func (c *chunk) claimed() []*chunkRow {
	var out []*chunkRow
	for _, r := range c.rows {
		if r.rec != nil {
			out = append(out, r)
		}
	}
	return out
}

// syncChunk syncs the claimed rows, keeping their leases meanwhile: through the syncer's
// bulk path when it has one, else row by row (Concurrency at a time). With writes disabled they are recorded as pending;
// force (re-syncs) clears the records' DataHash so unchanged data is written again.
func (e *Engine) syncChunk(ctx context.Context, syn entitySyncer, rows []*chunkRow, force bool) {
	switch {
	case len(rows) == 0:
		return
	case !e.settings.WritesEnabled:
		for _, r := range rows {
			r.out = pendingOutcome()
		}
		return
	}
	evs := make([]*nop.Event, len(rows))
	recs := make([]*state.Record, len(rows))
	for j, r := range rows {
		evs[j], recs[j] = r.ev, r.rec
	}
	if force {
		for _, r := range rows {
			r.rec.DataHash = ""
		}
	}
	// A chunk can take longer than a lease (throttling, retries): its leases are kept
	// while it writes, and nothing is sent once one could not be.
	ctx, stop := e.leases.keep(ctx, recs)
	defer stop()
	if bs, ok := syn.(bulkSyncer); ok {
		outs, serrs := e.safeSyncMany(ctx, bs, evs, recs)
		for j, r := range rows {
			r.out, r.syncErr = outs[j], leaseLost(ctx, serrs[j])
		}
		return
	}
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(e.conc)
	for _, r := range rows {
		g.Go(func() error {
			out, err := e.safeSync(gctx, syn, r.ev, r.rec)
			r.out, r.syncErr = out, leaseLost(ctx, err)
			return nil
		})
	}
	_ = g.Wait()
}

// finishChunk records every claimed row's result and releases its lease: the results
// are saved with one SaveMany, and only those whose save conflicted or failed take
// finish's way of settling it (StateConcurrency at a time).
func (e *Engine) finishChunk(ctx context.Context, rows []*chunkRow) {
	if len(rows) == 0 {
		return
	}
	// As finish: recorded even when the invocation's context has just run out.
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
	defer cancel()
	fs := make([]*resultSave, len(rows))
	recs := make([]*state.Record, len(rows))
	for j, r := range rows {
		fs[j], recs[j] = e.result(r.ev, r.rec, r.out, r.syncErr), r.rec
	}
	saveErrs := e.st.SaveMany(ctx, recs)
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(e.stateConc)
	for j, r := range rows {
		g.Go(func() error {
			r.err = e.settle(gctx, fs[j], saveErrs[j])
			return nil
		})
	}
	_ = g.Wait()
}

// result logs what the chunk achieved and returns the message's error: nil unless rows
// failed transiently (their ids, the first error).
func (c *chunk) result(log *slog.Logger) error {
	var failed []string
	var first error
	counts := map[state.Status]int{}
	for _, r := range c.rows {
		if r.err != nil {
			failed = append(failed, r.id)
			if first == nil {
				first = r.err
			}
		}
		if r.rec == nil {
			continue
		}
		if r.syncErr != nil {
			counts[state.Failed]++
		} else {
			counts[r.out.status]++
		}
	}
	log.Info("chunk applied", "entity", c.entity, "events", c.events, "entities", len(c.rows),
		"synced", counts[state.Synced], "skipped", counts[state.Skipped], "pending", counts[state.Pending],
		"failed", counts[state.Failed], "stale", c.stale, "retry", len(failed))
	if first != nil {
		return fmt.Errorf("%d of %d %s rows failed transiently (ids %s): %w", len(failed), len(c.rows), c.entity, strings.Join(headOf(failed, 10), ","), first)
	}
	return nil
}

func headOf(s []string, n int) []string {
	if len(s) > n {
		return s[:n]
	}
	return s
}

func (e *Engine) safeSyncMany(ctx context.Context, bs bulkSyncer, evs []*nop.Event, recs []*state.Record) (outs []outcome, errs []error) {
	defer func() {
		if p := recover(); p != nil {
			outs = make([]outcome, len(evs))
			errs = make([]error, len(evs))
			for i := range errs {
				errs[i] = permanent(fmt.Errorf("internal error in bulk sync: %v", p))
			}
		}
	}()
	outs, errs = bs.syncMany(ctx, evs, recs)
	if len(outs) != len(evs) || len(errs) != len(evs) {
		panic("syncMany returned the wrong number of results")
	}
	return outs, errs
}
