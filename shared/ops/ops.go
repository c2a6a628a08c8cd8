// Package ops is what an administrator uses to run the sync: the status page, manual
// sync runs, auto-sync on a period, and the dead-letter view with replay
// (docs/operations.md). Its HTTP routes are served by the admin functions in Azure and
// by local mode's listener alike.
package ops

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/nopsync/nopsync/shared/delivery"
	"github.com/nopsync/nopsync/shared/nop"
	"github.com/nopsync/nopsync/shared/queue"
	"github.com/nopsync/nopsync/shared/state"
	"github.com/nopsync/nopsync/shared/storesync"
)

// Connection is what the status page says about Dynamics 365.
type Connection struct {
	Reachable      bool   `json:"reachable"`
	OrganizationID string `json:"organizationId"`
	UserID         string `json:"userId"`
	Currency       string `json:"currency"`
	Error          string `json:"error"` // "" when nothing is wrong
}

// MarshalJSON writes the page's shape (docs/operations.md): every key present, and null
// for what is not known or not wrong ("error": null on a healthy connection).
func (c Connection) MarshalJSON() ([]byte, error) {
	orNull := func(s string) *string {
		if s == "" {
			return nil
		}
		return &s
	}
	return json.Marshal(struct {
		Reachable      bool    `json:"reachable"`
		OrganizationID *string `json:"organizationId"`
		UserID         *string `json:"userId"`
		Currency       *string `json:"currency"`
		Error          *string `json:"error"`
	}{c.Reachable, orNull(c.OrganizationID), orNull(c.UserID), orNull(c.Currency), orNull(c.Error)})
}

// WebhookSecrets lists the webhook secrets events are signed with (intake.Secrets).
type WebhookSecrets interface {
	WebhookSecrets(ctx context.Context) ([]string, error)
}

// DataverseProbe checks the connection to Dynamics 365 (WhoAmI, store currency).
type DataverseProbe interface {
	Probe(ctx context.Context) Connection
}

// StaleCounter reports how many stale events each entity had acknowledged without
// applying them (an older state than the one already applied).
type StaleCounter interface {
	StaleSkipped(ctx context.Context) (map[state.Entity]int64, error)
}

// SecretExpiry reports the client secret's Key Vault expiry; nil when unknown (secret
// given as a setting, or no expiry set).
type SecretExpiry interface {
	ClientSecretExpiry(ctx context.Context) (*time.Time, error)
}

// queueOf names entity's queue ("" for an unknown entity, which callers have ruled out).
func queueOf(e state.Entity) string {
	q, _ := nop.Queue(e)
	return q
}

// Options configure Ops.
type Options struct {
	State       state.Store
	Sender      queue.Sender
	DeadLetters queue.DeadLetters
	Inspector   queue.Inspector
	Probe       DataverseProbe
	Secret      SecretExpiry
	// WebhookSecrets is where the intake reads the webhook secrets (nil: none, local mode
	// accepting unsigned events). The status page is not healthy while they can't be read
	// or there are none: every event is refused then.
	WebhookSecrets WebhookSecrets
	Stale          StaleCounter // optional

	// InvalidMessageKind names the state docs in which the engine records queue messages
	// that failed validation (syncer.InvalidMessageKind); "" shows none.
	InvalidMessageKind string

	// WritesEnabled mirrors DATAVERSE_WRITES_ENABLED: with writes on, auto-sync also
	// re-sends entities left pending (received while writes were off).
	WritesEnabled bool

	AutoSyncEnabled bool
	AutoSyncPeriod  time.Duration
	// ReplayLimit bounds the dead-lettered messages one auto-sync run replays per queue.
	ReplayLimit int
	// ReplaysPerMessage bounds how often auto-sync replays one message (counted in its
	// failure record, delivery.Failure): a message that keeps failing then stays listed
	// with its reason until an admin replays it (default 3).
	ReplaysPerMessage int
	// ProbeTTL caches the Dataverse probe so the status page stays cheap (default 30 s).
	ProbeTTL time.Duration

	// Store reads the store's database (the store reader); nil: not configured, runs
	// re-send from the app's own state only.
	Store storesync.Source
	// StoreHash is the hash Store's page hashes are made with (nopdb.DataHash).
	StoreHash func(data []byte) string
	// StoreCurrencyCode is STORE_CURRENCY_CODE: a store run fails when the store's primary
	// currency differs.
	StoreCurrencyCode string
	// StorePageSize is the rows per page of a store run (default storesync.DefaultPageSize).
	StorePageSize int
	// StoreLease is how long a store run's claim holds without renewal (default 3 min):
	// a run whose instance died is resumed by the next timer tick after it.
	StoreLease time.Duration
	// StoreDrainWait bounds how long a store run waits, before reading orders, for the
	// customers and products it queued to be applied (default 15 min).
	StoreDrainWait time.Duration

	Now func() time.Time
	Log *slog.Logger
}

