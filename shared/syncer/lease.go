package syncer

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/nopsync/nopsync/shared/internal/cut"
	"github.com/nopsync/nopsync/shared/nop"
	"github.com/nopsync/nopsync/shared/state"
)

// DefaultLease is the default LeaseDuration: with BusyWait's 20 s per delivery, a message
// whose entity a killed process left claimed lands on its third or fourth delivery,
// well before Service Bus dead-letters it.
const DefaultLease = time.Minute

// errBusy: another writer holds the entity's lease.
var errBusy = errors.New("another instance is writing this entity right now (lease held); will retry")

// IsBusy reports whether err is (or wraps) a failure because another writer held an
// entity's lease: a matter of that entity, not of Dataverse or the state store.
func IsBusy(err error) bool { return errors.Is(err, errBusy) }

type claimResult int

const (
	claimed claimResult = iota
	claimStale
	claimDuplicate
)

// leases are the write leases kept in state records (LeaseOwner, LeaseUntil): one writer
// per entity at a time, across goroutines and instances. Single events, chunk rows and
// orders writing a customer or product from their own copy all claim through it. A claim
// is an ETag-conditional save of the record, so two writers never both win it.
type leases struct {
	st       state.Store
	now      func() time.Time
	log      *slog.Logger
	instance string        // names this process in lease owners
	duration time.Duration // how long a claim keeps other writers off
	busyWait time.Duration // how long a claim waits for another writer's lease (<0: not at all)

	// kept maps each record whose lease keep is holding to its keeper's mutex, which
	// orders the keeper's saves with renew's saves of the same record (both change the
	// record's ETag and LeaseUntil).
	kept sync.Map // *state.Record → *sync.Mutex

	// unseen holds the entity kinds whose last chunk found (almost) no record in state,
	// with when it did: an import of entities the app has never seen. Their next chunk
	// within unseenFor claims without reading first (claimEvents).
	unseen sync.Map // state.Entity → time.Time
}

// unseenFor is how long a chunk that found no record lets the next ones skip their reads:
// an import's chunks follow each other within it; later work (an auto-sync run hours
// after the import, a re-sync) reads first again.
const unseenFor = time.Minute

// unseenShare is the share of a chunk's records found in state below which the next
// chunk of that kind claims without reading first, and the share of claims refused
// (records that existed after all) from which chunks read first again: a claim of a
// record that exists costs its write and then a read and a claim of its own.
const unseenShare = 50 // one in 50

// claimOptions are what one kind of claim adds to the common loop.
type claimOptions struct {
	tag   string                          // owner infix: "/" (events) or "/order/"
	what  string                          // added to save errors, e.g. " for an order"
	fresh func() *state.Record            // the record when state has none
	check func(*state.Record) claimResult // before taking the lease: stale or duplicate ends the claim (nil: none)
	ready func(*state.Record)             // after taking the lease, before saving (nil: none)
	known bool                            // rec passed to acquire is the record as just read
	rec   *state.Record                   // with known: the record (nil: none yet)
}

// claimEvent reads the entity's record, checks the event's order key against it and takes
// the record's lease, so an older event never overwrites a newer one, also across
// instances. force (re-syncs) claims an event already applied.
func (l *leases) claimEvent(ctx context.Context, ev *nop.Event, force bool) (*state.Record, claimResult, error) {
	return l.acquire(ctx, ev.Entity(), ev.EntityID(), eventClaim(ev, force))
}

// eventClaim is the claim of an event's entity (claimEvent, claimEvents).
func eventClaim(ev *nop.Event, force bool) claimOptions {
	entity, id, key := ev.Entity(), ev.EntityID(), ev.OrderKey()
	return claimOptions{
		tag:   "/",
		fresh: func() *state.Record { return &state.Record{Entity: entity, ID: id, Status: state.Pending} },
		check: func(rec *state.Record) claimResult {
			if rec.OrderKey != "" && nop.CompareOrderKeys(key, rec.OrderKey) < 0 {
				return claimStale
			}
			if !force && rec.LastEventID == ev.ID && rec.OrderKey == key &&
				(rec.Status == state.Synced || rec.Status == state.Skipped) {
				return claimDuplicate
			}
			return claimed
		},
		ready: func(rec *state.Record) {
			rec.Data = eventJSON(ev)
			if rec.Status == "" {
				rec.Status = state.Pending
			}
		},
	}
}

