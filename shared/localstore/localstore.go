// Package localstore is the embedded state.Store for local mode.
//
// Records and docs live in a JSON-lines journal (state.jsonl): every change is appended
// and fsynced before Save returns, so the state survives a restart or a crash. Memory
// holds only a small index per record and doc (journal offset, length and status, 8
// bytes plus the key: 16 bytes for a record with a decimal id) and the counts, so it
// does not grow with the size of what is stored: Get, Scan and ListDocs read the entries back with pread (not mmap, whose
// pages would count in the process's RSS). Open replays the journal into the index and
// drops a torn last line (a crash mid-write). Once the journal has grown to more than
// twice the live data, it is rewritten in the background with only the live entries,
// streamed from the old file in file order. One process per directory: two processes
// appending to the same journal would each miss the other's writes.
//
// Without a directory the journal is a byte slice in memory (tests, the sandbox).
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
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nopsync/nopsync/shared/internal/cut"
	"github.com/nopsync/nopsync/shared/state"
)

// JournalName is the journal's file name inside the store's directory.
const JournalName = "state.jsonl"

// compactSlack: the journal is rewritten once it exceeds twice the live data plus this.
// A variable so that tests can make compaction frequent.
var compactSlack int64 = 4 << 20

// loc is what memory holds per record or doc, packed in 8 bytes: where its journal
// line is and (records) its status, so Save can keep counts and Scan can filter without
// reading the journal. One per entity, so every byte counts; the ETag is on disk only
// (Save reads it back: a pread next to the fsync it does anyway).
type loc uint64

const (
	offBits = 38 // journal offsets below 256 GiB
	lenBits = 22 // lines below 4 MiB (the largest a valid record makes is about 1 MiB)
	stBits  = 64 - offBits - lenBits

	maxJournal = 1<<offBits - 1
	maxLine    = 1<<lenBits - 1
)

func mkLoc(off int64, n int, st uint8) loc {
	return loc(uint64(off) | uint64(n)<<offBits | uint64(st)<<(offBits+lenBits))
}

func (l loc) off() int64 { return int64(l & maxJournal) }
func (l loc) n() int     { return int(l >> offBits & maxLine) }
func (l loc) st() uint8  { return uint8(l >> (offBits + lenBits)) }

func (l loc) status() state.Status { return state.Statuses[l.st()] }

func (l loc) withOff(off int64) loc { return l&^maxJournal | loc(off) }

func init() {
	// A new status needs more status bits.
	if len(state.Statuses) > 1<<stBits {
		panic(fmt.Sprintf("localstore: %d statuses do not fit in %d bits", len(state.Statuses), stBits))
	}
}

// recIndex is one entity's index. nopCommerce ids are decimals: those are keyed by
// number (4 bytes, no string to keep) in a numIndex, 12 bytes per record.
type recIndex struct {
	num numIndex       // canonical decimal ids up to 2^32-1
	str map[string]loc // every other id
}

func newRecIndex() *recIndex {
	return &recIndex{str: map[string]loc{}}
}

// numID returns id as a number if it is kept by number.
func numID(id string) (uint32, bool) {
	if !isDecimal(id) {
		return 0, false
	}
	n, err := strconv.ParseUint(id, 10, 32)
	return uint32(n), err == nil
}

func (x *recIndex) get(id string) (loc, bool) {
	if x == nil {
		return 0, false
	}
	if n, ok := numID(id); ok {
		return x.num.get(n)
	}
	l, found := x.str[id]
	return l, found
}

func (x *recIndex) put(id string, l loc) {
	if n, ok := numID(id); ok {
		x.num.put(n, l)
		return
	}
	x.str[id] = l
}

func (x *recIndex) len() int {
	if x == nil {
		return 0
	}
	return x.num.len() + len(x.str)
}

// id is a record id as the index keeps it; String makes the string only when needed
// (Scan filters first).
type id struct {
	num uint64
	str string // "" for a decimal id
}

func (i id) String() string {
	if i.str == "" {
		return strconv.FormatUint(i.num, 10)
	}
	return i.str
}

// each calls fn for every entry.
func (x *recIndex) each(fn func(id id, l loc)) {
	if x == nil {
		return
	}
	x.num.each(func(n uint32, l loc) { fn(id{num: uint64(n)}, l) })
	for s, l := range x.str {
		fn(id{str: s}, l)
	}
}

// update replaces every entry's loc with fn's result (callers hold mu exclusively).
func (x *recIndex) update(fn func(loc) loc) {
	x.num.update(fn)
	for id, l := range x.str {
		x.str[id] = fn(l)
	}
}

// journal is what the store appends to and reads from: *os.File, or memFile.
type journal interface {
	io.ReaderAt
	io.Writer
	Sync() error
	Truncate(size int64) error
	Close() error
}

