package main

import (
	"context"
	"sync/atomic"
	"time"

	"github.com/google/uuid"

	"github.com/nopsync/nopsync/shared/dataverse"
	"github.com/nopsync/nopsync/shared/state"
)

// peerLeaseTTL is how long an instance's peer lease lives unless renewed (every third of it).
const peerLeaseTTL = 30 * time.Second

// instancePeers lets the instances of the app that share one state store share one
// Dataverse budget: they call Dataverse as one application user, and its service
// protection limits and x-ms-dop-hint are per user, whatever the number of instances
// (https://learn.microsoft.com/power-apps/developer/data-platform/api-limits). Each
// instance counts the busy ones (those that called Dataverse within the lease's
// lifetime) through peer leases in the state store (state.Peers) and the Dataverse
// client paces to its part. The client is built before the store is open,
// so it reads the count through this holder: 1 until start.
type instancePeers struct {
	p atomic.Pointer[state.Peers]
}

// calling is the number of busy instances, this one included (1 before start); the
// client asks it when a request is about to leave, which keeps this instance busy.
func (ip *instancePeers) calling() int {
	if p := ip.p.Load(); p != nil {
		return p.Calling()
	}
	return 1
}

// tune sets the client's Options.Peers to calling, then applies next (may be nil).
func (ip *instancePeers) tune(next func(*dataverse.Options)) func(*dataverse.Options) {
	return func(o *dataverse.Options) {
		o.Peers = ip.calling
		if next != nil {
			next(o)
		}
	}
}

// start announces this instance in store with leases of ttl (0: peerLeaseTTL), renewed
// until a closes; a failed renewal keeps the last count and is logged.
func (ip *instancePeers) start(a *app, store state.Store, ttl time.Duration) {
	if ttl <= 0 {
		ttl = peerLeaseTTL
	}
	p := state.NewPeers(store, uuid.NewString(), ttl)
	p.TrackCalls() // an instance that does not call Dataverse leaves its part to those that do
	ip.p.Store(p)
	ctx, stop := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		p.Run(ctx, func(err error) { a.log.Warn("dataverse: peer lease not renewed", "error", err) })
	}()
	a.closers = append(a.closers, func() { stop(); <-done })
}
