package localqueue

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

// journalFile is the name of the journal inside Options.Dir.
const journalFile = "journal.jsonl"

// record is one journal record: a JSON line, followed, when its messages have bodies,
// by a block of their raw bodies (Block bytes, in message order) and a newline. Every
// change of the queues' state is one record, written (and fsynced) before the change is
// acknowledged, so replaying the records in order at open rebuilds the state. A batch
// of sent messages is one record, so a torn write loses the whole batch, never part of
// it.
//
// Bodies sit outside the JSON so that the queues keep only their offsets in memory
// and read a body back (pread) when it is needed: an import parks tens of megabytes
// of bodies in the queue, which would otherwise all be resident.
type record struct {
	Op  string `json:"op"`
	Q   string `json:"q"`
	Seq int64  `json:"seq,omitempty"`

	Msgs  []msgJSON `json:"msgs,omitempty"` // send, msg (snapshot)
	Block int64     `json:"blk,omitempty"`  // bytes of bodies after the JSON line

	DeliveryCount int    `json:"dc,omitempty"`  // lock
	Err           string `json:"err,omitempty"` // abandon

	Reason      string    `json:"reason,omitempty"` // dl
	Description string    `json:"desc,omitempty"`   // dl
	At          time.Time `json:"at,omitzero"`      // dl, dedupe, replay

	Replays []replayJSON `json:"replays,omitempty"` // replay

	ID   string `json:"id,omitempty"`   // dedupe (snapshot)
	Next int64  `json:"next,omitempty"` // seq (snapshot)
}

// Journal operations.
const (
	opSend    = "send"    // messages accepted by Send
	opLock    = "lock"    // a delivery started: DeliveryCount is the new count
	opAbandon = "abandon" // a delivery failed: Err is the handler's error
	opDone    = "done"    // a delivery completed: the message is gone
	opDL      = "dl"      // moved to the dead-letter queue
	opReplay  = "replay"  // moved back from the dead-letter queue with a new sequence number
	opMsg     = "msg"     // snapshot: a message with its full state
	opDedupe  = "dedupe"  // snapshot: a message id still inside the duplicate window
	opNextSeq = "seq"     // snapshot: the queue's next sequence number
)

type replayJSON struct {
	Seq    int64 `json:"seq"`
	NewSeq int64 `json:"new"`
}

type msgJSON struct {
	Seq           int64               `json:"seq"`
	MessageID     string              `json:"id"`
	SessionID     string              `json:"sid"`
	Subject       string              `json:"subj,omitempty"`
	ContentType   string              `json:"ct,omitempty"`
	Body          []byte              `json:"body,omitempty"` // older journals: the body inline (read only)
	Len           int                 `json:"n,omitempty"`    // body length; the body is in the record's block
	CRC           uint32              `json:"crc,omitempty"`  // CRC-32C of the body: a misread is an error, not a wrong body
	Props         map[string]propJSON `json:"props,omitempty"`
	EnqueuedAt    time.Time           `json:"at"`
	DeliveryCount int                 `json:"dc,omitempty"`
	AvailableAt   time.Time           `json:"availAt,omitzero"` // scheduled: not available before

	LastError   string    `json:"err,omitempty"`
	Dead        bool      `json:"dead,omitempty"`
	Reason      string    `json:"reason,omitempty"`
	Description string    `json:"desc,omitempty"`
	DeadAt      time.Time `json:"deadAt,omitzero"`

	// data is a body to write (Send), or one held in memory (memory-only mode, bodies
	// read inline from an older journal until the compaction at Open moves them out).
	data []byte
	// off is where the body is in the journal file when stored: set when the record is
	// read or written (compaction reads the old offset, then sets the new one).
	off    int64
	stored bool
}

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// propJSON keeps an application property's Go type across the journal (plain JSON would
// turn every number into float64).
type propJSON struct {
	T string `json:"t"`
	V string `json:"v"`
}

