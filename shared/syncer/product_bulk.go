package syncer

import (
	"context"
	"errors"
	"strconv"
	"strings"

	"github.com/nopsync/nopsync/shared/dataverse"
	"github.com/nopsync/nopsync/shared/nop"
	"github.com/nopsync/nopsync/shared/state"
)

// productPrefetch holds rows looked up once for a whole chunk.
type productPrefetch struct {
	states   map[string]int              // product id → statecode, for the ids looked up
	byNumber map[string]dataverse.Record // lower(productnumber) → product
	families map[int]string              // store product id of a family → its row, decided in this chunk
}

// syncMany is the products' bulk path. Families go first (their children bind to them),
// then the other products. Per group: one look-up of the rows' state and of the product
// numbers, then CreateMultiple for new products and UpdateMultiple for Draft ones;
// products Dataverse keeps Active or Retired take the single path (revise, update,
// publish), as do deletes. Price list items of new products are created in bulk too;
// publishing and retiring are per product.
func (s *productSyncer) syncMany(ctx context.Context, evs []*nop.Event, recs []*state.Record) ([]outcome, []error) {
	outs := make([]outcome, len(evs))
	errs := make([]error, len(evs))
	sh, err := s.boot.rows(ctx)
	if err != nil {
		for i := range errs {
			errs[i] = err
		}
		return outs, errs
	}
	var deletes, families, products []int
	for i, ev := range evs {
		switch p := ev.Product; {
		case p == nil || p.Deleted:
			deletes = append(deletes, i)
		case p.ProductType == nop.ProductTypeGrouped:
			families = append(families, i)
		default:
			products = append(products, i)
		}
	}
	pre := &productPrefetch{families: map[int]string{}}
	s.group(ctx, sh, evs, recs, families, pre, outs, errs)
	for _, i := range families {
		if errs[i] == nil && outs[i].dataverseID != "" {
			pre.families[evs[i].Product.ID] = outs[i].dataverseID
		}
	}
	s.group(ctx, sh, evs, recs, products, pre, outs, errs)
	s.parallel(ctx, deletes, func(ctx context.Context, i int) {
		outs[i], errs[i] = s.sync(ctx, evs[i], recs[i])
	})
	return outs, errs
}

