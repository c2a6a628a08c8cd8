package intake_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nopsync/nopsync/shared/intake"
	"github.com/nopsync/nopsync/shared/localqueue"
	"github.com/nopsync/nopsync/shared/nop"
	"github.com/nopsync/nopsync/shared/queue"
)

// fakeSender records what it is sent, or fails.
type fakeSender struct {
	mu    sync.Mutex
	fail  error
	sends []sent
}

type sent struct {
	queue string
	msgs  []queue.Message
}

func (f *fakeSender) Send(_ context.Context, q string, msgs []queue.Message) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.fail != nil {
		return f.fail
	}
	f.sends = append(f.sends, sent{q, msgs})
	return nil
}

func (f *fakeSender) count() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.sends)
}

// fakeSecret is generated per test run: no secret-looking value is committed.
func fakeSecret(t testing.TB) string {
	b := make([]byte, 16)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return "test-secret-" + hex.EncodeToString(b)
}

var now = time.Date(2026, 11, 25, 10, 15, 0, 0, time.UTC)

type env struct {
	in     *intake.Intake
	sender *fakeSender
	secret string
	logs   *bytes.Buffer
}

func newEnv(t testing.TB, opts ...func(*intake.Options)) *env {
	e := &env{sender: &fakeSender{}, secret: fakeSecret(t), logs: &bytes.Buffer{}}
	o := intake.Options{
		Sender:  e.sender,
		Secrets: intake.StaticSecrets{e.secret},
		Now:     func() time.Time { return now },
		Log:     slog.New(slog.NewTextHandler(e.logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
	}
	for _, f := range opts {
		f(&o)
	}
	e.in = intake.New(o)
	return e
}

func (e *env) signed(entity string, body []byte) intake.Request {
	h := http.Header{}
	h.Set("Content-Type", "application/json")
	h.Set(intake.SignatureHeader, intake.Sign(e.secret, now, body))
	return intake.Request{Method: "POST", Entity: entity, Header: h, Body: body, BodyPresent: true}
}

func testdata(t testing.TB, name string) []byte {
	t.Helper()
	// The nop package's valid events are reused: one definition of a valid event.
	b, err := os.ReadFile(filepath.Join("..", "nop", "testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

type errBody struct {
	Error struct {
		Code    string  `json:"code"`
		Message string  `json:"message"`
		Index   *int    `json:"index"`
		Field   *string `json:"field"`
	} `json:"error"`
}

func decodeErr(t *testing.T, r intake.Response) errBody {
	t.Helper()
	var b errBody
	dec := json.NewDecoder(bytes.NewReader(r.Body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&b); err != nil {
		t.Fatalf("error body %s: %v", r.Body, err)
	}
	if b.Error.Message == "" {
		t.Errorf("error without message: %s", r.Body)
	}
	return b
}

func TestStatuses(t *testing.T) {
	cust := testdata(t, "customer.json")
	invalid := bytes.Replace(cust, []byte(`"id": 7`), []byte(`"id": 0`), 1)
	big := make([]byte, nop.MaxBodyBytes+1)
	largeEvent := bytes.Replace(cust, []byte(`"Grace"`), []byte(`"`+strings.Repeat("g", nop.MaxEventBytes)+`"`), 1)
	many := "[" + strings.TrimSuffix(strings.Repeat(string(cust)+",", 1001), ",") + "]"

	type check struct {
		status int
		code   string
		index  *int
		field  *string
		header map[string]string
	}
	ip := func(i int) *int { return &i }
	sp := func(s string) *string { return &s }
	cases := []struct {
		name string
		req  func(e *env) intake.Request
		want check
	}{
		{"405 GET", func(e *env) intake.Request { r := e.signed("customer", cust); r.Method = "GET"; return r },
			check{status: 405, code: "method_not_allowed", header: map[string]string{"Allow": "POST"}}},
		{"405 PUT before 404", func(e *env) intake.Request { r := e.signed("invoice", cust); r.Method = "PUT"; return r },
			check{status: 405, code: "method_not_allowed", header: map[string]string{"Allow": "POST"}}},
		{"404 unknown entity", func(e *env) intake.Request { return e.signed("invoice", cust) },
			check{status: 404, code: "not_found"}},
		{"404 plural entity", func(e *env) intake.Request { return e.signed("customers", cust) },
			check{status: 404, code: "not_found"}},
		{"415 text/plain", func(e *env) intake.Request {
			r := e.signed("customer", cust)
			r.Header.Set("Content-Type", "text/plain")
			return r
		}, check{status: 415, code: "unsupported_media_type"}},
		{"415 missing content type", func(e *env) intake.Request {
			r := e.signed("customer", cust)
			r.Header.Del("Content-Type")
			return r
		}, check{status: 415, code: "unsupported_media_type"}},
		{"415 latin1 charset", func(e *env) intake.Request {
			r := e.signed("customer", cust)
			r.Header.Set("Content-Type", "application/json; charset=iso-8859-1")
			return r
		}, check{status: 415, code: "unsupported_media_type"}},
		{"415 before 413", func(e *env) intake.Request {
			r := e.signed("customer", big)
			r.Header.Set("Content-Type", "application/xml")
			return r
		}, check{status: 415, code: "unsupported_media_type"}},
		{"202 charset utf-8", func(e *env) intake.Request {
			r := e.signed("customer", cust)
			r.Header.Set("Content-Type", "application/json; charset=UTF-8")
			return r
		}, check{status: 202}},
		{"202 +json suffix", func(e *env) intake.Request {
			r := e.signed("customer", cust)
			r.Header.Set("Content-Type", "application/vnd.nop.event+json")
			return r
		}, check{status: 202}},
		{"202 lower-case header names", func(e *env) intake.Request {
			r := e.signed("customer", cust)
			r.Header = http.Header{"content-type": {"application/json"}, "x-nop-signature": {r.Header.Get(intake.SignatureHeader)}}
			return r
		}, check{status: 202}},
		{"413 body over 4 MiB before signature", func(e *env) intake.Request {
			r := e.signed("customer", big)
			r.Header.Del(intake.SignatureHeader)
			return r
		}, check{status: 413, code: "too_large"}},
		{"413 event over 200 KiB", func(e *env) intake.Request { return e.signed("customer", largeEvent) },
			check{status: 413, code: "too_large"}},
		{"401 unsigned", func(e *env) intake.Request {
			r := e.signed("customer", cust)
			r.Header.Del(intake.SignatureHeader)
			return r
		}, check{status: 401, code: "unauthorized"}},
		{"401 before 400: unsigned malformed JSON", func(e *env) intake.Request {
			r := e.signed("customer", []byte(`{`))
			r.Header.Del(intake.SignatureHeader)
			return r
		}, check{status: 401, code: "unauthorized"}},
		{"400 malformed JSON", func(e *env) intake.Request { return e.signed("customer", []byte(`{"id":`)) },
			check{status: 400, code: "invalid_event"}},
		{"411 body not passed on (signed over the body the sender sent)", func(e *env) intake.Request {
			r := e.signed("customer", cust)
			r.Body, r.BodyPresent = nil, false
			return r
		}, check{status: 411, code: "length_required"}},
		{"411 empty body, before the signature", func(e *env) intake.Request {
			r := e.signed("customer", nil)
			r.Header.Del(intake.SignatureHeader)
			return r
		}, check{status: 411, code: "length_required"}},
		{"400 byte-order mark", func(e *env) intake.Request { return e.signed("customer", append([]byte("\xef\xbb\xbf"), cust...)) },
			check{status: 400, code: "invalid_event"}},
		{"400 invalid field", func(e *env) intake.Request { return e.signed("customer", invalid) },
			check{status: 400, code: "invalid_event", index: ip(0), field: sp("data.id")}},
		{"400 second event invalid", func(e *env) intake.Request {
			return e.signed("customer", []byte("["+string(cust)+","+strings.Replace(string(invalid), "evt-customer-0001", "b", 1)+"]"))
		}, check{status: 400, code: "invalid_event", index: ip(1), field: sp("data.id")}},
		{"400 type/path mismatch", func(e *env) intake.Request { return e.signed("product", cust) },
			check{status: 400, code: "invalid_event", index: ip(0), field: sp("type")}},
		{"400 more than 1000 events", func(e *env) intake.Request { return e.signed("customer", []byte(many)) },
			check{status: 400, code: "invalid_event"}},
		{"202 accepted", func(e *env) intake.Request { return e.signed("customer", cust) },
			check{status: 202}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t)
			resp := e.in.Handle(context.Background(), tc.req(e))
			if resp.Status != tc.want.status {
				t.Fatalf("status %d, want %d: %s", resp.Status, tc.want.status, resp.Body)
			}
			if ct := resp.Header.Get("Content-Type"); ct != "application/json" {
				t.Errorf("Content-Type %q", ct)
			}
			for k, v := range tc.want.header {
				if got := resp.Header.Get(k); got != v {
					t.Errorf("header %s = %q, want %q", k, got, v)
				}
			}
			if tc.want.status == 202 {
				var a struct {
					Accepted int      `json:"accepted"`
					IDs      []string `json:"ids"`
				}
				if err := json.Unmarshal(resp.Body, &a); err != nil || a.Accepted != 1 || len(a.IDs) != 1 || a.IDs[0] != "evt-customer-0001" {
					t.Errorf("202 body %s", resp.Body)
				}
				if e.sender.count() != 1 {
					t.Errorf("sent %d times", e.sender.count())
				}
				return
			}
			if e.sender.count() != 0 {
				t.Errorf("refused request was sent to the queue")
			}
			b := decodeErr(t, resp)
			if b.Error.Code != tc.want.code {
				t.Errorf("code %q, want %q", b.Error.Code, tc.want.code)
			}
			if (b.Error.Index == nil) != (tc.want.index == nil) || (b.Error.Index != nil && *b.Error.Index != *tc.want.index) {
				t.Errorf("index %v, want %v", b.Error.Index, tc.want.index)
			}
			if (b.Error.Field == nil) != (tc.want.field == nil) || (b.Error.Field != nil && *b.Error.Field != *tc.want.field) {
				t.Errorf("field %v, want %v", b.Error.Field, tc.want.field)
			}
		})
	}
}

func TestSignature(t *testing.T) {
	cust := testdata(t, "customer.json")
	sig := func(secret string, at time.Time, body []byte) string { return intake.Sign(secret, at, body) }
	v1 := func(s string) string { _, v, _ := strings.Cut(s, "v1="); return v }
	cases := []struct {
		name   string
		header func(e *env) string
		body   []byte // nil: cust
		status int
	}{
		{"valid", func(e *env) string { return sig(e.secret, now, cust) }, nil, 202},
		{"t 300 s in the past", func(e *env) string { return sig(e.secret, now.Add(-300*time.Second), cust) }, nil, 202},
		{"t 300 s in the future", func(e *env) string { return sig(e.secret, now.Add(300*time.Second), cust) }, nil, 202},
		{"t 301 s in the past", func(e *env) string { return sig(e.secret, now.Add(-301*time.Second), cust) }, nil, 401},
		{"t 301 s in the future", func(e *env) string { return sig(e.secret, now.Add(301*time.Second), cust) }, nil, 401},
		{"wrong secret", func(e *env) string { return sig(fakeSecret(t), now, cust) }, nil, 401},
		{"tampered body", func(e *env) string { return sig(e.secret, now, cust) },
			bytes.Replace(cust, []byte("Grace"), []byte("Grape"), 1), 401},
		{"t changed after signing", func(e *env) string {
			return fmt.Sprintf("t=%d,v1=%s", now.Unix()+1, v1(sig(e.secret, now, cust)))
		}, nil, 401},
		{"several v1, second matches", func(e *env) string {
			return fmt.Sprintf("t=%d,v1=%s,v1=%s", now.Unix(), v1(sig(fakeSecret(t), now, cust)), v1(sig(e.secret, now, cust)))
		}, nil, 202},
		{"several v1, none matches", func(e *env) string {
			return fmt.Sprintf("t=%d,v1=%s,v1=%s", now.Unix(), v1(sig(fakeSecret(t), now, cust)), v1(sig(fakeSecret(t), now, cust)))
		}, nil, 401},
		{"several v1, one unreadable, another matches", func(e *env) string {
			return fmt.Sprintf("t=%d,v1=zz,v1=%s", now.Unix(), v1(sig(e.secret, now, cust)))
		}, nil, 202},
		{"several v1, one unreadable, none matches", func(e *env) string {
			return fmt.Sprintf("t=%d,v1=%s,v1=zz", now.Unix(), v1(sig(fakeSecret(t), now, cust)))
		}, nil, 401},
		{"spaces and an unknown scheme", func(e *env) string {
			return fmt.Sprintf(" t=%d , v0=abc , v1=%s ", now.Unix(), v1(sig(e.secret, now, cust)))
		}, nil, 202},
		{"upper-case hex", func(e *env) string {
			return fmt.Sprintf("t=%d,v1=%s", now.Unix(), strings.ToUpper(v1(sig(e.secret, now, cust))))
		}, nil, 202},
		{"missing", func(e *env) string { return "" }, nil, 401},
		{"no t", func(e *env) string { return "v1=" + v1(sig(e.secret, now, cust)) }, nil, 401},
		{"two t", func(e *env) string {
			return fmt.Sprintf("t=%d,t=%d,v1=%s", now.Unix(), now.Unix(), v1(sig(e.secret, now, cust)))
		}, nil, 401},
		{"t not a number", func(e *env) string { return "t=soon,v1=" + v1(sig(e.secret, now, cust)) }, nil, 401},
		{"negative t", func(e *env) string { return "t=-5,v1=" + v1(sig(e.secret, now, cust)) }, nil, 401},
		{"no v1", func(e *env) string { return fmt.Sprintf("t=%d", now.Unix()) }, nil, 401},
		{"v1 not hex", func(e *env) string { return fmt.Sprintf("t=%d,v1=zz", now.Unix()) }, nil, 401},
		{"v1 truncated", func(e *env) string {
			return fmt.Sprintf("t=%d,v1=%s", now.Unix(), v1(sig(e.secret, now, cust))[:62])
		}, nil, 401},
		{"garbage", func(e *env) string { return "sha256=abc" }, nil, 401},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t)
			body := tc.body
			if body == nil {
				body = cust
			}
			r := e.signed("customer", body)
			if h := tc.header(e); h == "" {
				r.Header.Del(intake.SignatureHeader)
			} else {
				r.Header.Set(intake.SignatureHeader, h)
			}
			resp := e.in.Handle(context.Background(), r)
			if resp.Status != tc.status {
				t.Fatalf("status %d, want %d: %s", resp.Status, tc.status, resp.Body)
			}
			if tc.status == 401 {
				if b := decodeErr(t, resp); b.Error.Code != "unauthorized" {
					t.Errorf("code %q", b.Error.Code)
				}
				if e.sender.count() != 0 {
					t.Error("sent")
				}
			}
			// Neither the signature nor the secret nor the body reaches the logs.
			logs := e.logs.String()
			if h := r.Header.Get(intake.SignatureHeader); (h != "" && strings.Contains(logs, v1(h)) && v1(h) != "") ||
				strings.Contains(logs, e.secret) || strings.Contains(logs, "Grace") {
				t.Errorf("secret material or body in logs: %s", logs)
			}
		})
	}
}

func TestSecretRotationAndSources(t *testing.T) {
	cust := testdata(t, "customer.json")
	old, cur := fakeSecret(t), fakeSecret(t)
	e := newEnv(t, func(o *intake.Options) { o.Secrets = intake.StaticSecrets{cur, old} })
	r := e.signed("customer", cust)
	r.Header.Set(intake.SignatureHeader, intake.Sign(old, now, cust))
	if resp := e.in.Handle(context.Background(), r); resp.Status != 202 {
		t.Errorf("signed with the previous secret during rotation: %d", resp.Status)
	}

	// Secret source failing: 503, nothing parsed or sent.
	e = newEnv(t, func(o *intake.Options) { o.Secrets = failingSecrets{} })
	resp := e.in.Handle(context.Background(), e.signed("customer", cust))
	if resp.Status != 503 || resp.Header.Get("Retry-After") == "" || decodeErr(t, resp).Error.Code != "unavailable" || e.sender.count() != 0 {
		t.Errorf("failing secret source: %d %v %s", resp.Status, resp.Header, resp.Body)
	}

	// No secret configured: refused unless unsigned requests are allowed.
	for _, secrets := range []intake.WebhookSecrets{nil, intake.StaticSecrets{}, intake.StaticSecrets{""}} {
		e = newEnv(t, func(o *intake.Options) { o.Secrets = secrets })
		unsigned := e.signed("customer", cust)
		unsigned.Header.Del(intake.SignatureHeader)
		if resp := e.in.Handle(context.Background(), unsigned); resp.Status != 503 || e.sender.count() != 0 {
			t.Errorf("no secret, unsigned not allowed (%v): %d", secrets, resp.Status)
		}
		e = newEnv(t, func(o *intake.Options) { o.Secrets = secrets; o.AllowUnsigned = true })
		if resp := e.in.Handle(context.Background(), unsigned); resp.Status != 202 || e.sender.count() != 1 {
			t.Errorf("no secret, unsigned allowed (%v): %d %s", secrets, resp.Status, resp.Body)
		}
	}
	// AllowUnsigned never waives a configured secret.
	e = newEnv(t, func(o *intake.Options) { o.AllowUnsigned = true })
	unsigned := e.signed("customer", cust)
	unsigned.Header.Del(intake.SignatureHeader)
	if resp := e.in.Handle(context.Background(), unsigned); resp.Status != 401 {
		t.Errorf("secret configured, AllowUnsigned, unsigned request: %d", resp.Status)
	}
}

type failingSecrets struct{}

func (failingSecrets) WebhookSecrets(context.Context) ([]string, error) {
	return nil, errors.New("vault unreachable")
}

func TestAllOrNothing(t *testing.T) {
	cust := testdata(t, "customer.json")
	second := bytes.Replace(cust, []byte("evt-customer-0001"), []byte("evt-customer-0002"), 1)
	body := []byte("[" + string(cust) + "," + string(second) + "]")

	e := newEnv(t)
	e.sender.fail = errors.New("amqp: connection refused")
	resp := e.in.Handle(context.Background(), e.signed("customer", body))
	if resp.Status != 503 || resp.Header.Get("Retry-After") != "30" || resp.Header.Get("Content-Type") != "application/json" {
		t.Fatalf("failing sender: %d %v", resp.Status, resp.Header)
	}
	if b := decodeErr(t, resp); b.Error.Code != "unavailable" || b.Error.Index != nil {
		t.Errorf("body %s", resp.Body)
	}
	if strings.Contains(string(resp.Body), "amqp") {
		t.Errorf("internal error leaked to the store: %s", resp.Body)
	}

	// One invalid event: nothing is sent, not even the valid one.
	e = newEnv(t)
	bad := bytes.Replace(second, []byte(`"isGuest": false`), []byte(`"isGuest": "no"`), 1)
	resp = e.in.Handle(context.Background(), e.signed("customer", []byte("["+string(cust)+","+string(bad)+"]")))
	if resp.Status != 400 || e.sender.count() != 0 {
		t.Errorf("invalid second event: %d, %d sends", resp.Status, e.sender.count())
	}
	b := decodeErr(t, resp)
	if *b.Error.Index != 1 || *b.Error.Field != "data.isGuest" || !strings.Contains(b.Error.Message, "data.isGuest") {
		t.Errorf("400 body %s", resp.Body)
	}

	// Custom Retry-After.
	e = newEnv(t, func(o *intake.Options) { o.RetryAfter = 90 * time.Second })
	e.sender.fail = errors.New("down")
	if resp := e.in.Handle(context.Background(), e.signed("customer", cust)); resp.Header.Get("Retry-After") != "90" {
		t.Errorf("Retry-After %q", resp.Header.Get("Retry-After"))
	}
}

func TestQueuedMessages(t *testing.T) {
	order := testdata(t, "order.json")
	e := newEnv(t)
	if resp := e.in.Handle(context.Background(), e.signed("order", order)); resp.Status != 202 {
		t.Fatalf("%d %s", resp.Status, resp.Body)
	}
	if len(e.sender.sends) != 1 || e.sender.sends[0].queue != queue.Orders || len(e.sender.sends[0].msgs) != 1 {
		t.Fatalf("sends: %+v", e.sender.sends)
	}
	m := e.sender.sends[0].msgs[0]
	want := append(append([]byte(`{"evt":`), bytes.TrimSpace(order)...), '}')
	if m.MessageID != "evt-order-0001" || m.SessionID != "order-900" || m.Subject != "order.paid" ||
		m.ContentType != "application/json" || !bytes.Equal(m.Body, want) {
		t.Errorf("message %+v", m)
	}
	if l := e.logs.String(); !strings.Contains(l, "entity=order") || !strings.Contains(l, "count=1") ||
		!strings.Contains(l, "evt-order-0001") || strings.Contains(l, "Bletchley") || strings.Contains(l, e.secret) {
		t.Errorf("log line: %s", l)
	}

	// A 1000-event import of ~4 KB events: chunk messages, all under the limit, in order.
	prod := testdata(t, "product.json")
	parts := make([]string, 1000)
	for i := range parts {
		p := strings.Replace(string(prod), "evt-product-0001", fmt.Sprintf("imp-%04d", i), 1)
		p = strings.Replace(p, `"id": 30,`, fmt.Sprintf(`"id": %d,`, 100+i), 1)
		p = strings.Replace(p, `<p>All tripods</p>`, strings.Repeat("d", 4000-len(p)+len(`<p>All tripods</p>`)), 1)
		parts[i] = p
	}
	body := []byte("[" + strings.Join(parts, ",") + "]")
	e = newEnv(t)
	resp := e.in.Handle(context.Background(), e.signed("product", body))
	if resp.Status != 202 {
		t.Fatalf("%d %s", resp.Status, resp.Body)
	}
	var a intake.Accepted
	if err := json.Unmarshal(resp.Body, &a); err != nil || a.Accepted != 1000 || len(a.IDs) != 1000 || a.IDs[999] != "imp-0999" {
		t.Errorf("202 body: %v %d", err, a.Accepted)
	}
	// An array is import work: it goes to the bulk queue, so the live queue's single
	// events never wait behind its chunks.
	if len(e.sender.sends) != 1 || e.sender.sends[0].queue != queue.ProductsBulk {
		t.Fatalf("one Send call to products-bulk expected: %+v", e.sender.sends)
	}
	msgs := e.sender.sends[0].msgs
	if len(msgs) < 16 {
		t.Errorf("%d chunks for 4 MB", len(msgs))
	}
	var got []string
	for _, m := range msgs {
		if len(m.Body) >= 256<<10 || m.Subject != "chunk" || !strings.HasPrefix(m.SessionID, "product-chunk-") {
			t.Errorf("chunk %s: %d bytes, subject %q, session %q", m.MessageID, len(m.Body), m.Subject, m.SessionID)
		}
		evs, _, err := nop.DecodeEnvelope(m.Body)
		if err != nil {
			t.Fatal(err)
		}
		ids := make([]string, len(evs))
		for i, ev := range evs {
			ids[i] = ev.ID
			got = append(got, ev.ID)
		}
		if m.MessageID != nop.ChunkID(ids) {
			t.Errorf("message id %s", m.MessageID)
		}
	}
	if strings.Join(got, ",") != strings.Join(a.IDs, ",") {
		t.Error("events lost or reordered across chunks")
	}
	if strings.Contains(e.logs.String(), "dddd") {
		t.Error("body in logs")
	}
}

// An event id is up to 128 characters as Service Bus counts them (UTF-16 code units), so
// an id of 128 non-ASCII characters is accepted and queued, not refused by the queue's
// own check as a message id too long (counted in bytes it would be 384).
func TestLongNonASCIIEventID(t *testing.T) {
	q, err := localqueue.Open(localqueue.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { q.Close() })
	e := newEnv(t, func(o *intake.Options) { o.Sender = q })
	for _, id := range []string{strings.Repeat("€", 128), strings.Repeat("😀", 64)} {
		body := strings.Replace(string(testdata(t, "customer.json")), `"evt-customer-0001"`, strconv.Quote(id), 1)
		if !strings.Contains(body, id) {
			t.Fatal("test event has no id to replace")
		}
		if resp := e.in.Handle(context.Background(), e.signed("customer", []byte(body))); resp.Status != 202 {
			t.Fatalf("id of %d bytes: %d %s", len(id), resp.Status, resp.Body)
		}
		st, err := q.Stats(context.Background(), queue.Customers)
		if err != nil || st.Active == 0 {
			t.Fatalf("nothing queued: %+v %v", st, err)
		}
	}
	long := strings.Repeat("€", 129)
	body := strings.Replace(string(testdata(t, "customer.json")), `"evt-customer-0001"`, strconv.Quote(long), 1)
	if resp := e.in.Handle(context.Background(), e.signed("customer", []byte(body))); resp.Status != 400 || !strings.Contains(string(resp.Body), "id") {
		t.Errorf("an id of 129 characters: %d %s, want 400 naming the id", resp.Status, resp.Body)
	}
}

func examplesDir(t testing.TB) string {
	_, file, _, _ := runtime.Caller(0)
	dir := filepath.Join(filepath.Dir(file), "..", "..", "examples")
	if _, err := os.Stat(dir); err != nil {
		t.Fatalf("examples not found at %s (expected examples/ at the repository root): %v", dir, err)
	}
	return dir
}

func TestExamples(t *testing.T) {
	files, _ := filepath.Glob(filepath.Join(examplesDir(t), "*.json"))
	if len(files) == 0 {
		t.Fatal("no examples")
	}
	for _, f := range files {
		t.Run(filepath.Base(f), func(t *testing.T) {
			body, err := os.ReadFile(f)
			if err != nil {
				t.Fatal(err)
			}
			entity := "order"
			switch {
			case strings.HasPrefix(filepath.Base(f), "customer"):
				entity = "customer"
			case strings.HasPrefix(filepath.Base(f), "product"):
				entity = "product"
			}
			e := newEnv(t)
			resp := e.in.Handle(context.Background(), e.signed(entity, body))
			if resp.Status != 202 {
				t.Fatalf("%d %s", resp.Status, resp.Body)
			}
			var a intake.Accepted
			if err := json.Unmarshal(resp.Body, &a); err != nil {
				t.Fatal(err)
			}
			var probe any
			_ = json.Unmarshal(body, &probe)
			n := 1
			if arr, ok := probe.([]any); ok {
				n = len(arr)
				if arr[0].(map[string]any)["id"] != a.IDs[0] {
					t.Errorf("ids out of order")
				}
			}
			if a.Accepted != n || len(a.IDs) != n {
				t.Errorf("accepted %d of %d", a.Accepted, n)
			}
		})
	}
}

func TestServeHTTP(t *testing.T) {
	e := newEnv(t)
	mux := http.NewServeMux()
	mux.Handle(intake.Pattern, e.in)
	srv := httptest.NewServer(mux)
	defer srv.Close()
	cust := testdata(t, "customer.json")

	do := func(method, path, ct string, body io.Reader, sign []byte) (*http.Response, errBody) {
		t.Helper()
		req, err := http.NewRequest(method, srv.URL+path, body)
		if err != nil {
			t.Fatal(err)
		}
		if ct != "" {
			req.Header.Set("Content-Type", ct)
		}
		if sign != nil {
			req.Header.Set(intake.SignatureHeader, intake.Sign(e.secret, now, sign))
		}
		resp, err := srv.Client().Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var b errBody
		raw, _ := io.ReadAll(resp.Body)
		_ = json.Unmarshal(raw, &b)
		if resp.Header.Get("Content-Type") != "application/json" {
			t.Errorf("%s %s: Content-Type %q", method, path, resp.Header.Get("Content-Type"))
		}
		return resp, b
	}
	if r, _ := do("POST", "/api/events/customer", "application/json", bytes.NewReader(cust), cust); r.StatusCode != 202 {
		t.Errorf("POST: %d", r.StatusCode)
	}
	if r, b := do("GET", "/api/events/customer", "", nil, nil); r.StatusCode != 405 || r.Header.Get("Allow") != "POST" || b.Error.Code != "method_not_allowed" {
		t.Errorf("GET: %d %v", r.StatusCode, b)
	}
	if r, b := do("POST", "/api/events/widget", "application/json", bytes.NewReader(cust), cust); r.StatusCode != 404 || b.Error.Code != "not_found" {
		t.Errorf("unknown entity: %d", r.StatusCode)
	}
	if r, b := do("POST", "/api/events/customer", "text/csv", bytes.NewReader(cust), cust); r.StatusCode != 415 || b.Error.Code != "unsupported_media_type" {
		t.Errorf("csv: %d", r.StatusCode)
	}
	// Over 4 MiB with a Content-Length, and streamed without one: 413 either way.
	big := bytes.Repeat([]byte(" "), nop.MaxBodyBytes+1)
	if r, b := do("POST", "/api/events/customer", "application/json", bytes.NewReader(big), nil); r.StatusCode != 413 || b.Error.Code != "too_large" {
		t.Errorf("big: %d", r.StatusCode)
	}
	if r, b := do("POST", "/api/events/customer", "application/json", io.MultiReader(bytes.NewReader(big)), nil); r.StatusCode != 413 || b.Error.Code != "too_large" {
		t.Errorf("big streamed: %d", r.StatusCode)
	}
	if r, b := do("POST", "/api/events/customer", "application/json", bytes.NewReader(cust), nil); r.StatusCode != 401 || b.Error.Code != "unauthorized" {
		t.Errorf("unsigned: %d", r.StatusCode)
	}
	if e.sender.count() != 1 {
		t.Errorf("%d sends, want 1", e.sender.count())
	}
}

// An event dated ahead of the app's clock is accepted (the contract sets no bound), and
// the log says it: until the clock passes it, the entity's events dated earlier are
// skipped as stale. One a minute ahead (within the signature's own skew) is not remarked.
func TestEventDatedAheadOfTheClockLogged(t *testing.T) {
	for ahead, want := range map[time.Duration]bool{24 * time.Hour: true, time.Minute: false} {
		e := newEnv(t)
		body := strings.Replace(string(testdata(t, "customer.json")), `"2026-01-02T03:04:05.678Z"`,
			strconv.Quote(now.Add(ahead).Format(time.RFC3339)), 1)
		if resp := e.in.Handle(context.Background(), e.signed("customer", []byte(body))); resp.Status != 202 {
			t.Fatalf("%v ahead: %d %s", ahead, resp.Status, resp.Body)
		}
		logged := strings.Contains(e.logs.String(), "ahead of the app's clock") && strings.Contains(e.logs.String(), "id=evt-customer-0001")
		if logged != want {
			t.Errorf("%v ahead: logged %v, want %v; log:\n%s", ahead, logged, want, e.logs)
		}
	}
}

type blockingSender struct{}

func (blockingSender) Send(ctx context.Context, _ string, _ []queue.Message) error {
	<-ctx.Done()
	return ctx.Err()
}

type blockingSecrets struct{}

func (blockingSecrets) WebhookSecrets(ctx context.Context) ([]string, error) {
	<-ctx.Done()
	return nil, ctx.Err()
}

// A queue or Key Vault that hangs gets the store a 503 with Retry-After within the
// intake's own timeout, not the front end's 230 s cut (under the host, a request's only
// deadline is the invocation's, minutes away).
func TestHangingOutsideCallsAnswered503(t *testing.T) {
	for name, o := range map[string]func(*intake.Options){
		"queue":     func(o *intake.Options) { o.Sender = blockingSender{} },
		"key vault": func(o *intake.Options) { o.Secrets = blockingSecrets{} },
	} {
		e := newEnv(t, o, func(o *intake.Options) { o.Timeout = 50 * time.Millisecond })
		req := e.signed("customer", testdata(t, "customer.json"))
		done := make(chan intake.Response, 1)
		go func() { done <- e.in.Handle(context.Background(), req) }()
		select {
		case resp := <-done:
			if resp.Status != 503 || resp.Header.Get("Retry-After") == "" {
				t.Errorf("%s hanging: %d %s, want 503 with Retry-After", name, resp.Status, resp.Body)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("%s hanging: no answer after 10 s", name)
		}
	}
}
