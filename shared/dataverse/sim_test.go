package dataverse_test

// Behaviour tests against the Dataverse simulator (dataversetest): the same
// client code paths the sync engine uses, over HTTPS with a real azidentity
// client-secret credential.

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/nopsync/nopsync/shared/dataverse"
	"github.com/nopsync/nopsync/shared/dataverse/dataversetest"
)

// rotatingSecret stands in for the Key Vault source: it hands out the value
// it read last, and reads the "vault" again only when invalidated.
type rotatingSecret struct {
	mu          sync.Mutex
	vault       string // what a fresh read returns
	cached      string
	invalidated int
}

func (r *rotatingSecret) Secret(context.Context) (string, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.cached == "" {
		r.cached = r.vault
	}
	return r.cached, nil
}

func (r *rotatingSecret) Invalidate() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.cached = ""
	r.invalidated++
}

func (r *rotatingSecret) rotate(v string) { r.mu.Lock(); r.vault = v; r.mu.Unlock() }

// countingTransport records the most requests in flight at once.
type countingTransport struct {
	next      *http.Client
	now, peak atomic.Int64
}

func (c *countingTransport) Do(r *http.Request) (*http.Response, error) {
	n := c.now.Add(1)
	defer c.now.Add(-1)
	for p := c.peak.Load(); n > p && !c.peak.CompareAndSwap(p, n); p = c.peak.Load() {
	}
	return c.next.Do(r)
}

type simEnv struct {
	s      *dataversetest.Server
	c      *dataverse.Client
	secret *rotatingSecret
	logs   *lines
}

type lines struct {
	mu sync.Mutex
	l  []string
}

func (l *lines) add(s string) { l.mu.Lock(); l.l = append(l.l, s); l.mu.Unlock() }
func (l *lines) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return strings.Join(l.l, "\n")
}

func newSim(t *testing.T, so dataversetest.Options, mod func(*dataverse.Options)) *simEnv {
	t.Helper()
	s := dataversetest.NewServer(so)
	t.Cleanup(s.Close)
	e := &simEnv{s: s, secret: &rotatingSecret{vault: s.ClientSecret()}, logs: &lines{}}
	o := dataverse.Options{Secret: e.secret, RetryDelay: 10 * time.Millisecond, Logger: e.logs.add}
	if mod != nil {
		mod(&o)
	}
	c, err := s.Client(o)
	if err != nil {
		t.Fatal(err)
	}
	e.c = c
	return e
}

