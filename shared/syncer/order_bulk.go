package syncer

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"strings"
	"sync"

	"github.com/nopsync/nopsync/shared/dataverse"
	"github.com/nopsync/nopsync/shared/nop"
	"github.com/nopsync/nopsync/shared/state"
)

// maxOrdersPerBatch bounds the orders packed into one $batch. Dataverse runs a batch's
// requests one after another, so a batch's time grows with its size (each order is a
// header and its lines, ~6 operations: 50 orders stay far inside the 2-minute request
// timeout); the per-user request limit, on the other hand, counts a batch once, and an
// import's chunks already keep several batches in flight (Microsoft Learn: Dataverse
// execute-batch-operations-using-web-api, api-limits).
const maxOrdersPerBatch = 50

// ordersPerBatch is how many orders of opsEach operations one $batch carries: at most
// maxOrdersPerBatch, and no more operations than rows per write request (the client's
// RowsPerRequest, DATAVERSE_BULK_SIZE).
func ordersPerBatch(rows, opsEach int) int {
	return max(1, min(maxOrdersPerBatch, rows/max(1, opsEach)))
}

var _ bulkSyncer = (*orderSyncer)(nil)

// syncMany is the bulk path for import chunks: every order is planned in parallel, the
// header-and-lines writes are packed into $batch requests (each order its own change set,
// so one bad order never takes another down), then the invoice conversions, the invoices
// set to Paid together, and last per order the fulfil/cancel action.
func (s *orderSyncer) syncMany(ctx context.Context, evs []*nop.Event, recs []*state.Record) ([]outcome, []error) {
	outs := make([]outcome, len(evs))
	errs := make([]error, len(evs))
	plans := make([]*orderPlan, len(evs))

	refs := newRefResolver(s)
	// Orders the state has no trace of (a first import) are not read: creating their
	// headers with CreateMultiple tells whether one exists (see headersFirst), which saves
	// the chunk a query against the per-user request limit.
	var ids, unseenIDs []string
	unseen := make([]bool, len(evs))
	for i, ev := range evs {
		if ev.Order != nil && !ev.Order.Deleted {
			id := recs[i].DataverseID
			if id == "" {
				id = salesOrderID(ev.StoreID, ev.Order.ID)
			}
			if unseenOrder(recs[i]) {
				unseen[i] = true
				unseenIDs = append(unseenIDs, id)
				continue
			}
			ids = append(ids, id)
		}
	}
	if len(unseenIDs) < minBulk {
		// Too few for a bulk request (bulkGroup writes them one by one, as upserts).
		ids, unseenIDs = append(ids, unseenIDs...), nil
		clear(unseen)
	}
	var pre *orderPrefetch
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		refs.readAhead(ctx, evs)
	}()
	pre = s.prefetch(ctx, ids)
	pre.absent(unseenIDs)
	wg.Wait()
	s.customers.resolveGuests(ctx, refs.guests(evs))
	s.parallelN(ctx, len(evs), func(ctx context.Context, i int) {
		plans[i], errs[i] = s.plan(ctx, refs, pre, evs[i], recs[i])
		if errs[i] == nil && plans[i].done {
			outs[i] = plans[i].out
		}
	})

	var pending, fresh []int // plans with a write: to existing salesorders, to new ones
	for i, p := range plans {
		if errs[i] == nil && p != nil && !p.done && p.write != nil {
			if !p.cur.exists && len(p.stale) == 0 {
				fresh = append(fresh, i)
			} else {
				pending = append(pending, i)
			}
		}
	}
	fresh, more, headed := s.headersFirst(ctx, refs, plans, outs, unseen, fresh, errs)
	pending = append(pending, more...)
	s.createMany(ctx, plans, fresh, headed, errs)
	// As few batches as the bounds allow, evenly filled.
	total := 0
	for _, i := range pending {
		total += len(plans[i].ops)
	}
	// A batch's operations are rows written, sized like the bulk requests
	// (DATAVERSE_BULK_SIZE): the lines run the pricing plug-ins.
	maxOps := min(dataverse.MaxBatchRequests, max(1, s.dv.RowsPerRequest("salesorderdetail")))
	nb := max((len(pending)+maxOrdersPerBatch-1)/maxOrdersPerBatch, (total+maxOps-1)/maxOps)
	per := (len(pending) + max(nb, 1) - 1) / max(nb, 1)
	var groups [][]int
	for len(pending) > 0 {
		g, ops := []int{}, 0
		for len(pending) > 0 && len(g) < per && ops+len(plans[pending[0]].ops) <= maxOps {
			ops += len(plans[pending[0]].ops)
			g = append(g, pending[0])
			pending = pending[1:]
		}
		if len(g) == 0 { // one order alone above the limit: let Dataverse say so
			g, pending = pending[:1], pending[1:]
		}
		groups = append(groups, g)
	}
	s.parallelN(ctx, len(groups), func(ctx context.Context, gi int) {
		s.writeGroup(ctx, plans, groups[gi], errs)
	})
	// Orders Dynamics 365 refused: once more with write-in lines for inactive products.
	s.parallelN(ctx, len(plans), func(ctx context.Context, i int) {
		if p := plans[i]; errs[i] != nil && p != nil && p.write != nil && p.writeErr != nil {
			errs[i] = s.retryWithWriteIns(ctx, p, p.writeErr)
		}
	})

	s.finishMany(ctx, plans, outs, errs)
	return outs, errs
}