func encodeProp(v any) (propJSON, error) {
	switch x := v.(type) {
	case string:
		return propJSON{"string", x}, nil
	case bool:
		return propJSON{"bool", strconv.FormatBool(x)}, nil
	case int:
		return propJSON{"int", strconv.FormatInt(int64(x), 10)}, nil
	case int32:
		return propJSON{"int32", strconv.FormatInt(int64(x), 10)}, nil
	case int64:
		return propJSON{"int64", strconv.FormatInt(x, 10)}, nil
	case float64:
		return propJSON{"float64", strconv.FormatFloat(x, 'g', -1, 64)}, nil
	case time.Time:
		return propJSON{"time", x.UTC().Format(time.RFC3339Nano)}, nil
	case nil:
		return propJSON{"nil", ""}, nil
	}
	return propJSON{}, fmt.Errorf("unsupported type %T (use string, bool, int, int32, int64, float64 or time.Time)", v)
}

func decodeProp(p propJSON) (any, error) {
	switch p.T {
	case "string":
		return p.V, nil
	case "bool":
		return strconv.ParseBool(p.V)
	case "int":
		n, err := strconv.ParseInt(p.V, 10, 64)
		return int(n), err
	case "int32":
		n, err := strconv.ParseInt(p.V, 10, 32)
		return int32(n), err
	case "int64":
		return strconv.ParseInt(p.V, 10, 64)
	case "float64":
		return strconv.ParseFloat(p.V, 64)
	case "time":
		return time.Parse(time.RFC3339Nano, p.V)
	case "nil":
		return nil, nil
	}
	return nil, fmt.Errorf("unknown property type %q", p.T)
}

func encodeProps(props map[string]any) (map[string]propJSON, error) {
	if len(props) == 0 {
		return nil, nil
	}
	out := make(map[string]propJSON, len(props))
	for k, v := range props {
		p, err := encodeProp(v)
		if err != nil {
			return nil, fmt.Errorf("application property %q: %w", k, err)
		}
		out[k] = p
	}
	return out, nil
}

func decodeProps(props map[string]propJSON) (map[string]any, error) {
	if len(props) == 0 {
		return nil, nil
	}
	out := make(map[string]any, len(props))
	for k, p := range props {
		v, err := decodeProp(p)
		if err != nil {
			return nil, fmt.Errorf("application property %q: %w", k, err)
		}
		out[k] = v
	}
	return out, nil
}

// ticket says how far the journal must be synced for one append to be durable.
type ticket struct {
	gen uint64
	off int64
}

// jfile is one journal file with a reference count: the journal holds one reference
// while the file is current, and every body read holds one while it reads, so that a
// compaction (which replaces the file) or Close never closes a file under a reader.
type jfile struct {
	f    *os.File
	refs atomic.Int64
}

func newJfile(f *os.File) *jfile {
	jf := &jfile{f: f}
	jf.refs.Store(1)
	return jf
}

func (jf *jfile) acquire() { jf.refs.Add(1) }

func (jf *jfile) release() error {
	if jf.refs.Add(-1) == 0 {
		return jf.f.Close()
	}
	return nil
}

// journal is the append-only file. Appends happen under Queues.mu (so file order is
// state-change order); fsync happens outside it with group commit: one Sync covers
// every append made before it, whoever asked.
type journal struct {
	dir string

	smu     sync.Mutex // held by sync and compaction; cur and gen change under both smu and Queues.mu
	cur     *jfile
	w       *bufio.Writer // on cur.f; flushed at the end of every append (under Queues.mu)
	gen     uint64        // bumped by compaction: tickets of older generations are durable in the snapshot
	synced  int64
	written atomic.Int64

	records int // appended since the last compaction (under Queues.mu)
	closed  bool
	unlock  func() // releases the directory lock
}

