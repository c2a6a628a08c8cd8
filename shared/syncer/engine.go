// Package syncer writes nopCommerce events to Dynamics 365 (Dataverse): it decodes queue
// messages, keeps the latest state of every entity (order keys, leases in the state
// store), and hands each event to its entity's syncer (customers, products, orders).
//
// State it keeps besides one state.Record per entity:
//   - docs "stale-skipped"/<entity>/<shard>: {"count": n} stale events acknowledged without being
//     applied (StaleSkipped reads them for the status page);
//   - docs "released-contact"/<contact id>: contacts of customers deleted in nopCommerce,
//     never adopted by email again;
//   - docs "product-number"/<lower(productnumber)>: "<storeId>/<productId>" owning a sku
//     written as productnumber (another store product can't adopt that row).
//
// Record.Extra keys: customers adoptedContact, ambiguousEmail, accountId, deactivated;
// products productNumber, parentId, priceListItem, priceAmount, imageUrl, imageError,
// familyStub, adoptedProduct.
//
// Each entity's syncer writes one event (sync) and an import chunk's events at once
// (syncMany), and returns an outcome per event. An error is transient (the message is
// redelivered) or permanent (recorded as the entity's failure); transient(err) and
// permanent(err) make the class explicit. Chunks that re-send stored events
// (nop.Chunk.Resync, what ops' sync runs send) are forced: rec.DataHash is cleared
// before sync, so unchanged data is written again.
//
// Structure: Engine (engine.go, chunk.go) decodes messages, claims each entity's record
// through leases (lease.go, also used when an order writes a customer or product from its
// own copy), hands the event to its syncer and records the result. customerSyncer,
// productSyncer and orderSyncer own their entity's logic and caches, each with its bulk
// path (*_bulk.go); they share deps (deps.go: Dataverse, state, settings, leases, the
// bootstrapper holding the shared rows of bootstrap.go) and bulkGroup, the
// CreateMultiple/UpdateMultiple writer (bulk.go).
package syncer

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	mrand "math/rand/v2"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nopsync/nopsync/shared/dataverse"
	"github.com/nopsync/nopsync/shared/internal/cut"
	"github.com/nopsync/nopsync/shared/nop"
	"github.com/nopsync/nopsync/shared/pictures"
	"github.com/nopsync/nopsync/shared/queue"
	"github.com/nopsync/nopsync/shared/state"
)

// Dataverse is the part of *dataverse.Client the engine uses (tests use the real client
// against the dataversetest simulator).
type Dataverse interface {
	Upsert(ctx context.Context, set, id string, rec dataverse.Record, mode dataverse.UpsertMode) (created bool, err error)
	Update(ctx context.Context, set, id string, rec dataverse.Record) error
	Delete(ctx context.Context, set, id string) error
	Retrieve(ctx context.Context, set, id string, columns ...string) (dataverse.Record, error)
	Query(ctx context.Context, set string, q dataverse.Query, fn func(dataverse.Record) error) error
	Batch(ctx context.Context, parts ...dataverse.BatchPart) ([]dataverse.BatchResult, error)
	BatchParts(n, most int) int
	RowsPerRequest(logicalName string) int
	UpsertMultiple(ctx context.Context, set, logicalName string, recs []dataverse.Record) error
	CreateMultiple(ctx context.Context, set, logicalName string, recs []dataverse.Record) ([]string, error)
	UpdateMultiple(ctx context.Context, set, logicalName string, recs []dataverse.Record) error
	FulfillSalesOrder(ctx context.Context, orderID string, status int) error
	CancelSalesOrder(ctx context.Context, orderID string, status int) error
	ConvertSalesOrderToInvoice(ctx context.Context, orderID string) (invoiceID string, err error)
	PublishProductHierarchy(ctx context.Context, productID string) error
	WhoAmI(ctx context.Context) (dataverse.WhoAmI, error)
}

// Delete policies (setting DELETE_POLICY).
const (
	DeleteDeactivate = "deactivate"
	DeleteDelete     = "delete"
	DeleteIgnore     = "ignore"
)

// Settings are the sync settings (docs/operations.md).
type Settings struct {
	StoreCurrencyCode string // ISO 4217, required for products and orders
	PriceListName     string // "" → "nopCommerce <CODE>"
	UnitGroupName     string // "" → "Default Unit"
	DeletePolicy      string // deactivate (default), delete, ignore
	SyncImages        bool
	ImageMaxBytes     int  // 0 → 5 MiB
	WritesEnabled     bool // false: events are recorded as pending, nothing is written
}