// createMany writes new salesorders (an import's orders) with CreateMultiple: the headers
// of every order in one request, then all their lines in another. Written one change set
// per order, each header and line is an operation of its own, charged on top of its
// rows; in bulk they are not. The price: an order is no longer one transaction while it
// is written. A refused header or line is isolated by halving (bulkGroup) and its order is
// written alone as one change set (upserts: what bulk wrote of it is overwritten), with
// write-in lines when a product is not active; until then its state says failed, and a
// transient failure leaves it to the next delivery, which finds the header and takes the
// change-set path; a permanent one removes the header bulk wrote. Tables without the bulk
// messages fall back to change sets.
func (s *orderSyncer) createMany(ctx context.Context, plans []*orderPlan, idx []int, headed map[int]bool, errs []error) {
	if len(idx) == 0 {
		return
	}
	// alone writes an order as one change set, once however many of its rows fall back.
	type aloneWrite struct {
		once sync.Once
		ran  bool
		err  error
	}
	writers := func(idx []int) map[int]*aloneWrite {
		m := make(map[int]*aloneWrite, len(idx))
		for _, i := range idx {
			m[i] = &aloneWrite{}
		}
		return m
	}
	alone := func(ctx context.Context, w *aloneWrite, i int) error {
		w.once.Do(func() {
			w.ran = true
			p := plans[i]
			if _, err := s.dv.Batch(ctx, dataverse.ChangeSet(p.ops...)); err != nil {
				p.writeErr = err
				w.err = s.retryWithWriteIns(ctx, p, err)
				return
			}
			p.written()
		})
		return w.err
	}

	first := writers(idx)
	headers := make([]bulkRow, 0, len(idx))
	for _, i := range idx {
		if !headed[i] {
			headers = append(headers, bulkRow{i: i, id: plans[i].orderID, rec: plans[i].write.Header})
		}
	}
	(&bulkGroup{d: s.deps, create: true, set: setSalesOrders, logical: "salesorder", pk: "salesorderid",
		single: func(ctx context.Context, r bulkRow) error { return alone(ctx, first[r.i], r.i) }}).write(ctx, headers, errs)

	// The lines of the orders whose header went in bulk.
	var created, owner []int // owner: the plan of each line row
	var lines []bulkRow
	for _, i := range idx {
		switch {
		case first[i].ran: // written alone, or failed so (errs[i] says how)
		case errs[i] != nil:
			errs[i] = plans[i].writeFailed(errs[i])
		default:
			created = append(created, i)
			for _, l := range plans[i].write.Lines {
				lines = append(lines, bulkRow{i: len(owner), id: l.ID, rec: l.Record})
				owner = append(owner, i)
			}
		}
	}
	second := writers(created)
	lineErrs := make([]error, len(lines))
	(&bulkGroup{d: s.deps, create: true, set: setSalesOrderDetails, logical: "salesorderdetail", pk: "salesorderdetailid",
		single: func(ctx context.Context, r bulkRow) error { return alone(ctx, second[owner[r.i]], owner[r.i]) }}).write(ctx, lines, lineErrs)
	for k, err := range lineErrs {
		if i := owner[k]; err != nil && errs[i] == nil {
			if !second[i].ran {
				err = plans[i].writeFailed(err) // a transient failure of the bulk request
			}
			errs[i] = err
		}
	}
	for _, i := range created {
		switch {
		case errs[i] == nil && !second[i].ran:
			plans[i].written()
		case errs[i] != nil && !isTransient(errs[i]):
			// Refused for good, even alone: take back the header bulk created (its lines
			// go with it), so the order is not left half-written in Dynamics 365. Alone,
			// it was tried with write-in lines already: not again after the delete.
			if second[i].ran {
				plans[i].writeErr = nil
			}
			if err := s.dv.Delete(ctx, setSalesOrders, plans[i].orderID); err != nil && !dataverse.IsNotFound(err) {
				s.log.Warn("removing the header of a refused order", "order", plans[i].ev.Order.ID, "error", err)
				// Said where the admin looks: the order is not absent from Dynamics 365.
				errs[i] = fmt.Errorf("%w; its salesorder %s stays in Dynamics 365 with part of its lines, as removing it failed (%v): delete it there, or send the order again once the cause is fixed",
					errs[i], plans[i].orderID, err)
			}
		}
	}
}

