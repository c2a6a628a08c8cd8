package syncer

// Orders (docs/dataverse-mapping.md, "Order"). One sync applies the newest store state in
// steps, each only if not yet done: header and lines in one change set (only while the
// salesorder is Active) → one invoice for a paid order (ConvertSalesOrderToInvoice, then
// Paid) → FulfillSalesOrder or CancelSalesOrder. Every step checks Dynamics 365 first
// (the salesorder's statecode, the order's invoices), so redelivery after a crash between
// two steps repeats nothing.
//
// What the status page shows (state.Record):
//   - synced: Dynamics 365 holds the order's latest state; Reason carries a refund or void
//     ("Refunded in nopCommerce: 10.00"), which is also on the salesorder's description
//     while the order is Active, and never changes the invoice.
//   - failed, not transient, Reason "order closed in Dynamics 365 (fulfilled|canceled|...):
//     <what was not applied>": the store changed an order Dynamics 365 no longer lets
//     anyone change. The message is acknowledged (a retry cannot help) and the order stays
//     failed, so an admin sees it among the failures; a later event that matches Dynamics
//     365 again clears it. Extra["conflict"] keeps the text.
//   - skipped, Reason "paid orders cannot be deleted from Dynamics 365": the store deleted
//     an order that has an invoice; the salesorder stays. An unpaid order is deleted.
//   - failed and transient: Dynamics 365 unreachable, throttled, or the store currency or
//     price list unusable (bootstrap); redelivery or the next resync retries it.
//
// Extra keys: orderContent (digest of what the header and lines carry), orderPayment
// (refund/void note), invoiceId, invoicePaid, orderState (salesorder state after the
// sync), conflict, writeIn (lines written as write-in products because Dynamics 365
// refuses their Draft or Retired products on order lines).

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"math"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/nopsync/nopsync/shared/dataverse"
	"github.com/nopsync/nopsync/shared/nop"
	"github.com/nopsync/nopsync/shared/state"
)

// Keys the order sync keeps in state.Record.Extra.
const (
	extraOrderContent = "orderContent" // digest of the header and lines last written
	extraOrderNote    = "orderPayment" // refund/void note last written (or recorded)
	extraInvoiceID    = "invoiceId"    // the order's invoice
	extraInvoicePaid  = "invoicePaid"  // "true" once the invoice is set to Paid
	extraOrderState   = "orderState"   // Dynamics 365 state after the last sync: active, fulfilled, canceled, ...
	extraConflict     = "conflict"     // why the latest store state could not be applied
	extraWriteIn      = "writeIn"      // lines written as write-in products, and why
	extraInvoiceStale = "invoiceStale" // the order changed after its invoice was made
)

// Reasons an admin reads on the status page.
const (
	conflictPaidCanceled   = "payment not applied: Dynamics 365 does not invoice canceled orders"
	reasonOrderClosed      = "order closed in Dynamics 365"
	reasonPaidNotDeletable = "paid orders cannot be deleted from Dynamics 365"
)

// orderSyncer writes orders: salesorder + salesorderdetails, invoice, fulfil/cancel.
type orderSyncer struct {
	*deps
	customers *customerSyncer // contacts of customers not synced yet
	products  *productSyncer  // products of lines not synced yet
	// convertMoves records whether ConvertSalesOrderToInvoice changes the order's state in
	// this environment (convertUnknown until the first conversion shows it).
	convertMoves atomic.Int32
}

const (
	convertUnknown int32 = iota
	convertKeepsState
	convertMovesState
)

// salesOrderState is what the app reads of an existing salesorder.
type salesOrderState struct {
	exists     bool
	statecode  int
	statuscode int
}

func (s salesOrderState) name() string {
	if !s.exists {
		return "absent"
	}
	switch s.statecode {
	case orderStateActive:
		return "active"
	case orderStateSubmitted:
		return "submitted"
	case orderStateCanceled:
		return "canceled"
	case orderStateFulfilled:
		return "fulfilled"
	case orderStateInvoiced:
		return "invoiced"
	}
	return "state " + strconv.Itoa(s.statecode)
}

// final reports a state Dynamics 365 does not leave (Fulfilled, Canceled).
func (s salesOrderState) final() bool {
	return s.exists && (s.statecode == orderStateFulfilled || s.statecode == orderStateCanceled)
}

