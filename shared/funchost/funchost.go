// Package funchost implements the Azure Functions custom-handler protocol: the host POSTs
// {Data, Metadata} to /{FunctionName} and reads {Outputs, Logs, ReturnValue} back.
//
// The decoders are deliberately tolerant, because the host's payloads vary with its
// version and the trigger (Azure/azure-functions-host src/WebJobs.Script/Workers/Http/
// HttpScriptInvocationContext.cs and Workers/MessageExtensions/ScriptInvocationContextExtensions.cs;
// Microsoft Learn: azure-functions/functions-custom-handlers): Service Bus bodies
// arrive double-encoded, single-encoded or base64; metadata strings arrive JSON-quoted and
// numbers as strings; an HTTP body is absent without Content-Length; timer schedule
// status may be null or oddly formatted.
package funchost

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"
)

// MaxInvocationBytes bounds what the handler reads from the host for one invocation.
// Service Bus messages are at most 256 KiB (Standard) and events requests at most 4 MiB,
// both of which may be escaped twice (up to ~2x each time) and base64-encoded.
const MaxInvocationBytes = 64 << 20

// Invocation is the host's request for one function invocation.
type Invocation struct {
	Data     map[string]json.RawMessage `json:"Data"`
	Metadata map[string]json.RawMessage `json:"Metadata"`
	// InvocationID comes from the X-Azure-Functions-InvocationId header.
	InvocationID string `json:"-"`
}

// DecodeInvocation reads an invocation request body.
func DecodeInvocation(r io.Reader) (*Invocation, error) {
	b, err := io.ReadAll(io.LimitReader(r, MaxInvocationBytes+1))
	if err != nil {
		return nil, fmt.Errorf("funchost: read invocation: %w", err)
	}
	if len(b) > MaxInvocationBytes {
		return nil, fmt.Errorf("funchost: invocation larger than %d bytes", MaxInvocationBytes)
	}
	var inv Invocation
	if err := json.Unmarshal(b, &inv); err != nil {
		return nil, fmt.Errorf("funchost: invocation is not the host's {Data, Metadata} JSON: %w", err)
	}
	if inv.Data == nil {
		inv.Data = map[string]json.RawMessage{}
	}
	if inv.Metadata == nil {
		inv.Metadata = map[string]json.RawMessage{}
	}
	return &inv, nil
}

// MetadataString returns a metadata value as a plain string: JSON strings are unquoted,
// and strings that hold a quoted string again ("\"abc\"") are unquoted once more.
func (inv *Invocation) MetadataString(key string) string {
	raw, ok := lookupFold(inv.Metadata, key)
	if !ok {
		return ""
	}
	s, ok := unquoteAll(raw)
	if !ok {
		return strings.TrimSpace(string(raw))
	}
	return s
}