// Ops runs the administrator's operations.
type Ops struct {
	o        Options
	instance string

	mu        sync.Mutex
	probed    time.Time
	lastConn  Connection
	storeAt   time.Time
	lastStore storeHealth

	bg     context.Context // store runs run in the background until Close
	stop   context.CancelFunc
	active sync.WaitGroup
}

// New returns Ops with defaults filled in.
func New(o Options) *Ops {
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
	if o.ReplayLimit <= 0 {
		o.ReplayLimit = 100
	}
	if o.ReplaysPerMessage <= 0 {
		o.ReplaysPerMessage = 3
	}
	if o.ProbeTTL <= 0 {
		o.ProbeTTL = 30 * time.Second
	}
	if o.AutoSyncPeriod <= 0 {
		o.AutoSyncPeriod = time.Hour
	}
	if o.StoreLease <= 0 {
		o.StoreLease = 3 * time.Minute
	}
	if o.StoreDrainWait <= 0 {
		o.StoreDrainWait = 15 * time.Minute
	}
	bg, stop := context.WithCancel(context.Background())
	return &Ops{o: o, instance: newRunID(o.Now()), bg: bg, stop: stop}
}

// Close stops the store runs this instance is running (their claims are released, so
// another instance or a restart resumes them from their checkpoint) and waits for them.
func (o *Ops) Close() {
	o.stop()
	o.active.Wait()
}

// Scopes of a sync run.
const (
	ScopeFailed = "failed"
	ScopeAll    = "all"
)

// Run is one sync run, manual or automatic, as the status page shows it.
type Run struct {
	ID         string         `json:"id"`
	Trigger    string         `json:"trigger"` // manual | auto
	Scope      string         `json:"scope"`
	Entities   []state.Entity `json:"entities"`
	StartedAt  time.Time      `json:"startedAt"`
	FinishedAt *time.Time     `json:"finishedAt"`
	Queued     int            `json:"queued"`   // entities re-sent to their queues
	Replayed   int            `json:"replayed"` // dead-lettered messages replayed
	Outcome    string         `json:"outcome"`  // running | succeeded | failed
	Error      string         `json:"error,omitempty"`

	// Source is "store" for runs that read the store's database (Store holds their
	// progress per entity, which is also their checkpoint), else "state".
	Source string                               `json:"source"`
	Store  map[state.Entity]*storesync.Progress `json:"store,omitempty"`
	// Note says why the run is not quite what was asked for (a store run asked for
	// without the store reader's settings re-drives from state).
	Note string `json:"note,omitempty"`
}

const (
	docRuns     = "run"
	docAutoSync = "autosync"
	keyLastAuto = "last"
	// docRunIndex keeps the newest runs' ids, so the status page reads a few run docs
	// instead of every run ever made (one per auto-sync period: half a million a year at
	// a one-minute period; the state store deletes nothing).
	docRunIndex    = "runindex"
	keyRecentRuns  = "recent"
	recentRunsKept = 20
)