// orderPlan is one order's sync between its phases: plan (read Dynamics 365, decide, map),
// write (the header-and-lines change set, alone or packed with other orders'), finish
// (invoice, fulfil or cancel, outcome).
type orderPlan struct {
	ev        *nop.Event
	rec       *state.Record
	orderID   string
	out       outcome
	done      bool // out is final: nothing more to do
	cur       salesOrderState
	content   string
	note      string
	write     *orderWrite // nil: header and lines need no write
	ops       []dataverse.Op
	conflicts []string
	pre       *orderPrefetch // nil outside chunks
	refs      orderRefs      // the rows the write points at
	stale     []string       // lines to delete
	// writeInNote names lines written as write-in products (their products are not Active).
	writeInNote string
	writeErr    error // the write's failure in a chunk (order_bulk.go)
	// keptPaid: the store deleted a paid order; Dynamics 365 keeps it, with its invoice
	// (docs/dataverse-mapping.md: "deleted, invoice exists (paid) → kept").
	keptPaid bool

	// Bulk finish (order_bulk.go).
	invoiceDone bool   // no invoice step needed
	invoiceID   string // the order's invoice
	invoicePaid bool   // ... already Paid
	next        salesOrderState
}

func (s *orderSyncer) sync(ctx context.Context, ev *nop.Event, rec *state.Record) (outcome, error) {
	p, err := s.plan(ctx, newRefResolver(s), nil, ev, rec)
	if err != nil {
		return outcome{}, err
	}
	if p.done {
		return p.out, nil
	}
	if p.write != nil {
		if _, err := s.dv.Batch(ctx, dataverse.ChangeSet(p.ops...)); err != nil {
			if err := s.retryWithWriteIns(ctx, p, err); err != nil {
				return outcome{}, err
			}
		} else {
			p.written()
		}
	}
	return s.finish(ctx, p)
}

func (p *orderPlan) writeFailed(err error) error {
	return fmt.Errorf("order %d: write salesorder and %d lines: %w", p.ev.Order.ID, len(p.write.Lines), err)
}

// written records a successful header-and-lines write.
func (p *orderPlan) written() {
	p.cur = salesOrderState{exists: true, statecode: orderStateActive, statuscode: activeStatus(p.ev.Order.OrderStatus)}
	if prev, inv := p.rec.Extra[extraOrderContent], p.rec.Extra[extraInvoiceID]; prev != "" && prev != p.content && inv != "" {
		// The store changed an order already invoiced (nopCommerce lets staff edit a paid
		// order): the salesorder, still Active, takes it; the invoice was made from the
		// earlier lines and, once Paid, Dynamics 365 keeps it read-only. Said for good.
		p.rec.Extra[extraInvoiceStale] = "items or amounts changed after invoice " + inv + " was made: the invoice keeps the earlier ones"
	}
	p.rec.Extra[extraOrderContent] = p.content
	p.rec.Extra[extraOrderNote] = p.note
	if p.writeInNote != "" {
		p.rec.Extra[extraWriteIn] = p.writeInNote
	} else {
		delete(p.rec.Extra, extraWriteIn)
	}
}

