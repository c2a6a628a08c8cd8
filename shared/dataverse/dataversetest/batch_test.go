package dataversetest

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"mime"
	"mime/multipart"
	"net/http"
	"net/textproto"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
)

type bpart struct {
	method, url, contentID string
	body                   any
	hdr                    []string
}

// batchBody builds a $batch body: items are bpart (plain) or []bpart (a change set).
func batchBody(boundary string, items ...any) string {
	var b strings.Builder
	writeReq := func(p bpart) {
		b.WriteString("Content-Type: application/http\r\nContent-Transfer-Encoding: binary\r\n")
		if p.contentID != "" {
			b.WriteString("Content-ID: " + p.contentID + "\r\n")
		}
		b.WriteString("\r\n" + p.method + " " + p.url + " HTTP/1.1\r\n")
		for i := 0; i+1 < len(p.hdr); i += 2 {
			b.WriteString(p.hdr[i] + ": " + p.hdr[i+1] + "\r\n")
		}
		if p.body != nil {
			js, _ := json.Marshal(p.body)
			b.WriteString("Content-Type: application/json; type=entry\r\n\r\n" + string(js) + "\r\n")
		} else {
			b.WriteString("\r\n")
		}
	}
	for n, it := range items {
		b.WriteString("--" + boundary + "\r\n")
		switch v := it.(type) {
		case bpart:
			writeReq(v)
		case []bpart:
			cs := fmt.Sprintf("changeset_%d", n)
			b.WriteString("Content-Type: multipart/mixed; boundary=" + cs + "\r\n\r\n")
			for _, p := range v {
				b.WriteString("--" + cs + "\r\n")
				writeReq(p)
			}
			b.WriteString("--" + cs + "--\r\n")
		}
	}
	b.WriteString("--" + boundary + "--\r\n")
	return b.String()
}

type bresp struct {
	status    int
	contentID string
	header    http.Header
	body      string
}

// parseBatchResponse flattens the multipart response into per-operation results.
func parseBatchResponse(t *testing.T, r res) []bresp {
	t.Helper()
	_, params, err := mime.ParseMediaType(r.header.Get("Content-Type"))
	if err != nil {
		t.Fatalf("batch response content type %q: %v", r.header.Get("Content-Type"), err)
	}
	var out []bresp
	var walk func(body io.Reader, boundary string)
	walk = func(body io.Reader, boundary string) {
		mr := multipart.NewReader(body, boundary)
		for {
			p, err := mr.NextPart()
			if err == io.EOF {
				return
			}
			if err != nil {
				t.Fatalf("batch response: %v", err)
			}
			ct := p.Header.Get("Content-Type")
			if strings.HasPrefix(ct, "multipart/mixed") {
				_, cp, _ := mime.ParseMediaType(ct)
				walk(p, cp["boundary"])
				continue
			}
			raw, _ := io.ReadAll(p)
			line, rest, _ := strings.Cut(string(raw), "\r\n")
			var code int
			fmt.Sscanf(line, "HTTP/1.1 %d", &code)
			hdrs, body, _ := strings.Cut(rest, "\r\n\r\n")
			h := http.Header{}
			for _, l := range strings.Split(hdrs, "\r\n") {
				if k, v, ok := strings.Cut(l, ":"); ok {
					h.Add(textproto.TrimString(k), strings.TrimSpace(v))
				}
			}
			out = append(out, bresp{status: code, contentID: p.Header.Get("Content-ID"), header: h, body: strings.TrimSpace(body)})
		}
	}
	walk(bytes.NewReader(r.raw), params["boundary"])
	return out
}

func (c *tc) batch(body string, boundary string, hdr ...string) res {
	c.t.Helper()
	return c.do("POST", "$batch", body, append([]string{"Content-Type", "multipart/mixed; boundary=" + boundary}, hdr...)...)
}

