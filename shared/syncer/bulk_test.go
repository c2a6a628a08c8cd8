package syncer

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nopsync/nopsync/shared/dataverse"
	"github.com/nopsync/nopsync/shared/dataverse/dataversetest"
	"github.com/nopsync/nopsync/shared/nop"
	"github.com/nopsync/nopsync/shared/queue"
	"github.com/nopsync/nopsync/shared/state"
)

// An import chunk is written with bulk requests, not one per row; skipped
// rows are recorded; a failing row is isolated and recorded while the rest are written.
func TestBulkChunkCustomers(t *testing.T) {
	e := newEnv(t, envOptions{})
	tmpl := example(t, "customer-created.json")[0]
	typed, err := e.dv.Create(e.ctx, "contacts", dataverse.Record{"lastname": "Typed", "emailaddress1": "b7@example.test"})
	if err != nil {
		t.Fatal(err)
	}
	var evs []*nop.Event
	for i := 1; i <= 120; i++ {
		evs = append(evs, customerEvent(t, tmpl, i, 1, fmt.Sprintf("b%d@example.test", i), func(d map[string]any) {
			if i%30 == 0 {
				d["isGuest"] = true
			}
			if i%7 == 0 {
				d["company"] = fmt.Sprintf("Company %d", i%3)
			}
		}))
	}
	e.fdv.setFail(func(op, set string, recs []dataverse.Record) error {
		if set == "contacts" && hasEmail(recs, "b55@example.test") {
			return refuse("A validation error occurred.")
		}
		return nil
	})
	if err := e.deliver(e.eng, state.Customer, evs...); err != nil {
		t.Fatalf("chunk: %v", err)
	}
	singles := e.fdv.count("Upsert contacts")
	bulk := e.fdv.count("CreateMultiple contacts") + e.fdv.count("UpdateMultiple contacts")
	if bulk == 0 || singles > 12 {
		t.Fatalf("bulk requests %d, single upserts %d: the chunk was not written in bulk", bulk, singles)
	}
	for i := 1; i <= 120; i++ {
		r := e.rec(state.Customer, i)
		switch {
		case i%30 == 0:
			if r.Status != state.Skipped {
				t.Errorf("guest %d: %s", i, r.Status)
			}
		case i == 55:
			if r.Status != state.Failed || r.Transient {
				t.Errorf("bad row: %s transient %v", r.Status, r.Transient)
			}
			if _, ok := e.srv.Row("contacts", contactID(1, i)); ok {
				t.Errorf("bad row written")
			}
		default:
			want := contactID(1, i)
			if i == 7 {
				want = typed
			}
			if r.Status != state.Synced || !strings.EqualFold(r.DataverseID, want) {
				t.Errorf("customer %d: %s %s (%s), want synced to %s", i, r.Status, r.DataverseID, r.Reason, want)
				continue
			}
			c := e.row("contacts", want)
			if c["emailaddress1"] != fmt.Sprintf("b%d@example.test", i) || c["lastname"] != "Lovelace" {
				t.Errorf("customer %d: contact %v", i, c)
			}
			if i%7 == 0 && c["_parentcustomerid_value"] == nil {
				t.Errorf("customer %d: no parent account", i)
			}
		}
	}
	if n := e.srv.Count("accounts"); n != 4 { // the example's company and Company 0..2
		t.Errorf("%d accounts, want 4", n)
	}
}

// Products in a chunk (families first), the grouped example included.
func TestBulkChunkProducts(t *testing.T) {
	e := newEnv(t, envOptions{})
	var evs []*nop.Event
	for i, m := range example(t, "products-grouped.json") {
		evs = append(evs, mkEvent(t, m, fmt.Sprintf("g%d", i), 0, nil))
	}
	for i := 100; i < 160; i++ {
		evs = append(evs, productEvent(t, i, 1, func(d map[string]any) { d["published"] = i%10 != 0 }))
	}
	// children before their family in the chunk
	evs[0], evs[2] = evs[2], evs[0]
	if err := e.deliver(e.eng, state.Product, evs...); err != nil {
		t.Fatalf("chunk: %v", err)
	}
	if n := e.fdv.count("CreateMultiple products"); n == 0 {
		t.Fatalf("no bulk creates")
	}
	if n := e.srv.Count("products"); n != 63 {
		t.Fatalf("%d products, want 63", n)
	}
	if n := e.srv.Count("productpricelevels"); n != 56 {
		// Not the family, nor the 6 unpublished products: Dynamics 365 retires a product
		// only when it is in no price list.
		t.Fatalf("%d price list items, want 56", n)
	}
	for i := 100; i < 160; i++ {
		p := e.row("products", productID(1, i))
		want := productActive
		if i%10 == 0 {
			want = productRetired
		}
		if numOf(p["statecode"]) != float64(want) || p["productnumber"] != fmt.Sprintf("SKU-%d", i) {
			t.Errorf("product %d: state %v number %v", i, p["statecode"], p["productnumber"])
		}
	}
	for _, c := range []int{12, 13} {
		p := e.row("products", productID(1, c))
		if !strings.EqualFold(fmt.Sprint(p["_parentproductid_value"]), productID(1, 20)) || numOf(p["statecode"]) != productActive {
			t.Errorf("child %d: parent %v state %v", c, p["_parentproductid_value"], p["statecode"])
		}
	}
	// The same chunk again: nothing to write.
	before := e.srv.Stats().RowsWritten
	if err := e.deliver(e.eng, state.Product, evs...); err != nil {
		t.Fatal(err)
	}
	if got := e.srv.Stats().RowsWritten; got != before {
		t.Errorf("redelivered chunk wrote %d rows", got-before)
	}
}

