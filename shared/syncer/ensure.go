package syncer

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/nopsync/nopsync/shared/state"
)

// claimForOrder takes the lease of an entity (a customer or product) whose row an order
// is about to write from its own copy of the data. Holding the lease keeps the entity's
// own sync from running at the same moment: without it, the order's older copy could
// land in Dynamics 365 after the entity's newer event (and state would still say the
// newer one was applied). rec is the record as read (nil: none yet). A lease held by
// another writer is waited for up to BusyWait, then reported busy (transient: the order
// is redelivered).
func (e *Engine) claimForOrder(ctx context.Context, entity state.Entity, id string, rec *state.Record) (*state.Record, error) {
	waitUntil := time.Now().Add(e.busyWait)
	pause := 20 * time.Millisecond
	for attempt := 0; attempt < 4; attempt++ {
		if rec == nil {
			rec = &state.Record{Entity: entity, ID: id, Status: state.Pending, Reason: "being written from an order"}
		}
		now := e.now()
		if rec.LeaseOwner != "" && now.Before(rec.LeaseUntil) {
			if time.Now().Add(pause).After(waitUntil) {
				return nil, transient(fmt.Errorf("%s %s: %w", entity, id, errBusy))
			}
			select {
			case <-ctx.Done():
				return nil, transient(fmt.Errorf("%s %s: %w", entity, id, errBusy))
			case <-time.After(pause):
			}
			pause = min(2*pause, time.Second)
			attempt--
		} else {
			rec.LeaseOwner = e.instance + "/order/" + randomHex(4)
			rec.LeaseUntil = now.Add(e.lease)
			err := e.st.Save(ctx, rec)
			if err == nil {
				return rec, nil
			}
			if !errors.Is(err, state.ErrConflict) {
				return nil, transient(fmt.Errorf("claiming %s %s for an order: %w", entity, id, err))
			}
		}
		cur, err := e.st.Get(ctx, entity, id)
		switch {
		case errors.Is(err, state.ErrNotFound):
			rec = nil
		case err != nil:
			return nil, transient(fmt.Errorf("reading sync state of %s %s: %w", entity, id, err))
		default:
			rec = cur
		}
	}
	return nil, transient(fmt.Errorf("%s %s: %w", entity, id, errBusy))
}

// releaseForOrder saves rec (with what the order wrote) and gives its lease back. It saves
// even when the invocation's context has just ended: a lease left behind would block
// the entity until it expires.
func (e *Engine) releaseForOrder(ctx context.Context, rec *state.Record) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
	defer cancel()
	rec.LeaseOwner, rec.LeaseUntil = "", time.Time{}
	if err := e.st.Save(ctx, rec); err != nil {
		e.log.Warn("releasing an entity written from an order", "entity", rec.Entity, "id", rec.ID, "error", err)
	}
}