// Learn: webapi/execute-batch-operations-using-web-api: change set with Content-ID references in URL and body; response layout.
func TestBatch_ChangeSetContentIDs(t *testing.T) {
	c := newTC(t, Options{})
	body := batchBody("batch_1",
		[]bpart{
			{method: "POST", url: "/api/data/v9.2/accounts", contentID: "1", body: map[string]any{"name": "Parent"}},
			{method: "POST", url: c.s.URL() + "/api/data/v9.2/contacts", contentID: "2", body: map[string]any{"lastname": "Kid", "parentcustomerid_account@odata.bind": "$1"}},
			{method: "PATCH", url: "$2", contentID: "3", body: map[string]any{"firstname": "Karl"}},
		},
		bpart{method: "GET", url: "contacts?$select=fullname", hdr: []string{"Accept", "application/json"}},
	)
	r := c.must(200, c.batch(body, "batch_1"))
	parts := parseBatchResponse(t, r)
	if len(parts) != 4 {
		t.Fatalf("%d parts: %s", len(parts), r.raw)
	}
	for i, want := range []int{204, 204, 204, 200} {
		if parts[i].status != want {
			t.Fatalf("part %d status %d want %d: %s", i, parts[i].status, want, parts[i].body)
		}
	}
	if parts[0].contentID != "1" || parts[1].contentID != "2" || parts[0].header.Get("OData-EntityId") == "" {
		t.Fatalf("content ids / headers: %+v", parts[:2])
	}
	con := c.s.Rows("contacts")
	acc := c.s.Rows("accounts")
	if len(con) != 1 || len(acc) != 1 || con[0]["_parentcustomerid_value"] != acc[0]["accountid"] || con[0]["fullname"] != "Karl Kid" {
		t.Fatalf("rows: %v %v", con, acc)
	}
	if !strings.Contains(parts[3].body, "Karl Kid") {
		t.Fatalf("GET part: %s", parts[3].body)
	}
	// Undeclared reference → 400 with the documented message.
	body = batchBody("b2", []bpart{{method: "POST", url: "contacts", contentID: "1", body: map[string]any{"lastname": "x", "parentcustomerid_account@odata.bind": "$9"}}})
	r = c.must(400, c.batch(body, "b2"))
	parts = parseBatchResponse(t, r)
	if len(parts) != 1 || !strings.Contains(parts[0].body, "Content-ID Reference: '$9' does not exist in the batch context.") {
		t.Fatalf("undeclared ref: %s", r.raw)
	}
}

// Learn: webapi/execute-batch-operations-using-web-api: a failing operation rolls back its whole change set; without
// continue-on-error processing stops (batch 400); with it the batch is 200.
func TestBatch_RollbackAndStop(t *testing.T) {
	c := newTC(t, Options{})
	missing := uuid.NewString()
	failingSet := []bpart{
		{method: "POST", url: "accounts", contentID: "1", body: map[string]any{"name": "Rolled back"}},
		{method: "PATCH", url: "contacts(" + missing + ")", contentID: "2", body: map[string]any{"lastname": "x"}, hdr: []string{"If-Match", "*"}},
	}
	after := bpart{method: "POST", url: "accounts", body: map[string]any{"name": "After"}}
	r := c.must(400, c.batch(batchBody("b", failingSet, after), "b"))
	parts := parseBatchResponse(t, r)
	if len(parts) != 1 || parts[0].status != 404 {
		t.Fatalf("stop at first error: %+v", parts)
	}
	if n := c.s.Count("accounts"); n != 0 {
		t.Fatalf("%d accounts after rollback + stop, want 0", n)
	}
	r = c.must(200, c.batch(batchBody("b", failingSet, after), "b", "Prefer", "odata.continue-on-error"))
	parts = parseBatchResponse(t, r)
	if len(parts) != 2 || parts[0].status != 404 || parts[1].status != 204 {
		t.Fatalf("continue-on-error: %+v", parts)
	}
	if rows := c.s.Rows("accounts"); len(rows) != 1 || rows[0]["name"] != "After" {
		t.Fatalf("accounts: %v", rows)
	}
}

