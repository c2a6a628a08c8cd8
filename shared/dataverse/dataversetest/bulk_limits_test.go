package dataversetest

import (
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
)

func targets(logical string, recs ...map[string]any) map[string]any {
	var ts []any
	for _, r := range recs {
		r["@odata.type"] = "Microsoft.Dynamics.CRM." + logical
		ts = append(ts, r)
	}
	return map[string]any{"Targets": ts}
}

// bulk-operations doc: CreateMultiple/UpdateMultiple/UpsertMultiple; standard tables roll
// the whole request back on any error; @odata.type is required.
func TestBulk(t *testing.T) {
	c := newTC(t, Options{AlternateKeys: map[string][][]string{"accounts": {{"accountnumber"}}}})
	id1 := uuid.NewString()
	r := c.must(200, c.do("POST", "contacts/Microsoft.Dynamics.CRM.CreateMultiple", targets("contact",
		map[string]any{"contactid": id1, "lastname": "A"}, map[string]any{"lastname": "B"})))
	ids := r.body["Ids"].([]any)
	if len(ids) != 2 || ids[0] != id1 || c.s.Count("contacts") != 2 {
		t.Fatalf("CreateMultiple: %s", r.raw)
	}
	// Any failing row rolls back the whole request.
	c.must(400, c.do("POST", "contacts/Microsoft.Dynamics.CRM.CreateMultiple", targets("contact",
		map[string]any{"lastname": "C"}, map[string]any{"lastname": "D", "bogus": 1})))
	if c.s.Count("contacts") != 2 {
		t.Fatal("failed CreateMultiple left rows")
	}
	// @odata.type is required and must match the set.
	c.must(400, c.do("POST", "contacts/Microsoft.Dynamics.CRM.CreateMultiple", map[string]any{"Targets": []any{map[string]any{"lastname": "E"}}}))
	c.must(400, c.do("POST", "contacts/Microsoft.Dynamics.CRM.CreateMultiple", targets("account", map[string]any{"name": "E"})))
	// UpdateMultiple on a missing row fails as a whole.
	missing := uuid.NewString()
	r = c.must(404, c.do("POST", "contacts/Microsoft.Dynamics.CRM.UpdateMultiple", targets("contact",
		map[string]any{"contactid": id1, "lastname": "A2"}, map[string]any{"contactid": missing, "lastname": "x"})))
	if !strings.Contains(r.errMsg(), "Contact With Ids = "+missing+" Do Not Exist") {
		t.Fatalf("UpdateMultiple missing: %s", r.raw)
	}
	if row, _ := c.s.Row("contacts", id1); row["lastname"] != "A" {
		t.Fatalf("UpdateMultiple not rolled back: %v", row)
	}
	// UpsertMultiple by primary key (body) and by @odata.id, creating and updating.
	id3 := uuid.NewString()
	c.must(204, c.do("POST", "contacts/Microsoft.Dynamics.CRM.UpsertMultiple", targets("contact",
		map[string]any{"contactid": id1, "lastname": "A3"}, map[string]any{"@odata.id": "contacts(" + id3 + ")", "lastname": "New"})))
	if row, _ := c.s.Row("contacts", id1); row["lastname"] != "A3" {
		t.Fatalf("upsert update: %v", row)
	}
	if row, ok := c.s.Row("contacts", id3); !ok || row["lastname"] != "New" {
		t.Fatalf("upsert create: %v", row)
	}
	// Alternate key in @odata.id; key column also in the body fails on the create path.
	c.must(204, c.do("POST", "accounts/Microsoft.Dynamics.CRM.UpsertMultiple", targets("account",
		map[string]any{"@odata.id": "accounts(accountnumber='K1')", "name": "K"})))
	if rows := c.s.Rows("accounts"); len(rows) != 1 || rows[0]["accountnumber"] != "K1" {
		t.Fatalf("alt-key upsert: %v", rows)
	}
	r = c.must(400, c.do("POST", "accounts/Microsoft.Dynamics.CRM.UpsertMultiple", targets("account",
		map[string]any{"@odata.id": "accounts(accountnumber='K2')", "accountnumber": "K2", "name": "K"})))
	if r.errCode() != "0x80040216" {
		t.Fatalf("key in body on create: %s", r.raw)
	}
	c.must(204, c.do("POST", "accounts/Microsoft.Dynamics.CRM.UpsertMultiple", targets("account",
		map[string]any{"@odata.id": "accounts(accountnumber='K1')", "accountnumber": "K1", "name": "K again"})))
	// Options: tables without the messages; alternate key required.
	c2 := newTC(t, Options{BulkUnsupported: []string{"contacts"}, UpsertMultipleRequiresAlternateKey: true})
	if r := c2.must(400, c2.do("POST", "contacts/Microsoft.Dynamics.CRM.CreateMultiple", targets("contact", map[string]any{"lastname": "x"}))); r.errCode() != "0x80040800" {
		t.Fatalf("refusal: %s", r.raw)
	}
	c2.must(400, c2.do("POST", "accounts/Microsoft.Dynamics.CRM.UpsertMultiple", targets("account", map[string]any{"accountid": uuid.NewString(), "name": "x"})))
}

