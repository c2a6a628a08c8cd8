// Package dataverse is the Dataverse Web API v9.2 client the sync engine
// writes through: client-credentials auth (secret from a rotatable source),
// an azcore pipeline that honours service-protection limits (Retry-After,
// x-ms-dop-hint, ≤52 in flight), typed row operations, $batch with change
// sets, bulk *Multiple messages and the Sales actions.
package dataverse

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/runtime"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/streaming"
)

// APIPath is the Web API root under the environment URL.
const APIPath = "/api/data/v9.2/"

// MaxConcurrentRequests is Dataverse's default per-user concurrency limit.
const MaxConcurrentRequests = 52

// DefaultBulkChunkSize is the default number of rows per bulk request. Microsoft
// suggests "100 - 1,000 records per request is a reasonable place to start if the size
// of the record data is small and there are no plug-ins"
// (https://learn.microsoft.com/power-apps/developer/data-platform/bulk-operations); the
// Sales tables run pricing plug-ins on every write, so the default is the low end.
const DefaultBulkChunkSize = 100

// MaxBulkChunkSize is the largest bulk request allowed: a $batch holds at most 1000
// requests, and Microsoft's suggested range ends there too.
const MaxBulkChunkSize = 1000

// Record is one row (or action payload) as Dataverse JSON: column logical
// names, "nav@odata.bind" lookups, annotations.
type Record map[string]any

// SecretSource hands out the app registration's client secret. Invalidate
// drops any cached value so the next Secret reads it again (rotation).
type SecretSource interface {
	Secret(ctx context.Context) (string, error)
	Invalidate()
}

// SecretExpirer is implemented by secret sources that know when the secret
// expires (Key Vault's "exp" attribute). nil time: no expiry set.
type SecretExpirer interface {
	SecretExpires(ctx context.Context) (*time.Time, error)
}

// StaticSecret is a SecretSource for a secret given directly
// (DATAVERSE_CLIENT_SECRET). Invalidate is a no-op: there is nothing to re-read.
type StaticSecret string

func (s StaticSecret) Secret(context.Context) (string, error) {
	if s == "" {
		return "", errors.New("client secret is empty")
	}
	return string(s), nil
}
func (StaticSecret) Invalidate() {}

// Options configure a Client. EnvironmentURL, TenantID, ClientID and Secret
// are required.
type Options struct {
	EnvironmentURL string // e.g. https://contoso.crm.dynamics.com or https://127.0.0.1:PORT
	TenantID       string
	ClientID       string
	Secret         SecretSource

	// AuthorityHost is the Entra authority, e.g. https://login.microsoftonline.com/.
	// Empty: the public cloud (package config reads AZURE_AUTHORITY_HOST). Instance discovery is
	// turned off for hosts that are not Microsoft's public ones.
	AuthorityHost string

	// Transport sends the HTTP requests (Dataverse and the token endpoint).
	// Nil: an http.Client trusting the system roots plus RootCAs.
	Transport policy.Transporter
	RootCAs   *x509.CertPool

	// MaxConcurrency bounds requests in flight (default and ceiling 52); the
	// server's x-ms-dop-hint lowers it further. The bound starts at 1, grows
	// by one per answer and halves on a 429 (see Concurrency).
	MaxConcurrency int
	// Limits are the service protection limits the client paces its requests to
	// (zero fields: Dataverse's defaults); NoPacing turns the pacing off, leaving
	// the 429s and their Retry-After to hold requests back.
	Limits   Limits
	NoPacing bool
	// Peers, when set, is the number of instances (this one included) calling as
	// the same application user: Dataverse's limits and its x-ms-dop-hint are per
	// user, so each instance paces to its part of the budget and keeps its part of
	// the hint in flight (rounded up). See state.Peers.
	Peers func() int
	// BulkChunkSize is the number of rows per *Multiple request (or per $batch change
	// set for a table without those messages). Default DefaultBulkChunkSize.
	BulkChunkSize int
	// MaxRetries per request for 429/5xx/network failures (default 8).
	MaxRetries int
	// RetryDelay is the base of the exponential back-off for 5xx and network
	// failures (default 1 s). MaxRetryDelay caps that back-off and is the
	// longest Retry-After waited for inside one call (default 60 s): a longer
	// one, or one ending after the context's deadline, comes back at once as
	// a retryable 429 *Error carrying RetryAfter, while the client keeps
	// holding its other requests until it has passed.
	RetryDelay, MaxRetryDelay time.Duration

	// Logger receives one line per HTTP attempt (method, path, status,
	// duration) and auth events; never headers, bodies or query values.
	Logger func(string)
}

