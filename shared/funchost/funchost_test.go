package funchost

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func fixture(t *testing.T, name string) *Invocation {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	inv, err := DecodeInvocation(bytes.NewReader(b))
	if err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	return inv
}

const wantBody = `{"evt":{"id":"e-1","type":"customer.updated"}}`

func TestServiceBusBodyEncodings(t *testing.T) {
	for _, name := range []string{"servicebus-double-encoded.json", "servicebus-single-encoded.json", "servicebus-base64.json", "servicebus-object.json"} {
		t.Run(name, func(t *testing.T) {
			m, err := fixture(t, name).ServiceBus("msg")
			if err != nil {
				t.Fatal(err)
			}
			var got, want any
			if err := json.Unmarshal(m.Body, &got); err != nil {
				t.Fatalf("body %q is not JSON: %v", m.Body, err)
			}
			json.Unmarshal([]byte(wantBody), &want)
			gb, _ := json.Marshal(got)
			wb, _ := json.Marshal(want)
			if !bytes.Equal(gb, wb) {
				t.Errorf("body = %s, want %s", m.Body, wantBody)
			}
			if m.MessageID != "e-1" {
				t.Errorf("MessageID = %q, want e-1 (quotes trimmed)", m.MessageID)
			}
		})
	}
}

func TestServiceBusMetadata(t *testing.T) {
	m, err := fixture(t, "servicebus-double-encoded.json").ServiceBus("msg")
	if err != nil {
		t.Fatal(err)
	}
	if m.SessionID != "customer-42" || m.DeliveryCount != 3 || m.SequenceNumber != 42 || m.ContentType != "application/json" ||
		m.Subject != "customer.updated" || m.LockToken != "1c7d4b6e-0a8c-4c57-9d6c-2f7c0e3a9b11" {
		t.Errorf("metadata decoded wrong: %+v", m)
	}
	if want := time.Date(2026, 11, 25, 10, 15, 2, 0, time.UTC); !m.EnqueuedTime.Equal(want) {
		t.Errorf("EnqueuedTime = %v, want %v", m.EnqueuedTime, want)
	}
	if m.ApplicationProperties["replayOf"] != "e-1" {
		t.Errorf("ApplicationProperties = %v", m.ApplicationProperties)
	}
	// Numbers as real numbers and a US-style time also decode.
	m, err = fixture(t, "servicebus-single-encoded.json").ServiceBus("msg")
	if err != nil {
		t.Fatal(err)
	}
	if m.DeliveryCount != 1 || m.SequenceNumber != 7 || m.SessionID != "customer-42" {
		t.Errorf("unquoted metadata decoded wrong: %+v", m)
	}
	if want := time.Date(2026, 11, 25, 10, 15, 2, 0, time.UTC); !m.EnqueuedTime.Equal(want) {
		t.Errorf("EnqueuedTime = %v, want %v", m.EnqueuedTime, want)
	}
}

func TestServiceBusMissingBody(t *testing.T) {
	_, err := fixture(t, "servicebus-no-body.json").ServiceBus("msg")
	if !errors.Is(err, ErrNoTrigger) {
		t.Errorf("want ErrNoTrigger, got %v", err)
	}
	for _, bad := range []string{`{"Data":{"msg":"not json, not base64!"}}`, `{"Data":{"msg":""}}`, `{"Data":{"msg":12}}`} {
		inv, err := DecodeInvocation(strings.NewReader(bad))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := inv.ServiceBus("msg"); err == nil {
			t.Errorf("%s: want an error", bad)
		}
	}
}

