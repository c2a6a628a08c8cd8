package syncer

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nopsync/nopsync/shared/dataverse"
	"github.com/nopsync/nopsync/shared/dataverse/dataversetest"
	"github.com/nopsync/nopsync/shared/localstore"
	"github.com/nopsync/nopsync/shared/nop"
	"github.com/nopsync/nopsync/shared/pictures"
	"github.com/nopsync/nopsync/shared/state"
)

// examplesDir is the repository's examples folder, from this package's directory.
const examplesDir = "../../examples"

// env is the engine against the Dataverse simulator, through the real client, with the
// embedded state store.
type env struct {
	t   testing.TB
	ctx context.Context
	srv *dataversetest.Server
	dv  *dataverse.Client
	wdv *wrapDV
	st  state.Store
	eng *Engine
	set Settings
	// busyWait for engines built by engine() (default: don't wait, so busy shows at once)
	busyWait time.Duration
}

type envOptions struct {
	sim      func(*dataversetest.Options)
	settings func(*Settings)
}

func newEnv(t testing.TB, o envOptions) *env {
	t.Helper()
	so := dataversetest.Options{}
	if o.sim != nil {
		o.sim(&so)
	}
	srv := dataversetest.NewServer(so)
	t.Cleanup(srv.Close)
	dv, err := srv.Client(dataverse.Options{MaxRetries: 1, RetryDelay: time.Millisecond, MaxRetryDelay: 10 * time.Millisecond})
	if err != nil {
		t.Fatalf("dataverse client: %v", err)
	}
	st, err := localstore.Open("")
	if err != nil {
		t.Fatalf("localstore: %v", err)
	}
	e := &env{t: t, ctx: context.Background(), srv: srv, dv: dv, wdv: &wrapDV{Dataverse: dv}, st: st,
		set: Settings{StoreCurrencyCode: "USD", WritesEnabled: true}, busyWait: -1}
	if o.settings != nil {
		o.settings(&e.set)
	}
	e.eng = e.engine()
	return e
}

// engine builds another engine (another "instance") on the same Dataverse and store.
func (e *env) engine() *Engine {
	e.t.Helper()
	eng, err := New(Options{DV: e.wdv, State: e.st, Settings: e.set, BulkSize: 50, BusyWait: e.busyWait,
		Log: slog.New(slog.NewTextHandler(io.Discard, nil)),
		// The tests' picture servers listen on loopback.
		HTTPClient: pictures.NewClient(pictures.Options{AllowPrefixes: []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}, AllowAnyPort: true})})
	if err != nil {
		e.t.Fatalf("engine: %v", err)
	}
	return eng
}

// deliver sends events the way intake queues them (one message per event, chunk
// messages for arrays) and hands each message to the engine. It returns the first error.
func (e *env) deliver(eng *Engine, entity state.Entity, evs ...*nop.Event) error {
	e.t.Helper()
	msgs, err := nop.Messages(entity, evs)
	if err != nil {
		e.t.Fatalf("messages: %v", err)
	}
	var first error
	for _, m := range msgs {
		if err := eng.HandleMessage(e.ctx, string(entity)+"s", m.Body); err != nil && first == nil {
			first = err
		}
	}
	return first
}

// each sends every event as its own message.
func (e *env) each(entity state.Entity, evs ...*nop.Event) {
	e.t.Helper()
	for _, ev := range evs {
		if err := e.deliver(e.eng, entity, ev); err != nil {
			e.t.Fatalf("event %s (%s %s): %v", ev.ID, ev.Type, ev.EntityID(), err)
		}
	}
}

func (e *env) rec(entity state.Entity, id int) *state.Record {
	e.t.Helper()
	r, err := e.st.Get(e.ctx, entity, fmt.Sprint(id))
	if err != nil {
		e.t.Fatalf("state of %s %d: %v", entity, id, err)
	}
	return r
}

func (e *env) row(set, id string) map[string]any {
	e.t.Helper()
	r, ok := e.srv.Row(set, id)
	if !ok {
		e.t.Fatalf("no %s row %s", set, id)
	}
	return r
}

func (e *env) where(set, col, v string) []map[string]any {
	var out []map[string]any
	for _, r := range e.srv.Rows(set) {
		if s, _ := r[col].(string); strings.EqualFold(s, v) {
			out = append(out, r)
		}
	}
	return out
}

// example reads an example file: one event or an array of events.
func example(t testing.TB, name string) []map[string]any {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(examplesDir, name))
	if err != nil {
		t.Fatalf("example: %v", err)
	}
	var arr []map[string]any
	if err := json.Unmarshal(b, &arr); err == nil {
		return arr
	}
	var one map[string]any
	if err := json.Unmarshal(b, &one); err != nil {
		t.Fatalf("example %s: %v", name, err)
	}
	return []map[string]any{one}
}

