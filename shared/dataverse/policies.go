package dataverse

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptrace"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/runtime"
)

// reauthPolicy resends a request once after Dataverse answered 401: the
// bearer policy has dropped its token by then, and tokens.rejected makes
// the credential fetch a new one instead of returning MSAL's cached token.
type reauthPolicy struct{ tokens *tokenSource }

func (p *reauthPolicy) Do(req *policy.Request) (*http.Response, error) {
	resp, err := req.Next()
	if err != nil || resp.StatusCode != http.StatusUnauthorized {
		return resp, err
	}
	p.tokens.rejected(strings.TrimPrefix(req.Raw().Header.Get("Authorization"), "Bearer "))
	runtime.Drain(resp)
	if err := req.RewindBody(); err != nil {
		return nil, err
	}
	return req.Next()
}

// throttle holds requests back while a 429's Retry-After is in force and
// bounds requests in flight. Dataverse's limits are per user, so one 429
// means every request of this client waits until the latest Retry-After
// deadline: azcore's retry policy only delays the request that got the 429.
type throttle struct {
	sem *semaphore
	max int
	// budget, when set, decides when a request holding a slot may leave.
	budget *budget
	// peers is the number of instances sharing the hint (nil: 1).
	peers func() int

	// concurrency follows additive increase / multiplicative decrease
	// towards target (x-ms-dop-hint, at most max): +1 per answer that was
	// not throttled, halved on a 429. It starts at 1, so a start-up burst
	// neither overshoots the hint nor opens dozens of connections at once,
	// and after a 429 fewer requests are in flight when the next one lands
	// (Microsoft's guidance: ramp up, back off when throttled).
	cmu    sync.Mutex
	target int

	mu    sync.Mutex
	until time.Time // no request leaves before this instant

	onHold func() // test hook: called after a 429 set the deadline
}

func newThrottle(max int) *throttle {
	return &throttle{sem: newSemaphore(1), max: max, target: max}
}

// adapt updates the concurrency bound after an answer.
func (t *throttle) adapt(throttled bool, hint int) {
	t.cmu.Lock()
	defer t.cmu.Unlock()
	if hint > 0 {
		if t.peers != nil {
			if n := t.peers(); n > 1 {
				hint = (hint + n - 1) / n
			}
		}
		t.target = min(hint, t.max)
	}
	cur := t.sem.Limit()
	switch {
	case throttled:
		cur = max(1, cur/2)
	case cur < t.target:
		cur++
	}
	t.sem.SetLimit(min(cur, t.target))
}

// remaining is how long the current Retry-After still holds.
func (t *throttle) remaining() time.Duration {
	t.mu.Lock()
	defer t.mu.Unlock()
	return time.Until(t.until)
}

// hold extends the deadline to at least until.
func (t *throttle) hold(until time.Time) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if until.After(t.until) {
		t.until = until
	}
}

// wait blocks until no Retry-After is in force. When that is later than
// the context's deadline it fails at once with a throttling error.
func (t *throttle) wait(ctx context.Context) error {
	for {
		d := t.remaining()
		if d <= 0 {
			return nil
		}
		if dl, ok := ctx.Deadline(); ok && time.Now().Add(d).After(dl) {
			return stopRetrying{&Error{StatusCode: http.StatusTooManyRequests, Code: "Throttled",
				Message:    "service protection limit: Retry-After ends after the context deadline",
				RetryAfter: d, Retryable: true}}
		}
		tm := time.NewTimer(d)
		select {
		case <-tm.C:
		case <-ctx.Done():
			tm.Stop()
			return ctx.Err()
		}
	}
}

// kindOf is what the pacer estimates r by: its method, its path with the keys in
// parentheses left out, and its body's length.
func kindOf(r *http.Request) requestKind {
	var sb strings.Builder
	sb.WriteString(r.Method)
	sb.WriteByte(' ')
	depth := 0
	for _, c := range r.URL.Path {
		switch {
		case c == '(':
			if depth == 0 {
				sb.WriteRune(c)
			}
			depth++
		case c == ')' && depth > 0:
			if depth--; depth == 0 {
				sb.WriteRune(c)
			}
		case depth == 0:
			sb.WriteRune(c)
		}
	}
	return requestKind{name: sb.String(), size: max(0, r.ContentLength)}
}

