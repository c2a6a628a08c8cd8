package syncer

import (
	"context"
	"errors"
	"strconv"
	"strings"
	"sync"

	"golang.org/x/sync/errgroup"

	"github.com/nopsync/nopsync/shared/dataverse"
	"github.com/nopsync/nopsync/shared/nop"
	"github.com/nopsync/nopsync/shared/state"
)

// The bulk path writes import chunks with CreateMultiple (rows the state and a look-up
// say are new, carrying our deterministic primary key) and UpdateMultiple (rows that
// exist). UpsertMultiple is not used: Microsoft documents it for rows identified by
// alternate keys, and the app's rows are identified by primary key on standard tables
// (no custom keys, mapping spec). Bulk requests on standard tables are atomic, so a failed
// request is split in halves until the failing rows are isolated; those go through the
// single-row path, which records each row's own error and handles rows that turned out
// to exist (wiped state) with a plain upsert.

// bulkRow is one row of a bulk write.
type bulkRow struct {
	i   int              // index of the row in the caller's slice
	id  string           // primary key
	rec dataverse.Record // columns
}

// bulkGroup writes rows with one *Multiple message, isolating failures.
type bulkGroup struct {
	d       *deps
	create  bool // CreateMultiple (else UpdateMultiple)
	set     string
	logical string
	pk      string
	// key names the kind of write for remembering that bulk is refused (default set).
	key string
	// noSplit: after a refused request write its rows one by one at once; when they all
	// succeed that way, the message itself is refused and this key stays single.
	noSplit bool
	// single writes one row on its own (fallback and isolation).
	single func(ctx context.Context, r bulkRow) error
}

// minBulk: below this many rows, rows are written one by one.
const minBulk = 3

// write writes rows and stores each row's error in errs[r.i].
func (g *bulkGroup) write(ctx context.Context, rows []bulkRow, errs []error) {
	if len(rows) == 0 {
		return
	}
	if g.key == "" {
		g.key = g.set
	}
	if _, off := g.d.noBulk.Load(g.key); off || len(rows) < minBulk {
		g.singles(ctx, rows, errs)
		return
	}
	recs := make([]dataverse.Record, len(rows))
	for k, r := range rows {
		rec := make(dataverse.Record, len(r.rec)+1)
		for c, v := range r.rec {
			rec[c] = v
		}
		rec[g.pk] = r.id
		recs[k] = rec
	}
	var err error
	if g.create {
		_, err = g.d.dv.CreateMultiple(ctx, g.set, g.logical, recs)
	} else {
		err = g.d.dv.UpdateMultiple(ctx, g.set, g.logical, recs)
	}
	if err == nil {
		return
	}
	if bulkUnsupported(err) {
		// "Not all standard tables support these messages": write this table's rows one
		// by one from now on.
		g.d.noBulk.Store(g.key, true)
		g.singles(ctx, rows, errs)
		return
	}
	var be *dataverse.BulkError
	if !errors.As(err, &be) {
		g.failed(ctx, rows, err, errs)
		return
	}
	for _, ch := range be.Chunks {
		if ch.Start < 0 || ch.End > len(rows) || ch.Start >= ch.End {
			continue
		}
		g.failed(ctx, rows[ch.Start:ch.End], ch.Err, errs)
	}
}

// failed handles a failed request over rows: transient failures stay with all rows
// (splitting can't help), others are isolated by halving.
func (g *bulkGroup) failed(ctx context.Context, rows []bulkRow, err error, errs []error) {
	if isTransient(err) {
		for _, r := range rows {
			errs[r.i] = err
		}
		return
	}
	if g.noSplit {
		g.singles(ctx, rows, errs)
		for _, r := range rows {
			if errs[r.i] != nil {
				return // the data, not the message, was refused
			}
		}
		// Every row went through on its own: the environment refuses the message.
		g.d.noBulk.Store(g.key, true)
		return
	}
	if len(rows) < 2*minBulk {
		g.singles(ctx, rows, errs)
		return
	}
	h := len(rows) / 2
	g.write(ctx, rows[:h], errs)
	g.write(ctx, rows[h:], errs)
}

func (g *bulkGroup) singles(ctx context.Context, rows []bulkRow, errs []error) {
	eg, gctx := errgroup.WithContext(ctx)
	eg.SetLimit(g.d.conc)
	for _, r := range rows {
		eg.Go(func() error {
			errs[r.i] = g.single(gctx, r)
			return nil
		})
	}
	_ = eg.Wait()
}

// bulkUnsupported reports Dataverse's answer for a table without the *Multiple messages:
// 404 "Resource not found for the segment 'Microsoft.Dynamics.CRM.CreateMultiple'".
func bulkUnsupported(err error) bool {
	var de *dataverse.Error
	return errors.As(err, &de) && de.StatusCode == 404 && strings.Contains(de.Message, "Multiple")
}

