package servicebus

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"strconv"
	"strings"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/messaging/azservicebus"

	"github.com/nopsync/nopsync/shared/queue"
)

// peekPage is how many dead letters one PeekMessages call asks for.
const peekPage = 100

// maxHeld bounds the dead letters Replay keeps locked while it looks for the ones it
// wants (non-matching ones are abandoned at the end, so they aren't received again in
// the same pass).
const maxHeld = 2000

// PeekDeadLetters implements queue.DeadLetters: up to max messages (all when max <= 0)
// of queueName's dead-letter subqueue, in sequence order, without locking them.
func (c *Client) PeekDeadLetters(ctx context.Context, queueName string, max int) ([]queue.DeadLetter, error) {
	msgs, err := c.peekAll(ctx, queueName, max)
	if err != nil {
		return nil, err
	}
	out := make([]queue.DeadLetter, len(msgs))
	for i, m := range msgs {
		out[i] = fromReceived(m)
	}
	return out, nil
}

func (c *Client) peekAll(ctx context.Context, queueName string, max int) ([]*azservicebus.ReceivedMessage, error) {
	r, err := c.backend.newDeadLetterReceiver(queueName)
	if err != nil {
		return nil, fmt.Errorf("servicebus: dead-letter receiver for %s: %w", queueName, err)
	}
	defer r.Close(context.WithoutCancel(ctx))
	var out []*azservicebus.ReceivedMessage
	from := int64(0)
	for max <= 0 || len(out) < max {
		n := peekPage
		if max > 0 {
			n = min(n, max-len(out))
		}
		page, err := r.PeekMessages(ctx, n, &azservicebus.PeekMessagesOptions{FromSequenceNumber: &from})
		if err != nil {
			return nil, fmt.Errorf("servicebus: peek dead letters of %s: %w", queueName, err)
		}
		advanced := false
		for _, m := range page {
			if m.SequenceNumber == nil || *m.SequenceNumber < from {
				continue
			}
			out = append(out, m)
			from = *m.SequenceNumber + 1
			advanced = true
		}
		if !advanced {
			break
		}
	}
	if max > 0 && len(out) > max {
		out = out[:max]
	}
	return out, nil
}

// fromReceived converts a dead-lettered message. The reason and description live in
// application properties on the wire; they move to their own fields.
func fromReceived(m *azservicebus.ReceivedMessage) queue.DeadLetter {
	d := queue.DeadLetter{
		Message: queue.Message{
			MessageID:             m.MessageID,
			SessionID:             deref(m.SessionID),
			Subject:               deref(m.Subject),
			ContentType:           deref(m.ContentType),
			Body:                  m.Body,
			ApplicationProperties: userProperties(m.ApplicationProperties),
		},
		DeliveryCount:    int(m.DeliveryCount),
		Reason:           deref(m.DeadLetterReason),
		ErrorDescription: deref(m.DeadLetterErrorDescription),
	}
	if m.SequenceNumber != nil {
		d.SequenceNumber = *m.SequenceNumber
	}
	if m.EnqueuedTime != nil {
		d.EnqueuedAt = m.EnqueuedTime.UTC()
	}
	return d
}

// userProperties is props without the broker's dead-letter properties (nil when
// nothing is left).
func userProperties(props map[string]any) map[string]any {
	out := maps.Clone(props)
	delete(out, propDeadLetterReason)
	delete(out, propDeadLetterDescription)
	if len(out) == 0 {
		return nil
	}
	return out
}

func deref(s *string) string {
	if s == nil {
		return ""
	}
	return *s
}

// ReplayReport is what one replay did.
type ReplayReport struct {
	// Replayed lists the MessageIDs resubmitted, in the order they were sent.
	Replayed []string
	// Waiting lists matching dead letters left in the dead-letter queue because the
	// broker would still drop a resubmission as a duplicate (see Replay).
	Waiting []WaitingReplay
	// Missed lists matching dead letters that were peeked but could not be received
	// (another replay took them, or they were locked) within ReceiveWait.
	Missed []string
	// More is true when more matching dead letters are replayable than MaxReplay.
	More bool
}

// WaitingReplay is a dead letter that can't be replayed yet.
type WaitingReplay struct {
	MessageID      string
	SequenceNumber int64
	ReplayableAt   time.Time
}

// Replay implements queue.DeadLetters; see ReplayReport.
func (c *Client) Replay(ctx context.Context, queueName string, ids []string) ([]string, error) {
	rep, err := c.ReplayReport(ctx, queueName, ids)
	return rep.Replayed, err
}

