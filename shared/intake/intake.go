// Package intake receives the store's events (POST /api/events/{entity}, docs/events.md):
// it checks the request, its signature and every event, then queues them all or none.
// It is independent of how the request arrived: the Functions host's HTTP trigger and
// local mode's net/http server both adapt onto Request/Response (ServeHTTP is the
// net/http adapter).
package intake

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"mime"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/nopsync/nopsync/shared/apierror"
	"github.com/nopsync/nopsync/shared/nop"
	"github.com/nopsync/nopsync/shared/queue"
)

// SignatureHeader carries "t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>".
const SignatureHeader = "X-Nop-Signature"

// MaxSkew is how far a signature's t may be from the clock, either way.
const MaxSkew = 300 * time.Second

// WebhookSecrets returns the secrets a signature may be made with: usually one, several
// while the secret is being rotated, none when no secret is configured.
type WebhookSecrets interface {
	WebhookSecrets(ctx context.Context) ([]string, error)
}

// SecretsRefresher is implemented by secret sources that cache (Key Vault): when a
// signature does not match the cached secrets, the intake asks once for fresh ones, so a
// secret rotated in the vault is accepted at once rather than after the cache expires.
// Implementations bound how often they really read the vault: unsigned junk must not
// turn into vault traffic.
type SecretsRefresher interface {
	RefreshWebhookSecrets(ctx context.Context) ([]string, error)
}

// StaticSecrets is a fixed list of webhook secrets.
type StaticSecrets []string

// WebhookSecrets returns the list.
func (s StaticSecrets) WebhookSecrets(context.Context) ([]string, error) { return s, nil }

// Options configures an Intake.
type Options struct {
	Sender  queue.Sender
	Secrets WebhookSecrets // nil: no secret configured
	Now     func() time.Time
	Log     *slog.Logger
	// AllowUnsigned accepts requests without a signature while no secret is configured
	// (local mode only; in Azure the app refuses to start without a secret). A configured
	// secret is always required, whatever this says.
	AllowUnsigned bool
	// RetryAfter is the Retry-After of 503 answers (default 30 s).
	RetryAfter time.Duration
	// Timeout bounds a request's outside calls, the webhook secret's read and the sends
	// (default 60 s): past it the answer is 503 with Retry-After. The front end in front
	// of the Functions host cuts an HTTP request at 230 s whatever the function's timeout
	// (Microsoft Learn: Azure Functions scale and hosting, timeouts), and the store should
	// get a 503 it retries, not a timeout it can't tell from a lost answer.
	Timeout time.Duration
}

// Request is an events request, however it arrived.
type Request struct {
	Method      string
	Entity      string // the {entity} path segment
	Header      http.Header
	Body        []byte
	BodyPresent bool
}

// Response is the answer to send back. Header always holds Content-Type: application/json.
type Response struct {
	Status int
	Header http.Header
	Body   []byte
}

// Intake handles events requests. It is safe for concurrent use.
type Intake struct {
	o Options
}

// New returns an Intake.
func New(o Options) *Intake {
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
	if o.RetryAfter <= 0 {
		o.RetryAfter = 30 * time.Second
	}
	if o.Timeout <= 0 {
		o.Timeout = 60 * time.Second
	}
	return &Intake{o: o}
}

// MsgLengthRequired answers a request whose body did not arrive. The Functions host passes
// a request body on only when the request has a Content-Length above zero (a chunked body
// arrives empty) and hands it over as UTF-8 text
// (Azure/azure-functions-host src/WebJobs.Script/Extensions/HttpRequestExtensions.cs).
const MsgLengthRequired = "the request arrived without a body: send the body with a Content-Length header " +
	"(not chunked), as UTF-8 without a byte-order mark"

// Accepted is the body of a 202 answer.
type Accepted struct {
	Accepted int      `json:"accepted"`
	IDs      []string `json:"ids"`
}