// plan reads the salesorder's state and prepares the header-and-lines write when one is
// due (the salesorder is missing or Active and differs from the store's order).
func (s *orderSyncer) plan(ctx context.Context, refs *refResolver, pre *orderPrefetch, ev *nop.Event, rec *state.Record) (*orderPlan, error) {
	o := ev.Order
	if o == nil {
		return nil, permanent(fmt.Errorf("event %s: no order data", ev.ID))
	}
	if rec.Extra == nil {
		rec.Extra = map[string]string{}
	}
	p := &orderPlan{ev: ev, rec: rec, orderID: rec.DataverseID, pre: pre}
	if p.orderID == "" {
		p.orderID = salesOrderID(ev.StoreID, o.ID)
	}
	p.out = outcome{status: state.Synced, dataverseID: p.orderID, hash: orderHash(ev)}
	// The same data again (a replay under a new event id): nothing to do. The engine
	// clears DataHash to force a full write (resync "all").
	forced := rec.DataHash == ""
	if rec.DataHash == p.out.hash && (rec.Status == state.Synced || rec.Status == state.Skipped) {
		p.out.status, p.out.reason = rec.Status, rec.Reason
		p.done = true
		return p, nil
	}
	if o.Deleted && !orderPaid(o) {
		out, err := s.deleteOrder(ctx, ev, rec, p.orderID, p.out)
		p.out, p.done = out, true
		return p, err
	}
	// A paid order deleted in the store is kept, invoice and all, whatever arrived before:
	// its delete event carries the paid state, so the order is written from it as the paid
	// event would have, and the result is the same as in business order (placed, paid,
	// deleted) even when the delete comes first or alone (an import applies only an
	// entity's newest event).
	p.keptPaid = o.Deleted
	if want := strings.TrimSpace(s.settings.StoreCurrencyCode); !strings.EqualFold(o.CurrencyCode, want) {
		// The amounts are in the order's currency: writing them in another would be wrong.
		// A setting to fix, so the order is retried once it is.
		return nil, transient(fmt.Errorf("order %d is in %s but STORE_CURRENCY_CODE is %s: set STORE_CURRENCY_CODE to the store's primary currency",
			o.ID, o.CurrencyCode, strings.ToUpper(want)))
	}
	sh, err := s.boot.rows(ctx)
	if err != nil {
		return nil, fmt.Errorf("order %d: %w", o.ID, err)
	}
	if sh.PricingProblem != "" {
		return nil, setup(fmt.Errorf("order %d not written: %s", o.ID, sh.PricingProblem))
	}
	if cur, ok := pre.order(p.orderID); ok {
		p.cur = cur
	} else if p.cur, err = s.readOrder(ctx, p.orderID); err != nil {
		return nil, fmt.Errorf("order %d: %w", o.ID, err)
	}
	p.content, p.note = orderContentDigest(o), paymentNote(o)

	// Step 1: header and lines, only while the salesorder is Active (or not there yet).
	switch cur := p.cur; {
	case !cur.exists || cur.statecode == orderStateActive:
		if forced || !cur.exists || rec.Extra[extraOrderContent] != p.content || rec.Extra[extraOrderNote] != p.note ||
			cur.statuscode != activeStatus(o.OrderStatus) {
			if p.refs, err = s.prepare(ctx, refs, ev, sh); err != nil {
				return nil, err
			}
			if p.write, err = mapOrder(ev.StoreID, o, p.orderID, p.refs); err != nil {
				return nil, permanent(err)
			}
			if cur.exists {
				if p.stale, err = s.staleLines(ctx, p.write); err != nil {
					return nil, fmt.Errorf("order %d: %w", o.ID, err)
				}
			}
			p.ops = orderOps(p.write, p.stale)
		}
	default:
		// Closed (or submitted/invoiced): Dynamics 365 refuses edits. A changed order is a
		// conflict; a refund or void is only recorded here, as it never changes the invoice.
		if prev := rec.Extra[extraOrderContent]; prev != "" && prev != p.content {
			p.conflicts = append(p.conflicts, fmt.Sprintf("changes to items, amounts or addresses not applied (salesorder is %s)", cur.name()))
		} else if prev == "" {
			// The state was lost: what the app wrote is not known, so the order is compared
			// with what Dynamics 365 holds.
			differs, err := s.closedOrderDiffers(ctx, o, p.orderID, sh)
			if err != nil {
				return nil, fmt.Errorf("order %d: %w", o.ID, err)
			}
			if differs != "" {
				p.conflicts = append(p.conflicts, fmt.Sprintf("changes to items, amounts or addresses not applied (salesorder is %s; %s)", cur.name(), differs))
			} else {
				rec.Extra[extraOrderContent] = p.content
			}
		}
		rec.Extra[extraOrderNote] = p.note
	}
	return p, nil
}

