package syncer

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"

	"github.com/nopsync/nopsync/shared/dataverse"
	"github.com/nopsync/nopsync/shared/nop"
	"github.com/nopsync/nopsync/shared/state"
)

// productPrefetch holds rows looked up once for a whole chunk.
type productPrefetch struct {
	rows     map[string]productRowInfo // product id → its row, for the ids looked up that exist
	deleted  map[int]bool              // store product ids deleted in this chunk (deletes go first)
	looked   map[string]bool           // the ids looked up: products and the families they join
	famMu    sync.Mutex
	famRows  map[string]productRowInfo   // family rows the look-up did not take, read once for the chunk
	byNumber map[string]dataverse.Record // lower(productnumber) → product
	families map[int]string              // store product id of a family → its row, decided in this chunk
}

// syncMany is the products' bulk path. Deletes go first: a chunk holds each product's
// newest state, and a family deleted in the store is retired in Dynamics 365 with its
// products before their changes, as when its delete arrives before them one by one: a
// change of one of them is then skipped with the reason (a retired product of a family
// can't be re-activated), and a product new to the family is written without it
// (planProduct), not written and then retired with it, recorded synced. Families go next
// (their children bind to them), then the other products. Per group: one look-up of the
// rows' state and of the product numbers, then CreateMultiple for new products and UpdateMultiple for Draft ones;
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
	c := &productChunk{s: s, sh: sh, evs: evs, recs: recs, outs: outs, errs: errs,
		plans: make([]*productPlan, len(evs)), created: map[int]bool{},
		pre: &productPrefetch{families: map[int]string{}}}
	s.parallel(ctx, deletes, func(ctx context.Context, i int) {
		outs[i], errs[i] = s.sync(ctx, evs[i], recs[i])
	})
	c.pre.deleted = map[int]bool{}
	for _, i := range deletes {
		// Retired or deleted now (not kept by DELETE_POLICY=ignore, nor failed).
		if errs[i] == nil && outs[i].status == state.Synced {
			c.pre.deleted[evs[i].Product.ID] = true
		}
	}
	c.group(ctx, families)
	for _, i := range families {
		// A family written now takes its new products as it is. One skipped (retired for
		// good) or unchanged (an admin may have retired it since) is left to planProduct,
		// which finds its row in the chunk's look-up.
		if errs[i] == nil && outs[i].dataverseID != "" && outs[i].status == state.Synced && c.plans[i] != nil && !c.plans[i].unchanged {
			c.pre.families[evs[i].Product.ID] = outs[i].dataverseID
		}
	}
	c.group(ctx, products)
	return outs, errs
}

// productChunk is the working state of one chunk's products: the events and records the
// engine claimed, the plan, outcome and error of each (all by the event's index), and what
// was looked up or learnt on the way.
type productChunk struct {
	s       *productSyncer
	sh      *shared
	evs     []*nop.Event
	recs    []*state.Record
	plans   []*productPlan
	outs    []outcome
	errs    []error
	pre     *productPrefetch
	created map[int]bool // rows created with CreateMultiple
}

// familyRow returns the family row fam as read (by read) once for the chunk; the chunk's
// products are planned side by side.
func (pre *productPrefetch) familyRow(fam string, read func() (productRowInfo, error)) (productRowInfo, error) {
	pre.famMu.Lock() // held while reading: such families are few, and read once
	defer pre.famMu.Unlock()
	if row, ok := pre.famRows[fam]; ok {
		return row, nil
	}
	row, err := read()
	if err != nil {
		return row, err
	}
	if pre.famRows == nil {
		pre.famRows = map[string]productRowInfo{}
	}
	pre.famRows[fam] = row
	return row, nil
}

// productWrites are a group's planned rows sorted by how they are written.
type productWrites struct {
	creates []bulkRow // new rows: CreateMultiple
	updates []bulkRow // Draft or Under Revision rows: UpdateMultiple
	actives []bulkRow // Active rows: updateActive
	singles []int     // Retired rows, repeats, rows with a picture: one by one
}

