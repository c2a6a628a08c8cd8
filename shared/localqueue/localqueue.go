// Package localqueue is the embedded queue of local mode. It gives the app's queue
// functions the Service Bus semantics they rely on, for queues with sessions and
// duplicate detection:
//
//   - at-least-once delivery with peek-lock: a delivery is in flight until its handler
//     returns; nil completes it (gone), an error abandons it (delivered again);
//   - sessions: the messages of one SessionID are delivered one after another in send
//     order, never two at a time; different sessions are delivered in parallel;
//   - abandon: a failed delivery makes the message available again at once, with no
//     back-off, as Service Bus does when the Functions host abandons it;
//   - MaxDeliveryCount: a message whose delivery failed that many times is moved to the
//     dead-letter queue with reason "MaxDeliveryCountExceeded" and the broker's fixed
//     description ("Message could not be consumed after N delivery attempts."): like
//     the broker, the queue never learns why the handler failed;
//   - scheduled messages (Schedule): available from a given time, not holding up their
//     session before then;
//   - duplicate detection: a message whose MessageID was accepted within the duplicate
//     window is dropped silently (Send still succeeds);
//   - durability: with a directory, every change is journaled and fsynced before it is
//     acknowledged and replayed at Open; messages in flight at a crash are delivered
//     again after a restart, their delivery count kept.
//
// With a directory, message bodies stay in the journal file only: memory holds each
// message's metadata and where its body is, and the body is read (pread, not mmap,
// which would count in the resident set) when delivered or peeked. A queue holding a
// whole import's bodies then costs memory by message count, not by size.
//
// A local convenience Service Bus doesn't have, off by default: a delay before an
// abandoned message is delivered again (RedeliveryDelay).
//
// One process at a time may open a directory.
package localqueue

import (
	"container/heap"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"maps"
	"slices"
	"sync"
	"time"

	"github.com/nopsync/nopsync/shared/internal/cut"
	"github.com/nopsync/nopsync/shared/queue"
)

// Defaults for zero Options fields.
const (
	DefaultMaxDeliveryCount = 10
	DefaultDuplicateWindow  = 10 * time.Minute
	// DefaultLockDuration is the time a handler has before its lock is lost. The
	// Functions host renews Service Bus locks up to maxAutoLockRenewalDuration (5 min),
	// so that is the budget a queue function has in Azure too.
	DefaultLockDuration = 5 * time.Minute
	// DefaultMaxMessageSize is Service Bus Standard's message size limit.
	DefaultMaxMessageSize = 256 * 1024
)

// Dead-letter reasons, as Service Bus records them.
const (
	ReasonMaxDeliveryCountExceeded = "MaxDeliveryCountExceeded"
)

// ReplayOfProperty is the application property a replayed message carries: the
// sequence number (int64) of the dead-lettered message it resubmits.
const ReplayOfProperty = "replayOf"

// maxDescription is the longest dead-letter error description kept (Service Bus's limit
// for DeadLetterErrorDescription).
const maxDescription = 4096

// ErrClosed is returned by operations on closed Queues.
var ErrClosed = errors.New("localqueue: closed")

// Options configures Open. Zero fields take the defaults above; a negative
// DuplicateWindow turns duplicate detection off. RedeliveryDelay zero or negative
// redelivers an abandoned message at once, as Service Bus does.
type Options struct {
	// Dir holds the journal. Empty: in memory only, nothing survives Close.
	Dir              string
	MaxDeliveryCount int
	DuplicateWindow  time.Duration
	LockDuration     time.Duration
	RedeliveryDelay  time.Duration
	MaxMessageSize   int
	// ForgetDuplicates drops the message ids the journal remembers for duplicate
	// detection when the queues open (the messages themselves are kept): for a
	// destination that does not outlive the process (local mode's in-memory sandbox),
	// where a message sent again after a restart must be applied again.
	ForgetDuplicates bool
	// Now is the clock for enqueue times, the duplicate window and redelivery delays.
	Now func() time.Time
}

// Delivery is one delivery of a message to a handler.
type Delivery struct {
	MessageID, SessionID, Subject, ContentType string
	Body                                       []byte
	DeliveryCount                              int // 1 on the first delivery
	SequenceNumber                             int64
	EnqueuedAt                                 time.Time
	LockToken                                  string
	ApplicationProperties                      map[string]any
}

// Queues is a set of named queues (created on first use) sharing one journal.
// Its methods are safe for concurrent use.
type Queues struct {
	opt Options

	mu      sync.Mutex
	queues  map[string]*queueState
	j       *journal // nil in memory-only mode
	closing bool
	failed  error // sticky journal failure: the state can no longer be made durable
	runs    map[*runHandle]struct{}
	runWG   sync.WaitGroup
	// compactAt is the journal record count, compactBytes the journal size, from
	// which compaction is considered.
	compactAt    int
	compactBytes int64
	// bodyBytes sums the bodies of the messages held, active and dead-lettered (under
	// mu): what a compaction would keep of the journal.
	bodyBytes int64
}

type runHandle struct{ cancel context.CancelFunc }