// claimEvents is claimEvent for the events of one chunk (one entity each, all of one
// kind): their records are read with one GetMany and the claims saved with one
// SaveMany, so the state store sees a round trip per partition instead of two per
// entity. An entity whose lease another writer holds, or whose claim conflicts, goes
// through claimEvent (which waits and reads again); so does every entity when the
// batched read fails.
//
// While chunks of this kind find (almost) no record in state (an import of new
// entities), the read is skipped once the first entity's claim, made alone, went
// through: every claim is the create of a new record, which the store refuses for a
// record that exists (state.ErrConflict), and such an entity is claimed through
// claimEvent like any conflicting one. Nothing is claimed that a read
// would have refused: a create never overwrites a record, so an event older than the
// stored one, a duplicate or a lease held by another writer all end in the conflict.
func (l *leases) claimEvents(ctx context.Context, entity state.Entity, evs []*nop.Event, force bool, conc int) ([]*state.Record, []claimResult, []error) {
	recs := make([]*state.Record, len(evs))
	res := make([]claimResult, len(evs))
	errs := make([]error, len(evs))
	ids := make([]string, len(evs))
	for i, ev := range evs {
		ids[i] = ev.EntityID()
	}
	var later, batch []int
	skipRead := false
	if at, ok := l.unseen.Load(entity); ok && len(evs) > 0 && l.now().Sub(at.(time.Time)) < unseenFor {
		// A probe first: the first entity's claim alone. A chunk sent again (a redelivery)
		// finds its records stored, and each of its creates would be refused on its own
		// (in Table Storage, a transaction sent again per refused record): it reads first.
		o := eventClaim(evs[0], force)
		rec := o.fresh()
		l.take(rec, o, l.now())
		err := l.st.SaveMany(ctx, []*state.Record{rec})[0]
		switch {
		case err == nil:
			recs[0], res[0], skipRead = rec, claimed, true
		case errors.Is(err, state.ErrConflict):
			l.unseen.Delete(entity)
		}
	}
	if skipRead {
		now := l.now()
		for i, ev := range evs[1:] {
			o := eventClaim(ev, force)
			rec := o.fresh()
			l.take(rec, o, now)
			recs[i+1] = rec
			batch = append(batch, i+1)
		}
	} else if got, err := l.st.GetMany(ctx, entity, ids); err != nil {
		l.log.Warn("reading a chunk's sync state at once; reading it entity by entity", "entity", entity, "error", err)
		for i := range evs {
			later = append(later, i)
		}
	} else {
		if len(got)*unseenShare < len(ids) {
			l.unseen.Store(entity, l.now())
		} else {
			l.unseen.Delete(entity)
		}
		now := l.now()
		for i, ev := range evs {
			o := eventClaim(ev, force)
			rec := got[ids[i]]
			if rec == nil {
				rec = o.fresh()
			}
			if r := o.check(rec); r != claimed {
				recs[i], res[i] = rec, r
				continue
			}
			if l.heldAt(rec, now) {
				later = append(later, i)
				continue
			}
			l.take(rec, o, now)
			recs[i] = rec
			batch = append(batch, i)
		}
	}
	if len(batch) > 0 {
		toSave := make([]*state.Record, len(batch))
		for k, i := range batch {
			toSave[k] = recs[i]
		}
		refused := 0
		for k, err := range l.st.SaveMany(ctx, toSave) {
			i := batch[k]
			switch {
			case errors.Is(err, state.ErrConflict):
				recs[i] = nil
				refused++
				later = append(later, i) // changed since the read, or not new: claim it on its own
			case err != nil:
				recs[i], errs[i] = nil, transient(fmt.Errorf("claiming %s %s: %w", entity, ids[i], err))
			default:
				res[i] = claimed
			}
		}
		switch {
		case skipRead && refused*unseenShare >= len(batch):
			l.unseen.Delete(entity) // records exist after all: read first again
		case skipRead:
			l.unseen.Store(entity, l.now()) // still new ones
		}
	}
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(conc)
	for _, i := range later {
		g.Go(func() error {
			recs[i], res[i], errs[i] = l.claimEvent(gctx, evs[i], force)
			return nil
		})
	}
	_ = g.Wait()
	return recs, res, errs
}

// claimForOrder takes the lease of an entity (a customer or product) whose row an order
// is about to write from its own copy of the data. Holding the lease keeps the entity's
// own sync from running at the same moment: without it, the order's older copy could
// land in Dynamics 365 after the entity's newer event (and state would still say the
// newer one was applied). rec is the record as read (nil: none yet). A lease held by
// another writer is waited for up to BusyWait, then reported busy (transient: the order
// is redelivered).
func (l *leases) claimForOrder(ctx context.Context, entity state.Entity, id string, rec *state.Record) (*state.Record, error) {
	rec, _, err := l.acquire(ctx, entity, id, claimOptions{
		tag:  "/order/",
		what: " for an order",
		fresh: func() *state.Record {
			return &state.Record{Entity: entity, ID: id, Status: state.Pending, Reason: "being written from an order"}
		},
		known: true,
		rec:   rec,
	})
	return rec, err
}