// finish runs the steps after the header and lines: invoice, then fulfil or cancel.
func (s *orderSyncer) finish(ctx context.Context, p *orderPlan) (outcome, error) {
	o, rec, orderID := p.ev.Order, p.rec, p.orderID
	cur := p.cur

	// Step 2: the invoice, once, for a paid order.
	if orderPaid(o) && cur.exists && cur.statecode == orderStateCanceled {
		// Dynamics 365 does not invoice canceled orders: a payment the store reports after
		// the cancellation is a conflict, unless the invoice was made before it (an admin
		// canceled the order in Dynamics 365 afterwards): that invoice is set to Paid.
		if rec.Extra[extraInvoiceID] == "" || rec.Extra[extraInvoicePaid] != "true" {
			inv, paid, err := s.findInvoiceState(ctx, orderID)
			if err != nil {
				return outcome{}, fmt.Errorf("order %d: %w", o.ID, err)
			}
			switch {
			case inv == "" && rec.Extra[extraInvoiceID] == "":
				p.conflicts = append(p.conflicts, conflictPaidCanceled)
			case inv != "":
				rec.Extra[extraInvoiceID] = inv
				if !paid {
					if err := s.payInvoice(ctx, o, inv); err != nil {
						return outcome{}, err
					}
				}
				rec.Extra[extraInvoicePaid] = "true"
			}
		}
	} else if orderPaid(o) {
		converted, err := s.ensureInvoice(ctx, o, orderID, rec, p.pre)
		if err != nil {
			return outcome{}, err
		}
		// Converting may move the order (to Invoiced in some environments). Read it again
		// until this environment has shown what it does.
		if converted && s.convertMoves.Load() != convertKeepsState {
			before := cur
			if cur, err = s.readOrder(ctx, orderID); err != nil {
				return outcome{}, fmt.Errorf("order %d: %w", o.ID, err)
			}
			if cur.statecode == before.statecode {
				s.convertMoves.CompareAndSwap(convertUnknown, convertKeepsState)
			} else {
				s.convertMoves.Store(convertMovesState)
			}
		}
	}

	// Step 3: fulfil or cancel; Fulfilled and Canceled are final. cur was read in this
	// attempt, so an earlier, interrupted attempt that already closed the order is seen.
	if o.OrderStatus == nop.OrderStatusComplete || o.OrderStatus == nop.OrderStatusCancelled || cur.final() {
		next, c, err := s.close(ctx, o, orderID, cur)
		if err != nil {
			return outcome{}, err
		}
		if c != "" {
			p.conflicts = append(p.conflicts, c)
		}
		cur = next
	}
	return p.result(cur), nil
}

// result is the outcome once every step is done; cur is the salesorder's state now.
func (p *orderPlan) result(cur salesOrderState) outcome {
	rec := p.rec
	rec.Extra[extraOrderState] = cur.name()
	out := p.out
	if p.keptPaid {
		// Deleted in the store: what Dynamics 365 holds stays as it is, and differences
		// from the deleted order are no longer anything to resolve.
		delete(rec.Extra, extraConflict)
		out.status, out.reason = state.Skipped, reasonPaidNotDeletable
		return out
	}
	if len(p.conflicts) > 0 {
		// The admin must look at it: the order stays Failed (not transient, so no retries)
		// until a later event matches what Dynamics 365 holds.
		msg := fmt.Sprintf("%s (%s): %s", reasonOrderClosed, cur.name(), strings.Join(p.conflicts, "; "))
		rec.Extra[extraConflict] = msg
		out.status = state.Failed
		out.reason = msg
		return out
	}
	delete(rec.Extra, extraConflict)
	out.reason = ordJoin("; ", p.note, rec.Extra[extraWriteIn], rec.Extra[extraInvoiceStale])
	return out
}

// closedOrderDiffers compares a closed salesorder with the order, for when the state no
// longer says what was written: its amounts (totalamount, freightamount, discountamount,
// at the currency's precision) and its number of lines, what a change to items or
// amounts moves. Text columns are not compared: a refund's note never reaches a closed
// order, an admin may have edited an address before closing it, and their wording may be
// an earlier release's; each would make an unchanged order a conflict. It returns what
// differs ("" for nothing).
func (s *orderSyncer) closedOrderDiffers(ctx context.Context, o *nop.Order, orderID string, sh *shared) (string, error) {
	p := sh.precision()
	amts := orderTotals(o, p)
	want := []struct {
		col string
		v   nop.Money
	}{{"totalamount", amts.Total}, {"freightamount", amts.Freight}, {"discountamount", amts.Discount}}
	got, err := s.dv.Retrieve(ctx, setSalesOrders, orderID, "totalamount", "freightamount", "discountamount")
	if err != nil {
		return "", fmt.Errorf("read salesorder %s: %w", orderID, err)
	}
	tolerance := math.Pow10(-p.amount) / 2 // less than half the currency's last digit
	var why []string
	for _, w := range want {
		wf, _ := strconv.ParseFloat(w.v.StringFixed(p.amount), 64)
		gf, ok := numberOf(got[w.col])
		if !ok || math.Abs(gf-wf) > tolerance {
			why = append(why, fmt.Sprintf("%s %v in Dynamics 365, %s from the store", w.col, got[w.col], w.v.StringFixed(p.amount)))
		}
	}
	lines := 0
	err = s.dv.Query(ctx, setSalesOrderDetails, dataverse.Query{
		Select: []string{"salesorderdetailid"},
		Filter: "_salesorderid_value eq " + orderID,
	}, func(dataverse.Record) error { lines++; return nil })
	if err != nil {
		return "", fmt.Errorf("list lines of salesorder %s: %w", orderID, err)
	}
	wantLines := len(o.Items)
	if amts.Fee != nil {
		wantLines++
	}
	if lines != wantLines {
		why = append(why, fmt.Sprintf("%d lines in Dynamics 365, %d from the store", lines, wantLines))
	}
	return strings.Join(why, "; "), nil
}

