// Package queue defines what the app puts on its entity queues and the interfaces of
// the queue systems behind them: Service Bus in Azure (package servicebus) and the
// embedded queue of local mode (package localqueue).
package queue

import (
	"context"
	"errors"
	"time"
)

// Queue names: two Service Bus queues per entity, each named like the function that
// drains it. Single events (live changes) travel on the entity's queue, import arrays,
// store runs and re-syncs on its bulk queue, so a live event never waits behind an
// import's chunks for a free handler: Service Bus has no message priority, and Microsoft's
// priority queue pattern is a queue per priority with consumers of its own
// (https://learn.microsoft.com/azure/architecture/patterns/priority-queue).
const (
	Customers = "customers"
	Products  = "products"
	Orders    = "orders"

	CustomersBulk = "customers-bulk"
	ProductsBulk  = "products-bulk"
	OrdersBulk    = "orders-bulk"
)

// Message is one message as the app sends it.
type Message struct {
	MessageID   string // the event id (or a chunk id derived from its events' ids): duplicate detection key
	SessionID   string // "<entity>-<id>": per-entity order
	Subject     string // event type, or "chunk"
	ContentType string // "application/json"
	Body        []byte // JSON envelope (nop.Envelope)
	// ApplicationProperties travel with the message (for example "replayOf").
	ApplicationProperties map[string]any
}

// MaxIDLength is Service Bus's limit on a MessageId and a SessionId: 128 characters,
// counted as .NET counts a string's length, in UTF-16 code units
// (https://learn.microsoft.com/dotnet/api/azure.messaging.servicebus.servicebusmessage.messageid).
const MaxIDLength = 128

// IDLength is the length of s as Service Bus counts it: UTF-16 code units (a character
// outside the Basic Multilingual Plane counts twice), not bytes.
func IDLength(s string) int {
	n := 0
	for _, r := range s {
		n++
		if r >= 0x10000 {
			n++
		}
	}
	return n
}

// Check reports what makes m unfit for the app's queues: both ids are required (duplicate
// detection keys on the MessageId; the queues require sessions) and within MaxIDLength.
func (m Message) Check() error {
	switch {
	case m.MessageID == "":
		return errors.New("empty MessageID (duplicate detection needs it)")
	case IDLength(m.MessageID) > MaxIDLength:
		return errors.New("MessageID longer than 128 characters")
	case m.SessionID == "":
		return errors.New("empty SessionID (the queues require sessions)")
	case IDLength(m.SessionID) > MaxIDLength:
		return errors.New("SessionID longer than 128 characters")
	}
	return nil
}

// redeliveryKey marks a context whose message was delivered before.
type redeliveryKey struct{}

// WithRedelivery marks ctx as the handling of a message that was delivered before (a
// broker redelivery, a scheduled copy of a failed message, a dead letter replayed): what
// its first delivery counted (stale events) is not counted again.
func WithRedelivery(ctx context.Context) context.Context {
	return context.WithValue(ctx, redeliveryKey{}, true)
}

// IsRedelivery reports whether ctx handles a message delivered before (WithRedelivery).
func IsRedelivery(ctx context.Context) bool {
	v, _ := ctx.Value(redeliveryKey{}).(bool)
	return v
}

// Sender sends messages to a queue. Send is all or nothing as far as the system allows:
// an error means the caller must treat every message as not sent (re-sending is safe:
// duplicate detection drops repeats).
type Sender interface {
	Send(ctx context.Context, queueName string, msgs []Message) error
}

// Scheduler sends messages that become available at a later time (Service Bus
// scheduled messages). A scheduled message does not hold up its session before then.
// Duplicate detection applies when it is scheduled, so a copy of a message still inside
// the window needs an id of its own.
type Scheduler interface {
	Schedule(ctx context.Context, queueName string, msgs []Message, at time.Time) error
}

// DeadLetter is a dead-lettered message with the reason the broker recorded. The broker
// records only its own reason (MaxDeliveryCountExceeded with a fixed description for a
// message that failed every delivery): why the app failed it is kept in the state store.
type DeadLetter struct {
	Message
	SequenceNumber   int64
	DeliveryCount    int
	EnqueuedAt       time.Time
	Reason           string // DeadLetterReason, e.g. "MaxDeliveryCountExceeded"
	ErrorDescription string // DeadLetterErrorDescription
}

// DeadLetters reads and replays a queue's dead-letter subqueue.
type DeadLetters interface {
	// PeekDeadLetters lists up to max dead-lettered messages without removing them.
	PeekDeadLetters(ctx context.Context, queueName string, max int) ([]DeadLetter, error)
	// Replay resubmits dead-lettered messages (all when ids is empty) with their
	// MessageID, SessionID and body unchanged, and removes them from the dead-letter queue.
	// It returns the ids it resubmitted.
	Replay(ctx context.Context, queueName string, ids []string) ([]string, error)
}

// Stats is a queue's message counts.
type Stats struct {
	Active       int64
	DeadLettered int64
	Scheduled    int64 // waiting for their scheduled time (not counted in Active)
}

// Inspector reports queue counts for the status page.
type Inspector interface {
	Stats(ctx context.Context, queueName string) (Stats, error)
}