// neverApplied reports whether no event of the entity has had its result recorded in rec
// (a record an order just made, one an event claimed and never finished, or one an order
// failed to write: releaseForOrder). An order
// that writes such an entity from its own copy records it as synced, and the entity's
// own event, newer than none, writes over it. It is asked of the record the order
// claimed, not of one read before: while the order waited for the lease, the entity's
// own event may have failed and recorded itself (its id and order key), and marking that
// record synced would make the event's redelivery look like a duplicate and skip it.
func neverApplied(rec *state.Record) bool {
	return rec.OrderKey == "" && (rec.Status == state.Pending || rec.Status == state.Failed)
}

// acquire is the claim loop: read the record (unless o.known), let o.check end the claim,
// wait with back-off while another writer's lease runs (up to busyWait), then take the
// lease with a conditional save; a conflicting save reads again.
func (l *leases) acquire(ctx context.Context, entity state.Entity, id string, o claimOptions) (*state.Record, claimResult, error) {
	waitUntil := time.Now().Add(l.busyWait)
	pause := 20 * time.Millisecond
	rec, known := o.rec, o.known
	for attempt := 0; attempt < 4; attempt++ {
		if !known {
			var err error
			if rec, err = l.read(ctx, entity, id); err != nil {
				return nil, 0, err
			}
		}
		known = false
		if rec == nil {
			rec = o.fresh()
		}
		if o.check != nil {
			if res := o.check(rec); res != claimed {
				return rec, res, nil
			}
		}
		now := l.now()
		if l.heldAt(rec, now) {
			if time.Now().Add(pause).After(waitUntil) {
				return nil, 0, transient(fmt.Errorf("%s %s: %w", entity, id, errBusy))
			}
			select {
			case <-ctx.Done():
				return nil, 0, transient(fmt.Errorf("%s %s: %w", entity, id, errBusy))
			case <-time.After(pause):
			}
			pause = min(2*pause, time.Second)
			attempt-- // waiting is not a failed attempt
			continue
		}
		l.take(rec, o, now)
		err := l.st.Save(ctx, rec)
		if errors.Is(err, state.ErrConflict) {
			continue // someone changed it between our read and write: look again
		}
		if err != nil {
			return nil, 0, transient(fmt.Errorf("claiming %s %s%s: %w", entity, id, o.what, err))
		}
		return rec, claimed, nil
	}
	return nil, 0, transient(fmt.Errorf("%s %s: %w", entity, id, errBusy))
}

// read returns the entity's record, nil when state has none.
func (l *leases) read(ctx context.Context, entity state.Entity, id string) (*state.Record, error) {
	rec, err := l.st.Get(ctx, entity, id)
	switch {
	case errors.Is(err, state.ErrNotFound):
		return nil, nil
	case err != nil:
		return nil, transient(fmt.Errorf("reading sync state of %s %s: %w", entity, id, err))
	}
	return rec, nil
}

// held reports whether rec's lease is taken and still running.
func (l *leases) held(rec *state.Record) bool { return l.heldAt(rec, l.now()) }

// heldAt is held at time now.
func (l *leases) heldAt(rec *state.Record, now time.Time) bool {
	return rec.LeaseOwner != "" && now.Before(rec.LeaseUntil)
}

// take puts this writer's lease (a new owner, until now + duration) and the claim's
// ready step on rec; the caller saves it.
func (l *leases) take(rec *state.Record, o claimOptions, now time.Time) {
	rec.LeaseOwner = l.instance + o.tag + randomHex(4)
	rec.LeaseUntil = now.Add(l.duration)
	if o.ready != nil {
		o.ready(rec)
	}
}

// renew saves rec mid-sync, keeping (and extending) the lease.
func (l *leases) renew(ctx context.Context, rec *state.Record) error {
	if mu, ok := l.kept.Load(rec); ok {
		mu.(*sync.Mutex).Lock()
		defer mu.(*sync.Mutex).Unlock()
	}
	rec.LeaseUntil = l.now().Add(l.duration)
	if err := l.st.Save(ctx, rec); err != nil {
		return transient(fmt.Errorf("saving progress of %s %s: %w", rec.Entity, rec.ID, err))
	}
	return nil
}

// drop clears rec's lease fields (the caller saves rec).
func drop(rec *state.Record) { rec.LeaseOwner, rec.LeaseUntil = "", time.Time{} }

