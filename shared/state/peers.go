package state

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"time"
)

// PeerKind is the doc kind under which instances announce themselves.
const PeerKind = "peer"

// Peers counts the instances of the app that share one state store and call Dataverse,
// each holding a lease doc (PeerKind, its instance id) it renews every TTL/3. The
// instances divide what they share by that count: Dataverse's service protection limits
// are per application user, whatever the number of instances calling as that user
// (https://learn.microsoft.com/power-apps/developer/data-platform/api-limits).
//
// With TrackCalls, an instance is counted only while it is busy: it called within the
// last TTL (see Calling). An idle instance (one serving only HTTP, one whose queue is
// empty) then leaves its part to the others instead of holding it unspent. Without
// TrackCalls (and for leases written by a build without it) every live instance counts.
type Peers struct {
	store Store
	id    string
	ttl   time.Duration
	wake  chan struct{} // renew now: this instance turned busy

	renew sync.Mutex // one renewal at a time; guards key, etag and keys
	key   string     // the lease doc this instance holds ("" before the first renewal)
	etag  string
	keys  int // keys of its own made so far

	mu        sync.Mutex
	count     int  // live and busy instances, this one included
	live      int  // live instances, this one included
	track     bool // leases say when this instance stops being busy
	lastCall  time.Time
	written   time.Time // BusyUntil of the last lease written
	turnedAt  time.Time // when this instance last turned busy
	announced time.Time // when a lease first said so after turnedAt (zero: not yet)
}

type peerLease struct {
	Until time.Time `json:"until"`
	// BusyUntil is when the instance stops counting as busy: its last call plus the
	// lease's lifetime (the zero time: it never called). Absent: busy while live.
	BusyUntil *time.Time `json:"busyUntil,omitempty"`
}

// NewPeers announces instance id in store with leases of ttl (default 30 s).
func NewPeers(store Store, id string, ttl time.Duration) *Peers {
	if ttl <= 0 {
		ttl = 30 * time.Second
	}
	return &Peers{store: store, id: id, ttl: ttl, count: 1, live: 1, wake: make(chan struct{}, 1)}
}

// TrackCalls makes this instance's leases say whether it is busy; call it before the
// first Renew, and then call Calling before each call to what the peers share.
func (p *Peers) TrackCalls() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.track = true
}

// Count is the number of instances the budget is split among, this one included, as
// of the last renewal (1 before the first): the busy ones. An instance that has just
// turned busy counts every live one until its peers have had a renewal's time to see
// it: they still spend as if it were idle, and it must not spend their parts meanwhile.
func (p *Peers) Count() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.countLocked(time.Now())
}

func (p *Peers) countLocked(now time.Time) int {
	if p.track && (p.announced.IsZero() || now.Sub(p.announced) < p.ttl/3) {
		return p.live
	}
	return p.count
}

// Calling records a call about to be made and returns Count. A call once the last
// lease written says idle turns this instance busy again, and a call when that lease
// is about to say so renews it at once: the others learn of it at their next renewal
// rather than at this one's.
func (p *Peers) Calling() int {
	now := time.Now()
	p.mu.Lock()
	defer p.mu.Unlock()
	p.lastCall = now
	if p.track {
		if !now.Before(p.written) && (p.turnedAt.IsZero() || !p.announced.IsZero()) {
			p.turnedAt, p.announced = now, time.Time{}
		}
		if now.Add(p.ttl / 2).After(p.written) {
			select {
			case p.wake <- struct{}{}:
			default:
			}
		}
	}
	return p.countLocked(now)
}

