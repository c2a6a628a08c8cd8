package localqueue

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
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

// record is one journal line. Every change of the queues' state is one record, written
// (and fsynced) before the change is acknowledged, so replaying the lines in order at
// open rebuilds the state. A batch of sent messages is one line, so a torn write loses
// the whole batch, never part of it.
type record struct {
	Op  string `json:"op"`
	Q   string `json:"q"`
	Seq int64  `json:"seq,omitempty"`

	Msgs []msgJSON `json:"msgs,omitempty"` // send, msg (snapshot)

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
	Body          []byte              `json:"body"`
	Props         map[string]propJSON `json:"props,omitempty"`
	EnqueuedAt    time.Time           `json:"at"`
	DeliveryCount int                 `json:"dc,omitempty"`
	LastError     string              `json:"err,omitempty"`
	Dead          bool                `json:"dead,omitempty"`
	Reason        string              `json:"reason,omitempty"`
	Description   string              `json:"desc,omitempty"`
	DeadAt        time.Time           `json:"deadAt,omitzero"`
}

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

// journal is the append-only file. Appends happen under Queues.mu (so file order is
// state-change order); fsync happens outside it with group commit: one Sync covers
// every append made before it, whoever asked.
type journal struct {
	dir string

	smu     sync.Mutex // held by sync and compaction; f and gen change under both smu and Queues.mu
	f       *os.File
	gen     uint64 // bumped by compaction: tickets of older generations are durable in the snapshot
	synced  int64
	written atomic.Int64

	records int // appended since the last compaction (under Queues.mu)
	closed  bool
	unlock  func() // releases the directory lock
}

// openJournal reads every record of dir's journal, calls apply for each, and returns
// the journal open for appending. A last line without its newline is a torn write from
// a crash: it is dropped and cut off.
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
	j := &journal{dir: dir, f: f, synced: good, records: n, unlock: unlock}
	j.written.Store(good)
	return j, nil
}

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
		if err := apply(rec); err != nil {
			return good, n, fmt.Errorf("line %d (%s): %w", line, rec.Op, err)
		}
		good += int64(len(b))
		n++
	}
}

// append writes records (under Queues.mu) and returns the ticket to sync.
func (j *journal) append(recs ...record) (ticket, error) {
	var buf bytes.Buffer
	for _, r := range recs {
		b, err := json.Marshal(r)
		if err != nil {
			return ticket{}, fmt.Errorf("localqueue: encode journal record: %w", err)
		}
		buf.Write(b)
		buf.WriteByte('\n')
	}
	// No smu here: f and gen change only in compact, which also runs under
	// Queues.mu, and waiting for a Sync in progress would stall the queues.
	if _, err := j.f.Write(buf.Bytes()); err != nil {
		return ticket{}, fmt.Errorf("localqueue: write journal: %w", err)
	}
	j.records += len(recs)
	return ticket{gen: j.gen, off: j.written.Add(int64(buf.Len()))}, nil
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
	if err := j.f.Sync(); err != nil {
		return fmt.Errorf("localqueue: sync journal: %w", err)
	}
	j.synced = target
	return nil
}

// compact replaces the journal with snapshot (called under Queues.mu, so no append
// runs meanwhile). The new file is written and synced beside the old one, then renamed
// over it: a crash leaves either the old journal or the new one.
func (j *journal) compact(snapshot []record) error {
	var buf bytes.Buffer
	for _, r := range snapshot {
		b, err := json.Marshal(r)
		if err != nil {
			return fmt.Errorf("localqueue: encode snapshot: %w", err)
		}
		buf.Write(b)
		buf.WriteByte('\n')
	}
	path := filepath.Join(j.dir, journalFile)
	tmp := path + ".tmp"
	f, err := os.OpenFile(tmp, os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return fmt.Errorf("localqueue: compact: %w", err)
	}
	if _, err := f.Write(buf.Bytes()); err != nil {
		f.Close()
		return fmt.Errorf("localqueue: compact: %w", err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return fmt.Errorf("localqueue: compact: %w", err)
	}
	j.smu.Lock()
	defer j.smu.Unlock()
	if err := os.Rename(tmp, path); err != nil {
		f.Close()
		return fmt.Errorf("localqueue: compact: %w", err)
	}
	syncDir(j.dir)
	j.f.Close()
	j.f = f
	j.gen++
	j.written.Store(int64(buf.Len()))
	j.synced = int64(buf.Len())
	j.records = len(snapshot)
	return nil
}

func (j *journal) close() error {
	j.smu.Lock()
	defer j.smu.Unlock()
	if j.closed {
		return nil
	}
	j.closed = true
	err := j.f.Sync()
	if cerr := j.f.Close(); err == nil {
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
