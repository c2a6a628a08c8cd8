// Package localstore is the embedded state.Store for local mode.
//
// Everything lives in memory (maps per entity and doc kind, counts kept on every
// Save). With a directory, every change is also appended to a JSON-lines journal
// (state.jsonl) and fsynced before Save returns, so the state survives a restart or a
// crash; Open replays the journal, drops a torn last line (a crash mid-write), and
// rewrites the journal from memory when it has grown to more than twice the live
// data. One process per directory: two processes appending to the same journal
// would each miss the other's writes.
package localstore

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nopsync/nopsync/shared/state"
)

// JournalName is the journal's file name inside the store's directory.
const JournalName = "state.jsonl"

// compactSlack: the journal is rewritten once it exceeds twice the live data plus this.
const compactSlack = 4 << 20

// Store is the embedded store. Its zero value is not usable: call Open.
type Store struct {
	mu     sync.RWMutex
	recs   map[state.Entity]map[string]*state.Record // stored records are never mutated, only replaced
	counts map[state.Entity]map[state.Status]int
	docs   map[string]map[string]*state.Doc
	seq    uint64 // last ETag handed out
	closed bool

	dir       string
	abs       string   // dir made absolute, while open
	f         *os.File // nil in memory-only mode
	fileBytes int64
	live      map[string]int64 // journal line size of each live entry, by entry key
	liveBytes int64
	broken    error // set when a failed write could not be undone

	compactFailedAt int64 // journal size at the last failed compaction
}

var _ state.Store = (*Store)(nil)

// entry is one journal line: exactly one of Rec and Doc is set.
type entry struct {
	Rec *state.Record `json:"rec,omitempty"`
	Doc *state.Doc    `json:"doc,omitempty"`
}

// Open opens (creating if needed) the store kept in dir. With dir "", the store lives
// in memory only and forgets everything when dropped (tests).
func Open(dir string) (*Store, error) {
	s := &Store{
		recs:   map[state.Entity]map[string]*state.Record{},
		counts: map[state.Entity]map[state.Status]int{},
		docs:   map[string]map[string]*state.Doc{},
		live:   map[string]int64{},
		dir:    dir,
	}
	// ETags start above the clock so that an ETag from a wiped store never matches.
	s.seq = uint64(time.Now().UnixNano())
	if dir == "" {
		return s, nil
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("localstore: open %s: %w", dir, err)
	}
	abs, err := filepath.Abs(dir)
	if err != nil {
		return nil, fmt.Errorf("localstore: open %s: %w", dir, err)
	}
	openMu.Lock()
	if openDirs[abs] {
		openMu.Unlock()
		return nil, fmt.Errorf("localstore: open %s: already open in this process (close it first)", dir)
	}
	openDirs[abs] = true
	openMu.Unlock()
	s.abs = abs
	ok := false
	defer func() {
		if !ok {
			release(abs)
		}
	}()
	path := filepath.Join(dir, JournalName)
	_, statErr := os.Stat(path)
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return nil, fmt.Errorf("localstore: open %s: %w", path, err)
	}
	if os.IsNotExist(statErr) {
		syncDir(dir) // the new journal's directory entry survives a crash too
	}
	if err := s.replay(f); err != nil {
		f.Close()
		return nil, fmt.Errorf("localstore: open %s: %w", path, err)
	}
	s.f = f
	if s.needsCompaction() {
		if err := s.compact(); err != nil {
			f.Close()
			return nil, fmt.Errorf("localstore: open %s: %w", path, err)
		}
	}
	ok = true
	return s, nil
}

// openDirs guards against two Stores appending to one journal in this process.
var (
	openMu   sync.Mutex
	openDirs = map[string]bool{}
)

func release(abs string) {
	openMu.Lock()
	delete(openDirs, abs)
	openMu.Unlock()
}