// productRows reads the statecode, parent family and structure of the product rows ids
// (those that exist), as many per query as a URL takes.
func (s *productSyncer) productRows(ctx context.Context, ids []string) (map[string]productRowInfo, error) {
	rows := map[string]productRowInfo{}
	for _, filter := range orFilters(eqConds("productid", ids), maxFilterBytes, nil) {
		err := s.dv.Query(ctx, "products", dataverse.Query{
			Select: []string{"productid", "statecode", "_parentproductid_value", "productstructure"},
			Filter: filter,
		}, func(r dataverse.Record) error {
			rows[strings.ToLower(str(r["productid"]))] = productRowInfo{exists: true, state: intField(r, "statecode"),
				family: intField(r, "productstructure") == productStructureFamily, parent: strings.ToLower(str(r["_parentproductid_value"]))}
			return nil
		})
		if err != nil {
			return nil, fmt.Errorf("reading products: %w", err)
		}
	}
	return rows, nil
}

// setState records the statecode the chunk gave the existing row id.
func (pre *productPrefetch) setState(id string, st int) {
	r := pre.rows[id]
	r.exists, r.state = true, st
	pre.rows[id] = r
}

// group writes one group of the chunk (families, or the other products): look-ups, plans,
// rows, then price list items and lifecycle for the rows written.
func (c *productChunk) group(ctx context.Context, idx []int) {
	if len(idx) == 0 {
		return
	}
	if !c.lookUp(ctx, idx) {
		return
	}
	c.plan(ctx, idx)
	w := c.sort(idx)
	c.writeSingles(ctx, w.singles)
	c.writeRows(ctx, w)
	written, ok := c.readBack(ctx, w)
	if !ok {
		return
	}
	c.writePriceItems(ctx, written)
	c.settle(ctx, written)
}

// lookUp finds, for every product, its row (known or our deterministic one) and the rows
// holding the product numbers we would write. A failed look-up fails the group.
func (c *productChunk) lookUp(ctx context.Context, idx []int) bool {
	var ids, numbers []string
	looked := map[string]bool{}
	for _, i := range idx {
		p := c.evs[i].Product
		id := c.recs[i].DataverseID
		if id == "" {
			id = deterministicID(c.evs[i].StoreID, "product", itoa(p.ID))
		}
		ids = append(ids, id)
		looked[id] = true
		numbers = append(numbers, productNumber(c.evs[i].StoreID, p.ID, p.Sku))
		// The family a product joins now (planProduct asks whether it can take it),
		// unless this chunk wrote it: read in the same queries.
		if f := p.ParentGroupedProductID; f > 0 && f != p.ID && c.recs[i].Extra[extraParentID] == "" && c.pre.families[f] == "" {
			if fam := deterministicID(c.evs[i].StoreID, "product", itoa(f)); !looked[fam] {
				ids = append(ids, fam)
				looked[fam] = true
			}
		}
	}
	rows, err := c.s.productRows(ctx, ids)
	if err == nil {
		c.pre.rows, c.pre.looked = rows, looked
		c.pre.byNumber, err = c.s.productsByNumber(ctx, numbers)
	}
	if err != nil {
		for _, i := range idx {
			c.errs[i] = err
		}
		return false
	}
	return true
}

// plan works out every product's write.
func (c *productChunk) plan(ctx context.Context, idx []int) {
	c.s.parallel(ctx, idx, func(ctx context.Context, i int) {
		c.plans[i], c.errs[i] = c.s.planProduct(ctx, c.evs[i].StoreID, c.evs[i].Product, c.recs[i], c.sh, c.pre)
	})
}

// sort records the unchanged products' outcomes and sorts the others by how their row is
// written.
func (c *productChunk) sort(idx []int) productWrites {
	var w productWrites
	seen := map[string]bool{}
	for _, i := range idx {
		pl := c.plans[i]
		if c.errs[i] != nil || pl == nil {
			continue
		}
		if pl.unchanged {
			c.outs[i] = pl.outcome()
			continue
		}
		row, exists := c.pre.rows[pl.id]
		st := row.state
		switch {
		case seen[pl.id] || pl.picture != "":
			// Repeats, and products with a picture to copy (pictures never travel in
			// bulk requests: a hundred of them would make one huge request).
			w.singles = append(w.singles, i)
		case !exists:
			w.creates = append(w.creates, bulkRow{i: i, id: pl.id, rec: pl.record()})
		case st == productDraft || st == productUnderRevision:
			w.updates = append(w.updates, bulkRow{i: i, id: pl.id, rec: pl.record()})
		case st == productActive:
			w.actives = append(w.actives, bulkRow{i: i, id: pl.id, rec: pl.record()})
		default:
			w.singles = append(w.singles, i)
		}
		seen[pl.id] = true
	}
	return w
}

