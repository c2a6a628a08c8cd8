package storesync

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nopsync/nopsync/shared/apierror"
	"github.com/nopsync/nopsync/shared/intake"
	"github.com/nopsync/nopsync/shared/nop"
	"github.com/nopsync/nopsync/shared/queue"
	"github.com/nopsync/nopsync/shared/state"
)

// AgentOptions configure an Agent.
type AgentOptions struct {
	Source Source
	// EventsURL is the app's events URL: ".../api/events/{entity}" (the deployment's
	// EVENTS_URL output) or ".../api/events", to which "/<entity>" is added.
	EventsURL   string
	FunctionKey string // sent as x-functions-key; "" in local mode
	Secret      string // webhook secret signing X-Nop-Signature; "" sends unsigned (local mode)
	// StateFile keeps the checkpoint (cursor per entity of the pass under way) and, in
	// StateFile+".sent", the data hash sent per entity, so a restarted agent resumes
	// where it stopped and sends only what changed.
	StateFile string
	Period    time.Duration  // between the starts of two passes (default 60 min)
	PageSize  int            // rows per page and events per request (default and most 1000)
	Entities  []state.Entity // default all
	HTTP      *http.Client   // default a client with a 60 s timeout
	// MinBackoff and MaxBackoff bound the wait between retries of a request (defaults
	// 1 s and 1 min); a Retry-After answer is honoured within MaxBackoff.
	MinBackoff, MaxBackoff time.Duration
	// Resend forgets what earlier passes sent, so the next pass sends every row again: for
	// an app whose state was wiped or moved (it no longer knows what the agent sent). The
	// agent does the same by itself when EventsURL is not the one its state was kept for.
	Resend bool
	Log    *slog.Logger
	Now    func() time.Time
}

// Agent is push mode: it runs next to a store whose database Azure can't reach, reads the
// database with the store reader and POSTs what changed to the app's events URL as a
// store-side emitter would (docs/events.md: arrays of up to 1000 events, x-functions-key,
// X-Nop-Signature). Requests that fail for a transient reason (network, 429, 5xx) are
// retried with back-off, keeping their event ids, so the app drops repeats.
type Agent struct {
	o AgentOptions

	mu      sync.Mutex
	sent    map[state.Entity]map[string][16]byte // entity id → data hash sent and accepted
	pending map[string][16]byte                  // event id (passEventID) → data hash, for events being sent
	st      agentState
	tag     string // the pass's part of its event ids (passEventID)
	dirty   int    // pages since the sent index was last saved
}

// agentState is the checkpoint file.
type agentState struct {
	Pass         *agentPass `json:"pass,omitempty"`
	LastFinished time.Time  `json:"lastFinished,omitzero"`
	// EventsURL is the app the sent index is about: another app has seen none of it.
	EventsURL string `json:"eventsUrl,omitempty"`
}

type agentPass struct {
	StartedAt time.Time                  `json:"startedAt"`
	Progress  map[state.Entity]*Progress `json:"progress"`
}

// ErrAgentRefused: the app refused the agent's requests for a reason retrying can't fix
// (wrong function key or signature secret, wrong URL).
var ErrAgentRefused = errors.New("the app refused the request")