// 1000 customer events (several versions per customer, duplicates,
// shuffled, delivered as chunks and single messages) end with every contact holding its
// customer's newest state.
func TestReplayThousandCustomerEvents(t *testing.T) {
	if testing.Short() {
		t.Skip("long")
	}
	e := newEnv(t, envOptions{})
	tmpl := example(t, "customer-created.json")[0]
	rng := rand.New(rand.NewPCG(7, 11))
	const customers = 250
	newest := map[int]int64{}
	var evs []*nop.Event
	for len(evs) < 1000 {
		id := 1 + rng.IntN(customers)
		seq := int64(1 + rng.IntN(6))
		ev := customerEvent(t, tmpl, id, seq, fmt.Sprintf("k%d@example.test", id), func(d map[string]any) {
			d["firstName"] = fmt.Sprintf("v%d", seq)
			d["phone"] = fmt.Sprintf("+1 555 %04d", seq)
			if seq%2 == 0 {
				d["company"] = nil
			}
		})
		evs = append(evs, ev)
		if seq > newest[id] {
			newest[id] = seq
		}
		if rng.IntN(5) == 0 { // duplicate delivery
			evs = append(evs, ev)
		}
	}
	rng.Shuffle(len(evs), func(i, j int) { evs[i], evs[j] = evs[j], evs[i] })
	for start := 0; start < len(evs); {
		n := 1 + rng.IntN(60)
		end := min(start+n, len(evs))
		part := evs[start:end]
		if n > 30 { // one by one
			for _, ev := range part {
				if err := e.deliver(e.eng, state.Customer, ev); err != nil {
					t.Fatalf("event %s: %v", ev.ID, err)
				}
			}
		} else {
			// A request can't carry one event id twice (intake rejects it): repeats
			// within a chunk travel on their own, after it.
			ids := map[string]bool{}
			var uniq, again []*nop.Event
			for _, ev := range part {
				if ids[ev.ID] {
					again = append(again, ev)
				} else {
					ids[ev.ID] = true
					uniq = append(uniq, ev)
				}
			}
			if err := e.deliver(e.eng, state.Customer, uniq...); err != nil {
				t.Fatalf("chunk: %v", err)
			}
			for _, ev := range again {
				if err := e.deliver(e.eng, state.Customer, ev); err != nil {
					t.Fatalf("event %s: %v", ev.ID, err)
				}
			}
		}
		start = end
	}
	if n := e.srv.Count("contacts"); n != len(newest) {
		for id := range newest {
			if _, ok := e.srv.Row("contacts", contactID(1, id)); !ok {
				t.Logf("customer %d: no contact; state %+v", id, e.rec(state.Customer, id))
			}
		}
		t.Fatalf("%d contacts, want %d", n, len(newest))
	}
	for id, seq := range newest {
		c := e.row("contacts", contactID(1, id))
		if c["firstname"] != fmt.Sprintf("v%d", seq) || c["telephone1"] != fmt.Sprintf("+1 555 %04d", seq) {
			t.Errorf("customer %d: firstname %v phone %v, want version %d", id, c["firstname"], c["telephone1"], seq)
		}
		hasParent := c["_parentcustomerid_value"] != nil
		if hasParent != (seq%2 == 1) {
			t.Errorf("customer %d version %d: parent %v", id, seq, c["_parentcustomerid_value"])
		}
		r := e.rec(state.Customer, id)
		if r.Status != state.Synced || r.LastEventID != fmt.Sprintf("cust-%d-%d", id, seq) {
			t.Errorf("customer %d: state %s last %s", id, r.Status, r.LastEventID)
		}
	}
}

// A chunk of products survives a wiped state table (same rows), a row
// Dataverse refuses is isolated, and tables without the *Multiple messages fall back to
// single writes.
func TestBulkProductsWipedStateFailuresUnsupported(t *testing.T) {
	e := newEnv(t, envOptions{sim: func(o *dataversetest.Options) { o.BulkUnsupported = []string{"productpricelevels"} }})
	var evs []*nop.Event
	for i := 1; i <= 40; i++ {
		evs = append(evs, productEvent(t, i, 1, func(d map[string]any) {
			if i == 17 {
				d["name"] = "BAD"
			}
		}))
	}
	e.fdv.setFail(func(op, set string, recs []dataverse.Record) error {
		for _, r := range recs {
			if r["name"] == "BAD" {
				return refuse("A validation error occurred.")
			}
		}
		return nil
	})
	if err := e.deliver(e.eng, state.Product, evs...); err != nil {
		t.Fatalf("chunk: %v", err)
	}
	if r := e.rec(state.Product, 17); r.Status != state.Failed || r.Transient {
		t.Fatalf("refused row: %s transient %v", r.Status, r.Transient)
	}
	if n := e.srv.Count("products"); n != 39 {
		t.Fatalf("%d products, want 39", n)
	}
	if n := e.srv.Count("productpricelevels"); n != 39 {
		t.Fatalf("%d price list items, want 39", n)
	}
	if e.fdv.count("CreateMultiple productpricelevels") != 1 {
		t.Errorf("price list items: %d bulk attempts, want 1 then single writes", e.fdv.count("CreateMultiple productpricelevels"))
	}
	e.fdv.setFail(nil)
	e.wipeState()
	e.eng = e.engine()
	if err := e.deliver(e.eng, state.Product, evs...); err != nil {
		t.Fatalf("chunk after wiping state: %v", err)
	}
	if n, m := e.srv.Count("products"), e.srv.Count("productpricelevels"); n != 40 || m != 40 {
		t.Fatalf("after wiping state: %d products, %d price list items; want 40 each", n, m)
	}
	for i := 1; i <= 40; i++ {
		if r := e.rec(state.Product, i); r.Status != state.Synced || r.DataverseID != productID(1, i) {
			t.Errorf("product %d: %s %s", i, r.Status, r.DataverseID)
		}
	}
}

// Older versions in the same chunk, or older than what state
// holds, are skipped and counted.
func TestBulkChunkStaleRows(t *testing.T) {
	e := newEnv(t, envOptions{})
	tmpl := example(t, "customer-created.json")[0]
	name := func(v string) func(d map[string]any) { return func(d map[string]any) { d["firstName"] = v } }
	e.each(state.Customer, customerEvent(t, tmpl, 2, 5, "s2@example.test", name("five")))
	err := e.deliver(e.eng, state.Customer,
		customerEvent(t, tmpl, 1, 2, "s1@example.test", name("two")),
		customerEvent(t, tmpl, 1, 1, "s1@example.test", name("one")),
		customerEvent(t, tmpl, 2, 4, "s2@example.test", name("four")),
		customerEvent(t, tmpl, 3, 1, "s3@example.test", name("one")))
	if err != nil {
		t.Fatal(err)
	}
	for id, want := range map[int]string{1: "two", 2: "five", 3: "one"} {
		if got := e.row("contacts", contactID(1, id))["firstname"]; got != want {
			t.Errorf("customer %d: %v, want %s", id, got, want)
		}
	}
	if c, _ := e.eng.StaleSkipped(e.ctx); c[state.Customer] != 2 {
		t.Errorf("stale count %d, want 2", c[state.Customer])
	}
	// The same chunk delivered again (a redelivery, a scheduled copy): its stale events
	// were counted at its first delivery, not again.
	msgs, _ := nop.Messages(state.Customer, []*nop.Event{
		customerEvent(t, tmpl, 1, 2, "s1@example.test", name("two")),
		customerEvent(t, tmpl, 1, 1, "s1@example.test", name("one")),
		customerEvent(t, tmpl, 2, 4, "s2@example.test", name("four")),
		customerEvent(t, tmpl, 3, 1, "s3@example.test", name("one"))})
	if err := e.eng.HandleMessage(queue.WithRedelivery(e.ctx), "customers", msgs[0].Body); err != nil {
		t.Fatal(err)
	}
	if c, _ := e.eng.StaleSkipped(e.ctx); c[state.Customer] != 2 {
		t.Errorf("stale count %d after a redelivery, want still 2", c[state.Customer])
	}
}

