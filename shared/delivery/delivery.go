// Package delivery decides what becomes of a queue message the app failed to apply,
// given what the Functions host and Service Bus do with a failed invocation: the host
// discards the body of any non-2xx answer (its Logs included) and abandons the message
// (Azure/azure-functions-host src/WebJobs.Script/Workers/Http/DefaultHttpWorkerService.cs
// calls EnsureSuccessStatusCode before reading the answer); the broker delivers it
// again at once, and at maxDeliveryCount dead-letters it as MaxDeliveryCountExceeded
// with a fixed description
// (https://learn.microsoft.com/azure/service-bus-messaging/service-bus-dead-letter-queues).
// So:
//
//   - the reason of a failure is recorded in the state store before the invocation
//     fails (doc kind FailureKind, keyed by queue and the message's original id); the
//     dead-letter page and replay decisions read it there, never from the dead letter;
//   - a failure is answered with a failed invocation (redelivered at once) only for an
//     original message's first deliveries (a blip); after that, or while every message fails
//     (the breaker is open: Dataverse or the state store is down), the message is
//     completed once a copy of it is scheduled a little later (Service Bus scheduled
//     messages), so an outage spends no deliveries and nothing is dead-lettered by it;
//   - copies stop after RetryFor of failing: the message then fails its remaining
//     deliveries and is dead-lettered with its reason recorded here.
//
// A copy has an id of its own (duplicate detection would drop a copy with the original
// id inside the window) derived from the original id and the copy's number, so a copy
// scheduled twice (a crash between scheduling and completing) is dropped as a
// duplicate. It carries the original id (PropRetryOf), its number (PropRetryCount) and
// when the message started failing (PropFailingSince).
package delivery

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"math/rand/v2"
	"strconv"
	"sync"
	"time"

	"github.com/nopsync/nopsync/shared/queue"
	"github.com/nopsync/nopsync/shared/state"
)

// Application properties of a scheduled copy.
const (
	PropRetryOf      = "retryOf"      // the original message's id
	PropRetryCount   = "retryCount"   // this copy's number, from 1 (decimal string)
	PropFailingSince = "failingSince" // RFC 3339: first failure of the original
	// propReplayOf is what a dead-letter replay adds (queue packages' ReplayOfProperty):
	// a replayed message starts a new series of copies.
	propReplayOf = "replayOf"
)

// Message is one delivery of a queue message.
type Message struct {
	Queue                 string
	MessageID, SessionID  string
	Subject, ContentType  string
	Body                  []byte
	DeliveryCount         int // 1 on the first delivery
	ApplicationProperties map[string]any
}

// Options configure a Handler. Zero fields take the defaults named.
type Options struct {
	// Apply handles a message: nil when it is done (applied, skipped or recorded as a
	// permanent failure), an error when a retry may succeed.
	Apply func(ctx context.Context, queueName string, body []byte) error
	// State keeps the failure records.
	State state.Store
	// Scheduler sends the delayed copies; nil: every failure fails the invocation.
	Scheduler queue.Scheduler

	// ImmediateRetries is how many deliveries of a message fail their invocation
	// (redelivered at once) before copies take over. Default 2; keep it well under the
	// queues' maxDeliveryCount (10).
	ImmediateRetries int
	// MinDelay and MaxDelay bound the delay of a copy: MinDelay doubled per copy, up to
	// MaxDelay, ±20 % jitter. Defaults 10 s and 60 s: what is accepted during an outage
	// lands within about a minute of its end.
	MinDelay, MaxDelay time.Duration
	// RetryFor is how long a failing message keeps being copied (default 2 hours,
	// more than the hour-long outage the app must ride out); negative: never.
	RetryFor time.Duration
	// BreakerThreshold failures in a row, with no success between them, open the
	// breaker (default 5): messages are then copied without being tried, except one
	// probe every ProbeEvery (default 5 s); a success closes it.
	BreakerThreshold int
	ProbeEvery       time.Duration
	// Outage reports whether a failure is of a kind an outage causes, the only kind the
	// breaker counts (nil: every failure). A failure that says something about one
	// entity (another writer holds it, say) neither opens the breaker nor closes it:
	// after a crash, the entities a killed process held would otherwise reschedule the
	// whole backlog untried.
	Outage func(error) bool

	Now func() time.Time
	Log *slog.Logger
}

