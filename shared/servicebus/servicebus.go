// Package servicebus is the production queue: Azure Service Bus through the azservicebus
// SDK. A Client implements queue.Sender (the events function sends with the SDK because
// output bindings can't set MessageId or SessionId), queue.Scheduler (scheduled copies
// of messages failing during an outage), queue.DeadLetters (peek and replay
// a queue's dead-letter subqueue) and queue.Inspector (message counts through the
// administration API).
//
// The SDK sits behind small interfaces (sender, messageBatch, dlqReceiver,
// adminClient) so tests check the exact azservicebus values built without a broker.
package servicebus

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"strings"
	"sync"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/messaging/azservicebus"
	"github.com/Azure/azure-sdk-for-go/sdk/messaging/azservicebus/admin"

	"github.com/nopsync/nopsync/shared/queue"
)

// ReplayOfProperty is the application property a replayed message carries: the
// sequence number (int64) of the dead-lettered message it resubmits.
const ReplayOfProperty = "replayOf"

// Application properties the broker adds when it dead-letters a message; a replayed
// copy leaves them behind (they describe the old failure, not the new message).
const (
	propDeadLetterReason      = "DeadLetterReason"
	propDeadLetterDescription = "DeadLetterErrorDescription"
)

// Options configures a Client. Zero fields take the defaults named.
type Options struct {
	// DuplicateWindow is the queues' duplicate-detection history window. Zero: read
	// from each queue's properties (administration API) on first use.
	DuplicateWindow time.Duration
	// ReplayMargin is added to the window before a dead letter counts as replayable,
	// for clock skew between the broker and this process. Default 1 minute.
	ReplayMargin time.Duration
	// ReceiveWait is how long Replay waits for a dead letter it peeked to be
	// receivable before giving up on it (another replay or a purge took it).
	// Default 5 seconds.
	ReceiveWait time.Duration
	// MaxReplay bounds the messages one Replay call resubmits. Default 500.
	MaxReplay int
	// Now is the clock the window is measured with. Default time.Now.
	Now func() time.Time
	// ClientOptions and AdminOptions go to the SDK clients (retries, transport).
	ClientOptions *azservicebus.ClientOptions
	AdminOptions  *admin.ClientOptions
}

// Client talks to one Service Bus namespace. It is safe for concurrent use; build one
// and reuse it.
type Client struct {
	opt     Options
	backend backend
	admin   adminClient
	closeFn func(context.Context) error

	mu      sync.Mutex
	senders map[string]sender        // per queue, created once
	windows map[string]time.Duration // per queue, read once
}

// backend is what the Client needs from an azservicebus.Client.
type backend interface {
	newSender(queueName string) (sender, error)
	newDeadLetterReceiver(queueName string) (dlqReceiver, error)
}

// sender is what the Client needs from an azservicebus.Sender.
type sender interface {
	NewMessageBatch(ctx context.Context) (messageBatch, error)
	SendMessageBatch(ctx context.Context, b messageBatch) error
	SendMessage(ctx context.Context, m *azservicebus.Message) error
	ScheduleMessages(ctx context.Context, msgs []*azservicebus.Message, at time.Time) ([]int64, error)
	Close(ctx context.Context) error
}

// messageBatch is what the Client needs from an azservicebus.MessageBatch.
type messageBatch interface {
	AddMessage(m *azservicebus.Message, options *azservicebus.AddMessageOptions) error
	NumMessages() int32
}

// dlqReceiver is what the Client needs from an azservicebus.Receiver on a
// dead-letter subqueue. *azservicebus.Receiver implements it.
type dlqReceiver interface {
	PeekMessages(ctx context.Context, maxMessageCount int, options *azservicebus.PeekMessagesOptions) ([]*azservicebus.ReceivedMessage, error)
	ReceiveMessages(ctx context.Context, maxMessages int, options *azservicebus.ReceiveMessagesOptions) ([]*azservicebus.ReceivedMessage, error)
	CompleteMessage(ctx context.Context, m *azservicebus.ReceivedMessage, options *azservicebus.CompleteMessageOptions) error
	AbandonMessage(ctx context.Context, m *azservicebus.ReceivedMessage, options *azservicebus.AbandonMessageOptions) error
	Close(ctx context.Context) error
}