// Throttling past the budget in a bulk request leaves its rows failed
// transiently (the chunk is redelivered); the redelivery writes them once.
func TestBulkTransientChunkRedelivered(t *testing.T) {
	e := newEnv(t, envOptions{})
	tmpl := example(t, "customer-created.json")[0]
	var evs []*nop.Event
	for i := 1; i <= 30; i++ {
		evs = append(evs, customerEvent(t, tmpl, i, 1, fmt.Sprintf("t%d@example.test", i), nil))
	}
	e.fdv.setFail(func(op, set string, recs []dataverse.Record) error {
		if op == "CreateMultiple" {
			return &dataverse.Error{Op: "test", StatusCode: 429, Message: "Number of requests exceeded the limit", Retryable: true}
		}
		return nil
	})
	if err := e.deliver(e.eng, state.Customer, evs...); err == nil || !isTransient(err) {
		t.Fatalf("throttled chunk: %v", err)
	}
	if r := e.rec(state.Customer, 5); r.Status != state.Failed || !r.Transient {
		t.Fatalf("row after throttling: %s transient %v", r.Status, r.Transient)
	}
	e.fdv.setFail(nil)
	if err := e.deliver(e.eng, state.Customer, evs...); err != nil {
		t.Fatalf("redelivery: %v", err)
	}
	if n := e.srv.Count("contacts"); n != 30 {
		t.Fatalf("%d contacts, want 30", n)
	}
}

// BenchmarkImportCustomerChunks imports 1000 customers as intake would queue them
// (chunk messages) and reports Dataverse requests per customer.
func BenchmarkImportCustomerChunks(b *testing.B) {
	for n := 0; n < b.N; n++ {
		b.StopTimer()
		e := newEnv(b, envOptions{})
		tmpl := example(b, "customer-created.json")[0]
		var evs []*nop.Event
		for i := 1; i <= 1000; i++ {
			evs = append(evs, customerEvent(b, tmpl, i, 1, fmt.Sprintf("bench%d@example.test", i), nil))
		}
		msgs, err := nop.Messages(state.Customer, evs)
		if err != nil {
			b.Fatal(err)
		}
		before := e.srv.Stats().Requests
		b.StartTimer()
		for _, m := range msgs {
			if err := e.eng.HandleMessage(e.ctx, "customers", m.Body); err != nil {
				b.Fatal(err)
			}
		}
		b.StopTimer()
		b.ReportMetric(float64(e.srv.Stats().Requests-before)/1000, "requests/customer")
		if e.srv.Count("contacts") != 1000 {
			b.Fatalf("%d contacts", e.srv.Count("contacts"))
		}
	}
}

// BenchmarkImportProductChunks imports 1000 products (chunk messages) and reports
// Dataverse requests per product (publishing is one request per product).
func BenchmarkImportProductChunks(b *testing.B) {
	for n := 0; n < b.N; n++ {
		b.StopTimer()
		e := newEnv(b, envOptions{})
		var evs []*nop.Event
		for i := 1; i <= 1000; i++ {
			evs = append(evs, productEvent(b, i, 1, nil))
		}
		msgs, err := nop.Messages(state.Product, evs)
		if err != nil {
			b.Fatal(err)
		}
		before := e.srv.Stats().Requests
		b.StartTimer()
		for _, m := range msgs {
			if err := e.eng.HandleMessage(e.ctx, "products", m.Body); err != nil {
				b.Fatal(err)
			}
		}
		b.StopTimer()
		b.ReportMetric(float64(e.srv.Stats().Requests-before)/1000, "requests/product")
		if e.srv.Count("products") != 1000 || e.srv.Count("productpricelevels") != 1000 {
			b.Fatalf("%d products", e.srv.Count("products"))
		}
	}
}

// Dynamics 365 publishes one product record per request ("You cannot publish multiple
// product family, product, or bundle records at once"): a chunk's products are published
// each by its own request (the parts of a $batch), never with an UpdateMultiple setting
// statecode.
func TestBulkPublishesOneProductPerRequest(t *testing.T) {
	e := newEnv(t, envOptions{})
	bulkStates := 0
	e.fdv.setFail(func(op, set string, recs []dataverse.Record) error {
		if op == "UpdateMultiple" && set == "products" && len(recs) > 0 && recs[0]["statecode"] != nil {
			bulkStates++
		}
		return nil
	})
	if err := e.deliver(e.eng, state.Product, productEvent(t, 100, 1, nil)); err != nil { // bootstrap
		t.Fatal(err)
	}
	evs := newProducts(t, 40)
	before := e.srv.Stats().Requests
	if err := e.deliver(e.eng, state.Product, evs...); err != nil {
		t.Fatal(err)
	}
	// The 40 publishes travel as the parts of $batch requests (at least 10 parts each,
	// TestBulkPublishSpreadOverSlots), as do the 40 price list items: not as 40 requests.
	if n := e.srv.Stats().Requests - before; n > 20 {
		t.Errorf("%d requests for a chunk of 40 new products", n)
	}
	for i := 1; i < 41; i++ {
		if p := e.row("products", productID(1, i)); numOf(p["statecode"]) != productActive {
			t.Fatalf("product %d state %v", i, p["statecode"])
		}
	}
	if bulkStates != 0 {
		t.Errorf("%d UpdateMultiple requests setting product states", bulkStates)
	}
}

// familyPublishDV counts family publishes (PublishProductHierarchy): sent alone, and as
// the parts of $batch requests.
type familyPublishDV struct {
	Dataverse
	mu             sync.Mutex
	single, parts  int
	batchesWithOne int
}

func (f *familyPublishDV) PublishProductHierarchy(ctx context.Context, id string) error {
	f.mu.Lock()
	f.single++
	f.mu.Unlock()
	return f.Dataverse.PublishProductHierarchy(ctx, id)
}