// Learn: api-limits: request-count limit with 429, the documented code and message, integer
// Retry-After (scaled, rounded up, ≥ 1), recovery after it, and violation counting.
func TestLimits_RequestCount(t *testing.T) {
	c := newTC(t, Options{TimeScale: 0.004, Limits: Limits{Requests: 3}}) // window 1.2 s
	for i := 0; i < 3; i++ {
		r := c.must(200, c.do("GET", "WhoAmI", nil))
		if r.header.Get("x-ms-dop-hint") != "4" {
			t.Fatalf("x-ms-dop-hint = %q", r.header.Get("x-ms-dop-hint"))
		}
	}
	r := c.must(429, c.do("GET", "WhoAmI", nil))
	if r.errCode() != "0x80072322" || r.errMsg() != "Number of requests exceeded the limit of 3 over time window of 300 seconds." {
		t.Fatalf("429: %s", r.raw)
	}
	ra, err := strconv.Atoi(r.header.Get("Retry-After"))
	if err != nil || ra < 1 || ra > 2 {
		t.Fatalf("Retry-After = %q", r.header.Get("Retry-After"))
	}
	time.Sleep(200 * time.Millisecond) // past the in-flight grace, before Retry-After
	c.must(429, c.do("GET", "WhoAmI", nil))
	if v := c.s.RetryAfterViolations(); v != 1 {
		t.Fatalf("violations = %d, want 1", v)
	}
	time.Sleep(time.Duration(ra) * time.Second)
	c.must(200, c.do("GET", "WhoAmI", nil))
	if v := c.s.RetryAfterViolationsByClient()[c.s.ClientID]; v != 1 {
		t.Fatalf("violations by client = %d, want 1", v)
	}
}

// Learn: api-limits: execution-time limit (bulk rows each cost execution time) and concurrency limit.
func TestLimits_ExecutionAndConcurrency(t *testing.T) {
	c := newTC(t, Options{Limits: Limits{ExecutionTime: 30 * time.Millisecond},
		ExecutionCost: ExecutionCost{PerRequest: time.Millisecond, PerRowWritten: 5 * time.Millisecond}})
	var recs []map[string]any
	for i := 0; i < 10; i++ {
		recs = append(recs, map[string]any{"lastname": "x"})
	}
	c.must(200, c.do("POST", "contacts/Microsoft.Dynamics.CRM.CreateMultiple", targets("contact", recs...)))
	r := c.must(429, c.do("GET", "WhoAmI", nil))
	if r.errCode() != "0x80072321" || !strings.Contains(r.errMsg(), "Combined execution time of incoming requests exceeded limit of 30 milliseconds over time window of 300 seconds.") {
		t.Fatalf("exec 429: %s", r.raw)
	}
	if ra, _ := strconv.Atoi(r.header.Get("Retry-After")); ra < 299 || ra > 300 {
		t.Fatalf("Retry-After %q, want ~300", r.header.Get("Retry-After"))
	}

	c2 := newTC(t, Options{Limits: Limits{Concurrent: 2}, SleepExecutionTime: true,
		ExecutionCost: ExecutionCost{PerRequest: 300 * time.Millisecond}})
	var wg sync.WaitGroup
	codes := make([]int, 6)
	for i := range codes {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			codes[i] = c2.do("GET", "WhoAmI", nil).status
		}(i)
	}
	wg.Wait()
	var ok, throttled int
	for _, s := range codes {
		switch s {
		case 200:
			ok++
		case 429:
			throttled++
		}
	}
	if ok < 2 || throttled == 0 || ok+throttled != 6 || c2.s.Stats().MaxConcurrency > 2 {
		t.Fatalf("concurrency: %v (max in flight %d)", codes, c2.s.Stats().MaxConcurrency)
	}
}

