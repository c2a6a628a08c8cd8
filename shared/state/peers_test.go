package state_test

import (
	"context"
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