// Renew writes this instance's lease and counts the live and the busy ones.
func (p *Peers) Renew(ctx context.Context) error {
	now := time.Now()
	lease := peerLease{Until: now.Add(p.ttl)}
	p.mu.Lock()
	track, turnedAt := p.track, p.turnedAt
	if track {
		busy := time.Time{}
		if !p.lastCall.IsZero() {
			busy = p.lastCall.Add(p.ttl)
		}
		lease.BusyUntil = &busy
	}
	p.mu.Unlock()
	val, err := json.Marshal(lease)
	if err != nil {
		return err
	}
	p.renew.Lock()
	defer p.renew.Unlock()
	if err := p.writeLease(ctx, val, now); err != nil {
		return fmt.Errorf("peer lease %s: %w", p.id, err)
	}
	docs, err := p.store.ListDocs(ctx, PeerKind)
	if err != nil {
		return fmt.Errorf("peer leases: %w", err)
	}
	live, busy := 0, 1 // this instance always counts itself
	for _, d := range docs {
		var l peerLease
		if json.Unmarshal(d.Value, &l) != nil || !l.Until.After(now) {
			continue
		}
		live++
		if d.Key != p.key && (l.BusyUntil == nil || l.BusyUntil.After(now)) {
			busy++
		}
	}
	p.mu.Lock()
	p.live, p.count = max(1, live), busy
	if track {
		p.written = *lease.BusyUntil
		if !turnedAt.IsZero() && p.turnedAt.Equal(turnedAt) && p.announced.IsZero() && p.written.After(turnedAt) {
			p.announced = time.Now() // the lease just written says busy
		}
	}
	p.mu.Unlock()
	return nil
}

// reuseAfter is how long ago a peer lease must have run out for a starting instance to
// take its doc over: the store has no delete, so the docs stay as many as instances ever
// ran at once rather than one per instance ever started. An instance whose lease was
// taken over while it could not renew finds out by the ETag and takes another.
func (p *Peers) reuseAfter() time.Duration { return 10 * p.ttl }

// writeLease writes the lease doc this instance holds (p.renew held); on the first
// renewal, or when its doc was taken over, it takes a long-expired one or makes its own.
func (p *Peers) writeLease(ctx context.Context, val []byte, now time.Time) error {
	if p.key != "" {
		doc := &Doc{Kind: PeerKind, Key: p.key, Value: val, ETag: p.etag}
		err := p.store.SaveDoc(ctx, doc)
		if err == nil {
			p.etag = doc.ETag
			return nil
		}
		if !errors.Is(err, ErrConflict) {
			return err
		}
		p.key, p.etag = "", "" // taken over (or gone with a wiped table): take another
	}
	docs, err := p.store.ListDocs(ctx, PeerKind)
	if err != nil {
		return err
	}
	for _, d := range docs {
		var l peerLease
		if json.Unmarshal(d.Value, &l) != nil || now.Sub(l.Until) < p.reuseAfter() {
			continue
		}
		doc := &Doc{Kind: PeerKind, Key: d.Key, Value: val, ETag: d.ETag}
		err := p.store.SaveDoc(ctx, doc)
		if err == nil {
			p.key, p.etag = d.Key, doc.ETag
			return nil
		}
		if !errors.Is(err, ErrConflict) {
			return err
		}
	}
	p.keys++
	key := p.id
	if p.keys > 1 {
		key = fmt.Sprintf("%s-%d", p.id, p.keys)
	}
	doc := &Doc{Kind: PeerKind, Key: key, Value: val}
	if err := p.store.SaveDoc(ctx, doc); err != nil {
		return err
	}
	p.key, p.etag = key, doc.ETag
	return nil
}

// Run renews the lease every TTL/3, and at once when this instance turns busy, until
// ctx ends; a failed renewal keeps the last count and is passed to onErr (may be nil).
// After a failed renewal the next waits for its time: a store that is down is not
// asked again at every call.
func (p *Peers) Run(ctx context.Context, onErr func(error)) {
	for {
		err := p.Renew(ctx)
		if err != nil && onErr != nil && ctx.Err() == nil {
			onErr(err)
		}
		wake := p.wake
		if err != nil {
			wake = nil
		}
		tm := time.NewTimer(p.ttl / 3)
		select {
		case <-ctx.Done():
			tm.Stop()
			return
		case <-tm.C:
		case <-wake:
			tm.Stop()
		}
	}
}
