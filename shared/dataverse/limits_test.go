package dataverse_test

// The Dataverse limits every request must respect, against the simulator: bulk support
// per table, bulk requests split on timeouts, non-idempotent requests sent once, part
// 429s in a $batch, and no return=representation without $select.

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/nopsync/nopsync/shared/dataverse"
	"github.com/nopsync/nopsync/shared/dataverse/dataversetest"
)

// sent is one request as it left the client.
type sent struct {
	method, path, query string
	header              http.Header
	body                []byte
}

// recordingTransport keeps every Web API request the client sends.
type recordingTransport struct {
	next *http.Client
	mu   sync.Mutex
	reqs []sent
}

func (rt *recordingTransport) Do(r *http.Request) (*http.Response, error) {
	if strings.Contains(r.URL.Path, "/api/data/") {
		var body []byte
		if r.Body != nil {
			body, _ = io.ReadAll(r.Body)
			r.Body.Close()
			r.Body = io.NopCloser(bytes.NewReader(body))
		}
		rt.mu.Lock()
		rt.reqs = append(rt.reqs, sent{method: r.Method, path: r.URL.Path[strings.Index(r.URL.Path, "/v9.2/")+6:],
			query: r.URL.RawQuery, header: r.Header.Clone(), body: body})
		rt.mu.Unlock()
	}
	return rt.next.Do(r)
}

func (rt *recordingTransport) all() []sent {
	rt.mu.Lock()
	defer rt.mu.Unlock()
	return append([]sent(nil), rt.reqs...)
}

func (rt *recordingTransport) count(path string) int {
	n := 0
	for _, r := range rt.all() {
		if r.path == path {
			n++
		}
	}
	return n
}

func newRecordingSim(t *testing.T, so dataversetest.Options, mod func(*dataverse.Options)) (*simEnv, *recordingTransport) {
	rt := &recordingTransport{}
	e := newSim(t, so, func(o *dataverse.Options) {
		o.Transport = rt
		if mod != nil {
			mod(o)
		}
	})
	rt.next = e.s.HTTPClient()
	return e, rt
}

func contactRows(n int, prefix string) []dataverse.Record {
	recs := make([]dataverse.Record, n)
	for i := range recs {
		recs[i] = dataverse.Record{"contactid": uuid.NewString(), "lastname": fmt.Sprintf("%s%d", prefix, i)}
	}
	return recs
}

// A table without the bulk messages is found out once, from sdkmessagefilters or from the
// first refusal (whatever its status), and written with one $batch change set per chunk:
// 1000 rows cost one check and ten requests, the next 1000 ten. Before, a refusal other
// than a 404 failed every chunk (the sync engine then halved each one down to single
// writes), and a 5xx refusal was sent again until the retries ran out.
func TestSimBulkSupportDecidedOncePerTable(t *testing.T) {
	for _, tc := range []struct {
		name string
		so   dataversetest.Options
	}{
		{"filters, 400 refusal", dataversetest.Options{BulkUnsupported: []string{"contacts"}}},
		{"filters, 500 refusal", dataversetest.Options{BulkUnsupported: []string{"contacts"}, BulkRefusalStatus: 500}},
		{"no filters, 500 refusal", dataversetest.Options{BulkUnsupported: []string{"contacts"}, BulkRefusalStatus: 500, NoMessageFilters: true}},
		{"no filters, 400 refusal", dataversetest.Options{BulkUnsupported: []string{"contacts"}, NoMessageFilters: true}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e, rt := newRecordingSim(t, tc.so, nil)
			ctx := context.Background()
			ids, err := e.c.CreateMultiple(ctx, "contacts", "contact", contactRows(1000, "a"))
			if err != nil {
				t.Fatal(err)
			}
			if e.s.Count("contacts") != 1000 || ids[999] == "" {
				t.Fatalf("%d contacts, last id %q", e.s.Count("contacts"), ids[999])
			}
			first := len(rt.all())
			refused := rt.count("contacts/Microsoft.Dynamics.CRM.CreateMultiple")
			if rt.count("sdkmessagefilters") != 1 || rt.count("$batch") != 10 {
				t.Errorf("first 1000 rows: %d sdkmessagefilters, %d $batch, want 1 and 10", rt.count("sdkmessagefilters"), rt.count("$batch"))
			}
			if tc.so.NoMessageFilters {
				// chunks sent before the first refusal came back are refused once each, no more
				if refused < 1 || refused > 10 {
					t.Errorf("%d refused CreateMultiple requests, want 1-10", refused)
				}
			} else if refused != 0 {
				t.Errorf("%d CreateMultiple requests sent for a table whose filters say it has none", refused)
			}
			recs := contactRows(1000, "b")
			if err := e.c.UpdateMultiple(ctx, "contacts", "contact", recs[:0]); err != nil {
				t.Fatal(err)
			}
			upd := make([]dataverse.Record, 1000)
			for i, id := range ids {
				upd[i] = dataverse.Record{"contactid": id, "lastname": fmt.Sprint("changed", i)}
			}
			if err := e.c.UpdateMultiple(ctx, "contacts", "contact", upd); err != nil {
				t.Fatal(err)
			}
			if n := len(rt.all()) - first; n != 10 {
				t.Errorf("next 1000 rows: %d requests, want 10 (no new check, no refusal)", n)
			}
			if row, _ := e.s.Row("contacts", ids[500]); row["lastname"] != "changed500" {
				t.Errorf("contact 500 = %v", row["lastname"])
			}
		})
	}
}