// runIndex is the docRunIndex doc: the newest runs' ids, newest first, and the last
// auto-sync and store runs' (which may be older than the others).
type runIndex struct {
	Recent    []string `json:"recent"`
	LastAuto  string   `json:"lastAuto,omitempty"`
	LastStore string   `json:"lastStore,omitempty"`
}

func newRunID(now time.Time) string {
	var b [4]byte
	rand.Read(b[:])
	return now.UTC().Format("20060102T150405.000000000Z") + "-" + hex.EncodeToString(b[:])
}

// Sync re-sends entities to their queues: scope "failed" re-sends those whose last sync
// failed or that are still pending (received while writes were off, or never written),
// "all" every entity the app has state for, each from its last received event.
// They travel as chunk messages, so the queue functions write them with bulk operations.
func (o *Ops) Sync(ctx context.Context, entities []state.Entity, scope, trigger string) (*Run, error) {
	return o.sync(ctx, entities, scope, trigger, "")
}

// sync is Sync, with a note kept on the run.
func (o *Ops) sync(ctx context.Context, entities []state.Entity, scope, trigger, note string) (*Run, error) {
	run, err := o.startSync(ctx, entities, scope, trigger, note)
	if err != nil {
		return nil, err
	}
	if err := o.driveSync(ctx, run); err != nil {
		return run, err
	}
	return run, nil
}

// startSync records a new re-drive run (driveSync does it).
func (o *Ops) startSync(ctx context.Context, entities []state.Entity, scope, trigger, note string) (*Run, error) {
	if len(entities) == 0 {
		entities = state.Entities
	}
	if scope == "" {
		scope = ScopeFailed
	}
	if scope != ScopeFailed && scope != ScopeAll {
		return nil, fmt.Errorf("scope must be %q or %q, got %q", ScopeFailed, ScopeAll, scope)
	}
	run := &Run{ID: newRunID(o.o.Now()), Trigger: trigger, Scope: scope, Entities: entities, StartedAt: o.o.Now().UTC(), Outcome: "running", Source: SourceState, Note: note}
	if err := o.saveRun(ctx, run); err != nil {
		return nil, err
	}
	return run, nil
}

// driveSync re-sends the run's entities and records how it ended.
func (o *Ops) driveSync(ctx context.Context, run *Run) error {
	var statuses []state.Status // scope all: every record
	if run.Scope == ScopeFailed {
		statuses = []state.Status{state.Failed, state.Pending}
	}
	n, err := o.resend(ctx, run.ID, run.Entities, statuses, nil)
	run.Queued = n
	o.finish(ctx, run, err)
	return err
}

func (o *Ops) finish(ctx context.Context, run *Run, err error) {
	// Recorded even when the invocation's context has ended (the error may be that very
	// deadline): a run left "running" would hide its failure for good.
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
	defer cancel()
	done := o.o.Now().UTC()
	run.FinishedAt = &done
	run.Outcome = "succeeded"
	if err != nil {
		run.Outcome, run.Error = "failed", err.Error()
	}
	if serr := o.saveRun(ctx, run); serr != nil {
		o.o.Log.Error("recording sync run", "run", run.ID, "error", serr)
	}
	o.o.Log.Info("sync run finished", "run", run.ID, "trigger", run.Trigger, "scope", run.Scope, "queued", run.Queued, "replayed", run.Replayed, "outcome", run.Outcome)
}

