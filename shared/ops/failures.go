package ops

import (
	"context"
	"encoding/json"
	"errors"
	"time"

	"github.com/nopsync/nopsync/shared/internal/cut"
	"github.com/nopsync/nopsync/shared/state"
)

// Failure is one entry of the status page's recent failures.
type Failure struct {
	Entity    state.Entity `json:"entity"`
	ID        string       `json:"id"`
	Error     string       `json:"error"`
	Attempts  int          `json:"attempts"`
	Transient bool         `json:"transient"`
	At        time.Time    `json:"at"`
}

const (
	docFailures   = "failures"
	keyRecent     = "recent"
	recentToKeep  = 50
	failureMaxLen = 1000
)

// TrackFailures wraps a store so every record saved as Failed is also added to a short
// "recent failures" list kept in the store: the status page reads that list instead of
// scanning every record. Keeping it is best effort: a failure to update the list never
// fails the record's own save.
func TrackFailures(s state.Store, now func() time.Time) state.Store {
	if now == nil {
		now = time.Now
	}
	return &failureTracker{Store: s, now: now}
}

type failureTracker struct {
	state.Store
	now func() time.Time
}

func (f *failureTracker) Save(ctx context.Context, rec *state.Record) error {
	if err := f.Store.Save(ctx, rec); err != nil {
		return err
	}
	if rec.Status == state.Failed {
		f.record(ctx, Failure{Entity: rec.Entity, ID: rec.ID, Error: cut.Bytes(rec.Reason, failureMaxLen, "…"), Attempts: rec.Attempts, Transient: rec.Transient, At: f.now().UTC()})
	}
	return nil
}

func (f *failureTracker) SaveMany(ctx context.Context, recs []*state.Record) []error {
	errs := f.Store.SaveMany(ctx, recs)
	for i, rec := range recs {
		if errs[i] == nil && rec.Status == state.Failed {
			f.record(ctx, Failure{Entity: rec.Entity, ID: rec.ID, Error: cut.Bytes(rec.Reason, failureMaxLen, "…"), Attempts: rec.Attempts, Transient: rec.Transient, At: f.now().UTC()})
		}
	}
	return errs
}

func (f *failureTracker) record(ctx context.Context, fl Failure) {
	// The recent list is a convenience of the status page: a failure to update it is not
	// the record's failure.
	// Many failures at once (a chunk, instances side by side) contend for the one doc:
	// more tries than a single writer needs (each read-change-save), and what still
	// can't be listed is found on the page from the failed records (recentFailures).
	_, _ = state.UpdateDoc(ctx, f.Store, docFailures, keyRecent, 20, func(cur []byte) ([]byte, bool) {
		var list []Failure
		json.Unmarshal(cur, &list)
		// One entry per entity: the latest failure replaces older ones.
		kept := list[:0]
		for _, e := range list {
			if e.Entity != fl.Entity || e.ID != fl.ID {
				kept = append(kept, e)
			}
		}
		list = append(kept, fl)
		if len(list) > recentToKeep {
			list = list[len(list)-recentToKeep:]
		}
		v, _ := json.Marshal(list)
		return v, true
	})
}

// recentFailures returns the recent failures still failed, newest first; when the counts
// say more entities are failed than the list names (the list keeps the latest 50
// failures, resolved or not, so an old open one can fall off it), the rest come from the
// failed records themselves, up to max.
func (o *Ops) recentFailures(ctx context.Context, max int, counts state.Counts) ([]Failure, error) {
	out, err := o.listedFailures(ctx, max)
	if err != nil {
		return nil, err
	}
	failed := 0
	for _, c := range counts {
		failed += c[state.Failed]
	}
	if len(out) >= min(max, failed) {
		return out, nil
	}
	listed := map[string]bool{}
	for _, f := range out {
		listed[string(f.Entity)+"/"+f.ID] = true
	}
	errFull := errors.New("full")
	for _, ent := range state.Entities {
		if counts[ent][state.Failed] == 0 {
			continue
		}
		err := o.o.State.Scan(ctx, ent, []state.Status{state.Failed}, func(rec *state.Record) error {
			if len(out) >= max {
				return errFull
			}
			if !listed[string(ent)+"/"+rec.ID] {
				out = append(out, Failure{Entity: ent, ID: rec.ID, Error: cut.Bytes(rec.Reason, failureMaxLen, "…"),
					Attempts: rec.Attempts, Transient: rec.Transient, At: rec.UpdatedAt})
			}
			return nil
		})
		if err != nil && !errors.Is(err, errFull) {
			return out, err
		}
	}
	return out, nil
}

// listedFailures is the recent failures list's entries still failed, newest first.
func (o *Ops) listedFailures(ctx context.Context, max int) ([]Failure, error) {
	doc, err := o.o.State.GetDoc(ctx, docFailures, keyRecent)
	if errors.Is(err, state.ErrNotFound) {
		return []Failure{}, nil
	}
	if err != nil {
		return nil, err
	}
	var list []Failure
	if err := json.Unmarshal(doc.Value, &list); err != nil {
		return nil, err
	}
	out := []Failure{}
	for i := len(list) - 1; i >= 0 && len(out) < max; i-- {
		rec, err := o.o.State.Get(ctx, list[i].Entity, list[i].ID)
		if err != nil || rec.Status != state.Failed {
			continue // since resolved
		}
		out = append(out, list[i])
	}
	return out, nil
}