// Client talks to one Dataverse environment. Build it once and share it: it
// is safe for concurrent use.
type Client struct {
	base     *url.URL // environment URL without trailing slash
	api      string   // base + APIPath
	pl       runtime.Pipeline
	tokens   *tokenSource
	throttle *throttle
	secret   SecretSource
	log      func(string)
	chunk    int
	maxConc  int

	// retry is the pipeline's retry configuration; throttledOnly is the same but
	// resends only after a 429 (a request that was refused before it ran).
	retry, throttledOnly policy.RetryOptions

	tables sync.Map // logical name → *tableSupport
}

// New validates o and builds the client. It does not contact Dataverse; call
// WhoAmI to check connectivity.
func New(o Options) (*Client, error) {
	if o.EnvironmentURL == "" {
		return nil, errors.New("dataverse: EnvironmentURL is required")
	}
	u, err := url.Parse(strings.TrimRight(o.EnvironmentURL, "/"))
	if err != nil || u.Host == "" || (u.Scheme != "https" && u.Scheme != "http") {
		return nil, fmt.Errorf("dataverse: EnvironmentURL %q is not an http(s) URL", o.EnvironmentURL)
	}
	if u.Scheme == "http" && !isLoopback(u.Hostname()) {
		return nil, fmt.Errorf("dataverse: EnvironmentURL %q must use https", o.EnvironmentURL)
	}
	u.RawQuery, u.Fragment = "", ""
	if o.TenantID == "" {
		return nil, errors.New("dataverse: TenantID is required")
	}
	if o.ClientID == "" {
		return nil, errors.New("dataverse: ClientID is required")
	}
	if o.Secret == nil {
		return nil, errors.New("dataverse: Secret is required")
	}
	logf := o.Logger
	if logf == nil {
		logf = func(string) {}
	}
	maxConc := o.MaxConcurrency
	if maxConc <= 0 || maxConc > MaxConcurrentRequests {
		maxConc = MaxConcurrentRequests
	}
	chunk := o.BulkChunkSize
	if chunk <= 0 {
		chunk = DefaultBulkChunkSize
	}
	if chunk > MaxBulkChunkSize {
		return nil, fmt.Errorf("dataverse: BulkChunkSize %d is more than %d", chunk, MaxBulkChunkSize)
	}
	transport := o.Transport
	if transport == nil {
		transport = newHTTPClient(o.RootCAs)
	}
	authority, err := authorityHost(o.AuthorityHost)
	if err != nil {
		return nil, err
	}
	c := &Client{
		base:    u,
		api:     u.String() + APIPath,
		secret:  o.Secret,
		log:     logf,
		chunk:   chunk,
		maxConc: maxConc,
	}
	retry := policy.RetryOptions{
		MaxRetries:    int32(o.MaxRetries),
		RetryDelay:    o.RetryDelay,
		MaxRetryDelay: o.MaxRetryDelay,
		StatusCodes: []int{
			http.StatusRequestTimeout, http.StatusTooManyRequests,
			http.StatusInternalServerError, http.StatusBadGateway,
			http.StatusServiceUnavailable, http.StatusGatewayTimeout,
		},
	}
	// Like azcore's default check, plus: a 429/503 whose Retry-After ends
	// after the caller's deadline comes back at once instead of sleeping
	// until the deadline (the caller can requeue the work right away).
	retry.ShouldRetry = func(resp *http.Response, err error) bool {
		if err != nil {
			return true
		}
		if !retryableStatus(resp.StatusCode) {
			return false
		}
		if d := retryAfter(resp.Header, time.Now()); d > 0 && resp.Request != nil {
			if dl, ok := resp.Request.Context().Deadline(); ok && time.Now().Add(d).After(dl) {
				return false
			}
		}
		return true
	}
	if retry.MaxRetries == 0 {
		retry.MaxRetries = 8
	}
	if retry.RetryDelay == 0 {
		retry.RetryDelay = time.Second
	}
	if retry.MaxRetryDelay == 0 {
		retry.MaxRetryDelay = time.Minute
	}
	c.retry = retry
	// A 429 from the service protection limits is returned before the request runs
	// (https://learn.microsoft.com/power-apps/developer/data-platform/api-limits), so
	// even a request that must not run twice may be sent again after one.
	c.throttledOnly = retry
	c.throttledOnly.ShouldRetry = func(resp *http.Response, err error) bool {
		return err == nil && resp.StatusCode == http.StatusTooManyRequests && retry.ShouldRetry(resp, nil)
	}
	c.tokens = &tokenSource{
		tenantID:  o.TenantID,
		clientID:  o.ClientID,
		authority: authority,
		secret:    o.Secret,
		transport: transport,
		retry:     retry,
		log:       logf,
	}
	c.throttle = newThrottle(maxConc)
	c.throttle.peers = o.Peers
	if !o.NoPacing {
		c.throttle.budget = newBudget(o.Limits)
		c.throttle.budget.peers = o.Peers
	}

	scope := u.String() + "/.default"
	bearer := runtime.NewBearerTokenPolicy(c.tokens, []string{scope}, &policy.BearerTokenOptions{
		InsecureAllowCredentialWithHTTP: u.Scheme == "http", // loopback only, checked above
	})
	c.pl = runtime.NewPipeline("dataverse", "v1.0.0", runtime.PipelineOptions{}, &policy.ClientOptions{
		// the innermost layer notes a 429 the moment it arrives
		Transport: &gateTransport{next: transport, t: c.throttle},
		Retry:     retry,
		// Per try, outermost first: wait for Retry-After and a concurrency
		// slot; resend once with a fresh token after a 401; authorize; log.
		// Waiting comes before authorizing, so a token is never attached and
		// then left to expire while the request waits out throttling.
		PerRetryPolicies: []policy.Policy{
			c.throttle,
			&reauthPolicy{tokens: c.tokens},
			bearer,
			&logPolicy{log: logf},
		},
		Telemetry: policy.TelemetryOptions{ApplicationID: "nopsync"},
	})
	return c, nil
}