type message struct {
	seq         int64
	id, session string
	subject     string
	contentType string
	props       map[string]any
	// The body: with a directory it stays in the journal file (stored, at off, n bytes,
	// CRC-32C crc) and is read when delivered or peeked, so a waiting message costs
	// the same memory whatever its size; in memory-only mode it is in body.
	body       []byte
	off        int64
	n          int
	crc        uint32
	stored     bool
	enqueuedAt time.Time
	count      int    // deliveries so far
	lastError  string // text of the last failed delivery
	inFlight   bool
	lockToken  string

	availableAt time.Time
	heapIdx     int // in queueState.later while scheduled

	// dead-letter fields
	reason, description string
	deadAt              time.Time
	deadOrder           int64
}

type session struct {
	id      string
	seqs    []int64 // active messages in send order; seqs[0] is the head
	busy    bool    // the head is in flight
	queued  bool    // in the ready list or the delayed heap
	heapIdx int
	headAt  time.Time // when the head becomes available (while in the delayed heap)
}

type queueState struct {
	name     string
	nextSeq  int64
	msgs     map[int64]*message
	sessions map[string]*session
	ready    []*session  // idle sessions whose head is available now, FIFO
	delayed  sessionHeap // idle sessions whose head becomes available later
	dead     map[int64]*message
	deadSeq  int64
	// scheduled holds messages not yet available (Schedule), by sequence number and
	// in a heap ordered by their time; they join their session when due.
	scheduled map[int64]*message
	later     msgHeap
	dedupe    map[string]time.Time // MessageID -> when it was accepted
	wake      chan struct{}        // closed (and replaced) when a message may have become available
	sweepAt   int                  // dedupe size at which expired entries are swept next
	inflight  int
}

// Open opens (or creates) the queues in o.Dir and replays the journal.
func Open(o Options) (*Queues, error) {
	if o.MaxDeliveryCount <= 0 {
		o.MaxDeliveryCount = DefaultMaxDeliveryCount
	}
	if o.DuplicateWindow == 0 {
		o.DuplicateWindow = DefaultDuplicateWindow
	}
	if o.LockDuration <= 0 {
		o.LockDuration = DefaultLockDuration
	}
	if o.MaxMessageSize <= 0 {
		o.MaxMessageSize = DefaultMaxMessageSize
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	q := &Queues{opt: o, queues: map[string]*queueState{}, runs: map[*runHandle]struct{}{}, compactAt: 4096, compactBytes: 64 << 20}
	if o.Dir == "" {
		return q, nil
	}
	j, err := openJournal(o.Dir, q.applyRecord)
	if err != nil {
		return nil, err
	}
	q.j = j
	now := q.now()
	for _, qs := range q.queues {
		// Oldest head first, as the messages came.
		ss := slices.Collect(maps.Values(qs.sessions))
		slices.SortFunc(ss, func(a, b *session) int { return cmpInt64(a.seqs[0], b.seqs[0]) })
		for _, s := range ss {
			q.schedule(qs, s, now)
		}
	}
	if o.ForgetDuplicates {
		for _, qs := range q.queues {
			clear(qs.dedupe)
		}
	}
	// Start from a compact journal: the snapshot of what the replay rebuilt (which also
	// moves the bodies of an older journal's records out of memory).
	if err := q.compact(now); err != nil {
		j.close()
		return nil, err
	}
	return q, nil
}

func (q *Queues) now() time.Time { return q.opt.Now().UTC() }

func (q *Queues) queue(name string) *queueState {
	qs := q.queues[name]
	if qs == nil {
		qs = &queueState{
			name: name, nextSeq: 1,
			msgs: map[int64]*message{}, sessions: map[string]*session{},
			dead: map[int64]*message{}, scheduled: map[int64]*message{}, dedupe: map[string]time.Time{},
			wake: make(chan struct{}), sweepAt: 1024,
		}
		q.queues[name] = qs
	}
	return qs
}

func (qs *queueState) wakeUp() {
	close(qs.wake)
	qs.wake = make(chan struct{})
}

// usable reports why the queues can't take a change, if they can't (under mu).
func (q *Queues) usable() error {
	if q.closing {
		return ErrClosed
	}
	return q.failed
}

// commit appends recs to the journal (under mu) and returns a function that makes them
// durable (to call after unlocking).
func (q *Queues) commit(recs ...record) (func() error, error) {
	if q.j == nil {
		return func() error { return nil }, nil
	}
	t, err := q.j.append(recs...)
	if err != nil {
		q.failed = err
		return nil, err
	}
	return func() error {
		if err := q.j.sync(t); err != nil {
			q.mu.Lock()
			q.failed = err
			q.mu.Unlock()
			return err
		}
		return nil
	}, nil
}

// maybeCompact rewrites the journal when it holds many more records than the state
// (under mu, after an append).
func (q *Queues) maybeCompact() {
	if q.j == nil {
		return
	}
	// Also by size: a few records can carry many megabytes of bodies long completed.
	if size := q.j.written.Load(); size >= q.compactBytes && size >= 4*q.bodyBytes {
		if err := q.compact(q.now()); err != nil {
			q.failed = err
		}
		return
	}
	if q.j.records < q.compactAt {
		return
	}
	live := 0
	for _, qs := range q.queues {
		live += len(qs.msgs) + len(qs.dead) + len(qs.dedupe) + 1
	}
	if q.j.records < 4*live {
		return
	}
	if err := q.compact(q.now()); err != nil {
		q.failed = err
	}
}

// Send implements queue.Sender. The batch is all or nothing: every message is checked
// first, then the accepted ones are journaled as one record. A message whose MessageID
// was accepted within the duplicate window (or earlier in the same batch) is dropped,
// and Send still succeeds, as with Service Bus.
func (q *Queues) Send(ctx context.Context, queueName string, msgs []queue.Message) error {
	return q.send(ctx, queueName, msgs, time.Time{})
}

// Schedule implements queue.Scheduler: Send, with the messages available from at only
// (at once when at has passed). Until then they are counted in Stats as Scheduled and
// don't hold up their session; duplicate detection applies now, as on Service Bus.
func (q *Queues) Schedule(ctx context.Context, queueName string, msgs []queue.Message, at time.Time) error {
	if at.IsZero() {
		return errors.New("localqueue: schedule: zero time")
	}
	return q.send(ctx, queueName, msgs, at.UTC())
}

func (q *Queues) send(ctx context.Context, queueName string, msgs []queue.Message, at time.Time) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if queueName == "" {
		return errors.New("localqueue: send: empty queue name")
	}
	enc := make([]msgJSON, len(msgs))
	for i, m := range msgs {
		if err := q.check(m); err != nil {
			return fmt.Errorf("localqueue: send to %s: message %d (%q): %w", queueName, i, m.MessageID, err)
		}
		props, err := encodeProps(m.ApplicationProperties)
		if err != nil {
			return fmt.Errorf("localqueue: send to %s: message %d (%q): %w", queueName, i, m.MessageID, err)
		}
		enc[i] = msgJSON{MessageID: m.MessageID, SessionID: m.SessionID, Subject: m.Subject,
			ContentType: m.ContentType, Props: props, data: m.Body}
	}

	q.mu.Lock()
	if err := q.usable(); err != nil {
		q.mu.Unlock()
		return err
	}
	qs := q.queue(queueName)
	now := q.now()
	q.sweepDedupe(qs, now)
	accepted := enc[:0:0]
	seen := map[string]bool{}
	seq := qs.nextSeq
	for _, m := range enc {
		if seen[m.MessageID] || q.duplicate(qs, m.MessageID, now) {
			continue
		}
		seen[m.MessageID] = true
		m.Seq = seq
		m.EnqueuedAt = now
		m.AvailableAt = at
		seq++
		accepted = append(accepted, m)
	}
	if len(accepted) == 0 {
		q.mu.Unlock()
		return nil
	}
	durable, err := q.commit(record{Op: opSend, Q: queueName, Msgs: accepted})
	if err != nil {
		q.mu.Unlock()
		return err
	}
	for _, m := range accepted {
		if err := q.applySend(qs, m); err != nil { // cannot fail: checked above
			q.failed = err
		}
		if s := qs.sessions[m.SessionID]; s != nil {
			q.schedule(qs, s, now)
		}
	}
	qs.wakeUp()
	q.maybeCompact()
	q.mu.Unlock()
	return durable()
}