// openJournal reads every record of dir's journal, calls apply for each, and returns
// the journal open for appending. A last record cut short (without its final newline)
// is a torn write from a crash: it is dropped and cut off.
func openJournal(dir string, apply func(record) error) (*journal, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("localqueue: create directory: %w", err)
	}
	unlock, err := lockDir(dir)
	if err != nil {
		return nil, err
	}
	path := filepath.Join(dir, journalFile)
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		unlock()
		return nil, fmt.Errorf("localqueue: open journal: %w", err)
	}
	fail := func(err error) (*journal, error) {
		f.Close()
		unlock()
		return nil, err
	}
	good, n, err := readJournal(f, apply)
	if err != nil {
		return fail(fmt.Errorf("localqueue: replay %s: %w", path, err))
	}
	if err := f.Truncate(good); err != nil {
		return fail(fmt.Errorf("localqueue: cut torn journal tail: %w", err))
	}
	if _, err := f.Seek(good, io.SeekStart); err != nil {
		return fail(fmt.Errorf("localqueue: seek journal: %w", err))
	}
	j := &journal{dir: dir, cur: newJfile(f), w: bufio.NewWriterSize(f, 64<<10), synced: good, records: n, unlock: unlock}
	j.written.Store(good)
	return j, nil
}

// readJournal replays r's records. Bodies are skipped, not read into memory: each
// message gets its body's offset instead.
func readJournal(r io.Reader, apply func(record) error) (good int64, n int, err error) {
	br := bufio.NewReaderSize(r, 1<<20)
	line := 0
	for {
		b, err := br.ReadBytes('\n')
		if errors.Is(err, io.EOF) {
			// b (if any) is a torn last write: not acknowledged, dropped.
			return good, n, nil
		}
		if err != nil {
			return good, n, err
		}
		line++
		var rec record
		if err := json.Unmarshal(bytes.TrimSpace(b), &rec); err != nil {
			return good, n, fmt.Errorf("line %d: %w", line, err)
		}
		size := int64(len(b))
		if err := locateBodies(&rec, good+size); err != nil {
			return good, n, fmt.Errorf("line %d: %w", line, err)
		}
		if rec.Block > 0 {
			lines, complete, err := skipBlock(br, rec.Block)
			if err != nil {
				return good, n, fmt.Errorf("line %d: %w", line, err)
			}
			if !complete {
				return good, n, nil // torn in its bodies: dropped like a torn line
			}
			line += lines
			size += rec.Block + 1
		}
		if err := apply(rec); err != nil {
			return good, n, fmt.Errorf("line %d (%s): %w", line, rec.Op, err)
		}
		good += size
		n++
	}
}

// locateBodies sets where each message's body is, its block starting at blockOff.
func locateBodies(rec *record, blockOff int64) error {
	off := blockOff
	for i := range rec.Msgs {
		m := &rec.Msgs[i]
		switch {
		case m.Len < 0:
			return fmt.Errorf("message %d: negative body length %d", m.Seq, m.Len)
		case m.Len > 0 && m.Body != nil:
			return fmt.Errorf("message %d: body both inline and in the block", m.Seq)
		case m.Len > 0:
			m.off, m.stored = off, true
			off += int64(m.Len)
		case len(m.Body) > 0:
			// An older journal's inline body: held in memory until compaction moves it out.
			m.data, m.Len, m.CRC = m.Body, len(m.Body), crc32.Checksum(m.Body, castagnoli)
		}
		m.Body = nil
	}
	if off-blockOff != rec.Block {
		return fmt.Errorf("body lengths add up to %d bytes, the block has %d", off-blockOff, rec.Block)
	}
	return nil
}

// skipBlock passes over a record's body block and its closing newline without keeping
// it, counting the lines in it (so errors name the right line). complete is false when
// the file ends first: a torn write.
func skipBlock(br *bufio.Reader, size int64) (lines int, complete bool, err error) {
	for size > 0 {
		b, err := br.Peek(int(min(size, int64(br.Size()))))
		if len(b) == 0 && err != nil {
			if errors.Is(err, io.EOF) {
				return lines, false, nil
			}
			return lines, false, err
		}
		lines += bytes.Count(b, []byte{'\n'})
		br.Discard(len(b))
		size -= int64(len(b))
	}
	c, err := br.ReadByte()
	if errors.Is(err, io.EOF) {
		return lines, false, nil
	}
	if err != nil {
		return lines, false, err
	}
	if c != '\n' {
		return lines, false, errors.New("body block not followed by a newline")
	}
	return lines + 1, true, nil
}

