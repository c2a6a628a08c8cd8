package servicebus

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/nopsync/nopsync/shared/delivery"
	"github.com/nopsync/nopsync/shared/localstore"
	"github.com/nopsync/nopsync/shared/queue"
)

// On Service Bus the failure policy's copies are scheduled messages (ScheduleMessages)
// with ids of their own: the broker's duplicate detection would drop a copy with the
// original id inside the window. A message failing through an outage is completed
// with a copy scheduled from its third delivery on, each copy with a new id, and lands
// when a copy finally succeeds; nothing is dead-lettered.
func TestOutageCopiesAreScheduledMessages(t *testing.T) {
	b := newFakeBroker()
	c := testClient(b, nil, Options{})
	st, err := localstore.Open("")
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	down := true
	applied := 0
	now := t0
	h, err := delivery.New(delivery.Options{State: st, Scheduler: c, Now: func() time.Time { return now },
		Apply: func(context.Context, string, []byte) error {
			if down {
				return errors.New("dataverse: 503 Service Unavailable")
			}
			applied++
			return nil
		}})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	orig := delivery.Message{Queue: queue.Orders, MessageID: "6f1d6c9e", SessionID: "order-1001", Subject: "order.paid",
		ContentType: "application/json", Body: []byte(`{"evt":{}}`)}
	// As the host delivers it: abandoned twice (redelivered at once), then completed.
	for d := 1; d <= 3; d++ {
		orig.DeliveryCount = d
		err := h.Handle(ctx, orig)
		if (d < 3) != (err != nil) {
			t.Fatalf("delivery %d: %v", d, err)
		}
	}
	seen := map[string]bool{orig.MessageID: true}
	for n := 1; n <= 6; n++ {
		sch := b.scheduled[queue.Orders]
		if len(sch) != n {
			t.Fatalf("%d messages scheduled, want %d", len(sch), n)
		}
		m := sch[n-1].msg
		id := deref(m.MessageID)
		if seen[id] || id != delivery.CopyID("6f1d6c9e", n) || deref(m.SessionID) != "order-1001" || string(m.Body) != `{"evt":{}}` ||
			m.ApplicationProperties[delivery.PropRetryOf] != "6f1d6c9e" || !sch[n-1].at.After(now) {
			t.Fatalf("copy %d: id %s (an id seen before would be dropped by duplicate detection), %+v at %v", n, id, m, sch[n-1].at)
		}
		seen[id] = true
		if n == 6 {
			down = false
		}
		// The broker delivers the copy at its time; the host passes its properties on.
		now = sch[n-1].at
		cp := delivery.Message{Queue: queue.Orders, MessageID: id, SessionID: deref(m.SessionID), Body: m.Body,
			DeliveryCount: 1, ApplicationProperties: m.ApplicationProperties}
		if err := h.Handle(ctx, cp); err != nil {
			t.Fatalf("copy %d failed its invocation: %v", n, err)
		}
	}
	if applied != 1 || len(b.scheduled[queue.Orders]) != 6 {
		t.Errorf("applied %d times, %d copies; want 1 and no seventh copy", applied, len(b.scheduled[queue.Orders]))
	}
}