// readOrder reads the salesorder's state; a missing order is not an error.
func (s *orderSyncer) readOrder(ctx context.Context, orderID string) (salesOrderState, error) {
	r, err := s.dv.Retrieve(ctx, setSalesOrders, orderID, "statecode", "statuscode")
	if dataverse.IsNotFound(err) {
		return salesOrderState{}, nil
	}
	if err != nil {
		return salesOrderState{}, fmt.Errorf("read salesorder %s: %w", orderID, err)
	}
	return salesOrderState{exists: true, statecode: intField(r, "statecode"), statuscode: intField(r, "statuscode")}, nil
}

// refResolver resolves the contacts and products orders point at, once per key: orders of
// one chunk sharing a customer or product wait for the first to create it instead of
// racing it.
type refResolver struct {
	s     *orderSyncer
	mu    sync.Mutex
	calls map[string]*refCall
	// known: Dataverse ids read ahead from state for a chunk ("contact/<store>/<id>",
	// "product/<store>/<id>"); what is not in it is resolved as for a single order.
	known map[string]string
	// customersRead: readAhead read the state of every customer the chunk points at, so
	// a customer missing from known has no contact the state names.
	customersRead bool
}

type refCall struct {
	once sync.Once
	id   string
	err  error
}

func newRefResolver(s *orderSyncer) *refResolver {
	return &refResolver{s: s, calls: map[string]*refCall{}}
}

func (r *refResolver) do(key string, fn func() (string, error)) (string, error) {
	r.mu.Lock()
	c := r.calls[key]
	if c == nil {
		c = &refCall{}
		r.calls[key] = c
	}
	id := r.known[key]
	r.mu.Unlock()
	c.once.Do(func() {
		if id != "" {
			c.id = id
			return
		}
		c.id, c.err = fn()
	})
	return c.id, c.err
}

// readAhead reads the state of the customers and products a chunk's orders point at with
// one GetMany each: those the app has written already resolve without a state read of
// their own (ensureContact and ensureProduct return a synced record's row as is).
func (r *refResolver) readAhead(ctx context.Context, evs []*nop.Event) {
	type ref struct {
		entity state.Entity
		kind   string
		ids    map[string][]int // nop id → stores
	}
	refs := []*ref{{entity: state.Customer, kind: "contact", ids: map[string][]int{}}, {entity: state.Product, kind: "product", ids: map[string][]int{}}}
	for _, ev := range evs {
		o := ev.Order
		if o == nil || o.Deleted {
			continue
		}
		id := strconv.Itoa(o.Customer.ID)
		refs[0].ids[id] = append(refs[0].ids[id], ev.StoreID)
		for _, it := range o.Items {
			id := strconv.Itoa(it.Product.ID)
			refs[1].ids[id] = append(refs[1].ids[id], ev.StoreID)
		}
	}
	known := map[string]string{}
	customersRead := true
	var mu sync.Mutex
	var wg sync.WaitGroup
	for _, rf := range refs {
		if len(rf.ids) == 0 {
			continue
		}
		if rf.entity == state.Customer {
			customersRead = false
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			ids := make([]string, 0, len(rf.ids))
			for id := range rf.ids {
				ids = append(ids, id)
			}
			got, err := r.s.st.GetMany(ctx, rf.entity, ids)
			if err != nil {
				r.s.log.Warn("reading the state an order chunk points at; reading it one by one", "entity", rf.entity, "error", err)
				return
			}
			mu.Lock()
			defer mu.Unlock()
			if rf.entity == state.Customer {
				customersRead = true
			}
			for id, rec := range got {
				row := rec.DataverseID
				if rf.entity == state.Customer {
					row = liveContact(rec) // ensureContact writes a deleted one again
				}
				if row == "" {
					continue
				}
				for _, store := range rf.ids[id] {
					known[fmt.Sprintf("%s/%d/%s", rf.kind, store, id)] = row
				}
			}
		}()
	}
	wg.Wait()
	r.mu.Lock()
	r.known, r.customersRead = known, customersRead
	r.mu.Unlock()
}