// Fault injection: forced 429s and 503s.
func TestFaults(t *testing.T) {
	c := newTC(t, Options{})
	c.s.SetFaults(Faults{Force429: 2, Force429RetryAfter: 3 * time.Second})
	for i := 0; i < 2; i++ {
		r := c.must(429, c.do("GET", "WhoAmI", nil))
		if r.header.Get("Retry-After") != "3" {
			t.Fatalf("forced Retry-After %q", r.header.Get("Retry-After"))
		}
	}
	c.s.SetFaults(Faults{Error503Rate: 1})
	c.must(503, c.do("GET", "WhoAmI", nil))
	c.s.SetFaults(Faults{})
	c.must(200, c.do("GET", "WhoAmI", nil))
	if st := c.s.Stats(); st.Throttled != 2 || st.Injected503 != 1 {
		t.Fatalf("stats %+v", st)
	}
}

// IdealThroughput: the ceiling implied by the documented limits and the cost model.
func TestIdealThroughput(t *testing.T) {
	s := newServer(Options{TimeScale: 0.01})
	one := s.IdealThroughput(1, 8)
	// 6000 req / 300 s = 20 req/s; execution: 4 s/s ÷ 4 ms = 1000 rows/s → requests bound.
	if one.Limit != "requests" || one.Ceiling != 20 || one.RealCeiling != 2000 {
		t.Fatalf("single: %+v", one)
	}
	bulk := s.IdealThroughput(1000, 8)
	// 20 req/s × 1000 = 20000; execution: 4 ÷ (0.002 + 2) × 1000 ≈ 1998 → execution bound.
	if bulk.Limit != "execution" || bulk.Ceiling < 1990 || bulk.Ceiling > 2000 {
		t.Fatalf("bulk: %+v", bulk)
	}
	s2 := newServer(Options{SleepExecutionTime: true})
	if c := s2.IdealThroughput(1, 4); c.Limit != "requests" || c.ConcurrencyBound != 1000 {
		t.Fatalf("concurrency bound: %+v", c)
	}
}

// bulk-operations doc, "Availability with standard tables": productpricelevel has none of
// the messages, whatever the options; sdkmessagefilters answers Microsoft's query for a
// table's support; the refusal's status is an option; the filters can be unreadable.
func TestBulk_SupportPerTable(t *testing.T) {
	c := newTC(t, Options{BulkRefusalStatus: 500})
	for _, m := range []string{"CreateMultiple", "UpdateMultiple", "UpsertMultiple"} {
		r := c.must(500, c.do("POST", "productpricelevels/Microsoft.Dynamics.CRM."+m, targets("productpricelevel", map[string]any{"amount": 1})))
		if r.errCode() != "0x80040800" || !strings.Contains(r.errMsg(), "does not support entities of type 'productpricelevel'") {
			t.Fatalf("%s refusal: %s", m, r.raw)
		}
	}
	q := func(table string) int {
		r := c.must(200, c.do("GET", "sdkmessagefilters?$select=sdkmessagefilterid&$filter="+
			strings.ReplaceAll("sdkmessageid/name eq 'CreateMultiple' and primaryobjecttypecode eq '"+table+"'", " ", "%20"), nil))
		return len(r.body["value"].([]any))
	}
	if q("productpricelevel") != 0 || q("contact") != 1 || q("salesorderdetail") != 1 {
		t.Fatalf("message filters: productpricelevel %d, contact %d, salesorderdetail %d", q("productpricelevel"), q("contact"), q("salesorderdetail"))
	}
	c2 := newTC(t, Options{NoMessageFilters: true})
	c2.must(403, c2.do("GET", "sdkmessagefilters?$filter=sdkmessageid/name%20eq%20'CreateMultiple'", nil))
}

