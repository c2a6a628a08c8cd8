package servicebus

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/messaging/azservicebus"
	"github.com/Azure/azure-sdk-for-go/sdk/messaging/azservicebus/admin"

	"github.com/nopsync/nopsync/shared/queue"
)

var t0 = time.Date(2026, 11, 25, 10, 0, 0, 0, time.UTC)

func testClient(b *fakeBroker, a *fakeAdmin, o Options) *Client {
	if a == nil {
		a = &fakeAdmin{}
	}
	if o.Now == nil {
		o.Now = func() time.Time { return t0 }
	}
	return newClient(b, a, nil, o)
}

func TestSendConvertsMessagesExactly(t *testing.T) {
	b := newFakeBroker()
	c := testClient(b, nil, Options{})
	msgs := []queue.Message{
		{MessageID: "6f1d6c9e", SessionID: "order-1001", Subject: "order.paid", ContentType: "application/json",
			Body: []byte(`{"evt":{}}`), ApplicationProperties: map[string]any{"source": "nop", "n": int64(3)}},
		{MessageID: "chunk-ab12", SessionID: "order-chunk-ab12", Body: []byte(`{"chunk":{}}`)},
	}
	if err := c.Send(context.Background(), queue.Orders, msgs); err != nil {
		t.Fatal(err)
	}
	want := [][]*azservicebus.Message{{
		{MessageID: ptr("6f1d6c9e"), SessionID: ptr("order-1001"), Subject: ptr("order.paid"),
			ContentType: ptr("application/json"), Body: []byte(`{"evt":{}}`),
			ApplicationProperties: map[string]any{"source": "nop", "n": int64(3)}},
		{MessageID: ptr("chunk-ab12"), SessionID: ptr("order-chunk-ab12"), Body: []byte(`{"chunk":{}}`)},
	}}
	if got := b.batches[queue.Orders]; !reflect.DeepEqual(got, want) {
		t.Fatalf("sent %s, want %s", dump(got), dump(want))
	}
	// The SDK message must not alias the caller's property map.
	msgs[0].ApplicationProperties["source"] = "changed"
	if b.batches[queue.Orders][0][0].ApplicationProperties["source"] != "nop" {
		t.Error("sent message shares the caller's ApplicationProperties map")
	}
}

func dump(bs [][]*azservicebus.Message) string {
	var sb strings.Builder
	for i, b := range bs {
		fmt.Fprintf(&sb, "batch %d:", i)
		for _, m := range b {
			fmt.Fprintf(&sb, " {id=%v sid=%v subj=%v ct=%v body=%s props=%v}", deref(m.MessageID), deref(m.SessionID),
				m.Subject, m.ContentType, m.Body, m.ApplicationProperties)
		}
		sb.WriteString("\n")
	}
	return sb.String()
}

