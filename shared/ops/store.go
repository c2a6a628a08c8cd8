package ops

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/nopsync/nopsync/shared/nop"
	"github.com/nopsync/nopsync/shared/state"
	"github.com/nopsync/nopsync/shared/storesync"
)

// Sources of a sync run.
const (
	SourceState = "state" // re-send from the app's own state
	SourceStore = "store" // read the store's database (store reader)
)

// ErrStoreNotConfigured: a store run was asked for without the store reader's settings.
var ErrStoreNotConfigured = errors.New("the store reader is not configured: set NOP_DB_PROVIDER and NOP_DB_CONNECTION (or its Key Vault secret NOP_DB_CONNECTION_SECRET_NAME)")

// RunActiveError: another store run is reading the store right now (one at a time).
type RunActiveError struct{ RunID string }

func (e *RunActiveError) Error() string {
	return "store run " + e.RunID + " is reading the store right now; follow it on /api/sync/" + e.RunID
}

// CurrencyMismatchError: the store's primary currency is not STORE_CURRENCY_CODE. Prices
// and order amounts would land in Dynamics 365 in the wrong currency, so nothing is read.
type CurrencyMismatchError struct{ Store, Setting string }

func (e *CurrencyMismatchError) Error() string {
	return fmt.Sprintf("currency mismatch: the store's primary currency is %s (nopCommerce setting currencysettings.primarystorecurrencyid) but STORE_CURRENCY_CODE is %s; set STORE_CURRENCY_CODE to %s or change the store's primary currency", e.Store, e.Setting, e.Store)
}

const (
	docStoreLease = "storesync"
	keyStoreLease = "lease"
)

// storeLease is the claim of the store run in progress: one at a time across instances,
// renewed after every page, taken over (and so resumed) once Until has passed.
type storeLease struct {
	RunID    string    `json:"runId"`
	Owner    string    `json:"owner"`
	Until    time.Time `json:"until"`
	Finished bool      `json:"finished"`
}

var errLeaseLost = errors.New("another instance took over the store run")

func newProgress(entities []state.Entity) map[state.Entity]*storesync.Progress {
	m := map[state.Entity]*storesync.Progress{}
	for _, e := range entities {
		m[e] = &storesync.Progress{}
	}
	return m
}

// snapshot returns a deep copy of run (for answers while the run goes on).
func (r *Run) snapshot() *Run {
	b, _ := json.Marshal(r)
	var c Run
	json.Unmarshal(b, &c)
	return &c
}

// StartStoreRun starts a run that reads the store's database for entities (all when
// none) and queues what changed; it runs in the background and is returned at once
// (follow it with GetRun). *RunActiveError when a store run is already under way.
func (o *Ops) StartStoreRun(ctx context.Context, entities []state.Entity, trigger string) (*Run, error) {
	if o.o.Store == nil {
		return nil, ErrStoreNotConfigured
	}
	if len(entities) == 0 {
		entities = state.Entities
	}
	for _, e := range entities {
		if _, ok := nop.Queue(e); !ok {
			return nil, fmt.Errorf("unknown entity %q", e)
		}
	}
	now := o.o.Now().UTC()
	run := &Run{ID: newRunID(now), Trigger: trigger, Scope: ScopeAll, Entities: entities, StartedAt: now, Outcome: "running",
		Source: SourceStore, Store: newProgress(entities)}
	lease, active, err := o.claimStoreLease(ctx, run.ID)
	if err != nil {
		return nil, err
	}
	if lease == nil {
		return nil, &RunActiveError{RunID: active}
	}
	if err := o.saveRun(ctx, run); err != nil {
		o.releaseStoreLease(ctx, lease, true)
		return nil, err
	}
	snap := run.snapshot()
	o.goStoreRun(run, lease, nil)
	return snap, nil
}

// claimStoreLease claims the store run for runID. It returns nil and the active run's
// id when another run holds an unexpired claim. A run whose claim expired unfinished is
// recorded as superseded (the new run reads the store again from the start).
func (o *Ops) claimStoreLease(ctx context.Context, runID string) (*state.Doc, string, error) {
	now := o.o.Now()
	var prev storeLease
	doc, err := o.claimDoc(ctx, docStoreLease, keyStoreLease, func(cur []byte) ([]byte, bool) {
		prev = storeLease{}
		if cur != nil && json.Unmarshal(cur, &prev) == nil && prev.RunID != "" && !prev.Finished && now.Before(prev.Until) {
			return nil, false
		}
		v, _ := json.Marshal(storeLease{RunID: runID, Owner: o.instance, Until: now.Add(o.o.StoreLease)})
		return v, true
	})
	if err != nil {
		return nil, "", fmt.Errorf("claim the store run: %w", err)
	}
	if doc == nil {
		if prev.RunID == "" {
			prev.RunID = "(another instance)"
		}
		return nil, prev.RunID, nil
	}
	if prev.RunID != "" && !prev.Finished && prev.RunID != runID {
		if old, err := o.GetRun(ctx, prev.RunID); err == nil && old.Outcome == "running" {
			o.finish(ctx, old, fmt.Errorf("interrupted, and superseded by run %s before it was resumed", runID))
		}
	}
	return doc, "", nil
}