func (o *Ops) saveRun(ctx context.Context, run *Run) error {
	b, err := json.Marshal(run)
	if err != nil {
		return err
	}
	doc, err := o.o.State.GetDoc(ctx, docRuns, run.ID)
	isNew := errors.Is(err, state.ErrNotFound)
	switch {
	case isNew:
		doc = &state.Doc{Kind: docRuns, Key: run.ID}
	case err != nil:
		return fmt.Errorf("read run %s: %w", run.ID, err)
	}
	doc.Value = b
	if err := o.o.State.SaveDoc(ctx, doc); err != nil {
		return fmt.Errorf("save run %s: %w", run.ID, err)
	}
	if isNew {
		if err := o.indexRun(ctx, run); err != nil {
			// The run is kept; only the status page's list misses it.
			o.o.Log.Warn("recording the run in the recent runs", "run", run.ID, "error", err)
		}
	}
	return nil
}

// indexRun puts a new run in the run index (read, change, save with its ETag; again on a
// conflict with another instance's run).
func (o *Ops) indexRun(ctx context.Context, run *Run) error {
	_, err := state.UpdateDoc(ctx, o.o.State, docRunIndex, keyRecentRuns, 8, func(cur []byte) ([]byte, bool) {
		var idx runIndex
		if len(cur) > 0 && json.Unmarshal(cur, &idx) != nil {
			idx = runIndex{} // unreadable: started again
		}
		if !slices.Contains(idx.Recent, run.ID) {
			idx.Recent = append(idx.Recent, run.ID)
		}
		slices.SortFunc(idx.Recent, func(a, b string) int { return strings.Compare(b, a) }) // newest first
		idx.Recent = idx.Recent[:min(len(idx.Recent), recentRunsKept)]
		if run.Trigger == "auto" && run.ID > idx.LastAuto {
			idx.LastAuto = run.ID
		}
		if run.Source == SourceStore && run.ID > idx.LastStore {
			idx.LastStore = run.ID
		}
		v, _ := json.Marshal(idx)
		return v, true
	})
	return err
}

// statusRuns returns what the status page shows of runs: the newest five, the last
// auto-sync run and the last store run, read through the run index (a handful of docs).
// Without an index (a state table written before it) it lists every run.
func (o *Ops) statusRuns(ctx context.Context) (recent []Run, lastAuto, lastStore *Run, err error) {
	doc, err := o.o.State.GetDoc(ctx, docRunIndex, keyRecentRuns)
	if errors.Is(err, state.ErrNotFound) {
		runs, err := o.Runs(ctx, -1)
		if err != nil {
			return nil, nil, nil, err
		}
		for i := range runs {
			if runs[i].Trigger == "auto" && lastAuto == nil {
				lastAuto = &runs[i]
			}
			if runs[i].Source == SourceStore && lastStore == nil {
				lastStore = &runs[i]
			}
		}
		return runs[:min(len(runs), 5)], lastAuto, lastStore, nil
	}
	if err != nil {
		return nil, nil, nil, fmt.Errorf("the run index: %w", err)
	}
	var idx runIndex
	if err := json.Unmarshal(doc.Value, &idx); err != nil {
		return nil, nil, nil, fmt.Errorf("the run index: %w", err)
	}
	read := map[string]*Run{}
	get := func(id string) (*Run, error) {
		if r, ok := read[id]; ok || id == "" {
			return r, nil
		}
		d, err := o.o.State.GetDoc(ctx, docRuns, id)
		if errors.Is(err, state.ErrNotFound) {
			read[id] = nil
			return nil, nil
		}
		if err != nil {
			return nil, fmt.Errorf("run %s: %w", id, err)
		}
		var r Run
		if json.Unmarshal(d.Value, &r) != nil {
			read[id] = nil
			return nil, nil
		}
		read[id] = &r
		return &r, nil
	}
	for _, id := range idx.Recent {
		if len(recent) == 5 {
			break
		}
		r, err := get(id)
		if err != nil {
			return nil, nil, nil, err
		}
		if r != nil {
			recent = append(recent, *r)
		}
	}
	if lastAuto, err = get(idx.LastAuto); err != nil {
		return nil, nil, nil, err
	}
	if lastStore, err = get(idx.LastStore); err != nil {
		return nil, nil, nil, err
	}
	return recent, lastAuto, lastStore, nil
}