// Faults.BulkTimeoutRows: a bulk request above the size fails with "SQL timeout expired"
// and writes nothing; a smaller one goes through.
func TestBulk_SQLTimeoutBySize(t *testing.T) {
	c := newTC(t, Options{})
	c.s.SetFaults(Faults{BulkTimeoutRows: 2})
	r := c.must(500, c.do("POST", "contacts/Microsoft.Dynamics.CRM.CreateMultiple", targets("contact",
		map[string]any{"lastname": "A"}, map[string]any{"lastname": "B"}, map[string]any{"lastname": "C"})))
	if r.errCode() != "0x80044151" || c.s.Count("contacts") != 0 {
		t.Fatalf("timeout: %s, %d rows", r.raw, c.s.Count("contacts"))
	}
	c.must(200, c.do("POST", "contacts/Microsoft.Dynamics.CRM.CreateMultiple", targets("contact",
		map[string]any{"lastname": "A"}, map[string]any{"lastname": "B"})))
}

// create-entity-web-api "Create with data returned": return=representation adds a
// retrieve, charged to the execution time like one.
func TestRepresentationChargesARetrieve(t *testing.T) {
	c := newTC(t, Options{})
	exec := func() time.Duration { return c.s.Stats().Execution }
	e0 := exec()
	c.must(204, c.do("PATCH", "contacts("+uuid.NewString()+")", map[string]any{"lastname": "A"}))
	plain := exec() - e0
	e1 := exec()
	c.must(201, c.do("PATCH", "contacts("+uuid.NewString()+")?$select=contactid", map[string]any{"lastname": "B"}, "Prefer", "return=representation"))
	rep := exec() - e1
	o := c.s.o.ExecutionCost
	if want := plain + o.PerRequest + o.PerRowRead; rep != want {
		t.Fatalf("execution charged: plain %s, with representation %s, want %s", plain, rep, want)
	}
}

// TestCostModels: a CreateMultiple of 10 rows is charged one request and ten rows written
// under each named cost model, and the rate limit headers come only when not turned off.
func TestCostModels(t *testing.T) {
	for name, cost := range CostModels {
		for _, noHeaders := range []bool{false, true} {
			c := newTC(t, Options{ExecutionCost: cost, NoRateLimitHeaders: noHeaders})
			rows := make([]map[string]any, 10)
			for i := range rows {
				rows[i] = map[string]any{"lastname": "L" + strconv.Itoa(i)}
			}
			e0 := c.s.Stats().Execution
			r := c.must(200, c.do("POST", "contacts/Microsoft.Dynamics.CRM.CreateMultiple", targets("contact", rows...)))
			if got, want := c.s.Stats().Execution-e0, cost.PerRequest+10*cost.PerRowWritten; got != want {
				t.Fatalf("%s: charged %s, want %s", name, got, want)
			}
			burst, left := r.header.Get("x-ms-ratelimit-burst-remaining-xrm-requests"), r.header.Get("x-ms-ratelimit-time-remaining-xrm-requests")
			if (noHeaders && (burst != "" || left != "")) || (!noHeaders && (burst == "" || left == "")) {
				t.Fatalf("%s, NoRateLimitHeaders %v: headers %q, %q", name, noHeaders, burst, left)
			}
		}
	}
	if th := (&Server{o: Options{Limits: Limits{Requests: 6000, ExecutionTime: 1200 * time.Second, Window: 300 * time.Second, Concurrent: 52}, ExecutionCost: CostPerRow}, scale: 1}).IdealThroughput(1000, 4); th.Limit != "execution" || th.Ceiling < 498 || th.Ceiling > 499 {
		t.Fatalf("per-row ceiling at 1000 rows: %+v", th)
	}
}
