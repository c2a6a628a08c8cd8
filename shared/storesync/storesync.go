// Package storesync walks a nopCommerce store's database page by page and passes on the
// entities that changed: the store reader's change detection, shared by the app's sync
// runs (package ops: queue what changed) and by the push agent (Agent: POST what
// changed to the app's events URL).
//
// nopCommerce keeps no reliable "changed since" marker (Customer and Order have no
// UpdatedOnUtc; Product.UpdatedOnUtc misses stock and bulk edits), so every pass reads
// every row of the entities it covers, by keyset pages (Source.ReadPage: Id > cursor,
// in Id order), and compares each row's data hash with what the receiving side already
// holds (Differ). Memory is bounded by the page size; the cursor in Progress is the
// checkpoint a cut-off pass resumes from.
//
// Where the app keeps the hash it compares with (StateDiffer): nowhere new. The engine
// keeps the last event it received for an entity in its state record (state.Record.Data,
// byte for byte as received), so the hash of that event's "data" is the hash of what
// the app last took in for the entity. Record.DataHash is a different hash (of what was
// written to Dataverse) and is not used here. A row whose record is missing (a new row,
// or a wiped state table) or holds no event, or whose stored data hashes differently,
// is passed on; an unchanged row is not, whatever its record's status: failures are
// re-driven by auto-sync, and a row whose data failed permanently fails again with the
// same data.
package storesync

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"slices"

	"github.com/nopsync/nopsync/shared/nop"
	"github.com/nopsync/nopsync/shared/queue"
	"github.com/nopsync/nopsync/shared/state"
)

// Source reads the store's database (nopdb.Reader through an adapter).
type Source interface {
	// Check verifies that the database can be reached and holds nopCommerce's schema.
	Check(ctx context.Context) error
	// StoreCurrency returns the store's primary currency (ISO 4217).
	StoreCurrency(ctx context.Context) (string, error)
	// ReadPage reads up to limit rows of entity with Id > after, in Id order.
	ReadPage(ctx context.Context, entity state.Entity, after int64, limit int) (Page, error)
}

// Page is one keyset page of rows.
type Page struct {
	Events   []*nop.Event // the rows' events (Raw and ID set)
	Hashes   []string     // the data hash of each event, the same index
	Failures []RowFailure // rows that could not become events, with the reason
	Rows     int          // rows read (events, failures and rows that are not entities here)
	Last     int64        // the highest Id read: the next page's cursor
	Done     bool         // no rows after Last
}

// RowFailure is a row that could not become an event.
type RowFailure struct {
	Entity state.Entity
	ID     string
	Reason string
}

// Differ tells which events the receiving side already holds.
type Differ interface {
	// Unchanged returns, for each event, whether its data (hash) is what the receiving
	// side last took in for that entity.
	Unchanged(ctx context.Context, entity state.Entity, evs []*nop.Event, hashes []string) ([]bool, error)
}

// Sink passes changed events on.
type Sink interface {
	// Send passes evs on. It returns the events it left out for good, each with its
	// reason (the pass counts them as failed rows, not as queued), and an error when the
	// rest could not be passed on.
	Send(ctx context.Context, entity state.Entity, evs []*nop.Event) ([]RowFailure, error)
}

// DefaultPageSize is the rows per page: the events an events request (and so a chunk)
// may hold.
const DefaultPageSize = nop.MaxEvents

// MaxFailures bounds the row failures a Progress keeps with their reasons (the count
// goes on).
const MaxFailures = 100

// Progress is one entity's part of a pass, as the run's progress page shows it. It is
// also the checkpoint: Cursor is the last Id whose page was passed on.
type Progress struct {
	RowsRead        int       `json:"rowsRead"`
	Queued          int       `json:"queued"`
	Unchanged       int       `json:"unchanged"`
	Failed          int       `json:"failed"`
	Failures        []Failure `json:"failures,omitempty"`
	FailuresOmitted int       `json:"failuresOmitted,omitempty"`
	Cursor          int64     `json:"cursor"`
	Done            bool      `json:"done"`
}

// Failure is a row failure's id and reason.
type Failure struct {
	ID     string `json:"id"`
	Reason string `json:"reason"`
}

// Pass reads the store and passes changed entities on.
type Pass struct {
	Source   Source
	Differ   Differ
	Sink     Sink
	PageSize int // default DefaultPageSize
	// Failed, when set, is told of every row that could not become an event, as its page
	// is passed (Progress keeps only the first MaxFailures with their reasons).
	Failed func(RowFailure)
}