// Handle checks and queues one request. Checks run in this order: method, entity,
// content type, size; then the signature (an unsigned or wrongly signed request is
// never parsed); then the events; then sending, all or nothing.
func (in *Intake) Handle(ctx context.Context, r Request) Response {
	body := r.Body
	if !r.BodyPresent {
		body = nil
	}
	entity, resp := precheck(r.Method, r.Entity, r.Header, int64(len(body)))
	if resp != nil {
		return *resp
	}
	// No event is empty, so an empty body is one the sender sent without Content-Length
	// (or the host did not pass on): say so, rather than answer the signature's 401.
	if len(body) == 0 {
		in.o.Log.Warn("events refused: no body (no Content-Length)", "entity", r.Entity)
		return errorResponse(apierror.LengthRequired, MsgLengthRequired, nil)
	}
	// The host drops a byte-order mark, so the signature made over it would not match in
	// Azure; everywhere, the answer names the cause.
	if bytes.HasPrefix(body, utf8BOM) {
		return errorResponse(apierror.InvalidEvent, "the body starts with a UTF-8 byte-order mark: send UTF-8 without one", nil)
	}

	log := in.o.Log.With("entity", string(entity))
	ctx, cancel := context.WithTimeout(ctx, in.o.Timeout)
	defer cancel()
	if resp, ok := in.checkSignature(ctx, log, r.Header, body); !ok {
		return resp
	}

	events, err := nop.DecodeRequest(entity, body)
	if err != nil {
		var ve *nop.ValidationError
		var tl *nop.TooLargeError
		switch {
		case errors.As(err, &tl):
			log.Warn("events refused: too large", "index", tl.Index, "bytes", tl.Size)
			return errorResponse(apierror.TooLarge, tl.Error(), nil)
		case errors.As(err, &ve):
			// The message can quote field values, so only where it points is logged.
			log.Warn("events refused: invalid", "index", ve.Index, "field", ve.Field)
			return errorResponse(apierror.InvalidEvent, ve.Error(), ve)
		default:
			log.Error("events refused", "error", err)
			return errorResponse(apierror.InvalidEvent, "invalid request", nil)
		}
	}
	ids := make([]string, len(events))
	now := in.o.Now()
	for i, ev := range events {
		ids[i] = ev.ID
		if ahead := ev.OccurredOnUtc.Sub(now); ahead > nop.ClockSkew {
			// Accepted (docs/events.md sets no bound), but until the app's clock passes
			// it, the entity's later events without a higher sequence are skipped as stale:
			// said here, and on the entity's status.
			log.Warn("event dated ahead of the app's clock: the entity's events dated before it will be skipped as stale",
				"index", i, "id", ev.ID, "occurredOnUtc", ev.OccurredOnUtc.Format(time.RFC3339), "ahead", ahead.Round(time.Second).String())
		}
	}

	msgs, err := nop.Messages(entity, events)
	if err == nil {
		if in.o.Sender == nil {
			err = errors.New("no queue sender configured")
		} else {
			// entity was parsed by nop.ParseEntity. An array is an import (or a batch of
			// changes) and goes to the bulk queue; a single event is live and goes ahead.
			q, _ := nop.RequestQueue(entity, len(events))
			err = in.o.Sender.Send(ctx, q, msgs)
		}
	}
	if err != nil {
		log.Error("events not queued", "count", len(events), "ids", logIDs(ids), "error", err)
		// A large array goes to Service Bus in several batches, so some may be queued
		// already: the sender sends the whole request again, and the repeats (same event
		// ids) are dropped.
		return in.unavailable("the queue can't be reached: the request was not accepted; send it again later (events already queued from it are dropped as repeats)")
	}
	log.Info("events queued", "count", len(events), "messages", len(msgs), "ids", logIDs(ids))
	return jsonResponse(http.StatusAccepted, Accepted{Accepted: len(events), IDs: ids})
}

// unavailable is a 503 answer: the store keeps the events and retries after Retry-After.
func (in *Intake) unavailable(msg string) Response {
	resp := errorResponse(apierror.Unavailable, msg, nil)
	resp.Header.Set("Retry-After", strconv.Itoa(int((in.o.RetryAfter+time.Second-1)/time.Second)))
	return resp
}

// precheck runs the checks that need no body: method, entity, content type, size.
func precheck(method, entity string, h http.Header, size int64) (nop.Entity, *Response) {
	if !strings.EqualFold(method, http.MethodPost) { // adapters may not upper-case it
		resp := errorResponse(apierror.MethodNotAllowed, "only POST is allowed", nil)
		resp.Header.Set("Allow", http.MethodPost)
		return "", &resp
	}
	ent, ok := nop.ParseEntity(entity)
	if !ok {
		resp := errorResponse(apierror.NotFound,
			fmt.Sprintf("unknown entity %q: use customer, product or order", entity), nil)
		return "", &resp
	}
	if msg, ok := jsonContentType(header(h, "Content-Type")); !ok {
		resp := errorResponse(apierror.UnsupportedMediaType, msg, nil)
		return "", &resp
	}
	if size > nop.MaxBodyBytes {
		resp := errorResponse(apierror.TooLarge,
			fmt.Sprintf("request body is %d bytes or more, over the limit of %d", size, nop.MaxBodyBytes), nil)
		return "", &resp
	}
	return ent, nil
}

