package servicebus

import (
	"context"
	"errors"
	"slices"
	"sync"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/messaging/azservicebus"
	"github.com/Azure/azure-sdk-for-go/sdk/messaging/azservicebus/admin"
)

// fakeBroker stands in for a namespace: it records what is sent and holds dead-letter
// queues that receivers peek, lock, complete and abandon as the broker does.
type fakeBroker struct {
	mu          sync.Mutex
	maxBatch    int // bytes a batch may hold (messageSize each)
	sendersMade map[string]int
	batches     map[string][][]*azservicebus.Message // per queue, batches in send order
	singles     map[string][]*azservicebus.Message   // per queue, SendMessage calls
	scheduled   map[string][]scheduledMsg            // per queue, ScheduleMessages calls
	failBatch   int                                  // fail the n-th SendMessageBatch (1-based), 0: never
	batchCalls  int
	failSingle  error
	dlq         map[string][]*dlqEntry
	onPeek      func() // runs after each peek (to simulate others taking messages)
}

type dlqEntry struct {
	msg    *azservicebus.ReceivedMessage
	locked bool
	gone   bool
	// outcome records what happened to it: "completed", "abandoned:<n>".
	abandons int
}

func newFakeBroker() *fakeBroker {
	return &fakeBroker{maxBatch: 1 << 20, sendersMade: map[string]int{},
		batches: map[string][][]*azservicebus.Message{}, singles: map[string][]*azservicebus.Message{},
		scheduled: map[string][]scheduledMsg{},
		dlq:       map[string][]*dlqEntry{}}
}

// messageSize approximates a message's encoded size for the fake batch limit.
func messageSize(m *azservicebus.Message) int {
	n := len(m.Body) + 64
	for _, p := range []*string{m.MessageID, m.SessionID, m.Subject, m.ContentType} {
		if p != nil {
			n += len(*p)
		}
	}
	return n
}

func (b *fakeBroker) newSender(queueName string) (sender, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.sendersMade[queueName]++
	return &fakeSender{b: b, queue: queueName}, nil
}

func (b *fakeBroker) newDeadLetterReceiver(queueName string) (dlqReceiver, error) {
	return &fakeReceiver{b: b, queue: queueName}, nil
}

func (b *fakeBroker) addDeadLetter(queueName string, m *azservicebus.ReceivedMessage) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.dlq[queueName] = append(b.dlq[queueName], &dlqEntry{msg: m})
}

// remaining is the dead letters not completed, by MessageID, with their lock state.
func (b *fakeBroker) remaining(queueName string) (ids []string, locked int) {
	b.mu.Lock()
	defer b.mu.Unlock()
	for _, e := range b.dlq[queueName] {
		if !e.gone {
			ids = append(ids, e.msg.MessageID)
			if e.locked {
				locked++
			}
		}
	}
	return ids, locked
}

type fakeSender struct {
	b     *fakeBroker
	queue string
}

type fakeBatch struct {
	max  int
	size int
	msgs []*azservicebus.Message
}

func (fb *fakeBatch) AddMessage(m *azservicebus.Message, _ *azservicebus.AddMessageOptions) error {
	if fb.size+messageSize(m) > fb.max {
		return azservicebus.ErrMessageTooLarge
	}
	fb.size += messageSize(m)
	fb.msgs = append(fb.msgs, m)
	return nil
}

func (fb *fakeBatch) NumMessages() int32 { return int32(len(fb.msgs)) }

func (s *fakeSender) NewMessageBatch(ctx context.Context) (messageBatch, error) {
	s.b.mu.Lock()
	defer s.b.mu.Unlock()
	return &fakeBatch{max: s.b.maxBatch}, nil
}

func (s *fakeSender) SendMessageBatch(ctx context.Context, mb messageBatch) error {
	s.b.mu.Lock()
	defer s.b.mu.Unlock()
	s.b.batchCalls++
	if s.b.failBatch == s.b.batchCalls {
		return errors.New("amqp: link detached")
	}
	s.b.batches[s.queue] = append(s.b.batches[s.queue], mb.(*fakeBatch).msgs)
	return nil
}

func (s *fakeSender) SendMessage(ctx context.Context, m *azservicebus.Message) error {
	s.b.mu.Lock()
	defer s.b.mu.Unlock()
	if s.b.failSingle != nil {
		return s.b.failSingle
	}
	s.b.singles[s.queue] = append(s.b.singles[s.queue], m)
	return nil
}

type scheduledMsg struct {
	msg *azservicebus.Message
	at  time.Time
}

func (s *fakeSender) ScheduleMessages(ctx context.Context, msgs []*azservicebus.Message, at time.Time) ([]int64, error) {
	s.b.mu.Lock()
	defer s.b.mu.Unlock()
	if s.b.failSingle != nil {
		return nil, s.b.failSingle
	}
	var seqs []int64
	for _, m := range msgs {
		s.b.scheduled[s.queue] = append(s.b.scheduled[s.queue], scheduledMsg{m, at})
		seqs = append(seqs, int64(len(s.b.scheduled[s.queue])))
	}
	return seqs, nil
}