// ReplayReport resubmits queueName's dead letters whose MessageID is in ids (all when
// ids is empty): each is received from the dead-letter queue (peek-lock), a copy with
// the same MessageID, SessionID, Subject, ContentType, body and application
// properties (without the broker's dead-letter properties, plus ReplayOfProperty) is
// sent to the queue, then the dead letter is completed. A crash between the send and
// the complete leaves the dead letter in place: replaying it again gives at most a
// duplicate, which duplicate detection or the engine's idempotency absorbs.
//
// Duplicate detection: the broker drops, silently, a message whose MessageID it
// accepted within the queue's duplicate-detection window, and a dead letter's id was
// accepted when it was first sent (its EnqueuedTime). A copy sent sooner would be
// dropped and the dead letter completed: the event lost. So a dead letter is replayed
// only once EnqueuedTime + window + ReplayMargin has passed; earlier ones stay in the
// dead-letter queue and are listed in Waiting with the time they become replayable
// (the next replay, or auto-sync's, picks them up). The window is Options.DuplicateWindow
// or else the queue's DuplicateDetectionHistoryTimeWindow.
//
// On an error, the report still lists what was replayed before it.
func (c *Client) ReplayReport(ctx context.Context, queueName string, ids []string) (ReplayReport, error) {
	var rep ReplayReport
	want := map[string]bool{}
	for _, id := range ids {
		want[id] = true
	}
	matches := func(id string) bool { return len(want) == 0 || want[id] }

	window, err := c.window(ctx, queueName)
	if err != nil {
		return rep, err
	}
	now := c.opt.Now()
	replayableAt := func(m *azservicebus.ReceivedMessage) time.Time {
		if m.EnqueuedTime == nil || window == 0 {
			return time.Time{}
		}
		return m.EnqueuedTime.Add(window + c.opt.ReplayMargin).UTC()
	}

	peeked, err := c.peekAll(ctx, queueName, 0)
	if err != nil {
		return rep, err
	}
	targets := map[int64]string{}
	for _, m := range peeked {
		if !matches(m.MessageID) || m.SequenceNumber == nil {
			continue
		}
		if at := replayableAt(m); now.Before(at) {
			rep.Waiting = append(rep.Waiting, WaitingReplay{MessageID: m.MessageID, SequenceNumber: *m.SequenceNumber, ReplayableAt: at})
			continue
		}
		if len(targets) == c.opt.MaxReplay {
			rep.More = true
			continue
		}
		targets[*m.SequenceNumber] = m.MessageID
	}
	if len(targets) == 0 {
		return rep, nil
	}

	s, err := c.sender(queueName)
	if err != nil {
		return rep, err
	}
	r, err := c.backend.newDeadLetterReceiver(queueName)
	if err != nil {
		return rep, fmt.Errorf("servicebus: dead-letter receiver for %s: %w", queueName, err)
	}
	// Settle and close even when ctx is cancelled: leaving locks makes the dead
	// letters invisible until they expire.
	cleanup := context.WithoutCancel(ctx)
	defer r.Close(cleanup)
	var held []*azservicebus.ReceivedMessage
	defer func() {
		for _, m := range held {
			_ = r.AbandonMessage(cleanup, m, nil) // best effort: the lock expires anyway
		}
	}()

	for len(targets) > 0 && len(held) < maxHeld {
		rctx, cancel := context.WithTimeout(ctx, c.opt.ReceiveWait)
		got, err := r.ReceiveMessages(rctx, min(len(targets), 50), nil)
		cancel()
		if err != nil {
			if ctx.Err() == nil && errors.Is(err, context.DeadlineExceeded) {
				break // nothing more to receive: the rest went elsewhere
			}
			return rep, fmt.Errorf("servicebus: receive dead letters of %s: %w", queueName, err)
		}
		for i, m := range got {
			seq := int64(-1)
			if m.SequenceNumber != nil {
				seq = *m.SequenceNumber
			}
			id, ok := targets[seq]
			if !ok || id != m.MessageID || now.Before(replayableAt(m)) {
				held = append(held, m)
				continue
			}
			if err := s.SendMessage(ctx, replayCopy(m)); err != nil {
				held = append(held, got[i:]...) // this one and the rest of the batch go back
				return rep, fmt.Errorf("servicebus: replay %q to %s: %w", m.MessageID, queueName, err)
			}
			delete(targets, seq)
			rep.Replayed = append(rep.Replayed, m.MessageID)
			if err := r.CompleteMessage(cleanup, m, nil); err != nil {
				held = append(held, got[i+1:]...)
				return rep, fmt.Errorf("servicebus: replayed %q to %s but could not remove it from the dead-letter queue (a later replay may send it again): %w", m.MessageID, queueName, err)
			}
		}
	}
	for _, id := range targets {
		rep.Missed = append(rep.Missed, id)
	}
	return rep, nil
}