// logIDs keeps log lines bounded for import arrays.
func logIDs(ids []string) []string {
	if len(ids) > 20 {
		return append(ids[:20:20], fmt.Sprintf("... %d more", len(ids)-20))
	}
	return ids
}

// checkSignature verifies X-Nop-Signature. It never logs the header or the secrets.
func (in *Intake) checkSignature(ctx context.Context, log *slog.Logger, h http.Header, body []byte) (Response, bool) {
	var secrets []string
	if in.o.Secrets != nil {
		s, err := in.o.Secrets.WebhookSecrets(ctx)
		if err != nil {
			log.Error("webhook secret unavailable", "error", err)
			return in.unavailable("the webhook secret can't be read; retry later"), false
		}
		for _, v := range s {
			if v != "" {
				secrets = append(secrets, v)
			}
		}
	}
	if len(secrets) == 0 {
		if in.o.AllowUnsigned {
			return Response{}, true
		}
		log.Error("no webhook secret configured: refusing events")
		return in.unavailable("no webhook secret is configured"), false
	}
	reason := verify(header(h, SignatureHeader), body, secrets, in.o.Now())
	if reason == reasonMismatch {
		if r, ok := in.o.Secrets.(SecretsRefresher); ok {
			if fresh, err := r.RefreshWebhookSecrets(ctx); err == nil && len(fresh) > 0 {
				reason = verify(header(h, SignatureHeader), body, fresh, in.o.Now())
			} else if err != nil {
				log.Warn("webhook secret refresh failed", "error", err)
			}
		}
	}
	if reason != "" {
		log.Warn("events refused: signature", "reason", reason)
		return errorResponse(apierror.Unauthorized, reason, nil), false
	}
	return Response{}, true
}

const reasonMismatch = "signature does not match"

var utf8BOM = []byte("\xef\xbb\xbf")

// verify returns "" when sig is a valid signature of body with one of the secrets, else
// why not.
func verify(sig string, body []byte, secrets []string, now time.Time) string {
	if sig == "" {
		return "missing " + SignatureHeader + " header"
	}
	var ts string
	var macs [][]byte
	malformed := false // a v1 value that is not 64 hex digits: skipped, another may match
	for _, part := range strings.Split(sig, ",") {
		k, v, ok := strings.Cut(strings.TrimSpace(part), "=")
		if !ok {
			return "malformed " + SignatureHeader + " header"
		}
		switch k {
		case "t":
			if ts != "" {
				return "malformed " + SignatureHeader + " header: more than one t"
			}
			ts = v
		case "v1":
			// Several v1 values may come (secret rotation) and one match is enough
			// (docs/events.md), so one the app can't read does not refuse the others.
			mac, err := hex.DecodeString(v)
			if err != nil || len(mac) != sha256.Size {
				malformed = true
				continue
			}
			macs = append(macs, mac)
		}
		// Other schemes (v0, v2...) are ignored, so a sender can add one during a change.
	}
	if ts == "" || len(ts) > 12 || strings.TrimLeft(ts, "0123456789") != "" {
		return "malformed " + SignatureHeader + " header: t must be unix seconds"
	}
	if len(macs) == 0 && malformed {
		return "malformed " + SignatureHeader + " header: v1 must be 64 hex digits"
	}
	if len(macs) == 0 {
		return "malformed " + SignatureHeader + " header: no v1 signature"
	}
	t, err := strconv.ParseInt(ts, 10, 64)
	if err != nil {
		return "malformed " + SignatureHeader + " header: t must be unix seconds"
	}
	skew := now.Sub(time.Unix(t, 0))
	if skew > MaxSkew || skew < -MaxSkew {
		return "signature timestamp is more than 300 seconds from the server's clock"
	}
	match := false
	for _, secret := range secrets {
		m := hmac.New(sha256.New, []byte(secret))
		m.Write([]byte(ts))
		m.Write([]byte{'.'})
		m.Write(body)
		want := m.Sum(nil)
		for _, mac := range macs {
			if hmac.Equal(mac, want) {
				match = true
			}
		}
	}
	if !match && malformed {
		return reasonMismatch + " (and a v1 value is not 64 hex digits)"
	}
	if !match {
		return reasonMismatch
	}
	return ""
}