func (f *familyPublishDV) Batch(ctx context.Context, parts ...dataverse.BatchPart) ([]dataverse.BatchResult, error) {
	n := 0
	for _, p := range parts {
		if op, ok := p.(dataverse.Op); ok && strings.HasSuffix(op.Path, "/Microsoft.Dynamics.CRM.PublishProductHierarchy") {
			n++
		}
	}
	f.mu.Lock()
	f.parts += n
	if n > 0 {
		f.batchesWithOne++
	}
	f.mu.Unlock()
	return f.Dataverse.Batch(ctx, parts...)
}

// A chunk's new families are published as the parts of $batch requests, as its products
// are, not by a request each: an import's families would otherwise spend the request
// limit (6,000 per 300 s) a request per family. Their children, in the same chunk, are
// published after them and land in their families.
func TestBulkPublishesFamiliesInBatches(t *testing.T) {
	e := newEnv(t, envOptions{})
	if err := e.deliver(e.eng, state.Product, productEvent(t, 100, 1, nil)); err != nil { // bootstrap
		t.Fatal(err)
	}
	f := &familyPublishDV{Dataverse: e.fdv.Dataverse}
	e.fdv.Dataverse = f
	var evs []*nop.Event
	for fam := 1000; fam < 1012; fam++ {
		for c := 1; c <= 3; c++ {
			id := fam*10 + c
			evs = append(evs, productEvent(t, id, 1, func(d map[string]any) { d["parentGroupedProductId"] = fam }))
		}
		evs = append(evs, productEvent(t, fam, 1, func(d map[string]any) { d["productType"] = 10 }))
	}
	if err := e.deliver(e.eng, state.Product, evs...); err != nil {
		t.Fatal(err)
	}
	if f.single != 0 || f.parts != 12 || f.batchesWithOne > 2 {
		t.Errorf("12 new families: %d published alone, %d as $batch parts in %d requests; want 0 and 12 in one or two",
			f.single, f.parts, f.batchesWithOne)
	}
	for fam := 1000; fam < 1012; fam++ {
		if p := e.row("products", productID(1, fam)); numOf(p["statecode"]) != productActive {
			t.Fatalf("family %d: state %v, want Active", fam, p["statecode"])
		}
		for c := 1; c <= 3; c++ {
			p := e.row("products", productID(1, fam*10+c))
			if numOf(p["statecode"]) != productActive || !strings.EqualFold(fmt.Sprint(p["_parentproductid_value"]), productID(1, fam)) {
				t.Fatalf("product %d: state %v, parent %v; want Active in family %d", fam*10+c, p["statecode"], p["_parentproductid_value"], fam)
			}
		}
	}
}

// A chunk of new products claims their numbers in one SaveDocs call (one Table Storage
// transaction per hundred), not a SaveDoc each; the claims name each product's owner,
// and a number two products of the chunk share is claimed by the first. A chunk that
// changes nothing claims nothing again.
func TestBulkClaimsProductNumbersTogether(t *testing.T) {
	e := newEnv(t, envOptions{})
	eng, st := countingEngine(t, e, nil)
	if err := e.deliver(eng, state.Product, productEvent(t, 100, 1, nil)); err != nil { // bootstrap
		t.Fatal(err)
	}
	evs := newProducts(t, 40)
	evs[39] = productEvent(t, 40, 1, func(d map[string]any) { d["sku"] = "SKU-7" }) // product 7's number
	st.mu.Lock()
	st.docSaves, st.saveDocs, st.docsBatched = nil, nil, nil
	st.mu.Unlock()
	if err := e.deliver(eng, state.Product, evs...); err != nil {
		t.Fatal(err)
	}
	if st.docSaves[productNumberKind] != 0 || st.saveDocs[productNumberKind] != 1 || st.docsBatched[productNumberKind] != 39 {
		t.Errorf("%d SaveDoc and %d SaveDocs (%d docs) of product numbers, want 0 and 1 (39 claims: product 40 fell back to NOP-40)",
			st.docSaves[productNumberKind], st.saveDocs[productNumberKind], st.docsBatched[productNumberKind])
	}
	for _, i := range []int{1, 7, 39} {
		d, err := e.st.GetDoc(context.Background(), productNumberKind, fmt.Sprintf("sku-%d", i))
		if err != nil || string(d.Value) != ownerKey(1, i) {
			t.Fatalf("claim of SKU-%d: %v, %v; want owner %s", i, d, err, ownerKey(1, i))
		}
	}
	if p := e.row("products", productID(1, 40)); p["productnumber"] != "NOP-40" {
		t.Errorf("product 40 (SKU-7, held by product 7): product number %v, want NOP-40", p["productnumber"])
	}
	if err := e.deliver(eng, state.Product, evs...); err != nil {
		t.Fatal(err)
	}
	if st.saveDocs[productNumberKind] != 1 || st.docSaves[productNumberKind] != 0 {
		t.Errorf("the same chunk again: %d SaveDocs and %d SaveDoc of product numbers in all, want still 1 and 0",
			st.saveDocs[productNumberKind], st.docSaves[productNumberKind])
	}
}

// A product-number claim the state store could not write is not taken as made: the
// product's record forgets the number, and the product's next write claims it.
func TestBulkClaimFailureClaimsAgain(t *testing.T) {
	e := newEnv(t, envOptions{})
	if err := e.deliver(e.eng, state.Product, productEvent(t, 100, 1, nil)); err != nil { // bootstrap
		t.Fatal(err)
	}
	e.st.mu.Lock()
	e.st.failDocs = productNumberKind
	e.st.mu.Unlock()
	if err := e.deliver(e.eng, state.Product, newProducts(t, 10)...); err != nil {
		t.Fatal(err)
	}
	for _, i := range []int{1, 10} {
		if r := e.rec(state.Product, i); r.Status != state.Synced || r.Extra[extraProductNumber] != "" {
			t.Fatalf("product %d after a failed claim: %s, product number kept %q", i, r.Status, r.Extra[extraProductNumber])
		}
		if _, err := e.st.GetDoc(context.Background(), productNumberKind, fmt.Sprintf("sku-%d", i)); !errors.Is(err, state.ErrNotFound) {
			t.Fatalf("claim of SKU-%d: %v, want none", i, err)
		}
	}
	e.st.mu.Lock()
	e.st.failDocs = ""
	e.st.mu.Unlock()
	var v2 []*nop.Event
	for i := 1; i <= 10; i++ {
		v2 = append(v2, productEvent(t, i, 2, func(d map[string]any) { d["name"] = "v2" }))
	}
	if err := e.deliver(e.eng, state.Product, v2...); err != nil {
		t.Fatal(err)
	}
	for _, i := range []int{1, 10} {
		d, err := e.st.GetDoc(context.Background(), productNumberKind, fmt.Sprintf("sku-%d", i))
		if err != nil || string(d.Value) != ownerKey(1, i) {
			t.Fatalf("claim of SKU-%d after the next write: %v, %v", i, d, err)
		}
		if p := e.row("products", productID(1, i)); p["productnumber"] != fmt.Sprintf("SKU-%d", i) {
			t.Fatalf("product %d: number %v", i, p["productnumber"])
		}
	}
}