// Handler applies queue messages with that failure policy. Safe for concurrent use.
type Handler struct {
	o Options

	mu       sync.Mutex
	failures int       // in a row
	lastErr  string    // the last failure's text
	probeAt  time.Time // while open: when the next probe may go
}

// New returns a Handler.
func New(o Options) (*Handler, error) {
	if o.Apply == nil || o.State == nil {
		return nil, errors.New("delivery: Options.Apply and Options.State are required")
	}
	if o.ImmediateRetries <= 0 {
		o.ImmediateRetries = 2
	}
	if o.MinDelay <= 0 {
		o.MinDelay = 10 * time.Second
	}
	if o.MaxDelay <= 0 {
		o.MaxDelay = time.Minute
	}
	if o.MaxDelay < o.MinDelay {
		o.MaxDelay = o.MinDelay
	}
	if o.RetryFor == 0 {
		o.RetryFor = 2 * time.Hour
	}
	if o.BreakerThreshold <= 0 {
		o.BreakerThreshold = 5
	}
	if o.ProbeEvery <= 0 {
		o.ProbeEvery = 5 * time.Second
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
	return &Handler{o: o}, nil
}

// Handle applies m. nil: the message is done, applied or handed over to a scheduled
// copy; complete it. An error: fail the invocation (the broker redelivers, and
// dead-letters at maxDeliveryCount); the reason has been recorded first.
func (h *Handler) Handle(ctx context.Context, m Message) error {
	now := h.o.Now()
	if h.copyable(m, now) {
		if ok, last := h.admit(now); !ok {
			// The breaker is open: trying would fail like the others; a copy waits instead.
			// (A message that can't be copied is tried: failing it untried would spend
			// its deliveries for nothing.)
			if h.reschedule(ctx, m, now, fmt.Errorf("not tried: the last %d or more deliveries failed, the last with: %s", h.o.BreakerThreshold, last)) {
				return nil
			}
		}
	}
	actx := ctx
	if deliveredBefore(m) {
		actx = queue.WithRedelivery(ctx)
	}
	err := h.o.Apply(actx, m.Queue, m.Body)
	now = h.o.Now()
	h.observe(err, now)
	if err == nil {
		return nil
	}
	// A blip is retried at once (the broker redelivers); a copy's failure, a message's
	// third, or any during an outage waits in a scheduled copy.
	if h.copyable(m, now) && (retryCount(m) > 0 || m.DeliveryCount > h.o.ImmediateRetries || h.open()) && h.reschedule(ctx, m, now, err) {
		return nil
	}
	// Record why before failing: the host and the broker keep nothing of it.
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	if rerr := recordFailure(rctx, h.o.State, m, err, now); rerr != nil {
		h.o.Log.Warn("recording why a message failed", "queue", m.Queue, "message", m.MessageID, "error", rerr)
	}
	return err
}

// copyable says whether a failure of m may be handed to a scheduled copy: there is a
// scheduler and m has been failing for less than RetryFor.
func (h *Handler) copyable(m Message, now time.Time) bool {
	return h.o.Scheduler != nil && h.o.RetryFor > 0 && now.Sub(failingSince(m, now)) < h.o.RetryFor
}

// admit says whether m may be tried: the breaker is closed, or a probe is due.
func (h *Handler) admit(now time.Time) (bool, string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.failures < h.o.BreakerThreshold {
		return true, ""
	}
	if now.Before(h.probeAt) {
		return false, h.lastErr
	}
	h.probeAt = now.Add(h.o.ProbeEvery)
	return true, ""
}

func (h *Handler) observe(err error, now time.Time) {
	if err != nil && h.o.Outage != nil && !h.o.Outage(err) {
		return
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if err == nil {
		if h.failures >= h.o.BreakerThreshold {
			h.o.Log.Info("deliveries succeed again: breaker closed")
		}
		h.failures = 0
		return
	}
	h.failures++
	h.lastErr = err.Error()
	if len(h.lastErr) > maxReason {
		h.lastErr = h.lastErr[:maxReason]
	}
	if h.failures == h.o.BreakerThreshold {
		h.probeAt = now.Add(h.o.ProbeEvery)
		h.o.Log.Warn("every delivery fails: breaker open, messages are rescheduled without being tried, one probe every " + h.o.ProbeEvery.String())
	}
}

// reschedule schedules the next copy of m, reporting whether it did.
func (h *Handler) reschedule(ctx context.Context, m Message, now time.Time, cause error) bool {
	copies := retryCount(m)
	at := now.Add(h.delay(copies))
	cp := h.copyOf(m, copies+1, failingSince(m, now))
	if err := h.o.Scheduler.Schedule(ctx, m.Queue, []queue.Message{cp}, at); err != nil {
		h.o.Log.Warn("scheduling a copy of a failed message", "queue", m.Queue, "message", m.MessageID, "error", err)
		return false
	}
	h.o.Log.Info("message failed; a copy is scheduled", "queue", m.Queue, "message", m.MessageID, "copy", cp.MessageID, "at", at.UTC().Format(time.RFC3339), "error", cause)
	return true
}

func (h *Handler) open() bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.failures >= h.o.BreakerThreshold
}

// delay is MinDelay doubled per copy made so far, up to MaxDelay, ±20 %.
func (h *Handler) delay(copies int) time.Duration {
	d := h.o.MinDelay
	for i := 0; i < copies && d < h.o.MaxDelay; i++ {
		d *= 2
	}
	d = min(d, h.o.MaxDelay)
	return time.Duration(float64(d) * (0.8 + 0.4*rand.Float64()))
}

// copyOf is copy number n of m.
func (h *Handler) copyOf(m Message, n int, since time.Time) queue.Message {
	orig := OriginalID(m.MessageID, m.ApplicationProperties)
	props := maps.Clone(m.ApplicationProperties)
	if props == nil {
		props = map[string]any{}
	}
	delete(props, propReplayOf)
	props[PropRetryOf] = orig
	props[PropRetryCount] = strconv.Itoa(n)
	props[PropFailingSince] = since.UTC().Format(time.RFC3339Nano)
	return queue.Message{MessageID: CopyID(orig, n), SessionID: m.SessionID, Subject: m.Subject,
		ContentType: m.ContentType, Body: m.Body, ApplicationProperties: props}
}

// CopyID is the id of copy n of the message whose original id is orig: at most 64
// characters whatever orig's length (Service Bus allows 128).
func CopyID(orig string, n int) string {
	sum := sha256.Sum256([]byte(orig))
	return "retry-" + hex.EncodeToString(sum[:16]) + "-" + strconv.Itoa(n)
}

// OriginalID is the id of the message a delivery stands for: the original's for a
// copy, else its own.
func OriginalID(messageID string, props map[string]any) string {
	if s, ok := props[PropRetryOf].(string); ok && s != "" {
		return s
	}
	return messageID
}

// deliveredBefore reports whether m's events were delivered before: a broker redelivery,
// a scheduled copy of a failed message (it carries its original's id), a dead letter
// replayed.
func deliveredBefore(m Message) bool {
	_, replay := m.ApplicationProperties[propReplayOf]
	return m.DeliveryCount > 1 || replay || OriginalID(m.MessageID, m.ApplicationProperties) != m.MessageID
}

// retryCount is the copy number of m (0 for an original or a replayed message).
func retryCount(m Message) int {
	if _, replay := m.ApplicationProperties[propReplayOf]; replay {
		return 0
	}
	switch v := m.ApplicationProperties[PropRetryCount].(type) {
	case string:
		n, _ := strconv.Atoi(v)
		return n
	case float64:
		return int(v)
	case int64:
		return int(v)
	case int:
		return v
	}
	return 0
}

// failingSince is when m started failing: carried by a copy, else now.
func failingSince(m Message, now time.Time) time.Time {
	if _, replay := m.ApplicationProperties[propReplayOf]; replay {
		return now
	}
	if s, ok := m.ApplicationProperties[PropFailingSince].(string); ok {
		if t, err := time.Parse(time.RFC3339Nano, s); err == nil && !t.After(now) {
			return t
		}
	}
	return now
}

// FailureKind is the state doc kind of failure records.
const FailureKind = "failure"

// Failure is what the app keeps of a queue message whose delivery failed: the
// reason the broker never learns, and how often auto-sync replayed it.
type Failure struct {
	Queue      string    `json:"queue"`
	MessageID  string    `json:"messageId"` // the original id
	Reason     string    `json:"reason"`
	Deliveries int       `json:"deliveries"` // failed invocations recorded
	Replays    int       `json:"replays"`    // replays from the dead-letter queue counted
	FirstAt    time.Time `json:"firstAt"`
	LastAt     time.Time `json:"lastAt"`
}

// NoReason is the reason shown for a dead letter without a failure record: its
// deliveries ended without an answer (the process stopped, the lock was lost) or the
// state store could not be written.
const NoReason = "no reason recorded: the deliveries ended without an answer (process stopped, lock lost) or the state store was unreachable"

// failureKey is the doc key of the failure record of (queue, id); a key too long for the
// state store is hashed (state.FitKey): the record itself keeps the id.
func failureKey(queueName, id string) string { return state.FitKey(queueName + "/" + id) }

const maxReason = 2000

func recordFailure(ctx context.Context, st state.Store, m Message, cause error, now time.Time) error {
	orig := OriginalID(m.MessageID, m.ApplicationProperties)
	reason := cause.Error()
	if len(reason) > maxReason {
		reason = reason[:maxReason] + "…"
	}
	return update(ctx, st, m.Queue, orig, now, func(f *Failure) {
		f.Reason = reason
		f.Deliveries++
	})
}

// update applies fn to the failure record of (queue, id), creating it, with the
// store's ETag so concurrent updates don't lose one another.
func update(ctx context.Context, st state.Store, queueName, id string, now time.Time, fn func(*Failure)) error {
	_, err := state.UpdateDoc(ctx, st, FailureKind, failureKey(queueName, id), 5, func(cur []byte) ([]byte, bool) {
		f := Failure{Queue: queueName, MessageID: id, FirstAt: now.UTC()}
		if len(cur) > 0 && json.Unmarshal(cur, &f) != nil {
			f = Failure{Queue: queueName, MessageID: id, FirstAt: now.UTC()}
		}
		fn(&f)
		f.LastAt = now.UTC()
		v, _ := json.Marshal(f)
		return v, true
	})
	if err != nil {
		return fmt.Errorf("the failure record of %s %s: %w", queueName, id, err)
	}
	return nil
}

// Lookup returns the failure record of a message (by its original id), or nil when
// there is none.
func Lookup(ctx context.Context, st state.Store, queueName, id string) (*Failure, error) {
	doc, err := st.GetDoc(ctx, FailureKind, failureKey(queueName, id))
	if errors.Is(err, state.ErrNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("reading the failure record of %s %s: %w", queueName, id, err)
	}
	var f Failure
	if err := json.Unmarshal(doc.Value, &f); err != nil {
		return nil, fmt.Errorf("failure record of %s %s: %w", queueName, id, err)
	}
	return &f, nil
}

// CountReplay adds one replay to the failure record of a message (creating it with
// NoReason when there is none) and returns the replays counted before this one.
func CountReplay(ctx context.Context, st state.Store, queueName, id string, now time.Time) (int, error) {
	before := 0
	err := update(ctx, st, queueName, id, now, func(f *Failure) {
		if f.Reason == "" {
			f.Reason = NoReason
		}
		before = f.Replays
		f.Replays++
	})
	return before, err
}