func (s Settings) priceListName() string {
	if s.PriceListName != "" {
		return s.PriceListName
	}
	return "nopCommerce " + strings.ToUpper(s.StoreCurrencyCode)
}

func (s Settings) unitGroupName() string {
	if s.UnitGroupName != "" {
		return s.UnitGroupName
	}
	return "Default Unit"
}

func (s Settings) deletePolicy() string {
	switch p := strings.ToLower(s.DeletePolicy); p {
	case DeleteDelete, DeleteIgnore:
		return p
	}
	return DeleteDeactivate
}

// Options build an Engine.
type Options struct {
	DV       Dataverse
	State    state.Store
	Settings Settings
	Now      func() time.Time // default time.Now
	Log      *slog.Logger     // default slog.Default()

	// Instance names this process in leases (default: random). Each claim adds its own
	// suffix, so two goroutines of one instance never share a lease either.
	Instance string
	// LeaseDuration bounds how long a claim keeps other writers off an entity (default
	// DefaultLease). It is also how long a crashed writer's entities stay blocked, so it
	// is short; a writer keeps its leases while it writes (renewed every third of the
	// duration) and sends nothing more once one could not be renewed. Should a writer
	// still outlive its lease, it is caught when it records its result (superseded →
	// the newest state is written again).
	LeaseDuration time.Duration
	// BusyWait is how long a claim waits for another writer's lease to be released
	// before reporting "busy" (a transient failure; Service Bus redelivers). Waiting a
	// little keeps an event from using up its deliveries while a chunk holds the entity.
	// Default 20 s; negative: don't wait.
	BusyWait time.Duration
	// Concurrency bounds parallel work inside one chunk (default 8).
	Concurrency int
	// StateConcurrency bounds the sync-state reads and writes of one chunk in flight at
	// once that go entity by entity (default 32): claims of entities another writer
	// holds, results whose save conflicted. The rest of a chunk's claims and results go
	// in batches (state.Store's GetMany and SaveMany).
	StateConcurrency int
	// BulkSize sizes Resync's chunks: stored events are re-sent 2×BulkSize at a time
	// (default 100). The rows per bulk request are the Dataverse client's BulkChunkSize.
	BulkSize int
	// HTTPClient fetches product pictures (SYNC_IMAGES); default pictures.NewClient, which
	// fetches from public addresses only.
	HTTPClient *http.Client
}

// Engine applies events to Dataverse. It is safe for concurrent use.
type Engine struct {
	*deps
	stateConc int
	bulkSize  int

	customers *customerSyncer
	products  *productSyncer
	orders    *orderSyncer
	syncers   map[state.Entity]entitySyncer
}