// Re-importing Active products (a resync, a price update for the
// whole catalogue) stays in bulk, whether the environment updates Active products in
// place or only after a revision.
func TestBulkUpdateActiveProducts(t *testing.T) {
	for _, v := range []struct {
		name string
		sim  func(*dataversetest.Options)
	}{
		{"revise first", nil},
		{"in place", func(o *dataversetest.Options) { o.ActiveProductsUpdatable = true }},
	} {
		t.Run(v.name, func(t *testing.T) {
			e := newEnv(t, envOptions{sim: v.sim})
			chunk := func(seq int64, price string) {
				var evs []*nop.Event
				for i := 1; i <= 60; i++ {
					evs = append(evs, productEvent(t, i, seq, func(d map[string]any) { d["price"] = price }))
				}
				if err := e.deliver(e.eng, state.Product, evs...); err != nil {
					t.Fatal(err)
				}
			}
			chunk(1, "10.0000")
			before := e.srv.Stats().Requests
			chunk(2, "12.5000")
			// Where the environment updates Active products only after a revision, revising
			// and publishing again cost one request each per product (Dynamics 365 takes
			// product state changes one record per request); everything else goes in bulk.
			limit := 15
			if v.sim == nil {
				limit += 2 * 60
			}
			if n := e.srv.Stats().Requests - before; n > limit {
				t.Errorf("%d requests to update 60 Active products, want ≤ %d: %v", n, limit, e.fdv.counts())
			}
			if n := e.fdv.count("Upsert products") + e.fdv.count("Upsert productpricelevels"); n != 0 {
				t.Errorf("%d single product or price list item writes", n)
			}
			for i := 1; i <= 60; i++ {
				p := e.row("products", productID(1, i))
				if numOf(p["price"]) != 12.5 || numOf(p["statecode"]) != productActive {
					t.Fatalf("product %d: price %v state %v", i, p["price"], p["statecode"])
				}
			}
			if items := e.srv.Rows("productpricelevels"); len(items) != 60 || numOf(items[0]["amount"]) != 12.5 {
				t.Fatalf("price list items: %d, first %v", len(items), items[0]["amount"])
			}
		})
	}
}

// Faults everywhere: with 503s on a fifth of the requests, customers and products
// (chunks and single events, families included) redelivered until acknowledged end with
// exactly one row each, holding the newest data.
func TestConvergesUnderFaults(t *testing.T) {
	e := newEnv(t, envOptions{})
	tmpl := example(t, "customer-created.json")[0]
	var customers, products []*nop.Event
	for i := 1; i <= 40; i++ {
		customers = append(customers, customerEvent(t, tmpl, i, 1, fmt.Sprintf("f%d@example.test", i), nil))
		products = append(products, productEvent(t, i, 1, func(d map[string]any) {
			if i > 30 {
				d["parentGroupedProductId"] = 1000 + i%3 // families arrive later
			}
		}))
	}
	var later []*nop.Event
	for i := 1; i <= 40; i += 3 {
		later = append(later, customerEvent(t, tmpl, i, 2, fmt.Sprintf("f%d@example.test", i), func(d map[string]any) { d["firstName"] = "v2" }))
	}
	var families []*nop.Event
	for f := 1000; f < 1003; f++ {
		families = append(families, productEvent(t, f, 1, func(d map[string]any) { d["productType"] = 10 }))
	}
	e.srv.SetFaults(dataversetest.Faults{Error503Rate: 0.3})
	redeliveries := 0
	until := func(entity state.Entity, evs ...*nop.Event) {
		t.Helper()
		for attempt := 0; ; attempt++ {
			err := e.deliver(e.eng, entity, evs...)
			if err == nil {
				return
			}
			redeliveries++
			if !isTransient(err) || attempt == 200 {
				t.Fatalf("not applied after %d deliveries: %v", attempt+1, err)
			}
		}
	}
	until(state.Customer, customers...)
	until(state.Product, products...)
	for _, ev := range later {
		until(state.Customer, ev)
	}
	until(state.Product, families...)
	e.srv.SetFaults(dataversetest.Faults{})
	if e.srv.Stats().Injected503 == 0 || redeliveries == 0 {
		t.Fatalf("no faults reached the engine (%d injected, %d redeliveries)", e.srv.Stats().Injected503, redeliveries)
	}
	t.Logf("%d 503s injected, %d redeliveries", e.srv.Stats().Injected503, redeliveries)

	if n := e.srv.Count("contacts"); n != 40 {
		t.Errorf("%d contacts, want 40", n)
	}
	if n := e.srv.Count("products"); n != 43 {
		t.Errorf("%d products, want 43", n)
	}
	if n := e.srv.Count("productpricelevels"); n != 40 {
		t.Errorf("%d price list items, want 40", n)
	}
	for i := 1; i <= 40; i++ {
		want := "Ada"
		if i%3 == 1 {
			want = "v2"
		}
		if got := e.row("contacts", contactID(1, i))["firstname"]; got != want {
			t.Errorf("customer %d: firstname %v, want %s", i, got, want)
		}
		p := e.row("products", productID(1, i))
		if numOf(p["statecode"]) != productActive {
			t.Errorf("product %d: state %v", i, p["statecode"])
		}
		if i > 30 && !strings.EqualFold(fmt.Sprint(p["_parentproductid_value"]), productID(1, 1000+i%3)) {
			t.Errorf("product %d: parent %v", i, p["_parentproductid_value"])
		}
	}
	for f := 1000; f < 1003; f++ {
		if p := e.row("products", productID(1, f)); p["productnumber"] != fmt.Sprintf("SKU-%d", f) || numOf(p["statecode"]) != productActive {
			t.Errorf("family %d: %v %v", f, p["productnumber"], p["statecode"])
		}
	}
}