// renewStoreLease extends the claim; errLeaseLost when another instance holds it now.
func (o *Ops) renewStoreLease(ctx context.Context, doc *state.Doc, runID string) error {
	doc.Value, _ = json.Marshal(storeLease{RunID: runID, Owner: o.instance, Until: o.o.Now().Add(o.o.StoreLease)})
	err := o.o.State.SaveDoc(ctx, doc)
	if errors.Is(err, state.ErrConflict) {
		return errLeaseLost
	}
	return err
}

// releaseStoreLease gives the claim up: finished, or (cut off) free to resume at once.
func (o *Ops) releaseStoreLease(ctx context.Context, doc *state.Doc, finished bool) {
	var l storeLease
	json.Unmarshal(doc.Value, &l)
	l.Until, l.Finished = o.o.Now(), finished
	doc.Value, _ = json.Marshal(l)
	if err := o.o.State.SaveDoc(ctx, doc); err != nil && !errors.Is(err, state.ErrConflict) {
		o.o.Log.Warn("releasing the store run's claim", "run", l.RunID, "error", err)
	}
}

// ResumeStoreRun continues a store run whose claim expired before it finished (its
// instance stopped, crashed or was recycled): from its checkpoint, in the background.
// It returns the run resumed, or nil.
func (o *Ops) ResumeStoreRun(ctx context.Context) (*Run, error) {
	if o.o.Store == nil {
		return nil, nil
	}
	now := o.o.Now()
	var runID string
	doc, err := o.claimDoc(ctx, docStoreLease, keyStoreLease, func(cur []byte) ([]byte, bool) {
		var l storeLease
		if cur == nil || json.Unmarshal(cur, &l) != nil || l.RunID == "" || l.Finished || now.Before(l.Until) {
			return nil, false
		}
		runID = l.RunID
		l.Owner, l.Until = o.instance, now.Add(o.o.StoreLease)
		v, _ := json.Marshal(l)
		return v, true
	})
	if err != nil || doc == nil {
		return nil, err
	}
	run, err := o.GetRun(ctx, runID)
	if err != nil || run.Outcome != "running" || run.Source != SourceStore {
		o.releaseStoreLease(ctx, doc, true)
		if errors.Is(err, state.ErrNotFound) {
			return nil, nil
		}
		return nil, err
	}
	o.o.Log.Info("resuming store run", "run", run.ID)
	snap := run.snapshot()
	o.goStoreRun(run, doc, nil)
	return snap, nil
}

// goStoreRun runs a claimed store run in the background. prior is an error of the run's
// earlier part (auto-sync's re-drive), reported with the outcome.
func (o *Ops) goStoreRun(run *Run, lease *state.Doc, prior error) {
	o.active.Add(1)
	go func() {
		defer o.active.Done()
		ctx := o.bg
		err := o.readStore(ctx, run, lease)
		// Record the outcome even when the run was cut off by Close.
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
		defer cancel()
		switch {
		case errors.Is(err, errLeaseLost):
			o.o.Log.Warn("store run taken over by another instance", "run", run.ID)
			return
		case err != nil && ctx.Err() != nil:
			// Stopped (shutdown): keep the checkpoint, free the claim so the next tick or
			// start resumes it.
			if serr := o.saveRun(sctx, run); serr != nil {
				o.o.Log.Error("recording store run", "run", run.ID, "error", serr)
			}
			o.releaseStoreLease(sctx, lease, false)
			o.o.Log.Info("store run stopped; it resumes from its checkpoint", "run", run.ID)
			return
		}
		// Free the claim first: once the run shows finished, a new one may start.
		o.releaseStoreLease(sctx, lease, true)
		o.finish(sctx, run, errors.Join(prior, err))
	}()
}

// readStore reads the store for the run's entities from their checkpoints, queueing
// what changed; after every page it renews the claim and saves the run (checkpoint).
func (o *Ops) readStore(ctx context.Context, run *Run, lease *state.Doc) error {
	src := o.o.Store
	if err := src.Check(ctx); err != nil {
		return fmt.Errorf("store database: %w", err)
	}
	cur, err := src.StoreCurrency(ctx)
	if err != nil {
		return fmt.Errorf("store database: %w", err)
	}
	if o.o.StoreCurrencyCode != "" && !strings.EqualFold(cur, o.o.StoreCurrencyCode) {
		return &CurrencyMismatchError{Store: strings.ToUpper(cur), Setting: o.o.StoreCurrencyCode}
	}
	queued := run.Queued
	for _, p := range run.Store {
		queued -= p.Queued // what the run queued before reading the store (re-drive)
	}
	pass := &storesync.Pass{
		Source:   src,
		Differ:   &storesync.StateDiffer{State: o.o.State, Hash: o.o.StoreHash},
		Sink:     &storesync.QueueSink{Sender: o.o.Sender},
		PageSize: o.o.StorePageSize,
	}
	for i, ent := range run.Entities {
		p := run.Store[ent]
		if p == nil {
			p = &storesync.Progress{}
			run.Store[ent] = p
		}
		if ent == state.Order && !p.Done {
			// Orders refer to customers and products: an order applied before them makes
			// the engine create them one by one instead of in bulk. So orders wait
			// (bounded) until what this run queued before them has been applied.
			if err := o.waitApplied(ctx, run, run.Entities[:i], func(ctx context.Context) error {
				return o.renewStoreLease(ctx, lease, run.ID)
			}); err != nil {
				return err
			}
		}
		err := pass.Entity(ctx, ent, p, func(ctx context.Context) error {
			run.Queued = queued
			for _, q := range run.Store {
				run.Queued += q.Queued
			}
			if err := o.renewStoreLease(ctx, lease, run.ID); err != nil {
				return err
			}
			return o.saveRun(ctx, run)
		})
		if err != nil {
			return err
		}
	}
	return nil
}