// web-api-client-errors: every line must end in CRLF, else 400 0x80048d19 "Stream was not readable".
func TestBatch_CRLF(t *testing.T) {
	c := newTC(t, Options{})
	body := strings.ReplaceAll(batchBody("b", bpart{method: "GET", url: "WhoAmI"}), "\r\n", "\n")
	r := c.must(400, c.batch(body, "b"))
	if r.errCode() != "0x80048d19" || !strings.Contains(r.errMsg(), "Stream was not readable") {
		t.Fatalf("LF body: %s", r.raw)
	}
	// GET inside a change set is rejected.
	c.must(400, c.batch(batchBody("b", []bpart{{method: "GET", url: "WhoAmI"}}), "b"))
	// More than 1000 operations.
	var ops []bpart
	for i := 0; i < 1001; i++ {
		ops = append(ops, bpart{method: "POST", url: "accounts", contentID: fmt.Sprint(i), body: map[string]any{"name": "n"}})
	}
	c.must(400, c.batch(batchBody("b", ops), "b"))
	if c.s.Count("accounts") != 0 {
		t.Fatal("oversized batch wrote rows")
	}
}

// Learn: api-limits: a $batch counts once against the request limit.
func TestBatch_CountsOnce(t *testing.T) {
	c := newTC(t, Options{Limits: Limits{Requests: 2}})
	var ops []any
	for i := 0; i < 5; i++ {
		ops = append(ops, bpart{method: "POST", url: "accounts", body: map[string]any{"name": "n"}})
	}
	c.must(200, c.batch(batchBody("b", ops...), "b"))
	c.must(200, c.do("GET", "WhoAmI", nil))
	r := c.must(429, c.do("GET", "WhoAmI", nil))
	if r.errCode() != "0x80072322" {
		t.Fatalf("429: %s", r.raw)
	}
	if st := c.s.Stats(); st.BatchParts != 5 {
		t.Fatalf("BatchParts = %d", st.BatchParts)
	}
}

// Faults.FailBatchPart: the operations before the failing one ran, later ones didn't; a
// 5xx part fails the batch with its status, a 4xx (429 included) with 400 as documented.
// A part 429 carries Retry-After and holds the user like any 429.
func TestBatch_PartFaults(t *testing.T) {
	c := newTC(t, Options{ViolationGrace: time.Nanosecond})
	three := func() string {
		return batchBody("b", bpart{method: "POST", url: "contacts", body: map[string]any{"lastname": "1"}},
			bpart{method: "POST", url: "contacts", body: map[string]any{"lastname": "2"}},
			bpart{method: "POST", url: "contacts", body: map[string]any{"lastname": "3"}})
	}
	c.s.SetFaults(Faults{FailBatchPart: 2, FailBatchPartStatus: 503})
	c.must(503, c.batch(three(), "b"))
	if n := c.s.Count("contacts"); n != 1 {
		t.Fatalf("after a 503 at part 2: %d contacts, want 1", n)
	}
	c.s.SetFaults(Faults{FailBatchPart: 3, FailBatchPartStatus: 429, Force429RetryAfter: 2 * time.Second})
	r := c.must(400, c.batch(three(), "b"))
	if !strings.Contains(string(r.raw), "HTTP/1.1 429") || !strings.Contains(string(r.raw), "Retry-After: 2") {
		t.Fatalf("part 429: %s", r.raw)
	}
	if n := c.s.Count("contacts"); n != 3 {
		t.Fatalf("after a 429 at part 3: %d contacts, want 3", n)
	}
	time.Sleep(time.Millisecond)
	c.must(200, c.do("GET", "WhoAmI", nil))
	if v := c.s.RetryAfterViolations(); v != 1 {
		t.Fatalf("request during the part's Retry-After: %d violations, want 1", v)
	}
}

// Faults.DropAnswers: the request runs, its answer never arrives.
func TestDropAnswerAfterApplying(t *testing.T) {
	c := newTC(t, Options{})
	c.s.SetFaults(Faults{DropAnswers: 1, DropAnswerPath: "contacts"})
	req, _ := http.NewRequest("POST", c.s.URL()+"/api/data/v9.2/contacts", strings.NewReader(`{"lastname":"x"}`))
	req.Header.Set("Authorization", "Bearer "+c.token)
	req.Header.Set("Content-Type", "application/json")
	if resp, err := c.s.HTTPClient().Do(req); err == nil {
		resp.Body.Close()
		t.Fatalf("answer arrived: %d", resp.StatusCode)
	}
	if n := c.s.Count("contacts"); n != 1 {
		t.Fatalf("%d contacts, want 1 (the request ran)", n)
	}
	c.must(204, c.do("POST", "contacts", map[string]any{"lastname": "y"}))
}