// An import chunk costs requests per bulk request, not per row: the request limit counts
// requests (Microsoft Learn: Dataverse api-limits), so 300 new customers take one email look-up, the one-time check
// of contact's bulk messages and CreateMultiple requests of the client's bulk size, and
// their update look-up-free UpdateMultiple requests.
func TestBulkChunkCustomersRequests(t *testing.T) {
	e := newEnv(t, envOptions{})
	tmpl := example(t, "customer-created.json")[0]
	chunk := func(ver int) []*nop.Event {
		var evs []*nop.Event
		for i := 1; i <= 300; i++ {
			evs = append(evs, customerEvent(t, tmpl, i, int64(ver), fmt.Sprintf("customer.number.%d@example.test", i), func(d map[string]any) {
				d["company"] = nil
				d["lastName"] = fmt.Sprintf("Version%d", ver)
			}))
		}
		return evs
	}
	before := e.srv.Stats()
	if err := e.deliver(e.eng, state.Customer, chunk(1)...); err != nil {
		t.Fatal(err)
	}
	after := e.srv.Stats()
	bulks := (300 + dataverse.DefaultBulkChunkSize - 1) / dataverse.DefaultBulkChunkSize
	if n := after.Requests - before.Requests; n != 2+bulks {
		t.Errorf("300 new customers: %d requests, want %d (one look-up, one sdkmessagefilters, %d CreateMultiple)", n, 2+bulks, bulks)
	}
	if n := e.srv.Count("contacts"); n != 300 {
		t.Fatalf("%d contacts, want 300", n)
	}
	if err := e.deliver(e.eng, state.Customer, chunk(2)...); err != nil {
		t.Fatal(err)
	}
	if n := e.srv.Stats().Requests - after.Requests; n != bulks {
		t.Errorf("300 changed customers: %d requests, want %d (UpdateMultiple)", n, bulks)
	}
	if c := e.row("contacts", contactID(1, 300)); c["lastname"] != "Version2" {
		t.Errorf("contact 300: %v", c["lastname"])
	}
}

// countingStore counts the state store's calls (in Azure, each is at least one round
// trip to Table Storage).
type countingStore struct {
	state.Store
	mu                             sync.Mutex
	gets, saves, getMany, saveMany int
	batched                        int            // records saved through SaveMany
	docSaves, saveDocs             map[string]int // SaveDoc and SaveDocs calls, by doc kind
	docsBatched                    map[string]int // docs saved through SaveDocs, by kind
}

func (s *countingStore) SaveDoc(ctx context.Context, d *state.Doc) error {
	s.mu.Lock()
	if s.docSaves == nil {
		s.docSaves = map[string]int{}
	}
	s.docSaves[d.Kind]++
	s.mu.Unlock()
	return s.Store.SaveDoc(ctx, d)
}

func (s *countingStore) SaveDocs(ctx context.Context, ds []*state.Doc) []error {
	s.mu.Lock()
	if s.saveDocs == nil {
		s.saveDocs, s.docsBatched = map[string]int{}, map[string]int{}
	}
	kinds := map[string]bool{}
	for _, d := range ds {
		kinds[d.Kind] = true
		s.docsBatched[d.Kind]++
	}
	for k := range kinds {
		s.saveDocs[k]++
	}
	s.mu.Unlock()
	return s.Store.SaveDocs(ctx, ds)
}

func (s *countingStore) Get(ctx context.Context, e state.Entity, id string) (*state.Record, error) {
	s.mu.Lock()
	s.gets++
	s.mu.Unlock()
	return s.Store.Get(ctx, e, id)
}

func (s *countingStore) Save(ctx context.Context, rec *state.Record) error {
	s.mu.Lock()
	s.saves++
	s.mu.Unlock()
	return s.Store.Save(ctx, rec)
}

func (s *countingStore) GetMany(ctx context.Context, e state.Entity, ids []string) (map[string]*state.Record, error) {
	s.mu.Lock()
	s.getMany++
	s.mu.Unlock()
	return s.Store.GetMany(ctx, e, ids)
}

func (s *countingStore) SaveMany(ctx context.Context, recs []*state.Record) []error {
	s.mu.Lock()
	s.saveMany++
	s.batched += len(recs)
	s.mu.Unlock()
	return s.Store.SaveMany(ctx, recs)
}