func TestSimRowOperations(t *testing.T) {
	e := newSim(t, dataversetest.Options{}, nil)
	ctx := context.Background()
	w, err := e.c.WhoAmI(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if w.UserID != e.s.UserID() || w.OrganizationID != e.s.OrganizationID() || w.BusinessUnitID != e.s.BusinessUnitID() {
		t.Fatalf("WhoAmI = %+v", w)
	}
	id := uuid.NewString()
	if _, err := e.c.Upsert(ctx, "contacts", id, dataverse.Record{"lastname": "A"}, dataverse.UpdateOnly); !dataverse.IsNotFound(err) {
		t.Fatalf("update-only missing: %v", err)
	}
	created, err := e.c.Upsert(ctx, "contacts", id, dataverse.Record{"lastname": "A", "emailaddress1": "a@example.org"}, dataverse.CreateOnly)
	if err != nil || !created {
		t.Fatalf("create-only: %v %v", created, err)
	}
	if _, err := e.c.Upsert(ctx, "contacts", id, dataverse.Record{"lastname": "B"}, dataverse.CreateOnly); !dataverse.IsConflict(err) {
		t.Fatalf("create-only existing: %v", err)
	}
	if created, err := e.c.Upsert(ctx, "contacts", id, dataverse.Record{"lastname": "B"}, dataverse.Upsert); err != nil || created {
		t.Fatalf("upsert existing: %v %v", created, err)
	}
	if row, _ := e.s.Row("contacts", id); row["lastname"] != "B" || row["emailaddress1"] != "a@example.org" {
		t.Fatalf("row = %v", row)
	}
	rec, err := e.c.Retrieve(ctx, "contacts", id, "lastname")
	if err != nil || rec["lastname"] != "B" {
		t.Fatalf("retrieve = %v %v", rec, err)
	}
	// unknown column: a 400 that no retry fixes
	_, err = e.c.Upsert(ctx, "contacts", id, dataverse.Record{"nosuchcolumn": 1}, dataverse.Upsert)
	var de *dataverse.Error
	if !errors.As(err, &de) || de.StatusCode != 400 || dataverse.IsRetryable(err) || de.Message == "" {
		t.Fatalf("bad column: %#v", err)
	}
	// create, query with paging, bind
	for i := range 7 {
		if _, err := e.c.Create(ctx, "contacts", dataverse.Record{"lastname": fmt.Sprintf("P%d", i), "jobtitle": "pager",
			"parentcustomerid_contact@odata.bind": dataverse.Bind("contacts", id)}); err != nil {
			t.Fatal(err)
		}
	}
	var names []string
	err = e.c.Query(ctx, "contacts", dataverse.Query{Select: []string{"lastname", "_parentcustomerid_value"}, Filter: "jobtitle eq 'pager'",
		OrderBy: "lastname", PageSize: 3}, func(r dataverse.Record) error {
		if r["_parentcustomerid_value"] != id {
			return fmt.Errorf("parent = %v", r["_parentcustomerid_value"])
		}
		names = append(names, r["lastname"].(string))
		return nil
	})
	if err != nil || strings.Join(names, ",") != "P0,P1,P2,P3,P4,P5,P6" {
		t.Fatalf("query: %v %v", names, err)
	}
	if st := e.s.Stats(); st.Requests < 3+7+3 {
		t.Fatalf("requests = %d; paging did not happen", st.Requests)
	}
	if err := e.c.Delete(ctx, "contacts", uuid.NewString()); !dataverse.IsNotFound(err) {
		t.Fatalf("delete missing: %v", err)
	}
}

// A throttling storm: the per-user request limit is hit over and over, and
// forced 429s arrive on top. Every write lands and no request is sent before
// its Retry-After expired.
func TestSimThrottlingStormRespectsRetryAfter(t *testing.T) {
	if testing.Short() {
		t.Skip("takes a few seconds of real Retry-After waits")
	}
	ct := &countingTransport{}
	e := newSim(t, dataversetest.Options{
		TimeScale: 1.0 / 300, // the 300 s window lasts 1 s
		Limits:    dataversetest.Limits{Requests: 40},
		DopHint:   16,
		// A request the client wrote before it could read a 429 was in
		// flight, not a violation. Under the race detector with packages
		// testing in parallel, reading an answer can lag its sending by a
		// few hundred milliseconds, so allow that much (Retry-After is ≥ 1 s).
		ViolationGrace: 300 * time.Millisecond,
	}, func(o *dataverse.Options) { o.Transport = ct })
	ct.next = e.s.HTTPClient()
	ctx := context.Background()
	const n = 90
	ids := make([]string, n)
	var wg sync.WaitGroup
	var failed atomic.Int64
	for i := range n {
		ids[i] = uuid.NewString()
		wg.Add(1)
		go func() {
			defer wg.Done()
			if i == n/2 {
				e.s.SetFaults(dataversetest.Faults{Force429: 5, Force429RetryAfter: 300 * time.Second}) // 1 s after scaling
			}
			if _, err := e.c.Upsert(ctx, "contacts", ids[i], dataverse.Record{"lastname": fmt.Sprint(i)}, dataverse.Upsert); err != nil {
				failed.Add(1)
				t.Errorf("upsert %d: %v", i, err)
			}
		}()
	}
	wg.Wait()
	st := e.s.Stats()
	if failed.Load() > 0 {
		t.Fatalf("%d writes failed", failed.Load())
	}
	if got := e.s.Count("contacts"); got != n {
		t.Fatalf("rows = %d, want %d", got, n)
	}
	if st.Throttled == 0 {
		t.Fatal("no 429 was served: the storm did not happen")
	}
	if v := e.s.RetryAfterViolations(); v != 0 {
		t.Fatalf("%d requests were sent before Retry-After expired (429s: %d)", v, st.Throttled)
	}
	if p := ct.peak.Load(); p > 16 {
		t.Fatalf("%d requests in flight, above the dop hint 16", p)
	}
	t.Logf("%d writes, %d requests, %d throttled", n, st.Requests, st.Throttled)
}

// Tokens expire every second while work goes on: the client renews them
// (ahead of time, or after a 401) without failing a call.
func TestSimTokenExpiryMidRun(t *testing.T) {
	e := newSim(t, dataversetest.Options{TokenLifetime: 400 * time.Millisecond}, nil)
	ctx := context.Background()
	// Calls go on until well past three lifetimes of the first token, however slow the
	// machine: the calls after it expired need another.
	if _, err := e.c.WhoAmI(ctx); err != nil {
		t.Fatalf("first call: %v", err)
	}
	firstToken := time.Now()
	n := 1
	for time.Since(firstToken) < 1500*time.Millisecond {
		if _, err := e.c.WhoAmI(ctx); err != nil {
			t.Fatalf("call %d: %v", n, err)
		}
		n++
		time.Sleep(20 * time.Millisecond)
	}
	if st := e.s.Stats(); st.TokensIssued < 2 {
		t.Fatalf("tokens issued = %d over %d calls", st.TokensIssued, n)
	}
}

// The client secret is rotated in Entra and in the vault: once the current
// token expires, the token endpoint rejects the old secret, the client
// re-reads the secret and carries on without a restart.
func TestSimRotatedSecret(t *testing.T) {
	e := newSim(t, dataversetest.Options{TokenLifetime: 300 * time.Millisecond}, nil)
	ctx := context.Background()
	if _, err := e.c.WhoAmI(ctx); err != nil {
		t.Fatal(err)
	}
	old := e.s.ClientSecret()
	fresh := "rotated-" + uuid.NewString()
	e.s.SetClientSecret(fresh)
	e.secret.rotate(fresh)
	time.Sleep(400 * time.Millisecond) // let the old token expire
	if _, err := e.c.WhoAmI(ctx); err != nil {
		t.Fatalf("after rotation: %v", err)
	}
	if e.secret.invalidated != 1 {
		t.Fatalf("secret invalidated %d times", e.secret.invalidated)
	}
	if l := e.logs.String(); strings.Contains(l, fresh) || strings.Contains(l, old) {
		t.Fatal("secret in logs")
	}

	// a secret nobody rotated into the vault: authentication failure, no secret in the error
	e.s.SetClientSecret("rotated-elsewhere-" + uuid.NewString())
	time.Sleep(400 * time.Millisecond)
	_, err := e.c.WhoAmI(ctx)
	if !dataverse.IsAuthFailure(err) || dataverse.IsRetryable(err) || strings.Contains(err.Error(), fresh) {
		t.Fatalf("err = %v", err)
	}
}

func TestSimChangeSetFailingHalfWayWritesNothing(t *testing.T) {
	e := newSim(t, dataversetest.Options{}, nil)
	ctx := context.Background()
	before := e.s.Count("contacts")
	res, err := e.c.Batch(ctx, dataverse.ChangeSet(
		dataverse.Op{Method: "POST", Path: "contacts", Body: dataverse.Record{"lastname": "Parent"}, ContentID: "1"},
		dataverse.Op{Method: "POST", Path: "contacts", Body: dataverse.Record{"lastname": "Child", "parentcustomerid_contact@odata.bind": "$1"}, ContentID: "2"},
		dataverse.Op{Method: "PATCH", Path: "$1", Body: dataverse.Record{"nosuchcolumn": "x"}, ContentID: "3"},
	))
	var be *dataverse.BatchError
	if !errors.As(err, &be) || be.ChangeSet != 1 || be.Err.StatusCode != 400 || dataverse.IsRetryable(err) {
		t.Fatalf("err = %v (results %+v)", err, res)
	}
	if !strings.Contains(err.Error(), "change set 1") {
		t.Fatalf("error text %q does not name the change set", err)
	}
	if got := e.s.Count("contacts"); got != before {
		t.Fatalf("contacts = %d, want %d: the change set was not rolled back", got, before)
	}

	// the same change set without the bad part is applied, references resolved
	res, err = e.c.Batch(ctx,
		dataverse.ChangeSet(
			dataverse.Op{Method: "POST", Path: "contacts", Body: dataverse.Record{"lastname": "Parent"}, ContentID: "1"},
			dataverse.Op{Method: "POST", Path: "contacts", Body: dataverse.Record{"lastname": "Child", "parentcustomerid_contact@odata.bind": "$1"}, ContentID: "2"},
			dataverse.Op{Method: "PATCH", Path: "$1", Body: dataverse.Record{"firstname": "Pat"}, ContentID: "3"},
		),
		dataverse.Op{Method: "GET", Path: "contacts?$select=lastname&$filter=lastname eq 'Child'"},
	)
	if err != nil {
		t.Fatal(err)
	}
	if len(res) != 4 || res[0].EntityID == "" || res[1].EntityID == "" || res[3].StatusCode != 200 {
		t.Fatalf("results = %+v", res)
	}
	parent, _ := e.s.Row("contacts", res[0].EntityID)
	child, _ := e.s.Row("contacts", res[1].EntityID)
	if parent["firstname"] != "Pat" || child["_parentcustomerid_value"] != res[0].EntityID {
		t.Fatalf("parent %v child %v", parent, child)
	}
	var page struct{ Value []dataverse.Record }
	if err := res[3].Decode(&page); err != nil || len(page.Value) != 1 {
		t.Fatalf("GET part: %v %s", err, res[3].Body)
	}
}

func TestSimBulkOperations(t *testing.T) {
	e := newSim(t, dataversetest.Options{}, func(o *dataverse.Options) { o.BulkChunkSize = 4 })
	ctx := context.Background()
	recs := make([]dataverse.Record, 10)
	for i := range recs {
		recs[i] = dataverse.Record{"lastname": fmt.Sprintf("C%d", i)}
	}
	ids, err := e.c.CreateMultiple(ctx, "contacts", "contact", recs)
	if err != nil {
		t.Fatal(err)
	}
	for i, id := range ids {
		if row, ok := e.s.Row("contacts", id); !ok || row["lastname"] != fmt.Sprintf("C%d", i) {
			t.Fatalf("row %d (%s) = %v", i, id, row)
		}
	}
	ups := make([]dataverse.Record, 10)
	for i := range ups {
		ups[i] = dataverse.Record{"contactid": ids[i], "firstname": "U"}
	}
	ups[5]["nosuchcolumn"] = 1 // spoils its chunk (rows 4-7) only
	err = e.c.UpsertMultiple(ctx, "contacts", "contact", ups)
	var bulk *dataverse.BulkError
	if !errors.As(err, &bulk) || len(bulk.Chunks) != 1 || bulk.Chunks[0].Start != 4 || bulk.Chunks[0].End != 8 {
		t.Fatalf("err = %v", err)
	}
	for i, id := range ids {
		row, _ := e.s.Row("contacts", id)
		want := "U"
		if i >= 4 && i < 8 {
			want = "" // the failed chunk wrote nothing
		}
		if got, _ := row["firstname"].(string); got != want {
			t.Fatalf("row %d firstname = %q, want %q", i, got, want)
		}
	}
	ups[5] = dataverse.Record{"contactid": ids[5], "firstname": "V"}
	if err := e.c.UpdateMultiple(ctx, "contacts", "contact", ups[4:8]); err != nil {
		t.Fatal(err)
	}
	if row, _ := e.s.Row("contacts", ids[5]); row["firstname"] != "V" {
		t.Fatalf("after UpdateMultiple: %v", row)
	}
}

func TestSimSalesActions(t *testing.T) {
	e := newSim(t, dataversetest.Options{}, nil)
	ctx := context.Background()
	c := e.c
	// a price list in the base currency and a customer
	pl, err := c.Create(ctx, "pricelevels", dataverse.Record{"name": "nopCommerce USD",
		"transactioncurrencyid@odata.bind": dataverse.Bind("transactioncurrencies", e.s.BaseCurrencyID())})
	if err != nil {
		t.Fatal(err)
	}
	contact, err := c.Create(ctx, "contacts", dataverse.Record{"lastname": "Buyer"})
	if err != nil {
		t.Fatal(err)
	}
	newOrder := func(name string) string {
		id := uuid.NewString()
		if _, err := c.Upsert(ctx, "salesorders", id, dataverse.Record{"name": name,
			"customerid_contact@odata.bind": dataverse.Bind("contacts", contact),
			"pricelevelid@odata.bind":       dataverse.Bind("pricelevels", pl)}, dataverse.CreateOnly); err != nil {
			t.Fatal(err)
		}
		if _, err := c.Create(ctx, "salesorderdetails", dataverse.Record{"isproductoverridden": true, "productdescription": "Gift",
			"quantity": 2, "priceperunit": 5, "ispriceoverridden": true, "salesorderid@odata.bind": dataverse.Bind("salesorders", id)}); err != nil {
			t.Fatal(err)
		}
		return id
	}
	state := func(id string) any { r, _ := e.s.Row("salesorders", id); return r["statecode"] }

	a := newOrder("SO-A")
	if err := c.FulfillSalesOrder(ctx, a, 100001); err != nil {
		t.Fatal(err)
	}
	if s := state(a); fmt.Sprint(s) != "3" {
		t.Fatalf("fulfilled order state = %v", s)
	}
	b := newOrder("SO-B")
	if err := c.CancelSalesOrder(ctx, b, 4); err != nil {
		t.Fatal(err)
	}
	if s := state(b); fmt.Sprint(s) != "2" {
		t.Fatalf("canceled order state = %v", s)
	}
	if e.s.Count("ordercloses") != 2 {
		t.Fatalf("ordercloses = %d", e.s.Count("ordercloses"))
	}
	// a closed order can't be edited
	if err := c.Update(ctx, "salesorders", b, dataverse.Record{"name": "x"}); err == nil || dataverse.IsRetryable(err) {
		t.Fatalf("update of canceled order: %v", err)
	}
	d := newOrder("SO-D")
	inv, err := c.ConvertSalesOrderToInvoice(ctx, d)
	if err != nil {
		t.Fatal(err)
	}
	if row, ok := e.s.Row("invoices", inv); !ok || row["_salesorderid_value"] != d {
		t.Fatalf("invoice %s = %v", inv, row)
	}

	// a product family starts Draft; PublishProductHierarchy activates it
	group, err := c.Create(ctx, "uomschedules", dataverse.Record{"name": "Default Unit", "baseuomname": "Primary Unit"})
	if err != nil {
		t.Fatal(err)
	}
	var unit string
	if err := c.Query(ctx, "uoms", dataverse.Query{Filter: "_uomscheduleid_value eq " + group}, func(r dataverse.Record) error {
		unit, _ = r["uomid"].(string)
		return nil
	}); err != nil || unit == "" {
		t.Fatalf("base unit: %q %v", unit, err)
	}
	fam, err := c.Create(ctx, "products", dataverse.Record{"name": "Family", "productnumber": "FAM-1", "productstructure": 2,
		"defaultuomscheduleid@odata.bind": dataverse.Bind("uomschedules", group), "defaultuomid@odata.bind": dataverse.Bind("uoms", unit)})
	if err != nil {
		t.Fatal(err)
	}
	if err := c.PublishProductHierarchy(ctx, fam); err != nil {
		t.Fatal(err)
	}
	if row, _ := e.s.Row("products", fam); fmt.Sprint(row["statecode"]) != "0" {
		t.Fatalf("published family state = %v", row["statecode"])
	}
}

// TestSimTokenNotAttachedBeforeThrottleWait: requests held back by a Retry-After get
// their token after the wait, not before it, so short-lived tokens don't expire while
// they wait (found by the chaos test: 401s after every 429 burst with 3-second tokens).
func TestSimTokenNotAttachedBeforeThrottleWait(t *testing.T) {
	e := newSim(t, dataversetest.Options{TokenLifetime: 1500 * time.Millisecond}, nil)
	ctx := context.Background()
	if _, err := e.c.WhoAmI(ctx); err != nil { // warm up: a token and a connection
		t.Fatal(err)
	}
	e.s.SetFaults(dataversetest.Faults{Force429: 1, Force429RetryAfter: 2 * time.Second})
	var wg sync.WaitGroup
	errs := make(chan error, 6)
	for i := 0; i < 6; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, err := e.c.WhoAmI(ctx)
			errs <- err
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	// At most the one request already on its way when the 429 arrived (it waits at the
	// connection, token attached, and is resent with a fresh token after its 401); the
	// others are authorized after their wait. Attaching tokens first gave 5 here.
	if st := e.s.Stats(); st.Unauthorized > 1 {
		t.Errorf("%d requests reached Dataverse with a token that expired while they waited out the Retry-After", st.Unauthorized)
	}
}