func (q *Queues) check(m queue.Message) error {
	if err := m.Check(); err != nil {
		return err
	}
	size := len(m.Body) + len(m.MessageID) + len(m.SessionID) + len(m.Subject) + len(m.ContentType)
	for k, v := range m.ApplicationProperties {
		size += len(k) + len(fmt.Sprint(v))
	}
	if size > q.opt.MaxMessageSize {
		return fmt.Errorf("message of about %d bytes exceeds the %d-byte limit", size, q.opt.MaxMessageSize)
	}
	return nil
}

func (q *Queues) duplicate(qs *queueState, id string, now time.Time) bool {
	if q.opt.DuplicateWindow < 0 {
		return false
	}
	at, ok := qs.dedupe[id]
	return ok && now.Sub(at) < q.opt.DuplicateWindow
}

// sweepDedupe drops expired duplicate-detection entries, now and then.
func (q *Queues) sweepDedupe(qs *queueState, now time.Time) {
	if len(qs.dedupe) < qs.sweepAt {
		return
	}
	for id, at := range qs.dedupe {
		if q.opt.DuplicateWindow < 0 || now.Sub(at) >= q.opt.DuplicateWindow {
			delete(qs.dedupe, id)
		}
	}
	qs.sweepAt = max(1024, 2*len(qs.dedupe))
}

// applySend adds an accepted message (live and at replay).
func (q *Queues) applySend(qs *queueState, m msgJSON) error {
	props, err := decodeProps(m.Props)
	if err != nil {
		return err
	}
	msg := &message{
		seq: m.Seq, id: m.MessageID, session: m.SessionID, subject: m.Subject,
		contentType: m.ContentType, props: props,
		enqueuedAt: m.EnqueuedAt, count: m.DeliveryCount, lastError: m.LastError,
	}
	if m.stored {
		msg.off, msg.n, msg.crc, msg.stored = m.off, m.Len, m.CRC, true
	} else if len(m.data) > 0 {
		msg.body = slices.Clone(m.data)
	}
	if m.Seq >= qs.nextSeq {
		qs.nextSeq = m.Seq + 1
	}
	if q.opt.DuplicateWindow >= 0 {
		if at, ok := qs.dedupe[m.MessageID]; !ok || m.EnqueuedAt.After(at) {
			qs.dedupe[m.MessageID] = m.EnqueuedAt
		}
	}
	if m.Dead {
		msg.reason, msg.description, msg.deadAt = m.Reason, m.Description, m.DeadAt
		qs.deadSeq++
		msg.deadOrder = qs.deadSeq
		qs.dead[msg.seq] = msg
		q.bodyBytes += int64(msg.size())
		return nil
	}
	if !m.AvailableAt.IsZero() {
		// Scheduled: it joins its session when due (activateDue), also when the time
		// has passed already, so the ordering is the same live and at replay.
		msg.availableAt = m.AvailableAt
		qs.scheduled[msg.seq] = msg
		heap.Push(&qs.later, msg)
		q.bodyBytes += int64(msg.size())
		return nil
	}
	q.addActive(qs, msg)
	return nil
}