// productpricelevel has none of the bulk messages: its rows go as change sets at once.
func TestSimPriceListItemsWithoutBulkMessages(t *testing.T) {
	e, rt := newRecordingSim(t, dataversetest.Options{}, nil)
	ctx := context.Background()
	_, err := e.c.CreateMultiple(ctx, "productpricelevels", "productpricelevel", []dataverse.Record{
		{"productpricelevelid": uuid.NewString(), "amount": 1}, {"productpricelevelid": uuid.NewString(), "amount": 2}})
	// the rows are invalid (no product, no price list): what matters is how they were sent
	if err == nil {
		t.Fatal("invalid price list items were accepted")
	}
	if n := rt.count("productpricelevels/Microsoft.Dynamics.CRM.CreateMultiple"); n != 0 {
		t.Errorf("%d CreateMultiple requests for productpricelevels", n)
	}
	if rt.count("$batch") != 1 {
		t.Errorf("%d $batch requests, want 1", rt.count("$batch"))
	}
}

// A bulk request that times out ("SQL timeout expired", reduce the batch size) is split in
// halves until the parts go through; no range is sent twice, and later requests of the
// table are no larger than what went through. Before, the same 100 rows were sent again
// until the retries ran out.
func TestSimBulkSplitsOnTimeout(t *testing.T) {
	e, rt := newRecordingSim(t, dataversetest.Options{}, func(o *dataverse.Options) { o.BulkChunkSize = 100 })
	e.s.SetFaults(dataversetest.Faults{BulkTimeoutRows: 30})
	recs := contactRows(100, "t")
	if _, err := e.c.CreateMultiple(context.Background(), "contacts", "contact", recs); err != nil {
		t.Fatal(err)
	}
	if e.s.Count("contacts") != 100 {
		t.Fatalf("%d contacts, want 100", e.s.Count("contacts"))
	}
	var sizes []int
	seen := map[string]int{}
	for _, r := range rt.all() {
		if r.path != "contacts/Microsoft.Dynamics.CRM.CreateMultiple" {
			continue
		}
		var b struct{ Targets []map[string]any }
		if err := json.Unmarshal(r.body, &b); err != nil {
			t.Fatal(err)
		}
		sizes = append(sizes, len(b.Targets))
		seen[fmt.Sprint(b.Targets[0]["lastname"], len(b.Targets))]++
	}
	sort.Ints(sizes)
	if fmt.Sprint(sizes) != "[25 25 25 25 50 50 100]" {
		t.Errorf("request sizes %v, want [25 25 25 25 50 50 100]", sizes)
	}
	for k, n := range seen {
		if n > 1 {
			t.Errorf("rows %s sent %d times", k, n)
		}
	}
	// The table's requests timed out above 25 rows: the next rows go 25 at a time.
	before := len(rt.all())
	if _, err := e.c.CreateMultiple(context.Background(), "contacts", "contact", contactRows(100, "u")); err != nil {
		t.Fatal(err)
	}
	if n := len(rt.all()) - before; n != 4 || e.s.Count("contacts") != 200 {
		t.Errorf("next 100 rows: %d requests (want 4 of 25 rows), %d contacts", n, e.s.Count("contacts"))
	}
}

