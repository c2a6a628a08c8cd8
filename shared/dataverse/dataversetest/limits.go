package dataversetest

import (
	"fmt"
	"math"
	"net/http"
	"strconv"
	"sync"
	"time"
)

// limiter applies the service protection limits per user over a 5-minute sliding window
// (Learn: api-limits, "Service protection API limits": 6,000 requests, 1,200 s combined
// execution time and 52 concurrent requests per user; the first two are usually noticed
// only once exceeded, the concurrency limit fails at once). Each request is charged its
// execution time (ExecutionCost) when it has run. All durations it keeps are already
// scaled by Options.TimeScale.
type limiter struct {
	s     *Server
	mu    sync.Mutex
	users map[string]*userWindow
	in    int
	maxIn int
	// busy integrates requests in flight over real time (request-seconds) since last.
	busy time.Duration
	last time.Time
	exec time.Duration // execution time charged, scaled
}

// tick adds the in-flight time since the last change; l.mu is held.
func (l *limiter) tick(now time.Time) {
	if !l.last.IsZero() {
		l.busy += time.Duration(l.in) * now.Sub(l.last)
	}
	l.last = now
}

type execEntry struct {
	at   time.Time
	cost time.Duration
}

type userWindow struct {
	reqs         []time.Time
	exec         []execEntry
	execSum      time.Duration
	inflight     int
	blockedAt    time.Time
	blockedUntil time.Time
	violations   int
}

func newLimiter(s *Server) *limiter { return &limiter{s: s, users: map[string]*userWindow{}} }

func (l *limiter) user(name string) *userWindow {
	u := l.users[name]
	if u == nil {
		u = &userWindow{}
		l.users[name] = u
	}
	return u
}

func (l *limiter) window() time.Duration { return l.s.scaled(l.s.o.Limits.Window) }

func (l *limiter) prune(u *userWindow, now time.Time) {
	cut := now.Add(-l.window())
	i := 0
	for i < len(u.reqs) && !u.reqs[i].After(cut) {
		i++
	}
	u.reqs = u.reqs[i:]
	j := 0
	for j < len(u.exec) && !u.exec[j].at.After(cut) {
		u.execSum -= u.exec[j].cost
		j++
	}
	u.exec = u.exec[j:]
}

// admit checks the limits before a request runs. It also records Retry-After
// violations: a request that arrives while the user's last Retry-After is still running.
func (l *limiter) admit(name string) (func(), *apiError) {
	now := time.Now()
	lim := l.s.o.Limits
	l.mu.Lock()
	defer l.mu.Unlock()
	u := l.user(name)
	if now.Before(u.blockedUntil) && now.After(u.blockedAt.Add(l.s.o.ViolationGrace)) {
		u.violations++
	}
	if !lim.Disabled {
		l.prune(u, now)
		switch {
		case u.inflight >= lim.Concurrent:
			// The concurrency limit fails immediately (Learn: api-limits).
			return nil, l.throttleLocked(u, now, codeConcurrencyLimit, l.s.scaled(time.Second))
		case len(u.reqs) >= lim.Requests:
			wait := u.reqs[len(u.reqs)-lim.Requests].Add(l.window()).Sub(now)
			return nil, l.throttleLocked(u, now, codeReqLimit, wait)
		case u.execSum >= l.s.scaled(lim.ExecutionTime):
			sum := u.execSum
			wait := l.window()
			for _, e := range u.exec {
				sum -= e.cost
				if sum < l.s.scaled(lim.ExecutionTime) {
					wait = e.at.Add(l.window()).Sub(now)
					break
				}
			}
			return nil, l.throttleLocked(u, now, codeTimeLimit, wait)
		}
	}
	u.reqs = append(u.reqs, now)
	u.inflight++
	l.tick(now)
	l.in++
	if l.in > l.maxIn {
		l.maxIn = l.in
	}
	return func() {
		l.mu.Lock()
		u.inflight--
		l.tick(time.Now())
		l.in--
		l.mu.Unlock()
	}, nil
}