// activateDue moves the scheduled messages whose time has come into their sessions
// (under mu).
func (q *Queues) activateDue(qs *queueState, now time.Time) {
	for qs.later.Len() > 0 && !qs.later[0].availableAt.After(now) {
		q.activate(qs, heap.Pop(&qs.later).(*message), now)
	}
}

// activate makes a scheduled message active (under mu; it is no longer in the heap).
func (q *Queues) activate(qs *queueState, msg *message, now time.Time) {
	delete(qs.scheduled, msg.seq)
	q.bodyBytes -= int64(msg.size())
	q.addActive(qs, msg)
	q.schedule(qs, qs.sessions[msg.session], now)
}

// active returns the active message seq; a scheduled one is activated first (at replay
// a journal record about a delivery means it had become due).
func (q *Queues) active(qs *queueState, seq int64) *message {
	if m := qs.scheduled[seq]; m != nil {
		heap.Remove(&qs.later, m.heapIdx)
		q.activate(qs, m, m.availableAt)
	}
	return qs.msgs[seq]
}

func (q *Queues) addActive(qs *queueState, msg *message) {
	qs.msgs[msg.seq] = msg
	q.bodyBytes += int64(msg.size())
	s := qs.sessions[msg.session]
	if s == nil {
		s = &session{id: msg.session, heapIdx: -1}
		qs.sessions[msg.session] = s
	}
	// Sequence numbers only grow, so appending keeps send order.
	s.seqs = append(s.seqs, msg.seq)
}

// removeActive takes msg out of its session (under mu).
func (q *Queues) removeActive(qs *queueState, msg *message) {
	delete(qs.msgs, msg.seq)
	q.bodyBytes -= int64(msg.size())
	s := qs.sessions[msg.session]
	if s == nil {
		return
	}
	if i := slices.Index(s.seqs, msg.seq); i >= 0 {
		s.seqs = slices.Delete(s.seqs, i, i+1)
	}
	if len(s.seqs) == 0 && !s.busy {
		q.unschedule(qs, s)
		delete(qs.sessions, s.id)
	}
}

// schedule puts an idle session with messages in the ready list or the delayed heap.
func (q *Queues) schedule(qs *queueState, s *session, now time.Time) {
	if s == nil || s.busy || s.queued || len(s.seqs) == 0 {
		return
	}
	s.queued = true
	head := qs.msgs[s.seqs[0]]
	if head.availableAt.After(now) {
		s.headAt = head.availableAt
		heap.Push(&qs.delayed, s)
		return
	}
	qs.ready = append(qs.ready, s)
}

func (q *Queues) unschedule(qs *queueState, s *session) {
	if !s.queued {
		return
	}
	s.queued = false
	if s.heapIdx >= 0 {
		heap.Remove(&qs.delayed, s.heapIdx)
		return
	}
	if i := slices.Index(qs.ready, s); i >= 0 {
		qs.ready = slices.Delete(qs.ready, i, i+1)
	}
}

// deadLetter moves an active message to the dead-letter queue (under mu; the caller
// journals it).
func (q *Queues) deadLetter(qs *queueState, msg *message, reason, desc string, now time.Time) {
	q.removeActive(qs, msg)
	msg.inFlight = false
	msg.reason, msg.description, msg.deadAt = reason, cut.Bytes(desc, maxDescription, ""), now
	qs.deadSeq++
	msg.deadOrder = qs.deadSeq
	qs.dead[msg.seq] = msg
	q.bodyBytes += int64(msg.size())
}

// size is the length of msg's body, wherever it is.
func (m *message) size() int {
	if m.stored {
		return m.n
	}
	return len(m.body)
}

// maxDeliveriesText is the broker's fixed description of a MaxDeliveryCountExceeded
// dead letter: the handler's error never reaches it (the Functions host discards the
// body of a failed invocation and abandons the message without properties).
func maxDeliveriesText(n int) string {
	return fmt.Sprintf("Message could not be consumed after %d delivery attempts.", n)
}