// countingEngine is an engine on e whose state store calls are counted; a lease another
// writer holds is reported busy at once (BusyWait -1). now is its clock (nil: time.Now).
func countingEngine(t *testing.T, e *env, now func() time.Time) (*Engine, *countingStore) {
	t.Helper()
	st := &countingStore{Store: e.st}
	eng, err := New(Options{DV: e.fdv, State: st, Settings: e.set, Concurrency: 4, BusyWait: -1, Now: now,
		Log: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	return eng, st
}

// A chunk's claims and results go to the state store in batches: one GetMany for the
// claims' reads, one SaveMany for the claims, one for the results, instead of a Get and
// two Saves per entity (three Table Storage round trips each in Azure). An entity
// another writer holds is claimed on its own (here: found busy, so retried later).
func TestChunkStateInBatches(t *testing.T) {
	e := newEnv(t, envOptions{})
	eng, st := countingEngine(t, e, nil)
	tmpl := example(t, "customer-created.json")[0]
	held := &state.Record{Entity: state.Customer, ID: "7", Status: state.Pending, LeaseOwner: "other/x",
		LeaseUntil: time.Now().Add(time.Hour)}
	if err := e.st.Save(context.Background(), held); err != nil {
		t.Fatal(err)
	}
	var evs []*nop.Event
	for i := 1; i <= 200; i++ {
		evs = append(evs, customerEvent(t, tmpl, i, 1, fmt.Sprintf("s%d@example.test", i), nil))
	}
	if msgs, err := nop.Messages(state.Customer, evs); err != nil || len(msgs) != 1 {
		t.Fatalf("%d messages, %v; the test wants one chunk", len(msgs), err)
	}
	err := e.deliver(eng, state.Customer, evs...)
	if err == nil || !strings.Contains(err.Error(), "1 of 200") {
		t.Fatalf("chunk: %v, want customer 7 reported busy", err)
	}
	if st.getMany != 1 || st.saveMany != 2 || st.batched != 398 {
		t.Errorf("%d GetMany, %d SaveMany of %d records; want 1 and 2 (199 claims, 199 results)", st.getMany, st.saveMany, st.batched)
	}
	if st.gets > 1 || st.saves > 0 {
		t.Errorf("%d Gets and %d Saves for a chunk of 200 with one entity held: want 1 Get (the held one), no Save", st.gets, st.saves)
	}
	for _, id := range []int{1, 8, 200} {
		if r := e.rec(state.Customer, id); r.Status != state.Synced || r.LeaseOwner != "" {
			t.Fatalf("customer %d: %s %q, lease %q", id, r.Status, r.Reason, r.LeaseOwner)
		}
	}
	if r := e.rec(state.Customer, 7); r.Status != state.Pending || r.LeaseOwner != "other/x" {
		t.Fatalf("customer 7 (held): %s, lease %q", r.Status, r.LeaseOwner)
	}
	counts, err := e.st.Counts(context.Background())
	if err != nil || counts[state.Customer][state.Synced] != 199 || counts[state.Customer][state.Pending] != 1 {
		t.Fatalf("counts %v, %v; want 199 synced customers and 1 pending", counts, err)
	}
}

// An import of customers the state has never seen: once a chunk's read finds no record,
// the next chunks claim by creating their records, without reading first. A record that
// exists after all refuses its create and is claimed on its own, as after a read: an
// older event does not overwrite a newer one, a held lease is not taken. Chunks whose
// records mostly exist read first again.
func TestChunkOfUnseenEntitiesClaimsWithoutReading(t *testing.T) {
	e := newEnv(t, envOptions{})
	var skew atomic.Int64 // how far the engine's clock is ahead
	eng, st := countingEngine(t, e, func() time.Time { return time.Now().Add(time.Duration(skew.Load())) })
	tmpl := example(t, "customer-created.json")[0]
	chunk := func(from, to int, seq int64) []*nop.Event {
		var evs []*nop.Event
		for i := from; i <= to; i++ {
			evs = append(evs, customerEvent(t, tmpl, i, seq, fmt.Sprintf("v%d-%d@example.test", seq, i), nil))
		}
		if msgs, err := nop.Messages(state.Customer, evs); err != nil || len(msgs) != 1 {
			t.Fatalf("%d messages, %v; the test wants one chunk", len(msgs), err)
		}
		return evs
	}
	if err := e.deliver(eng, state.Customer, chunk(1, 200, 1)...); err != nil {
		t.Fatal(err)
	}
	if st.getMany != 1 {
		t.Fatalf("first chunk: %d GetMany, want 1", st.getMany)
	}
	// Customer 250 was applied at a later version meanwhile (a live event); customer 260
	// is being written by another instance.
	if err := e.deliver(eng, state.Customer, customerEvent(t, tmpl, 250, 3, "v3-250@example.test", nil)); err != nil {
		t.Fatal(err)
	}
	held := &state.Record{Entity: state.Customer, ID: "260", Status: state.Pending, LeaseOwner: "other/x",
		LeaseUntil: time.Now().Add(time.Hour)}
	if err := e.st.Save(context.Background(), held); err != nil {
		t.Fatal(err)
	}
	gets := st.gets
	err := e.deliver(eng, state.Customer, chunk(201, 400, 1)...)
	if err == nil || !strings.Contains(err.Error(), "1 of 200") {
		t.Fatalf("second chunk: %v, want customer 260 reported busy", err)
	}
	if st.getMany != 1 {
		t.Errorf("second chunk of unseen customers: %d GetMany in all, want still 1 (claims without reading)", st.getMany)
	}
	if n := st.gets - gets; n != 2 {
		t.Errorf("second chunk: %d Gets, want 2 (the two customers whose records existed)", n)
	}
	if c := e.row("contacts", contactID(1, 250)); c["emailaddress1"] != "v3-250@example.test" {
		t.Errorf("customer 250: %v, want its later version kept", c["emailaddress1"])
	}
	if r := e.rec(state.Customer, 260); r.Status != state.Pending || r.LeaseOwner != "other/x" {
		t.Errorf("customer 260 (held): %s, lease %q", r.Status, r.LeaseOwner)
	}
	for _, id := range []int{201, 300, 400} {
		if r := e.rec(state.Customer, id); r.Status != state.Synced || r.LeaseOwner != "" {
			t.Fatalf("customer %d: %s %q, lease %q", id, r.Status, r.Reason, r.LeaseOwner)
		}
	}

	// The same chunk delivered again (a redelivery): its first claim, made alone, is
	// refused, so it reads first and finds its events applied, without a claim of its own
	// for each.
	gets, saves := st.gets, st.saveMany
	err = e.deliver(eng, state.Customer, chunk(201, 400, 1)...)
	if err == nil || !strings.Contains(err.Error(), "1 of 200") {
		t.Fatalf("second chunk again: %v, want customer 260 reported busy", err)
	}
	if st.getMany != 2 || st.gets-gets != 1 || st.saveMany-saves != 1 {
		t.Errorf("second chunk again: %d GetMany in all (want 2), %d Gets (want 1: the held one), %d SaveMany (want 1: the first claim)",
			st.getMany, st.gets-gets, st.saveMany-saves)
	}

	// A minute later, new customers again: the chunk reads first (what the last chunks
	// found no longer says what this one will), then the next skips its read again.
	skew.Store(int64(unseenFor + time.Second))
	if err := e.deliver(eng, state.Customer, chunk(401, 600, 1)...); err != nil {
		t.Fatal(err)
	}
	if st.getMany != 3 {
		t.Errorf("a chunk %s after the last: %d GetMany in all, want 3 (reads first)", unseenFor, st.getMany)
	}
	if err := e.deliver(eng, state.Customer, chunk(601, 800, 1)...); err != nil {
		t.Fatal(err)
	}
	if st.getMany != 3 {
		t.Errorf("the chunk after it: %d GetMany in all, want still 3", st.getMany)
	}

	// The first 200 again, at version 2: the first claim, made alone, is refused, so the
	// chunk reads first and every customer is applied; so does the next chunk.
	if err := e.deliver(eng, state.Customer, chunk(1, 200, 2)...); err != nil {
		t.Fatal(err)
	}
	if c := e.row("contacts", contactID(1, 17)); c["emailaddress1"] != "v2-17@example.test" {
		t.Errorf("customer 17 after version 2: %v", c["emailaddress1"])
	}
	if st.getMany != 4 {
		t.Errorf("%d GetMany, want 4 (reads first)", st.getMany)
	}
	if err := e.deliver(eng, state.Customer, chunk(1, 200, 3)...); err != nil {
		t.Fatal(err)
	}
	if st.getMany != 5 {
		t.Errorf("a chunk after one whose records existed: %d GetMany in all, want 5 (reads first again)", st.getMany)
	}
	if c := e.row("contacts", contactID(1, 17)); c["emailaddress1"] != "v3-17@example.test" {
		t.Errorf("customer 17 after version 3: %v", c["emailaddress1"])
	}

	// New customers again (a read finds none), then a chunk whose first customer is new
	// but whose others exist: the first claim goes through, the others' creates are
	// refused and each is claimed on its own and applied; the chunk after reads first.
	if err := e.deliver(eng, state.Customer, chunk(1001, 1200, 1)...); err != nil {
		t.Fatal(err)
	}
	mixed := append(chunk(1300, 1300, 1), chunk(2, 200, 4)...)
	if err := e.deliver(eng, state.Customer, mixed...); err != nil {
		t.Fatal(err)
	}
	if c := e.row("contacts", contactID(1, 17)); c["emailaddress1"] != "v4-17@example.test" {
		t.Errorf("customer 17 after version 4: %v", c["emailaddress1"])
	}
	n := st.getMany
	if err := e.deliver(eng, state.Customer, chunk(1401, 1600, 1)...); err != nil {
		t.Fatal(err)
	}
	if st.getMany != n+1 {
		t.Errorf("a chunk after one whose creates were refused: %d GetMany, want 1 (reads first)", st.getMany-n)
	}
	counts, err := e.st.Counts(context.Background())
	if err != nil || counts[state.Customer][state.Synced] != 1200 || counts[state.Customer][state.Pending] != 1 {
		t.Fatalf("counts %v, %v; want 1,200 synced customers and 1 pending", counts, err)
	}
}

// Price list items go to a table without the bulk messages (productpricelevel): an import
// finds that out once and writes them as change sets, a few requests per chunk. Before,
// each chunk's refused request was halved down to single writes (about half a request
// per row wasted, then a request per row).
func TestBulkPriceListItemsWithoutBulkMessagesCostFewRequests(t *testing.T) {
	e := newEnv(t, envOptions{})
	evs := newProducts(t, 200)
	before := e.srv.Stats()
	if err := e.deliver(e.eng, state.Product, evs...); err != nil {
		t.Fatalf("chunk: %v", err)
	}
	after := e.srv.Stats()
	if n := e.srv.Count("productpricelevels"); n != 200 {
		t.Fatalf("%d price list items, want 200", n)
	}
	requests := after.Requests - before.Requests
	t.Logf("200 new products: %d requests, %d $batch parts", requests, after.BatchParts-before.BatchParts)
	// products are published one per request; everything else takes a few requests per chunk
	if requests > 200+40 {
		t.Errorf("200 new products took %d requests; the price list items should take a few change sets", requests)
	}
}

// A chunk of customers with companies resolves their parent accounts together: one
// look-up for all the companies and one CreateMultiple for the missing ones, not a
// look-up and a write per company. An existing account (matched by name, whatever the
// case) is used, not duplicated; customers of the same company share one account.
func TestBulkChunkCustomersAccountsTogether(t *testing.T) {
	e := newEnv(t, envOptions{})
	existing, err := e.dv.Create(e.ctx, "accounts", dataverse.Record{"name": "Company 7"})
	if err != nil {
		t.Fatal(err)
	}
	tmpl := example(t, "customer-created.json")[0]
	company := func(i int) string {
		if i%2 == 0 {
			return fmt.Sprintf("COMPANY %d", i%60) // 60 companies, two spellings each
		}
		return fmt.Sprintf("Company %d", i%60)
	}
	var evs []*nop.Event
	for i := 1; i <= 240; i++ {
		evs = append(evs, customerEvent(t, tmpl, i, 1, fmt.Sprintf("customer.%d@example.test", i), func(d map[string]any) {
			d["company"] = company(i)
		}))
	}
	// The bulk messages' support is looked up once per table, before the count.
	if err := e.deliver(e.eng, state.Customer, evs[:3]...); err != nil {
		t.Fatal(err)
	}
	before := e.srv.Stats()
	if err := e.deliver(e.eng, state.Customer, evs[3:]...); err != nil {
		t.Fatal(err)
	}
	n := e.srv.Stats().Requests - before.Requests
	// 237 customers: one email look-up, one account look-up, one CreateMultiple of the
	// accounts not created with the first three, three CreateMultiple of contacts.
	if want := 1 + 1 + 1 + 3; n != want {
		t.Errorf("237 customers of 60 companies: %d requests, want %d", n, want)
	}
	if got := e.srv.Count("accounts"); got != 60 {
		t.Errorf("%d accounts, want 60 (one per company, the existing one kept)", got)
	}
	for _, i := range []int{7, 67, 14, 74, 240} {
		c := e.row("contacts", contactID(1, i))
		accs := e.where("accounts", "name", company(i))
		if len(accs) != 1 {
			t.Fatalf("customer %d: %d accounts named %q", i, len(accs), company(i))
		}
		want := accs[0]["accountid"].(string)
		if i%60 == 7 && !strings.EqualFold(want, existing) {
			t.Errorf("company 7 has account %s, want the existing %s", want, existing)
		}
		if got := fmt.Sprint(c["_parentcustomerid_value"]); !strings.EqualFold(got, want) {
			t.Errorf("customer %d: parent %s, want %s", i, got, want)
		}
	}
}

// Chunks delivered at once that name the same companies create each account once: the
// second finds what the first created, rather than both creating the same rows (a bulk
// create of a row that exists fails, and isolating it costs a request per half).
func TestBulkConcurrentChunksShareAccounts(t *testing.T) {
	e := newEnv(t, envOptions{})
	tmpl := example(t, "customer-created.json")[0]
	chunks := make([][]*nop.Event, 4)
	for i := 1; i <= 4*60; i++ {
		k := (i - 1) / 60
		chunks[k] = append(chunks[k], customerEvent(t, tmpl, i, 1, fmt.Sprintf("customer.%d@example.test", i), func(d map[string]any) {
			d["company"] = fmt.Sprintf("Shared %d", i%30)
		}))
	}
	var wg sync.WaitGroup
	errs := make([]error, len(chunks))
	for k, c := range chunks {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[k] = e.deliver(e.eng, state.Customer, c...)
		}()
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	if n, m := e.fdv.count("CreateMultiple accounts"), e.fdv.count("Upsert accounts"); n != 1 || m != 0 {
		t.Errorf("4 chunks at once naming the same 30 companies: %d CreateMultiple and %d single writes of accounts, want 1 and 0", n, m)
	}
	if got := e.srv.Count("accounts"); got != 30 {
		t.Errorf("%d accounts, want 30", got)
	}
}