// Runs returns the most recent runs (at most max; all when max < 0), newest first.
func (o *Ops) Runs(ctx context.Context, max int) ([]Run, error) {
	docs, err := o.o.State.ListDocs(ctx, docRuns)
	if err != nil {
		return nil, fmt.Errorf("list runs: %w", err)
	}
	sort.Slice(docs, func(i, j int) bool { return docs[i].Key > docs[j].Key })
	var runs []Run
	for _, d := range docs {
		if len(runs) == max {
			break
		}
		var r Run
		if json.Unmarshal(d.Value, &r) == nil {
			runs = append(runs, r)
		}
	}
	return runs, nil
}

// resend re-sends the stored events of entities' records whose status is in statuses
// (all when none) and that keep accepts (all when nil), as chunk messages. Their ids are
// new ("resync-<run>-..."): a chunk id derived from event ids would be dropped by
// duplicate detection.
func (o *Ops) resend(ctx context.Context, runID string, entities []state.Entity, statuses []state.Status, keep func(*state.Record) bool) (int, error) {
	total := 0
	for _, ent := range entities {
		q, ok := nop.BulkQueue(ent) // re-syncs are bulk work: live events go ahead of them
		if !ok {
			return total, fmt.Errorf("unknown entity %q", ent)
		}
		c := &chunker{entity: ent, runID: runID}
		send := func(msg queue.Message) error {
			if err := o.o.Sender.Send(ctx, q, []queue.Message{msg}); err != nil {
				return fmt.Errorf("send to %s: %w", q, err)
			}
			total += nop.CountEvents(msg.Body)
			return nil
		}
		err := o.o.State.Scan(ctx, ent, statuses, func(r *state.Record) error {
			ev := storedEvent(r.Data)
			if ev == nil || (keep != nil && !keep(r)) {
				return nil // nothing received yet (e.g. a stub made for an order line)
			}
			msg, full, err := c.add(ev)
			if err != nil {
				return err
			}
			if full {
				return send(msg)
			}
			return nil
		})
		if err == nil {
			var msg queue.Message
			var ok bool
			if msg, ok, err = c.flush(); ok {
				err = send(msg)
			}
		}
		if err != nil {
			return total, fmt.Errorf("re-send %s: %w", ent, err)
		}
	}
	return total, nil
}

// storedEvent returns the stored event JSON, or nil when the record holds none.
func storedEvent(data []byte) json.RawMessage {
	var probe struct {
		ID   string          `json:"id"`
		Type string          `json:"type"`
		Data json.RawMessage `json:"data"`
	}
	if len(data) == 0 || json.Unmarshal(data, &probe) != nil || probe.ID == "" || probe.Type == "" || len(probe.Data) == 0 {
		return nil
	}
	return json.RawMessage(data)
}

type chunker struct {
	entity state.Entity
	runID  string
	events []json.RawMessage
	size   int
	n      int
}

// add appends ev, returning a full chunk to send first when ev does not fit.
func (c *chunker) add(ev json.RawMessage) (queue.Message, bool, error) {
	var out queue.Message
	var full bool
	var err error
	if len(c.events) > 0 && (c.size+len(ev)+200 > nop.MaxChunkBodyBytes || len(c.events) == nop.MaxEvents) {
		out, full, err = c.flush()
	}
	c.events = append(c.events, ev)
	c.size += len(ev) + 1
	return out, full, err
}

func (c *chunker) flush() (queue.Message, bool, error) {
	if len(c.events) == 0 {
		return queue.Message{}, false, nil
	}
	c.n++
	msg, err := nop.ResyncChunk(fmt.Sprintf("resync-%s-%s-%d", c.runID, c.entity, c.n), c.events)
	c.events, c.size = nil, 0
	if err != nil {
		return queue.Message{}, false, err
	}
	msg.ApplicationProperties = map[string]any{"runId": c.runID}
	return msg, true, nil
}