// MetadataInt returns a metadata number that may arrive as a number or as a string.
func (inv *Invocation) MetadataInt(key string) (int64, bool) {
	s := inv.MetadataString(key)
	if s == "" {
		return 0, false
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil {
		return 0, false
	}
	return n, true
}

// MetadataTime parses a metadata time leniently (with or without an offset; no offset means UTC).
func (inv *Invocation) MetadataTime(key string) (time.Time, bool) {
	return parseLenientTime(inv.MetadataString(key))
}

// lookupFold finds key case-insensitively: the host's binding data is case-insensitive.
func lookupFold(m map[string]json.RawMessage, key string) (json.RawMessage, bool) {
	if v, ok := m[key]; ok {
		return v, true
	}
	for k, v := range m {
		if strings.EqualFold(k, key) {
			return v, true
		}
	}
	return nil, false
}

// unquoteAll unquotes a JSON string value, repeatedly while the result is itself a
// quoted JSON string. ok is false when raw is not a JSON string.
func unquoteAll(raw json.RawMessage) (string, bool) {
	var s string
	if err := json.Unmarshal(raw, &s); err != nil {
		return "", false
	}
	for i := 0; i < 3 && len(s) >= 2 && s[0] == '"' && s[len(s)-1] == '"'; i++ {
		var inner string
		if err := json.Unmarshal([]byte(s), &inner); err != nil {
			break
		}
		s = inner
	}
	return s, true
}

// ServiceBusMessage is a Service Bus trigger's message as the handler sees it.
type ServiceBusMessage struct {
	Body                  []byte
	MessageID             string
	SessionID             string
	ContentType           string
	Subject               string
	LockToken             string
	DeliveryCount         int
	SequenceNumber        int64
	EnqueuedTime          time.Time
	ApplicationProperties map[string]any
}

// ErrNoTrigger means the invocation lacks the named trigger value.
var ErrNoTrigger = errors.New("funchost: trigger value missing")

// ErrUndecodableBody means a Service Bus trigger value holds no body the app can read (not
// JSON, not base64 of UTF-8 text): no delivery will make it readable. ServiceBus returns
// the message with the trigger value itself as its Body alongside it.
var ErrUndecodableBody = errors.New("funchost: message body can't be read")

// ServiceBus decodes the Service Bus trigger named name.
func (inv *Invocation) ServiceBus(name string) (*ServiceBusMessage, error) {
	raw, ok := lookupFold(inv.Data, name)
	if !ok || isNull(raw) {
		return nil, fmt.Errorf("service bus trigger %q: %w", name, ErrNoTrigger)
	}
	body, berr := decodeBody(raw)
	if berr != nil {
		body = append([]byte(nil), raw...)
	}
	m := &ServiceBusMessage{
		Body:        body,
		MessageID:   inv.MetadataString("MessageId"),
		SessionID:   inv.MetadataString("SessionId"),
		ContentType: inv.MetadataString("ContentType"),
		Subject:     inv.MetadataString("Subject"),
		LockToken:   inv.MetadataString("LockToken"),
	}
	if m.Subject == "" {
		m.Subject = inv.MetadataString("Label")
	}
	if n, ok := inv.MetadataInt("DeliveryCount"); ok {
		m.DeliveryCount = int(n)
	}
	if n, ok := inv.MetadataInt("SequenceNumber"); ok {
		m.SequenceNumber = n
	}
	if t, ok := inv.MetadataTime("EnqueuedTime"); ok {
		m.EnqueuedTime = t
	} else if t, ok := inv.MetadataTime("EnqueuedTimeUtc"); ok {
		m.EnqueuedTime = t
	}
	if raw, ok := lookupFold(inv.Metadata, "ApplicationProperties"); ok && !isNull(raw) {
		props := map[string]any{}
		if err := json.Unmarshal(raw, &props); err == nil {
			m.ApplicationProperties = props
		} else if s, ok := unquoteAll(raw); ok {
			if json.Unmarshal([]byte(s), &props) == nil {
				m.ApplicationProperties = props
			}
		}
	}
	if berr != nil {
		return m, fmt.Errorf("service bus trigger %q: %w: %w", name, ErrUndecodableBody, berr)
	}
	return m, nil
}

// decodeBody turns a trigger value into the message body bytes. The value may be: a JSON
// string holding the body (single-encoded), a JSON string holding a JSON string holding the
// body (double-encoded, the host's default for string inputs), a base64 string (binary
// dataType or byte[] bodies), or the body itself as a JSON object or array.
func decodeBody(raw json.RawMessage) ([]byte, error) {
	raw = bytes.TrimSpace(raw)
	if len(raw) == 0 {
		return nil, errors.New("empty trigger value")
	}
	if raw[0] == '{' || raw[0] == '[' {
		return append([]byte(nil), raw...), nil
	}
	var s string
	if err := json.Unmarshal(raw, &s); err != nil {
		return nil, fmt.Errorf("trigger value is neither a JSON string nor an object: %w", err)
	}
	for depth := 0; depth < 4; depth++ {
		t := strings.TrimSpace(s)
		switch {
		case t == "":
			return nil, errors.New("empty message body")
		case t[0] == '{' || t[0] == '[':
			return []byte(t), nil
		case t[0] == '"':
			var inner string
			if err := json.Unmarshal([]byte(t), &inner); err != nil {
				return nil, fmt.Errorf("message body is a malformed JSON string: %w", err)
			}
			s = inner
		default:
			b, err := base64.StdEncoding.DecodeString(t)
			if err != nil {
				return nil, errors.New("message body is neither JSON nor base64")
			}
			if !utf8.Valid(b) {
				return nil, errors.New("message body decoded from base64 is not UTF-8 text")
			}
			s = string(b)
		}
	}
	return nil, errors.New("message body is encoded too many times")
}

func isNull(raw json.RawMessage) bool {
	t := bytes.TrimSpace(raw)
	return len(t) == 0 || bytes.Equal(t, []byte("null"))
}

// Timer is a timer trigger's value. Every field may be missing: the host sends
// ScheduleStatus null on a first run or without a monitor.
type Timer struct {
	IsPastDue   bool
	Last        time.Time
	Next        time.Time
	LastUpdated time.Time
}

// Timer decodes the timer trigger named name. Odd or missing schedule status fields are
// left zero rather than failing: the app does not depend on them.
func (inv *Invocation) Timer(name string) (*Timer, error) {
	raw, ok := lookupFold(inv.Data, name)
	if !ok || isNull(raw) {
		return nil, fmt.Errorf("timer trigger %q: %w", name, ErrNoTrigger)
	}
	if s, ok := unquoteAll(raw); ok {
		raw = json.RawMessage(s)
	}
	var v struct {
		IsPastDue      any
		ScheduleStatus json.RawMessage
	}
	if err := json.Unmarshal(raw, &v); err != nil {
		return nil, fmt.Errorf("timer trigger %q: not a TimerInfo object: %w", name, err)
	}
	t := &Timer{}
	switch p := v.IsPastDue.(type) {
	case bool:
		t.IsPastDue = p
	case string:
		t.IsPastDue, _ = strconv.ParseBool(p)
	}
	if !isNull(v.ScheduleStatus) {
		var st map[string]json.RawMessage
		if json.Unmarshal(v.ScheduleStatus, &st) == nil {
			get := func(k string) time.Time {
				raw, ok := lookupFold(st, k)
				if !ok {
					return time.Time{}
				}
				s, _ := unquoteAll(raw)
				tm, _ := parseLenientTime(s)
				return tm
			}
			t.Last, t.Next, t.LastUpdated = get("Last"), get("Next"), get("LastUpdated")
		}
	}
	return t, nil
}

var timeLayouts = []string{
	time.RFC3339Nano,
	"2006-01-02T15:04:05.9999999",
	"2006-01-02T15:04:05",
	"2006-01-02 15:04:05Z07:00",
	"2006-01-02 15:04:05",
	"1/2/2006 3:04:05 PM -07:00",
	"1/2/2006 3:04:05 PM",
	"01/02/2006 15:04:05",
}

func parseLenientTime(s string) (time.Time, bool) {
	s = strings.TrimSpace(s)
	if s == "" {
		return time.Time{}, false
	}
	for _, l := range timeLayouts {
		if t, err := time.Parse(l, s); err == nil {
			return t.UTC(), true
		}
	}
	return time.Time{}, false
}

// HTTPTrigger is an HTTP trigger's request as the host sends it (no forwarding).
type HTTPTrigger struct {
	URL     string
	Method  string
	Query   map[string]string
	Headers http.Header
	Params  map[string]string
	// Body is the raw request body; BodyPresent is false when the host left Body out
	// (it does when the request had no Content-Length > 0).
	Body        []byte
	BodyPresent bool
}

// HTTP decodes the HTTP trigger named name.
func (inv *Invocation) HTTP(name string) (*HTTPTrigger, error) {
	raw, ok := lookupFold(inv.Data, name)
	if !ok || isNull(raw) {
		return nil, fmt.Errorf("http trigger %q: %w", name, ErrNoTrigger)
	}
	var v map[string]json.RawMessage
	if err := json.Unmarshal(raw, &v); err != nil {
		return nil, fmt.Errorf("http trigger %q: not a request object: %w", name, err)
	}
	t := &HTTPTrigger{Headers: http.Header{}, Query: map[string]string{}, Params: map[string]string{}}
	str := func(k string) string {
		r, ok := lookupFold(v, k)
		if !ok {
			return ""
		}
		s, _ := unquoteAll(r)
		return s
	}
	t.URL, t.Method = str("Url"), strings.ToUpper(str("Method"))
	if t.Method == "" {
		return nil, fmt.Errorf("http trigger %q: Method missing", name)
	}
	if r, ok := lookupFold(v, "Headers"); ok && !isNull(r) {
		var hs map[string]json.RawMessage
		if err := json.Unmarshal(r, &hs); err != nil {
			return nil, fmt.Errorf("http trigger %q: Headers: %w", name, err)
		}
		for k, hv := range hs {
			var many []string
			if json.Unmarshal(hv, &many) == nil {
				for _, s := range many {
					t.Headers.Add(k, s)
				}
				continue
			}
			var one string
			if json.Unmarshal(hv, &one) == nil {
				t.Headers.Add(k, one)
			}
		}
	}
	for _, m := range []struct {
		key string
		dst map[string]string
	}{{"Query", t.Query}, {"Params", t.Params}} {
		r, ok := lookupFold(v, m.key)
		if !ok || isNull(r) {
			continue
		}
		if s, ok := unquoteAll(r); ok { // the docs' example shows "Query": "{}"
			r = json.RawMessage(s)
		}
		var kv map[string]any
		if json.Unmarshal(r, &kv) == nil {
			for k, val := range kv {
				if val != nil {
					m.dst[k] = fmt.Sprint(val)
				}
			}
		}
	}
	if r, ok := lookupFold(v, "Body"); ok && !isNull(r) {
		t.BodyPresent = true
		r = bytes.TrimSpace(r)
		if r[0] == '"' {
			var s string
			if err := json.Unmarshal(r, &s); err != nil {
				return nil, fmt.Errorf("http trigger %q: Body: %w", name, err)
			}
			t.Body = []byte(s)
			// The host sends bytes (base64) for octet-stream and multipart bodies.
			if ct := t.Headers.Get("Content-Type"); strings.HasPrefix(ct, "application/octet-stream") || strings.HasPrefix(ct, "multipart/") {
				if b, err := base64.StdEncoding.DecodeString(s); err == nil {
					t.Body = b
				}
			}
		} else {
			// Some host versions hand JSON bodies over parsed; keep the JSON text as sent.
			t.Body = append([]byte(nil), r...)
		}
	}
	return t, nil
}

// Request builds a net/http request from the trigger, so ordinary http.Handlers serve
// host invocations the same way they serve local mode.
func (t *HTTPTrigger) Request(ctx context.Context) (*http.Request, error) {
	u, err := url.Parse(t.URL)
	if err != nil || t.URL == "" {
		u = &url.URL{Path: "/"}
	}
	if u.RawQuery == "" && len(t.Query) > 0 {
		q := url.Values{}
		for k, v := range t.Query {
			q.Set(k, v)
		}
		u.RawQuery = q.Encode()
	}
	target := u.RequestURI()
	r, err := http.NewRequestWithContext(ctx, t.Method, target, bytes.NewReader(t.Body))
	if err != nil {
		return nil, fmt.Errorf("funchost: build request %s: %w", t.Method, err)
	}
	r.Header = t.Headers.Clone()
	r.Host = u.Host
	r.RequestURI = target
	r.ContentLength = int64(len(t.Body))
	if !t.BodyPresent {
		r.Body = http.NoBody
		r.ContentLength = 0
	}
	return r, nil
}

// Result is the handler's answer to the host.
type Result struct {
	Outputs     map[string]any `json:"Outputs"`
	Logs        []string       `json:"Logs"`
	ReturnValue any            `json:"ReturnValue"`
}

// HTTPOutput is an http output binding's value: the response the host sends the caller.
type HTTPOutput struct {
	StatusCode string            `json:"statusCode"`
	Body       string            `json:"body"`
	Headers    map[string]string `json:"headers"`
}

// Function handles one invocation. A nil error answers the host 200 (success, and for HTTP
// triggers the caller gets Outputs' status); an error answers 500, which fails the
// invocation: for Service Bus the message is abandoned and redelivered. Return errors only
// for transient failures.
type Function func(ctx context.Context, inv *Invocation) (*Result, error)

// Server serves the custom-handler protocol.
type Server struct {
	functions map[string]Function
	log       *slog.Logger
	timeout   time.Duration
}

// NewServer serves the named functions. timeout bounds one invocation (the host sends no
// cancellation; keep it below functionTimeout).
func NewServer(functions map[string]Function, log *slog.Logger, timeout time.Duration) *Server {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Server{functions: functions, log: log, timeout: timeout}
}

// ServeHTTP answers the readiness probe (GET /) and POST /{FunctionName}.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	name := strings.TrimPrefix(r.URL.Path, "/")
	if name == "" {
		writeJSON(w, http.StatusOK, map[string]string{"status": "ready"})
		return
	}
	fn, ok := s.functions[name]
	if !ok {
		writeJSON(w, http.StatusNotFound, map[string]string{"error": "no function named " + strconv.Quote(name)})
		return
	}
	if r.Method != http.MethodPost {
		w.Header().Set("Allow", http.MethodPost)
		writeJSON(w, http.StatusMethodNotAllowed, map[string]string{"error": "the host invokes functions with POST"})
		return
	}
	inv, err := DecodeInvocation(r.Body)
	if err != nil {
		// A payload we cannot read will not get better on redelivery, but failing is the
		// only way to keep it visible (dead-lettered, and this error in the log) rather
		// than lost. The host discards the body of a failed answer, so the Logs below
		// reach neither the host's log nor the dead letter.
		s.log.Error("invocation rejected", "function", name, "error", err)
		writeJSON(w, http.StatusBadRequest, &Result{Outputs: map[string]any{}, Logs: []string{err.Error()}})
		return
	}
	inv.InvocationID = r.Header.Get("X-Azure-Functions-InvocationId")
	ctx := r.Context()
	if s.timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, s.timeout)
		defer cancel()
	}
	res, err := s.invoke(ctx, fn, inv)
	if err != nil {
		s.log.Warn("invocation failed", "function", name, "invocationId", inv.InvocationID, "error", err)
		writeJSON(w, http.StatusInternalServerError, &Result{Outputs: map[string]any{}, Logs: []string{err.Error()}})
		return
	}
	if res == nil {
		res = &Result{}
	}
	if res.Outputs == nil {
		res.Outputs = map[string]any{}
	}
	if res.Logs == nil {
		res.Logs = []string{}
	}
	writeJSON(w, http.StatusOK, res)
}