// Run delivers queueName's messages to handle with the given number of workers until
// ctx is done (then it returns nil, after the handlers in flight returned), the queues
// are closed (ErrClosed) or the journal fails (that error). A handler returning nil completes its delivery; an
// error (or a panic) abandons it. A handler that runs past LockDuration loses its lock:
// its context is cancelled and its delivery counts as failed whatever it returns. The
// session stays locked until the handler has returned, so a session is never handled
// twice at once. Several Runs may drain the same queue.
func (q *Queues) Run(ctx context.Context, queueName string, workers int, handle func(ctx context.Context, d Delivery) error) error {
	if queueName == "" {
		return errors.New("localqueue: run: empty queue name")
	}
	if workers < 1 {
		return fmt.Errorf("localqueue: run %s: workers must be at least 1, got %d", queueName, workers)
	}
	if handle == nil {
		return fmt.Errorf("localqueue: run %s: nil handler", queueName)
	}
	runCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	h := &runHandle{cancel: cancel}
	q.mu.Lock()
	if err := q.usable(); err != nil {
		q.mu.Unlock()
		return err
	}
	q.runs[h] = struct{}{}
	q.runWG.Add(1)
	qs := q.queue(queueName)
	q.mu.Unlock()
	defer q.runWG.Done()

	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			for {
				d, msg, ok := q.acquire(runCtx, qs)
				if !ok {
					return
				}
				q.deliver(runCtx, qs, msg, d, handle)
			}
		})
	}
	wg.Wait()

	q.mu.Lock()
	delete(q.runs, h)
	err := q.usable()
	q.mu.Unlock()
	if ctx.Err() != nil {
		return nil
	}
	return err
}

// acquire waits for the next deliverable message, locks its session and journals the
// new delivery count.
func (q *Queues) acquire(ctx context.Context, qs *queueState) (Delivery, *message, bool) {
	for {
		q.mu.Lock()
		if q.usable() != nil || ctx.Err() != nil {
			q.mu.Unlock()
			return Delivery{}, nil, false
		}
		now := q.now()
		q.activateDue(qs, now)
		for qs.delayed.Len() > 0 && !qs.delayed[0].headAt.After(now) {
			s := heap.Pop(&qs.delayed).(*session)
			qs.ready = append(qs.ready, s)
		}
		if len(qs.ready) > 0 {
			s := qs.ready[0]
			qs.ready = qs.ready[1:]
			s.queued = false
			msg := qs.msgs[s.seqs[0]]
			if msg.count >= q.opt.MaxDeliveryCount {
				// Failed deliveries of an earlier run (lock lost in a crash): Service
				// Bus dead-letters at the next receive.
				durable, err := q.commit(record{Op: opDL, Q: qs.name, Seq: msg.seq,
					Reason: ReasonMaxDeliveryCountExceeded, Description: maxDeliveriesText(msg.count), At: now})
				if err == nil {
					q.deadLetter(qs, msg, ReasonMaxDeliveryCountExceeded, maxDeliveriesText(msg.count), now)
					q.schedule(qs, s, now)
				}
				q.mu.Unlock()
				if err == nil {
					err = durable()
				}
				if err != nil {
					return Delivery{}, nil, false
				}
				continue
			}
			msg.count++
			msg.inFlight = true
			msg.lockToken = newLockToken()
			s.busy = true
			qs.inflight++
			durable, err := q.commit(record{Op: opLock, Q: qs.name, Seq: msg.seq, DeliveryCount: msg.count})
			d := Delivery{
				MessageID: msg.id, SessionID: msg.session, Subject: msg.subject, ContentType: msg.contentType,
				DeliveryCount: msg.count, SequenceNumber: msg.seq,
				EnqueuedAt: msg.enqueuedAt, LockToken: msg.lockToken, ApplicationProperties: maps.Clone(msg.props),
			}
			var body func() ([]byte, error)
			if err == nil {
				body = q.bodyOf(msg)
			}
			q.maybeCompact()
			q.mu.Unlock()
			if err == nil {
				err = durable()
				// Read even when the sync failed: it releases the file reference.
				var rerr error
				d.Body, rerr = body()
				if err == nil && rerr != nil {
					err = fmt.Errorf("localqueue: deliver from %s: %w", qs.name, rerr)
					q.mu.Lock()
					q.failed = err // the journal can't give back what it acknowledged
					q.mu.Unlock()
				}
			}
			if err != nil {
				q.mu.Lock()
				q.release(qs, msg, q.now())
				q.mu.Unlock()
				return Delivery{}, nil, false
			}
			return d, msg, true
		}
		wake := qs.wake
		var timer *time.Timer
		var tick <-chan time.Time
		if qs.delayed.Len() > 0 || qs.later.Len() > 0 {
			next := time.Time{}
			if qs.delayed.Len() > 0 {
				next = qs.delayed[0].headAt
			}
			if qs.later.Len() > 0 && (next.IsZero() || qs.later[0].availableAt.Before(next)) {
				next = qs.later[0].availableAt
			}
			// Cap the wait so an injected clock that jumps is noticed.
			timer = time.NewTimer(min(max(next.Sub(now), time.Millisecond), time.Second))
			tick = timer.C
		}
		q.mu.Unlock()
		select {
		case <-ctx.Done():
		case <-wake:
		case <-tick:
		}
		if timer != nil {
			timer.Stop()
		}
	}
}

// release ends a delivery without an outcome (shutdown, journal failure): the message
// is available again with its delivery count kept (under mu).
func (q *Queues) release(qs *queueState, msg *message, now time.Time) {
	msg.inFlight = false
	msg.lockToken = ""
	qs.inflight--
	if s := qs.sessions[msg.session]; s != nil {
		s.busy = false
		q.schedule(qs, s, now)
	}
	qs.wakeUp()
}