// NewAgent returns an Agent with defaults filled in.
func NewAgent(o AgentOptions) (*Agent, error) {
	if o.Source == nil || o.EventsURL == "" || o.StateFile == "" {
		return nil, errors.New("storesync: the agent needs a source, the events URL and a state file")
	}
	if o.Period <= 0 {
		o.Period = time.Hour
	}
	if o.PageSize <= 0 || o.PageSize > nop.MaxEvents {
		o.PageSize = nop.MaxEvents
	}
	if len(o.Entities) == 0 {
		o.Entities = state.Entities
	}
	if o.HTTP == nil {
		o.HTTP = &http.Client{Timeout: time.Minute}
	}
	// The events function never redirects; following one would carry the function key
	// and the signed body to wherever it points (Go's client forwards custom headers to
	// any host). A 3xx is an answer the agent reports (ErrAgentRefused).
	c := *o.HTTP
	c.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	o.HTTP = &c
	if o.MinBackoff <= 0 {
		o.MinBackoff = time.Second
	}
	if o.MaxBackoff < o.MinBackoff {
		o.MaxBackoff = max(time.Minute, o.MinBackoff)
	}
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	a := &Agent{o: o, sent: map[state.Entity]map[string][16]byte{}, pending: map[string][16]byte{}}
	if err := a.load(); err != nil {
		return nil, err
	}
	// The sent index stands for what the app holds; it can't be trusted for another app
	// (a new deployment, a wiped state table).
	forget := ""
	switch {
	case o.Resend:
		forget = "asked to send every row again (-resend)"
	case a.st.EventsURL != "" && a.st.EventsURL != o.EventsURL:
		forget = "the events URL is not the one the agent sent to before (" + a.st.EventsURL + ")"
	}
	if forget != "" {
		a.o.Log.Warn("agent: sending every row again: " + forget)
		a.sent = map[state.Entity]map[string][16]byte{}
		a.st.Pass = nil
		if err := a.saveSent(); err != nil {
			return nil, fmt.Errorf("agent state %s: %w", o.StateFile, err)
		}
	}
	a.st.EventsURL = o.EventsURL
	if err := a.saveState(); err != nil {
		return nil, fmt.Errorf("agent state %s: %w", o.StateFile, err)
	}
	return a, nil
}

// Run passes over the store every Period until ctx ends, resuming a pass the last run
// left unfinished. A failed pass (database down, app refusing) is retried from its
// checkpoint after a pause.
func (a *Agent) Run(ctx context.Context) error {
	pause := a.o.MinBackoff
	for {
		a.mu.Lock()
		st := a.st
		a.mu.Unlock()
		if st.Pass == nil && !st.LastFinished.IsZero() {
			if wait := st.LastFinished.Add(a.o.Period).Sub(a.o.Now()); wait > 0 {
				a.o.Log.Info("agent: next pass", "at", a.o.Now().Add(wait).UTC().Format(time.RFC3339))
				if !sleep(ctx, wait) {
					return nil
				}
			}
		}
		_, err := a.Pass(ctx)
		switch {
		case ctx.Err() != nil:
			return nil
		case err != nil:
			a.o.Log.Error("agent: pass stopped; it resumes from its checkpoint", "error", err, "retryIn", pause.String())
			if !sleep(ctx, pause) {
				return nil
			}
			pause = min(2*pause, a.o.Period, 5*time.Minute)
		default:
			pause = a.o.MinBackoff
		}
	}
}

// Pass runs (or resumes) one pass over the store and returns its progress.
func (a *Agent) Pass(ctx context.Context) (map[state.Entity]*Progress, error) {
	a.mu.Lock()
	if a.st.Pass == nil {
		a.st.Pass = &agentPass{StartedAt: a.o.Now().UTC(), Progress: map[state.Entity]*Progress{}}
		a.o.Log.Info("agent: pass started")
	} else {
		a.o.Log.Info("agent: resuming the pass started at "+a.st.Pass.StartedAt.Format(time.RFC3339), "progress", a.st.Pass.Progress)
	}
	pass := a.st.Pass
	a.tag = strconv.FormatInt(pass.StartedAt.UnixNano(), 36)
	a.mu.Unlock()

	if err := a.o.Source.Check(ctx); err != nil {
		return pass.Progress, fmt.Errorf("store database: %w", err)
	}
	ps := &Pass{Source: a.o.Source, Differ: a, Sink: a, PageSize: a.o.PageSize,
		// Each row the reader could not turn into an event, with its reason: those rows never
		// reach the app, so its status page can't show them.
		Failed: func(f RowFailure) {
			a.o.Log.Warn("agent: "+string(f.Entity)+" not sent", "id", f.ID, "reason", f.Reason)
		}}
	for _, ent := range a.o.Entities {
		a.mu.Lock()
		p := pass.Progress[ent]
		if p == nil {
			p = &Progress{}
			pass.Progress[ent] = p
		}
		a.mu.Unlock()
		err := ps.Entity(ctx, ent, p, func(context.Context) error { return a.checkpoint(p.Done) })
		if err != nil {
			a.saveSent()
			return pass.Progress, err
		}
		a.o.Log.Info("agent: "+string(ent)+"s done", "read", p.RowsRead, "sent", p.Queued, "unchanged", p.Unchanged, "failed", p.Failed)
	}
	a.mu.Lock()
	a.st.Pass, a.st.LastFinished = nil, a.o.Now().UTC()
	a.mu.Unlock()
	if err := a.saveSent(); err != nil {
		return pass.Progress, err
	}
	if err := a.saveState(); err != nil {
		return pass.Progress, err
	}
	a.o.Log.Info("agent: pass finished")
	return pass.Progress, nil
}