// orders makes n sales orders with one write-in line each.
func orders(t *testing.T, e *simEnv, n int) []string {
	t.Helper()
	ctx := context.Background()
	pl, err := e.c.Create(ctx, "pricelevels", dataverse.Record{"pricelevelid": uuid.NewString(), "name": "nopCommerce USD",
		"transactioncurrencyid@odata.bind": dataverse.Bind("transactioncurrencies", e.s.BaseCurrencyID())})
	if err != nil {
		t.Fatal(err)
	}
	contact, err := e.c.Create(ctx, "contacts", dataverse.Record{"contactid": uuid.NewString(), "lastname": "Buyer"})
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for i := 0; i < n; i++ {
		id := uuid.NewString()
		if _, err := e.c.Upsert(ctx, "salesorders", id, dataverse.Record{"name": fmt.Sprint("SO-", i),
			"customerid_contact@odata.bind": dataverse.Bind("contacts", contact),
			"pricelevelid@odata.bind":       dataverse.Bind("pricelevels", pl)}, dataverse.CreateOnly); err != nil {
			t.Fatal(err)
		}
		if _, err := e.c.Create(ctx, "salesorderdetails", dataverse.Record{"salesorderdetailid": uuid.NewString(),
			"isproductoverridden": true, "productdescription": "Gift", "quantity": 1, "priceperunit": 5, "ispriceoverridden": true,
			"salesorderid@odata.bind": dataverse.Bind("salesorders", id)}); err != nil {
			t.Fatal(err)
		}
		ids = append(ids, id)
	}
	return ids
}

func invoicesOf(e *simEnv, order string) int {
	n := 0
	for _, inv := range e.s.Rows("invoices") {
		if inv["_salesorderid_value"] == order {
			n++
		}
	}
	return n
}

// convertOnce is what a caller does after an unclear outcome: read the order's invoices,
// convert only when there is none.
func convertOnce(t *testing.T, e *simEnv, order string) {
	t.Helper()
	found := 0
	err := e.c.Query(context.Background(), "invoices", dataverse.Query{Select: []string{"invoiceid"},
		Filter: "_salesorderid_value eq " + order}, func(dataverse.Record) error { found++; return nil })
	if err != nil {
		t.Fatal(err)
	}
	if found == 0 {
		if _, err := e.c.ConvertSalesOrderToInvoice(context.Background(), order); err != nil {
			t.Fatal(err)
		}
	}
}

// The answer of a conversion is lost after Dataverse ran it: the client does not send it
// again (a second run makes a second invoice) but reports an unknown outcome; the caller
// reads the order's invoices and finds the one made. Before, the client sent it again.
func TestSimConversionLostAnswerSentOnce(t *testing.T) {
	e, rt := newRecordingSim(t, dataversetest.Options{}, nil)
	order := orders(t, e, 1)[0]
	e.s.SetFaults(dataversetest.Faults{DropAnswers: 1, DropAnswerPath: "ConvertSalesOrderToInvoice"})
	_, err := e.c.ConvertSalesOrderToInvoice(context.Background(), order)
	if !dataverse.IsOutcomeUnknown(err) || !dataverse.IsRetryable(err) {
		t.Fatalf("err = %v, want a retryable unknown outcome", err)
	}
	if n := rt.count("ConvertSalesOrderToInvoice"); n != 1 {
		t.Errorf("ConvertSalesOrderToInvoice sent %d times", n)
	}
	convertOnce(t, e, order)
	if n := invoicesOf(e, order); n != 1 {
		t.Fatalf("%d invoices for the order, want 1", n)
	}
}

// A batch of conversions fails with a 5xx at part k: parts 1…k-1 ran. The batch is not
// sent again (that runs 1…k-1 a second time); the caller converts what has no invoice.
// Before, the client resent the batch and orders 1…k-1 got two invoices.
func TestSimConversionBatchPartFailureSentOnce(t *testing.T) {
	e, rt := newRecordingSim(t, dataversetest.Options{}, nil)
	ids := orders(t, e, 5)
	parts := make([]dataverse.BatchPart, len(ids))
	for i, id := range ids {
		parts[i] = dataverse.Op{Method: "POST", Path: "ConvertSalesOrderToInvoice",
			Body: dataverse.Record{"SalesOrderId": id, "ColumnSet": dataverse.Record{"AllColumns": false, "Columns": []string{"invoiceid"}}}}
	}
	e.s.SetFaults(dataversetest.Faults{FailBatchPart: 3, FailBatchPartStatus: 500})
	res, err := e.c.Batch(context.Background(), parts...)
	var be *dataverse.BatchError
	if !errors.As(err, &be) || be.Part != 3 || !dataverse.IsOutcomeUnknown(err) {
		t.Fatalf("err = %v, want part 3 failed with an unknown outcome", err)
	}
	if len(res) != 3 || res[0].StatusCode != 200 || res[1].StatusCode != 200 {
		t.Fatalf("results: %+v", res)
	}
	if n := rt.count("$batch"); n != 1 {
		t.Errorf("$batch sent %d times", n)
	}
	for _, id := range ids {
		convertOnce(t, e, id)
	}
	for i, id := range ids {
		if n := invoicesOf(e, id); n != 1 {
			t.Errorf("order %d: %d invoices, want 1", i+1, n)
		}
	}
}