// writeSingles writes Retired products (and repeats) on the single path (re-activate,
// revise when needed).
func (c *productChunk) writeSingles(ctx context.Context, singles []int) {
	c.s.parallel(ctx, singles, func(ctx context.Context, i int) {
		c.errs[i] = c.s.applyProduct(ctx, c.plans[i], c.recs[i], c.sh)
		if c.errs[i] == nil {
			c.outs[i] = c.plans[i].outcome()
		}
	})
}

// writeRows sends the product rows in bulk: creates, Draft updates, Active updates.
func (c *productChunk) writeRows(ctx context.Context, w productWrites) {
	for _, r := range w.creates {
		c.created[r.i] = true
	}
	single := func(exists bool) func(ctx context.Context, r bulkRow) error {
		return func(ctx context.Context, r bulkRow) error {
			cur := c.pre.rows[c.plans[r.i].id].state
			return c.s.writeProduct(ctx, c.plans[r.i], exists, &cur)
		}
	}
	(&bulkGroup{d: c.s.deps, create: true, set: "products", logical: "product", pk: "productid", single: single(false)}).write(ctx, w.creates, c.errs)
	(&bulkGroup{d: c.s.deps, set: "products", logical: "product", pk: "productid", single: single(true)}).write(ctx, w.updates, c.errs)
	c.s.updateActive(ctx, w.actives, c.pre, c.errs, single(true))
}

// readBack returns the rows written and reads the state the environment gave the new ones
// (Draft, or Active). A failed read fails the rows written.
func (c *productChunk) readBack(ctx context.Context, w productWrites) (written []int, ok bool) {
	var newIDs []string
	for _, r := range append(append(w.creates, w.updates...), w.actives...) {
		if c.errs[r.i] == nil {
			written = append(written, r.i)
			if c.created[r.i] {
				newIDs = append(newIDs, c.plans[r.i].id)
			}
		}
	}
	if len(newIDs) > 0 {
		got, err := c.s.productRows(ctx, newIDs)
		if err != nil {
			for _, i := range written {
				c.errs[i] = err
			}
			return nil, false
		}
		for id, row := range got {
			c.pre.rows[id] = row
		}
	}
	return written, true
}