// invoke runs fn and turns a panic into an error, so one bad invocation cannot take the
// process (and every other in-flight invocation) down.
func (s *Server) invoke(ctx context.Context, fn Function, inv *Invocation) (res *Result, err error) {
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("internal error: %v", p)
		}
	}()
	return fn(ctx, inv)
}

// writeJSON always sets Content-Type: the host parses the reply as JSON and Go would
// otherwise sniff it as text/plain.
func writeJSON(w http.ResponseWriter, status int, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		status = http.StatusInternalServerError
		b = []byte(`{"Outputs":{},"Logs":["internal error: response not encodable"],"ReturnValue":null}`)
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Content-Length", strconv.Itoa(len(b)))
	w.WriteHeader(status)
	w.Write(b)
}

// HTTPFunction adapts an http.Handler to an HTTP-triggered function: the trigger named
// trigger becomes a net/http request, and the handler's response becomes Outputs[output].
// The host is always answered 200, so the caller sees the handler's own status.
func HTTPFunction(h http.Handler, trigger, output string) Function {
	return func(ctx context.Context, inv *Invocation) (*Result, error) {
		t, err := inv.HTTP(trigger)
		if err != nil {
			return nil, err
		}
		req, err := t.Request(ctx)
		if err != nil {
			return nil, err
		}
		rec := &recorder{header: http.Header{}}
		h.ServeHTTP(rec, req)
		if rec.status == 0 {
			rec.status = http.StatusOK
		}
		out := HTTPOutput{StatusCode: strconv.Itoa(rec.status), Body: rec.body.String(), Headers: map[string]string{}}
		for k, v := range rec.header {
			out.Headers[k] = strings.Join(v, ", ")
		}
		if _, ok := out.Headers["Content-Type"]; !ok {
			out.Headers["Content-Type"] = "application/json"
		}
		return &Result{Outputs: map[string]any{output: out}, Logs: []string{}}, nil
	}
}

// recorder is a minimal http.ResponseWriter that keeps the response in memory.
type recorder struct {
	header http.Header
	status int
	body   bytes.Buffer
}

func (r *recorder) Header() http.Header { return r.header }
func (r *recorder) WriteHeader(status int) {
	if r.status == 0 {
		r.status = status
	}
}
func (r *recorder) Write(b []byte) (int, error) {
	if r.status == 0 {
		r.status = http.StatusOK
	}
	return r.body.Write(b)
}
