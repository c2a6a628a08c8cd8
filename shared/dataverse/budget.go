package dataverse

import (
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Limits are the service protection limits the client paces itself to. Dataverse
// evaluates them per user over a 5-minute sliding window: 6,000 requests and 1,200 s of
// combined execution time, and a 429 only comes once they are exceeded
// (https://learn.microsoft.com/power-apps/developer/data-platform/api-limits). Zero
// fields take those defaults.
type Limits struct {
	Window    time.Duration // default 300 s
	Requests  int           // per Window, default 6000
	Execution time.Duration // per Window, default 1200 s
	// Share is the part of each budget this client spends (default 0.98): the margin
	// absorbs estimates that come in late or low.
	Share float64
}

func (l Limits) withDefaults() Limits {
	if l.Window <= 0 {
		l.Window = 300 * time.Second
	}
	if l.Requests <= 0 {
		l.Requests = 6000
	}
	if l.Execution <= 0 {
		l.Execution = 1200 * time.Second
	}
	if l.Share <= 0 || l.Share > 1 {
		l.Share = 0.98
	}
	return l
}

// budgetSpans is how many parts of the window the pacer accounts over: it keeps each
// sliding tenth of the window within a tenth of the budget, so the spend stays even and
// any whole window stays within the budget, also on a server whose window is that tenth
// with the same rates.
const budgetSpans = 10

// budget paces requests so that the requests and the execution time they cost stay
// within Limits: a request waits when the spend projected over the last span (the
// answered requests' estimated execution time, the estimates of those in flight and of
// this one) would pass the span's share. It decides when the next request may leave;
// which request that is, is the semaphore's business.
//
// A request's execution time is estimated from its latency (sending the request to
// receiving the whole answer), an upper bound of the time the server spent on it, and
// charged to the moment it was sent (done). When
// answers carry x-ms-ratelimit-time-remaining-xrm-requests and
// x-ms-ratelimit-burst-remaining-xrm-requests (reported by third parties, not in
// Microsoft's pages), they also hold requests back while the server reports less than
// the margin left.
//
// Live requests (Priority) may spend the margin too: bulk work paced at its share never
// holds them back, and they are estimated apart (a single row's write costs less than a
// bulk request's), so an import at full speed leaves them room.
type budget struct {
	span     time.Duration
	execCap  time.Duration // per span
	reqCap   int           // per span
	execFull time.Duration // per span, the whole budget: what live requests may reach
	reqFull  int
	marginOf float64    // 1 - Share
	peers    func() int // instances sharing the budget (nil: 1)

	mu       sync.Mutex
	spent    []charge // answered requests, in time order
	execSum  time.Duration
	reqSum   int
	inflight time.Duration // estimates of requests in flight
	nflight  int
	nclass   [2]int                   // requests in flight by Priority
	est      [2]time.Duration         // moving average of a request's execution time, by Priority
	kinds    map[string]*kindEstimate // by request kind (requestKind)
	wake     chan struct{}            // closed when a request is answered

	// What the server last reported, and the most it ever reported (its full budget).
	hdrAt              time.Time
	timeLeft, timeMax  float64 // milliseconds
	burstLeft, burstMx int

	delayed int
	delay   time.Duration
}

type charge struct {
	at   time.Time
	exec time.Duration
	reqs int
}

// reservation is a request let through: its estimate, held until it is answered.
type reservation struct {
	est   time.Duration
	start time.Time
	p     Priority
	kind  requestKind
}

// requestKind is what the pacer knows of a request before it leaves: its kind (method
// and path with the keys left out, e.g. "POST /api/data/v9.2/$batch") and the length of
// its body. A $batch of a hundred parts runs them one after another and takes many times
// as long as one of ten, or as an average request: held in flight at the average, a few
// of them would be counted at a fraction of what the server charges.
type requestKind struct {
	name string
	size int64 // body bytes, 0 when none or unknown
}

// kindEstimate is what requests of one kind took: their latency, and their latency per
// body byte, as moving averages.
type kindEstimate struct {
	lat     time.Duration
	perByte float64 // nanoseconds
}

// maxKinds bounds the kinds estimated apart; kinds beyond it get their class's estimate.
const maxKinds = 256

func newBudget(l Limits) *budget {
	l = l.withDefaults()
	return &budget{
		span:     l.Window / budgetSpans,
		execCap:  time.Duration(l.Share * float64(l.Execution) / budgetSpans),
		reqCap:   max(1, int(l.Share*float64(l.Requests)/budgetSpans)),
		execFull: l.Execution / budgetSpans,
		reqFull:  max(1, l.Requests/budgetSpans),
		marginOf: 1 - l.Share,
		kinds:    map[string]*kindEstimate{},
		wake:     make(chan struct{}),
	}
}

// insertLocked adds c to the charges, which stay in time order: requests are answered
// in another order than they were sent.
func (b *budget) insertLocked(c charge) {
	i := len(b.spent)
	for i > 0 && b.spent[i-1].at.After(c.at) {
		i--
	}
	b.spent = append(b.spent, charge{})
	copy(b.spent[i+1:], b.spent[i:])
	b.spent[i] = c
}

// pruneLocked drops charges older than a span.
func (b *budget) pruneLocked(now time.Time) {
	cut := now.Add(-b.span)
	i := 0
	for i < len(b.spent) && !b.spent[i].at.After(cut) {
		b.execSum -= b.spent[i].exec
		b.reqSum -= b.spent[i].reqs
		i++
	}
	b.spent = b.spent[i:]
}

// waitLocked is how long a request must wait before the projected spend fits, 0 when
// it may leave now; poll reports a wait that only an answer can shorten.
func (b *budget) waitLocked(now time.Time, p Priority, est time.Duration) (d time.Duration, poll bool) {
	b.pruneLocked(now)
	need := b.execSum + b.inflight + est
	reqs := b.reqSum + b.nflight + 1
	if hd, hpoll := b.headerWaitLocked(now, p, est); hd > 0 {
		return hd, hpoll
	}
	execCap, reqCap := b.execCap, b.reqCap
	if p == Live {
		execCap, reqCap = b.execFull, b.reqFull
	}
	// Instances sharing the application user split its budget evenly.
	if n := b.peerCount(); n > 1 {
		execCap, reqCap = execCap/time.Duration(n), max(1, reqCap/n)
	}
	if need <= execCap && reqs <= reqCap {
		return 0, false
	}
	if len(b.spent) == 0 && b.nflight == 0 {
		return 0, false // a request costlier than a span's share still goes, alone
	}
	// Walk the charges from the oldest until enough has left the span.
	for _, c := range b.spent {
		need -= c.exec
		reqs -= c.reqs
		if need <= execCap && reqs <= reqCap {
			return c.at.Add(b.span).Sub(now), false
		}
	}
	// Only requests in flight can make room.
	return b.span, true
}

// headerWaitLocked holds requests while the server's own figures, reported less than a
// span ago, leave less than half the margin after this request. With
// nothing in flight one request goes through to learn the current figures.
func (b *budget) headerWaitLocked(now time.Time, p Priority, est time.Duration) (time.Duration, bool) {
	// Live requests in flight don't hold bulk work's probe: they come and go all the time.
	if b.hdrAt.IsZero() || now.Sub(b.hdrAt) > b.span || b.nclass[p] == 0 {
		return 0, false
	}
	// Half the margin: a server may already have charged the requests in flight. Live
	// requests keep a quarter.
	keep := b.marginOf / 2
	if p == Live {
		keep = b.marginOf / 4
	}
	if b.timeMax > 0 {
		left := b.timeLeft - float64(est/time.Millisecond)
		if left < keep*b.timeMax {
			return b.span, true
		}
	}
	if b.burstMx > 0 && float64(b.burstLeft-1) < keep*float64(b.burstMx) {
		return b.span, true
	}
	return 0, false
}

func (b *budget) peerCount() int {
	if b.peers == nil {
		return 1
	}
	return max(1, b.peers())
}

// estimate is a request's expected execution time in class p: that class's average,
// else the other's.
func (b *budget) estimate(p Priority) time.Duration {
	if b.est[p] > 0 {
		return b.est[p]
	}
	return b.est[1-p]
}

// estimateKindLocked is a request's expected execution time: its length at the latency
// per byte of its kind, else its kind's latency, else its class's (estimate).
func (b *budget) estimateKindLocked(p Priority, k requestKind) time.Duration {
	if e := b.kinds[k.name]; k.name != "" && e != nil {
		if k.size > 0 && e.perByte > 0 {
			return time.Duration(e.perByte * float64(k.size))
		}
		return e.lat
	}
	return b.estimate(p)
}

// learnKindLocked adds an answered request of kind k that took lat to its kind's averages.
func (b *budget) learnKindLocked(k requestKind, lat time.Duration) {
	if k.name == "" || lat <= 0 {
		return
	}
	e := b.kinds[k.name]
	if e == nil {
		if len(b.kinds) >= maxKinds {
			return
		}
		e = &kindEstimate{lat: lat}
		if k.size > 0 {
			e.perByte = float64(lat) / float64(k.size)
		}
		b.kinds[k.name] = e
		return
	}
	e.lat = (4*e.lat + lat) / 5
	if k.size > 0 {
		if pb := float64(lat) / float64(k.size); e.perByte == 0 {
			e.perByte = pb
		} else {
			e.perByte = (4*e.perByte + pb) / 5
		}
	}
}

// try reserves the estimate of a request of kind k (estimateKindLocked) when it fits the
// budget now; otherwise it says how long to wait at most and returns a channel closed
// when an answer may make room. waited is how long the request has waited so far (for
// PacingStats).
func (b *budget) try(p Priority, k requestKind, waited time.Duration) (*reservation, time.Duration, <-chan struct{}) {
	now := time.Now()
	b.mu.Lock()
	defer b.mu.Unlock()
	est := b.estimateKindLocked(p, k)
	d, _ := b.waitLocked(now, p, est)
	if d > 0 {
		return nil, d, b.wake
	}
	r := &reservation{est: est, start: now, p: p, kind: k}
	b.inflight += r.est
	b.nflight++
	b.nclass[p]++
	if waited > 0 {
		b.delayed++
		b.delay += waited
	}
	return r, 0, nil
}

// started marks the moment the request is being sent (its connection is ready).
func (r *reservation) started() { r.start = time.Now() }

// done charges an answered (or failed) request: its latency as its execution time,
// and the server's figures when the answer has them.
func (b *budget) done(r *reservation, resp *http.Response) {
	now := time.Now()
	lat := now.Sub(r.start)
	if resp != nil && resp.StatusCode == http.StatusTooManyRequests {
		lat = 0 // refused before it ran
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	b.inflight -= r.est
	b.nflight--
	b.nclass[r.p]--
	b.pruneLocked(now)
	// Charged when it was sent, kept in time order; one that took longer than it was
	// estimated to (its kind and length), that estimate before its answer. A server
	// counts a request when it arrives and its execution time when it has run, a latency
	// later, and the next span's requests are charged a latency after they leave too, so
	// both windows slide alike: charged at the answer, every span's first requests would
	// wait a latency more than the server makes them, and instances that spend their
	// parts in bursts, then wait, would lose that at every span. A charge leaves the span
	// before the server's by at most its estimate, so what leaves early at once is about
	// what is in flight, which the projection counts in full before the server charges
	// any of it; a request that ran long is not let out seconds early.
	at := r.start
	if r.est > 0 && lat > r.est {
		at = now.Add(-r.est)
	}
	b.insertLocked(charge{at: at, exec: lat, reqs: 1})
	b.execSum += lat
	b.reqSum++
	b.learnKindLocked(r.kind, lat)
	if lat > 0 {
		if b.est[r.p] == 0 {
			b.est[r.p] = lat
		} else {
			b.est[r.p] = (4*b.est[r.p] + lat) / 5
		}
	}
	if resp != nil {
		b.readHeadersLocked(resp.Header, now)
	}
	close(b.wake)
	b.wake = make(chan struct{})
}

func (b *budget) readHeadersLocked(h http.Header, now time.Time) {
	tl, okT := parseFigure(h.Get("x-ms-ratelimit-time-remaining-xrm-requests"))
	bl, okB := parseFigure(h.Get("x-ms-ratelimit-burst-remaining-xrm-requests"))
	if !okT && !okB {
		return
	}
	b.hdrAt = now
	if okT {
		b.timeLeft = tl
		b.timeMax = max(b.timeMax, tl)
	}
	if okB {
		b.burstLeft = int(bl)
		b.burstMx = max(b.burstMx, int(bl))
	}
}

// parseFigure reads a header number, with or without thousands separators.
func parseFigure(v string) (float64, bool) {
	v = strings.ReplaceAll(strings.TrimSpace(v), ",", "")
	if v == "" {
		return 0, false
	}
	f, err := strconv.ParseFloat(v, 64)
	return f, err == nil && f >= 0
}

// PacingStats says how often the client held requests back to stay within Limits.
type PacingStats struct {
	Delayed int           // requests that waited
	Delay   time.Duration // their waits added up
}

func (b *budget) stats() PacingStats {
	b.mu.Lock()
	defer b.mu.Unlock()
	return PacingStats{Delayed: b.delayed, Delay: b.delay}
}