// syncMany is the customers' bulk path: deletes and skips row by row, the contacts of
// everyone else planned together (one email look-up per 20 customers) and written with
// CreateMultiple/UpdateMultiple.
func (s *customerSyncer) syncMany(ctx context.Context, evs []*nop.Event, recs []*state.Record) ([]outcome, []error) {
	outs := make([]outcome, len(evs))
	errs := make([]error, len(evs))
	var singles, rows []int
	var emails []string
	for i, ev := range evs {
		c := ev.Customer
		switch {
		case c == nil || c.Deleted:
			singles = append(singles, i)
		case skipReason(c) != "":
			outs[i] = outcome{status: state.Skipped, reason: skipReason(c)}
		default:
			rows = append(rows, i)
			if recs[i].DataverseID == "" {
				emails = append(emails, deref(c.Email))
			}
		}
	}
	s.parallel(ctx, singles, func(ctx context.Context, i int) {
		outs[i], errs[i] = s.sync(ctx, evs[i], recs[i])
	})
	if len(rows) == 0 {
		return outs, errs
	}
	byEmail, err := s.contactsByEmail(ctx, emails)
	if err != nil {
		for _, i := range rows {
			errs[i] = err
		}
		return outs, errs
	}
	if byEmail == nil {
		byEmail = map[string][]dataverse.Record{}
	}
	plans := make([]*contactPlan, len(evs))
	s.parallel(ctx, rows, func(ctx context.Context, i int) {
		plans[i], errs[i] = s.planContact(ctx, evs[i].StoreID, evs[i].Customer, recs[i], byEmail)
	})
	// One contact row per chunk: two customers that resolve to the same contact (the same
	// adopted email) must not be in one bulk request.
	var creates, updates []bulkRow
	seen := map[string]bool{}
	var later []int
	for _, i := range rows {
		p := plans[i]
		if errs[i] != nil || p == nil {
			continue
		}
		if p.unchanged {
			outs[i] = p.outcome()
			continue
		}
		if seen[p.id] {
			later = append(later, i)
			continue
		}
		seen[p.id] = true
		r := bulkRow{i: i, id: p.id, rec: p.record()}
		if p.isNew {
			creates = append(creates, r)
		} else {
			updates = append(updates, r)
		}
	}
	single := func(ctx context.Context, r bulkRow) error { return s.writeContact(ctx, plans[r.i]) }
	var wg sync.WaitGroup
	wg.Add(2)
	go func() {
		defer wg.Done()
		(&bulkGroup{d: s.deps, create: true, set: "contacts", logical: "contact", pk: "contactid", single: single}).write(ctx, creates, errs)
	}()
	go func() {
		defer wg.Done()
		(&bulkGroup{d: s.deps, set: "contacts", logical: "contact", pk: "contactid", single: single}).write(ctx, updates, errs)
	}()
	wg.Wait()
	for _, i := range later {
		errs[i] = s.writeContact(ctx, plans[i])
	}
	for _, i := range rows {
		if p := plans[i]; errs[i] == nil && p != nil && !p.unchanged {
			p.apply(recs[i])
			outs[i] = p.outcome()
		}
	}
	return outs, errs
}

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
	prec := precisionFor(sh.CurrencyPrecision)
	for _, i := range written {
		pl := plans[i]
		known := recs[i].Extra[extraPriceItemID]
		switch {
		case pl.family || priceItemCurrent(pl, recs[i], sh):
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

	// Lifecycle: Draft products to publish go in bulk (UpdateMultiple setting the state;
	// if the environment refuses that, product by product from then on), the rest one
	// by one.
	curOf := func(i int) int {
		cur, ok := pre.states[plans[i].id]
		if !ok || cur < 0 {
			cur = productDraft
		}
		return cur
	}
	var publish []bulkRow
	var settle []int
	for _, i := range written {
		if errs[i] != nil {
			continue
		}
		pl := plans[i]
		if cur := curOf(i); !pl.family && pl.active && (cur == productDraft || cur == productUnderRevision) {
			publish = append(publish, bulkRow{i: i, id: pl.id, rec: dataverse.Record{"statecode": productActive, "statuscode": 1}})
		} else {
			settle = append(settle, i)
		}
	}
	(&bulkGroup{d: s.deps, set: "products", logical: "product", pk: "productid", key: "products#publish", noSplit: true,
		single: func(ctx context.Context, r bulkRow) error {
			if err := s.settleLifecycle(ctx, plans[r.i], curOf(r.i)); err != nil {
				return err
			}
			return nil
		}}).write(ctx, publish, errs)
	var published []int
	for _, r := range publish {
		if errs[r.i] == nil {
			published = append(published, r.i)
		}
	}
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
