// Package storesynctest holds an in-memory stand-in for the store's database reader
// (storesync.Source), for tests of runs and of the push agent without a database.
package storesynctest

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/nopsync/nopsync/shared/nop"
	"github.com/nopsync/nopsync/shared/state"
	"github.com/nopsync/nopsync/shared/storesync"
)

// Hash is the data hash the fake uses (SHA-256, hex).
func Hash(data []byte) string {
	h := sha256.Sum256(data)
	return hex.EncodeToString(h[:])
}

// Source is an in-memory store: rows of data per entity and id. Safe for concurrent use.
type Source struct {
	mu       sync.Mutex
	rows     map[state.Entity]map[int64][]byte
	fails    map[state.Entity]map[int64]string
	currency string
	checkErr error
	pageErr  func(ctx context.Context, entity state.Entity, after int64) error
	reads    int
}

// New returns an empty store whose primary currency is currency.
func New(currency string) *Source {
	return &Source{rows: map[state.Entity]map[int64][]byte{}, fails: map[state.Entity]map[int64]string{}, currency: currency}
}

// Put sets a row's event data (a JSON object as docs/events.md defines it for entity).
func (s *Source) Put(entity state.Entity, id int64, data []byte) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.rows[entity] == nil {
		s.rows[entity] = map[int64][]byte{}
	}
	s.rows[entity][id] = slices.Clone(data)
	delete(s.fails[entity], id)
}

// Fail makes a row unreadable as an event, with reason.
func (s *Source) Fail(entity state.Entity, id int64, reason string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.fails[entity] == nil {
		s.fails[entity] = map[int64]string{}
	}
	s.fails[entity][id] = reason
	delete(s.rows[entity], id)
}

// SetCurrency changes the store's primary currency.
func (s *Source) SetCurrency(c string) { s.mu.Lock(); s.currency = c; s.mu.Unlock() }

// SetCheckError makes Check (and StoreCurrency) fail with err (nil: succeed).
func (s *Source) SetCheckError(err error) { s.mu.Lock(); s.checkErr = err; s.mu.Unlock() }

// SetPageError makes ReadPage call fn first and fail with what it returns (nil: read).
func (s *Source) SetPageError(fn func(ctx context.Context, entity state.Entity, after int64) error) {
	s.mu.Lock()
	s.pageErr = fn
	s.mu.Unlock()
}

// Reads returns how many pages were read.
func (s *Source) Reads() int { s.mu.Lock(); defer s.mu.Unlock(); return s.reads }

// Check implements storesync.Source.
func (s *Source) Check(context.Context) error { s.mu.Lock(); defer s.mu.Unlock(); return s.checkErr }

// StoreCurrency implements storesync.Source.
func (s *Source) StoreCurrency(context.Context) (string, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.checkErr != nil {
		return "", s.checkErr
	}
	return s.currency, nil
}

// ReadPage implements storesync.Source: events "<entity>.updated" (".deleted" when the
// data says deleted), id derived from entity, row id and data hash.
func (s *Source) ReadPage(ctx context.Context, entity state.Entity, after int64, limit int) (storesync.Page, error) {
	s.mu.Lock()
	fn := s.pageErr
	s.reads++
	s.mu.Unlock()
	if fn != nil {
		if err := fn(ctx, entity, after); err != nil {
			return storesync.Page{}, err
		}
	}
	s.mu.Lock()
	var ids []int64
	for id := range s.rows[entity] {
		if id > after {
			ids = append(ids, id)
		}
	}
	for id := range s.fails[entity] {
		if id > after {
			ids = append(ids, id)
		}
	}
	slices.Sort(ids)
	done := len(ids) <= limit
	if !done {
		ids = ids[:limit]
	}
	type row struct {
		id     int64
		data   []byte
		reason string
	}
	rows := make([]row, len(ids))
	for i, id := range ids {
		rows[i] = row{id, s.rows[entity][id], s.fails[entity][id]}
	}
	s.mu.Unlock()

	p := storesync.Page{Rows: len(rows), Last: after, Done: done}
	for _, r := range rows {
		p.Last = r.id
		if r.data == nil {
			p.Failures = append(p.Failures, storesync.RowFailure{Entity: entity, ID: fmt.Sprint(r.id), Reason: r.reason})
			continue
		}
		h := Hash(r.data)
		raw := fmt.Sprintf(`{"id":"store-%s-%d-%s","type":"%s.updated","occurredOnUtc":%q,"storeId":1,"data":%s}`,
			entity, r.id, h[:16], entity, time.Now().UTC().Format(time.RFC3339Nano), r.data)
		evs, err := nop.DecodeRequest(entity, []byte(raw))
		if err != nil {
			return storesync.Page{}, fmt.Errorf("fake store: %s %d: %w", entity, r.id, err)
		}
		p.Events = append(p.Events, evs[0])
		p.Hashes = append(p.Hashes, h)
	}
	return p, ctx.Err()
}

// Customer returns customer data for id (a registered customer) with the given email.
func Customer(id int64, email string) []byte {
	return fmt.Appendf(nil, `{"id":%d,"customerGuid":"5a3e7c1e-2f4b-4d7a-8a0e-%012d","email":%q,"username":null,"firstName":"C","lastName":"Ustomer %d","company":null,"phone":null,"isGuest":false,"isRegistered":true,"active":true,"deleted":false,"createdOnUtc":"2026-11-25T09:00:00Z","address":null}`, id, id, email, id)
}