// writePriceItems writes the price list items: new products' items in bulk, the others
// one by one (they may or may not exist yet).
func (c *productChunk) writePriceItems(ctx context.Context, written []int) {
	var items, itemUpdates []bulkRow
	var itemSingles, drops []int
	sh := c.sh
	prec := sh.precision()
	for _, i := range written {
		pl := c.plans[i]
		known := c.recs[i].Extra[extraPriceItemID]
		switch {
		case pl.family && (pl.priceItem != "" || pl.becameFamily):
			drops = append(drops, i)
		case pl.family || !pl.active || priceItemCurrent(pl, c.recs[i], sh):
		case c.created[i] && known == "":
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
	itemSingle := func(ctx context.Context, r bulkRow) error {
		return c.s.writePriceItem(ctx, c.plans[r.i], c.recs[r.i], sh)
	}
	(&bulkGroup{d: c.s.deps, create: true, set: "productpricelevels", logical: "productpricelevel", pk: "productpricelevelid",
		single: itemSingle}).write(ctx, items, c.errs)
	(&bulkGroup{d: c.s.deps, set: "productpricelevels", logical: "productpricelevel", pk: "productpricelevelid",
		single: itemSingle}).write(ctx, itemUpdates, c.errs)
	c.s.parallel(ctx, itemSingles, func(ctx context.Context, i int) {
		c.errs[i] = c.s.writePriceItem(ctx, c.plans[i], c.recs[i], sh)
	})
	c.s.parallel(ctx, drops, func(ctx context.Context, i int) {
		c.errs[i] = c.s.dropPriceItem(ctx, c.plans[i], sh)
	})
}

// cur is the state the product of row i is in (Draft when unknown).
func (c *productChunk) cur(i int) int {
	row, ok := c.pre.rows[c.plans[i].id]
	cur := row.state
	if !ok || cur < 0 {
		cur = productDraft
	}
	return cur
}

// settle brings the rows written to their lifecycle state and records them. Dynamics 365
// publishes one product record per request ("You cannot publish multiple product family,
// product, or bundle records at once"): Draft products and families are published each
// by its own request, sent together as the parts of $batch requests (a $batch counts as
// one request against the service protection limit on the number of requests); the
// rest, and any product whose part fails, one by one.
func (c *productChunk) settle(ctx context.Context, written []int) {
	var publish, settle []int
	for _, i := range written {
		if c.errs[i] != nil {
			continue
		}
		if pl := c.plans[i]; pl.active && (c.cur(i) == productDraft || c.cur(i) == productUnderRevision) {
			publish = append(publish, i)
		} else {
			settle = append(settle, i)
		}
	}
	published, rest := c.s.publishBatched(ctx, c.plans, publish)
	settle = append(settle, rest...)
	c.s.parallel(ctx, settle, func(ctx context.Context, i int) {
		c.errs[i] = c.s.settleLifecycle(ctx, c.plans[i], c.cur(i))
	})
	// The numbers' claims go to the state store together, not one round trip each.
	var claims []*state.Doc
	var claimers []*state.Record
	for _, idx := range [][]int{published, settle} {
		for _, i := range idx {
			if c.errs[i] != nil {
				continue
			}
			if claim := c.s.recordProduct(c.plans[i], c.recs[i]); claim != nil {
				claims, claimers = append(claims, claim), append(claimers, c.recs[i])
			}
			c.outs[i] = c.plans[i].outcome()
		}
	}
	c.s.claimNumbers(ctx, claims, claimers)
}

// publishBatchParts is how many publishes one $batch carries at most: each runs the
// product plug-ins, so a hundred, the docs' starting point for bulk writes to tables with
// plug-ins; fewer when DATAVERSE_BULK_SIZE (RowsPerRequest) is lower.
const publishBatchParts = 100

// publishBatched publishes the products idx, one request each, as the parts of $batch
// requests (Dataverse runs them in order and stops at the first failure), spread over
// the requests the client may have in flight (BatchParts) and sent side by side. It
// returns the products published and those left for the single path: the one whose
// part failed (the rest of its batch goes in the next one), or all that remain of a
// group when a whole request fails.
func (s *productSyncer) publishBatched(ctx context.Context, plans []*productPlan, idx []int) (published, rest []int) {
	if len(idx) < minBulk {
		return nil, idx
	}
	per := s.dv.BatchParts(len(idx), min(publishBatchParts, max(1, s.dv.RowsPerRequest("product"))))
	var groups [][]int
	for len(idx) > 0 {
		n := min(per, len(idx))
		groups = append(groups, idx[:n])
		idx = idx[n:]
	}
	var mu sync.Mutex
	s.parallelN(ctx, len(groups), func(ctx context.Context, g int) {
		p, r := s.publishGroup(ctx, plans, groups[g], per)
		mu.Lock()
		defer mu.Unlock()
		published, rest = append(published, p...), append(rest, r...)
	})
	return published, rest
}

// publishGroup is publishBatched for one group, in $batch requests of up to per parts.
func (s *productSyncer) publishGroup(ctx context.Context, plans []*productPlan, idx []int, per int) (published, rest []int) {
	for len(idx) > 0 {
		n := min(len(idx), per)
		parts := make([]dataverse.BatchPart, n)
		for k, i := range idx[:n] {
			parts[k] = publishOp(plans[i])
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

// publishOp is the request that publishes a planned product, as publish sends it: a
// family with PublishProductHierarchy, a product by setting its state.
func publishOp(pl *productPlan) dataverse.Op {
	if pl.family {
		return dataverse.Op{Method: "POST", Path: dataverse.EntityPath("products", pl.id) + "/Microsoft.Dynamics.CRM.PublishProductHierarchy",
			Body: dataverse.Record{}}
	}
	return dataverse.Op{Method: "PATCH", Path: dataverse.EntityPath("products", pl.id),
		Body: dataverse.Record{"statecode": productActive, "statuscode": 1}, Header: map[string]string{"If-Match": "*"}}
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
			pre.setState(r.id, productUnderRevision)
			revised = append(revised, r)
		}
	}
	plain.write(ctx, revised, errs)
}