// replayCopy is the message a replay sends for dead letter m.
func replayCopy(m *azservicebus.ReceivedMessage) *azservicebus.Message {
	id := m.MessageID
	props := userProperties(m.ApplicationProperties)
	if props == nil {
		props = map[string]any{}
	}
	if m.SequenceNumber != nil {
		props[ReplayOfProperty] = *m.SequenceNumber
	}
	return &azservicebus.Message{
		MessageID:             &id,
		SessionID:             m.SessionID,
		Subject:               m.Subject,
		ContentType:           m.ContentType,
		CorrelationID:         m.CorrelationID,
		Body:                  m.Body,
		ApplicationProperties: props,
	}
}

// window is queueName's duplicate-detection window (0: the queue has none).
func (c *Client) window(ctx context.Context, queueName string) (time.Duration, error) {
	if c.opt.DuplicateWindow > 0 {
		return c.opt.DuplicateWindow, nil
	}
	c.mu.Lock()
	w, ok := c.windows[queueName]
	c.mu.Unlock()
	if ok {
		return w, nil
	}
	q, err := c.admin.GetQueue(ctx, queueName, nil)
	if err != nil {
		return 0, fmt.Errorf("servicebus: properties of %s (for its duplicate-detection window): %w", queueName, err)
	}
	if q == nil {
		return 0, fmt.Errorf("servicebus: queue %s does not exist", queueName)
	}
	if q.RequiresDuplicateDetection != nil && !*q.RequiresDuplicateDetection {
		w = 0
	} else if q.DuplicateDetectionHistoryTimeWindow == nil {
		w = 10 * time.Minute // the broker's default
	} else if w, err = parseISODuration(*q.DuplicateDetectionHistoryTimeWindow); err != nil {
		return 0, fmt.Errorf("servicebus: duplicate-detection window of %s: %w", queueName, err)
	}
	c.mu.Lock()
	c.windows[queueName] = w
	c.mu.Unlock()
	return w, nil
}

// parseISODuration parses the ISO 8601 durations Service Bus uses ("PT10M", "P7D",
// "P1DT2H30M5.5S"). Years and months count as 365 and 30 days, as the SDK does.
func parseISODuration(s string) (time.Duration, error) {
	rest, ok := strings.CutPrefix(s, "P")
	if !ok || rest == "" {
		return 0, fmt.Errorf("invalid ISO 8601 duration %q", s)
	}
	const day = 24 * time.Hour
	var total float64
	units := 0
	inTime := false
	num := ""
	for _, r := range rest {
		switch {
		case r == 'T' && !inTime && num == "":
			inTime = true
		case r >= '0' && r <= '9' || r == '.':
			num += string(r)
		default:
			if num == "" {
				return 0, fmt.Errorf("invalid ISO 8601 duration %q", s)
			}
			v, err := strconv.ParseFloat(num, 64)
			if err != nil {
				return 0, fmt.Errorf("invalid ISO 8601 duration %q: %w", s, err)
			}
			num = ""
			var unit time.Duration
			switch {
			case !inTime && r == 'Y':
				unit = 365 * day
			case !inTime && r == 'M':
				unit = 30 * day
			case !inTime && r == 'W':
				unit = 7 * day
			case !inTime && r == 'D':
				unit = day
			case inTime && r == 'H':
				unit = time.Hour
			case inTime && r == 'M':
				unit = time.Minute
			case inTime && r == 'S':
				unit = time.Second
			default:
				return 0, fmt.Errorf("invalid ISO 8601 duration %q: unit %q", s, r)
			}
			total += v * float64(unit)
			units++
		}
	}
	if num != "" || units == 0 {
		return 0, fmt.Errorf("invalid ISO 8601 duration %q", s)
	}
	if total >= float64(1<<63-1) {
		return time.Duration(1<<63 - 1), nil
	}
	return time.Duration(total), nil
}