// New builds an Engine.
func New(o Options) (*Engine, error) {
	if o.DV == nil {
		return nil, errors.New("syncer: Options.DV is required")
	}
	if o.State == nil {
		return nil, errors.New("syncer: Options.State is required")
	}
	d := &deps{dv: o.DV, st: o.State, settings: o.Settings, now: o.Now, log: o.Log, conc: o.Concurrency, noBulk: &sync.Map{},
		setup: &setupIssues{}}
	if d.now == nil {
		d.now = time.Now
	}
	if d.log == nil {
		d.log = slog.Default()
	}
	d.leases = &leases{st: d.st, now: d.now, log: d.log, instance: o.Instance, duration: o.LeaseDuration, busyWait: o.BusyWait}
	if d.leases.instance == "" {
		d.leases.instance = randomHex(6)
	}
	if d.leases.duration <= 0 {
		d.leases.duration = DefaultLease
	}
	if d.leases.busyWait == 0 {
		d.leases.busyWait = 20 * time.Second
	}
	if d.conc <= 0 {
		d.conc = 8
	}
	if d.settings.ImageMaxBytes <= 0 {
		d.settings.ImageMaxBytes = 5 << 20
	}
	d.boot = &bootstrapper{dv: d.dv, settings: d.settings}
	e := &Engine{deps: d, stateConc: o.StateConcurrency, bulkSize: o.BulkSize}
	if e.stateConc <= 0 {
		e.stateConc = 32
	}
	if e.bulkSize <= 0 {
		e.bulkSize = 100
	}
	httpc := o.HTTPClient
	if httpc == nil {
		httpc = pictures.NewClient(pictures.Options{}) // public addresses only
	}
	e.customers = &customerSyncer{deps: d}
	e.products = &productSyncer{deps: d, http: httpc}
	e.orders = &orderSyncer{deps: d, customers: e.customers, products: e.products}
	e.syncers = map[state.Entity]entitySyncer{
		state.Customer: e.customers,
		state.Product:  e.products,
		state.Order:    e.orders,
	}
	return e, nil
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// outcome is what one entity's sync achieved.
type outcome struct {
	status      state.Status
	reason      string
	dataverseID string
	hash        string
}

// entitySyncer writes one entity's event. The engine has already decoded and validated
// the event, checked its order key (stale events never get here), claimed the record's
// lease and stored the event in rec.Data. sync may set rec.Extra; the engine saves it
// with the outcome. Errors are classified by isTransient.
type entitySyncer interface {
	sync(ctx context.Context, ev *nop.Event, rec *state.Record) (outcome, error)
}

// bulkSyncer is the optional bulk path for chunk messages: per-row outcomes and errors,
// both the length of evs.
type bulkSyncer interface {
	syncMany(ctx context.Context, evs []*nop.Event, recs []*state.Record) ([]outcome, []error)
}

// classified is an error with an explicit transient/permanent class.
type classified struct {
	err       error
	transient bool
	setup     bool // a setup problem (setup.go): recorded for auto-sync, not redelivered
}

func (c *classified) Error() string { return c.err.Error() }
func (c *classified) Unwrap() error { return c.err }

// transient marks err as worth retrying (Service Bus redelivers the message).
func transient(err error) error {
	if err == nil {
		return nil
	}
	return &classified{err: err, transient: true}
}

// permanent marks err as final: retrying the same event cannot succeed.
func permanent(err error) error {
	if err == nil {
		return nil
	}
	return &classified{err: err, transient: false}
}

// isTransient says whether a retry of the same event can succeed: throttling past the
// budget, 5xx, network, authentication/permission problems an admin can fix, missing
// currency, busy leases, state-store trouble. Dataverse refusing the data (4xx) is
// permanent.
func isTransient(err error) bool {
	if err == nil {
		return false
	}
	var c *classified
	if errors.As(err, &c) {
		return c.transient
	}
	var de *dataverse.Error
	if errors.As(err, &de) {
		if de.Retryable || de.Auth || de.StatusCode == 0 {
			return true
		}
		switch de.StatusCode {
		case http.StatusUnauthorized, http.StatusForbidden, http.StatusRequestTimeout, http.StatusTooManyRequests:
			return true
		}
		return de.StatusCode >= 500 && !dataverse.IsUnsupported(de)
	}
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return true
	}
	// Unknown failures (state store, I/O) are retried; if they persist, the queue
	// function records the reason (package delivery) and Service Bus dead-letters them.
	return true
}

// HandleMessage applies one queue message (a single event or an import chunk). nil: every
// event was applied, skipped or recorded as a permanent failure, so the message is
// acknowledged. An error: at least one event failed transiently (recorded in state);
// Service Bus redelivers, and events already applied are recognised as duplicates.
func (e *Engine) HandleMessage(ctx context.Context, queueName string, body []byte) error {
	entity, ok := nop.QueueEntity(queueName)
	if !ok {
		entity, ok = nop.ParseEntity(queueName)
	}
	if !ok {
		return fmt.Errorf("syncer: unknown queue %q", queueName)
	}
	evs, force, err := nop.DecodeEnvelope(body)
	if err != nil {
		// The message can never become valid: acknowledge it, and record it where the
		// status page shows it, so it does not end nowhere.
		e.log.Error("invalid message dropped", "queue", queueName, "error", err)
		return e.recordInvalid(ctx, queueName, body, err)
	}
	var mine []*nop.Event
	var wrong []string
	for _, ev := range evs {
		if ev.Entity() != entity {
			e.log.Error("event on the wrong queue dropped", "queue", queueName, "event", ev.ID, "type", ev.Type)
			wrong = append(wrong, ev.ID)
			continue
		}
		mine = append(mine, ev)
	}
	if len(wrong) > 0 {
		// Listed with the invalid messages, as any message that can never apply is.
		err := fmt.Errorf("%d event(s) not for the %s queue, dropped: %s", len(wrong), queueName, strings.Join(headOf(wrong, 10), ", "))
		if rerr := e.recordInvalid(ctx, queueName, body, err); rerr != nil || len(mine) == 0 {
			return rerr
		}
	}
	if len(mine) == 0 {
		return nil
	}
	if len(evs) > 1 || nop.IsBulkQueue(queueName) {
		// Import work: its Dataverse requests wait behind live events' for a slot.
		ctx = dataverse.WithPriority(ctx, dataverse.Bulk)
	}
	if len(mine) == 1 {
		return e.process(ctx, mine[0], force)
	}
	return e.processMany(ctx, entity, mine, force)
}

