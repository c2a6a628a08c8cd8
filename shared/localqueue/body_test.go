package localqueue_test

import (
	"bytes"
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nopsync/nopsync/shared/localqueue"
	"github.com/nopsync/nopsync/shared/queue"
)

// body is a message body derived from its id: size bytes of pseudo-random content,
// newlines and quotes included (the journal must not mistake them for its own).
func body(id string, size int) []byte {
	var seed uint64
	for _, c := range id {
		seed = seed*31 + uint64(c)
	}
	r := rand.New(rand.NewPCG(seed, uint64(size)))
	b := make([]byte, size)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	copy(b, "\n\"body\":\"\t"+id)
	return b
}

func bodyMsg(id, session string, size int) queue.Message {
	return queue.Message{MessageID: id, SessionID: session, Body: body(id, size)}
}

// drain delivers every message of name and returns the bodies by message id.
func drain(t *testing.T, q *localqueue.Queues, name string) map[string][]byte {
	t.Helper()
	var mu sync.Mutex
	got := map[string][]byte{}
	stop := run(t, q, name, 4, func(_ context.Context, d localqueue.Delivery) error {
		mu.Lock()
		got[d.MessageID] = d.Body
		mu.Unlock()
		return nil
	})
	waitFor(t, "drain", func() bool { return stats(t, q, name).Active == 0 })
	if err := stop(); err != nil {
		t.Fatalf("Run: %v", err)
	}
	return got
}

func checkBodies(t *testing.T, what string, got map[string][]byte, sizes map[string]int) {
	t.Helper()
	if len(got) != len(sizes) {
		t.Errorf("%s: %d messages, want %d", what, len(got), len(sizes))
	}
	for id, size := range sizes {
		if b, ok := got[id]; !ok {
			t.Errorf("%s: %s missing", what, id)
		} else if !bytes.Equal(b, body(id, size)) {
			t.Errorf("%s: %s has a body of %d bytes that differs from the %d sent", what, id, len(b), size)
		}
	}
}

func peekBodies(t *testing.T, q *localqueue.Queues, name string) map[string][]byte {
	t.Helper()
	dls, err := q.PeekDeadLetters(context.Background(), name, 0)
	if err != nil {
		t.Fatalf("PeekDeadLetters: %v", err)
	}
	got := map[string][]byte{}
	for _, d := range dls {
		got[d.MessageID] = d.Body
	}
	return got
}

var sizes = []int{0, 1, 2, 100, 4096, 65537, 200_000}

func TestBodiesSurviveReopenCompactionAndReplay(t *testing.T) {
	dir := t.TempDir()
	o := localqueue.Options{Dir: dir, MaxDeliveryCount: 1}
	q := open(t, o)
	active, dead := map[string]int{}, map[string]int{}
	for i, size := range sizes {
		a, d := fmt.Sprintf("a%d", i), fmt.Sprintf("d%d", i)
		active[a], dead[d] = size, size
		send(t, q, queue.Customers, bodyMsg(a, fmt.Sprintf("customer-%d", i), size))
		send(t, q, queue.Orders, bodyMsg(d, fmt.Sprintf("order-%d", i), size))
	}
	// Dead-letter the orders.
	stop := run(t, q, queue.Orders, 2, func(context.Context, localqueue.Delivery) error { return errors.New("no") })
	waitFor(t, "dead letters", func() bool { return stats(t, q, queue.Orders).DeadLettered == int64(len(sizes)) })
	stop()
	checkBodies(t, "dead letters", peekBodies(t, q, queue.Orders), dead)

	if err := localqueue.Compact(q); err != nil {
		t.Fatalf("Compact: %v", err)
	}
	checkBodies(t, "dead letters after compaction", peekBodies(t, q, queue.Orders), dead)
	q.Close()

	q = open(t, o) // replays, then compacts again
	checkBodies(t, "dead letters after reopening", peekBodies(t, q, queue.Orders), dead)
	if _, err := q.Replay(context.Background(), queue.Orders, nil); err != nil {
		t.Fatalf("Replay: %v", err)
	}
	if err := localqueue.Compact(q); err != nil {
		t.Fatalf("Compact: %v", err)
	}
	q.Close()
	q = open(t, o)
	checkBodies(t, "replayed after compaction and reopening", drain(t, q, queue.Orders), dead)
	checkBodies(t, "active after compactions and reopenings", drain(t, q, queue.Customers), active)

	// The journal holds bodies raw, outside the JSON lines.
	b, err := os.ReadFile(filepath.Join(dir, "journal.jsonl"))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains(b, body("a6", sizes[6])) {
		t.Errorf("journal lacks a6's raw body")
	}
}