func TestSendSplitsIntoBatchesInOrderAndReusesSenders(t *testing.T) {
	b := newFakeBroker()
	b.maxBatch = 2*(64+100+2+10) + 10 // two 100-byte messages per batch
	c := testClient(b, nil, Options{})
	var msgs []queue.Message
	for i := range 5 {
		msgs = append(msgs, queue.Message{MessageID: fmt.Sprintf("e%d", i), SessionID: "product-1234567", Body: []byte(strings.Repeat("x", 100))})
	}
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() {
			if err := c.Send(context.Background(), queue.Products, msgs); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	if n := b.sendersMade[queue.Products]; n != 1 {
		t.Errorf("%d senders made for one queue, want 1", n)
	}
	got := b.batches[queue.Products]
	if len(got) != 12 {
		t.Fatalf("%d batches for 4 sends of 5 messages, want 12 (2+2+1 each)", len(got))
	}
	// Each Send's batches hold its messages in order (sends interleave, batches don't).
	var sizes []int
	for _, batch := range got {
		sizes = append(sizes, len(batch))
		for i := 1; i < len(batch); i++ {
			if *batch[i-1].MessageID >= *batch[i].MessageID {
				t.Errorf("batch out of order: %s", dump([][]*azservicebus.Message{batch}))
			}
		}
	}
	ones := 0
	for _, n := range sizes {
		if n == 1 {
			ones++
		}
	}
	if ones != 4 {
		t.Errorf("batch sizes %v, want four batches of 1 (the fifth message)", sizes)
	}
}

func TestSendErrors(t *testing.T) {
	t.Run("message too large on its own: nothing sent", func(t *testing.T) {
		b := newFakeBroker()
		b.maxBatch = 500
		c := testClient(b, nil, Options{})
		err := c.Send(context.Background(), queue.Orders, []queue.Message{
			{MessageID: "ok", SessionID: "order-1", Body: []byte("{}")},
			{MessageID: "big", SessionID: "order-2", Body: make([]byte, 1000)},
		})
		if !errors.Is(err, azservicebus.ErrMessageTooLarge) || !strings.Contains(err.Error(), `message 1 ("big")`) {
			t.Fatalf("err = %v, want ErrMessageTooLarge naming message 1", err)
		}
		if len(b.batches[queue.Orders]) != 0 {
			t.Fatal("a batch was sent although a message could never be")
		}
	})
	t.Run("second batch fails", func(t *testing.T) {
		b := newFakeBroker()
		b.maxBatch = 64 + 2 + 7 + 7 + 10
		b.failBatch = 2
		c := testClient(b, nil, Options{})
		err := c.Send(context.Background(), queue.Orders, []queue.Message{
			{MessageID: "a", SessionID: "order-1", Body: []byte("{}")},
			{MessageID: "b", SessionID: "order-1", Body: []byte("{}")},
			{MessageID: "c", SessionID: "order-1", Body: []byte("{}")},
		})
		if err == nil || !strings.Contains(err.Error(), "batch 2 of 3") {
			t.Fatalf("err = %v, want the failing batch named", err)
		}
	})
	t.Run("invalid messages", func(t *testing.T) {
		b := newFakeBroker()
		c := testClient(b, nil, Options{})
		for _, m := range []queue.Message{
			{SessionID: "s", Body: []byte("{}")},
			{MessageID: "x", Body: []byte("{}")},
			{MessageID: strings.Repeat("x", 129), SessionID: "s"},
		} {
			err := c.Send(context.Background(), queue.Orders, []queue.Message{{MessageID: "ok", SessionID: "s"}, m})
			if err == nil || !strings.Contains(err.Error(), "message 1") {
				t.Errorf("Send(%+v) = %v, want an error naming message 1", m, err)
			}
		}
		if len(b.batches) != 0 {
			t.Error("something was sent")
		}
	})
}

func TestScheduleSendsEachMessageAtItsTime(t *testing.T) {
	b := newFakeBroker()
	c := testClient(b, nil, Options{})
	at := t0.Add(90 * time.Second).In(time.FixedZone("x", 3600))
	msgs := []queue.Message{
		{MessageID: "retry-1-ab", SessionID: "order-1001", Subject: "order.paid", ContentType: "application/json",
			Body: []byte(`{"evt":{}}`), ApplicationProperties: map[string]any{"retryOf": "6f1d6c9e"}},
		{MessageID: "retry-1-cd", SessionID: "order-1002", Body: []byte(`{"evt":{}}`)},
	}
	if err := c.Schedule(context.Background(), queue.Orders, msgs, at); err != nil {
		t.Fatal(err)
	}
	got := b.scheduled[queue.Orders]
	if len(got) != 2 {
		t.Fatalf("%d messages scheduled, want 2", len(got))
	}
	for i, g := range got {
		if !g.at.Equal(at) || g.at.Location() != time.UTC {
			t.Errorf("message %d scheduled at %v, want %v in UTC", i, g.at, at.UTC())
		}
		if deref(g.msg.MessageID) != msgs[i].MessageID || deref(g.msg.SessionID) != msgs[i].SessionID || string(g.msg.Body) != string(msgs[i].Body) {
			t.Errorf("message %d scheduled as %+v, want %+v", i, g.msg, msgs[i])
		}
	}
	if got[0].msg.ApplicationProperties["retryOf"] != "6f1d6c9e" {
		t.Errorf("properties %v not kept", got[0].msg.ApplicationProperties)
	}
	if len(b.batches[queue.Orders]) != 0 || len(b.singles[queue.Orders]) != 0 {
		t.Error("a scheduled message was also sent")
	}
	if err := c.Schedule(context.Background(), queue.Orders, []queue.Message{{MessageID: "x"}}, at); err == nil || !strings.Contains(err.Error(), "SessionID") {
		t.Errorf("a message without a session was scheduled: %v", err)
	}
	b.failSingle = errors.New("amqp: link detached")
	if err := c.Schedule(context.Background(), queue.Orders, msgs[:1], at); err == nil || !strings.Contains(err.Error(), "link detached") {
		t.Errorf("schedule error not passed on: %v", err)
	}
}

func TestStats(t *testing.T) {
	a := &fakeAdmin{runtime: map[string]*admin.GetQueueRuntimePropertiesResponse{
		queue.Customers: {QueueName: queue.Customers, QueueRuntimeProperties: admin.QueueRuntimeProperties{
			ActiveMessageCount: 7, DeadLetterMessageCount: 2, ScheduledMessageCount: 3, TotalMessageCount: 12}},
	}}
	c := testClient(newFakeBroker(), a, Options{})
	got, err := c.Stats(context.Background(), queue.Customers)
	if err != nil || got != (queue.Stats{Active: 7, DeadLettered: 2, Scheduled: 3}) {
		t.Fatalf("Stats = %+v, %v", got, err)
	}
	if _, err := c.Stats(context.Background(), "missing"); err == nil || !strings.Contains(err.Error(), "does not exist") {
		t.Errorf("Stats of a missing queue: %v", err)
	}
	a.err = errors.New("401 Manage claim required")
	if _, err := c.Stats(context.Background(), queue.Customers); err == nil || !strings.Contains(err.Error(), "Manage") {
		t.Errorf("Stats error not passed on: %v", err)
	}
}

func TestPeekDeadLettersPagesAndMapsFields(t *testing.T) {
	b := newFakeBroker()
	for i := range 250 {
		b.addDeadLetter(queue.Orders, deadLetter(int64(1000+i), fmt.Sprintf("e%03d", i), "order-1", t0, map[string]any{"source": "nop"}))
	}
	c := testClient(b, nil, Options{})
	all, err := c.PeekDeadLetters(context.Background(), queue.Orders, 0)
	if err != nil {
		t.Fatal(err)
	}
	if len(all) != 250 || all[0].MessageID != "e000" || all[249].MessageID != "e249" {
		t.Fatalf("peeked %d (first %q), want all 250 in order", len(all), all[0].MessageID)
	}
	some, err := c.PeekDeadLetters(context.Background(), queue.Orders, 120)
	if err != nil || len(some) != 120 {
		t.Fatalf("Peek(120) = %d, %v", len(some), err)
	}
	want := queue.DeadLetter{
		Message: queue.Message{MessageID: "e000", SessionID: "order-1", Subject: "order.paid", ContentType: "application/json",
			Body: []byte(`{"evt":{"id":"e000"}}`), ApplicationProperties: map[string]any{"source": "nop"}},
		SequenceNumber: 1000, DeliveryCount: 10, EnqueuedAt: t0, Reason: "MaxDeliveryCountExceeded",
		ErrorDescription: "Message could not be consumed after 10 delivery attempts.",
	}
	if !reflect.DeepEqual(all[0], want) {
		t.Errorf("dead letter %+v, want %+v", all[0], want)
	}
	if ids, locked := b.remaining(queue.Orders); len(ids) != 250 || locked != 0 {
		t.Errorf("peek changed the dead-letter queue: %d left, %d locked", len(ids), locked)
	}
}

func TestReplayWaitsOutTheDuplicateWindow(t *testing.T) {
	b := newFakeBroker()
	window := 10 * time.Minute
	now := t0.Add(time.Hour)
	b.addDeadLetter(queue.Orders, deadLetter(1, "old", "order-1", t0, map[string]any{"source": "nop"}))
	b.addDeadLetter(queue.Orders, deadLetter(2, "other", "order-2", t0, nil))
	b.addDeadLetter(queue.Orders, deadLetter(3, "recent", "order-3", now.Add(-5*time.Minute), nil))
	b.addDeadLetter(queue.Orders, deadLetter(4, "edge", "order-4", now.Add(-window-30*time.Second), nil))
	c := testClient(b, nil, Options{DuplicateWindow: window, Now: func() time.Time { return now }})

	rep, err := c.ReplayReport(context.Background(), queue.Orders, []string{"old", "recent", "edge"})
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(rep.Replayed, []string{"old"}) {
		t.Errorf("Replayed = %v, want [old]", rep.Replayed)
	}
	wantWaiting := []WaitingReplay{
		{MessageID: "recent", SequenceNumber: 3, ReplayableAt: now.Add(-5*time.Minute + window + time.Minute)},
		// Past the window by 30 s, but inside the 1-minute margin for clock skew.
		{MessageID: "edge", SequenceNumber: 4, ReplayableAt: now.Add(30 * time.Second)},
	}
	if !reflect.DeepEqual(rep.Waiting, wantWaiting) {
		t.Errorf("Waiting = %+v, want %+v", rep.Waiting, wantWaiting)
	}
	// The copy: same identity, body and user properties, no dead-letter properties, replayOf.
	want := []*azservicebus.Message{{
		MessageID: ptr("old"), SessionID: ptr("order-1"), Subject: ptr("order.paid"), ContentType: ptr("application/json"),
		Body:                  []byte(`{"evt":{"id":"old"}}`),
		ApplicationProperties: map[string]any{"source": "nop", ReplayOfProperty: int64(1)},
	}}
	if got := b.singles[queue.Orders]; !reflect.DeepEqual(got, want) {
		t.Errorf("sent %s, want %s", dump([][]*azservicebus.Message{got}), dump([][]*azservicebus.Message{want}))
	}
	ids, locked := b.remaining(queue.Orders)
	if !reflect.DeepEqual(ids, []string{"other", "recent", "edge"}) || locked != 0 {
		t.Errorf("dead-letter queue after replay: %v with %d locked; want other, recent, edge, none locked", ids, locked)
	}

	// Replaying all, later: everything past the window goes, once.
	now = now.Add(15 * time.Minute)
	got, err := c.Replay(context.Background(), queue.Orders, nil)
	if err != nil || !reflect.DeepEqual(sortedCopy(got), []string{"edge", "other", "recent"}) {
		t.Fatalf("Replay(all) = %v, %v", got, err)
	}
	got, err = c.Replay(context.Background(), queue.Orders, nil)
	if err != nil || len(got) != 0 {
		t.Fatalf("second Replay(all) = %v, %v; want nothing", got, err)
	}
	if n := len(b.singles[queue.Orders]); n != 4 {
		t.Errorf("%d messages sent by replays, want 4", n)
	}
}

func TestReplayWindowFromQueueProperties(t *testing.T) {
	cases := map[string]struct {
		props      admin.QueueProperties
		replayable bool // a dead letter enqueued 30 minutes ago
	}{
		"PT10M":                  {admin.QueueProperties{RequiresDuplicateDetection: ptr(true), DuplicateDetectionHistoryTimeWindow: ptr("PT10M")}, true},
		"PT1H":                   {admin.QueueProperties{RequiresDuplicateDetection: ptr(true), DuplicateDetectionHistoryTimeWindow: ptr("PT1H")}, false},
		"no duplicate detection": {admin.QueueProperties{RequiresDuplicateDetection: ptr(false), DuplicateDetectionHistoryTimeWindow: ptr("P7D")}, true},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			b := newFakeBroker()
			now := t0.Add(30 * time.Minute)
			b.addDeadLetter(queue.Customers, deadLetter(1, "e1", "customer-1", t0, nil))
			b.addDeadLetter(queue.Customers, deadLetter(2, "e2", "customer-1", t0, nil))
			a := &fakeAdmin{queues: map[string]*admin.GetQueueResponse{queue.Customers: {QueueName: queue.Customers, QueueProperties: tc.props}}}
			c := testClient(b, a, Options{Now: func() time.Time { return now }})
			for _, id := range []string{"e1", "e2"} {
				got, err := c.Replay(context.Background(), queue.Customers, []string{id})
				if err != nil {
					t.Fatal(err)
				}
				if (len(got) == 1) != tc.replayable {
					t.Errorf("Replay(%s) = %v, want replayable %v", id, got, tc.replayable)
				}
			}
			if a.getQueues != 1 {
				t.Errorf("queue properties read %d times, want once (cached)", a.getQueues)
			}
		})
	}
	a := &fakeAdmin{err: errors.New("403")}
	c := testClient(newFakeBroker(), a, Options{})
	if _, err := c.Replay(context.Background(), queue.Customers, nil); err == nil || !strings.Contains(err.Error(), "duplicate-detection window") {
		t.Errorf("Replay without the window: %v, want an error saying why", err)
	}
}