// EnvironmentURL is the environment URL the client was built with.
func (c *Client) EnvironmentURL() string { return c.base.String() }

// SecretExpires returns the client secret's expiry when the secret source
// knows it (Key Vault), nil otherwise.
func (c *Client) SecretExpires(ctx context.Context) (*time.Time, error) {
	if se, ok := c.secret.(SecretExpirer); ok {
		return se.SecretExpires(ctx)
	}
	return nil, nil
}

// Concurrency is the current bound on requests in flight (after x-ms-dop-hint).
func (c *Client) Concurrency() int { return c.throttle.sem.Limit() }

// Pacing says how often requests were held back to stay within Options.Limits.
func (c *Client) Pacing() PacingStats {
	if c.throttle.budget == nil {
		return PacingStats{}
	}
	return c.throttle.budget.stats()
}

// request is one Web API call.
type request struct {
	method  string
	path    string // relative to the API root, e.g. "contacts(…)" or an absolute URL (nextLink)
	query   url.Values
	body    any // marshalled as JSON unless rawBody is set
	rawBody []byte
	ctype   string
	header  map[string]string
	op      string // for errors; default "METHOD path"
	// anyStatus returns error answers as responses too ($batch answers a
	// failed part with 400 and a multipart body).
	anyStatus bool
	// throttledOnly: send again only after a 429 (the request did not run); a
	// 5xx, a timeout or a lost answer comes back to the caller at once.
	throttledOnly bool
	// unsafe: the request must not run twice (see nonIdempotent); implies
	// throttledOnly, and an unclear outcome is reported as OutcomeUnknown.
	unsafe bool
}

// response is a successful answer (status < 400) with its body read.
type response struct {
	status int
	header http.Header
	body   []byte
}

// do sends r through the pipeline and turns error answers into *Error.
func (c *Client) do(ctx context.Context, r request) (*response, error) {
	target := r.path
	if !strings.HasPrefix(target, "https://") && !strings.HasPrefix(target, "http://") {
		target = c.api + target
	} else if !c.ownURL(target) {
		// never send our token to another host (e.g. a forged nextLink)
		return nil, fmt.Errorf("dataverse: refusing URL outside the environment: %s", redactURL(target))
	}
	if len(r.query) > 0 {
		target += "?" + encodeQuery(r.query)
	}
	op := r.op
	if op == "" {
		op = r.method + " " + opPath(r.path)
	}
	if r.unsafe || r.throttledOnly {
		ctx = policy.WithRetryOptions(ctx, c.throttledOnly)
	}
	req, err := runtime.NewRequest(ctx, r.method, target)
	if err != nil {
		return nil, fmt.Errorf("dataverse %s: %w", op, err)
	}
	h := req.Raw().Header
	h.Set("Accept", "application/json")
	h.Set("OData-MaxVersion", "4.0")
	h.Set("OData-Version", "4.0")
	for k, v := range r.header {
		h.Set(k, v)
	}
	body := r.rawBody
	ctype := r.ctype
	if body == nil && r.body != nil {
		body, err = json.Marshal(r.body)
		if err != nil {
			return nil, fmt.Errorf("dataverse %s: encoding body: %w", op, err)
		}
		ctype = "application/json"
	}
	if body != nil {
		if err := req.SetBody(streaming.NopCloser(bytes.NewReader(body)), ctype); err != nil {
			return nil, fmt.Errorf("dataverse %s: %w", op, err)
		}
	}
	resp, err := c.pl.Do(req)
	if err != nil {
		err = c.transportError(ctx, op, err)
		if r.unsafe {
			err = outcomeUnknown(op, err)
		}
		return nil, err
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, &Error{Op: op, StatusCode: resp.StatusCode, Retryable: true, OutcomeUnknown: r.unsafe,
			Err: fmt.Errorf("reading response: %w", err)}
	}
	if resp.StatusCode >= 400 && !(r.anyStatus && isMultipart(resp.Header)) {
		e := errorFromResponse(op, resp.StatusCode, resp.Header, data)
		if e.Auth {
			e.Message = strings.TrimSpace("Dataverse rejected the access token after a refresh. " + e.Message)
		}
		if r.unsafe && unclearStatus(resp.StatusCode) {
			e.OutcomeUnknown = true
		}
		return nil, e
	}
	return &response{status: resp.StatusCode, header: resp.Header, body: data}, nil
}

