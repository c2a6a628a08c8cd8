package syncer

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nopsync/nopsync/shared/dataverse"
	"github.com/nopsync/nopsync/shared/dataverse/dataversetest"
	"github.com/nopsync/nopsync/shared/localstore"
	"github.com/nopsync/nopsync/shared/nop"
	"github.com/nopsync/nopsync/shared/state"
)

// orderHarness runs the engine against the Dataverse simulator through the real client,
// with the embedded state store; both wrapped so tests can inject failures.
type orderHarness struct {
	t   testing.TB
	ctx context.Context
	srv *dataversetest.Server
	sim dataversetest.Options
	dv  *dataverse.Client
	fdv *faultDV
	st  *faultStore
	eng *Engine
}

type harnessOptions struct {
	currency string // STORE_CURRENCY_CODE, default USD
	sim      dataversetest.Options
}

func newOrderHarness(t testing.TB, o harnessOptions) *orderHarness {
	t.Helper()
	if o.currency == "" {
		o.currency = "USD"
	}
	srv := dataversetest.NewServer(o.sim)
	t.Cleanup(srv.Close)
	dv, err := srv.Client(dataverse.Options{MaxRetries: 1, RetryDelay: time.Millisecond, MaxRetryDelay: 10 * time.Millisecond})
	if err != nil {
		t.Fatalf("dataverse client: %v", err)
	}
	ls, err := localstore.Open("")
	if err != nil {
		t.Fatalf("localstore: %v", err)
	}
	h := &orderHarness{t: t, ctx: context.Background(), srv: srv, sim: o.sim, dv: dv,
		fdv: &faultDV{Dataverse: dv}, st: &faultStore{Store: ls}}
	h.eng, err = New(Options{
		DV: h.fdv, State: h.st,
		Settings: Settings{StoreCurrencyCode: o.currency, WritesEnabled: true},
		Log:      slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	if err != nil {
		t.Fatalf("engine: %v", err)
	}
	return h
}

// send delivers one event as a queue message, the way the orders function does.
func (h *orderHarness) send(ev *nop.Event) error {
	h.t.Helper()
	body, err := json.Marshal(map[string]json.RawMessage{"evt": ev.Raw})
	if err != nil {
		h.t.Fatal(err)
	}
	return h.eng.HandleMessage(h.ctx, "orders", body)
}

// mustSend delivers an event that must be acknowledged.
func (h *orderHarness) mustSend(ev *nop.Event) {
	h.t.Helper()
	if err := h.send(ev); err != nil {
		h.t.Fatalf("event %s (%s): %v", ev.ID, ev.Type, err)
	}
}

func (h *orderHarness) record(id int) *state.Record {
	h.t.Helper()
	rec, err := h.st.Get(h.ctx, state.Order, fmt.Sprint(id))
	if err != nil {
		h.t.Fatalf("state of order %d: %v", id, err)
	}
	return rec
}

// salesOrder returns the salesorder row of a store order (nil when absent).
func (h *orderHarness) salesOrder(storeID, id int) map[string]any {
	r, ok := h.srv.Row("salesorders", salesOrderID(storeID, id))
	if !ok {
		return nil
	}
	return r
}

// rowsWhere returns the rows of set whose column equals v (case-insensitive for ids).
func (h *orderHarness) rowsWhere(set, col, v string) []map[string]any {
	var out []map[string]any
	for _, r := range h.srv.Rows(set) {
		if s, _ := r[col].(string); strings.EqualFold(s, v) {
			out = append(out, r)
		}
	}
	return out
}

func (h *orderHarness) lines(orderID string) []map[string]any {
	return h.rowsWhere("salesorderdetails", "_salesorderid_value", orderID)
}

func (h *orderHarness) invoices(orderID string) []map[string]any {
	return h.rowsWhere("invoices", "_salesorderid_value", orderID)
}

// num reads a numeric column.
func num(t testing.TB, r map[string]any, col string) float64 {
	t.Helper()
	switch v := r[col].(type) {
	case float64:
		return v
	case int:
		return float64(v)
	case int64:
		return float64(v)
	case json.Number:
		f, _ := v.Float64()
		return f
	}
	t.Fatalf("column %s = %#v, not a number", col, r[col])
	return 0
}

// cents reads a money column as a whole number of cents (exact for 2-decimal values).
func moneyCents(t testing.TB, r map[string]any, col string) int64 {
	t.Helper()
	f := num(t, r, col) * 100
	if f < 0 {
		return int64(f - 0.5)
	}
	return int64(f + 0.5)
}

// faultDV wraps the Dataverse client: failBefore makes the next n calls of an operation
// fail without reaching Dataverse; failAfter lets them reach Dataverse and then reports a
// failure (the answer was lost: the process died or the connection broke).
type faultDV struct {
	Dataverse
	mu     sync.Mutex
	before map[string]int
	after  map[string]int
	calls  map[string]int

	batchTime time.Duration // total time spent in Batch calls
	afterPath string
	poison    string // requests to this path get an unknown column (Dataverse refuses them)
}

// poisonPath makes every $batch request to path carry a column Dataverse does not know,
// so its change set fails the way a refused order does.
func (f *faultDV) poisonPath(path string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.poison = path
}

// poisoned returns parts with the poisoned path's requests broken.
func (f *faultDV) poisoned(parts []dataverse.BatchPart) []dataverse.BatchPart {
	f.mu.Lock()
	path := f.poison
	f.mu.Unlock()
	if path == "" {
		return parts
	}
	fix := func(op dataverse.Op) dataverse.Op {
		if op.Path == path {
			body := dataverse.Record{"nosuchcolumn": 1}
			for k, v := range op.Body {
				body[k] = v
			}
			op.Body = body
		}
		return op
	}
	out := make([]dataverse.BatchPart, len(parts))
	for i, p := range parts {
		if op, ok := p.(dataverse.Op); ok {
			out[i] = fix(op)
			continue
		}
		v := reflect.ValueOf(p)
		var ops []dataverse.Op
		for j := 0; v.Kind() == reflect.Slice && j < v.Len(); j++ {
			ops = append(ops, fix(v.Index(j).Interface().(dataverse.Op)))
		}
		out[i] = dataverse.ChangeSet(ops...)
	}
	return out
}

var errInjected = errors.New("injected failure")

func (f *faultDV) failBefore(op string, n int) { f.set(&f.before, op, n) }

// failAfterBatchWith makes the next $batch holding a request to path (e.g.
// "ConvertSalesOrderToInvoice", "salesorders(") reach Dataverse and then report a failure.
func (f *faultDV) failAfterBatchWith(path string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.afterPath = path
}

// batchPaths lists the paths of a $batch's requests, change sets included.
func batchPaths(parts []dataverse.BatchPart) []string {
	var out []string
	for _, p := range parts {
		if op, ok := p.(dataverse.Op); ok {
			out = append(out, op.Path)
			continue
		}
		v := reflect.ValueOf(p) // a change set: a slice of Op
		for i := 0; v.Kind() == reflect.Slice && i < v.Len(); i++ {
			if op, ok := v.Index(i).Interface().(dataverse.Op); ok {
				out = append(out, op.Path)
			}
		}
	}
	return out
}
func (f *faultDV) failAfter(op string, n int) { f.set(&f.after, op, n) }

func (f *faultDV) set(m *map[string]int, op string, n int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if *m == nil {
		*m = map[string]int{}
	}
	(*m)[op] = n
}

func (f *faultDV) count(op string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.calls[op]
}

// enter counts the call and reports whether to fail before it.
func (f *faultDV) enter(op string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.calls == nil {
		f.calls = map[string]int{}
	}
	f.calls[op]++
	if f.before[op] > 0 {
		f.before[op]--
		return &dataverse.Error{Op: op, StatusCode: 503, Retryable: true, Message: "injected before", Err: errInjected}
	}
	return nil
}

// leave turns a success into a failure when asked to.
func (f *faultDV) leave(op string, err error) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err == nil && f.after[op] > 0 {
		f.after[op]--
		return &dataverse.Error{Op: op, StatusCode: 0, Retryable: true, Message: "injected after (answer lost)", Err: errInjected}
	}
	return err
}

func (f *faultDV) Batch(ctx context.Context, parts ...dataverse.BatchPart) ([]dataverse.BatchResult, error) {
	if err := f.enter("Batch"); err != nil {
		return nil, err
	}
	start := time.Now()
	parts = f.poisoned(parts)
	r, err := f.Dataverse.Batch(ctx, parts...)
	f.mu.Lock()
	f.batchTime += time.Since(start)
	lose := false
	if f.afterPath != "" && err == nil {
		for _, p := range batchPaths(parts) {
			if strings.HasPrefix(p, f.afterPath) {
				lose, f.afterPath = true, ""
				break
			}
		}
	}
	f.mu.Unlock()
	if lose {
		return nil, &dataverse.Error{Op: "POST $batch", Retryable: true, Message: "injected after (answer lost)", Err: errInjected}
	}
	return r, f.leave("Batch", err)
}

// CreateMultiple fails before or after (failBefore/failAfter "CreateMultiple <set>") and
// breaks the rows of the poisoned path ("<set>(<id>)") as Batch does.
func (f *faultDV) CreateMultiple(ctx context.Context, set, logicalName string, recs []dataverse.Record) ([]string, error) {
	op := "CreateMultiple " + set
	if err := f.enter(op); err != nil {
		return nil, err
	}
	f.mu.Lock()
	path := f.poison
	f.mu.Unlock()
	out := make([]dataverse.Record, len(recs))
	for i, r := range recs {
		out[i] = r
		for k, v := range r {
			if id, ok := v.(string); ok && strings.HasSuffix(k, "id") && set+"("+id+")" == path {
				bad := dataverse.Record{"nosuchcolumn": 1}
				for c, x := range r {
					bad[c] = x
				}
				out[i] = bad
			}
		}
	}
	ids, err := f.Dataverse.CreateMultiple(ctx, set, logicalName, out)
	return ids, f.leave(op, err)
}

func (f *faultDV) ConvertSalesOrderToInvoice(ctx context.Context, orderID string) (string, error) {
	if err := f.enter("ConvertSalesOrderToInvoice"); err != nil {
		return "", err
	}
	id, err := f.Dataverse.ConvertSalesOrderToInvoice(ctx, orderID)
	if err = f.leave("ConvertSalesOrderToInvoice", err); err != nil {
		return "", err
	}
	return id, nil
}

func (f *faultDV) FulfillSalesOrder(ctx context.Context, orderID string, status int) error {
	if err := f.enter("FulfillSalesOrder"); err != nil {
		return err
	}
	return f.leave("FulfillSalesOrder", f.Dataverse.FulfillSalesOrder(ctx, orderID, status))
}

func (f *faultDV) CancelSalesOrder(ctx context.Context, orderID string, status int) error {
	if err := f.enter("CancelSalesOrder"); err != nil {
		return err
	}
	return f.leave("CancelSalesOrder", f.Dataverse.CancelSalesOrder(ctx, orderID, status))
}

func (f *faultDV) Update(ctx context.Context, set, id string, rec dataverse.Record) error {
	op := "Update " + set
	if err := f.enter(op); err != nil {
		return err
	}
	return f.leave(op, f.Dataverse.Update(ctx, set, id, rec))
}

// faultStore wraps the state store: failSave makes Saves that match fail.
type faultStore struct {
	state.Store
	mu   sync.Mutex
	fail func(*state.Record) bool // returns true to fail this Save (called under mu)
}

func (s *faultStore) failSave(match func(*state.Record) bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.fail = match
}

func (s *faultStore) Save(ctx context.Context, rec *state.Record) error {
	s.mu.Lock()
	fail := s.fail != nil && s.fail(rec)
	s.mu.Unlock()
	if fail {
		return fmt.Errorf("injected state-store failure: %w", errInjected)
	}
	return s.Store.Save(ctx, rec)
}

// reEvent returns a copy of ev with another id, order key and data (the emitter's next
// event for the same order).
func reEvent(t testing.TB, ev *nop.Event, id, typ string, seq int64, edit func(o map[string]any)) *nop.Event {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal(ev.Raw, &m); err != nil {
		t.Fatal(err)
	}
	m["id"], m["type"], m["sequence"] = id, typ, seq
	if edit != nil {
		edit(m["data"].(map[string]any))
	}
	b, err := json.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	evs, err := nop.DecodeRequest(state.Order, b)
	if err != nil {
		t.Fatalf("re-encoding event: %v", err)
	}
	return evs[0]
}

// addCurrency adds a transaction currency, as an admin would in Dynamics 365.
func (h *orderHarness) addCurrency(t *testing.T, code string) {
	t.Helper()
	_, err := h.dv.Create(h.ctx, "transactioncurrencies", dataverse.Record{
		"isocurrencycode": code, "currencyname": code, "currencysymbol": code,
		"currencyprecision": 2, "exchangerate": 0.8,
	})
	if err != nil {
		t.Fatalf("adding currency %s: %v", code, err)
	}
}
