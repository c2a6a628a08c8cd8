package syncer

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
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

// env is the package's test harness: the engine against the Dataverse simulator, through
// the real client, with the embedded state store; both wrapped so tests can inject
// failures.
type env struct {
	t   testing.TB
	ctx context.Context
	srv *dataversetest.Server
	sim dataversetest.Options // the simulator's options
	dv  *dataverse.Client
	fdv *faultDV    // the client as engines see it
	st  *faultStore // the state store as engines see it
	eng *Engine
	set Settings
	// busyWait and bulkSize for engines built by engine() (newEnv: don't wait, so busy
	// shows at once, and chunks of 50; newOrderHarness: the engine's defaults)
	busyWait time.Duration
	bulkSize int
}

type envOptions struct {
	sim      func(*dataversetest.Options)
	settings func(*Settings)
	client   func(*dataverse.Options) // the engine's Dataverse client (e.g. BulkChunkSize)
}

func newEnv(t testing.TB, o envOptions) *env {
	t.Helper()
	so := dataversetest.Options{}
	if o.sim != nil {
		o.sim(&so)
	}
	srv := dataversetest.NewServer(so)
	t.Cleanup(srv.Close)
	co := dataverse.Options{MaxRetries: 1, RetryDelay: time.Millisecond, MaxRetryDelay: 10 * time.Millisecond}
	if o.client != nil {
		o.client(&co)
	}
	dv, err := srv.Client(co)
	if err != nil {
		t.Fatalf("dataverse client: %v", err)
	}
	st, err := localstore.Open("")
	if err != nil {
		t.Fatalf("localstore: %v", err)
	}
	e := &env{t: t, ctx: context.Background(), srv: srv, sim: so, dv: dv, fdv: &faultDV{Dataverse: dv}, st: &faultStore{Store: st},
		set: Settings{StoreCurrencyCode: "USD", WritesEnabled: true}, busyWait: -1, bulkSize: 50}
	if o.settings != nil {
		o.settings(&e.set)
	}
	e.eng = e.engine()
	return e
}

// engine builds another engine (another "instance") on the same Dataverse and store.
func (e *env) engine() *Engine {
	e.t.Helper()
	eng, err := New(Options{DV: e.fdv, State: e.st, Settings: e.set, BulkSize: e.bulkSize, BusyWait: e.busyWait,
		Log: slog.New(slog.NewTextHandler(io.Discard, nil)),
		// The tests' picture servers listen on loopback.
		HTTPClient: pictures.NewClient(pictures.Options{AllowPrefixes: []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}, AllowAnyPort: true})})
	if err != nil {
		e.t.Fatalf("engine: %v", err)
	}
	return eng
}

// harnessOptions build an env the way the orders function runs the engine.
type harnessOptions struct {
	currency string // STORE_CURRENCY_CODE, default USD
	sim      dataversetest.Options
	bulkSize int // the client's BulkChunkSize (DATAVERSE_BULK_SIZE); 0: its default
}

// newOrderHarness is an env whose engine has the engine's own defaults (BusyWait,
// BulkSize), as deployed.
func newOrderHarness(t testing.TB, o harnessOptions) *env {
	t.Helper()
	e := newEnv(t, envOptions{
		sim:    func(so *dataversetest.Options) { *so = o.sim },
		client: func(co *dataverse.Options) { co.BulkChunkSize = o.bulkSize },
		settings: func(s *Settings) {
			if o.currency != "" {
				s.StoreCurrencyCode = o.currency
			}
		},
	})
	e.busyWait, e.bulkSize = 0, 0
	e.eng = e.engine()
	return e
}