// Unchanged implements Differ: unchanged when the same data was sent and accepted.
func (a *Agent) Unchanged(_ context.Context, entity state.Entity, evs []*nop.Event, hashes []string) ([]bool, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	out := make([]bool, len(evs))
	for i, ev := range evs {
		h := sha256.Sum256([]byte(hashes[i]))
		var k [16]byte
		copy(k[:], h[:16])
		prev, ok := a.sent[entity][ev.EntityID()]
		out[i] = ok && prev == k
		if !out[i] {
			a.pending[a.passEventID(ev.ID)] = k
		}
	}
	return out, nil
}

// passEventID is the id the agent sends a reader's event with: the reader's id (entity,
// nopCommerce id and data hash) and the pass's start. Within a pass, resumed after a
// restart too, a row read again in the same state keeps its id, so the app drops the
// repeat. A later pass sends only rows whose data differ from what was last accepted,
// and sends them under new ids: a row that went back to a state sent earlier (stock 5,
// 4, then 5 again) would otherwise carry the earlier event's id, Service Bus would drop
// it as a duplicate within its detection window while the app still answered 202, and
// the agent would count it as delivered. Held under a.mu.
func (a *Agent) passEventID(id string) string {
	if queue.IDLength(id)+1+len(a.tag) > queue.MaxIDLength { // the tag is ASCII
		sum := sha256.Sum256([]byte(id))
		id = "h-" + hex.EncodeToString(sum[:20])
	}
	return id + "." + a.tag
}

// Send implements Sink: POSTs evs in requests of at most PageSize events and
// nop.MaxBodyBytes, retrying transient failures until ctx ends. Events the app refuses
// as invalid, and events the pass's longer id takes over the size limit, are left out
// and returned with the reason; the rest go again.
func (a *Agent) Send(ctx context.Context, entity state.Entity, evs []*nop.Event) ([]RowFailure, error) {
	var left []RowFailure
	tagged := make([]*nop.Event, 0, len(evs))
	for _, ev := range evs {
		a.mu.Lock()
		id := a.passEventID(ev.ID)
		a.mu.Unlock()
		t, err := ev.WithID(id)
		if err != nil {
			left = append(left, RowFailure{Entity: entity, ID: ev.EntityID(), Reason: "with the pass's id: " + err.Error()})
			continue
		}
		tagged = append(tagged, t)
	}
	evs = tagged
	for len(evs) > 0 {
		n, size := 0, 2
		for n < len(evs) && n < a.o.PageSize && size+len(evs[n].Raw)+1 <= nop.MaxBodyBytes {
			size += len(evs[n].Raw) + 1
			n++
		}
		n = max(n, 1)
		refused, err := a.post(ctx, entity, evs[:n])
		left = append(left, refused...)
		if err != nil {
			return left, err
		}
		evs = evs[n:]
	}
	return left, nil
}

func (a *Agent) url(entity state.Entity) string {
	if strings.Contains(a.o.EventsURL, "{entity}") {
		return strings.ReplaceAll(a.o.EventsURL, "{entity}", string(entity))
	}
	return strings.TrimRight(a.o.EventsURL, "/") + "/" + string(entity)
}