func (l *limiter) throttle(name, code string, wait time.Duration) *apiError {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.throttleLocked(l.user(name), time.Now(), code, wait)
}

// throttleLocked builds the 429 with Retry-After in whole seconds (rounded up, ≥ 1) and
// remembers until when this user should stay away.
func (l *limiter) throttleLocked(u *userWindow, now time.Time, code string, wait time.Duration) *apiError {
	secs := retryAfterSeconds(wait)
	until := now.Add(time.Duration(secs) * time.Second)
	if until.After(u.blockedUntil) {
		u.blockedUntil = until
	}
	u.blockedAt = now
	lim := l.s.o.Limits
	win := int(lim.Window.Seconds())
	var msg string
	switch code {
	case codeReqLimit:
		msg = fmt.Sprintf("Number of requests exceeded the limit of %d over time window of %d seconds.", lim.Requests, win)
	case codeTimeLimit:
		msg = fmt.Sprintf("Combined execution time of incoming requests exceeded limit of %s milliseconds over time window of %d seconds. Decrease number of concurrent requests or reduce the duration of requests and try again later.", groupThousands(lim.ExecutionTime.Milliseconds()), win)
	case codeConcurrencyLimit:
		msg = fmt.Sprintf("Number of concurrent requests exceeded the limit of %d.", lim.Concurrent)
	default:
		msg = "Service protection limit exceeded (injected)."
	}
	e := errf(http.StatusTooManyRequests, code, "%s", msg)
	e.header = http.Header{}
	e.header.Set("Retry-After", strconv.Itoa(secs))
	return e
}

func groupThousands(n int64) string {
	s := strconv.FormatInt(n, 10)
	out := ""
	for len(s) > 3 {
		out = "," + s[len(s)-3:] + out
		s = s[:len(s)-3]
	}
	return s + out
}

func (l *limiter) record(name string, cost time.Duration) {
	l.mu.Lock()
	defer l.mu.Unlock()
	u := l.user(name)
	u.exec = append(u.exec, execEntry{at: time.Now(), cost: cost})
	u.execSum += cost
	l.exec += cost
}

// headers adds x-ms-ratelimit-burst-remaining-xrm-requests (requests left in the window)
// and x-ms-ratelimit-time-remaining-xrm-requests (execution milliseconds left). Microsoft's
// pages don't document them; they are widely reported by third parties as present on Web
// API answers, "for debugging" and reset when the server affinity changes. An environment
// without them is Options.NoRateLimitHeaders.
func (l *limiter) headers(name string, h http.Header) {
	l.mu.Lock()
	defer l.mu.Unlock()
	u := l.user(name)
	lim := l.s.o.Limits
	h.Set("x-ms-ratelimit-burst-remaining-xrm-requests", strconv.Itoa(max(0, lim.Requests-len(u.reqs))))
	rem := l.s.scaled(lim.ExecutionTime) - u.execSum
	if l.s.scale > 0 {
		rem = time.Duration(float64(rem) / l.s.scale)
	}
	h.Set("x-ms-ratelimit-time-remaining-xrm-requests", strconv.FormatFloat(math.Max(0, float64(rem.Milliseconds())), 'f', 2, 64))
}

func (l *limiter) maxInFlight() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.maxIn
}

// usage returns the request-seconds spent in flight, the execution time charged so far
// and the requests in flight now.
func (l *limiter) usage() (busy, exec time.Duration, inFlight int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.tick(time.Now())
	return l.busy, l.exec, l.in
}

// RetryAfterViolations is the number of requests, over all clients, sent while that
// client's last Retry-After had not yet expired (requests arriving within
// Options.ViolationGrace of the 429 are not counted: they were already in flight).
func (s *Server) RetryAfterViolations() int {
	s.lim.mu.Lock()
	defer s.lim.mu.Unlock()
	n := 0
	for _, u := range s.lim.users {
		n += u.violations
	}
	return n
}