// Sign returns an X-Nop-Signature value for body at time t (for emitters and tests).
func Sign(secret string, t time.Time, body []byte) string {
	ts := strconv.FormatInt(t.Unix(), 10)
	m := hmac.New(sha256.New, []byte(secret))
	m.Write([]byte(ts + "."))
	m.Write(body)
	return "t=" + ts + ",v1=" + hex.EncodeToString(m.Sum(nil))
}

// jsonContentType accepts application/json and any */*+json type, with an optional
// UTF-8 charset (JSON is UTF-8).
func jsonContentType(ct string) (string, bool) {
	if ct == "" {
		return "Content-Type must be application/json", false
	}
	mt, params, err := mime.ParseMediaType(ct)
	if err != nil {
		return "malformed Content-Type; use application/json", false
	}
	if mt != "application/json" && !strings.HasSuffix(mt, "+json") {
		return fmt.Sprintf("Content-Type %s is not JSON; use application/json", mt), false
	}
	if cs, ok := params["charset"]; ok && !strings.EqualFold(cs, "utf-8") && !strings.EqualFold(cs, "utf8") {
		return fmt.Sprintf("charset %s is not supported; JSON must be UTF-8", cs), false
	}
	return "", true
}

// header reads a header whatever the case of its name (adapters may not canonicalise).
func header(h http.Header, name string) string {
	if v := h.Values(name); len(v) > 0 {
		return strings.Join(v, ",")
	}
	for k, v := range h {
		if strings.EqualFold(k, name) && len(v) > 0 {
			return strings.Join(v, ",")
		}
	}
	return ""
}

func jsonResponse(status int, v any) Response {
	b, err := json.Marshal(v)
	if err != nil { // only our own types are marshalled
		status, b = apierror.Marshal(apierror.New(apierror.Unavailable, "internal error"), nil)
	}
	h := http.Header{}
	h.Set("Content-Type", "application/json")
	return Response{Status: status, Header: h, Body: b}
}

// errorResponse is the answer for an error (apierror decides its status and body); ve
// adds the index and field of the event it is about.
func errorResponse(code apierror.Code, msg string, ve *nop.ValidationError) Response {
	e := apierror.New(code, msg)
	if ve != nil && ve.Index >= 0 {
		idx, field := ve.Index, ve.Field
		e.Index, e.Field = &idx, &field
	}
	status, b := apierror.Marshal(e, nil)
	h := http.Header{}
	h.Set("Content-Type", "application/json")
	return Response{Status: status, Header: h, Body: b}
}

// Pattern is the route ServeHTTP expects to be mounted on (Go 1.22+ ServeMux). It has no
// method, so other methods reach Handle and get its 405 body.
const Pattern = "/api/events/{entity}"

// ServeHTTP adapts net/http onto Handle. Mounted on Pattern, the entity comes from the
// path value; otherwise from the last path segment.
func (in *Intake) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	entity := r.PathValue("entity")
	if entity == "" {
		entity = r.URL.Path[strings.LastIndexByte(r.URL.Path, '/')+1:]
	}
	if r.ContentLength > nop.MaxBodyBytes {
		// Answer without reading a body that is too large anyway.
		if _, resp := precheck(r.Method, entity, r.Header, r.ContentLength); resp != nil {
			writeResponse(w, *resp)
			return
		}
	}
	req := Request{Method: r.Method, Entity: entity, Header: r.Header}
	if strings.EqualFold(r.Method, http.MethodPost) {
		// One byte over the limit is enough for Handle to answer 413.
		body, err := io.ReadAll(io.LimitReader(r.Body, nop.MaxBodyBytes+1))
		if err != nil {
			writeResponse(w, errorResponse(apierror.InvalidEvent, "the request body could not be read", nil))
			return
		}
		req.Body, req.BodyPresent = body, true
	}
	writeResponse(w, in.Handle(r.Context(), req))
}

func writeResponse(w http.ResponseWriter, resp Response) {
	for k, v := range resp.Header {
		w.Header()[k] = v
	}
	w.WriteHeader(resp.Status)
	_, _ = w.Write(resp.Body)
}