func (s *productSyncer) group(ctx context.Context, sh *shared, evs []*nop.Event, recs []*state.Record, idx []int, pre *productPrefetch, outs []outcome, errs []error) {
	if len(idx) == 0 {
		return
	}
	// Look up, for every product, its row (known or our deterministic one) and the rows
	// holding the product numbers we would write.
	var ids, numbers []string
	for _, i := range idx {
		p := evs[i].Product
		id := recs[i].DataverseID
		if id == "" {
			id = deterministicID(evs[i].StoreID, "product", itoa(p.ID))
		}
		ids = append(ids, id)
		numbers = append(numbers, productNumber(p.ID, p.Sku))
	}
	states, err := s.existingRows(ctx, "products", "productid", ids, true)
	if err == nil {
		pre.states = states
		pre.byNumber, err = s.productsByNumber(ctx, numbers)
	}
	if err != nil {
		for _, i := range idx {
			errs[i] = err
		}
		return
	}
	plans := make([]*productPlan, len(evs))
	s.parallel(ctx, idx, func(ctx context.Context, i int) {
		plans[i], errs[i] = s.planProduct(ctx, evs[i].StoreID, evs[i].Product, recs[i], sh, pre)
	})
	var creates, updates, actives []bulkRow
	var singles []int
	seen := map[string]bool{}
	for _, i := range idx {
		pl := plans[i]
		if errs[i] != nil || pl == nil {
			continue
		}
		if pl.unchanged {
			outs[i] = pl.outcome()
			continue
		}
		st, exists := pre.states[pl.id]
		switch {
		case seen[pl.id] || pl.picture != "":
			// Repeats, and products with a picture to copy (pictures never travel in
			// bulk requests: a hundred of them would make one huge request).
			singles = append(singles, i)
		case !exists:
			creates = append(creates, bulkRow{i: i, id: pl.id, rec: pl.record()})
		case st == productDraft || st == productUnderRevision:
			updates = append(updates, bulkRow{i: i, id: pl.id, rec: pl.record()})
		case st == productActive:
			actives = append(actives, bulkRow{i: i, id: pl.id, rec: pl.record()})
		default:
			singles = append(singles, i)
		}
		seen[pl.id] = true
	}
	// Retired products (and repeats): the single path (re-activate, revise when needed).
	s.parallel(ctx, singles, func(ctx context.Context, i int) {
		errs[i] = s.applyProduct(ctx, plans[i], recs[i], sh)
		if errs[i] == nil {
			outs[i] = plans[i].outcome()
		}
	})
	created := map[int]bool{}
	for _, r := range creates {
		created[r.i] = true
	}
	single := func(exists bool) func(ctx context.Context, r bulkRow) error {
		return func(ctx context.Context, r bulkRow) error {
			cur := pre.states[plans[r.i].id]
			return s.writeProduct(ctx, plans[r.i], exists, &cur)
		}
	}
	(&bulkGroup{d: s.deps, create: true, set: "products", logical: "product", pk: "productid", single: single(false)}).write(ctx, creates, errs)
	(&bulkGroup{d: s.deps, set: "products", logical: "product", pk: "productid", single: single(true)}).write(ctx, updates, errs)
	s.updateActive(ctx, actives, pre, errs, single(true))

	// Read back the state the environment gave the new rows (Draft, or Active).
	var written []int
	var newIDs []string
	for _, r := range append(append(creates, updates...), actives...) {
		if errs[r.i] == nil {
			written = append(written, r.i)
			if created[r.i] {
				newIDs = append(newIDs, plans[r.i].id)
			}
		}
	}
	if len(newIDs) > 0 {
		got, err := s.existingRows(ctx, "products", "productid", newIDs, true)
		if err != nil {
			for _, i := range written {
				errs[i] = err
			}
			return
		}
		for id, st := range got {
			pre.states[id] = st
		}
	}

	// Price list items: new products' items in bulk, the others one by one (they may or
	// may not exist yet).
	var items, itemUpdates []bulkRow
	var itemSingles []int
	prec := sh.precision()
	for _, i := range written {
		pl := plans[i]
		known := recs[i].Extra[extraPriceItemID]
		switch {
		case pl.family || !pl.active || priceItemCurrent(pl, recs[i], sh):
		case created[i] && known == "":
			id := deterministicID(pl.storeID, "productpricelevel", itoa(pl.p.ID))
			pl.extra[extraPriceItemID] = id
			pl.extra[extraPriceAmount] = priceAmount(pl, sh)
			items = append(items, bulkRow{i: i, id: id, rec: priceItemRecord(pl, sh, prec)})
		case known != "":
			pl.extra[extraPriceAmount] = priceAmount(pl, sh)
			itemUpdates = append(itemUpdates, bulkRow{i: i, id: known, rec: priceItemRecord(pl, sh, prec)})
		default:
			itemSingles = append(itemSingles, i)
		}
	}
	itemSingle := func(ctx context.Context, r bulkRow) error { return s.writePriceItem(ctx, plans[r.i], recs[r.i], sh) }
	(&bulkGroup{d: s.deps, create: true, set: "productpricelevels", logical: "productpricelevel", pk: "productpricelevelid",
		single: itemSingle}).write(ctx, items, errs)
	(&bulkGroup{d: s.deps, set: "productpricelevels", logical: "productpricelevel", pk: "productpricelevelid",
		single: itemSingle}).write(ctx, itemUpdates, errs)
	s.parallel(ctx, itemSingles, func(ctx context.Context, i int) {
		errs[i] = s.writePriceItem(ctx, plans[i], recs[i], sh)
	})

	// Lifecycle. Dynamics 365 publishes one product record per request ("You cannot publish
	// multiple product family, product, or bundle records at once"): Draft products are
	// published each by its own request, sent together as the parts of $batch requests; the
	// rest, and any product whose part fails, one by one.
	curOf := func(i int) int {
		cur, ok := pre.states[plans[i].id]
		if !ok || cur < 0 {
			cur = productDraft
		}
		return cur
	}
	var publish, settle []int
	for _, i := range written {
		if errs[i] != nil {
			continue
		}
		if pl := plans[i]; !pl.family && pl.active && (curOf(i) == productDraft || curOf(i) == productUnderRevision) {
			publish = append(publish, i)
		} else {
			settle = append(settle, i)
		}
	}
	published, rest := s.publishBatched(ctx, plans, publish)
	settle = append(settle, rest...)
	s.parallel(ctx, published, func(ctx context.Context, i int) {
		s.recordProduct(ctx, plans[i], recs[i])
		outs[i] = plans[i].outcome()
	})
	s.parallel(ctx, settle, func(ctx context.Context, i int) {
		if errs[i] = s.settleLifecycle(ctx, plans[i], curOf(i)); errs[i] == nil {
			s.recordProduct(ctx, plans[i], recs[i])
			outs[i] = plans[i].outcome()
		}
	})
}

// publishBatchParts is how many publishes one $batch carries: each runs the product
// plug-ins, so a hundred, the docs' starting point for bulk writes to tables with plug-ins.
const publishBatchParts = 100