// post sends one array until the app accepts it (or what is left of it); it returns the
// events the app refused as invalid, with the app's reason.
func (a *Agent) post(ctx context.Context, entity state.Entity, evs []*nop.Event) ([]RowFailure, error) {
	var refused []RowFailure
	wait := a.o.MinBackoff
	for attempt := 1; len(evs) > 0; attempt++ {
		var body bytes.Buffer
		body.WriteByte('[')
		for i, ev := range evs {
			if i > 0 {
				body.WriteByte(',')
			}
			body.Write(ev.Raw)
		}
		body.WriteByte(']')
		req, err := http.NewRequestWithContext(ctx, http.MethodPost, a.url(entity), bytes.NewReader(body.Bytes()))
		if err != nil {
			return refused, err
		}
		req.Header.Set("Content-Type", "application/json")
		if a.o.FunctionKey != "" {
			req.Header.Set("x-functions-key", a.o.FunctionKey)
		}
		if a.o.Secret != "" {
			req.Header.Set(intake.SignatureHeader, intake.Sign(a.o.Secret, a.o.Now(), body.Bytes()))
		}
		first, last := evs[0].EntityID(), evs[len(evs)-1].EntityID()
		res, err := a.o.HTTP.Do(req)
		var status int
		var answer []byte
		var retryAfter time.Duration
		if err == nil {
			status = res.StatusCode
			answer, _ = io.ReadAll(io.LimitReader(res.Body, 64<<10))
			res.Body.Close()
			if s, perr := strconv.Atoi(res.Header.Get("Retry-After")); perr == nil && s > 0 {
				retryAfter = time.Duration(s) * time.Second
			}
		}
		switch {
		case err == nil && status == http.StatusAccepted:
			a.accepted(entity, evs)
			a.o.Log.Info("agent: sent", "entity", entity, "events", len(evs), "ids", first+".."+last, "attempt", attempt)
			return refused, nil
		case err == nil && status == http.StatusBadRequest:
			var e apierror.Body
			json.Unmarshal(answer, &e)
			if e.Error.Index == nil || *e.Error.Index < 0 || *e.Error.Index >= len(evs) {
				return refused, fmt.Errorf("%w: %s %s..%s: %d %s", ErrAgentRefused, entity, first, last, status, e.Error.Message)
			}
			bad := evs[*e.Error.Index]
			refused = append(refused, RowFailure{Entity: entity, ID: bad.EntityID(), Reason: "refused by the app as invalid: " + e.Error.Message})
			evs = append(evs[:*e.Error.Index:*e.Error.Index], evs[*e.Error.Index+1:]...)
			continue
		case err == nil && status == http.StatusRequestEntityTooLarge && len(evs) == 1:
			// One event too large for the app, or for a proxy before it: no retry gets it
			// through, and stopping here would hold back every row after it.
			refused = append(refused, RowFailure{Entity: entity, ID: evs[0].EntityID(), Reason: fmt.Sprintf("refused as too large (413, %d bytes)", len(evs[0].Raw))})
			return refused, nil
		case err == nil && status == http.StatusRequestEntityTooLarge && len(evs) > 1:
			half := len(evs) / 2
			r, err := a.post(ctx, entity, evs[:half])
			refused = append(refused, r...)
			if err != nil {
				return refused, err
			}
			evs = evs[half:]
			continue
		case err == nil && status != http.StatusTooManyRequests && status < 500:
			var e apierror.Body
			json.Unmarshal(answer, &e)
			return refused, fmt.Errorf("%w: POST %s answered %d %s", ErrAgentRefused, a.url(entity), status, e.Error.Message)
		}
		reason := fmt.Sprintf("answer %d", status)
		if err != nil {
			if ctx.Err() != nil {
				return refused, ctx.Err()
			}
			reason = err.Error()
		}
		d := wait
		if retryAfter > 0 {
			d = min(retryAfter, a.o.MaxBackoff)
		}
		d += rand.N(d/5 + 1) // jitter, so agents restarted together don't retry in step
		a.o.Log.Warn("agent: send failed, retrying with the same event ids", "entity", entity, "events", len(evs), "ids", first+".."+last, "attempt", attempt, "reason", reason, "retryIn", d.String())
		if !sleep(ctx, d) {
			return refused, ctx.Err()
		}
		wait = min(2*wait, a.o.MaxBackoff)
	}
	return refused, nil
}