func TestHTTPTrigger(t *testing.T) {
	tr, err := fixture(t, "http-post.json").HTTP("req")
	if err != nil {
		t.Fatal(err)
	}
	if tr.Method != "POST" || !tr.BodyPresent || string(tr.Body) != "{\"id\":\"e-1\",\"data\":{}}\n" {
		t.Errorf("decoded wrong: method %s present %v body %q", tr.Method, tr.BodyPresent, tr.Body)
	}
	if got := tr.Headers.Values("X-Nop-Signature"); len(got) != 2 {
		t.Errorf("header arrays lost: %v", got)
	}
	if tr.Params["entity"] != "customer" {
		t.Errorf("Params = %v", tr.Params)
	}
	req, err := tr.Request(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(req.Body)
	if req.URL.Path != "/api/events/customer" || req.Method != "POST" || !bytes.Equal(b, tr.Body) || req.Header.Get("Content-Type") != "application/json; charset=utf-8" {
		t.Errorf("request built wrong: %s %s %q", req.Method, req.URL, b)
	}

	tr, err = fixture(t, "http-no-body.json").HTTP("req")
	if err != nil {
		t.Fatal(err)
	}
	if tr.BodyPresent || len(tr.Body) != 0 || tr.Method != "GET" {
		t.Errorf("absent body: present %v body %q", tr.BodyPresent, tr.Body)
	}
}

func TestTimer(t *testing.T) {
	tm, err := fixture(t, "timer-null-status.json").Timer("timer")
	if err != nil {
		t.Fatal(err)
	}
	if tm.IsPastDue || !tm.Last.IsZero() {
		t.Errorf("null status: %+v", tm)
	}
	tm, err = fixture(t, "timer-odd-status.json").Timer("timer")
	if err != nil {
		t.Fatal(err)
	}
	if !tm.IsPastDue || !tm.LastUpdated.IsZero() || tm.Next.IsZero() {
		t.Errorf("odd status: %+v", tm)
	}
}

func TestEncodersRoundTrip(t *testing.T) {
	now := time.Date(2026, 11, 25, 10, 0, 0, 0, time.UTC)
	body := []byte(`{"evt":{"id":"e-9","MessageId":"collides","data":{"id":9}}}`)
	b, err := EncodeServiceBus("orders", "msg", ServiceBusMessage{Body: body, MessageID: "e-9", SessionID: "order-9", DeliveryCount: 2, SequenceNumber: 5, EnqueuedTime: now, Subject: "order.paid", ContentType: "application/json"}, now)
	if err != nil {
		t.Fatal(err)
	}
	inv, err := DecodeInvocation(bytes.NewReader(b))
	if err != nil {
		t.Fatal(err)
	}
	m, err := inv.ServiceBus("msg")
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(m.Body, body) || m.MessageID != "e-9" || m.SessionID != "order-9" || m.DeliveryCount != 2 || !m.EnqueuedTime.Equal(now) {
		t.Errorf("round trip: %+v body %s", m, m.Body)
	}
	// The encoder is faithful to the host: the body string is encoded twice.
	var d struct{ Data map[string]json.RawMessage }
	json.Unmarshal(b, &d)
	if !strings.HasPrefix(string(d.Data["msg"]), `"\"{`) {
		t.Errorf("body not double-encoded: %s", d.Data["msg"][:20])
	}
	// Top-level body keys replace binding data of the same name in any case, as the
	// host's case-insensitive binding data does: the reason bodies travel in an envelope.
	raw, err := EncodeServiceBus("orders", "msg", ServiceBusMessage{Body: []byte(`{"messageId":"from-the-body"}`), MessageID: "real", SessionID: "order-9", DeliveryCount: 1, EnqueuedTime: now}, now)
	if err != nil {
		t.Fatal(err)
	}
	inv, _ = DecodeInvocation(bytes.NewReader(raw))
	if got := inv.MetadataString("MessageId"); got != "from-the-body" {
		t.Errorf("a body key messageId left Metadata.MessageId %q, want it replaced as the host does", got)
	}
	tb, err := EncodeTimer("autosync", "timer", time.Time{}, time.Time{}, false, now)
	if err != nil {
		t.Fatal(err)
	}
	inv, _ = DecodeInvocation(bytes.NewReader(tb))
	if _, err := inv.Timer("timer"); err != nil {
		t.Errorf("timer round trip: %v", err)
	}
}

func TestServerProtocol(t *testing.T) {
	var gotBody []byte
	srv := NewServer(map[string]Function{
		"customers": func(ctx context.Context, inv *Invocation) (*Result, error) {
			m, err := inv.ServiceBus("msg")
			if err != nil {
				return nil, err
			}
			gotBody = m.Body
			return nil, nil
		},
		"orders": func(ctx context.Context, inv *Invocation) (*Result, error) {
			return nil, errors.New("dataverse throttled: try again")
		},
		"boom": func(ctx context.Context, inv *Invocation) (*Result, error) {
			panic("a bug in a handler") // must not crash the process
		},
		"events": HTTPFunction(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "application/json")
			w.Header().Set("Retry-After", "5")
			w.WriteHeader(http.StatusUnauthorized)
			io.WriteString(w, `{"error":{"code":"unauthorized","message":"`+r.URL.Path+`"}}`)
		}), "req", "res"),
	}, nil, time.Minute)

	do := func(method, path, body string) *httptest.ResponseRecorder {
		rec := httptest.NewRecorder()
		srv.ServeHTTP(rec, httptest.NewRequest(method, path, strings.NewReader(body)))
		if ct := rec.Header().Get("Content-Type"); ct != "application/json" {
			t.Errorf("%s %s: Content-Type %q, want application/json", method, path, ct)
		}
		return rec
	}
	if rec := do("GET", "/", ""); rec.Code != 200 {
		t.Errorf("readiness probe: %d", rec.Code)
	}
	sb, _ := os.ReadFile("testdata/servicebus-double-encoded.json")
	if rec := do("POST", "/customers", string(sb)); rec.Code != 200 || string(gotBody) != wantBody {
		t.Errorf("customers: %d body %s", rec.Code, gotBody)
	} else {
		var res map[string]any
		json.Unmarshal(rec.Body.Bytes(), &res)
		if _, ok := res["Outputs"]; !ok {
			t.Errorf("reply lacks Outputs: %s", rec.Body)
		}
	}
	if rec := do("POST", "/orders", string(sb)); rec.Code != 500 {
		t.Errorf("transient failure must answer non-2xx, got %d", rec.Code)
	}
	if rec := do("POST", "/boom", string(sb)); rec.Code != 500 {
		t.Errorf("panic must become 500, got %d", rec.Code)
	}
	if rec := do("POST", "/nosuch", "{}"); rec.Code != 404 {
		t.Errorf("unknown function: %d", rec.Code)
	}
	if rec := do("POST", "/customers", "not json"); rec.Code != 400 {
		t.Errorf("garbage invocation: %d", rec.Code)
	}
	hb, _ := os.ReadFile("testdata/http-post.json")
	rec := do("POST", "/events", string(hb))
	if rec.Code != 200 {
		t.Fatalf("HTTP trigger: host must get 200, got %d", rec.Code)
	}
	var res struct {
		Outputs map[string]HTTPOutput
	}
	if err := json.Unmarshal(rec.Body.Bytes(), &res); err != nil {
		t.Fatal(err)
	}
	out := res.Outputs["res"]
	if out.StatusCode != "401" || out.Headers["Retry-After"] != "5" || !strings.Contains(out.Body, "/api/events/customer") {
		t.Errorf("Outputs.res = %+v", out)
	}
}