// eventJSON is the event as received (kept in rec.Data for re-syncs).
func eventJSON(ev *nop.Event) []byte {
	if len(ev.Raw) > 0 {
		return slices.Clone([]byte(ev.Raw))
	}
	m := map[string]any{"id": ev.ID, "type": ev.Type, "occurredOnUtc": ev.OccurredOnUtc, "storeId": ev.StoreID, "data": ev.Data}
	if ev.Sequence != nil {
		m["sequence"] = *ev.Sequence
	}
	b, _ := json.Marshal(m)
	return b
}

// finish records the result of a claimed event and releases the lease. It returns the
// error HandleMessage should report for this event (nil unless transient).
func (e *Engine) finish(ctx context.Context, ev *nop.Event, rec *state.Record, out outcome, syncErr error) error {
	// Record the result even when the invocation's context has just run out: otherwise
	// the lease would keep every redelivery busy until it expires.
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
	defer cancel()
	f := e.result(ev, rec, out, syncErr)
	return e.settle(ctx, f, e.st.Save(ctx, rec))
}

// resultSave is a result being recorded: the record with the result applied, and what
// settle needs when its save conflicts.
type resultSave struct {
	ev      *nop.Event
	rec     *state.Record
	owner   string
	syncErr error
	apply   func(*state.Record)
}

// result applies the outcome (or syncErr) of a claimed event to rec and drops the lease;
// the caller saves rec and hands the save's error to settle.
func (e *Engine) result(ev *nop.Event, rec *state.Record, out outcome, syncErr error) *resultSave {
	if syncErr == nil && out.status == "" {
		syncErr = permanent(fmt.Errorf("internal error: no result for %s %s", rec.Entity, rec.ID))
	}
	owner := rec.LeaseOwner
	reason := ""
	if syncErr != nil {
		reason = syncErr.Error()
		if isSetup(syncErr) {
			reason = e.setup.noteFailure(syncErr)
		}
	} else if rec.Status == state.Failed {
		e.setup.resolved(rec.Reason)
	}
	apply := func(r *state.Record) {
		drop(r)
		r.OrderKey = ev.OrderKey()
		r.LastEventID = ev.ID
		r.Data = eventJSON(ev)
		if syncErr != nil {
			r.Status = state.Failed
			r.Reason = cut.Runes(reason, 1000)
			r.Transient = isTransient(syncErr) || isSetup(syncErr)
			r.Attempts++
			return
		}
		r.Status, r.Reason, r.Transient = out.status, out.reason, false
		if out.dataverseID != "" {
			r.DataverseID = out.dataverseID
		}
		if out.hash != "" {
			r.DataHash = out.hash
		}
		if out.status == state.Synced {
			r.Attempts = 0
			r.SyncedAt = e.now()
		}
	}
	apply(rec)
	return &resultSave{ev: ev, rec: rec, owner: owner, syncErr: syncErr, apply: apply}
}

