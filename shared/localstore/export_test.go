package localstore

import (
	"errors"
	"sync/atomic"
	"time"
)

// Compactions returns how many times the journal has been rewritten since Open.
func (s *Store) Compactions() uint64 {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.gen
}

// IndexBytes is what the record index's slices hold, and whether they are outside the
// Go heap (then a heap measurement does not see them).
func (s *Store) IndexBytes() (n int, offHeap bool) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	for _, x := range s.recs {
		n += x.num.bytes()
	}
	return n, indexOffHeap
}

// SetCompactSlack changes how much dead journal is tolerated, for tests that want
// frequent compaction; the returned func restores it. Not for parallel tests.
func SetCompactSlack(n int64) (restore func()) {
	old := compactSlack
	compactSlack = n
	return func() { compactSlack = old }
}

// WaitCompaction waits until no compaction runs.
func (s *Store) WaitCompaction() {
	for {
		s.mu.Lock()
		ch := s.compacting
		s.mu.Unlock()
		if ch == nil {
			return
		}
		<-ch
	}
}

// syncCounting wraps the journal: Sync is counted, slowed down (as a disk's fsync is)
// and fails while fail is set.
type syncCounting struct {
	journal
	n    *atomic.Int64
	fail *atomic.Bool
}

func (j syncCounting) Sync() error {
	j.n.Add(1)
	time.Sleep(2 * time.Millisecond)
	if j.fail.Load() {
		return errors.New("injected fsync failure")
	}
	return j.journal.Sync()
}

// CountSyncs makes the store count (and, with fail set, fail) its journal fsyncs.
func (s *Store) CountSyncs(n *atomic.Int64, fail *atomic.Bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.f = syncCounting{journal: s.f, n: n, fail: fail}
}