func TestTornBodiesAreDropped(t *testing.T) {
	dir := t.TempDir()
	q := open(t, localqueue.Options{Dir: dir})
	send(t, q, queue.Products, bodyMsg("p1", "product-1", 3000))
	path := filepath.Join(dir, "journal.jsonl")
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	before := fi.Size()
	send(t, q, queue.Products, bodyMsg("p2", "product-2", 5000), bodyMsg("p3", "product-3", 7000))
	q.Close()
	full, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	header := int64(bytes.IndexByte(full[before:], '\n')) + 1
	size := int64(len(full)) - before
	cuts := map[string]int64{
		"in the JSON line":           header / 2,
		"after the JSON line":        header,
		"in the first body":          header + 100,
		"between the bodies":         header + 5000,
		"in the second body":         header + 9000,
		"before the closing newline": size - 1,
	}
	for name, cut := range cuts {
		t.Run(name, func(t *testing.T) {
			d := t.TempDir()
			if err := os.WriteFile(filepath.Join(d, "journal.jsonl"), full[:before+cut], 0o600); err != nil {
				t.Fatal(err)
			}
			q := open(t, localqueue.Options{Dir: d})
			if got := stats(t, q, queue.Products).Active; got != 1 {
				t.Fatalf("Active = %d, want 1 (the torn batch dropped)", got)
			}
			// The batch was never acknowledged: sending it again is not a duplicate.
			send(t, q, queue.Products, bodyMsg("p2", "product-2", 5000), bodyMsg("p3", "product-3", 7000))
			q.Close()
			q = open(t, localqueue.Options{Dir: d})
			checkBodies(t, "after the torn write", drain(t, q, queue.Products), map[string]int{"p1": 3000, "p2": 5000, "p3": 7000})
		})
	}

	// A whole journal read back: the same three.
	q = open(t, localqueue.Options{Dir: dir})
	checkBodies(t, "whole journal", drain(t, q, queue.Products), map[string]int{"p1": 3000, "p2": 5000, "p3": 7000})
}

func TestCorruptBodyIsAnErrorNotAWrongBody(t *testing.T) {
	dir := t.TempDir()
	q := open(t, localqueue.Options{Dir: dir})
	send(t, q, queue.Products, bodyMsg("p1", "product-1", 3000))
	q.Close()
	path := filepath.Join(dir, "journal.jsonl")
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	b[len(b)-100] ^= 0xff // inside the body
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
	// Open's compaction copies the body and checks it.
	if _, err := localqueue.Open(localqueue.Options{Dir: dir}); err == nil || !strings.Contains(err.Error(), "checksum") {
		t.Fatalf("Open of a journal with a damaged body: %v, want a checksum error", err)
	}
}

func TestOlderJournalWithInlineBodies(t *testing.T) {
	dir := t.TempDir()
	want := body("m1", 1000)
	old := fmt.Sprintf(`{"op":"send","q":"customers","msgs":[{"seq":1,"id":"m1","sid":"customer-1","body":%q,"at":"2026-11-25T10:00:00Z"},{"seq":2,"id":"m2","sid":"customer-1","body":"","at":"2026-11-25T10:00:00Z"}]}`+"\n",
		base64.StdEncoding.EncodeToString(want))
	if err := os.WriteFile(filepath.Join(dir, "journal.jsonl"), []byte(old), 0o600); err != nil {
		t.Fatal(err)
	}
	q := open(t, localqueue.Options{Dir: dir})
	got := drain(t, q, queue.Customers)
	if !bytes.Equal(got["m1"], want) || len(got["m2"]) != 0 || len(got) != 2 {
		t.Fatalf("bodies from an older journal: m1 %d bytes (equal: %v), m2 %q", len(got["m1"]), bytes.Equal(got["m1"], want), got["m2"])
	}
}