// settle finishes recording a result whose save returned err: on a conflict, it keeps
// another writer's newer state or applies the result to the stored record. It returns
// the error HandleMessage should report for the event.
func (e *Engine) settle(ctx context.Context, f *resultSave, err error) error {
	ev, rec, owner, syncErr, apply := f.ev, f.rec, f.owner, f.syncErr, f.apply
	superseded := false
	for attempt := 0; errors.Is(err, state.ErrConflict) && attempt < 3; attempt++ {
		// Our lease expired and someone else claimed the record meanwhile. Keep theirs
		// if they are still working or already applied something newer.
		cur, gerr := e.st.Get(ctx, rec.Entity, rec.ID)
		if gerr != nil {
			err = gerr
			break
		}
		if (cur.LeaseOwner != owner && e.leases.held(cur)) ||
			nop.CompareOrderKeys(cur.OrderKey, ev.OrderKey()) > 0 {
			e.log.Warn("sync result superseded by another writer", "entity", rec.Entity, "id", rec.ID)
			err, superseded = nil, true
			break
		}
		cur.Extra = rec.Extra
		apply(cur)
		err = e.st.Save(ctx, cur)
	}
	if err != nil {
		return transient(fmt.Errorf("saving sync state of %s %s: %w", rec.Entity, rec.ID, err))
	}
	if superseded && syncErr == nil {
		// Our lease ran out while we wrote, and a newer state was applied meanwhile: our
		// older data may have landed in Dynamics 365 after it. Write the newest again.
		return e.reapplyLatest(ctx, rec.Entity, rec.ID)
	}
	if syncErr != nil {
		e.log.Warn("sync failed", "entity", rec.Entity, "id", rec.ID, "event", ev.ID, "transient", isTransient(syncErr), "setup", isSetup(syncErr), "error", syncErr)
		if isTransient(syncErr) && !isSetup(syncErr) {
			return syncErr
		}
	}
	return nil
}

// reapplyLatest writes an entity's newest stored event again (forced).
func (e *Engine) reapplyLatest(ctx context.Context, entity state.Entity, id string) error {
	cur, err := e.st.Get(ctx, entity, id)
	if err != nil {
		return transient(fmt.Errorf("reading sync state of %s %s: %w", entity, id, err))
	}
	ev, err := nop.DecodeStored(cur.Data)
	if err != nil {
		e.log.Warn("stored event unreadable; not re-applied", "entity", entity, "id", id, "error", err)
		return nil
	}
	return e.process(ctx, ev, true)
}

// process applies a single event.
func (e *Engine) process(ctx context.Context, ev *nop.Event, force bool) error {
	syn, ok := e.syncers[ev.Entity()]
	if !ok {
		e.log.Error("no syncer for entity", "entity", ev.Entity())
		return nil
	}
	rec, res, err := e.leases.claimEvent(ctx, ev, force)
	if err != nil {
		return err
	}
	switch res {
	case claimStale:
		e.countStale(ctx, ev.Entity(), 1)
		return nil
	case claimDuplicate:
		return nil
	}
	if !e.settings.WritesEnabled {
		return e.finish(ctx, ev, rec, pendingOutcome(), nil)
	}
	if force {
		rec.DataHash = ""
	}
	kctx, stop := e.leases.keep(ctx, []*state.Record{rec})
	out, serr := e.safeSync(kctx, syn, ev, rec)
	serr = leaseLost(kctx, serr)
	stop()
	return e.finish(ctx, ev, rec, out, serr)
}

func pendingOutcome() outcome {
	return outcome{status: state.Pending, reason: "DATAVERSE_WRITES_ENABLED is false: recorded, not written to Dynamics 365"}
}

// safeSync runs one sync and turns a panic into a permanent error: bad input must never
// take the process down.
func (e *Engine) safeSync(ctx context.Context, syn entitySyncer, ev *nop.Event, rec *state.Record) (out outcome, err error) {
	defer func() {
		if p := recover(); p != nil {
			err = permanent(fmt.Errorf("internal error syncing %s %s: %v", ev.Entity(), ev.EntityID(), p))
		}
	}()
	return syn.sync(ctx, ev, rec)
}