// unseenOrder: the state has no trace of the order being written (no Dataverse id, no
// attempt, no step recorded), as in a first import. Its salesorder may still exist (a
// wiped state table, a write whose result was never recorded): headersFirst finds out.
func unseenOrder(rec *state.Record) bool {
	return rec.DataverseID == "" && rec.SyncedAt.IsZero() && rec.Attempts == 0 && len(rec.Extra) == 0 && rec.DataHash == ""
}

// headersFirst creates the headers of the fresh orders that were planned without being
// read (unseen) with CreateMultiple, which creates every row of a request or none: a
// request that went through shows none of its salesorders existed, so the plans hold.
// The orders of a refused request (one existed: DuplicateRecord 0x80040237, "A record
// with matching key values already exists", Microsoft Learn: Dataverse
// reference/web-service-error-codes; or a row Dataverse refuses) are read as the prefetch reads them and
// planned again, then written like any other order (by createMany, or as change sets
// when they exist); a transient failure is theirs, as when createMany writes headers.
// It returns the fresh orders (headed: those whose header is written) and the orders
// that turned out to exist.
func (s *orderSyncer) headersFirst(ctx context.Context, refs *refResolver, plans []*orderPlan, outs []outcome, unseen []bool,
	fresh []int, errs []error) (stillFresh, exist []int, headed map[int]bool) {
	headed = map[int]bool{}
	var u []int
	for _, i := range fresh {
		if unseen[i] {
			u = append(u, i)
		} else {
			stillFresh = append(stillFresh, i)
		}
	}
	if len(u) == 0 {
		return stillFresh, nil, headed
	}
	recs := make([]dataverse.Record, len(u))
	for k, i := range u {
		rec := make(dataverse.Record, len(plans[i].write.Header)+1)
		maps.Copy(rec, plans[i].write.Header)
		rec["salesorderid"] = plans[i].orderID
		recs[k] = rec
	}
	_, err := s.dv.CreateMultiple(ctx, setSalesOrders, "salesorder", recs)
	failed := dataverse.RowErrors(err, len(u))
	var doubt []int
	var ids []string
	for k, i := range u {
		switch {
		case failed[k] == nil:
			headed[i] = true
			stillFresh = append(stillFresh, i)
		case isTransient(failed[k]):
			errs[i] = plans[i].writeFailed(failed[k])
		default:
			doubt = append(doubt, i)
			ids = append(ids, plans[i].orderID)
		}
	}
	if len(doubt) == 0 {
		return stillFresh, nil, headed
	}
	pre := s.prefetch(ctx, ids)
	s.parallelN(ctx, len(doubt), func(ctx context.Context, k int) {
		i := doubt[k]
		p, err := s.plan(ctx, refs, pre, plans[i].ev, plans[i].rec)
		plans[i], errs[i] = p, err
		if err == nil && p.done {
			outs[i] = p.out
		}
	})
	for _, i := range doubt {
		p := plans[i]
		if errs[i] != nil || p == nil || p.done || p.write == nil {
			continue
		}
		if !p.cur.exists && len(p.stale) == 0 {
			stillFresh = append(stillFresh, i)
		} else {
			exist = append(exist, i)
		}
	}
	return stillFresh, exist, headed
}