// stopRetrying tells azcore's retry policy not to resend: the caller
// decides (err is still Retryable for it).
type stopRetrying struct{ err *Error }

func (s stopRetrying) Error() string { return s.err.Error() }
func (s stopRetrying) Unwrap() error { return s.err }
func (stopRetrying) NonRetriable()   {}

// waitUntil is wait without the deadline shortcut: a request that already
// has its connection is either held until Retry-After or cancelled.
func (t *throttle) waitUntil(ctx context.Context) {
	for d := t.remaining(); d > 0; d = t.remaining() {
		tm := time.NewTimer(d)
		select {
		case <-tm.C:
		case <-ctx.Done():
			tm.Stop()
			return
		}
	}
}

func (t *throttle) Do(req *policy.Request) (*http.Response, error) {
	ctx := req.Raw().Context()
	var res *reservation
	var waited time.Duration
	for {
		if err := t.wait(ctx); err != nil {
			return nil, err
		}
		if err := t.sem.Acquire(ctx); err != nil {
			return nil, err
		}
		// a 429 may have arrived while we queued for the slot
		if t.remaining() > 0 {
			t.sem.Release()
			continue
		}
		if t.budget == nil {
			break
		}
		r, d, wake := t.budget.try(priorityOf(ctx), kindOf(req.Raw()), waited)
		if r != nil {
			res = r
			break
		}
		// Wait for the budget without the slot, so a live request can have it meanwhile.
		t.sem.Release()
		start := time.Now()
		tm := time.NewTimer(d)
		select {
		case <-tm.C:
		case <-wake:
			tm.Stop()
		case <-ctx.Done():
			tm.Stop()
			return nil, ctx.Err()
		}
		waited += time.Since(start)
	}
	// Connecting can take long (TLS handshakes under load); a 429 that
	// arrives meanwhile must still hold this request, so look at the gate
	// again once the connection is ready, right before the request is written.
	gated := req.WithContext(httptrace.WithClientTrace(ctx, &httptrace.ClientTrace{
		GotConn: func(httptrace.GotConnInfo) {
			t.waitUntil(ctx)
			if res != nil {
				res.started()
			}
		},
	}))
	resp, err := gated.Next() // the body is downloaded inside: the slot covers it
	if res != nil {
		t.budget.done(res, resp)
	}
	t.sem.Release()
	if err != nil {
		return resp, err
	}
	hint := 0
	if v := resp.Header.Get("x-ms-dop-hint"); v != "" {
		if n, perr := strconv.Atoi(strings.TrimSpace(v)); perr == nil && n > 0 {
			hint = n
		}
	}
	t.adapt(resp.StatusCode == http.StatusTooManyRequests, hint)
	return resp, nil
}

// gateTransport wraps the HTTP transport so a 429 holds every other request
// from the instant its headers arrive, before any policy sees it.
type gateTransport struct {
	next policy.Transporter
	t    *throttle
}

func (g *gateTransport) Do(r *http.Request) (*http.Response, error) {
	resp, err := g.next.Do(r)
	if err == nil && resp.StatusCode == http.StatusTooManyRequests {
		d := retryAfter(resp.Header, time.Now())
		if d <= 0 {
			d = time.Second // no hint: still stop everyone briefly
		}
		g.t.hold(time.Now().Add(d))
		if g.t.onHold != nil {
			g.t.onHold()
		}
	}
	return resp, err
}

// partThrottled holds every request after a $batch part was answered 429: the
// limits are per user, so the Retry-After of one part applies to the client as a
// whole, exactly like a 429 for a whole request.
func (t *throttle) partThrottled(h http.Header) {
	d := retryAfter(h, time.Now())
	if d <= 0 {
		d = time.Second
	}
	t.hold(time.Now().Add(d))
	t.adapt(true, 0)
	if t.onHold != nil {
		t.onHold()
	}
}