// Entity continues p for entity from p.Cursor until the last page: each page's changed
// events go to the sink, then p is updated and checkpoint is called (saving p makes the
// pass resumable from there). A page is passed on before its checkpoint, so a pass cut
// off in between passes that page on again, with the same event ids (dropped as
// repeats). An error leaves p at the last page that was passed on.
func (ps *Pass) Entity(ctx context.Context, entity state.Entity, p *Progress, checkpoint func(context.Context) error) error {
	size := ps.PageSize
	if size <= 0 {
		size = DefaultPageSize
	}
	type read struct {
		page Page
		err  error
	}
	// The next page is read while this one is compared and passed on (one page ahead).
	fetch := func(after int64) <-chan read {
		ch := make(chan read, 1)
		go func() {
			pg, err := ps.Source.ReadPage(ctx, entity, after, size)
			ch <- read{pg, err}
		}()
		return ch
	}
	var pending <-chan read
	if !p.Done {
		pending = fetch(p.Cursor)
	}
	for !p.Done {
		if err := ctx.Err(); err != nil {
			return err
		}
		r := <-pending
		page, err := r.page, r.err
		if err != nil {
			return fmt.Errorf("reading %ss after id %d: %w", entity, p.Cursor, err)
		}
		if len(page.Hashes) != len(page.Events) {
			return fmt.Errorf("reading %ss after id %d: %d events but %d hashes", entity, p.Cursor, len(page.Events), len(page.Hashes))
		}
		if !page.Done && page.Last <= p.Cursor {
			return fmt.Errorf("reading %ss after id %d: the page ended at id %d, no progress", entity, p.Cursor, page.Last)
		}
		if !page.Done {
			pending = fetch(page.Last)
		}
		var send []*nop.Event
		if len(page.Events) > 0 {
			same, err := ps.Differ.Unchanged(ctx, entity, page.Events, page.Hashes)
			if err != nil {
				return fmt.Errorf("comparing %ss after id %d with what was synced: %w", entity, p.Cursor, err)
			}
			for i, ev := range page.Events {
				if !same[i] {
					send = append(send, ev)
				}
			}
		}
		failures := page.Failures
		if len(send) > 0 {
			left, err := ps.Sink.Send(ctx, entity, send)
			if err != nil {
				return fmt.Errorf("passing on %d %ss after id %d: %w", len(send), entity, p.Cursor, err)
			}
			failures = append(slices.Clip(failures), left...)
			p.Queued += len(send) - len(left)
		}
		p.RowsRead += page.Rows
		p.Unchanged += len(page.Events) - len(send)
		p.Failed += len(failures)
		for _, f := range failures {
			if ps.Failed != nil {
				ps.Failed(f)
			}
			if len(p.Failures) < MaxFailures {
				p.Failures = append(p.Failures, Failure{ID: f.ID, Reason: f.Reason})
			} else {
				p.FailuresOmitted++
			}
		}
		if page.Last > p.Cursor {
			p.Cursor = page.Last
		}
		p.Done = page.Done
		if checkpoint != nil {
			if err := checkpoint(ctx); err != nil {
				return fmt.Errorf("checkpoint of %ss at id %d: %w", entity, p.Cursor, err)
			}
		}
	}
	return nil
}

// StateDiffer compares with the app's state store: an event is unchanged when the
// entity's record holds an event whose data hashes (Hash) to the same value. A page's
// records are read in one GetMany (Table Storage: one query per partition and range of
// row keys instead of a point read per row).
type StateDiffer struct {
	State state.Store
	// Hash is the hash the source computes its hashes with (nopdb.DataHash).
	Hash func(data []byte) string
}

// Unchanged implements Differ.
func (d *StateDiffer) Unchanged(ctx context.Context, entity state.Entity, evs []*nop.Event, hashes []string) ([]bool, error) {
	out := make([]bool, len(evs))
	if len(evs) == 0 {
		return out, nil
	}
	ids := make([]string, len(evs))
	for i, ev := range evs {
		ids[i] = ev.EntityID()
	}
	recs, err := d.State.GetMany(ctx, entity, ids)
	if err != nil {
		return nil, fmt.Errorf("sync state of %d %ss from id %s: %w", len(ids), entity, ids[0], err)
	}
	for i, ev := range evs {
		rec := recs[ids[i]]
		if rec == nil {
			continue // a new row, or a wiped state table
		}
		if sameTail(rec.Data, ev.Data) {
			// The stored event ends with the same data bytes (it is the reader's own,
			// which puts "data" last): unchanged, without decoding or hashing.
			out[i] = true
		} else if data := storedData(rec.Data); data != nil {
			out[i] = bytes.Equal(data, ev.Data) || d.Hash(data) == hashes[i]
		}
	}
	return out, nil
}

// sameTail says whether the event JSON ev ends with `"data":` data `}`: its last
// top-level member is "data" with exactly these bytes (the closing brace that ends ev
// closes the object "data" is a member of).
func sameTail(ev, data []byte) bool {
	const key = `"data":`
	n := len(ev) - 1 - len(data) - len(key)
	return len(data) > 0 && n >= 0 && ev[len(ev)-1] == '}' &&
		string(ev[n:n+len(key)]) == key && bytes.Equal(ev[n+len(key):len(ev)-1], data)
}

// storedData returns the "data" member of a stored event, byte for byte, or nil.
func storedData(ev []byte) []byte {
	if len(ev) == 0 {
		return nil
	}
	var probe struct {
		Data json.RawMessage `json:"data"`
	}
	if json.Unmarshal(ev, &probe) != nil || len(probe.Data) == 0 || string(probe.Data) == "null" {
		return nil
	}
	return probe.Data
}

// QueueSink sends events to their entity's queue as intake does (nop.Messages: one event
// keeps its id as message id, several travel as chunk messages whose id derives from
// their events' ids), so a page passed on twice is dropped as a repeat.
type QueueSink struct {
	Sender queue.Sender
}

// Send implements Sink; it leaves nothing out.
func (s *QueueSink) Send(ctx context.Context, entity state.Entity, evs []*nop.Event) ([]RowFailure, error) {
	q, ok := nop.BulkQueue(entity) // a store run is bulk work: live events go ahead of it
	if !ok {
		return nil, fmt.Errorf("no queue for entity %q", entity)
	}
	msgs, err := nop.Messages(entity, evs)
	if err != nil {
		return nil, err
	}
	if err := s.Sender.Send(ctx, q, msgs); err != nil {
		return nil, fmt.Errorf("send to %s: %w", q, err)
	}
	return nil, nil
}