// guests returns the guest customers of a chunk's orders whose contact the state does
// not name: those ensureContact gives a contact from the billing address. None when
// readAhead could not read the customers' state (a customer whose contact the state
// names keeps it; ensureContact reads it one by one).
func (r *refResolver) guests(evs []*nop.Event) []guestRef {
	r.mu.Lock()
	defer r.mu.Unlock()
	if !r.customersRead {
		return nil
	}
	var out []guestRef
	for _, ev := range evs {
		o := ev.Order
		if o == nil || o.Deleted || o.Customer.Deleted || skipReason(&o.Customer) == "" {
			continue
		}
		if r.known[fmt.Sprintf("contact/%d/%d", ev.StoreID, o.Customer.ID)] != "" {
			continue
		}
		out = append(out, guestRef{storeID: ev.StoreID, c: &o.Customer, billing: &o.BillingAddress})
	}
	return out
}

func (r *refResolver) contact(ctx context.Context, storeID int, o *nop.Order) (string, error) {
	return r.do(fmt.Sprintf("contact/%d/%d", storeID, o.Customer.ID), func() (string, error) {
		return r.s.customers.ensureContact(ctx, storeID, &o.Customer, &o.BillingAddress)
	})
}

func (r *refResolver) product(ctx context.Context, storeID int, p nop.ItemProduct) (string, error) {
	return r.do(fmt.Sprintf("product/%d/%d", storeID, p.ID), func() (string, error) {
		return r.s.products.ensureProduct(ctx, storeID, p)
	})
}

// prepare resolves the contact and products, creating them when the app has not synced
// them yet.
func (s *orderSyncer) prepare(ctx context.Context, refs *refResolver, ev *nop.Event, sh *shared) (orderRefs, error) {
	o := ev.Order
	contactID, err := refs.contact(ctx, ev.StoreID, o)
	if err != nil {
		return orderRefs{}, fmt.Errorf("order %d: customer %d: %w", o.ID, o.Customer.ID, err)
	}
	r := orderRefs{ContactID: contactID, ProductIDs: map[int]string{}, Shared: sh}
	for _, it := range o.Items {
		if _, ok := r.ProductIDs[it.Product.ID]; ok {
			continue
		}
		pid, err := refs.product(ctx, ev.StoreID, it.Product)
		if err != nil {
			return orderRefs{}, fmt.Errorf("order %d: product %d: %w", o.ID, it.Product.ID, err)
		}
		r.ProductIDs[it.Product.ID] = pid
	}
	return r, nil
}

// retryWithWriteIns handles a header-and-lines write Dynamics 365 refused: when some of
// the order's products are not Active (Draft, Retired: Dynamics 365 refuses them on order
// lines) or are product families (a grouped product turned simple stays one, without a
// price list item: keepFamily), their lines become write-in products and the write is
// sent once more. It returns the original error when every product is an Active product.
func (s *orderSyncer) retryWithWriteIns(ctx context.Context, p *orderPlan, writeErr error) error {
	if p.write == nil || isTransient(writeErr) {
		return p.writeFailed(writeErr)
	}
	ids := map[string]int{}
	var list []string
	for nopID, pid := range p.refs.ProductIDs {
		ids[strings.ToLower(pid)] = nopID
		list = append(list, pid)
	}
	slices.Sort(list)
	inactive := map[int]bool{}
	found := map[int]bool{}
	for _, filter := range orFilters(eqConds("productid", list), maxFilterBytes, nil) {
		err := s.dv.Query(ctx, "products", dataverse.Query{
			Select: []string{"productid", "statecode", "productstructure"},
			Filter: filter,
		}, func(r dataverse.Record) error {
			id, _ := r["productid"].(string)
			found[ids[strings.ToLower(id)]] = true
			if intField(r, "statecode") != 0 || intField(r, "productstructure") == productStructureFamily {
				inactive[ids[strings.ToLower(id)]] = true
			}
			return nil
		})
		if err != nil {
			return p.writeFailed(writeErr)
		}
	}
	// A product deleted meanwhile (DELETE_POLICY=delete, its delete applied before this
	// older order): its lines are written in, as for a retired one.
	for nopID := range p.refs.ProductIDs {
		if !found[nopID] {
			inactive[nopID] = true
		}
	}
	if len(inactive) == 0 {
		return p.writeFailed(writeErr)
	}
	refs := p.refs
	refs.WriteIn = inactive
	w, err := mapOrder(p.ev.StoreID, p.ev.Order, p.orderID, refs)
	if err != nil {
		return permanent(err)
	}
	ops := orderOps(w, p.stale)
	if _, err := s.dv.Batch(ctx, dataverse.ChangeSet(ops...)); err != nil {
		return p.writeFailed(err)
	}
	p.write, p.ops = w, ops
	var names []string
	seen := map[int]bool{}
	for _, it := range p.ev.Order.Items {
		if inactive[it.Product.ID] && !seen[it.Product.ID] {
			seen[it.Product.ID] = true
			names = append(names, writeInName(it.Product))
		}
	}
	p.writeInNote = "products not active in Dynamics 365 (or product families) written as write-in lines: " + strings.Join(names, ", ")
	p.written()
	return nil
}