func (s *fakeSender) Close(ctx context.Context) error { return nil }

type fakeReceiver struct {
	b      *fakeBroker
	queue  string
	closed bool
}

func (r *fakeReceiver) PeekMessages(ctx context.Context, n int, o *azservicebus.PeekMessagesOptions) ([]*azservicebus.ReceivedMessage, error) {
	r.b.mu.Lock()
	from := int64(0)
	if o != nil && o.FromSequenceNumber != nil {
		from = *o.FromSequenceNumber
	}
	var out []*azservicebus.ReceivedMessage
	for _, e := range r.b.dlq[r.queue] {
		if !e.gone && *e.msg.SequenceNumber >= from && len(out) < n {
			out = append(out, e.msg)
		}
	}
	hook := r.b.onPeek
	r.b.mu.Unlock()
	if hook != nil {
		hook()
	}
	return out, nil
}

// ReceiveMessages locks up to n available dead letters; with none, it waits for ctx,
// as the SDK does.
func (r *fakeReceiver) ReceiveMessages(ctx context.Context, n int, _ *azservicebus.ReceiveMessagesOptions) ([]*azservicebus.ReceivedMessage, error) {
	r.b.mu.Lock()
	var out []*azservicebus.ReceivedMessage
	for _, e := range r.b.dlq[r.queue] {
		if !e.gone && !e.locked && len(out) < n {
			e.locked = true
			out = append(out, e.msg)
		}
	}
	r.b.mu.Unlock()
	if len(out) > 0 {
		return out, nil
	}
	<-ctx.Done()
	return nil, ctx.Err()
}

func (r *fakeReceiver) entry(m *azservicebus.ReceivedMessage) (*dlqEntry, error) {
	for _, e := range r.b.dlq[r.queue] {
		if e.msg == m && e.locked && !e.gone {
			return e, nil
		}
	}
	return nil, errors.New("lock lost")
}

func (r *fakeReceiver) CompleteMessage(ctx context.Context, m *azservicebus.ReceivedMessage, _ *azservicebus.CompleteMessageOptions) error {
	r.b.mu.Lock()
	defer r.b.mu.Unlock()
	e, err := r.entry(m)
	if err != nil {
		return err
	}
	e.gone = true
	return nil
}

func (r *fakeReceiver) AbandonMessage(ctx context.Context, m *azservicebus.ReceivedMessage, _ *azservicebus.AbandonMessageOptions) error {
	r.b.mu.Lock()
	defer r.b.mu.Unlock()
	e, err := r.entry(m)
	if err != nil {
		return err
	}
	e.locked = false
	e.abandons++
	return nil
}

func (r *fakeReceiver) Close(ctx context.Context) error {
	r.closed = true
	return nil
}

type fakeAdmin struct {
	mu        sync.Mutex
	queues    map[string]*admin.GetQueueResponse
	runtime   map[string]*admin.GetQueueRuntimePropertiesResponse
	getQueues int
	err       error
}

func (a *fakeAdmin) GetQueue(ctx context.Context, name string, _ *admin.GetQueueOptions) (*admin.GetQueueResponse, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.getQueues++
	if a.err != nil {
		return nil, a.err
	}
	return a.queues[name], nil
}

func (a *fakeAdmin) GetQueueRuntimeProperties(ctx context.Context, name string, _ *admin.GetQueueRuntimePropertiesOptions) (*admin.GetQueueRuntimePropertiesResponse, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.err != nil {
		return nil, a.err
	}
	return a.runtime[name], nil
}

func ptr[T any](v T) *T { return &v }

// deadLetter builds a received dead letter as the SDK would present it.
func deadLetter(seq int64, id, session string, enqueued time.Time, props map[string]any) *azservicebus.ReceivedMessage {
	all := map[string]any{propDeadLetterReason: "MaxDeliveryCountExceeded",
		propDeadLetterDescription: "Message could not be consumed after 10 delivery attempts."}
	for k, v := range props {
		all[k] = v
	}
	return &azservicebus.ReceivedMessage{
		MessageID: id, SessionID: ptr(session), Subject: ptr("order.paid"), ContentType: ptr("application/json"),
		Body: []byte(`{"evt":{"id":"` + id + `"}}`), ApplicationProperties: all,
		SequenceNumber: ptr(seq), EnqueuedTime: ptr(enqueued), DeliveryCount: 10,
		DeadLetterReason:           ptr("MaxDeliveryCountExceeded"),
		DeadLetterErrorDescription: ptr("Message could not be consumed after 10 delivery attempts."),
	}
}

func sortedCopy(s []string) []string {
	s = slices.Clone(s)
	slices.Sort(s)
	return s
}
