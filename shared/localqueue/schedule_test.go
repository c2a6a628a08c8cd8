package localqueue_test

import (
	"context"
	"sync"
	"testing"

	"time"

	"github.com/nopsync/nopsync/shared/localqueue"
	"github.com/nopsync/nopsync/shared/queue"
)

// An abandoned message comes back at once, as on Service Bus: with the queue's clock
// standing still, a delay before redelivery would never end.
func TestAbandonRedeliversAtOnce(t *testing.T) {
	clk := newClock()
	q := open(t, localqueue.Options{Dir: t.TempDir(), Now: clk.Now, MaxDeliveryCount: 4})
	send(t, q, queue.Customers, msg("m1", "customer-1", "{}"))
	var mu sync.Mutex
	var counts []int
	done := make(chan struct{})
	run(t, q, queue.Customers, 1, func(ctx context.Context, d localqueue.Delivery) error {
		mu.Lock()
		defer mu.Unlock()
		counts = append(counts, d.DeliveryCount)
		if d.DeliveryCount < 3 {
			return context.DeadlineExceeded
		}
		close(done)
		return nil
	})
	select {
	case <-done:
	case <-time.After(20 * time.Second):
		mu.Lock()
		t.Fatalf("deliveries %v with the clock standing still: an abandoned message waits before it comes back", counts)
	}
}

// A scheduled message waits for its time without holding up its session, counts as
// scheduled meanwhile, survives a restart, and is subject to duplicate detection.
func TestScheduleWaitsWithoutBlockingItsSession(t *testing.T) {
	clk := newClock()
	dir := t.TempDir()
	o := localqueue.Options{Dir: dir, Now: clk.Now, DuplicateWindow: 10 * time.Minute}
	q := open(t, o)
	ctx := context.Background()
	if err := q.Schedule(ctx, queue.Customers, []queue.Message{msg("later", "customer-1", `"later"`)}, clk.Now().Add(time.Minute)); err != nil {
		t.Fatal(err)
	}
	// Duplicate detection applies when scheduled.
	if err := q.Schedule(ctx, queue.Customers, []queue.Message{msg("later", "customer-1", `"again"`)}, clk.Now().Add(time.Minute)); err != nil {
		t.Fatal(err)
	}
	send(t, q, queue.Customers, msg("now", "customer-1", `"now"`))
	if got := stats(t, q, queue.Customers); got != (queue.Stats{Active: 1, Scheduled: 1}) {
		t.Fatalf("Stats = %+v, want 1 active, 1 scheduled", got)
	}
	// Restart: the scheduled message is kept as scheduled.
	q.Close()
	q = open(t, o)
	if got := stats(t, q, queue.Customers); got != (queue.Stats{Active: 1, Scheduled: 1}) {
		t.Fatalf("after a restart Stats = %+v, want 1 active, 1 scheduled", got)
	}
	got := make(chan string, 4)
	run(t, q, queue.Customers, 2, func(ctx context.Context, d localqueue.Delivery) error {
		got <- string(d.Body)
		return nil
	})
	if b := <-got; b != `"now"` {
		t.Fatalf("first delivery %s, want the message sent after the scheduled one", b)
	}
	select {
	case b := <-got:
		t.Fatalf("%s delivered before its time", b)
	case <-time.After(50 * time.Millisecond):
	}
	clk.Add(time.Minute)
	select {
	case b := <-got:
		if b != `"later"` {
			t.Fatalf("got %s, want the scheduled message", b)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("the scheduled message was not delivered once due")
	}
	waitFor(t, "settled", func() bool { return stats(t, q, queue.Customers) == queue.Stats{} })
	select {
	case b := <-got:
		t.Fatalf("extra delivery %s (the duplicate was scheduled too)", b)
	default:
	}
	// Completed and gone, also after a restart.
	q.Close()
	q = open(t, o)
	if got := stats(t, q, queue.Customers); got != (queue.Stats{}) {
		t.Fatalf("after the second restart Stats = %+v, want empty", got)
	}
}
