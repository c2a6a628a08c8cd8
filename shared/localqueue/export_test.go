package localqueue

// SetCompactAt lowers the record count from which the journal may compact, so that
// tests reach it with few records.
func SetCompactAt(q *Queues, n int) {
	q.mu.Lock()
	q.compactAt = n
	q.mu.Unlock()
}

// SetCompactBytes lowers the journal size from which the journal may compact.
func SetCompactBytes(q *Queues, n int64) {
	q.mu.Lock()
	q.compactBytes = n
	q.mu.Unlock()
}

// Compact compacts the journal now.
func Compact(q *Queues) error {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.compact(q.now())
}

// Compactions counts the journal's compactions so far (the one at Open included).
func Compactions(q *Queues) uint64 {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.j.gen
}