func (q *Queues) deliver(runCtx context.Context, qs *queueState, msg *message, d Delivery, handle func(context.Context, Delivery) error) {
	hctx, cancel := context.WithTimeout(runCtx, q.opt.LockDuration)
	err := call(hctx, handle, d)
	lockLost := errors.Is(hctx.Err(), context.DeadlineExceeded) && runCtx.Err() == nil
	cancel()

	q.mu.Lock()
	now := q.now()
	if q.failed != nil || (err != nil && runCtx.Err() != nil) {
		// Shutting down (or the journal is broken): no outcome. The journal still says
		// "locked", so after a restart the message comes again with its count kept.
		q.release(qs, msg, now)
		q.mu.Unlock()
		return
	}
	if lockLost {
		err = fmt.Errorf("message lock lost: the handler ran longer than the lock duration (%s); last error: %v", q.opt.LockDuration, err)
	}
	var recs []record
	if err == nil {
		recs = append(recs, record{Op: opDone, Q: qs.name, Seq: msg.seq})
	} else {
		if msg.count >= q.opt.MaxDeliveryCount {
			recs = append(recs, record{Op: opDL, Q: qs.name, Seq: msg.seq,
				Reason: ReasonMaxDeliveryCountExceeded, Description: maxDeliveriesText(msg.count), At: now})
		} else {
			recs = append(recs, record{Op: opAbandon, Q: qs.name, Seq: msg.seq, Err: cut.Bytes(err.Error(), maxDescription, "")})
		}
	}
	durable, cerr := q.commit(recs...)
	if cerr != nil {
		q.release(qs, msg, now)
		q.mu.Unlock()
		return
	}
	s := qs.sessions[msg.session]
	s.busy = false
	qs.inflight--
	msg.inFlight = false
	msg.lockToken = ""
	switch recs[0].Op {
	case opDone:
		q.removeActive(qs, msg)
	case opDL:
		q.deadLetter(qs, msg, recs[0].Reason, recs[0].Description, now)
	case opAbandon:
		msg.lastError = recs[0].Err
		if q.opt.RedeliveryDelay > 0 {
			msg.availableAt = now.Add(q.opt.RedeliveryDelay)
		}
	}
	q.schedule(qs, s, now)
	if len(s.seqs) == 0 {
		delete(qs.sessions, s.id)
	}
	qs.wakeUp()
	q.maybeCompact()
	q.mu.Unlock()
	_ = durable() // a failure is sticky in q.failed and stops the runs
}

// call runs the handler, turning a panic into an error.
func call(ctx context.Context, handle func(context.Context, Delivery) error, d Delivery) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("handler panic: %v", r)
		}
	}()
	return handle(ctx, d)
}

func newLockToken() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	h := hex.EncodeToString(b[:])
	return h[0:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:32]
}

// Stats implements queue.Inspector. Active counts messages waiting or in flight, as
// Service Bus's ActiveMessageCount does.
func (q *Queues) Stats(ctx context.Context, queueName string) (queue.Stats, error) {
	if err := ctx.Err(); err != nil {
		return queue.Stats{}, err
	}
	q.mu.Lock()
	defer q.mu.Unlock()
	qs := q.queues[queueName]
	if qs == nil {
		return queue.Stats{}, nil
	}
	return queue.Stats{Active: int64(len(qs.msgs)), DeadLettered: int64(len(qs.dead)), Scheduled: int64(len(qs.scheduled))}, nil
}

// PeekDeadLetters implements queue.DeadLetters: up to max dead-lettered messages (all
// when max <= 0), in the order they were dead-lettered.
func (q *Queues) PeekDeadLetters(ctx context.Context, queueName string, max int) ([]queue.DeadLetter, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	q.mu.Lock()
	if q.j != nil && q.closing {
		q.mu.Unlock()
		return nil, ErrClosed // the journal file (with the bodies) is being closed
	}
	qs := q.queues[queueName]
	if qs == nil {
		q.mu.Unlock()
		return nil, nil
	}
	dead := q.deadInOrder(qs)
	if max > 0 && len(dead) > max {
		dead = dead[:max]
	}
	out := make([]queue.DeadLetter, len(dead))
	bodies := make([]func() ([]byte, error), len(dead))
	for i, m := range dead {
		out[i] = queue.DeadLetter{
			Message: queue.Message{MessageID: m.id, SessionID: m.session, Subject: m.subject,
				ContentType: m.contentType, ApplicationProperties: maps.Clone(m.props)},
			SequenceNumber: m.seq, DeliveryCount: m.count, EnqueuedAt: m.enqueuedAt,
			Reason: m.reason, ErrorDescription: m.description,
		}
		bodies[i] = q.bodyOf(m)
	}
	q.mu.Unlock()
	// Outside mu: reading the bodies must not hold up the queues.
	var err error
	for i, body := range bodies {
		b, rerr := body() // every one, to release its file reference
		if rerr != nil && err == nil {
			err = fmt.Errorf("localqueue: peek dead letters of %s: %w", queueName, rerr)
		}
		out[i].Message.Body = b
	}
	if err != nil {
		return nil, err
	}
	return out, nil
}