// writeRecord writes r at file offset pos: its JSON line, then its messages' bodies
// (from their data, else copied from src at their old offset, checked against their
// CRC) and a newline. It sets each message's offset to where its body now is.
func writeRecord(w io.Writer, pos int64, r *record, src io.ReaderAt, buf []byte) (int64, error) {
	r.Block = 0
	for i := range r.Msgs {
		m := &r.Msgs[i]
		if m.data != nil {
			m.Len, m.CRC = len(m.data), crc32.Checksum(m.data, castagnoli)
		}
		r.Block += int64(m.Len)
	}
	b, err := json.Marshal(r)
	if err != nil {
		return 0, fmt.Errorf("encode journal record: %w", err)
	}
	b = append(b, '\n')
	if _, err := w.Write(b); err != nil {
		return 0, fmt.Errorf("write journal: %w", err)
	}
	off := pos + int64(len(b))
	if r.Block == 0 {
		return off - pos, nil
	}
	for i := range r.Msgs {
		m := &r.Msgs[i]
		if m.Len == 0 {
			continue
		}
		if m.data != nil {
			if _, err := w.Write(m.data); err != nil {
				return 0, fmt.Errorf("write journal: %w", err)
			}
		} else if err := copyBody(w, src, m, buf); err != nil {
			return 0, err
		}
		m.off, m.stored = off, true
		off += int64(m.Len)
	}
	if _, err := w.Write([]byte{'\n'}); err != nil {
		return 0, fmt.Errorf("write journal: %w", err)
	}
	return off + 1 - pos, nil
}

// copyBody streams m's stored body from src to w through buf, checking its CRC.
func copyBody(w io.Writer, src io.ReaderAt, m *msgJSON, buf []byte) error {
	if !m.stored || src == nil {
		return fmt.Errorf("message %d: body of %d bytes is nowhere", m.Seq, m.Len)
	}
	var sum uint32
	for done := 0; done < m.Len; {
		k := min(len(buf), m.Len-done)
		if _, err := src.ReadAt(buf[:k], m.off+int64(done)); err != nil {
			return fmt.Errorf("read message %d body at offset %d: %w", m.Seq, m.off, pathless(err))
		}
		sum = crc32.Update(sum, castagnoli, buf[:k])
		if _, err := w.Write(buf[:k]); err != nil {
			return fmt.Errorf("write journal: %w", err)
		}
		done += k
	}
	if sum != m.CRC {
		return fmt.Errorf("message %d: body at offset %d fails its checksum", m.Seq, m.off)
	}
	return nil
}

// pathless drops the file name from a read error: after a compaction the open file
// still carries the temporary name it was written under, which would mislead.
func pathless(err error) error {
	var pe *os.PathError
	if errors.As(err, &pe) {
		return pe.Err
	}
	return err
}

// readBody reads a stored body of n bytes at off from jf (which the caller holds a
// reference to) and checks it against crc.
func readBody(jf *jfile, seq, off int64, n int, crc uint32) ([]byte, error) {
	b := make([]byte, n)
	if _, err := jf.f.ReadAt(b, off); err != nil {
		return nil, fmt.Errorf("read message %d body at offset %d of the journal: %w", seq, off, pathless(err))
	}
	if crc32.Checksum(b, castagnoli) != crc {
		return nil, fmt.Errorf("message %d: body at offset %d of the journal fails its checksum", seq, off)
	}
	return b, nil
}