// TestEncodeHTTPAsTheHost: the host passes a body on only when Content-Length is above
// zero, as UTF-8 text without a byte-order mark and with invalid bytes replaced.
func TestEncodeHTTPAsTheHost(t *testing.T) {
	now := time.Date(2026, 12, 4, 10, 0, 0, 0, time.UTC)
	cases := []struct {
		name          string
		body          []byte
		contentLength int64 // > 0: the body's length
		wantPresent   bool
		want          string
	}{
		{"with Content-Length", []byte(`{"id":"e-1"}`), 1, true, `{"id":"e-1"}`},
		{"chunked", []byte(`{"id":"e-1"}`), -1, false, ""},
		{"Content-Length 0", nil, 0, false, ""},
		{"byte-order mark", []byte("\xef\xbb\xbf{\"id\":\"e-1\"}"), 1, true, `{"id":"e-1"}`},
		{"invalid UTF-8", []byte("{\"n\":\"a\xffb\xc3\"}"), 1, true, "{\"n\":\"a\ufffdb\ufffd\"}"},
	}
	for _, c := range cases {
		r := httptest.NewRequest("POST", "https://func-x.azurewebsites.net/api/events/customer?code=k", bytes.NewReader(c.body))
		r.Header.Set("Content-Type", "application/json")
		r.ContentLength = c.contentLength
		if c.contentLength > 0 {
			r.ContentLength = int64(len(c.body))
		}
		if c.contentLength < 0 {
			r.TransferEncoding = []string{"chunked"}
		}
		b, err := EncodeHTTP("events", "req", r, map[string]string{"entity": "customer"}, now)
		if err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		inv, err := DecodeInvocation(bytes.NewReader(b))
		if err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		h, err := inv.HTTP("req")
		if err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		if h.BodyPresent != c.wantPresent || string(h.Body) != c.want {
			t.Errorf("%s: body present %v %q, want %v %q", c.name, h.BodyPresent, h.Body, c.wantPresent, c.want)
		}
		if h.Method != "POST" || h.Params["entity"] != "customer" || h.Query["code"] != "k" || h.Headers.Get("Content-Type") != "application/json" {
			t.Errorf("%s: decoded %+v", c.name, h)
		}
	}
}