// bodyOf returns a function giving msg's body (a copy), to call exactly once, outside
// mu (under mu now). A stored body is read from the journal file, a reference to
// which is taken now: a compaction in between can neither close the file nor move the
// body away from the offset read here.
func (q *Queues) bodyOf(msg *message) func() ([]byte, error) {
	if !msg.stored {
		b := slices.Clone(msg.body)
		return func() ([]byte, error) { return b, nil }
	}
	jf := q.j.ref()
	seq, off, n, crc := msg.seq, msg.off, msg.n, msg.crc
	return func() ([]byte, error) {
		defer jf.release()
		return readBody(jf, seq, off, n, crc)
	}
}

func (q *Queues) deadInOrder(qs *queueState) []*message {
	dead := slices.Collect(maps.Values(qs.dead))
	slices.SortFunc(dead, func(a, b *message) int { return cmpInt64(a.deadOrder, b.deadOrder) })
	return dead
}

// Replay implements queue.DeadLetters. It moves the dead-lettered messages whose
// MessageID is in ids (all when ids is empty) back to the queue, in the order they were
// dead-lettered, with MessageID, SessionID, Subject, ContentType, body and properties
// unchanged plus ReplayOfProperty, a new sequence number and a delivery count of 0.
//
// Duplicate detection: a replay is a deliberate resubmission, so it does not pass
// through Send's duplicate check (which would drop it, the id having been accepted
// before). The queue knows a message is a replay because it is moved from the
// dead-letter queue by this method, inside the queue (one journal record), rather than
// sent from outside. The replay refreshes the id's duplicate-detection entry, so the
// store re-sending the same event right after a replay is still dropped.
func (q *Queues) Replay(ctx context.Context, queueName string, ids []string) ([]string, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	want := map[string]bool{}
	for _, id := range ids {
		want[id] = true
	}
	q.mu.Lock()
	if err := q.usable(); err != nil {
		q.mu.Unlock()
		return nil, err
	}
	qs := q.queues[queueName]
	if qs == nil {
		q.mu.Unlock()
		return nil, nil
	}
	now := q.now()
	var reps []replayJSON
	var out []string
	next := qs.nextSeq
	for _, m := range q.deadInOrder(qs) {
		if len(want) > 0 && !want[m.id] {
			continue
		}
		reps = append(reps, replayJSON{Seq: m.seq, NewSeq: next})
		out = append(out, m.id)
		next++
	}
	if len(reps) == 0 {
		q.mu.Unlock()
		return nil, nil
	}
	durable, err := q.commit(record{Op: opReplay, Q: queueName, Replays: reps, At: now})
	if err != nil {
		q.mu.Unlock()
		return nil, err
	}
	q.applyReplay(qs, reps, now)
	for _, r := range reps {
		q.schedule(qs, qs.sessions[qs.msgs[r.NewSeq].session], now)
	}
	qs.wakeUp()
	q.maybeCompact()
	q.mu.Unlock()
	if err := durable(); err != nil {
		return nil, err
	}
	return out, nil
}

func (q *Queues) applyReplay(qs *queueState, reps []replayJSON, at time.Time) error {
	for _, r := range reps {
		m := qs.dead[r.Seq]
		if m == nil {
			return fmt.Errorf("replay of unknown dead letter %d", r.Seq)
		}
		delete(qs.dead, r.Seq)
		q.bodyBytes -= int64(m.size())
		props := maps.Clone(m.props)
		if props == nil {
			props = map[string]any{}
		}
		props[ReplayOfProperty] = m.seq
		nm := &message{seq: r.NewSeq, id: m.id, session: m.session, subject: m.subject,
			contentType: m.contentType, props: props, enqueuedAt: at,
			body: m.body, off: m.off, n: m.n, crc: m.crc, stored: m.stored}
		if r.NewSeq >= qs.nextSeq {
			qs.nextSeq = r.NewSeq + 1
		}
		if q.opt.DuplicateWindow >= 0 {
			qs.dedupe[m.id] = at
		}
		q.addActive(qs, nm)
	}
	return nil
}

// applyRecord replays one journal record at Open.
func (q *Queues) applyRecord(r record) error {
	qs := q.queue(r.Q)
	switch r.Op {
	case opSend, opMsg:
		for _, m := range r.Msgs {
			if err := q.applySend(qs, m); err != nil {
				return err
			}
		}
	case opLock:
		if m := q.active(qs, r.Seq); m != nil {
			m.count = r.DeliveryCount
		}
	case opAbandon:
		if m := q.active(qs, r.Seq); m != nil {
			m.lastError = r.Err
		}
	case opDone:
		if m := q.active(qs, r.Seq); m != nil {
			q.removeActive(qs, m)
		}
	case opDL:
		if m := q.active(qs, r.Seq); m != nil {
			q.deadLetter(qs, m, r.Reason, r.Description, r.At)
		}
	case opReplay:
		return q.applyReplay(qs, r.Replays, r.At)
	case opDedupe:
		if at, ok := qs.dedupe[r.ID]; !ok || r.At.After(at) {
			qs.dedupe[r.ID] = r.At
		}
	case opNextSeq:
		qs.nextSeq = max(qs.nextSeq, r.Next)
	default:
		return fmt.Errorf("unknown journal operation %q", r.Op)
	}
	return nil
}

