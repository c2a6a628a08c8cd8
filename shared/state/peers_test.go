package state_test

import (
	"context"
	"encoding/json"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nopsync/nopsync/shared/localstore"
	"github.com/nopsync/nopsync/shared/state"
)

// An instance counts the peers whose lease is live: one that stops renewing drops out
// once its lease has run out.
func TestPeersCountLiveLeases(t *testing.T) {
	store, err := localstore.Open("")
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	ctx := context.Background()
	ttl := 300 * time.Millisecond
	a, b := state.NewPeers(store, "a", ttl), state.NewPeers(store, "b", ttl)
	if a.Count() != 1 {
		t.Fatalf("before renewing: %d", a.Count())
	}
	for _, p := range []*state.Peers{a, b, a} {
		if err := p.Renew(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if a.Count() != 2 {
		t.Fatalf("two live leases, counted %d", a.Count())
	}
	time.Sleep(ttl + 50*time.Millisecond) // b's lease runs out
	if err := a.Renew(ctx); err != nil {
		t.Fatal(err)
	}
	if a.Count() != 1 {
		t.Fatalf("b's lease expired, counted %d", a.Count())
	}
}

// With TrackCalls, an instance counts only the peers that called within a lease's
// lifetime: an idle one leaves its part to the busy. One that turns busy counts every
// live instance until the others have had a renewal's time to see it.
func TestPeersCountBusyOnes(t *testing.T) {
	store, err := localstore.Open("")
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	ctx := context.Background()
	ttl := 600 * time.Millisecond
	renew := func(ps ...*state.Peers) {
		t.Helper()
		for _, p := range ps {
			if err := p.Renew(ctx); err != nil {
				t.Fatal(err)
			}
		}
	}
	a, b := state.NewPeers(store, "a", ttl), state.NewPeers(store, "b", ttl)
	a.TrackCalls()
	b.TrackCalls()
	renew(a, b, a)
	if n := a.Calling(); n != 2 {
		t.Fatalf("a turning busy counts every live instance: %d, want 2", n)
	}
	renew(a) // a's lease says busy
	time.Sleep(ttl/3 + 20*time.Millisecond)
	renew(a)
	if n := a.Calling(); n != 1 {
		t.Fatalf("b never called: a counts %d, want 1", n)
	}

	if n := b.Calling(); n != 2 {
		t.Fatalf("b turning busy counts every live instance: %d, want 2", n)
	}
	renew(b, a)
	if n := a.Calling(); n != 2 {
		t.Fatalf("b busy: a counts %d, want 2", n)
	}
	time.Sleep(ttl/3 + 20*time.Millisecond)
	renew(b)
	if n := b.Calling(); n != 2 {
		t.Fatalf("b, announced: counts %d, want 2 (a is busy)", n)
	}

	// b stops calling; a lease after its last call says idle once a lifetime has passed.
	// a keeps calling and renewing, as a busy instance does.
	deadline := time.Now().Add(ttl + 100*time.Millisecond)
	for time.Now().Before(deadline) {
		a.Calling()
		renew(a)
		time.Sleep(ttl / 6)
	}
	renew(b, a)
	if n := a.Calling(); n != 1 {
		t.Fatalf("b idle for a lease's lifetime: a counts %d, want 1", n)
	}

	// A lease without the busy field (an instance not tracking, or an older build) counts.
	c := state.NewPeers(store, "c", ttl)
	renew(c, a)
	if n := a.Calling(); n != 2 {
		t.Fatalf("an untracked live instance: a counts %d, want 2", n)
	}
}

// Turning busy renews the lease at once, not at the next third of its lifetime.
func TestPeersTurningBusyRenewsAtOnce(t *testing.T) {
	store, err := localstore.Open("")
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	p := state.NewPeers(store, "a", time.Minute) // renewed every 20 s unless woken
	p.TrackCalls()
	done := make(chan struct{})
	go func() { defer close(done); p.Run(ctx, nil) }()
	defer func() { cancel(); <-done }()
	busyUntil := func() time.Time {
		d, err := store.GetDoc(ctx, state.PeerKind, "a")
		if err != nil {
			return time.Time{}
		}
		var l struct {
			BusyUntil *time.Time `json:"busyUntil"`
		}
		if json.Unmarshal(d.Value, &l) != nil || l.BusyUntil == nil {
			return time.Time{}
		}
		return *l.BusyUntil
	}
	waitDoc := time.Now().Add(5 * time.Second)
	for { // the first renewal, at the start: never called, so not busy
		if _, err := store.GetDoc(ctx, state.PeerKind, "a"); err == nil {
			break
		}
		if time.Now().After(waitDoc) {
			t.Fatal("no lease 5 s after the start")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if busyUntil().After(time.Now()) {
		t.Fatal("a lease says busy before any call")
	}
	deadline := time.Now().Add(5 * time.Second)
	p.Calling()
	for !busyUntil().After(time.Now()) {
		if time.Now().After(deadline) {
			t.Fatal("the lease does not say busy 5 s after a call (its next renewal is 20 s away)")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// failingDocs is a store whose doc writes fail, counting the attempts.
type failingDocs struct {
	state.Store
	saves atomic.Int64
}

func (f *failingDocs) SaveDoc(context.Context, *state.Doc) error {
	f.saves.Add(1)
	return errors.New("store down")
}

func (f *failingDocs) SaveDocs(_ context.Context, ds []*state.Doc) []error {
	errs := make([]error, len(ds))
	for i := range ds {
		f.saves.Add(1)
		errs[i] = errors.New("store down")
	}
	return errs
}

// A busy instance whose renewals fail does not retry them at every call: the next
// renewal waits for its time.
func TestPeersFailedRenewalNotRetriedPerCall(t *testing.T) {
	base, err := localstore.Open("")
	if err != nil {
		t.Fatal(err)
	}
	defer base.Close()
	store := &failingDocs{Store: base}
	ctx, cancel := context.WithCancel(context.Background())
	p := state.NewPeers(store, "a", time.Minute) // renewed every 20 s
	p.TrackCalls()
	var errs atomic.Int64
	done := make(chan struct{})
	go func() { defer close(done); p.Run(ctx, func(error) { errs.Add(1) }) }()
	for end := time.Now().Add(500 * time.Millisecond); time.Now().Before(end); time.Sleep(time.Millisecond) {
		p.Calling()
	}
	cancel()
	<-done
	if n := store.saves.Load(); n != 1 {
		t.Fatalf("%d lease writes in 0.5 s of calls with the store down, want 1 (the first)", n)
	}
	if errs.Load() == 0 {
		t.Fatal("the failed renewal was not reported")
	}
}

// A starting instance takes over a lease that ran out long ago instead of adding a doc
// (the store has no delete); the instance that held it, back after all, takes another.
// A lease that ran out only lately is left alone.
func TestPeersReuseLongExpiredLeases(t *testing.T) {
	store, err := localstore.Open("")
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	ctx := context.Background()
	ttl := 50 * time.Millisecond
	docs := func() int {
		t.Helper()
		ds, err := store.ListDocs(ctx, state.PeerKind)
		if err != nil {
			t.Fatal(err)
		}
		return len(ds)
	}
	a := state.NewPeers(store, "a", ttl)
	if err := a.Renew(ctx); err != nil {
		t.Fatal(err)
	}
	time.Sleep(2 * ttl) // a's lease ran out lately
	b := state.NewPeers(store, "b", ttl)
	if err := b.Renew(ctx); err != nil {
		t.Fatal(err)
	}
	if n := docs(); n != 2 {
		t.Fatalf("a lease that ran out %v ago was taken over: %d docs, want 2", 2*ttl, n)
	}
	time.Sleep(10*ttl + 20*time.Millisecond) // both ran out long ago
	c := state.NewPeers(store, "c", ttl)
	if err := c.Renew(ctx); err != nil {
		t.Fatal(err)
	}
	if n := docs(); n != 2 {
		t.Fatalf("c did not take over a long-expired lease: %d docs, want 2", n)
	}
	// a and b come back: whichever lost its doc to c takes another; the others renew.
	for _, p := range []*state.Peers{a, b, c, a, b, c} {
		if err := p.Renew(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if n := docs(); n != 3 {
		t.Fatalf("three live instances hold %d docs, want 3", n)
	}
	for i, p := range []*state.Peers{a, b, c} {
		if n := p.Count(); n != 3 {
			t.Fatalf("instance %d counts %d, want 3", i, n)
		}
	}
}