// RetryAfterViolationsByClient breaks RetryAfterViolations down per client (token subject,
// which is the app registration's client ID).
func (s *Server) RetryAfterViolationsByClient() map[string]int {
	s.lim.mu.Lock()
	defer s.lim.mu.Unlock()
	out := map[string]int{}
	for k, u := range s.lim.users {
		out[k] = u.violations
	}
	return out
}

// CostDefault is the simulator's own cost model: 2 ms per request plus 2 ms per row
// written and 50 µs per row read, so the execution limit binds at about the same rate
// as the request limit for bulk writes of 100 rows.
var CostDefault = ExecutionCost{PerRequest: 2 * time.Millisecond, PerRowWritten: 2 * time.Millisecond, PerRowRead: 50 * time.Microsecond}

// CostPerRow is a costlier model where each written row dominates: 30 ms per request plus
// 8 ms per row written (and 50 µs per row read), as a table with plug-ins on its writes
// may behave. Dataverse doesn't publish its costs; the models only differ so that a client
// can't be tuned to one.
var CostPerRow = ExecutionCost{PerRequest: 30 * time.Millisecond, PerRowWritten: 8 * time.Millisecond, PerRowRead: 50 * time.Microsecond}

// CostModels names the cost models: "default" (CostDefault) and "perrow" (CostPerRow).
var CostModels = map[string]ExecutionCost{"default": CostDefault, "perrow": CostPerRow}

// Throughput is the records/s ceiling the limits and execution costs allow.
type Throughput struct {
	RecordsPerRequest int
	Concurrency       int
	// Bounds in records per simulated second (unscaled).
	RequestBound, ExecutionBound, ConcurrencyBound float64
	// Ceiling is the smallest bound; Limit names it ("requests", "execution", "concurrency").
	Ceiling float64
	Limit   string
	// RealCeiling is Ceiling in records per wall-clock second (Ceiling / TimeScale).
	RealCeiling float64
}

// IdealThroughput computes the throughput ceiling for a client writing recordsPerRequest
// rows per request (1 for single requests; the batch or bulk size otherwise) with the given
// parallelism: requests/window × records; execution budget ÷ cost per record; and, when
// requests really take their execution time (SleepExecutionTime), parallelism ÷ latency.
func (s *Server) IdealThroughput(recordsPerRequest, concurrency int) Throughput {
	if recordsPerRequest < 1 {
		recordsPerRequest = 1
	}
	if concurrency < 1 {
		concurrency = 1
	}
	lim := s.o.Limits
	c := s.o.ExecutionCost
	rpr := float64(recordsPerRequest)
	win := lim.Window.Seconds()
	perReq := (c.PerRequest + time.Duration(recordsPerRequest)*c.PerRowWritten).Seconds()
	t := Throughput{RecordsPerRequest: recordsPerRequest, Concurrency: concurrency}
	t.RequestBound = float64(lim.Requests) / win * rpr
	t.ExecutionBound = lim.ExecutionTime.Seconds() / win / perReq * rpr
	t.ConcurrencyBound = math.Inf(1)
	if lim.Disabled {
		t.RequestBound, t.ExecutionBound = math.Inf(1), math.Inf(1)
	}
	if s.o.SleepExecutionTime {
		t.ConcurrencyBound = float64(min(concurrency, lim.Concurrent)) / perReq * rpr
	}
	t.Ceiling, t.Limit = t.RequestBound, "requests"
	if t.ExecutionBound < t.Ceiling {
		t.Ceiling, t.Limit = t.ExecutionBound, "execution"
	}
	if t.ConcurrencyBound < t.Ceiling {
		t.Ceiling, t.Limit = t.ConcurrencyBound, "concurrency"
	}
	t.RealCeiling = t.Ceiling / s.scale
	return t
}