// publishBatched publishes the products idx, one request each, as the parts of $batch
// requests (Dataverse runs them in order and stops at the first failure). It returns the
// products published and those left for the single path: the one whose part failed (the
// rest of its batch goes in the next one), or all that remain when a whole request fails.
func (s *productSyncer) publishBatched(ctx context.Context, plans []*productPlan, idx []int) (published, rest []int) {
	if len(idx) < minBulk {
		return nil, idx
	}
	for len(idx) > 0 {
		n := min(len(idx), publishBatchParts)
		parts := make([]dataverse.BatchPart, n)
		for k, i := range idx[:n] {
			parts[k] = dataverse.Op{Method: "PATCH", Path: dataverse.EntityPath("products", plans[i].id),
				Body: dataverse.Record{"statecode": productActive, "statuscode": 1}, Header: map[string]string{"If-Match": "*"}}
		}
		res, err := s.dv.Batch(ctx, parts...)
		done := 0
		for _, r := range res {
			if r.Err == nil && r.Part >= 1 && r.Part <= n && r.Part == done+1 {
				published = append(published, idx[r.Part-1])
				done = r.Part
			}
		}
		if err == nil && done == n {
			idx = idx[n:]
			continue
		}
		var be *dataverse.BatchError
		if errors.As(err, &be) && be.Part == done+1 && be.Part <= n {
			rest = append(rest, idx[done])
			idx = idx[done+1:]
			continue
		}
		return published, append(rest, idx[done:]...)
	}
	return published, rest
}

// productsByNumber returns the products holding any of the numbers, by lower-cased number.
func (s *productSyncer) productsByNumber(ctx context.Context, numbers []string) (map[string]dataverse.Record, error) {
	out := map[string]dataverse.Record{}
	seen := map[string]bool{}
	var uniq []string
	for _, n := range numbers {
		if k := strings.ToLower(n); !seen[k] {
			seen[k] = true
			uniq = append(uniq, n)
		}
	}
	conds := make([]string, len(uniq))
	for k, n := range uniq {
		conds[k] = "productnumber eq " + odataString(n)
	}
	for _, filter := range orFilters(conds, maxFilterBytes, nil) {
		err := s.dv.Query(ctx, "products", dataverse.Query{Select: []string{"productid", "productnumber"}, Filter: filter},
			func(r dataverse.Record) error {
				k := strings.ToLower(str(r["productnumber"]))
				if _, dup := out[k]; !dup {
					out[k] = r
				}
				return nil
			})
		if err != nil {
			return nil, err
		}
	}
	return out, nil
}

func itoa(n int) string { return strconv.Itoa(n) }

// updateActive writes products Dataverse holds Active: in place with UpdateMultiple where
// the environment allows it; where it answers ProductCanOnlyBeUpdatedInDraft, the rows
// are revised in bulk (Under Revision), updated in bulk, and published again by the
// caller's lifecycle step. What the environment does is remembered for the next chunk.
func (s *productSyncer) updateActive(ctx context.Context, rows []bulkRow, pre *productPrefetch, errs []error, single func(ctx context.Context, r bulkRow) error) {
	if len(rows) == 0 {
		return
	}
	plain := &bulkGroup{d: s.deps, set: "products", logical: "product", pk: "productid", single: single}
	var revise []bulkRow
	if _, draftOnly := s.noBulk.Load("products#in-place"); draftOnly {
		revise = rows
	} else {
		recs := make([]dataverse.Record, len(rows))
		for k, r := range rows {
			rec := make(dataverse.Record, len(r.rec)+1)
			for c, v := range r.rec {
				rec[c] = v
			}
			rec["productid"] = r.id
			recs[k] = rec
		}
		err := s.dv.UpdateMultiple(ctx, "products", "product", recs)
		if err == nil {
			return
		}
		var be *dataverse.BulkError
		if !errors.As(err, &be) {
			be = &dataverse.BulkError{Chunks: []dataverse.ChunkError{{Start: 0, End: len(rows), Err: err}}}
		}
		for _, ch := range be.Chunks {
			if ch.Start < 0 || ch.End > len(rows) || ch.Start >= ch.End {
				continue
			}
			if hasCode(ch.Err, codeOnlyUpdatedInDraft) {
				s.noBulk.Store("products#in-place", true)
				revise = append(revise, rows[ch.Start:ch.End]...)
				continue
			}
			plain.failed(ctx, rows[ch.Start:ch.End], ch.Err, errs)
		}
	}
	if len(revise) == 0 {
		return
	}
	states := make([]bulkRow, len(revise))
	for k, r := range revise {
		states[k] = bulkRow{i: r.i, id: r.id, rec: dataverse.Record{"statecode": productUnderRevision, "statuscode": 3}}
	}
	(&bulkGroup{d: s.deps, set: "products", logical: "product", pk: "productid", key: "products#revise", noSplit: true,
		single: func(ctx context.Context, r bulkRow) error {
			return s.setProductState(ctx, r.id, productUnderRevision)
		}}).write(ctx, states, errs)
	var revised []bulkRow
	for _, r := range revise {
		if errs[r.i] == nil {
			pre.states[r.id] = productUnderRevision
			revised = append(revised, r)
		}
	}
	plain.write(ctx, revised, errs)
}