// Store is the embedded store. Its zero value is not usable: call Open.
//
// Locking: mu guards the index, the counts and the journal handle. Appends (Save,
// SaveDoc) and a compaction's final phase hold it exclusively; reads hold it shared
// only for the index look-up and the pread, and decode outside it. A compaction copies
// the bulk of the journal without it.
type Store struct {
	mu     sync.RWMutex
	recs   map[state.Entity]*recIndex
	docs   map[string]map[string]loc
	counts map[state.Entity]map[state.Status]int
	seq    atomic.Uint64 // last ETag handed out
	closed bool

	dir       string  // "" in memory-only mode
	abs       string  // dir made absolute, while open
	f         journal // the journal
	gen       uint64  // bumped by every compaction: offsets taken before it are void
	fileBytes int64   // journal size: the offset of the next line
	liveBytes int64   // sum of the live lines' lengths
	broken    error   // set when a failed write could not be undone

	compactFailedAt int64         // journal size at the last failed compaction
	compacting      chan struct{} // non-nil while a compaction runs; closed when it ends

	// Group commit: appends are synced after mu is released, one fsync for all the
	// appends made while the previous one ran. smu guards the fields below; it is never
	// held while taking mu.
	smu       sync.Mutex
	synced    *sync.Cond
	syncing   bool
	syncedGen uint64 // the journal generation syncedTo refers to
	syncedTo  int64  // journal bytes known durable
	syncErr   error  // a failed fsync of generation syncErrGen
	syncErrAt uint64
}

var _ state.Store = (*Store)(nil)

// entry is one journal line: exactly one of Rec and Doc is set.
type entry struct {
	Rec *state.Record `json:"rec,omitempty"`
	Doc *state.Doc    `json:"doc,omitempty"`
}

// keyEntry is an entry with only what the index needs: replay decodes these, so Data
// and doc values are checked as JSON but never kept.
type keyEntry struct {
	Rec *struct {
		Entity state.Entity
		ID     string
		Status state.Status
		ETag   string
	} `json:"rec"`
	Doc *struct {
		Kind, Key, ETag string
	} `json:"doc"`
}