// compact rewrites the journal as a snapshot of the state (under mu): per queue its
// next sequence number, the duplicate-detection entries still inside the window, and
// every active and dead-lettered message, one record each (bodies streamed from the old
// file). Messages take their new body offsets only once the new file is in place.
func (q *Queues) compact(now time.Time) error {
	type moved struct {
		m   *message
		off int64
		n   int
		crc uint32
	}
	var ms []moved
	err := q.j.compact(func(emit func(*record) error) error {
		for _, name := range slices.Sorted(maps.Keys(q.queues)) {
			qs := q.queues[name]
			if err := emit(&record{Op: opNextSeq, Q: name, Next: qs.nextSeq}); err != nil {
				return err
			}
			for id, at := range qs.dedupe {
				if q.opt.DuplicateWindow >= 0 && now.Sub(at) < q.opt.DuplicateWindow {
					if err := emit(&record{Op: opDedupe, Q: name, ID: id, At: at}); err != nil {
						return err
					}
				}
			}
			// Active messages by sequence number (session order), dead ones in
			// dead-letter order (applySend numbers them as they come).
			active := slices.SortedFunc(maps.Values(qs.msgs), func(a, b *message) int { return cmpInt64(a.seq, b.seq) })
			live := len(active)
			active = append(active, slices.SortedFunc(maps.Values(qs.scheduled), func(a, b *message) int { return cmpInt64(a.seq, b.seq) })...)
			nlive := len(active)
			for i, m := range append(active, q.deadInOrder(qs)...) {
				j := toJSON(m, i >= nlive)
				if i >= live && i < nlive {
					j.AvailableAt = m.availableAt
				}
				r := record{Op: opMsg, Q: name, Msgs: []msgJSON{j}}
				if err := emit(&r); err != nil {
					return err
				}
				if j := r.Msgs[0]; j.stored {
					ms = append(ms, moved{m, j.off, j.Len, j.CRC})
				}
			}
		}
		return nil
	})
	if err != nil {
		return err
	}
	for _, mv := range ms {
		mv.m.off, mv.m.n, mv.m.crc, mv.m.stored, mv.m.body = mv.off, mv.n, mv.crc, true, nil
	}
	return nil
}

func toJSON(m *message, dead bool) msgJSON {
	props, _ := encodeProps(m.props) // were encodable when sent
	j := msgJSON{
		Seq: m.seq, MessageID: m.id, SessionID: m.session, Subject: m.subject, ContentType: m.contentType,
		Props: props, EnqueuedAt: m.enqueuedAt, DeliveryCount: m.count, LastError: m.lastError,
		Dead: dead, Reason: m.reason, Description: m.description, DeadAt: m.deadAt,
	}
	if m.stored {
		j.Len, j.CRC, j.off, j.stored = m.n, m.crc, m.off, true
	} else if len(m.body) > 0 {
		j.data = m.body
	}
	return j
}

// Close stops every Run (handlers get their context cancelled; a delivery whose
// handler then fails gets no outcome and comes again after a restart, its count kept),
// waits for them, and closes the journal.
func (q *Queues) Close() error {
	q.mu.Lock()
	if q.closing {
		q.mu.Unlock()
		return nil
	}
	q.closing = true // no new Send, Replay or Run; deliveries in flight still settle
	for h := range q.runs {
		h.cancel()
	}
	q.mu.Unlock()
	q.runWG.Wait()
	if q.j != nil {
		if err := q.j.close(); err != nil {
			return fmt.Errorf("localqueue: close journal: %w", err)
		}
	}
	return nil
}

func cmpInt64(a, b int64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// sessionHeap orders delayed sessions by their head's availability.
type sessionHeap []*session

func (h sessionHeap) Len() int { return len(h) }
func (h sessionHeap) Less(i, j int) bool {
	return h[i].headAt.Before(h[j].headAt)
}
func (h sessionHeap) Swap(i, j int) {
	h[i], h[j] = h[j], h[i]
	h[i].heapIdx = i
	h[j].heapIdx = j
}
func (h *sessionHeap) Push(x any) {
	s := x.(*session)
	s.heapIdx = len(*h)
	*h = append(*h, s)
}
func (h *sessionHeap) Pop() any {
	old := *h
	s := old[len(old)-1]
	old[len(old)-1] = nil
	*h = old[:len(old)-1]
	s.heapIdx = -1
	return s
}

var (
	_ queue.Sender      = (*Queues)(nil)
	_ queue.Scheduler   = (*Queues)(nil)
	_ queue.DeadLetters = (*Queues)(nil)
	_ queue.Inspector   = (*Queues)(nil)
)

// msgHeap orders scheduled messages by their time, then sequence number.
type msgHeap []*message

func (h msgHeap) Len() int { return len(h) }
func (h msgHeap) Less(i, j int) bool {
	if !h[i].availableAt.Equal(h[j].availableAt) {
		return h[i].availableAt.Before(h[j].availableAt)
	}
	return h[i].seq < h[j].seq
}
func (h msgHeap) Swap(i, j int) {
	h[i], h[j] = h[j], h[i]
	h[i].heapIdx = i
	h[j].heapIdx = j
}
func (h *msgHeap) Push(x any) {
	m := x.(*message)
	m.heapIdx = len(*h)
	*h = append(*h, m)
}
func (h *msgHeap) Pop() any {
	old := *h
	m := old[len(old)-1]
	old[len(old)-1] = nil
	*h = old[:len(old)-1]
	m.heapIdx = -1
	return m
}