// mkEvent builds a validated event from a template: a fresh copy of it with the event
// id, sequence and data changes given.
func mkEvent(t testing.TB, tmpl map[string]any, evID string, seq int64, data func(d map[string]any)) *nop.Event {
	t.Helper()
	b, _ := json.Marshal(tmpl)
	var m map[string]any
	_ = json.Unmarshal(b, &m)
	m["id"] = evID
	if seq > 0 {
		m["sequence"] = seq
	}
	if data != nil {
		data(m["data"].(map[string]any))
	}
	b, _ = json.Marshal(m)
	typ, _ := m["type"].(string)
	ent, _, _ := strings.Cut(typ, ".")
	evs, err := nop.DecodeRequest(state.Entity(ent), b)
	if err != nil {
		t.Fatalf("event %s: %v", evID, err)
	}
	return evs[0]
}

// customerEvent is the example customer with id, email and sequence changed.
func customerEvent(t testing.TB, tmpl map[string]any, id int, seq int64, email string, data func(d map[string]any)) *nop.Event {
	return mkEvent(t, tmpl, fmt.Sprintf("cust-%d-%d", id, seq), seq, func(d map[string]any) {
		d["id"] = id
		d["email"] = email
		d["username"] = email
		if data != nil {
			data(d)
		}
	})
}

func contactID(storeID, customerID int) string {
	return deterministicID(storeID, "contact", fmt.Sprint(customerID))
}

func productID(storeID, id int) string { return deterministicID(storeID, "product", fmt.Sprint(id)) }

// wrapDV wraps the client so tests can make chosen calls fail.
type wrapDV struct {
	Dataverse
	mu   sync.Mutex
	fail func(op, set string, recs []dataverse.Record) error // nil: pass
	hits map[string]int
}

func (w *wrapDV) check(op, set string, recs ...dataverse.Record) error {
	w.mu.Lock()
	if w.hits == nil {
		w.hits = map[string]int{}
	}
	w.hits[op+" "+set]++
	fail := w.fail
	w.mu.Unlock()
	if fail != nil {
		return fail(op, set, recs)
	}
	return nil
}

func (w *wrapDV) setFail(f func(op, set string, recs []dataverse.Record) error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.fail = f
}

func (w *wrapDV) count(op, set string) int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.hits[op+" "+set]
}

func (w *wrapDV) Upsert(ctx context.Context, set, id string, rec dataverse.Record, mode dataverse.UpsertMode) (bool, error) {
	if err := w.check("Upsert", set, rec); err != nil {
		return false, err
	}
	return w.Dataverse.Upsert(ctx, set, id, rec, mode)
}

func (w *wrapDV) Update(ctx context.Context, set, id string, rec dataverse.Record) error {
	if err := w.check("Update", set, rec); err != nil {
		return err
	}
	return w.Dataverse.Update(ctx, set, id, rec)
}

func (w *wrapDV) Delete(ctx context.Context, set, id string) error {
	if err := w.check("Delete", set); err != nil {
		return err
	}
	return w.Dataverse.Delete(ctx, set, id)
}

func (w *wrapDV) CreateMultiple(ctx context.Context, set, logical string, recs []dataverse.Record) ([]string, error) {
	if err := w.check("CreateMultiple", set, recs...); err != nil {
		return nil, &dataverse.BulkError{Message: "CreateMultiple " + set, Chunks: []dataverse.ChunkError{{Start: 0, End: len(recs), Err: err}}}
	}
	return w.Dataverse.CreateMultiple(ctx, set, logical, recs)
}

func (w *wrapDV) UpdateMultiple(ctx context.Context, set, logical string, recs []dataverse.Record) error {
	if err := w.check("UpdateMultiple", set, recs...); err != nil {
		return &dataverse.BulkError{Message: "UpdateMultiple " + set, Chunks: []dataverse.ChunkError{{Start: 0, End: len(recs), Err: err}}}
	}
	return w.Dataverse.UpdateMultiple(ctx, set, logical, recs)
}

// refuse is the error Dataverse gives for data it will not take.
func refuse(msg string) error {
	return &dataverse.Error{Op: "test", StatusCode: 400, Code: "0x80044331", Message: msg}
}

func unavailable() error {
	return &dataverse.Error{Op: "test", StatusCode: 503, Message: "Service Unavailable", Retryable: true}
}

func hasEmail(recs []dataverse.Record, email string) bool {
	for _, r := range recs {
		if s, _ := r["emailaddress1"].(string); strings.EqualFold(s, email) {
			return true
		}
	}
	return false
}

func numOf(v any) float64 {
	switch n := v.(type) {
	case float64:
		return n
	case int:
		return float64(n)
	case int64:
		return float64(n)
	case json.Number:
		f, _ := n.Float64()
		return f
	}
	return -1
}

func newStore() (state.Store, error) { return localstore.Open("") }