// finishMany runs the steps after header and lines for a chunk: the invoices to create in
// $batch requests, then set to Paid with UpdateMultiple (payMany), then per order one
// change set with the close action (and "invoice Paid" where payMany could not set it).
// Orders the prefetch did not cover take the one-by-one path.
func (s *orderSyncer) finishMany(ctx context.Context, plans []*orderPlan, outs []outcome, errs []error) {
	var live, convert []int
	for i, p := range plans {
		if errs[i] != nil || p == nil || p.done {
			continue
		}
		o := p.ev.Order
		if !orderPaid(o) || (p.rec.Extra[extraInvoiceID] != "" && p.rec.Extra[extraInvoicePaid] == "true") {
			p.invoiceDone = true
			live = append(live, i)
			continue
		}
		inv, ok := p.pre.invoice(p.orderID)
		if !ok {
			outs[i], errs[i] = s.finish(ctx, p)
			continue
		}
		if p.cur.exists && p.cur.statecode == orderStateCanceled && inv.id == "" {
			// As in finish: no invoice for a canceled order; one made before the
			// cancellation is set to Paid below like any other.
			if p.rec.Extra[extraInvoiceID] == "" {
				p.conflicts = append(p.conflicts, conflictPaidCanceled)
			}
			p.invoiceDone = true
			live = append(live, i)
			continue
		}
		p.invoiceID, p.invoicePaid = inv.id, inv.paid
		if inv.id == "" {
			convert = append(convert, i)
		}
		live = append(live, i)
	}

	// Invoices: ConvertSalesOrderToInvoice for each order without one, in $batch requests.
	s.convertMany(ctx, plans, convert, errs)
	var converted []string
	for _, i := range convert {
		if errs[i] == nil {
			converted = append(converted, plans[i].orderID)
		}
	}
	if len(converted) > 0 && s.convertMoves.Load() != convertKeepsState {
		// Learn (or follow) what converting does to an order's state in this environment.
		pre := s.prefetch(ctx, converted)
		for _, i := range convert {
			p := plans[i]
			if errs[i] != nil {
				continue
			}
			cur, ok := pre.order(p.orderID)
			if !ok {
				var err error
				if cur, err = s.readOrder(ctx, p.orderID); err != nil {
					errs[i] = fmt.Errorf("order %d: %w", p.ev.Order.ID, err)
					continue
				}
			}
			if cur.statecode == p.cur.statecode {
				s.convertMoves.CompareAndSwap(convertUnknown, convertKeepsState)
			} else {
				s.convertMoves.Store(convertMovesState)
			}
			p.cur = cur
		}
	}

	// The new invoices (and any found unpaid) set to Paid together.
	s.payMany(ctx, plans, live, errs)

	// Per order one change set: invoice Paid (where payMany could not), then fulfil or cancel.
	var sets []int
	for _, i := range live {
		p := plans[i]
		if errs[i] != nil {
			continue
		}
		var ops []dataverse.Op
		if !p.invoiceDone && !p.invoicePaid {
			ops = append(ops, dataverse.Op{Method: "PATCH", Path: setInvoices + "(" + p.invoiceID + ")",
				Body:   dataverse.Record{"statecode": invoiceStatePaid, "statuscode": invoiceStatusComplete},
				Header: map[string]string{"If-Match": "*"}})
		}
		o := p.ev.Order
		p.next = p.cur
		if o.OrderStatus == nop.OrderStatusComplete || o.OrderStatus == nop.OrderStatusCancelled || p.cur.final() {
			action, next, conflict := closeAction(o, p.cur)
			if conflict != "" {
				p.conflicts = append(p.conflicts, conflict)
			}
			if action != "" {
				ops = append(ops, closeOp(action, p.orderID))
			}
			p.next = next
		}
		p.ops = ops
		if len(ops) == 0 {
			p.closed()
			outs[i] = p.result(p.next)
			continue
		}
		sets = append(sets, i)
	}
	var groups [][]int
	perBatch := ordersPerBatch(s.dv.RowsPerRequest("salesorder"), 2) // invoice Paid, close
	nb := (len(sets) + perBatch - 1) / perBatch
	for start, per := 0, (len(sets)+max(nb, 1)-1)/max(nb, 1); start < len(sets); start += per {
		groups = append(groups, sets[start:min(start+per, len(sets))])
	}
	s.parallelN(ctx, len(groups), func(ctx context.Context, gi int) {
		failed := func(p *orderPlan, err error) error {
			return fmt.Errorf("order %d: set invoice paid / close salesorder %s: %w", p.ev.Order.ID, p.orderID, err)
		}
		// Not split after a failure as a whole: a close that ran can't run again (the
		// order is closed), so these orders fail (transient) and their redelivery reads
		// what happened.
		rest := s.sendChangeSets(ctx, plans, groups[gi], errs, (*orderPlan).closed, failed)
		for _, i := range rest.group {
			errs[i] = failed(plans[i], rest.err)
		}
	})
	for _, i := range sets {
		if errs[i] == nil {
			outs[i] = plans[i].result(plans[i].next)
		}
	}
}