// waitApplied waits until the queues of entities this run queued something for are
// empty, at most StoreDrainWait; running out of time never fails the run (at worst
// orders go early). The wait is longer than the run's claim, so it renews the claim
// (renew) every third of StoreLease: otherwise a timer tick would take the waiting run
// over and read it a second time. A claim that can't be renewed ends the run's part here.
func (o *Ops) waitApplied(ctx context.Context, run *Run, entities []state.Entity, renew func(context.Context) error) error {
	if o.o.Inspector == nil {
		return nil
	}
	var qs []string
	for _, e := range entities {
		if p := run.Store[e]; p != nil && p.Queued > 0 {
			if q, ok := nop.BulkQueue(e); ok { // where QueueSink sent them
				qs = append(qs, q)
			}
		}
	}
	if len(qs) == 0 {
		return nil
	}
	deadline := time.Now().Add(o.o.StoreDrainWait)
	renewed := o.o.Now()
	for time.Now().Before(deadline) {
		if now := o.o.Now(); now.Sub(renewed) >= o.o.StoreLease/3 {
			if err := renew(ctx); err != nil {
				return err
			}
			renewed = now
		}
		busy := false
		for _, q := range qs {
			s, err := o.o.Inspector.Stats(ctx, q)
			if err != nil || s.Active > 0 {
				busy = true
				break
			}
		}
		if !busy {
			return nil
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(time.Second):
		}
	}
	o.o.Log.Warn("store run: reading orders before the customers and products it queued were applied", "run", run.ID, "waited", o.o.StoreDrainWait.String())
	return nil
}

// GetRun returns a run by id (state.ErrNotFound when there is none).
func (o *Ops) GetRun(ctx context.Context, id string) (*Run, error) {
	doc, err := o.o.State.GetDoc(ctx, docRuns, id)
	if err != nil {
		return nil, err
	}
	var r Run
	if err := json.Unmarshal(doc.Value, &r); err != nil {
		return nil, fmt.Errorf("run %s: %w", id, err)
	}
	return &r, nil
}

// storeHealth is what the status page says about the store's database.
type storeHealth struct {
	reachable bool
	currency  string
	err       string
}

// StoreStatus is the store reader's part of the status page.
type StoreStatus struct {
	Configured  bool    `json:"configured"`
	Reachable   bool    `json:"reachable"`
	Currency    string  `json:"currency,omitempty"`
	Error       *string `json:"error"`
	ActiveRunID string  `json:"activeRunId,omitempty"`
	LastRun     *Run    `json:"lastRun"`
}

// storeStatus checks the store's database (cached for ProbeTTL like the Dataverse probe).
func (o *Ops) storeStatus(ctx context.Context) StoreStatus {
	if o.o.Store == nil {
		return StoreStatus{}
	}
	o.mu.Lock()
	h, fresh := o.lastStore, !o.storeAt.IsZero() && o.o.Now().Sub(o.storeAt) < o.o.ProbeTTL
	o.mu.Unlock()
	if !fresh {
		pctx, cancel := context.WithTimeout(ctx, 15*time.Second)
		h = storeHealth{}
		if err := o.o.Store.Check(pctx); err != nil {
			h.err = "store database: " + err.Error()
		} else if cur, err := o.o.Store.StoreCurrency(pctx); err != nil {
			h.err = "store database: " + err.Error()
		} else {
			h.reachable, h.currency = true, strings.ToUpper(cur)
			if o.o.StoreCurrencyCode != "" && !strings.EqualFold(cur, o.o.StoreCurrencyCode) {
				h.err = (&CurrencyMismatchError{Store: h.currency, Setting: o.o.StoreCurrencyCode}).Error()
			}
		}
		cancel()
		o.mu.Lock()
		o.lastStore, o.storeAt = h, o.o.Now()
		o.mu.Unlock()
	}
	st := StoreStatus{Configured: true, Reachable: h.reachable, Currency: h.currency}
	if h.err != "" {
		e := h.err
		st.Error = &e
	}
	lctx, cancel := context.WithTimeout(ctx, statusCallTimeout)
	defer cancel()
	if doc, err := o.o.State.GetDoc(lctx, docStoreLease, keyStoreLease); err == nil {
		var l storeLease
		if json.Unmarshal(doc.Value, &l) == nil && !l.Finished {
			st.ActiveRunID = l.RunID
		}
	}
	return st
}
