package localstore

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/nopsync/nopsync/shared/state"
)

// BenchmarkLarge: a store of 100,000 records (journal written directly, then opened:
// the replay is timed), then Counts, Get, Save (fsync each) and a Scan of the failed ones.
//
//	go test -run '^$' -bench Large -benchtime 200x ./shared/localstore/
func BenchmarkLarge(b *testing.B) {
	const n = 100_000
	dir := b.TempDir()
	f, err := os.Create(filepath.Join(dir, JournalName))
	if err != nil {
		b.Fatal(err)
	}
	w := bufio.NewWriter(f)
	enc := json.NewEncoder(w)
	now := time.Now().UTC()
	data := []byte(`{"id":1,"email":"someone@example.com","firstName":"Some","lastName":"One","active":true}`)
	failed := 0
	for i := 1; i <= n; i++ {
		st := state.Synced
		if i%100 >= 97 {
			st = state.Failed
			failed++
		}
		r := &state.Record{Entity: state.Entities[i%3], ID: strconv.Itoa(i), Status: st, DataverseID: "00000000-0000-0000-0000-000000000001",
			LastEventID: fmt.Sprintf("evt-%d", i), SyncedAt: now, UpdatedAt: now, Data: data, ETag: strconv.Itoa(i)}
		if err := enc.Encode(entry{Rec: r}); err != nil {
			b.Fatal(err)
		}
	}
	if err := w.Flush(); err != nil {
		b.Fatal(err)
	}
	f.Close()
	t0 := time.Now()
	s, err := Open(dir)
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	b.Logf("opened a journal of %d records (%d MiB) in %v", n, s.JournalSize()>>20, time.Since(t0).Round(time.Millisecond))
	ctx := context.Background()

	b.Run("Counts", func(b *testing.B) {
		for b.Loop() {
			if _, err := s.Counts(ctx); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("Get", func(b *testing.B) {
		i := 0
		for b.Loop() {
			i++
			if _, err := s.Get(ctx, state.Customer, strconv.Itoa(3*(i%30_000+1))); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("SaveStatusChange", func(b *testing.B) {
		i := 0
		for b.Loop() {
			i++
			r, err := s.Get(ctx, state.Customer, strconv.Itoa(3*(i%30_000+1)))
			if err != nil {
				b.Fatal(err)
			}
			r.Status = state.Pending
			if err := s.Save(ctx, r); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("ScanFailedOfOneEntity", func(b *testing.B) {
		for b.Loop() {
			k := 0
			if err := s.Scan(ctx, state.Product, []state.Status{state.Failed}, func(*state.Record) error { k++; return nil }); err != nil {
				b.Fatal(err)
			}
		}
	})
}
