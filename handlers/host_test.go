package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nopsync/nopsync/shared/config"
	"github.com/nopsync/nopsync/shared/dataverse"
	"github.com/nopsync/nopsync/shared/dataverse/dataversetest"
	"github.com/nopsync/nopsync/shared/funchost"
	"github.com/nopsync/nopsync/shared/intake"
	"github.com/nopsync/nopsync/shared/localqueue"
	"github.com/nopsync/nopsync/shared/localstore"
)

// hostApp builds the app as in Azure, but on the embedded queue and state store and a
// simulator, and returns the custom-handler server the Functions host would call.
func hostApp(t *testing.T, secret string) (http.Handler, *localqueue.Queues, *dataversetest.Server) {
	t.Helper()
	a, q, sim := hostTestApp(t, secret)
	return funchost.NewServer(a.functions(), a.log, time.Minute), q, sim
}

// hostTestApp builds the app hostApp serves.
func hostTestApp(t *testing.T, secret string, tune ...func(*config.Config)) (*app, *localqueue.Queues, *dataversetest.Server) {
	t.Helper()
	sim := dataversetest.NewServer(dataversetest.Options{})
	t.Cleanup(sim.Close)
	q, err := localqueue.Open(localqueue.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { q.Close() })
	st, err := localstore.Open("")
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := config.Load(func(k string) (string, bool) { return "", false })
	if err != nil {
		t.Fatal(err)
	}
	cfg.Local = false // as in Azure: a webhook secret is required
	for _, f := range tune {
		f(cfg)
	}
	dv, err := sim.Client(dataverse.Options{MaxRetries: 1, RetryDelay: time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	a := &app{cfg: cfg, log: testLog(t), store: st, sender: q, deadLetters: q, inspector: q, dv: dv}
	if err := a.wire(nil); err == nil {
		t.Fatal("Azure mode without a webhook secret must refuse to start")
	}
	if err := a.wire(intake.StaticSecrets{secret}); err != nil {
		t.Fatal(err)
	}
	return a, q, sim
}

func hostHTTP(t *testing.T, method, url string, headers map[string][]string, body []byte) []byte {
	t.Helper()
	req := map[string]any{"Url": url, "Method": method, "Query": map[string]string{}, "Headers": headers, "Params": map[string]string{}, "Identities": []any{}}
	if body != nil {
		req["Body"] = string(body)
	}
	b, _ := json.Marshal(map[string]any{"Data": map[string]any{"req": req}, "Metadata": map[string]any{"sys": map[string]string{"MethodName": "x"}}})
	return b
}

func callHost(t *testing.T, h http.Handler, fn string, payload []byte) (int, map[string]any) {
	t.Helper()
	rec := httptest.NewRecorder()
	r := httptest.NewRequest("POST", "/"+fn, bytes.NewReader(payload))
	r.Header.Set("X-Azure-Functions-InvocationId", "inv-1")
	h.ServeHTTP(rec, r)
	if ct := rec.Header().Get("Content-Type"); ct != "application/json" {
		t.Errorf("/%s: Content-Type %q", fn, ct)
	}
	var out map[string]any
	json.Unmarshal(rec.Body.Bytes(), &out)
	return rec.Code, out
}

func resOutput(t *testing.T, out map[string]any) (string, map[string]any) {
	t.Helper()
	outs, _ := out["Outputs"].(map[string]any)
	res, _ := outs["res"].(map[string]any)
	status, _ := res["statusCode"].(string)
	var body map[string]any
	s, _ := res["body"].(string)
	json.Unmarshal([]byte(s), &body)
	return status, body
}

// callHostHTTP sends r to the HTTP function fn as the host would (funchost.EncodeHTTP,
// with the route's params) and returns the function's answer (resOutput).
func callHostHTTP(t *testing.T, h http.Handler, fn string, r *http.Request, params map[string]string) (string, map[string]any) {
	t.Helper()
	payload, err := funchost.EncodeHTTP(fn, "req", r, params, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	code, out := callHost(t, h, fn, payload)
	if code != 200 {
		t.Fatalf("host answered %d: %v", code, out)
	}
	return resOutput(t, out)
}

// TestHostProtocolEndToEnd drives the functions with payloads shaped like the host's: a
// signed event through the events HTTP trigger, the queued message through the customers
// Service Bus trigger (body double-encoded), then status and the timer.
func TestHostProtocolEndToEnd(t *testing.T) {
	const secret = "host-test-secret-not-real"
	h, q, sim := hostApp(t, secret)
	ev := example(t, "customer-created.json")
	sig := sign(secret, time.Now().Unix(), ev)
	headers := map[string][]string{"Content-Type": {"application/json"}, "X-Nop-Signature": {sig}, "x-functions-key": {"not-a-real-key"}}

	code, out := callHost(t, h, "events", hostHTTP(t, "POST", "https://func-test.azurewebsites.net/api/events/customer", headers, ev))
	status, body := resOutput(t, out)
	if code != 200 || status != "202" || body["accepted"] != float64(1) {
		t.Fatalf("events: host %d, res %s %v", code, status, body)
	}
	// Unsigned: the caller gets 401, the host still gets 200 (no invocation failure).
	code, out = callHost(t, h, "events", hostHTTP(t, "POST", "https://func-test.azurewebsites.net/api/events/customer", map[string][]string{"Content-Type": {"application/json"}}, ev))
	if status, _ := resOutput(t, out); code != 200 || status != "401" {
		t.Errorf("unsigned: host %d res %s", code, status)
	}
	// No body (the host leaves Body out without Content-Length): 411, not a crash.
	code, out = callHost(t, h, "events", hostHTTP(t, "POST", "https://func-test.azurewebsites.net/api/events/customer", headers, nil))
	if status, _ := resOutput(t, out); code != 200 || status != "411" {
		t.Errorf("missing body: host %d res %s", code, status)
	}

	// The message the events function queued: id, session, envelope.
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	got := make(chan localqueue.Delivery, 1)
	go q.Run(ctx, "customers", 1, func(_ context.Context, d localqueue.Delivery) error {
		select {
		case got <- d:
		default:
		}
		return nil
	})
	var d localqueue.Delivery
	select {
	case d = <-got:
		cancel()
	case <-ctx.Done():
		t.Fatal("no message on the customers queue")
	}
	if d.MessageID != "0b4f8f0e-6a0e-4f43-9d61-2c3b1b1e0001" || d.SessionID != "customer-42" || !bytes.HasPrefix(d.Body, []byte(`{"evt":`)) {
		t.Fatalf("queued message: id %s session %s body %.40s", d.MessageID, d.SessionID, d.Body)
	}

	payload, err := funchost.EncodeServiceBus("customers", "msg", funchost.ServiceBusMessage{Body: d.Body, MessageID: d.MessageID, SessionID: d.SessionID, DeliveryCount: 1, EnqueuedTime: time.Now()}, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	sim.SetFaults(dataversetest.Faults{Error503Rate: 1})
	if code, _ := callHost(t, h, "customers", payload); code < 500 {
		t.Errorf("Dataverse failing: the queue function must fail the invocation (non-2xx), got %d", code)
	}
	sim.SetFaults(dataversetest.Faults{})
	if code, out := callHost(t, h, "customers", payload); code != 200 {
		t.Fatalf("customers: %d %v", code, out)
	}
	if sim.Count("contacts") != 1 {
		t.Errorf("contacts in Dataverse: %d, want 1", sim.Count("contacts"))
	}
	// Redelivery of the same message: still one contact.
	if code, _ := callHost(t, h, "customers", payload); code != 200 || sim.Count("contacts") != 1 {
		t.Errorf("redelivery: %d, contacts %d", code, sim.Count("contacts"))
	}

	code, out = callHost(t, h, "status", hostHTTP(t, "GET", "https://func-test.azurewebsites.net/api/status", map[string][]string{}, nil))
	if status, body := resOutput(t, out); code != 200 || status != "200" || body["entities"] == nil {
		t.Errorf("status: %d %s %v", code, status, body)
	}
	// The host routes like ASP.NET Core (literal segments in any case, a trailing slash
	// taken) and passes the URL on as the caller wrote it.
	for _, u := range []string{"/API/Status", "/api/status/", "/Api/STATUS/customer/42", "/api/status/customer/42/"} {
		code, out = callHost(t, h, "status", hostHTTP(t, "GET", "https://func-test.azurewebsites.net"+u, map[string][]string{}, nil))
		if status, body := resOutput(t, out); code != 200 || status != "200" || (body["entities"] == nil && body["entity"] == nil && body["status"] == nil) {
			t.Errorf("GET %s: %d %s %v", u, code, status, body)
		}
	}
	timer := []byte(`{"Data":{"timer":{"Schedule":{"AdjustForDST":true},"ScheduleStatus":null,"IsPastDue":false}},"Metadata":{"sys":{"MethodName":"autosync"}}}`)
	if code, out := callHost(t, h, "autosync", timer); code != 200 {
		t.Errorf("autosync with null ScheduleStatus: %d %v", code, out)
	}
	if code, _ := callHost(t, h, "nosuch", timer); code != 404 {
		t.Errorf("unknown function: %d", code)
	}
}

// TestEveryFunctionServed: each function folder has its implementation.
func TestEveryFunctionServed(t *testing.T) {
	h, _, _ := hostApp(t, "x-secret-not-real")
	for _, fn := range functionNames {
		code, _ := callHost(t, h, fn, []byte(`{"Data":{},"Metadata":{}}`))
		if code == 404 {
			t.Errorf("function %s is not served", fn)
		}
	}
}

// TestInvalidQueueMessageIsVisible: a queue message that fails validation (tampered with,
// or replayed by hand) is acknowledged without effect, and shows on the status page
// with its reason instead of ending nowhere; its redelivery is recorded once.
func TestInvalidQueueMessageIsVisible(t *testing.T) {
	h, _, sim := hostApp(t, "x-secret-not-real")
	bad := []byte(`{"evt":{"id":"tampered-1","type":"customer.updated","occurredOnUtc":"yesterday","data":{"id":7}}}`)
	payload, err := funchost.EncodeServiceBus("customers", "msg", funchost.ServiceBusMessage{Body: bad, MessageID: "tampered-1", SessionID: "customer-7", DeliveryCount: 1, EnqueuedTime: time.Now()}, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 2; i++ {
		if code, out := callHost(t, h, "customers", payload); code != 200 {
			t.Fatalf("invalid message must be acknowledged, got %d %v", code, out)
		}
	}
	if n := sim.Stats().RowsWritten; n != 0 {
		t.Errorf("%d rows written for an invalid message", n)
	}
	code, out := callHost(t, h, "status", hostHTTP(t, "GET", "https://func-test.azurewebsites.net/api/status", map[string][]string{}, nil))
	status, body := resOutput(t, out)
	if code != 200 || status != "200" {
		t.Fatalf("status: %d %s", code, status)
	}
	msgs, _ := body["invalidMessages"].([]any)
	if body["invalidMessageCount"] != float64(1) || len(msgs) != 1 {
		t.Fatalf("status invalid messages: count %v list %v", body["invalidMessageCount"], msgs)
	}
	m := msgs[0].(map[string]any)
	if m["queue"] != "customers" || !strings.Contains(fmt.Sprint(m["error"]), "occurredOnUtc") || !strings.Contains(fmt.Sprint(m["body"]), "tampered-1") {
		t.Errorf("invalid message entry: %v", m)
	}
}

// A queue message whose body can't be read at all (not JSON, not base64: hand-sent or
// tampered with) is acknowledged and listed as invalid with its reason, as one that fails
// validation is, instead of failing every delivery and dead-lettering without a reason.
func TestUnreadableQueueBodyIsVisible(t *testing.T) {
	h, _, _ := hostApp(t, "x-secret-not-real")
	for i, body := range []string{"hello", "<evt/>"} {
		once, _ := json.Marshal(body)
		twice, _ := json.Marshal(string(once)) // the host's double-encoded string
		payload := []byte(fmt.Sprintf(`{"Data":{"msg":%s},"Metadata":{"DeliveryCount":"1","MessageId":"\"tampered-%d\"","SessionId":"\"customer-9\"","SequenceNumber":"7","EnqueuedTime":"2026-12-05T01:02:03+00:00"}}`, twice, i))
		if code, out := callHost(t, h, "customers", payload); code != 200 {
			t.Fatalf("body %q: answered %d %v, want 200 (acknowledged)", body, code, out)
		}
	}
	code, out := callHost(t, h, "status", hostHTTP(t, "GET", "https://func-test.azurewebsites.net/api/status", map[string][]string{}, nil))
	status, page := resOutput(t, out)
	if code != 200 || status != "200" {
		t.Fatalf("status: %d %s", code, status)
	}
	if page["invalidMessageCount"] != float64(2) {
		t.Fatalf("status invalid messages: count %v list %v, want 2", page["invalidMessageCount"], page["invalidMessages"])
	}
}

// TestEventsBodyAsTheHostPassesIt: requests built as the Functions host builds its payload
// from them (funchost.EncodeHTTP). A chunked request reaches the app without its body and
// is answered 411 length_required, telling the sender to send Content-Length, not a
// misleading 401; the same request with Content-Length is accepted; a byte-order mark is
// dropped by the host, so a signature made over it does not match.
func TestEventsBodyAsTheHostPassesIt(t *testing.T) {
	const secret = "host-body-secret-not-real"
	h, _, _ := hostApp(t, secret)
	ev := example(t, "customer-created.json")
	send := func(body []byte, chunked bool) (string, map[string]any) {
		t.Helper()
		r := httptest.NewRequest("POST", "https://func-test.azurewebsites.net/api/events/customer", bytes.NewReader(body))
		r.Header.Set("Content-Type", "application/json")
		r.Header.Set("X-Nop-Signature", sign(secret, time.Now().Unix(), body))
		r.Header.Set("x-functions-key", "not-a-real-key")
		if chunked {
			r.ContentLength, r.TransferEncoding = -1, []string{"chunked"}
		}
		return callHostHTTP(t, h, "events", r, map[string]string{"entity": "customer"})
	}

	status, body := send(ev, true)
	e, _ := body["error"].(map[string]any)
	if status != "411" || e["code"] != "length_required" || !strings.Contains(fmt.Sprint(e["message"]), "Content-Length") {
		t.Errorf("chunked request: %s %v, want 411 length_required naming Content-Length", status, body)
	}
	if status, body := send(ev, false); status != "202" {
		t.Errorf("with Content-Length: %s %v, want 202", status, body)
	}
	if status, body := send(append([]byte("\xef\xbb\xbf"), ev...), false); status != "401" {
		t.Errorf("byte-order mark (dropped by the host, so the signature over it fails): %s %v, want 401", status, body)
	}
}

// TestSyncBodyAsTheHostPassesIt: the sync route's body, lost on the way when the request
// is chunked (the host passes a body on only with a Content-Length), is answered 411 and
// starts nothing, rather than starting the default run the caller did not ask for; an
// empty request still starts the defaults.
func TestSyncBodyAsTheHostPassesIt(t *testing.T) {
	h, _, _ := hostApp(t, "sync-body-secret-not-real")
	send := func(body []byte, chunked bool) (string, map[string]any) {
		t.Helper()
		var rd io.Reader
		if body != nil {
			rd = bytes.NewReader(body)
		}
		r := httptest.NewRequest("POST", "https://func-test.azurewebsites.net/api/sync", rd)
		r.Header.Set("Content-Type", "application/json")
		if chunked {
			r.ContentLength, r.TransferEncoding = -1, []string{"chunked"}
		}
		return callHostHTTP(t, h, "sync", r, nil)
	}
	status, body := send([]byte(`{"entities":["order"],"scope":"all"}`), true)
	if e, _ := body["error"].(map[string]any); status != "411" || e["code"] != "length_required" || !strings.Contains(fmt.Sprint(e["message"]), "Content-Length") {
		t.Errorf("chunked sync request: %s %v, want 411 length_required naming Content-Length", status, body)
	}
	status, body = send([]byte(`{"entities":["order"],"scope":"all"}`), false)
	if status != "202" || body["runId"] == nil {
		t.Errorf("with Content-Length: %s %v, want 202 with the run", status, body)
	}
	if status, body := send(nil, false); status != "202" || body["runId"] == nil {
		t.Errorf("no body: %s %v, want 202 with the run of the defaults", status, body)
	}
}

// TestPictureFromInsideRefused: with SYNC_IMAGES on, a product whose picture URL points
// into the app's network (here a loopback server, standing in for the metadata endpoint
// or the handler itself) is synced without the picture, the refusal is on its status, and
// the server is never asked.
func TestPictureFromInsideRefused(t *testing.T) {
	const secret = "picture-secret-not-real"
	var hits atomic.Int32
	inside := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		w.Write([]byte("\x89PNG inside"))
	}))
	defer inside.Close()
	a, q, sim := hostTestApp(t, secret, func(c *config.Config) { c.SyncImages = true })
	h := funchost.NewServer(a.functions(), a.log, time.Minute)

	var ev map[string]any
	if err := json.Unmarshal(example(t, "product-simple.json"), &ev); err != nil {
		t.Fatal(err)
	}
	ev["data"].(map[string]any)["pictureUrls"] = []string{inside.URL + "/p.png"}
	body, _ := json.Marshal(ev)
	headers := map[string][]string{"Content-Type": {"application/json"}, "X-Nop-Signature": {sign(secret, time.Now().Unix(), body)}}
	if _, out := callHost(t, h, "events", hostHTTP(t, "POST", "https://func-test.azurewebsites.net/api/events/product", headers, body)); out == nil {
		t.Fatal("events: no answer")
	} else if status, b := resOutput(t, out); status != "202" {
		t.Fatalf("events: %s %v", status, b)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	done := make(chan int, 1)
	go q.Run(ctx, "products", 1, func(_ context.Context, d localqueue.Delivery) error {
		payload, err := funchost.EncodeServiceBus("products", "msg", funchost.ServiceBusMessage{Body: d.Body, MessageID: d.MessageID, SessionID: d.SessionID, DeliveryCount: 1, EnqueuedTime: time.Now()}, time.Now())
		if err != nil {
			return err
		}
		code, _ := callHost(t, h, "products", payload)
		select {
		case done <- code:
		default:
		}
		return nil
	})
	select {
	case code := <-done:
		if code != 200 {
			t.Fatalf("products function: %d", code)
		}
	case <-ctx.Done():
		t.Fatal("the product message was not delivered")
	}
	cancel()

	if sim.Count("products") != 1 {
		t.Errorf("products in Dataverse: %d, want 1 (synced without its picture)", sim.Count("products"))
	}
	_, out := callHost(t, h, "status", hostHTTP(t, "GET", "https://func-test.azurewebsites.net/api/status/product/7", map[string][]string{}, nil))
	status, st := resOutput(t, out)
	details, _ := st["details"].(map[string]any)
	if status != "200" || st["status"] != "synced" || !strings.Contains(fmt.Sprint(details["imageError"]), "refused") {
		t.Errorf("product status: %s %v; want synced with the refusal in details.imageError", status, st)
	}
	if n := hits.Load(); n != 0 {
		t.Errorf("the inside server was asked %d times", n)
	}
}

// Every request the host routes to an admin function (a method its function.json lists,
// a path its route template takes: {action} and {runId} are parameters, any case) is
// answered with the app's JSON error body, not the Go mux's plain-text 404 or 405.
func TestHostRoutedRequestsAnsweredInJSON(t *testing.T) {
	h, _, _ := hostApp(t, "routes-secret-not-real")
	for _, c := range []struct {
		fn, method, path string
		status           string
		code             string
	}{
		{"deadletters", "POST", "/api/deadletters/customer", "405", "method_not_allowed"},
		{"deadletters", "GET", "/api/deadletters/customer/replay", "405", "method_not_allowed"},
		{"deadletters", "GET", "/api/deadletters/customer/other", "404", "not_found"},
		{"deadletters", "POST", "/api/deadletters/customer/other", "404", "not_found"},
		{"deadletters", "POST", "/api/deadletters/customer/Replay", "200", ""}, // replayed: nothing was dead-lettered
		{"sync", "POST", "/api/sync/some-run", "405", "method_not_allowed"},
		{"sync", "GET", "/api/sync/some-run", "404", "not_found"},
		{"status", "GET", "/api/status/customer", "404", "not_found"},
	} {
		_, out := callHost(t, h, c.fn, hostHTTP(t, c.method, "https://func-test.azurewebsites.net"+c.path, map[string][]string{}, nil))
		status, body := resOutput(t, out) // body nil: not JSON
		e, _ := body["error"].(map[string]any)
		if code, _ := e["code"].(string); status != c.status || code != c.code {
			t.Errorf("%s %s: %s %v, want %s with a JSON error %q", c.method, c.path, status, body, c.status, c.code)
		}
	}
}