// payMany sets the invoices of the orders at idx that are not yet Paid to Paid with
// UpdateMultiple, one request per RowsPerRequest invoices, where a PATCH per invoice would
// cost a request each. The invoice table lists the bulk messages; Update is how a row's
// statecode and statuscode are set (Learn: special-update-operation-behavior), and
// UpdateMultiple applies Update's logic to each row (Learn: bulk-operations), though no
// page names state changes in it. A chunk Dataverse refused (the message is atomic: none
// of it was written) leaves its invoices to the per-order change sets, which isolate the
// one at fault; a chunk whose outcome is unknown fails its orders transiently, and their
// redelivery reads whether the invoices are Paid.
func (s *orderSyncer) payMany(ctx context.Context, plans []*orderPlan, idx []int, errs []error) {
	var pay []int
	for _, i := range idx {
		if p := plans[i]; errs[i] == nil && !p.invoiceDone && !p.invoicePaid && p.invoiceID != "" {
			pay = append(pay, i)
		}
	}
	if len(pay) == 0 {
		return
	}
	recs := make([]dataverse.Record, len(pay))
	for k, i := range pay {
		recs[k] = dataverse.Record{"invoiceid": plans[i].invoiceID,
			"statecode": invoiceStatePaid, "statuscode": invoiceStatusComplete}
	}
	failed := dataverse.RowErrors(s.dv.UpdateMultiple(ctx, setInvoices, "invoice", recs), len(pay))
	var refused []string
	for k, i := range pay {
		p := plans[i]
		switch {
		case failed[k] == nil:
			p.invoicePaid = true
		case isTransient(failed[k]):
			errs[i] = fmt.Errorf("order %d: set invoice %s to paid: %w", p.ev.Order.ID, p.invoiceID, failed[k])
		default:
			refused = append(refused, p.orderID)
		}
	}
	if len(refused) == 0 {
		return
	}
	// A refusal can answer rows the client sent again after a lost answer or a 5xx (a bulk
	// request goes again in halves), whose invoices the first request had set Paid: read
	// them, so that only invoices still unpaid go to the per-order PATCH.
	pre := s.prefetch(ctx, refused)
	for k, i := range pay {
		p := plans[i]
		if failed[k] == nil || errs[i] != nil {
			continue
		}
		if inv, ok := pre.invoice(p.orderID); ok && inv.id == p.invoiceID && inv.paid {
			p.invoicePaid = true
		}
	}
}

// closed records that the invoice is Paid (when the order has one) after the last step.
func (p *orderPlan) closed() {
	if p.invoiceID != "" {
		p.rec.Extra[extraInvoiceID] = p.invoiceID
		p.rec.Extra[extraInvoicePaid] = "true"
	}
}