// releaseForOrder saves rec, which an order claimed to write the entity from its own copy,
// and gives its lease back; *errp is the order's error so far. A record no event has
// applied that the order could not write says why (failed, with the reason), instead of
// "being written from an order" for good; a failed save fails the order transiently, so
// its redelivery writes the entity again rather than leaving it pending with no data to
// re-send. It saves even when the invocation's context has just ended: a lease left
// behind would block the entity until it expires.
func (l *leases) releaseForOrder(ctx context.Context, rec *state.Record, errp *error) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
	defer cancel()
	drop(rec)
	if *errp != nil && neverApplied(rec) && rec.DataverseID == "" {
		rec.Status, rec.Transient = state.Failed, isTransient(*errp)
		rec.Reason = cut.Runes("writing it for an order failed: "+(*errp).Error(), 1000)
	}
	if err := l.st.Save(ctx, rec); err != nil {
		l.log.Warn("releasing an entity written from an order", "entity", rec.Entity, "id", rec.ID, "error", err)
		if *errp == nil {
			*errp = transient(fmt.Errorf("recording %s %s written for the order: %w", rec.Entity, rec.ID, err))
		}
	}
}

// errLeaseRunningOut ends work whose lease could not be renewed, before the lease runs
// out and another writer may claim the entity.
var errLeaseRunningOut = errors.New("write lease could not be renewed and is about to run out; will retry")

// keep holds the leases of recs (claimed by this writer, all of one entity) while work
// on them runs longer than a lease: every third of the lease duration it extends them
// in one batch. What it saves is the record as stored with a later LeaseUntil, so
// nothing the work has not recorded yet is written early. The returned context ends a
// quarter of the lease duration before the first lease that could not be renewed (the
// state store failing, or another writer having taken the record) runs out: from then
// on another writer may claim the entity, so nothing more may be sent for it. stop ends
// the renewals (and that context); call it before the records are saved with their
// results.
func (l *leases) keep(ctx context.Context, recs []*state.Record) (context.Context, func()) {
	ctx, cancel := context.WithCancelCause(ctx)
	if len(recs) == 0 {
		return ctx, func() { cancel(nil) }
	}
	margin, every := l.duration/4, l.duration/3
	mu := &sync.Mutex{}
	for _, r := range recs {
		l.kept.Store(r, mu)
	}
	// untilCut is how long work may go on: until a margin before the earliest lease.
	untilCut := func() time.Duration {
		mu.Lock()
		defer mu.Unlock()
		first := recs[0].LeaseUntil
		for _, r := range recs[1:] {
			if r.LeaseUntil.Before(first) {
				first = r.LeaseUntil
			}
		}
		return max(first.Sub(l.now())-margin, 0)
	}
	if untilCut() < every {
		// Claimed a while ago (some claims of a chunk wait for other writers): renew now.
		l.extend(ctx, mu, recs)
	}
	cut := time.AfterFunc(untilCut(), func() { cancel(errLeaseRunningOut) })
	done, exited := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(exited)
		tick := time.NewTicker(every)
		defer tick.Stop()
		for {
			select {
			case <-done:
				return
			case <-ctx.Done():
				return
			case <-tick.C:
				l.extend(ctx, mu, recs)
				if ctx.Err() == nil {
					cut.Reset(untilCut())
				}
			}
		}
	}()
	return ctx, func() {
		close(done)
		<-exited
		cut.Stop()
		cancel(nil)
		for _, r := range recs {
			l.kept.Delete(r)
		}
	}
}

// extend renews the leases of recs that this writer still holds: the stored records are
// read, checked to be the versions recs were last saved as, and saved back with a later
// LeaseUntil. A record another writer changed keeps its lease as it is (it runs out).
func (l *leases) extend(ctx context.Context, mu *sync.Mutex, recs []*state.Record) {
	mu.Lock()
	defer mu.Unlock()
	ids := make([]string, len(recs))
	for i, r := range recs {
		ids[i] = r.ID
	}
	got, err := l.st.GetMany(ctx, recs[0].Entity, ids)
	if err != nil {
		l.log.Warn("renewing write leases", "entity", recs[0].Entity, "records", len(recs), "error", err)
		return
	}
	until := l.now().Add(l.duration)
	var mine []*state.Record
	var whose []*state.Record
	for _, r := range recs {
		cur := got[r.ID]
		if cur == nil || cur.ETag != r.ETag || cur.LeaseOwner != r.LeaseOwner {
			continue
		}
		cur.LeaseUntil = until
		mine, whose = append(mine, cur), append(whose, r)
	}
	for k, err := range l.st.SaveMany(ctx, mine) {
		if err != nil {
			l.log.Warn("renewing a write lease", "entity", whose[k].Entity, "id", whose[k].ID, "error", err)
			continue
		}
		whose[k].ETag, whose[k].LeaseUntil, whose[k].UpdatedAt = mine[k].ETag, mine[k].LeaseUntil, mine[k].UpdatedAt
	}
}

// leaseLost marks err transient when the work was cut short because its lease could not
// be renewed (keep's context ended with errLeaseRunningOut).
func leaseLost(ctx context.Context, err error) error {
	if err != nil && errors.Is(context.Cause(ctx), errLeaseRunningOut) {
		return transient(fmt.Errorf("%w (%w)", err, errLeaseRunningOut))
	}
	return err
}