// autoSyncDoc is the last auto-sync run, kept in the state store so scale-out and
// restarts don't double it.
type autoSyncDoc struct {
	LastRunAt time.Time `json:"lastRunAt"`
	RunID     string    `json:"runId"`
}

// AutoSync runs when auto-sync is enabled and the period has passed since the last run:
// it re-drives transient failures, replays dead-lettered messages that failed for
// transient reasons (at most ReplayLimit per queue), and records the run. With the store
// reader configured the same run then reads the store (in the background; the run is
// returned while it reads). It returns nil when nothing was due. Claiming the run with
// the stored doc's ETag (claimDoc) makes one instance win when several timers fire at
// once. Every tick, due or not and enabled or not, first resumes a store run whose
// instance stopped (ResumeStoreRun).
func (o *Ops) AutoSync(ctx context.Context) (*Run, error) {
	if _, err := o.ResumeStoreRun(ctx); err != nil {
		o.o.Log.Error("resuming a store run", "error", err)
	}
	if !o.o.AutoSyncEnabled {
		return nil, nil
	}
	now := o.o.Now().UTC()
	runID := newRunID(now)
	claimed, err := o.claimDoc(ctx, docAutoSync, keyLastAuto, func(cur []byte) ([]byte, bool) {
		var last autoSyncDoc
		if cur != nil && json.Unmarshal(cur, &last) == nil && now.Sub(last.LastRunAt) < o.o.AutoSyncPeriod {
			return nil, false
		}
		v, _ := json.Marshal(autoSyncDoc{LastRunAt: now, RunID: runID})
		return v, true
	})
	if err != nil {
		return nil, fmt.Errorf("auto-sync: claim run: %w", err)
	}
	if claimed == nil {
		return nil, nil // not due, or another instance claimed this run
	}
	run := &Run{ID: runID, Trigger: "auto", Scope: ScopeFailed, Entities: state.Entities, StartedAt: now, Outcome: "running", Source: SourceState}
	// With the store reader configured the run also reads the store, unless another
	// store run is reading it right now.
	var lease *state.Doc
	if o.o.Store != nil {
		l, active, err := o.claimStoreLease(ctx, runID)
		switch {
		case err != nil:
			o.o.Log.Error("auto-sync: claim the store run", "error", err)
		case l == nil:
			o.o.Log.Info("auto-sync: the store is being read by another run", "run", active)
		default:
			lease = l
			run.Source, run.Store = SourceStore, newProgress(run.Entities)
		}
	}
	if err := o.saveRun(ctx, run); err != nil {
		return nil, err
	}
	var errs []error
	n, err := o.resendTransient(ctx, run.ID)
	run.Queued = n
	if err != nil {
		errs = append(errs, err)
	}
	if o.o.DeadLetters != nil {
		for _, ent := range state.Entities {
			for _, q := range nop.EntityQueues(ent) {
				replayed, err := o.replayTransient(ctx, q)
				run.Replayed += replayed
				if err != nil {
					errs = append(errs, err)
				}
			}
		}
	}
	err = errors.Join(errs...)
	if lease != nil {
		snap := run.snapshot()
		o.goStoreRun(run, lease, err)
		return snap, nil
	}
	o.finish(ctx, run, err)
	return run, err
}

// claimDoc is how a run is claimed once across instances (the auto-sync period, the
// store run's lease): it reads the doc, asks take whether this instance may have it
// (cur is nil when there is none) and what to store, and saves that with the ETag it
// read, so when several instances try at once exactly one wins. It returns the saved
// doc, or nil when take declined or another instance won.
func (o *Ops) claimDoc(ctx context.Context, kind, key string, take func(cur []byte) ([]byte, bool)) (*state.Doc, error) {
	doc, err := state.UpdateDoc(ctx, o.o.State, kind, key, 1, take)
	if errors.Is(err, state.ErrConflict) {
		return nil, nil
	}
	return doc, err
}