// adminClient is what the Client needs from an admin.Client, which implements it.
type adminClient interface {
	GetQueue(ctx context.Context, queueName string, options *admin.GetQueueOptions) (*admin.GetQueueResponse, error)
	GetQueueRuntimeProperties(ctx context.Context, queueName string, options *admin.GetQueueRuntimePropertiesOptions) (*admin.GetQueueRuntimePropertiesResponse, error)
}

var (
	_ dlqReceiver = (*azservicebus.Receiver)(nil)
	_ adminClient = (*admin.Client)(nil)
)

// New connects to a namespace with an Azure AD identity: fullyQualifiedNamespace is
// the ServiceBusConnection__fullyQualifiedNamespace setting, e.g.
// "sb-xyz.servicebus.windows.net".
func New(fullyQualifiedNamespace string, cred azcore.TokenCredential, o Options) (*Client, error) {
	if fullyQualifiedNamespace == "" {
		return nil, errors.New("servicebus: empty fully qualified namespace (ServiceBusConnection__fullyQualifiedNamespace)")
	}
	if cred == nil {
		return nil, errors.New("servicebus: nil credential")
	}
	sb, err := azservicebus.NewClient(fullyQualifiedNamespace, cred, o.ClientOptions)
	if err != nil {
		return nil, fmt.Errorf("servicebus: client for %s: %w", fullyQualifiedNamespace, err)
	}
	ad, err := admin.NewClient(fullyQualifiedNamespace, cred, o.AdminOptions)
	if err != nil {
		return nil, fmt.Errorf("servicebus: administration client for %s: %w", fullyQualifiedNamespace, err)
	}
	return newClient(sdkBackend{sb}, ad, sb.Close, o), nil
}

// NewFromConnectionString connects with a connection string (the Service Bus emulator,
// development namespaces). Errors never include the connection string: it holds a key.
func NewFromConnectionString(connectionString string, o Options) (*Client, error) {
	if connectionString == "" {
		return nil, errors.New("servicebus: empty connection string")
	}
	sb, err := azservicebus.NewClientFromConnectionString(connectionString, o.ClientOptions)
	if err != nil {
		return nil, fmt.Errorf("servicebus: connection string: %s", redact(err.Error(), connectionString))
	}
	ad, err := admin.NewClientFromConnectionString(connectionString, o.AdminOptions)
	if err != nil {
		return nil, fmt.Errorf("servicebus: connection string (administration client): %s", redact(err.Error(), connectionString))
	}
	return newClient(sdkBackend{sb}, ad, sb.Close, o), nil
}

// redact removes the connection string's secrets (SharedAccessKey, SharedAccessSignature)
// from an SDK error text, which may quote parts of it.
func redact(text, connectionString string) string {
	for _, part := range strings.Split(connectionString, ";") {
		k, v, ok := strings.Cut(part, "=")
		if !ok || v == "" {
			continue
		}
		switch strings.ToLower(strings.TrimSpace(k)) {
		case "sharedaccesskey", "sharedaccesssignature":
			text = strings.ReplaceAll(text, v, "<redacted>")
		}
	}
	return text
}