// Open opens (creating if needed) the store kept in dir. With dir "", the store lives
// in memory only and forgets everything when dropped (tests).
func Open(dir string) (*Store, error) {
	s := &Store{
		recs:   map[state.Entity]*recIndex{},
		docs:   map[string]map[string]loc{},
		counts: map[state.Entity]map[state.Status]int{},
		dir:    dir,
	}
	s.synced = sync.NewCond(&s.smu)
	// A store dropped without Close (an in-memory one in a test) gives its index's
	// mappings back once it is unreachable; after Close this finds nothing left to free.
	runtime.AddCleanup(s, freeIndexes, s.recs)
	// ETags start above the clock so that an ETag from a wiped store never matches.
	s.seq.Store(uint64(time.Now().UnixNano()))
	if dir == "" {
		s.f = &memFile{}
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
	s.f = f
	if err := s.replay(f); err != nil {
		f.Close()
		s.freeIndex()
		return nil, fmt.Errorf("localstore: open %s: %w", path, err)
	}
	if s.needsCompaction() {
		// Nothing else runs yet: compact in place of waiting for the first Save.
		if err := s.compact(); err != nil {
			s.f.Close()
			s.freeIndex()
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

// replay builds the index from the journal. A last line that is incomplete or
// unreadable is what a crash mid-write leaves: it is cut off. A bad line followed by
// good ones is corruption, and an error.
func (s *Store) replay(f *os.File) error {
	r := bufio.NewReaderSize(f, 1<<20)
	var good int64 // offset just past the last good line
	lineNo := 0
	for {
		line, err := r.ReadSlice('\n')
		if errors.Is(err, bufio.ErrBufferFull) {
			// A line longer than the buffer (large Data): collect it whole.
			long := slices.Clone(line)
			for errors.Is(err, bufio.ErrBufferFull) {
				line, err = r.ReadSlice('\n')
				long = append(long, line...)
			}
			line = long
		}
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
		if !s.index(line, good) {
			if _, perr := r.Peek(1); errors.Is(perr, io.EOF) {
				if err := f.Truncate(good); err != nil {
					return fmt.Errorf("cut bad last line: %w", err)
				}
				break
			}
			return fmt.Errorf("journal line %d is corrupt (not the last line, so not a torn write)", lineNo)
		}
		good += int64(len(line))
	}
	s.fileBytes = good
	for e, x := range s.recs {
		x.num.trim()
		x.each(func(_ id, l loc) { s.count(e, l.status(), 1) })
	}
	return nil
}

// index records the journal line at off in the index (no count changes: replay counts
// at the end). It reports false for a line that is not a valid entry.
func (s *Store) index(line []byte, off int64) bool {
	var e keyEntry
	if err := json.Unmarshal(line, &e); err != nil || (e.Rec == nil) == (e.Doc == nil) {
		return false
	}
	if len(line) > maxLine || off+int64(len(line)) > maxJournal {
		return false
	}
	var etag uint64
	var ok bool
	if e.Rec != nil {
		st := slices.Index(state.Statuses, e.Rec.Status)
		if etag, ok = parseETag(e.Rec.ETag); !ok || st < 0 || !slices.Contains(state.Entities, e.Rec.Entity) || e.Rec.ID == "" {
			return false
		}
		s.putRec(e.Rec.Entity, e.Rec.ID, mkLoc(off, len(line), uint8(st)))
	} else {
		if etag, ok = parseETag(e.Doc.ETag); !ok || e.Doc.Kind == "" || e.Doc.Key == "" {
			return false
		}
		s.putDoc(e.Doc.Kind, e.Doc.Key, mkLoc(off, len(line), 0))
	}
	if etag > s.seq.Load() {
		s.seq.Store(etag)
	}
	return true
}

func (s *Store) putRec(e state.Entity, id string, l loc) {
	x := s.recs[e]
	if x == nil {
		x = newRecIndex()
		s.recs[e] = x
	}
	old, _ := x.get(id)
	s.liveBytes += int64(l.n() - old.n())
	x.put(id, l)
}

func (s *Store) putDoc(kind, key string, l loc) {
	m := s.docs[kind]
	if m == nil {
		m = map[string]loc{}
		s.docs[kind] = m
	}
	s.liveBytes += int64(l.n() - m[key].n())
	m[key] = l
}

// parseETag reads an ETag this store handed out (a canonical decimal).
func parseETag(tag string) (uint64, bool) {
	n, err := strconv.ParseUint(tag, 10, 64)
	return n, err == nil && strconv.FormatUint(n, 10) == tag
}

func (s *Store) count(e state.Entity, st state.Status, delta int) {
	m := s.counts[e]
	if m == nil {
		m = map[state.Status]int{}
		s.counts[e] = m
	}
	m[st] += delta
}

func (s *Store) nextETag() uint64 {
	return s.seq.Add(1)
}

// encode makes a journal line.
func encode(e entry) ([]byte, error) {
	b, err := json.Marshal(e)
	if err != nil {
		return nil, fmt.Errorf("encode: %w", err)
	}
	return append(b, '\n'), nil
}

// write appends one line to the journal and fsyncs it; on failure the file is cut back
// so that nothing half-written stays behind. It returns the line's location. Callers
// hold mu exclusively.
func (s *Store) write(b []byte, st uint8) (loc, error) {
	if s.broken != nil {
		return 0, s.broken
	}
	if len(b) > maxLine || s.fileBytes+int64(len(b)) > maxJournal {
		return 0, fmt.Errorf("entry of %d bytes does not fit in a journal of %d bytes", len(b), s.fileBytes)
	}
	if _, err := s.f.Write(b); err != nil {
		s.cutBack()
		return 0, fmt.Errorf("write journal: %w", err)
	}
	// Not synced here: the caller waits for durable after releasing mu, so one fsync
	// covers every append made meanwhile (group commit).
	l := mkLoc(s.fileBytes, len(b), st)
	s.fileBytes += int64(len(b))
	return l, nil
}

// appendChecked appends line b for the entry what (a record or a doc) after the
// optimistic-concurrency check: etag "" creates (the entry must not exist), else it must
// equal the stored entry's (at old). Callers hold mu exclusively.
func (s *Store) appendChecked(what string, found bool, old loc, etag string, b []byte, st uint8) (loc, error) {
	switch {
	case etag == "" && found:
		return 0, fmt.Errorf("localstore: create %s: already stored: %w", what, state.ErrConflict)
	case etag != "" && !found:
		return 0, fmt.Errorf("localstore: update %s: not stored: %w", what, state.ErrConflict)
	case etag != "":
		tag, err := s.storedETag(old)
		if err != nil {
			return 0, fmt.Errorf("localstore: update %s: %w", what, err)
		}
		if tag != etag {
			return 0, fmt.Errorf("localstore: update %s: stored version differs: %w", what, state.ErrConflict)
		}
	}
	l, err := s.write(b, st)
	if err != nil {
		return 0, fmt.Errorf("localstore: save %s: %w", what, err)
	}
	return l, nil
}

// durable returns once the journal of generation gen is on disk up to end. One caller
// at a time runs the fsync; the others wait for it, and the next one covers everything
// appended meanwhile. A compaction makes older generations durable (it syncs its copy).
func (s *Store) durable(gen uint64, end int64) error {
	s.smu.Lock()
	defer s.smu.Unlock()
	for {
		switch {
		case gen < s.syncedGen || (gen == s.syncedGen && end <= s.syncedTo):
			return nil
		case s.syncErr != nil && s.syncErrAt == gen:
			return s.syncErr
		case s.syncing:
			s.synced.Wait()
			continue
		}
		s.syncing = true
		s.smu.Unlock()
		s.mu.RLock()
		f, g, to, closed := s.f, s.gen, s.fileBytes, s.closed
		s.mu.RUnlock()
		var err error
		if closed {
			err = errClosed
		} else {
			err = f.Sync() // a compaction may close f meanwhile: the open call keeps the fd
		}
		if err != nil {
			s.mu.Lock()
			if s.gen == g && !s.closed {
				// What reached the disk is unknown: stop writing until reopened, when
				// the replay keeps what is there.
				s.broken = fmt.Errorf("journal unusable after a failed sync (reopen the store): %w", err)
			} else if s.gen != g {
				err = nil // swapped by a compaction, which synced every line it copied
			}
			s.mu.Unlock()
		}
		s.smu.Lock()
		s.syncing = false
		switch {
		case err != nil:
			s.syncErr, s.syncErrAt = fmt.Errorf("sync journal: %w", err), g
		case g > s.syncedGen:
			s.syncedGen, s.syncedTo = g, to
		case g == s.syncedGen && to > s.syncedTo:
			s.syncedTo = to
		}
		s.synced.Broadcast()
	}
}

// cutBack removes what a failed write may have left. If even that fails, later lines
// would be glued to a torn one, so the store stops writing until it is reopened (the
// replay then cuts the torn tail).
func (s *Store) cutBack() {
	if err := s.f.Truncate(s.fileBytes); err != nil {
		s.broken = fmt.Errorf("journal unusable after a failed write (reopen the store): %w", err)
	}
}

// readLine reads the journal line at l. Callers hold mu (shared is enough: pread does
// not move the file offset, and appends wait for the lock).
func (s *Store) readLine(l loc) ([]byte, error) {
	b := make([]byte, l.n())
	if _, err := s.f.ReadAt(b, l.off()); err != nil {
		return nil, fmt.Errorf("read journal at %d: %w", l.off(), err)
	}
	return b, nil
}

// storedETag reads the ETag of the entry at l (callers hold mu).
func (s *Store) storedETag(l loc) (string, error) {
	b, err := s.readLine(l)
	if err != nil {
		return "", err
	}
	var e struct {
		Rec *struct{ ETag string } `json:"rec"`
		Doc *struct{ ETag string } `json:"doc"`
	}
	if err := json.Unmarshal(b, &e); err != nil {
		return "", fmt.Errorf("journal line at %d: %w", l.off(), err)
	}
	switch {
	case e.Rec != nil:
		return e.Rec.ETag, nil
	case e.Doc != nil:
		return e.Doc.ETag, nil
	}
	return "", fmt.Errorf("journal line at %d holds no entry", l.off())
}

// decodeRec decodes a record's journal line and checks it is the one asked for (an
// index out of step with the file must not hand out another entity's state).
func decodeRec(b []byte, l loc, entity state.Entity, id string) (*state.Record, error) {
	var e entry
	if err := json.Unmarshal(b, &e); err != nil {
		return nil, fmt.Errorf("journal line at %d: %w", l.off(), err)
	}
	if e.Rec == nil || e.Rec.Entity != entity || e.Rec.ID != id {
		return nil, fmt.Errorf("journal line at %d is not %s %q (index out of step with the journal)", l.off(), entity, id)
	}
	return e.Rec, nil
}

func decodeDoc(b []byte, l loc, kind, key string) (*state.Doc, error) {
	var e entry
	if err := json.Unmarshal(b, &e); err != nil {
		return nil, fmt.Errorf("journal line at %d: %w", l.off(), err)
	}
	if e.Doc == nil || e.Doc.Kind != kind || e.Doc.Key != key {
		return nil, fmt.Errorf("journal line at %d is not doc %s %q (index out of step with the journal)", l.off(), kind, key)
	}
	if len(e.Doc.Value) == 0 {
		e.Doc.Value = nil
	}
	return e.Doc, nil
}

func (s *Store) needsCompaction() bool {
	return s.fileBytes > 2*s.liveBytes+compactSlack && s.fileBytes > s.compactFailedAt+compactSlack
}

// afterCopy, when set (tests), runs between a compaction's unlocked copy and its
// locked final phase.
var afterCopy func()

// span is a live journal line during compaction: where it is, where it goes.
type span struct {
	old, new int64
	n        uint32
}

// liveSpans lists every live entry's line (callers hold mu, shared is enough).
func (s *Store) liveSpans() []span {
	spans := make([]span, 0, s.entries())
	for _, x := range s.recs {
		x.each(func(_ id, l loc) { spans = append(spans, span{old: l.off(), n: uint32(l.n())}) })
	}
	for _, m := range s.docs {
		for _, l := range m {
			spans = append(spans, span{old: l.off(), n: uint32(l.n())})
		}
	}
	return spans
}

func (s *Store) entries() int {
	n := 0
	for _, x := range s.recs {
		n += x.len()
	}
	for _, m := range s.docs {
		n += len(m)
	}
	return n
}

// copySpans appends the lines of spans (sorted by offset) from src to w, adjacent
// lines as one run, and sets their new offsets, starting at at. It returns the offset
// after the last.
func copySpans(w io.Writer, src io.ReaderAt, spans []span, at int64) (int64, error) {
	for i := 0; i < len(spans); {
		start, end := spans[i].old, spans[i].old
		for ; i < len(spans) && spans[i].old == end; i++ {
			spans[i].new = at + (spans[i].old - start)
			end += int64(spans[i].n)
		}
		if _, err := io.Copy(w, io.NewSectionReader(src, start, end-start)); err != nil {
			return 0, fmt.Errorf("copy live entries: %w", err)
		}
		at += end - start
	}
	return at, nil
}

func sortSpans(spans []span) {
	slices.SortFunc(spans, func(a, b span) int { return cmpInt64(a.old, b.old) })
}

// moved returns where the line at off went (spans sorted by old offset).
func moved(spans []span, off int64) (int64, bool) {
	i, ok := slices.BinarySearchFunc(spans, off, func(sp span, off int64) int { return cmpInt64(sp.old, off) })
	if !ok {
		return 0, false
	}
	return spans[i].new, true
}

// compact rewrites the journal with only the live entries, streamed from the old file
// in file order (never all in memory).
//
// It notes the live lines and the journal's end under a read lock. The bulk of the work runs without the lock, so reads and writes carry on: the lines
// below snapEnd never change (the journal is append-only). Then, holding the lock, the
// lines appended since are copied too, the new file is fsynced and renamed over the old
// one, the directory fsynced and the index moved to the new offsets. A crash at any
// point leaves either the old or the new journal, both complete. Lines that died
// during the copy stay in the new journal as dead bytes, for the next compaction.
//
// Callers must not hold mu.
func (s *Store) compact() error {
	s.mu.RLock()
	if s.closed {
		s.mu.RUnlock()
		return errClosed
	}
	spans, snapEnd, src := s.liveSpans(), s.fileBytes, s.f
	s.mu.RUnlock()
	sortSpans(spans)
	var nf journal
	path := filepath.Join(s.dir, JournalName)
	tmp := path + ".tmp"
	if s.dir == "" {
		nf = &memFile{}
	} else {
		f, err := os.OpenFile(tmp, os.O_RDWR|os.O_CREATE|os.O_TRUNC|os.O_APPEND, 0o600)
		if err != nil {
			return fmt.Errorf("compact: %w", err)
		}
		nf = f
	}
	fail := func(err error) error {
		nf.Close()
		if s.dir != "" {
			os.Remove(tmp)
		}
		return fmt.Errorf("compact: %w", err)
	}
	w := bufio.NewWriterSize(nf, 1<<20)
	n, err := copySpans(w, src, spans, 0)
	if err != nil {
		return fail(err)
	}
	if err := w.Flush(); err != nil {
		return fail(err)
	}
	// The big fsync happens here, without the lock; the one under it covers the tail.
	if err := nf.Sync(); err != nil {
		return fail(err)
	}

	if afterCopy != nil {
		afterCopy()
	}

	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed || s.f != src {
		return fail(errors.New("store closed or journal replaced meanwhile"))
	}
	var tail []span // lines written since the snapshot and still live
	for _, x := range s.recs {
		x.each(func(_ id, l loc) {
			if l.off() >= snapEnd {
				tail = append(tail, span{old: l.off(), n: uint32(l.n())})
			}
		})
	}
	for _, m := range s.docs {
		for _, l := range m {
			if l.off() >= snapEnd {
				tail = append(tail, span{old: l.off(), n: uint32(l.n())})
			}
		}
	}
	sortSpans(tail)
	if n, err = copySpans(w, s.f, tail, n); err != nil {
		return fail(err)
	}
	if err := w.Flush(); err != nil {
		return fail(err)
	}
	if err := nf.Sync(); err != nil {
		return fail(err)
	}
	// Every live line must have a new place before anything changes.
	where := func(off int64) (int64, bool) {
		if off >= snapEnd {
			return moved(tail, off)
		}
		return moved(spans, off)
	}
	lost := false
	check := func(l loc) {
		if _, ok := where(l.off()); !ok {
			lost = true
		}
	}
	for _, x := range s.recs {
		x.each(func(_ id, l loc) { check(l) })
	}
	for _, m := range s.docs {
		for _, l := range m {
			check(l)
		}
	}
	if lost {
		return fail(errors.New("a live entry was not copied (index out of step with the journal)"))
	}
	if s.dir != "" {
		if err := os.Rename(tmp, path); err != nil {
			return fail(err)
		}
		syncDir(s.dir)
	}
	relocate := func(l loc) loc {
		off, _ := where(l.off())
		return l.withOff(off)
	}
	for _, x := range s.recs {
		x.update(relocate)
	}
	for _, m := range s.docs {
		for k, l := range m {
			m[k] = relocate(l)
		}
	}
	s.f.Close()
	s.f = nf
	s.gen++
	s.fileBytes = n
	// nf is synced: every append so far is durable (mu, then smu: durable never holds
	// smu while taking mu).
	s.smu.Lock()
	s.syncedGen, s.syncedTo = s.gen, n
	s.synced.Broadcast()
	s.smu.Unlock()
	s.broken = nil // the torn tail, if any, stayed behind in the old file
	return nil
}

func cmpInt64(a, b int64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
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
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	running := s.compacting
	s.mu.Unlock()
	if running != nil {
		<-running // it reads the journal without the lock; it gives up once it sees closed
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.freeIndex()
	if s.dir == "" {
		s.f.Close()
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

// freeIndex gives back the record index's mappings (callers hold mu exclusively, and
// nothing looks the index up afterwards: the store is closed or was never returned).
func (s *Store) freeIndex() { freeIndexes(s.recs) }

func freeIndexes(recs map[state.Entity]*recIndex) {
	for _, x := range recs {
		x.num.free()
	}
}

var errClosed = errors.New("localstore: store is closed")

// Get implements state.Store.
func (s *Store) Get(ctx context.Context, entity state.Entity, id string) (*state.Record, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	b, l, err := s.lineOf(func() (loc, bool) { return s.recs[entity].get(id) })
	if err != nil {
		return nil, fmt.Errorf("localstore: get %s %q: %w", entity, id, err)
	}
	r, err := decodeRec(b, l, entity, id)
	if err != nil {
		return nil, fmt.Errorf("localstore: get %s %q: %w", entity, id, err)
	}
	return r, nil
}

// lineOf reads the journal line find locates, under the shared lock: errClosed, or
// state.ErrNotFound when find finds nothing.
func (s *Store) lineOf(find func() (loc, bool)) ([]byte, loc, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.closed {
		return nil, 0, errClosed
	}
	l, ok := find()
	if !ok {
		return nil, 0, state.ErrNotFound
	}
	b, err := s.readLine(l)
	return b, l, err
}

// Save implements state.Store.
func (s *Store) Save(ctx context.Context, rec *state.Record) error {
	if err := state.ValidateRecord(rec); err != nil {
		return fmt.Errorf("localstore: save: %w", err)
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	n, b, err := s.line(rec)
	if err != nil {
		return err
	}
	st := uint8(slices.Index(state.Statuses, n.Status))
	gen, end, err := s.saveRecord(rec, n, b, st)
	if err != nil {
		return err
	}
	if err := s.durable(gen, end); err != nil {
		return fmt.Errorf("localstore: save %s %q: %w", rec.Entity, rec.ID, err)
	}
	rec.ETag, rec.UpdatedAt = n.ETag, n.UpdatedAt
	return nil
}

// line is rec as stored (n) and its journal line (b). It is made before taking the
// lock: the ETag comes from an atomic counter (one lost to a conflict is never reused,
// which is all ETags need).
func (s *Store) line(rec *state.Record) (*state.Record, []byte, error) {
	n := *rec
	n.Reason = cut.Bytes(n.Reason, state.MaxString, "")
	n.SyncedAt, n.LeaseUntil = utc(n.SyncedAt), utc(n.LeaseUntil)
	n.UpdatedAt = time.Now().UTC()
	n.ETag = strconv.FormatUint(s.nextETag(), 10)
	if len(n.Data) == 0 {
		n.Data = nil
	}
	if len(n.Extra) == 0 {
		n.Extra = nil
	}
	b, err := encode(entry{Rec: &n})
	if err != nil {
		return nil, nil, fmt.Errorf("localstore: save %s %q: %w", rec.Entity, rec.ID, err)
	}
	return &n, b, nil
}

// GetMany implements state.Store.
func (s *Store) GetMany(ctx context.Context, entity state.Entity, ids []string) (map[string]*state.Record, error) {
	out := make(map[string]*state.Record, len(ids))
	for _, id := range ids {
		r, err := s.Get(ctx, entity, id)
		switch {
		case err == nil:
			out[id] = r
		case !errors.Is(err, state.ErrNotFound):
			return nil, err
		}
	}
	return out, nil
}

// SaveMany implements state.Store: each record is appended as Save appends it, and the
// journal is synced once for all of them.
func (s *Store) SaveMany(ctx context.Context, recs []*state.Record) []error {
	errs := make([]error, len(recs))
	type done struct {
		i   int
		old string // the caller's ETag, given back if the journal can't be synced
		at  time.Time
	}
	var saved []done
	var gen uint64
	var end int64
	for i, rec := range recs {
		if err := state.ValidateRecord(rec); err != nil {
			errs[i] = fmt.Errorf("localstore: save: %w", err)
			continue
		}
		if err := ctx.Err(); err != nil {
			errs[i] = err
			continue
		}
		n, b, err := s.line(rec)
		if err != nil {
			errs[i] = err
			continue
		}
		g, e, err := s.saveRecord(rec, n, b, uint8(slices.Index(state.Statuses, n.Status)))
		if err != nil {
			errs[i] = err
			continue
		}
		if g > gen || (g == gen && e > end) {
			gen, end = g, e
		}
		// The next record of the same id in recs is checked against this version.
		saved = append(saved, done{i: i, old: rec.ETag, at: n.UpdatedAt})
		rec.ETag = n.ETag
	}
	if len(saved) == 0 {
		return errs
	}
	if err := s.durable(gen, end); err != nil {
		for k := len(saved) - 1; k >= 0; k-- {
			d := saved[k]
			errs[d.i] = fmt.Errorf("localstore: save %s %q: %w", recs[d.i].Entity, recs[d.i].ID, err)
			recs[d.i].ETag = d.old
		}
		return errs
	}
	for _, d := range saved {
		recs[d.i].UpdatedAt = d.at
	}
	return errs
}

// saveRecord appends n's line b and indexes it; it returns where the journal must be
// durable up to before the save counts.
func (s *Store) saveRecord(rec, n *state.Record, b []byte, st uint8) (uint64, int64, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return 0, 0, errClosed
	}
	old, found := s.recs[rec.Entity].get(rec.ID)
	l, err := s.appendChecked(fmt.Sprintf("%s %q", rec.Entity, rec.ID), found, old, rec.ETag, b, st)
	if err != nil {
		return 0, 0, err
	}
	s.putRec(rec.Entity, rec.ID, l)
	if found {
		s.count(rec.Entity, old.status(), -1)
	}
	s.count(rec.Entity, n.Status, 1)
	gen, end := s.gen, s.fileBytes
	s.maybeCompact()
	return gen, end, nil
}

// maybeCompact starts a compaction in the background when due and none runs (callers
// hold mu exclusively). A failed compaction is not a caller's problem (the writes are
// durable in the old journal); it is retried after more growth.
func (s *Store) maybeCompact() {
	if s.compacting != nil || !s.needsCompaction() {
		return
	}
	done := make(chan struct{})
	s.compacting = done
	go func() {
		defer close(done)
		err := s.compact()
		s.mu.Lock()
		defer s.mu.Unlock()
		if err != nil {
			s.compactFailedAt = s.fileBytes
		}
		s.compacting = nil
	}()
}

// Scan implements state.Store. fn runs without the store's lock held, so it may call
// the store. The ids and versions are taken when Scan starts; each record is read when
// its turn comes (if the journal was compacted meanwhile, the record's latest version).
func (s *Store) Scan(ctx context.Context, entity state.Entity, statuses []state.Status, fn func(*state.Record) error) error {
	type item struct {
		id string
		l  loc
	}
	s.mu.RLock()
	if s.closed {
		s.mu.RUnlock()
		return errClosed
	}
	gen := s.gen
	var list []item
	s.recs[entity].each(func(id id, l loc) {
		if len(statuses) == 0 || slices.Contains(statuses, l.status()) {
			list = append(list, item{id.String(), l})
		}
	})
	s.mu.RUnlock()
	slices.SortFunc(list, func(a, b item) int { return compareIDs(a.id, b.id) })
	for _, it := range list {
		if err := ctx.Err(); err != nil {
			return err
		}
		s.mu.RLock()
		if s.closed {
			s.mu.RUnlock()
			return errClosed
		}
		l := it.l
		if s.gen != gen {
			// Compacted: the snapshot's offsets are void. Read the latest version, if
			// it still matches the filter (records are never removed).
			l, _ = s.recs[entity].get(it.id)
			if len(statuses) > 0 && !slices.Contains(statuses, l.status()) {
				s.mu.RUnlock()
				continue
			}
		}
		b, err := s.readLine(l)
		s.mu.RUnlock()
		if err != nil {
			return fmt.Errorf("localstore: scan %s: %w", entity, err)
		}
		r, err := decodeRec(b, l, entity, it.id)
		if err != nil {
			return fmt.Errorf("localstore: scan %s: %w", entity, err)
		}
		if err := fn(r); err != nil {
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
	b, l, err := s.lineOf(func() (loc, bool) { l, ok := s.docs[kind][key]; return l, ok })
	if err != nil {
		return nil, fmt.Errorf("localstore: get doc %s %q: %w", kind, key, err)
	}
	d, err := decodeDoc(b, l, kind, key)
	if err != nil {
		return nil, fmt.Errorf("localstore: get doc %s %q: %w", kind, key, err)
	}
	return d, nil
}

// SaveDoc implements state.Store.
func (s *Store) SaveDoc(ctx context.Context, doc *state.Doc) error {
	return s.SaveDocs(ctx, []*state.Doc{doc})[0]
}

// SaveDocs implements state.Store: each doc is appended as SaveDoc appends it, and the
// journal is synced once for all of them.
func (s *Store) SaveDocs(ctx context.Context, docs []*state.Doc) []error {
	errs := make([]error, len(docs))
	type done struct {
		i   int
		old string // the caller's ETag, given back if the journal can't be synced
	}
	var saved []done
	var gen uint64
	var end int64
	for i, doc := range docs {
		if err := state.ValidateDoc(doc); err != nil {
			errs[i] = fmt.Errorf("localstore: save doc: %w", err)
			continue
		}
		if err := ctx.Err(); err != nil {
			errs[i] = err
			continue
		}
		n := *doc
		n.ETag = strconv.FormatUint(s.nextETag(), 10)
		b, err := encode(entry{Doc: &n})
		if err != nil {
			errs[i] = fmt.Errorf("localstore: save doc %s %q: %w", doc.Kind, doc.Key, err)
			continue
		}
		g, e, err := s.saveDoc(doc, b)
		if err != nil {
			errs[i] = err
			continue
		}
		if g > gen || (g == gen && e > end) {
			gen, end = g, e
		}
		// The next doc of the same key in docs is checked against this version.
		saved = append(saved, done{i: i, old: doc.ETag})
		doc.ETag = n.ETag
	}
	if len(saved) == 0 {
		return errs
	}
	if err := s.durable(gen, end); err != nil {
		for k := len(saved) - 1; k >= 0; k-- {
			d := saved[k]
			errs[d.i] = fmt.Errorf("localstore: save doc %s %q: %w", docs[d.i].Kind, docs[d.i].Key, err)
			docs[d.i].ETag = d.old
		}
	}
	return errs
}

// saveDoc appends doc's line b and indexes it; it returns where the journal must be
// durable up to before the save counts.
func (s *Store) saveDoc(doc *state.Doc, b []byte) (uint64, int64, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return 0, 0, errClosed
	}
	old, found := s.docs[doc.Kind][doc.Key]
	l, err := s.appendChecked(fmt.Sprintf("doc %s %q", doc.Kind, doc.Key), found, old, doc.ETag, b, 0)
	if err != nil {
		return 0, 0, err
	}
	s.putDoc(doc.Kind, doc.Key, l)
	gen, end := s.gen, s.fileBytes
	s.maybeCompact()
	return gen, end, nil
}

// ListDocs implements state.Store: keys in byte order, so time-stamped keys come oldest first.
func (s *Store) ListDocs(ctx context.Context, kind string) ([]*state.Doc, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	type item struct {
		key string
		l   loc
	}
	s.mu.RLock()
	if s.closed {
		s.mu.RUnlock()
		return nil, errClosed
	}
	list := make([]item, 0, len(s.docs[kind]))
	for k, l := range s.docs[kind] {
		list = append(list, item{k, l})
	}
	// Read in file order (sequential preads), under one hold of the lock: the offsets
	// stay valid while it is held.
	slices.SortFunc(list, func(a, b item) int { return cmpInt64(a.l.off(), b.l.off()) })
	lines := make([][]byte, len(list))
	for i, it := range list {
		b, err := s.readLine(it.l)
		if err != nil {
			s.mu.RUnlock()
			return nil, fmt.Errorf("localstore: list docs %s: %w", kind, err)
		}
		lines[i] = b
	}
	s.mu.RUnlock()
	out := make([]*state.Doc, len(list))
	for i, it := range list {
		d, err := decodeDoc(lines[i], it.l, kind, it.key)
		if err != nil {
			return nil, fmt.Errorf("localstore: list docs %s: %w", kind, err)
		}
		out[i] = d
	}
	slices.SortFunc(out, func(a, b *state.Doc) int { return strings.Compare(a.Key, b.Key) })
	return out, nil
}

// JournalSize returns the journal's size in bytes (0 in memory-only mode); for tests
// and the status page.
func (s *Store) JournalSize() int64 {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.dir == "" {
		return 0
	}
	return s.fileBytes
}

// memFile is the journal of a memory-only store. It has a lock of its own because a
// compaction reads it without the store's.
type memFile struct {
	mu sync.RWMutex
	b  []byte
}

func (m *memFile) ReadAt(p []byte, off int64) (int, error) {
	m.mu.RLock()
	defer m.mu.RUnlock()
	if off < 0 || off > int64(len(m.b)) {
		return 0, io.EOF
	}
	n := copy(p, m.b[off:])
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

func (m *memFile) Write(p []byte) (int, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.b = append(m.b, p...)
	return len(p), nil
}

func (m *memFile) Sync() error { return nil }

func (m *memFile) Truncate(size int64) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if size < 0 || size > int64(len(m.b)) {
		return fmt.Errorf("truncate memory journal to %d: out of range", size)
	}
	m.b = m.b[:size]
	return nil
}

func (m *memFile) Close() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.b = nil
	return nil
}