func TestReplaySendFailureKeepsTheDeadLetter(t *testing.T) {
	b := newFakeBroker()
	b.addDeadLetter(queue.Orders, deadLetter(1, "e1", "order-1", t0, nil))
	b.addDeadLetter(queue.Orders, deadLetter(2, "e2", "order-1", t0, nil))
	b.failSingle = errors.New("amqp: connection reset")
	c := testClient(b, nil, Options{DuplicateWindow: time.Minute, Now: func() time.Time { return t0.Add(time.Hour) }})
	got, err := c.Replay(context.Background(), queue.Orders, nil)
	if err == nil || !strings.Contains(err.Error(), "connection reset") || len(got) != 0 {
		t.Fatalf("Replay = %v, %v; want the send error and nothing replayed", got, err)
	}
	ids, locked := b.remaining(queue.Orders)
	if len(ids) != 2 || locked != 0 {
		t.Errorf("dead-letter queue %v with %d locked; want both, unlocked", ids, locked)
	}
	b.failSingle = nil
	got, err = c.Replay(context.Background(), queue.Orders, []string{"e2"})
	if err != nil || !reflect.DeepEqual(got, []string{"e2"}) {
		t.Fatalf("retry = %v, %v", got, err)
	}
}

func TestReplayGivesUpOnDeadLettersTakenMeanwhile(t *testing.T) {
	b := newFakeBroker()
	b.addDeadLetter(queue.Orders, deadLetter(1, "e1", "order-1", t0, nil))
	b.addDeadLetter(queue.Orders, deadLetter(2, "e2", "order-2", t0, nil))
	// After the peek, another replay completes e2.
	var once sync.Once
	b.onPeek = func() {
		once.Do(func() {
			b.mu.Lock()
			b.dlq[queue.Orders][1].gone = true
			b.mu.Unlock()
		})
	}
	c := testClient(b, nil, Options{DuplicateWindow: time.Minute, ReceiveWait: 20 * time.Millisecond,
		Now: func() time.Time { return t0.Add(time.Hour) }})
	rep, err := c.ReplayReport(context.Background(), queue.Orders, nil)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(rep.Replayed, []string{"e1"}) || !reflect.DeepEqual(rep.Missed, []string{"e2"}) {
		t.Errorf("report %+v, want e1 replayed and e2 missed", rep)
	}
}