func TestConcurrentSendRunPeekReplayAndCompaction(t *testing.T) {
	dir := t.TempDir()
	// No duplicate detection: fewer live entries, so compactions also come on their own.
	o := localqueue.Options{Dir: dir, MaxDeliveryCount: 2, DuplicateWindow: -1}
	q := open(t, o)
	localqueue.SetCompactAt(q, 64) // compactions inside acquire and deliver too
	const senders, batches, per = 4, 30, 5
	failing := func(id string) bool { return strings.HasSuffix(id, "7") }
	size := func(id string) int { return len(id) * 397 % 20000 }

	var bad atomic.Int32
	var okCount atomic.Int32
	stopRun := run(t, q, queue.Customers, 6, func(_ context.Context, d localqueue.Delivery) error {
		if !bytes.Equal(d.Body, body(d.MessageID, size(d.MessageID))) {
			bad.Add(1)
			t.Errorf("%s delivered with a wrong body (%d bytes)", d.MessageID, len(d.Body))
		}
		if failing(d.MessageID) {
			return errors.New("fails")
		}
		okCount.Add(1)
		return nil
	})

	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() { // explicit compactions meanwhile, paced to leave the queues room
		for ctx.Err() == nil {
			if err := localqueue.Compact(q); err != nil {
				t.Errorf("Compact: %v", err)
				return
			}
			time.Sleep(5 * time.Millisecond)
		}
	})
	wg.Go(func() { // peeks and replays meanwhile
		for i := 0; ctx.Err() == nil; i++ {
			dls, err := q.PeekDeadLetters(context.Background(), queue.Customers, 0)
			if err != nil {
				t.Errorf("PeekDeadLetters: %v", err)
				return
			}
			for _, d := range dls {
				if !bytes.Equal(d.Body, body(d.MessageID, size(d.MessageID))) {
					t.Errorf("dead letter %s with a wrong body", d.MessageID)
				}
			}
			if i%5 == 0 && i < 50 && len(dls) > 0 {
				if _, err := q.Replay(context.Background(), queue.Customers, []string{dls[0].MessageID}); err != nil {
					t.Errorf("Replay: %v", err)
				}
			}
		}
	})
	var sent sync.WaitGroup
	want := 0
	for s := range senders {
		sent.Go(func() {
			for b := range batches {
				var batch []queue.Message
				for k := range per {
					id := fmt.Sprintf("s%d-b%d-m%d", s, b, k)
					batch = append(batch, bodyMsg(id, fmt.Sprintf("customer-%d", (b+k)%7), size(id)))
				}
				if err := q.Send(context.Background(), queue.Customers, batch); err != nil {
					t.Errorf("Send: %v", err)
				}
			}
		})
		for b := range batches {
			for k := range per {
				if !failing(fmt.Sprintf("s%d-b%d-m%d", s, b, k)) {
					want++
				}
			}
		}
	}
	sent.Wait()
	waitFor(t, "all handled", func() bool {
		s := stats(t, q, queue.Customers)
		return s.Active == 0 && okCount.Load() >= int32(want)
	})
	cancel()
	wg.Wait()
	waitFor(t, "replays settled", func() bool { return stats(t, q, queue.Customers).Active == 0 })
	if err := stopRun(); err != nil {
		t.Fatalf("Run: %v", err)
	}
	if n := localqueue.Compactions(q); n < 3 {
		t.Errorf("%d compactions: the test did not exercise compaction", n)
	}
	deadWant := map[string]int{}
	for s := range senders {
		for b := range batches {
			for k := range per {
				if id := fmt.Sprintf("s%d-b%d-m%d", s, b, k); failing(id) {
					deadWant[id] = size(id)
				}
			}
		}
	}
	q.Close()
	q = open(t, o)
	checkBodies(t, "dead letters after the run and a restart", peekBodies(t, q, queue.Customers), deadWant)
	if int(okCount.Load()) != want {
		t.Errorf("%d successful deliveries, want %d", okCount.Load(), want)
	}
}