// Resync re-sends entities from their last received data (rec.Data) through the bulk
// path: scope "failed" takes failed and pending records, "all" every record. Writes
// happen even when the data is unchanged (repairing rows changed in Dynamics 365).
// n is the number of entities re-sent.
func (e *Engine) Resync(ctx context.Context, entity state.Entity, scope string) (n int, err error) {
	var statuses []state.Status
	switch scope {
	case "", "failed":
		statuses = []state.Status{state.Failed, state.Pending}
	case "all":
	default:
		return 0, fmt.Errorf("syncer: unknown resync scope %q (want failed or all)", scope)
	}
	if _, ok := e.syncers[entity]; !ok {
		return 0, fmt.Errorf("syncer: unknown entity %q", entity)
	}
	var batch []*nop.Event
	var errs []error
	flush := func() {
		if len(batch) == 0 {
			return
		}
		if err := e.processMany(ctx, entity, batch, true); err != nil {
			errs = append(errs, err)
		}
		n += len(batch)
		batch = nil
	}
	var evs []*nop.Event
	err = e.st.Scan(ctx, entity, statuses, func(rec *state.Record) error {
		if len(rec.Data) == 0 {
			return nil // known only as a reference (e.g. a family stub): nothing to re-send
		}
		ev, err := nop.DecodeStored(rec.Data)
		if err != nil {
			e.log.Warn("stored event unreadable; skipped in resync", "entity", entity, "id", rec.ID, "error", err)
			return nil
		}
		evs = append(evs, ev)
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("syncer: scanning %s state: %w", entity, err)
	}
	for _, ev := range evs {
		batch = append(batch, ev)
		if len(batch) >= e.bulkSize*2 {
			flush()
		}
	}
	flush()
	return n, errors.Join(errs...)
}

// staleDocKind is the state doc kind holding per-entity counts of stale events skipped
// (key: "<entity>/<shard>"; value: {"count": n}). Stale events leave the entity's record untouched
// (it holds the newer state), so they are counted here for the status page.
const staleDocKind = "stale-skipped"

// staleShards is how many docs an entity's stale count is spread over.
const staleShards = 8

type staleCount struct {
	Count int64 `json:"count"`
}

func (e *Engine) countStale(ctx context.Context, entity state.Entity, n int) {
	if queue.IsRedelivery(ctx) {
		return // counted at the message's first delivery
	}
	// One of staleShards docs per entity, picked at random: many instances counting at
	// once meet on one doc rarely, and each update's few tries suffice.
	key := string(entity) + "/" + strconv.Itoa(mrand.IntN(staleShards))
	_, err := state.UpdateDoc(ctx, e.st, staleDocKind, key, 8, func(cur []byte) ([]byte, bool) {
		var c staleCount
		_ = json.Unmarshal(cur, &c)
		c.Count += int64(n)
		v, _ := json.Marshal(c)
		return v, true
	})
	if err != nil {
		e.log.Warn("counting stale events", "error", err)
	}
}

// StaleSkipped returns, per entity, how many stale events were acknowledged without
// being applied (kept in state docs of kind "stale-skipped").
func (e *Engine) StaleSkipped(ctx context.Context) (map[state.Entity]int64, error) {
	docs, err := e.st.ListDocs(ctx, staleDocKind)
	if err != nil {
		return nil, err
	}
	out := map[state.Entity]int64{}
	for _, doc := range docs {
		// "<entity>/<shard>", or "<entity>" as counted before the shards.
		ent, _, _ := strings.Cut(doc.Key, "/")
		var c staleCount
		if err := json.Unmarshal(doc.Value, &c); err != nil {
			return nil, fmt.Errorf("stale count of %s: %w", ent, err)
		}
		out[state.Entity(ent)] += c.Count
	}
	return out, nil
}

// InvalidMessageKind is the state doc kind of queue messages that failed validation on
// the queue side (only a message tampered with or replayed by hand can): one doc per
// message body, keyed by its hash, so redeliveries record it once.
const InvalidMessageKind = "invalid-message"

// InvalidMessage is what is kept of such a message.
type InvalidMessage struct {
	Queue string    `json:"queue"`
	Error string    `json:"error"`
	At    time.Time `json:"at"`
	Body  string    `json:"body"` // the first 2 KiB
}

func (e *Engine) recordInvalid(ctx context.Context, queueName string, body []byte, cause error) error {
	sum := sha256.Sum256(body)
	doc := &state.Doc{Kind: InvalidMessageKind, Key: hex.EncodeToString(sum[:12])}
	b := body
	if len(b) > 2048 {
		b = b[:2048]
	}
	doc.Value, _ = json.Marshal(InvalidMessage{Queue: queueName, Error: cut.Runes(cause.Error(), 1000), At: e.now().UTC(), Body: string(b)})
	if err := e.st.SaveDoc(ctx, doc); err != nil && !errors.Is(err, state.ErrConflict) {
		return transient(fmt.Errorf("recording an invalid message: %w", err))
	}
	return nil
}