// resendTransient re-sends entities whose last sync failed transiently, and, with writes
// on, those left pending; permanent failures wait for a new event or a manual run
// (retrying them can't help). Entities a writer holds (an unexpired lease) are being
// synced right now: during an import that is every entity of the chunks in flight, new
// ones pending, and re-sending them would write them all a second time.
func (o *Ops) resendTransient(ctx context.Context, runID string) (int, error) {
	statuses := []state.Status{state.Failed}
	if o.o.WritesEnabled {
		statuses = append(statuses, state.Pending)
	}
	now := o.o.Now()
	return o.resend(ctx, runID, state.Entities, statuses, func(r *state.Record) bool {
		if r.LeaseOwner != "" && now.Before(r.LeaseUntil) {
			return false
		}
		return r.Status != state.Failed || r.Transient
	})
}

// TransientDeadLetter says whether a dead-lettered message failed for a reason a retry
// can fix, from the broker's reason alone. The queue functions fail an invocation only
// for transient reasons (throttling, network, 5xx, missing currency, the state store),
// so messages dead-lettered for exceeding the delivery count or expiring are
// transient; anything else (a message the broker or a person dead-lettered for its
// content) is not. Why the app failed it is not in the dead letter (the broker's
// description is a fixed text): it is in the message's failure record.
func TransientDeadLetter(d queue.DeadLetter) bool {
	switch strings.ToLower(d.Reason) {
	case "maxdeliverycountexceeded", "ttlexpiredexception":
		return true
	}
	return false
}

// deadLetterFailure is the failure record of a dead letter (nil when none, or when the
// store can't be read: the dead letter is then listed without its reason).
func (o *Ops) deadLetterFailure(ctx context.Context, q string, d queue.DeadLetter) *delivery.Failure {
	f, err := delivery.Lookup(ctx, o.o.State, q, delivery.OriginalID(d.MessageID, d.ApplicationProperties))
	if err != nil {
		o.o.Log.Warn("reading a dead letter's failure record", "queue", q, "message", d.MessageID, "error", err)
		return nil
	}
	return f
}

// autoReplayable says whether auto-sync replays a dead letter: it failed for a
// transient reason and auto-sync replayed it fewer than ReplaysPerMessage times.
func (o *Ops) autoReplayable(d queue.DeadLetter, f *delivery.Failure) bool {
	return TransientDeadLetter(d) && (f == nil || f.Replays < o.o.ReplaysPerMessage)
}

func (o *Ops) replayTransient(ctx context.Context, q string) (int, error) {
	// Peek past the messages that stay listed, so they don't crowd out the others
	// (bounded: each costs a failure-record read).
	dls, err := o.o.DeadLetters.PeekDeadLetters(ctx, q, 10*o.o.ReplayLimit)
	if err != nil {
		return 0, fmt.Errorf("peek dead letters of %s: %w", q, err)
	}
	var ids []string
	orig := map[string]string{}
	for _, d := range dls {
		if len(ids) == o.o.ReplayLimit {
			break
		}
		if o.autoReplayable(d, o.deadLetterFailure(ctx, q, d)) {
			ids = append(ids, d.MessageID)
			orig[d.MessageID] = delivery.OriginalID(d.MessageID, d.ApplicationProperties)
		}
	}
	if len(ids) == 0 {
		return 0, nil
	}
	done, err := o.o.DeadLetters.Replay(ctx, q, ids)
	for _, id := range done {
		if _, cerr := delivery.CountReplay(ctx, o.o.State, q, orig[id], o.o.Now()); cerr != nil {
			o.o.Log.Warn("counting a replay", "queue", q, "message", id, "error", cerr)
		}
	}
	if err != nil {
		return len(done), fmt.Errorf("replay dead letters of %s: %w", q, err)
	}
	return len(done), nil
}