// append writes records (under Queues.mu) and returns the ticket to sync. The
// messages' offsets are set to where their bodies were written.
func (j *journal) append(recs ...record) (ticket, error) {
	// No smu here: cur and gen change only in compact, which also runs under
	// Queues.mu, and waiting for a Sync in progress would stall the queues.
	start := j.written.Load()
	pos := start
	for i := range recs {
		n, err := writeRecord(j.w, pos, &recs[i], nil, nil)
		if err != nil {
			return ticket{}, fmt.Errorf("localqueue: %w", err)
		}
		pos += n
	}
	if err := j.w.Flush(); err != nil {
		return ticket{}, fmt.Errorf("localqueue: write journal: %w", err)
	}
	j.records += len(recs)
	j.written.Store(pos)
	return ticket{gen: j.gen, off: pos}, nil
}

// sync makes the append behind t durable.
func (j *journal) sync(t ticket) error {
	j.smu.Lock()
	defer j.smu.Unlock()
	// After close everything was synced (close syncs first).
	if j.closed || t.gen != j.gen || j.synced >= t.off {
		return nil
	}
	target := j.written.Load()
	if err := j.cur.f.Sync(); err != nil {
		return fmt.Errorf("localqueue: sync journal: %w", err)
	}
	j.synced = target
	return nil
}

// ref returns the current file with a reference taken, for a body read (under
// Queues.mu, so that the offsets the caller read belong to this file). The caller
// releases it.
func (j *journal) ref() *jfile {
	j.cur.acquire()
	return j.cur
}

// compact replaces the journal with the records snapshot emits (called under
// Queues.mu, so no append runs meanwhile). Records are written as they come and bodies
// streamed from the current file, so the snapshot's bodies are never all in memory.
// The new file is written and synced beside the old one, then renamed over it: a crash
// leaves either the old journal or the new one. Emitted messages' offsets are the new
// ones once emit returns; the caller uses them only if compact succeeds (until then the
// old offsets hold). Readers holding the old file keep it open until they are done.
func (j *journal) compact(snapshot func(emit func(*record) error) error) error {
	path := filepath.Join(j.dir, journalFile)
	tmp := path + ".tmp"
	f, err := os.OpenFile(tmp, os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return fmt.Errorf("localqueue: compact: %w", err)
	}
	fail := func(err error) error {
		f.Close()
		os.Remove(tmp)
		return fmt.Errorf("localqueue: compact: %w", err)
	}
	bw := bufio.NewWriterSize(f, 256<<10)
	buf := make([]byte, 64<<10)
	var pos int64
	n := 0
	err = snapshot(func(r *record) error {
		k, err := writeRecord(bw, pos, r, j.cur.f, buf)
		pos += k
		n++
		return err
	})
	if err != nil {
		return fail(err)
	}
	if err := bw.Flush(); err != nil {
		return fail(err)
	}
	if _, err := f.Seek(pos, io.SeekStart); err != nil {
		return fail(err)
	}
	if err := f.Sync(); err != nil {
		return fail(err)
	}
	j.smu.Lock()
	defer j.smu.Unlock()
	if err := os.Rename(tmp, path); err != nil {
		return fail(err)
	}
	syncDir(j.dir)
	old := j.cur
	j.cur = newJfile(f)
	j.w.Reset(f)
	_ = old.release() // closed now, or by its last reader
	j.gen++
	j.written.Store(pos)
	j.synced = pos
	j.records = n
	return nil
}

func (j *journal) close() error {
	j.smu.Lock()
	defer j.smu.Unlock()
	if j.closed {
		return nil
	}
	j.closed = true
	err := j.cur.f.Sync()
	if cerr := j.cur.release(); err == nil {
		err = cerr
	}
	j.unlock()
	return err
}

// syncDir makes a rename durable where the platform allows it (best effort: some
// systems cannot open or sync a directory).
func syncDir(dir string) {
	if d, err := os.Open(dir); err == nil {
		_ = d.Sync()
		d.Close()
	}
}