// retryAfter reads the server's wait hint the way azcore's retry policy does
// (retry-after-ms, x-ms-retry-after-ms, Retry-After seconds or HTTP date), so
// the shared hold never ends before azcore's own per-request delay.
func retryAfter(h http.Header, now time.Time) time.Duration {
	for _, k := range []string{"retry-after-ms", "x-ms-retry-after-ms"} {
		if v := h.Get(k); v != "" {
			if n, err := strconv.Atoi(v); err == nil && n > 0 {
				return time.Duration(n) * time.Millisecond
			}
		}
	}
	v := strings.TrimSpace(h.Get("Retry-After"))
	if v == "" {
		return 0
	}
	if n, err := strconv.Atoi(v); err == nil {
		if n > 0 {
			return time.Duration(n) * time.Second
		}
		return 0
	}
	if f, err := strconv.ParseFloat(v, 64); err == nil && f > 0 {
		// not azcore's format, but don't come back early if a server sends it
		return time.Duration(f * float64(time.Second))
	}
	if t, err := http.ParseTime(v); err == nil {
		return t.Sub(now)
	}
	return 0
}

// semaphore is a counting semaphore whose limit can change while in use. Waiters are
// served in two classes: live requests (the default) before bulk ones (WithPriority),
// each class in arrival order, so a live request takes the next free slot whatever
// bulk work is queued, and bulk work takes a slot only when no live request waits.
type semaphore struct {
	mu      sync.Mutex
	limit   int
	used    int
	waiters [2][]chan struct{} // indexed by Priority: Live, Bulk
}

func newSemaphore(limit int) *semaphore { return &semaphore{limit: limit} }

func (s *semaphore) Limit() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.limit
}

func (s *semaphore) SetLimit(n int) {
	if n < 1 {
		n = 1
	}
	s.mu.Lock()
	s.limit = n
	s.wakeLocked()
	s.mu.Unlock()
}

// Acquire takes a slot, in the class of ctx's priority.
func (s *semaphore) Acquire(ctx context.Context) error {
	p := priorityOf(ctx)
	s.mu.Lock()
	if s.used < s.limit && !s.aheadLocked(p) {
		s.used++
		s.mu.Unlock()
		return nil
	}
	ch := make(chan struct{})
	s.waiters[p] = append(s.waiters[p], ch)
	s.mu.Unlock()
	select {
	case <-ch:
		return nil
	case <-ctx.Done():
		s.mu.Lock()
		defer s.mu.Unlock()
		select {
		case <-ch: // granted just now: hand it back
			s.used--
			s.wakeLocked()
		default:
			for i, w := range s.waiters[p] {
				if w == ch {
					s.waiters[p] = append(s.waiters[p][:i], s.waiters[p][i+1:]...)
					break
				}
			}
		}
		return ctx.Err()
	}
}

// aheadLocked says whether someone waits who goes before a new request of priority p.
func (s *semaphore) aheadLocked(p Priority) bool {
	for c := Live; c <= p; c++ {
		if len(s.waiters[c]) > 0 {
			return true
		}
	}
	return false
}

func (s *semaphore) Release() {
	s.mu.Lock()
	s.used--
	s.wakeLocked()
	s.mu.Unlock()
}

// wakeLocked grants free slots to live waiters, then to bulk ones, each in arrival order.
func (s *semaphore) wakeLocked() {
	for c := range s.waiters {
		for len(s.waiters[c]) > 0 && s.used < s.limit {
			ch := s.waiters[c][0]
			s.waiters[c] = s.waiters[c][1:]
			s.used++
			close(ch)
		}
	}
}

// logPolicy logs each attempt: method, path (no query values), status,
// duration. Never headers or bodies.
type logPolicy struct{ log func(string) }

func (p *logPolicy) Do(req *policy.Request) (*http.Response, error) {
	start := time.Now()
	resp, err := req.Next()
	r := req.Raw()
	path := r.URL.Path
	if r.URL.RawQuery != "" {
		path += "?…"
	}
	dur := time.Since(start).Round(time.Millisecond)
	switch {
	case err != nil:
		p.log(fmt.Sprintf("dataverse: %s %s failed after %s: %v", r.Method, path, dur, stripURL(err)))
	case resp.StatusCode == http.StatusTooManyRequests:
		p.log(fmt.Sprintf("dataverse: %s %s %d %s retry-after=%s", r.Method, path, resp.StatusCode, dur, retryAfter(resp.Header, time.Now())))
	default:
		p.log(fmt.Sprintf("dataverse: %s %s %d %s", r.Method, path, resp.StatusCode, dur))
	}
	return resp, err
}