func (a *Agent) accepted(entity state.Entity, evs []*nop.Event) {
	a.mu.Lock()
	defer a.mu.Unlock()
	m := a.sent[entity]
	if m == nil {
		m = map[string][16]byte{}
		a.sent[entity] = m
	}
	for _, ev := range evs {
		if h, ok := a.pending[ev.ID]; ok {
			m[ev.EntityID()] = h
			delete(a.pending, ev.ID)
		}
	}
}

// checkpoint saves the pass's cursor after each page (the sent index every 20 pages and
// when an entity is done: losing part of it only makes rows go again, same ids).
func (a *Agent) checkpoint(done bool) error {
	a.mu.Lock()
	a.dirty++
	save := done || a.dirty >= 20
	a.mu.Unlock()
	if save {
		if err := a.saveSent(); err != nil {
			return err
		}
	}
	return a.saveState()
}

func (a *Agent) saveState() error {
	a.mu.Lock()
	b, err := json.MarshalIndent(a.st, "", "  ")
	a.mu.Unlock()
	if err != nil {
		return err
	}
	return writeFile(a.o.StateFile, b)
}

// The sent index: per record, entity (1 byte), id length (1 byte), id, hash (16 bytes).
func (a *Agent) saveSent() error {
	a.mu.Lock()
	var b bytes.Buffer
	for _, ent := range state.Entities {
		for id, h := range a.sent[ent] {
			b.WriteByte(entityCode(ent))
			b.WriteByte(byte(len(id)))
			b.WriteString(id)
			b.Write(h[:])
		}
	}
	a.dirty = 0
	a.mu.Unlock()
	return writeFile(a.o.StateFile+".sent", b.Bytes())
}

func entityCode(e state.Entity) byte {
	for i, x := range state.Entities {
		if x == e {
			return byte(i)
		}
	}
	return 255
}

func (a *Agent) load() error {
	b, err := os.ReadFile(a.o.StateFile)
	switch {
	case errors.Is(err, os.ErrNotExist):
	case err != nil:
		return fmt.Errorf("agent state %s: %w", a.o.StateFile, err)
	default:
		if err := json.Unmarshal(b, &a.st); err != nil {
			// Only the pass's cursor is lost: a new pass reads every row again and, with the
			// sent index, sends only what changed. Refusing to start would stop the agent
			// until someone deleted the file.
			a.o.Log.Warn("agent: state file damaged; starting a new pass", "file", a.o.StateFile, "error", err)
			a.st = agentState{}
		}
	}
	b, err = os.ReadFile(a.o.StateFile + ".sent")
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("agent state %s.sent: %w", a.o.StateFile, err)
	}
	for len(b) >= 2 {
		code, n := int(b[0]), int(b[1])
		if code >= len(state.Entities) || len(b) < 2+n+16 {
			break // a damaged tail: those rows are sent again
		}
		ent := state.Entities[code]
		if a.sent[ent] == nil {
			a.sent[ent] = map[string][16]byte{}
		}
		a.sent[ent][string(b[2:2+n])] = [16]byte(b[2+n : 2+n+16])
		b = b[2+n+16:]
	}
	return nil
}

// writeFile replaces path atomically (temporary file, then rename).
func writeFile(path string, b []byte) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return err
	}
	tmp := path + ".tmp"
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return fmt.Errorf("agent state: %w", err)
	}
	_, err = f.Write(b)
	if err == nil {
		err = f.Sync() // on disk before the rename: a power cut leaves the old file or the new
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("agent state: %w", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("agent state: %w", err)
	}
	return nil
}

func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}