// A $batch of several parts whose answer is lost is not sent again whole (the caller
// splits it: "a request that times out is split, not re-sent whole"); a $batch of one
// part is, by the pipeline, like any single request that may run twice.
func TestSimBatchOfSeveralPartsNotResentWhole(t *testing.T) {
	e, rt := newRecordingSim(t, dataversetest.Options{}, nil)
	op := func(i int) dataverse.BatchPart {
		return dataverse.Op{Method: "PATCH", Path: fmt.Sprintf("contacts(00000000-0000-4000-8000-%012d)", i),
			Body: dataverse.Record{"lastname": fmt.Sprint("Row ", i)}}
	}
	e.s.SetFaults(dataversetest.Faults{DropAnswers: 1, DropAnswerPath: "$batch"})
	_, err := e.c.Batch(context.Background(), op(1), op(2), op(3))
	if err == nil || !dataverse.Splittable(context.Background(), err) {
		t.Fatalf("err = %v, want a failure the caller splits", err)
	}
	if n := rt.count("$batch"); n != 1 {
		t.Errorf("a batch of three parts sent %d times, want once", n)
	}
	e.s.SetFaults(dataversetest.Faults{DropAnswers: 1, DropAnswerPath: "$batch"})
	if _, err := e.c.Batch(context.Background(), op(4)); err != nil {
		t.Fatalf("a batch of one part whose answer was lost: %v, want it sent again", err)
	}
	if n := rt.count("$batch"); n != 3 {
		t.Errorf("$batch requests %d, want 3 (the one part sent again)", n)
	}
}

// A 429 on a part of a $batch holds the whole client until its Retry-After has passed,
// like a 429 for the whole request: the next request waits. Before, it went at once.
func TestSimBatchPart429HoldsClient(t *testing.T) {
	e, _ := newRecordingSim(t, dataversetest.Options{ViolationGrace: time.Nanosecond}, nil)
	ctx := context.Background()
	if _, err := e.c.WhoAmI(ctx); err != nil {
		t.Fatal(err)
	}
	e.s.SetFaults(dataversetest.Faults{FailBatchPart: 2, FailBatchPartStatus: 429, Force429RetryAfter: time.Second})
	_, err := e.c.Batch(ctx, dataverse.Op{Method: "GET", Path: "WhoAmI"}, dataverse.Op{Method: "GET", Path: "WhoAmI"},
		dataverse.Op{Method: "GET", Path: "WhoAmI"})
	var be *dataverse.BatchError
	if !errors.As(err, &be) || be.Part != 2 || !dataverse.IsThrottled(err) {
		t.Fatalf("err = %v, want part 2 throttled", err)
	}
	if _, err := e.c.WhoAmI(ctx); err != nil {
		t.Fatal(err)
	}
	if v := e.s.RetryAfterViolations(); v != 0 {
		t.Fatalf("%d requests sent before the part's Retry-After expired", v)
	}
}

// Writes carry no "Prefer: return=representation" (it adds a retrieve charged to the
// execution-time limit) unless a $select names what is read back.
func TestSimNoRepresentationWithoutSelect(t *testing.T) {
	e, rt := newRecordingSim(t, dataversetest.Options{}, nil)
	ctx := context.Background()
	id := uuid.NewString()
	if created, err := e.c.Upsert(ctx, "contacts", id, dataverse.Record{"lastname": "A"}, dataverse.CreateOnly); err != nil || !created {
		t.Fatalf("create-only: %v %v", created, err)
	}
	if _, err := e.c.Upsert(ctx, "contacts", id, dataverse.Record{"lastname": "B"}, dataverse.Upsert); err != nil {
		t.Fatal(err)
	}
	if err := e.c.Update(ctx, "contacts", id, dataverse.Record{"lastname": "C"}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.c.Create(ctx, "contacts", dataverse.Record{"lastname": "D"}); err != nil {
		t.Fatal(err)
	}
	for _, r := range rt.all() {
		if strings.Contains(strings.ToLower(strings.Join(r.header.Values("Prefer"), ",")), "return=representation") &&
			!strings.Contains(r.query, "$select=") {
			t.Errorf("%s %s asks for the written row without $select", r.method, r.path)
		}
	}
	if row, _ := e.s.Row("contacts", id); row["lastname"] != "C" {
		t.Errorf("contact = %v", row["lastname"])
	}
}