func TestJournalCompactsByBodyBytes(t *testing.T) {
	dir := t.TempDir()
	q := open(t, localqueue.Options{Dir: dir})
	localqueue.SetCompactBytes(q, 1<<20)
	const n, size = 40, 100_000 // 4 MB of bodies in fewer than 200 records
	for i := range n {
		send(t, q, queue.Products, bodyMsg(fmt.Sprint(i), fmt.Sprintf("product-%d", i%3), size))
	}
	want := map[string]int{}
	for i := range n {
		want[fmt.Sprint(i)] = size
	}
	checkBodies(t, "delivered", drain(t, q, queue.Products), want)
	if c := localqueue.Compactions(q); c < 2 {
		t.Errorf("%d compactions (the one at Open included): none for %d bytes of bodies", c, n*size)
	}
	send(t, q, queue.Products, bodyMsg("last", "product-1", size))
	fi, err := os.Stat(filepath.Join(dir, "journal.jsonl"))
	if err != nil {
		t.Fatal(err)
	}
	if fi.Size() > 2<<20 {
		t.Errorf("journal of %d bytes holding one message of %d: completed bodies not compacted away", fi.Size(), size)
	}
	q.Close()
	q = open(t, localqueue.Options{Dir: dir})
	checkBodies(t, "after compactions and a restart", drain(t, q, queue.Products), map[string]int{"last": size})
}

// TestWaitingBodiesStayOnDisk checks that waiting and dead-lettered messages cost
// memory independent of their bodies: the same measure in memory-only mode, which
// keeps bodies, shows that it would see them.
func TestWaitingBodiesStayOnDisk(t *testing.T) {
	const n, size = 200, 50 << 10
	heap := func() int64 {
		runtime.GC()
		runtime.GC()
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		return int64(ms.HeapAlloc)
	}
	for _, withDir := range []bool{false, true} {
		t.Run(fmt.Sprintf("dir=%v", withDir), func(t *testing.T) {
			o := localqueue.Options{MaxDeliveryCount: 1}
			if withDir {
				o.Dir = t.TempDir()
			}
			q := open(t, o)
			buf := make([]byte, size) // one buffer, refilled: the queue must copy or store it
			send(t, q, queue.Customers, queue.Message{MessageID: "warm-up", SessionID: "customer-0", Body: buf})
			before := heap()
			for i := range n {
				for k := range buf {
					buf[k] = byte(i + k)
				}
				send(t, q, queue.Customers, queue.Message{MessageID: fmt.Sprint(i), SessionID: fmt.Sprintf("customer-%d", i), Body: buf})
			}
			waiting := heap() - before
			stop := run(t, q, queue.Customers, 4, func(context.Context, localqueue.Delivery) error { return errors.New("dead-letter it") })
			waitFor(t, "dead letters", func() bool { return stats(t, q, queue.Customers).DeadLettered == n+1 })
			stop()
			deadLettered := heap() - before
			t.Logf("heap grew %d KiB with %d waiting messages of %d KiB, %d KiB once dead-lettered",
				waiting>>10, n, size>>10, deadLettered>>10)
			total := int64(n * size)
			if !withDir {
				if waiting < total*9/10 {
					t.Fatalf("memory-only mode: heap grew %d bytes for %d bytes of bodies: the measure misses them", waiting, total)
				}
				return
			}
			if waiting > total/20 || deadLettered > total/20 {
				t.Errorf("heap grew %d bytes (waiting) and %d (dead-lettered) for %d bytes of bodies on disk: want under %d",
					waiting, deadLettered, total, total/20)
			}
			got := peekBodies(t, q, queue.Customers)
			for i := range n {
				want := make([]byte, size)
				for k := range want {
					want[k] = byte(i + k)
				}
				if !bytes.Equal(got[fmt.Sprint(i)], want) {
					t.Fatalf("dead letter %d: body differs", i)
				}
			}
		})
	}
}