// convertMany creates the invoices of the orders at idx: ConvertSalesOrderToInvoice
// requests in $batch requests, each invoice recorded in state at once.
func (s *orderSyncer) convertMany(ctx context.Context, plans []*orderPlan, idx []int, errs []error) {
	var groups [][]int
	perBatch := ordersPerBatch(s.dv.RowsPerRequest("invoice"), 1)
	for start := 0; start < len(idx); start += perBatch {
		groups = append(groups, idx[start:min(start+perBatch, len(idx))])
	}
	s.parallelN(ctx, len(groups), func(ctx context.Context, gi int) {
		group := groups[gi]
		for len(group) > 0 {
			parts := make([]dataverse.BatchPart, len(group))
			for k, i := range group {
				parts[k] = dataverse.Op{Method: "POST", Path: "ConvertSalesOrderToInvoice",
					Body: dataverse.Record{"SalesOrderId": plans[i].orderID, "ColumnSet": invoiceIDOnly}}
			}
			res, err := s.dv.Batch(ctx, parts...)
			answered := len(group)
			var be *dataverse.BatchError
			switch {
			case err == nil:
			case errors.As(err, &be) && be.Part >= 1 && be.Part <= len(group):
				answered = be.Part - 1
				i := group[answered]
				errs[i] = fmt.Errorf("order %d: convert salesorder %s to invoice: %w", plans[i].ev.Order.ID, plans[i].orderID, err)
			default:
				// Unknown which were applied: each order finds out on its next attempt.
				for _, i := range group {
					errs[i] = fmt.Errorf("order %d: convert salesorder %s to invoice: %w", plans[i].ev.Order.ID, plans[i].orderID, err)
				}
				return
			}
			for k := 0; k < answered; k++ {
				i, p := group[k], plans[group[k]]
				id := ""
				if k < len(res) {
					id = invoiceIDFromResult(res[k])
				}
				if id == "" {
					errs[i] = transient(fmt.Errorf("order %d: ConvertSalesOrderToInvoice answered without an invoice id", p.ev.Order.ID))
					continue
				}
				p.invoiceID, p.invoicePaid = id, false
				p.rec.Extra[extraInvoiceID] = id
				if err := s.leases.renew(ctx, p.rec); err != nil {
					errs[i] = fmt.Errorf("order %d: record invoice %s: %w", p.ev.Order.ID, id, err)
				}
			}
			if err == nil {
				return
			}
			group = group[answered+1:]
		}
	})
}

// invoiceIDOnly is the ColumnSet of a conversion: the invoice id is all that is read back
// (every column would be read and returned otherwise).
var invoiceIDOnly = dataverse.Record{"AllColumns": false, "Columns": []string{"invoiceid"}}

// invoiceIDFromResult reads the invoice id ConvertSalesOrderToInvoice answered with.
func invoiceIDFromResult(r dataverse.BatchResult) string {
	var inv struct {
		InvoiceID string `json:"invoiceid"`
	}
	if len(r.Body) > 0 && r.Decode(&inv) == nil && inv.InvoiceID != "" {
		return strings.ToLower(inv.InvoiceID)
	}
	return strings.ToLower(r.EntityID)
}

// writeGroup sends the header-and-lines change sets of a group of orders.
func (s *orderSyncer) writeGroup(ctx context.Context, plans []*orderPlan, group []int, errs []error) {
	rest := s.sendChangeSets(ctx, plans, group, errs, (*orderPlan).written, func(p *orderPlan, err error) error {
		p.writeErr = err
		return p.writeFailed(err)
	})
	// The batch timed out or failed with a 5xx as a whole: its change sets are upserts, so
	// its halves are sent on their own (never the whole again at the same size).
	if len(rest.group) > 1 && dataverse.Splittable(ctx, rest.err) {
		mid := len(rest.group) / 2
		s.writeGroup(ctx, plans, rest.group[:mid], errs)
		s.writeGroup(ctx, plans, rest.group[mid:], errs)
		return
	}
	for _, i := range rest.group {
		plans[i].writeErr = rest.err
		errs[i] = plans[i].writeFailed(rest.err)
	}
}

// unsent is what a $batch that failed as a whole left: its orders, and why.
type unsent struct {
	group []int
	err   error
}

// sendChangeSets sends each plan's ops as its own change set, packed in one $batch.
// Dataverse stops a batch at the first failing change set: that order gets the error,
// those before it are done, and those after it are sent again in a new batch. A request
// that failed as a whole (nothing known applied) is returned for the caller to decide:
// failed (record) or split (writeGroup).
func (s *orderSyncer) sendChangeSets(ctx context.Context, plans []*orderPlan, group []int, errs []error,
	done func(*orderPlan), failed func(*orderPlan, error) error) unsent {
	for len(group) > 0 {
		parts := make([]dataverse.BatchPart, len(group))
		for k, i := range group {
			parts[k] = dataverse.ChangeSet(plans[i].ops...)
		}
		_, err := s.dv.Batch(ctx, parts...)
		if err == nil {
			for _, i := range group {
				done(plans[i])
			}
			return unsent{}
		}
		var be *dataverse.BatchError
		if !errors.As(err, &be) || be.ChangeSet < 1 || be.ChangeSet > len(group) {
			return unsent{group: group, err: err}
		}
		bad := be.ChangeSet - 1
		for _, i := range group[:bad] {
			done(plans[i])
		}
		errs[group[bad]] = failed(plans[group[bad]], err)
		group = group[bad+1:]
	}
	return unsent{}
}