// replay loads the journal into memory. A last line that is incomplete or unreadable is
// what a crash mid-write leaves: it is cut off. A bad line followed by good ones is
// corruption, and an error.
func (s *Store) replay(f *os.File) error {
	r := bufio.NewReaderSize(f, 1<<20)
	var good int64 // offset just past the last good line
	lineNo := 0
	for {
		line, err := r.ReadBytes('\n')
		if errors.Is(err, io.EOF) {
			if len(line) > 0 {
				// Torn write: the line never got its newline.
				if err := f.Truncate(good); err != nil {
					return fmt.Errorf("cut torn last line: %w", err)
				}
			}
			break
		}
		if err != nil {
			return fmt.Errorf("read journal: %w", err)
		}
		lineNo++
		var e entry
		if jerr := json.Unmarshal(line, &e); jerr != nil || (e.Rec == nil) == (e.Doc == nil) {
			if _, perr := r.Peek(1); errors.Is(perr, io.EOF) {
				if err := f.Truncate(good); err != nil {
					return fmt.Errorf("cut bad last line: %w", err)
				}
				break
			}
			return fmt.Errorf("journal line %d is corrupt (not the last line, so not a torn write)", lineNo)
		}
		s.apply(e, int64(len(line)))
		good += int64(len(line))
	}
	s.fileBytes = good
	for e, m := range s.recs {
		for _, r := range m {
			s.count(e, r.Status, 1)
		}
	}
	return nil
}

// apply puts an entry in memory (no count changes: callers handle those).
func (s *Store) apply(e entry, size int64) {
	var key string
	var tag string
	if e.Rec != nil {
		r := e.Rec
		m := s.recs[r.Entity]
		if m == nil {
			m = map[string]*state.Record{}
			s.recs[r.Entity] = m
		}
		m[r.ID] = r
		key, tag = "r\x00"+string(r.Entity)+"\x00"+r.ID, r.ETag
	} else {
		d := e.Doc
		m := s.docs[d.Kind]
		if m == nil {
			m = map[string]*state.Doc{}
			s.docs[d.Kind] = m
		}
		m[d.Key] = d
		key, tag = "d\x00"+d.Kind+"\x00"+d.Key, d.ETag
	}
	if n, err := strconv.ParseUint(tag, 10, 64); err == nil && n > s.seq {
		s.seq = n
	}
	s.liveBytes += size - s.live[key]
	s.live[key] = size
}

func (s *Store) count(e state.Entity, st state.Status, delta int) {
	m := s.counts[e]
	if m == nil {
		m = map[state.Status]int{}
		s.counts[e] = m
	}
	m[st] += delta
}

func (s *Store) nextETag() string {
	s.seq++
	return strconv.FormatUint(s.seq, 10)
}

// write appends one entry to the journal and fsyncs it; on failure the file is cut back
// so that nothing half-written stays behind.
func (s *Store) write(e entry) (int64, error) {
	if s.f == nil {
		return 0, nil
	}
	b, err := json.Marshal(e)
	if err != nil {
		return 0, fmt.Errorf("encode: %w", err)
	}
	b = append(b, '\n')
	if s.broken != nil {
		return 0, s.broken
	}
	if _, err := s.f.Write(b); err != nil {
		s.cutBack()
		return 0, fmt.Errorf("write journal: %w", err)
	}
	if err := s.f.Sync(); err != nil {
		s.cutBack()
		return 0, fmt.Errorf("sync journal: %w", err)
	}
	s.fileBytes += int64(len(b))
	return int64(len(b)), nil
}

// cutBack removes what a failed write may have left. If even that fails, later lines
// would be glued to a torn one, so the store stops writing until it is reopened (the
// replay then cuts the torn tail).
func (s *Store) cutBack() {
	if err := s.f.Truncate(s.fileBytes); err != nil {
		s.broken = fmt.Errorf("journal unusable after a failed write (reopen the store): %w", err)
	}
}

func (s *Store) needsCompaction() bool {
	return s.f != nil && s.fileBytes > 2*s.liveBytes+compactSlack && s.fileBytes > s.compactFailedAt+compactSlack
}