// ownURL reports whether an absolute URL (a nextLink) points into this
// environment's Web API: same scheme and host (any case), same API path.
func (c *Client) ownURL(s string) bool {
	u, err := url.Parse(s)
	if err != nil {
		return false
	}
	return strings.EqualFold(u.Scheme, c.base.Scheme) && strings.EqualFold(u.Host, c.base.Host) &&
		strings.HasPrefix(u.Path, c.base.Path+APIPath)
}

// transportError classifies a pipeline error: auth failure at the token
// endpoint, context expiry (while throttled: a retryable 429), or network.
func (c *Client) transportError(ctx context.Context, op string, err error) error {
	var ae *authError
	if errors.As(err, &ae) {
		return &Error{Op: op, StatusCode: ae.status, Code: ae.code, Message: ae.message,
			Auth: !ae.retryable, Retryable: ae.retryable, Err: ae.err}
	}
	if ctxErr := ctx.Err(); ctxErr != nil {
		if wait := c.throttle.remaining(); wait > 0 {
			return &Error{Op: op, StatusCode: http.StatusTooManyRequests, Code: "Throttled",
				Message:    "service protection limit: the context ended before Retry-After expired",
				RetryAfter: wait, Retryable: ctxErr == context.DeadlineExceeded, Err: ctxErr}
		}
		return fmt.Errorf("dataverse %s: %w", op, ctxErr)
	}
	var de *Error
	if errors.As(err, &de) {
		if de.Op == "" {
			de.Op = op
		}
		return de
	}
	return &Error{Op: op, Retryable: true, Err: stripURL(err)}
}

// stripURL drops *url.Error's URL (its query may hold filter values).
func stripURL(err error) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		return fmt.Errorf("%s: %w", ue.Op, ue.Err)
	}
	return err
}

// call sends r and decodes a JSON answer into out (when out is non-nil and
// there is a body).
func (c *Client) call(ctx context.Context, r request, out any) (*response, error) {
	resp, err := c.do(ctx, r)
	if err != nil {
		return nil, err
	}
	if out != nil && len(resp.body) > 0 {
		if err := json.Unmarshal(resp.body, out); err != nil {
			return nil, fmt.Errorf("dataverse %s %s: decoding response: %w", r.method, opPath(r.path), err)
		}
	}
	return resp, nil
}

// Invoke sends any Web API request (path relative to /api/data/v9.2/, body
// marshalled as JSON when non-nil) and decodes the JSON answer into out
// (when non-nil). For actions and functions without a typed method.
//
// A POST that is not idempotent (see Create and ConvertSalesOrderToInvoice) is sent
// once: after a 5xx, a timeout or a lost answer the error reports OutcomeUnknown.
func (c *Client) Invoke(ctx context.Context, method, path string, body, out any) error {
	rec, _ := body.(Record)
	if m, ok := body.(map[string]any); ok {
		rec = m
	}
	_, err := c.call(ctx, request{method: method, path: path, body: body, unsafe: nonIdempotent(method, path, rec)}, out)
	return err
}

// encodeQuery encodes OData system query options keeping "$" readable.
func encodeQuery(q url.Values) string {
	return strings.ReplaceAll(q.Encode(), "%24", "$")
}

// opPath is the path shown in errors and logs: no query, no host.
func opPath(p string) string {
	if i := strings.IndexByte(p, '?'); i >= 0 {
		p = p[:i]
	}
	if u, err := url.Parse(p); err == nil && u.Host != "" {
		p = strings.TrimPrefix(u.Path, APIPath)
		p = strings.TrimPrefix(p, "/")
	}
	return p
}

// redactURL drops the query string (it may hold filter values).
func redactURL(s string) string {
	if i := strings.IndexByte(s, '?'); i >= 0 {
		return s[:i] + "?…"
	}
	return s
}
