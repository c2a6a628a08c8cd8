package localstore

// Compactions returns how many times the journal has been rewritten since Open.
func (s *Store) Compactions() uint64 {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.gen
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