// compact rewrites the journal with only the live entries: write a new file, fsync it,
// rename it over the old one, fsync the directory. A crash at any point leaves either
// the old or the new journal, both complete.
func (s *Store) compact() error {
	path := filepath.Join(s.dir, JournalName)
	tmp := path + ".tmp"
	f, err := os.OpenFile(tmp, os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return fmt.Errorf("compact: %w", err)
	}
	fail := func(err error) error {
		f.Close()
		os.Remove(tmp)
		return fmt.Errorf("compact: %w", err)
	}
	w := bufio.NewWriterSize(f, 1<<20)
	enc := json.NewEncoder(w)
	var n int64
	for _, m := range s.recs {
		for _, r := range m {
			if err := enc.Encode(entry{Rec: r}); err != nil {
				return fail(err)
			}
		}
	}
	for _, m := range s.docs {
		for _, d := range m {
			if err := enc.Encode(entry{Doc: d}); err != nil {
				return fail(err)
			}
		}
	}
	if err := w.Flush(); err != nil {
		return fail(err)
	}
	if n, err = f.Seek(0, io.SeekCurrent); err != nil {
		return fail(err)
	}
	if err := f.Sync(); err != nil {
		return fail(err)
	}
	if err := f.Close(); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("compact: %w", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("compact: %w", err)
	}
	syncDir(s.dir)
	nf, err := os.OpenFile(path, os.O_RDWR|os.O_APPEND, 0o600)
	if err != nil {
		return fmt.Errorf("compact: reopen: %w", err)
	}
	s.f.Close()
	s.f = nf
	s.fileBytes = n
	return nil
}

// syncDir makes a rename durable where the platform allows it (not on Windows).
func syncDir(dir string) {
	if d, err := os.Open(dir); err == nil {
		_ = d.Sync()
		d.Close()
	}
}

// Close flushes and closes the journal. The store is unusable afterwards.
func (s *Store) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil
	}
	s.closed = true
	if s.f == nil {
		return nil
	}
	defer release(s.abs)
	err := s.f.Sync()
	if cerr := s.f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("localstore: close: %w", err)
	}
	return nil
}

var errClosed = errors.New("localstore: store is closed")

// Get implements state.Store.
func (s *Store) Get(ctx context.Context, entity state.Entity, id string) (*state.Record, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.closed {
		return nil, errClosed
	}
	r := s.recs[entity][id]
	if r == nil {
		return nil, fmt.Errorf("localstore: get %s %q: %w", entity, id, state.ErrNotFound)
	}
	return cloneRecord(r), nil
}

// Save implements state.Store.
func (s *Store) Save(ctx context.Context, rec *state.Record) error {
	if err := checkRecord(rec); err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return errClosed
	}
	old := s.recs[rec.Entity][rec.ID]
	switch {
	case rec.ETag == "" && old != nil:
		return fmt.Errorf("localstore: create %s %q: already stored: %w", rec.Entity, rec.ID, state.ErrConflict)
	case rec.ETag != "" && old == nil:
		return fmt.Errorf("localstore: update %s %q: not stored: %w", rec.Entity, rec.ID, state.ErrConflict)
	case rec.ETag != "" && old.ETag != rec.ETag:
		return fmt.Errorf("localstore: update %s %q: stored version differs: %w", rec.Entity, rec.ID, state.ErrConflict)
	}
	n := cloneRecord(rec)
	n.Reason = truncate(n.Reason, MaxString)
	n.SyncedAt, n.LeaseUntil = utc(n.SyncedAt), utc(n.LeaseUntil)
	n.UpdatedAt = time.Now().UTC()
	n.ETag = s.nextETag()
	size, err := s.write(entry{Rec: n})
	if err != nil {
		return fmt.Errorf("localstore: save %s %q: %w", rec.Entity, rec.ID, err)
	}
	s.apply(entry{Rec: n}, size)
	if old != nil {
		s.count(old.Entity, old.Status, -1)
	}
	s.count(n.Entity, n.Status, 1)
	rec.ETag, rec.UpdatedAt = n.ETag, n.UpdatedAt
	s.maybeCompact()
	return nil
}

