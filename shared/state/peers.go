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

// Peers counts the live instances of the app that share one state store, each holding
// a lease doc (PeerKind, its instance id) it renews every TTL/3. The instances divide
// what they share by that count: Dataverse's service protection limits are per
// application user, whatever the number of instances calling as that user
// (https://learn.microsoft.com/power-apps/developer/data-platform/api-limits).
type Peers struct {
	store Store
	id    string
	ttl   time.Duration

	mu    sync.Mutex
	count int
}

type peerLease struct {
	Until time.Time `json:"until"`
}

// NewPeers announces instance id in store with leases of ttl (default 30 s).
func NewPeers(store Store, id string, ttl time.Duration) *Peers {
	if ttl <= 0 {
		ttl = 30 * time.Second
	}
	return &Peers{store: store, id: id, ttl: ttl, count: 1}
}

// Count is the number of instances holding a live lease, this one included, as of the
// last renewal (1 before the first).
func (p *Peers) Count() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.count
}

// Renew writes this instance's lease and counts the live ones.
func (p *Peers) Renew(ctx context.Context) error {
	now := time.Now()
	val, err := json.Marshal(peerLease{Until: now.Add(p.ttl)})
	if err != nil {
		return err
	}
	doc := &Doc{Kind: PeerKind, Key: p.id, Value: val}
	for range 3 {
		old, gerr := p.store.GetDoc(ctx, PeerKind, p.id)
		switch {
		case errors.Is(gerr, ErrNotFound):
			doc.ETag = ""
		case gerr != nil:
			return fmt.Errorf("peer lease %s: %w", p.id, gerr)
		default:
			doc.ETag = old.ETag
		}
		err = p.store.SaveDoc(ctx, doc)
		if !errors.Is(err, ErrConflict) {
			break
		}
	}
	if err != nil {
		return fmt.Errorf("peer lease %s: %w", p.id, err)
	}
	docs, err := p.store.ListDocs(ctx, PeerKind)
	if err != nil {
		return fmt.Errorf("peer leases: %w", err)
	}
	n := 0
	for _, d := range docs {
		var l peerLease
		if json.Unmarshal(d.Value, &l) == nil && l.Until.After(now) {
			n++
		}
	}
	p.mu.Lock()
	p.count = max(1, n)
	p.mu.Unlock()
	return nil
}

// Run renews the lease every TTL/3 until ctx ends; a failed renewal keeps the last count
// and is passed to onErr (may be nil).
func (p *Peers) Run(ctx context.Context, onErr func(error)) {
	for {
		if err := p.Renew(ctx); err != nil && onErr != nil && ctx.Err() == nil {
			onErr(err)
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(p.ttl / 3):
		}
	}
}