// staleLines lists the order's lines in Dynamics 365 that the order no longer has.
func (s *orderSyncer) staleLines(ctx context.Context, w *orderWrite) ([]string, error) {
	keep := map[string]bool{}
	for _, l := range w.Lines {
		keep[l.ID] = true
	}
	var stale []string
	err := s.dv.Query(ctx, setSalesOrderDetails, dataverse.Query{
		Select: []string{"salesorderdetailid"},
		Filter: "_salesorderid_value eq " + w.OrderID,
	}, func(r dataverse.Record) error {
		if id, _ := r["salesorderdetailid"].(string); id != "" && !keep[strings.ToLower(id)] {
			stale = append(stale, id)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("list lines of salesorder %s: %w", w.OrderID, err)
	}
	slices.Sort(stale)
	return stale, nil
}

// orderOps is the change set of one order: upsert the header, upsert each line, delete
// lines that disappeared.
func orderOps(w *orderWrite, stale []string) []dataverse.Op {
	ops := []dataverse.Op{{Method: "PATCH", Path: setSalesOrders + "(" + w.OrderID + ")", Body: w.Header}}
	for _, l := range w.Lines {
		ops = append(ops, dataverse.Op{Method: "PATCH", Path: setSalesOrderDetails + "(" + l.ID + ")", Body: l.Record})
	}
	for _, id := range stale {
		ops = append(ops, dataverse.Op{Method: "DELETE", Path: setSalesOrderDetails + "(" + id + ")"})
	}
	return ops
}

// Close actions (step 3).
const (
	actionFulfil = "FulfillSalesOrder"
	actionCancel = "CancelSalesOrder"
)

// closeAction decides step 3 from the salesorder's current state: the action to call
// ("" for none), the state after it, and a conflict description when the store's status
// cannot be applied.
func closeAction(o *nop.Order, cur salesOrderState) (action string, next salesOrderState, conflict string) {
	switch {
	case o.OrderStatus == nop.OrderStatusComplete && cur.statecode == orderStateFulfilled,
		o.OrderStatus == nop.OrderStatusCancelled && cur.statecode == orderStateCanceled:
		return "", cur, "" // done
	case cur.final():
		return "", cur, fmt.Sprintf("nopCommerce order status %s not applied", orderStatusName(o.OrderStatus))
	case cur.statecode == orderStateInvoiced && o.OrderStatus == nop.OrderStatusComplete:
		// Environments where converting to an invoice moves the order to Invoiced do not
		// fulfil it afterwards: Invoiced is where a completed, paid order ends there.
		return "", cur, ""
	case cur.statecode == orderStateInvoiced:
		return "", cur, fmt.Sprintf("nopCommerce order status %s not applied", orderStatusName(o.OrderStatus))
	case o.OrderStatus == nop.OrderStatusComplete:
		return actionFulfil, salesOrderState{exists: true, statecode: orderStateFulfilled, statuscode: orderStatusComplete}, ""
	case o.OrderStatus == nop.OrderStatusCancelled:
		return actionCancel, salesOrderState{exists: true, statecode: orderStateCanceled, statuscode: orderStatusNoMoney}, ""
	}
	return "", cur, ""
}

// close fulfils or cancels the salesorder as the store says, when not yet done. It
// returns the state after it, and a conflict description when the store's status cannot
// be applied.
func (s *orderSyncer) close(ctx context.Context, o *nop.Order, orderID string, cur salesOrderState) (salesOrderState, string, error) {
	action, next, conflict := closeAction(o, cur)
	var err error
	switch action {
	case actionFulfil:
		err = s.dv.FulfillSalesOrder(ctx, orderID, orderStatusComplete)
	case actionCancel:
		err = s.dv.CancelSalesOrder(ctx, orderID, orderStatusNoMoney)
	}
	if err != nil {
		return cur, "", fmt.Errorf("order %d: %s %s: %w", o.ID, action, orderID, err)
	}
	return next, conflict, nil
}

// closeOp is the close action as a $batch request (the body the client's
// FulfillSalesOrder/CancelSalesOrder send).
func closeOp(action, orderID string) dataverse.Op {
	status, subject := orderStatusComplete, "Order fulfilled"
	if action == actionCancel {
		status, subject = orderStatusNoMoney, "Order canceled"
	}
	return dataverse.Op{Method: "POST", Path: action, Body: dataverse.Record{
		"OrderClose": dataverse.Record{
			"@odata.type":             "Microsoft.Dynamics.CRM.orderclose",
			"subject":                 subject,
			"salesorderid@odata.bind": bindTo(setSalesOrders, orderID),
		},
		"Status": status,
	}}
}

func orderStatusName(s int) string {
	switch s {
	case nop.OrderStatusPending:
		return "Pending"
	case nop.OrderStatusProcessing:
		return "Processing"
	case nop.OrderStatusComplete:
		return "Complete"
	case nop.OrderStatusCancelled:
		return "Cancelled"
	}
	return strconv.Itoa(s)
}

// deleteOrder deletes an unpaid salesorder; a paid one (it has an invoice) stays.
func (s *orderSyncer) deleteOrder(ctx context.Context, ev *nop.Event, rec *state.Record, orderID string, out outcome) (outcome, error) {
	inv, err := s.findInvoice(ctx, orderID)
	if err != nil {
		return outcome{}, fmt.Errorf("order %d: %w", ev.Order.ID, err)
	}
	if inv != "" {
		rec.Extra[extraInvoiceID] = inv
		out.status = state.Skipped
		out.reason = reasonPaidNotDeletable
		return out, nil
	}
	err = s.dv.Delete(ctx, setSalesOrders, orderID)
	if err != nil && !dataverse.IsNotFound(err) {
		return outcome{}, fmt.Errorf("order %d: delete salesorder %s: %w", ev.Order.ID, orderID, err)
	}
	out.reason = "deleted in nopCommerce; salesorder deleted"
	if err != nil && rec.Extra[extraOrderState] == "" {
		out.reason = "deleted in nopCommerce before it reached Dynamics 365"
	}
	rec.Extra[extraOrderState] = "deleted"
	delete(rec.Extra, extraOrderContent)
	delete(rec.Extra, extraConflict)
	return out, nil
}

// orderContentDigest identifies what the header and lines carry, apart from the status
// and payment state: a closed order whose digest changes has a conflict.
func orderContentDigest(o *nop.Order) string {
	c := struct {
		Number        string
		Customer      int
		Email         *string
		Currency      string
		Amounts       [7]nop.Money
		Payment, Ship *string
		Billing       nop.Address
		Shipping      *nop.Address
		Items         []nop.OrderItem
	}{
		Number: o.CustomOrderNumber, Customer: o.Customer.ID, Email: o.BillingAddress.Email, Currency: o.CurrencyCode,
		Amounts: [7]nop.Money{o.OrderSubtotalInclTax, o.OrderSubTotalDiscountInclTax, o.OrderShippingInclTax,
			o.PaymentMethodAdditionalFeeInclTax, o.OrderDiscount, o.OrderTotal, o.OrderTax},
		Payment: o.PaymentMethodSystemName, Ship: o.ShippingMethod,
		Billing: o.BillingAddress, Shipping: o.ShippingAddress, Items: o.Items,
	}
	// Product names change in the catalogue, not in the order: leave them out.
	c.Items = slices.Clone(c.Items)
	for i := range c.Items {
		c.Items[i].Product = nop.ItemProduct{ID: c.Items[i].Product.ID}
	}
	b, _ := json.Marshal(c) // plain data: cannot fail
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:16])
}

// orderHash identifies the full state an event carries (for the engine's unchanged-data check).
func orderHash(ev *nop.Event) string {
	sum := sha256.Sum256(ev.Data)
	return hex.EncodeToString(sum[:16])
}

// numberOf reads a number Dataverse returned (nil as 0).
func numberOf(v any) (float64, bool) {
	switch n := v.(type) {
	case float64:
		return n, true
	case json.Number:
		f, err := n.Float64()
		return f, err == nil
	case nil:
		return 0, true
	}
	return 0, false
}

// intField reads an integer column of a retrieved row (JSON numbers decode as float64 or
// json.Number depending on the decoder).
func intField(r dataverse.Record, col string) int {
	switch v := r[col].(type) {
	case float64:
		return int(v)
	case int:
		return v
	case int64:
		return int(v)
	case json.Number:
		n, _ := v.Int64()
		return int(n)
	}
	return -1
}