// maybeCompact compacts when due. A failed compaction is not the caller's problem (its
// write is durable in the old journal); it is retried after more growth.
func (s *Store) maybeCompact() {
	if !s.needsCompaction() {
		return
	}
	if err := s.compact(); err != nil {
		s.compactFailedAt = s.fileBytes // try again after more growth
	}
}

// Scan implements state.Store. fn runs without the store's lock held, so it may call
// the store (the records it sees are a snapshot taken when Scan started).
func (s *Store) Scan(ctx context.Context, entity state.Entity, statuses []state.Status, fn func(*state.Record) error) error {
	s.mu.RLock()
	if s.closed {
		s.mu.RUnlock()
		return errClosed
	}
	var list []*state.Record
	for _, r := range s.recs[entity] {
		if len(statuses) == 0 || slices.Contains(statuses, r.Status) {
			list = append(list, r)
		}
	}
	s.mu.RUnlock()
	slices.SortFunc(list, func(a, b *state.Record) int { return compareIDs(a.ID, b.ID) })
	for _, r := range list {
		if err := ctx.Err(); err != nil {
			return err
		}
		if err := fn(cloneRecord(r)); err != nil {
			return err
		}
	}
	return nil
}

// Counts implements state.Store: every entity in state.Entities, every status.
func (s *Store) Counts(ctx context.Context) (state.Counts, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.closed {
		return nil, errClosed
	}
	c := state.Counts{}
	for _, e := range state.Entities {
		c[e] = map[state.Status]int{}
		for _, st := range state.Statuses {
			c[e][st] = s.counts[e][st]
		}
	}
	return c, nil
}

// GetDoc implements state.Store.
func (s *Store) GetDoc(ctx context.Context, kind, key string) (*state.Doc, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.closed {
		return nil, errClosed
	}
	d := s.docs[kind][key]
	if d == nil {
		return nil, fmt.Errorf("localstore: get doc %s %q: %w", kind, key, state.ErrNotFound)
	}
	return cloneDoc(d), nil
}

// SaveDoc implements state.Store.
func (s *Store) SaveDoc(ctx context.Context, doc *state.Doc) error {
	if err := checkDoc(doc); err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return errClosed
	}
	old := s.docs[doc.Kind][doc.Key]
	switch {
	case doc.ETag == "" && old != nil:
		return fmt.Errorf("localstore: create doc %s %q: already stored: %w", doc.Kind, doc.Key, state.ErrConflict)
	case doc.ETag != "" && (old == nil || old.ETag != doc.ETag):
		return fmt.Errorf("localstore: update doc %s %q: stored version differs: %w", doc.Kind, doc.Key, state.ErrConflict)
	}
	n := cloneDoc(doc)
	n.ETag = s.nextETag()
	size, err := s.write(entry{Doc: n})
	if err != nil {
		return fmt.Errorf("localstore: save doc %s %q: %w", doc.Kind, doc.Key, err)
	}
	s.apply(entry{Doc: n}, size)
	doc.ETag = n.ETag
	s.maybeCompact()
	return nil
}

// ListDocs implements state.Store: keys in byte order, so time-stamped keys come oldest first.
func (s *Store) ListDocs(ctx context.Context, kind string) ([]*state.Doc, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.closed {
		return nil, errClosed
	}
	out := make([]*state.Doc, 0, len(s.docs[kind]))
	for _, d := range s.docs[kind] {
		out = append(out, cloneDoc(d))
	}
	slices.SortFunc(out, func(a, b *state.Doc) int { return strings.Compare(a.Key, b.Key) })
	return out, nil
}

// JournalSize returns the journal's size in bytes (0 in memory-only mode); for tests
// and the status page.
func (s *Store) JournalSize() int64 {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.fileBytes
}