// wipeState gives engines built afterwards an empty state store (as after the state table
// was deleted).
func (e *env) wipeState() {
	e.t.Helper()
	st, err := newStore()
	if err != nil {
		e.t.Fatalf("localstore: %v", err)
	}
	e.st = &faultStore{Store: st}
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

// send delivers one event as a queue message, the way the orders function does.
func (h *env) send(ev *nop.Event) error {
	h.t.Helper()
	body, err := json.Marshal(map[string]json.RawMessage{"evt": ev.Raw})
	if err != nil {
		h.t.Fatal(err)
	}
	return h.eng.HandleMessage(h.ctx, "orders", body)
}

// mustSend delivers an event that must be acknowledged.
func (h *env) mustSend(ev *nop.Event) {
	h.t.Helper()
	if err := h.send(ev); err != nil {
		h.t.Fatalf("event %s (%s): %v", ev.ID, ev.Type, err)
	}
}

func (h *env) record(id int) *state.Record {
	h.t.Helper()
	rec, err := h.st.Get(h.ctx, state.Order, fmt.Sprint(id))
	if err != nil {
		h.t.Fatalf("state of order %d: %v", id, err)
	}
	return rec
}

// salesOrder returns the salesorder row of a store order (nil when absent).
func (h *env) salesOrder(storeID, id int) map[string]any {
	r, ok := h.srv.Row("salesorders", salesOrderID(storeID, id))
	if !ok {
		return nil
	}
	return r
}

func (h *env) lines(orderID string) []map[string]any {
	return h.where("salesorderdetails", "_salesorderid_value", orderID)
}

func (h *env) invoices(orderID string) []map[string]any {
	return h.where("invoices", "_salesorderid_value", orderID)
}

// num reads a numeric column.
func num(t testing.TB, r map[string]any, col string) float64 {
	t.Helper()
	switch r[col].(type) {
	case float64, int, int64, json.Number:
		return numOf(r[col])
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

// faultDV wraps the Dataverse client and counts its calls by "<method> <set>" ("Batch",
// "ConvertSalesOrderToInvoice", ... for calls without a set). failBefore makes the next n
// calls of an operation fail without reaching Dataverse; failAfter lets them reach
// Dataverse and then reports a failure (the answer was lost: the process died or the
// connection broke); setFail fails the single and bulk writes (Upsert, Update, Delete,
// CreateMultiple, UpdateMultiple) it returns an error for.
type faultDV struct {
	Dataverse
	mu     sync.Mutex
	before map[string]int
	after  map[string]int
	calls  map[string]int
	fail   func(op, set string, recs []dataverse.Record) error // nil: pass

	batchTime time.Duration // total time spent in Batch calls
	batchOps  []int         // operations of each Batch call, in order
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

// counts returns a copy of the call counts.
func (f *faultDV) counts() map[string]int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return maps.Clone(f.calls)
}

// writesNothing runs redeliver (the newest events sent again) and reports any call it
// made to Dataverse.
func (e *env) writesNothing(t testing.TB, redeliver func()) {
	t.Helper()
	before := e.fdv.counts()
	redeliver()
	if after := e.fdv.counts(); fmt.Sprint(after) != fmt.Sprint(before) {
		t.Errorf("the newest events redelivered wrote again: %v, was %v", after, before)
	}
}

func (f *faultDV) setFail(fn func(op, set string, recs []dataverse.Record) error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.fail = fn
}

// failing asks the setFail function about a write.
func (f *faultDV) failing(op, set string, recs ...dataverse.Record) error {
	f.mu.Lock()
	fail := f.fail
	f.mu.Unlock()
	if fail != nil {
		return fail(op, set, recs)
	}
	return nil
}

func (f *faultDV) Upsert(ctx context.Context, set, id string, rec dataverse.Record, mode dataverse.UpsertMode) (bool, error) {
	if err := f.enter("Upsert " + set); err != nil {
		return false, err
	}
	if err := f.failing("Upsert", set, rec); err != nil {
		return false, err
	}
	return f.Dataverse.Upsert(ctx, set, id, rec, mode)
}

func (f *faultDV) Delete(ctx context.Context, set, id string) error {
	if err := f.enter("Delete " + set); err != nil {
		return err
	}
	if err := f.failing("Delete", set); err != nil {
		return err
	}
	return f.Dataverse.Delete(ctx, set, id)
}

func (f *faultDV) UpdateMultiple(ctx context.Context, set, logical string, recs []dataverse.Record) error {
	if err := f.enter("UpdateMultiple " + set); err != nil {
		return err
	}
	if err := f.failing("UpdateMultiple", set, recs...); err != nil {
		return &dataverse.BulkError{Message: "UpdateMultiple " + set, Chunks: []dataverse.ChunkError{{Start: 0, End: len(recs), Err: err}}}
	}
	return f.leave("UpdateMultiple "+set, f.Dataverse.UpdateMultiple(ctx, set, logical, recs))
}

// Query counts queries per set ("Query salesorders").
func (f *faultDV) Query(ctx context.Context, set string, q dataverse.Query, fn func(dataverse.Record) error) error {
	if err := f.enter("Query " + set); err != nil {
		return err
	}
	return f.Dataverse.Query(ctx, set, q, fn)
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
	f.batchOps = append(f.batchOps, len(batchPaths(parts)))
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
	if err := f.failing("CreateMultiple", set, recs...); err != nil {
		return nil, &dataverse.BulkError{Message: "CreateMultiple " + set, Chunks: []dataverse.ChunkError{{Start: 0, End: len(recs), Err: err}}}
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
	if err := f.failing("Update", set, rec); err != nil {
		return err
	}
	return f.leave(op, f.Dataverse.Update(ctx, set, id, rec))
}

// faultStore wraps the state store: failSave makes Saves that match fail.
type faultStore struct {
	state.Store
	mu   sync.Mutex
	fail func(*state.Record) bool // returns true to fail this Save (called under mu)
	// failGetMany: GetMany of this entity fails.
	failGetMany state.Entity
	// stale: the next Get of a record returns this copy instead (a read made before
	// another writer's save), once; keyed "<entity>/<id>".
	stale map[string]*state.Record
	// failDocs: saves of docs of this kind fail.
	failDocs string
	// docReads counts GetDoc calls by kind.
	docReads map[string]int
}

func (s *faultStore) GetDoc(ctx context.Context, kind, key string) (*state.Doc, error) {
	s.mu.Lock()
	if s.docReads == nil {
		s.docReads = map[string]int{}
	}
	s.docReads[kind]++
	s.mu.Unlock()
	return s.Store.GetDoc(ctx, kind, key)
}

// docReadsOf is how many docs of kind were read so far.
func (s *faultStore) docReadsOf(kind string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.docReads[kind]
}

func (s *faultStore) SaveDocs(ctx context.Context, docs []*state.Doc) []error {
	s.mu.Lock()
	kind := s.failDocs
	s.mu.Unlock()
	errs := make([]error, len(docs))
	var rest []*state.Doc
	var idx []int
	for i, d := range docs {
		if kind != "" && d.Kind == kind {
			errs[i] = fmt.Errorf("injected state-store failure: %w", errInjected)
			continue
		}
		rest, idx = append(rest, d), append(idx, i)
	}
	for k, err := range s.Store.SaveDocs(ctx, rest) {
		errs[idx[k]] = err
	}
	return errs
}

func (s *faultStore) Get(ctx context.Context, entity state.Entity, id string) (*state.Record, error) {
	s.mu.Lock()
	r := s.stale[string(entity)+"/"+id]
	delete(s.stale, string(entity)+"/"+id)
	s.mu.Unlock()
	if r != nil {
		c := *r
		return &c, nil
	}
	return s.Store.Get(ctx, entity, id)
}

func (s *faultStore) GetMany(ctx context.Context, entity state.Entity, ids []string) (map[string]*state.Record, error) {
	s.mu.Lock()
	fail := s.failGetMany != "" && s.failGetMany == entity
	s.mu.Unlock()
	if fail {
		return nil, fmt.Errorf("injected state-store failure: %w", errInjected)
	}
	return s.Store.GetMany(ctx, entity, ids)
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

func (s *faultStore) SaveMany(ctx context.Context, recs []*state.Record) []error {
	errs := make([]error, len(recs))
	var rest []*state.Record
	var idx []int
	s.mu.Lock()
	for i, rec := range recs {
		if s.fail != nil && s.fail(rec) {
			errs[i] = fmt.Errorf("injected state-store failure: %w", errInjected)
			continue
		}
		rest, idx = append(rest, rec), append(idx, i)
	}
	s.mu.Unlock()
	for k, err := range s.Store.SaveMany(ctx, rest) {
		errs[idx[k]] = err
	}
	return errs
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
func (h *env) addCurrency(t *testing.T, code string) {
	t.Helper()
	_, err := h.dv.Create(h.ctx, "transactioncurrencies", dataverse.Record{
		"isocurrencycode": code, "currencyname": code, "currencysymbol": code,
		"currencyprecision": 2, "exchangerate": 0.8,
	})
	if err != nil {
		t.Fatalf("adding currency %s: %v", code, err)
	}
}