func newClient(b backend, ad adminClient, closeFn func(context.Context) error, o Options) *Client {
	if o.ReplayMargin <= 0 {
		o.ReplayMargin = time.Minute
	}
	if o.ReceiveWait <= 0 {
		o.ReceiveWait = 5 * time.Second
	}
	if o.MaxReplay <= 0 {
		o.MaxReplay = 500
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	return &Client{opt: o, backend: b, admin: ad, closeFn: closeFn,
		senders: map[string]sender{}, windows: map[string]time.Duration{}}
}

// Close closes the senders and the connection.
func (c *Client) Close(ctx context.Context) error {
	c.mu.Lock()
	senders := c.senders
	c.senders = map[string]sender{}
	c.mu.Unlock()
	var errs []error
	for name, s := range senders {
		if err := s.Close(ctx); err != nil {
			errs = append(errs, fmt.Errorf("servicebus: close sender %s: %w", name, err))
		}
	}
	if c.closeFn != nil {
		if err := c.closeFn(ctx); err != nil {
			errs = append(errs, fmt.Errorf("servicebus: close client: %w", err))
		}
	}
	return errors.Join(errs...)
}

func (c *Client) sender(queueName string) (sender, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if s := c.senders[queueName]; s != nil {
		return s, nil
	}
	s, err := c.backend.newSender(queueName)
	if err != nil {
		return nil, fmt.Errorf("servicebus: sender for %s: %w", queueName, err)
	}
	c.senders[queueName] = s
	return s, nil
}

// toSDK converts a queue.Message to the SDK's message, field for field.
func toSDK(m queue.Message) *azservicebus.Message {
	out := &azservicebus.Message{
		MessageID: &m.MessageID,
		SessionID: &m.SessionID,
		Body:      m.Body,
	}
	if m.Subject != "" {
		out.Subject = &m.Subject
	}
	if m.ContentType != "" {
		out.ContentType = &m.ContentType
	}
	if len(m.ApplicationProperties) > 0 {
		out.ApplicationProperties = maps.Clone(m.ApplicationProperties)
	}
	return out
}

// Send implements queue.Sender. The messages go as one MessageBatch when they fit,
// which the broker accepts or rejects as a whole. When they don't, they go as several
// batches in order, and "all or nothing" means: on an error some batches may already
// be in the queue, and the caller must re-send every message; that is safe because
// the queues' duplicate detection drops the repeats (same MessageID) within its
// window, and the engine is idempotent beyond it. A batch may mix sessions because
// the queues are not partitioned (a partitioned entity needs one partition key, so one
// session, per batch).
func (c *Client) Send(ctx context.Context, queueName string, msgs []queue.Message) error {
	if queueName == "" {
		return errors.New("servicebus: send: empty queue name")
	}
	if len(msgs) == 0 {
		return nil
	}
	for i, m := range msgs {
		if err := m.Check(); err != nil {
			return fmt.Errorf("servicebus: send to %s: message %d (%q): %w", queueName, i, m.MessageID, err)
		}
	}
	s, err := c.sender(queueName)
	if err != nil {
		return err
	}
	// Build every batch first, so a message too large to travel at all fails the call
	// before anything is sent.
	var batches []messageBatch
	b, err := s.NewMessageBatch(ctx)
	if err != nil {
		return fmt.Errorf("servicebus: send to %s: new batch: %w", queueName, err)
	}
	for i, m := range msgs {
		sm := toSDK(m)
		err := b.AddMessage(sm, nil)
		if errors.Is(err, azservicebus.ErrMessageTooLarge) && b.NumMessages() > 0 {
			batches = append(batches, b)
			if b, err = s.NewMessageBatch(ctx); err != nil {
				return fmt.Errorf("servicebus: send to %s: new batch: %w", queueName, err)
			}
			err = b.AddMessage(sm, nil)
		}
		if err != nil {
			return fmt.Errorf("servicebus: send to %s: message %d (%q), %d bytes of body: %w", queueName, i, m.MessageID, len(m.Body), err)
		}
	}
	batches = append(batches, b)
	for i, b := range batches {
		if err := s.SendMessageBatch(ctx, b); err != nil {
			return fmt.Errorf("servicebus: send to %s: batch %d of %d (%d messages): %w", queueName, i+1, len(batches), b.NumMessages(), err)
		}
	}
	return nil
}

// Schedule implements queue.Scheduler with the broker's scheduled messages
// (ScheduleMessages): each message is enqueued at at, one request per message, so
// every one fits the link's message size whatever the others weigh. Duplicate
// detection applies when a message is scheduled: a copy of a message still inside the
// window needs an id of its own. On an error the caller treats every message as not
// scheduled (scheduling again gives at most a duplicate, dropped by id).
func (c *Client) Schedule(ctx context.Context, queueName string, msgs []queue.Message, at time.Time) error {
	if queueName == "" {
		return errors.New("servicebus: schedule: empty queue name")
	}
	for i, m := range msgs {
		if err := m.Check(); err != nil {
			return fmt.Errorf("servicebus: schedule to %s: message %d (%q): %w", queueName, i, m.MessageID, err)
		}
	}
	if len(msgs) == 0 {
		return nil
	}
	s, err := c.sender(queueName)
	if err != nil {
		return err
	}
	for i, m := range msgs {
		if _, err := s.ScheduleMessages(ctx, []*azservicebus.Message{toSDK(m)}, at.UTC()); err != nil {
			return fmt.Errorf("servicebus: schedule message %d of %d (%q) to %s at %s: %w", i+1, len(msgs), m.MessageID, queueName, at.UTC().Format(time.RFC3339), err)
		}
	}
	return nil
}

// Stats implements queue.Inspector with the queue's runtime properties
// (administration API; needs the Manage right, see infra/modules/roles.bicep).
func (c *Client) Stats(ctx context.Context, queueName string) (queue.Stats, error) {
	r, err := c.admin.GetQueueRuntimeProperties(ctx, queueName, nil)
	if err != nil {
		return queue.Stats{}, fmt.Errorf("servicebus: runtime properties of %s: %w", queueName, err)
	}
	if r == nil {
		return queue.Stats{}, fmt.Errorf("servicebus: queue %s does not exist", queueName)
	}
	return queue.Stats{Active: int64(r.ActiveMessageCount), DeadLettered: int64(r.DeadLetterMessageCount), Scheduled: int64(r.ScheduledMessageCount)}, nil
}

// sdkBackend adapts *azservicebus.Client.
type sdkBackend struct{ c *azservicebus.Client }

func (b sdkBackend) newSender(queueName string) (sender, error) {
	s, err := b.c.NewSender(queueName, nil)
	if err != nil {
		return nil, err
	}
	return sdkSender{s}, nil
}

func (b sdkBackend) newDeadLetterReceiver(queueName string) (dlqReceiver, error) {
	return b.c.NewReceiverForQueue(queueName, &azservicebus.ReceiverOptions{
		ReceiveMode: azservicebus.ReceiveModePeekLock,
		SubQueue:    azservicebus.SubQueueDeadLetter,
	})
}

// sdkSender adapts *azservicebus.Sender (its batch type is concrete).
type sdkSender struct{ s *azservicebus.Sender }

func (s sdkSender) NewMessageBatch(ctx context.Context) (messageBatch, error) {
	return s.s.NewMessageBatch(ctx, nil)
}

func (s sdkSender) SendMessageBatch(ctx context.Context, b messageBatch) error {
	mb, ok := b.(*azservicebus.MessageBatch)
	if !ok {
		return fmt.Errorf("servicebus: batch of type %T was not made by this sender", b)
	}
	return s.s.SendMessageBatch(ctx, mb, nil)
}

func (s sdkSender) SendMessage(ctx context.Context, m *azservicebus.Message) error {
	return s.s.SendMessage(ctx, m, nil)
}

func (s sdkSender) ScheduleMessages(ctx context.Context, msgs []*azservicebus.Message, at time.Time) ([]int64, error) {
	return s.s.ScheduleMessages(ctx, msgs, at, nil)
}

func (s sdkSender) Close(ctx context.Context) error { return s.s.Close(ctx) }

var (
	_ queue.Sender      = (*Client)(nil)
	_ queue.Scheduler   = (*Client)(nil)
	_ queue.DeadLetters = (*Client)(nil)
	_ queue.Inspector   = (*Client)(nil)
)