func TestReplayLimit(t *testing.T) {
	b := newFakeBroker()
	for i := range 5 {
		b.addDeadLetter(queue.Orders, deadLetter(int64(i+1), fmt.Sprintf("e%d", i), "order-1", t0, nil))
	}
	c := testClient(b, nil, Options{DuplicateWindow: time.Minute, MaxReplay: 3, Now: func() time.Time { return t0.Add(time.Hour) }})
	rep, err := c.ReplayReport(context.Background(), queue.Orders, nil)
	if err != nil || !reflect.DeepEqual(rep.Replayed, []string{"e0", "e1", "e2"}) || !rep.More {
		t.Fatalf("report %+v, %v; want the first 3 and More", rep, err)
	}
}

func TestParseISODuration(t *testing.T) {
	for in, want := range map[string]time.Duration{
		"PT10M": 10 * time.Minute, "PT20S": 20 * time.Second, "P7D": 7 * 24 * time.Hour,
		"PT1H30M": 90 * time.Minute, "P1DT2H3M4.5S": 26*time.Hour + 3*time.Minute + 4500*time.Millisecond,
		"PT0.5S": 500 * time.Millisecond, "P10675199DT2H48M5.4775807S": time.Duration(1<<63 - 1),
	} {
		if got, err := parseISODuration(in); err != nil || got != want {
			t.Errorf("parseISODuration(%q) = %v, %v; want %v", in, got, err, want)
		}
	}
	for _, bad := range []string{"", "P", "10M", "PT", "PTM", "PT10", "PT10X", "P1H"} {
		if _, err := parseISODuration(bad); err == nil {
			t.Errorf("parseISODuration(%q): no error", bad)
		}
	}
}

func TestConstructorsRejectMissingSettings(t *testing.T) {
	if _, err := New("", nil, Options{}); err == nil || !strings.Contains(err.Error(), "ServiceBusConnection__fullyQualifiedNamespace") {
		t.Errorf("New without namespace: %v", err)
	}
	if _, err := NewFromConnectionString("", Options{}); err == nil {
		t.Error("empty connection string: no error")
	}
	key := "fAkE" + strings.Repeat("k", 12)
	// Emulator strings must use sb://: the SDK's error quotes the endpoint.
	_, err := NewFromConnectionString("Endpoint=https://"+key+".example;SharedAccessKeyName=k;SharedAccessKey="+key+";UseDevelopmentEmulator=true", Options{})
	if err == nil {
		t.Fatal("invalid emulator connection string: no error")
	}
	if strings.Contains(err.Error(), key) {
		t.Errorf("connection string error leaks the key: %v", err)
	}
	if got := redact("bad key abc in x", "Endpoint=sb://x/;SharedAccessKeyName=n;SharedAccessKey=abc"); got != "bad key <redacted> in x" {
		t.Errorf("redact = %q", got)
	}
}
