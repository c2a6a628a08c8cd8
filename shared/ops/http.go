package ops

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"math"
	"net/http"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nopsync/nopsync/shared/apierror"
	"github.com/nopsync/nopsync/shared/delivery"
	"github.com/nopsync/nopsync/shared/nop"
	"github.com/nopsync/nopsync/shared/queue"
	"github.com/nopsync/nopsync/shared/state"
)

// Routes registers the admin routes on mux (paths as the Functions host exposes them).
func (o *Ops) Routes(mux *http.ServeMux) {
	mux.HandleFunc("POST /api/sync", o.serveSync)
	mux.HandleFunc("GET /api/sync/{runId}", o.serveRun)
	mux.HandleFunc("/api/sync", methodNotAllowed("POST"))
	mux.HandleFunc("GET /api/status", o.serveStatus)
	mux.HandleFunc("GET /api/status/{entity}/{id}", o.serveEntityStatus)
	mux.HandleFunc("GET /api/status/{entity}", func(w http.ResponseWriter, r *http.Request) {
		writeError(w, apierror.NotFound, "use /api/status/{entity}/{id}")
	})
	mux.HandleFunc("GET /api/deadletters/{entity}", o.serveDeadLetters)
	// The host routes any method its function.json lists, and {action} in any case
	// (deadletters/{entity}/{action?}, sync/{runId?}): every such request gets a JSON
	// answer, never the mux's plain-text 404 or 405.
	mux.HandleFunc("/api/sync/{runId}", methodNotAllowed("GET"))
	mux.HandleFunc("/api/deadletters/{entity}", methodNotAllowed("GET"))
	mux.HandleFunc("/api/deadletters/{entity}/{action}", func(w http.ResponseWriter, r *http.Request) {
		switch {
		case !strings.EqualFold(r.PathValue("action"), "replay"):
			writeError(w, apierror.NotFound, "unknown action "+quote(r.PathValue("action"))+": use /api/deadletters/{entity}/replay")
		case r.Method != http.MethodPost:
			methodNotAllowed("POST")(w, r)
		default:
			o.serveReplay(w, r)
		}
	})
}

func methodNotAllowed(allow string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Allow", allow)
		writeError(w, apierror.MethodNotAllowed, "use "+allow)
	}
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(v)
}

// writeError answers with an error (apierror decides the status from the code).
func writeError(w http.ResponseWriter, code apierror.Code, msg string) {
	apierror.Write(w, apierror.New(code, msg), nil)
}

func parseEntity(s string) (state.Entity, bool) { return nop.ParseEntity(s) }

type syncRequest struct {
	Entities []string `json:"entities"`
	Scope    string   `json:"scope"`
	Source   string   `json:"source"`
}

// bodyLost reports a request that was sent with a body that did not arrive: the
// Functions host passes a body on only when the request has a Content-Length above zero,
// so a chunked one reaches the app without it. An empty sync body means the defaults; a
// lost one must not start a different run than the caller asked for.
func bodyLost(r *http.Request) bool {
	if slices.Contains(r.TransferEncoding, "chunked") || strings.Contains(strings.ToLower(r.Header.Get("Transfer-Encoding")), "chunked") {
		return true
	}
	n, err := strconv.ParseInt(r.Header.Get("Content-Length"), 10, 64)
	return err == nil && n > 0
}

func (o *Ops) serveSync(w http.ResponseWriter, r *http.Request) {
	var req syncRequest
	body, err := io.ReadAll(io.LimitReader(r.Body, 64<<10))
	if err != nil {
		writeError(w, apierror.InvalidRequest, "read body: "+err.Error())
		return
	}
	if len(body) == 0 && bodyLost(r) {
		writeError(w, apierror.LengthRequired, "the request arrived without its body: send the body with a "+
			"Content-Length header (not chunked); nothing was started")
		return
	}
	if len(strings.TrimSpace(string(body))) > 0 {
		dec := json.NewDecoder(strings.NewReader(string(body)))
		dec.DisallowUnknownFields()
		err := dec.Decode(&req)
		if _, terr := dec.Token(); err == nil && terr != io.EOF {
			err = errors.New("data after the JSON object")
		}
		if err != nil {
			writeError(w, apierror.InvalidRequest, `body must be {"entities": ["customer","product","order"], "scope": "failed"|"all", "source": "state"|"store"}: `+err.Error())
			return
		}
	}
	var ents []state.Entity
	for _, s := range req.Entities {
		e, ok := parseEntity(s)
		if !ok {
			writeError(w, apierror.InvalidRequest, "entities: unknown entity "+quote(s)+" (customer, product, order)")
			return
		}
		if !slices.Contains(ents, e) { // named twice: re-driven once
			ents = append(ents, e)
		}
	}
	if req.Scope != "" && req.Scope != ScopeFailed && req.Scope != ScopeAll {
		writeError(w, apierror.InvalidRequest, "scope must be \"failed\" or \"all\", got "+quote(req.Scope))
		return
	}
	note := ""
	switch req.Source {
	case "", SourceState:
	case SourceStore:
		if o.o.Store != nil {
			o.serveStoreSync(w, r, ents)
			return
		}
		// docs/store-reader.md: without the reader configured, a store run behaves as
		// before, a re-drive from the app's own state; the answer and the run say so.
		note = "the store reader is not configured (NOP_DB_PROVIDER, NOP_DB_CONNECTION): re-driven from the app's own state instead"
	default:
		writeError(w, apierror.InvalidRequest, "source must be \"state\" or \"store\", got "+quote(req.Source))
		return
	}
	run, err := o.startSync(r.Context(), ents, req.Scope, "manual", note)
	if err != nil {
		writeError(w, apierror.Unavailable, err.Error())
		return
	}
	// The re-drive goes on by itself; the answer waits for it at most syncAnswerWait, well
	// inside the 230 s the front end gives an HTTP request (a "scope": "all" re-drive of a
	// large state takes longer). Past that it is a 202 pointing at the run's progress.
	done := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.WithoutCancel(r.Context()), syncRunTimeout)
		defer cancel()
		done <- o.driveSync(ctx, run)
	}()
	answer := map[string]any{"runId": run.ID, "queued": 0, "progress": "/api/sync/" + run.ID}
	if note != "" {
		answer["source"], answer["note"] = SourceState, note
	}
	select {
	case err := <-done:
		answer["queued"] = run.Queued
		if err != nil {
			// Part of the run was queued: say how much, and that it failed.
			apierror.Write(w, apierror.New(apierror.Unavailable, err.Error()), map[string]any{"runId": run.ID, "queued": run.Queued})
			return
		}
	case <-time.After(syncAnswerWait):
		answer["running"] = true
	}
	writeJSON(w, http.StatusAccepted, answer)
}

// syncAnswerWait bounds how long POST /api/sync waits for its re-drive before answering;
// syncRunTimeout bounds the re-drive itself (the invocation that started it may have
// ended). Variables for tests.
var (
	syncAnswerWait = 60 * time.Second
	syncRunTimeout = 30 * time.Minute
)

// serveStoreSync starts a store run (the reader is configured: serveSync asked): 202
// with its id, to follow on /api/sync/{runId}.
func (o *Ops) serveStoreSync(w http.ResponseWriter, r *http.Request, ents []state.Entity) {
	run, err := o.StartStoreRun(r.Context(), ents, "manual")
	var active *RunActiveError
	switch {
	case errors.As(err, &active):
		apierror.Write(w, apierror.New(apierror.Conflict, err.Error()), map[string]any{"runId": active.RunID})
	case err != nil:
		writeError(w, apierror.Unavailable, err.Error())
	default:
		writeJSON(w, http.StatusAccepted, map[string]any{"runId": run.ID, "queued": 0, "progress": "/api/sync/" + run.ID})
	}
}

// serveRun answers a run's progress.
func (o *Ops) serveRun(w http.ResponseWriter, r *http.Request) {
	run, err := o.GetRun(r.Context(), r.PathValue("runId"))
	switch {
	case errors.Is(err, state.ErrNotFound):
		writeError(w, apierror.NotFound, "no sync run "+quote(r.PathValue("runId")))
	case err != nil:
		writeError(w, apierror.Unavailable, "sync runs: "+err.Error())
	default:
		writeJSON(w, http.StatusOK, run)
	}
}

func quote(s string) string { b, _ := json.Marshal(s); return string(b) }

// Status is the status page (docs/operations.md).
type Status struct {
	Healthy        bool                          `json:"healthy"`
	Dataverse      Connection                    `json:"dataverse"`
	Secret         SecretStatus                  `json:"secret"`
	Entities       map[state.Entity]EntityCounts `json:"entities"`
	Queues         map[state.Entity]QueueStatus  `json:"queues"`
	AutoSync       AutoSyncStatus                `json:"autoSync"`
	Store          StoreStatus                   `json:"store"`
	RecentRuns     []Run                         `json:"recentRuns"`
	RecentFailures []Failure                     `json:"recentFailures"`
	// InvalidMessages are queue messages that failed validation on the queue side and were
	// acknowledged without effect (newest first, at most 20 of InvalidMessageCount).
	InvalidMessages     []json.RawMessage `json:"invalidMessages"`
	InvalidMessageCount int               `json:"invalidMessageCount"`
	Errors              []string          `json:"errors,omitempty"`
}

// EntityCounts is how many entities of a kind stand where, and how many stale events
// (older than the state already applied) were acknowledged and skipped. Skipped counts
// both, as docs/events.md has it ("stale and is skipped (acknowledged, counted as
// skipped)"): the entities skipped with a reason (a guest, a paid order deleted in the
// store) and the stale events, which StaleEventsSkipped counts alone.
type EntityCounts struct {
	Synced             int   `json:"synced"`
	Pending            int   `json:"pending"`
	Failed             int   `json:"failed"`
	Skipped            int64 `json:"skipped"`
	StaleEventsSkipped int64 `json:"staleEventsSkipped"`
}

// SecretStatus is the client secret's expiry.
type SecretStatus struct {
	ExpiresOn *time.Time `json:"expiresOn"`
	DaysLeft  *int       `json:"daysLeft"`
	Warning   *string    `json:"warning"`
}

// QueueStatus is a queue's message counts.
type QueueStatus struct {
	Active       int64  `json:"active"`
	DeadLettered int64  `json:"deadLettered"`
	Scheduled    int64  `json:"scheduled"` // copies of failed messages waiting for their time
	Error        string `json:"error,omitempty"`
}

// AutoSyncStatus shows the auto-sync settings and its last run.
type AutoSyncStatus struct {
	Enabled       bool `json:"enabled"`
	PeriodMinutes int  `json:"periodMinutes"`
	LastRun       *Run `json:"lastRun"`
}

// statusCallTimeout bounds each of the status page's calls to Key Vault and the queues.
var statusCallTimeout = 10 * time.Second

// queueStats reads every entity's queues (live and bulk, counted together) side by side,
// each call within statusCallTimeout.
func (o *Ops) queueStats(ctx context.Context) map[state.Entity]QueueStatus {
	out := map[state.Entity]QueueStatus{}
	if o.o.Inspector == nil {
		return out
	}
	type answer struct {
		ent state.Entity
		s   queue.Stats
		err error
	}
	ch := make(chan answer)
	n := 0
	for _, ent := range state.Entities {
		for _, q := range nop.EntityQueues(ent) {
			n++
			go func() {
				qctx, cancel := context.WithTimeout(ctx, statusCallTimeout)
				defer cancel()
				s, err := o.o.Inspector.Stats(qctx, q)
				ch <- answer{ent, s, err}
			}()
		}
	}
	for range n {
		a := <-ch
		qs := out[a.ent]
		if a.err != nil {
			qs.Error = a.err.Error()
		}
		qs.Active, qs.DeadLettered, qs.Scheduled = qs.Active+a.s.Active, qs.DeadLettered+a.s.DeadLettered, qs.Scheduled+a.s.Scheduled
		out[a.ent] = qs
	}
	return out
}

// SecretWarningDays is how close the client secret's expiry must be to warn.
const SecretWarningDays = 30

// StatusStoreBudget bounds the status page's reads of the state store, together.
const StatusStoreBudget = 10 * time.Second

// Status builds the status page. It never fails: what cannot be read is reported in
// the page, so it renders when things are broken.
func (o *Ops) Status(ctx context.Context) *Status {
	st := &Status{
		Entities:       map[state.Entity]EntityCounts{},
		Queues:         map[state.Entity]QueueStatus{},
		RecentFailures: []Failure{},
		RecentRuns:     []Run{},
		AutoSync:       AutoSyncStatus{Enabled: o.o.AutoSyncEnabled, PeriodMinutes: int(o.o.AutoSyncPeriod / time.Minute)},
	}
	st.Dataverse = o.probe(ctx)
	if o.o.Secret != nil {
		// Key Vault, like every outside call here, gets a deadline: the page must answer
		// well inside the Functions front end's 230 s, whatever hangs.
		kctx, cancel := context.WithTimeout(ctx, statusCallTimeout)
		exp, err := o.o.Secret.ClientSecretExpiry(kctx)
		cancel()
		if err != nil {
			msg := "client secret expiry unknown: " + err.Error()
			st.Secret.Warning = &msg
		} else if exp != nil {
			e := exp.UTC()
			days := int(math.Floor(e.Sub(o.o.Now()).Hours() / 24))
			st.Secret.ExpiresOn, st.Secret.DaysLeft = &e, &days
			switch {
			case days < 0:
				msg := "the Dataverse client secret has expired: create a new one and put it in Key Vault"
				st.Secret.Warning = &msg
			case days < SecretWarningDays:
				msg := "the Dataverse client secret expires in " + itoa(days) + " days: create a new one and put it in Key Vault"
				st.Secret.Warning = &msg
			}
		}
	}
	if o.o.WebhookSecrets != nil {
		wctx, cancel := context.WithTimeout(ctx, statusCallTimeout)
		secrets, err := o.o.WebhookSecrets.WebhookSecrets(wctx)
		cancel()
		switch {
		case err != nil:
			st.Errors = append(st.Errors, "webhook secret: "+err.Error()+": every event is answered 503 until it can be read")
		case len(secrets) == 0:
			st.Errors = append(st.Errors, "webhook secret: none is set (WEBHOOK_SECRET, or the Key Vault secret named by WEBHOOK_SECRET_NAME): every event is answered 503 until one is")
		}
	}
	// Service Bus and the store's database are read side by side with the state store,
	// each under its own deadline: a slow one neither delays the page by its whole
	// budget nor eats the state store's (whose reads would then fail as if it were down).
	var queues map[state.Entity]QueueStatus
	var wg sync.WaitGroup
	wg.Go(func() { queues = o.queueStats(ctx) })
	wg.Go(func() { st.Store = o.storeStatus(ctx) })
	// The state store's reads share one budget: while the store can't be reached each
	// read is retried by its SDK, and the page would take minutes to render.
	sctx, cancel := context.WithTimeout(ctx, StatusStoreBudget)
	defer cancel()
	counts, err := o.o.State.Counts(sctx)
	if err != nil {
		st.Errors = append(st.Errors, "sync state: "+err.Error())
	}
	var stale map[state.Entity]int64
	if o.o.Stale != nil {
		if stale, err = o.o.Stale.StaleSkipped(sctx); err != nil {
			st.Errors = append(st.Errors, "stale event counts: "+err.Error())
		}
	}
	recent, lastAuto, lastStoreRun, err := o.statusRuns(sctx)
	if err != nil {
		st.Errors = append(st.Errors, "runs: "+err.Error())
	} else {
		if recent != nil {
			st.RecentRuns = recent
		}
		st.AutoSync.LastRun = lastAuto
	}
	if f, err := o.recentFailures(sctx, 20, counts); err != nil {
		st.Errors = append(st.Errors, "recent failures: "+err.Error())
	} else {
		st.RecentFailures = f
	}
	st.InvalidMessages = []json.RawMessage{}
	if o.o.InvalidMessageKind != "" {
		docs, err := o.o.State.ListDocs(sctx, o.o.InvalidMessageKind)
		if err != nil {
			st.Errors = append(st.Errors, "invalid messages: "+err.Error())
		}
		// Newest first, by the time each doc records.
		sort.Slice(docs, func(i, j int) bool { return invalidAt(docs[i]).After(invalidAt(docs[j])) })
		st.InvalidMessageCount = len(docs)
		for _, d := range docs[:min(len(docs), 20)] {
			st.InvalidMessages = append(st.InvalidMessages, json.RawMessage(d.Value))
		}
	}
	wg.Wait()
	if lastStoreRun != nil {
		st.Store.LastRun = lastStoreRun
	}
	for _, ent := range state.Entities {
		c := counts[ent]
		st.Entities[ent] = EntityCounts{Synced: c[state.Synced], Pending: c[state.Pending], Failed: c[state.Failed],
			Skipped: int64(c[state.Skipped]) + stale[ent], StaleEventsSkipped: stale[ent]}
		st.Queues[ent] = queues[ent]
		if e := queues[ent].Error; e != "" {
			// Events can't be queued (or their counts read) while this fails.
			st.Errors = append(st.Errors, "queues of "+string(ent)+": "+e)
		}
	}
	expired := st.Secret.DaysLeft != nil && *st.Secret.DaysLeft < 0
	st.Healthy = st.Dataverse.Reachable && st.Dataverse.Error == "" && !expired && len(st.Errors) == 0 && st.Store.Error == nil
	return st
}

func itoa(n int) string { b, _ := json.Marshal(n); return string(b) }

func (o *Ops) probe(ctx context.Context) Connection {
	if o.o.Probe == nil {
		return Connection{Error: "no Dataverse connection configured"}
	}
	o.mu.Lock()
	if !o.probed.IsZero() && o.o.Now().Sub(o.probed) < o.o.ProbeTTL {
		c := o.lastConn
		o.mu.Unlock()
		return c
	}
	o.mu.Unlock()
	pctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	c := o.o.Probe.Probe(pctx)
	o.mu.Lock()
	o.probed, o.lastConn = o.o.Now(), c
	o.mu.Unlock()
	return c
}

func (o *Ops) serveStatus(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, o.Status(r.Context()))
}

// EntityStatus is one entity's sync state as the status page shows it.
type EntityStatus struct {
	Entity      state.Entity `json:"entity"`
	ID          string       `json:"id"`
	DataverseID string       `json:"dataverseId"`
	Status      state.Status `json:"status"`
	LastError   string       `json:"lastError"`
	// Note is what the app says of a synced entity: why it wrote other than the store has
	// it (a family kept Active, a product number taken, a row adopted), and of any entity
	// whose last applied event is dated ahead of the app's clock; "" when nothing.
	Note        string            `json:"note,omitempty"`
	Transient   bool              `json:"transient"`
	Attempts    int               `json:"attempts"`
	OrderKey    string            `json:"appliedOrderKey"`
	LastEventID string            `json:"lastEventId"`
	SyncedAt    *time.Time        `json:"syncedAt"`
	UpdatedAt   time.Time         `json:"updatedAt"`
	Details     map[string]string `json:"details,omitempty"`
}

func (o *Ops) serveEntityStatus(w http.ResponseWriter, r *http.Request) {
	ent, ok := parseEntity(r.PathValue("entity"))
	if !ok {
		writeError(w, apierror.NotFound, "unknown entity "+quote(r.PathValue("entity"))+" (customer, product, order)")
		return
	}
	id := r.PathValue("id")
	rec, err := o.o.State.Get(r.Context(), ent, id)
	if errors.Is(err, state.ErrNotFound) {
		writeError(w, apierror.NotFound, "no sync state for "+string(ent)+" "+quote(id))
		return
	}
	if err != nil {
		writeError(w, apierror.Unavailable, "sync state: "+err.Error())
		return
	}
	es := EntityStatus{Entity: rec.Entity, ID: rec.ID, DataverseID: rec.DataverseID, Status: rec.Status, Transient: rec.Transient,
		Attempts: rec.Attempts, OrderKey: rec.OrderKey, LastEventID: rec.LastEventID, UpdatedAt: rec.UpdatedAt, Details: rec.Extra}
	if rec.Status != state.Synced {
		es.LastError = rec.Reason
	} else {
		es.Note = rec.Reason
	}
	if t, ok := nop.OrderKeyTime(rec.OrderKey); ok && t.Sub(o.o.Now()) > nop.ClockSkew {
		// An event dated ahead (a store's clock off, local time sent as UTC) makes every
		// later event without a higher sequence stale until the clock passes it.
		ahead := "its last applied event is dated " + t.Format(time.RFC3339) + ", ahead of the app's clock: " +
			"until then, its events dated earlier are skipped as stale (unless they carry a higher sequence)"
		es.Note = strings.TrimPrefix(es.Note+"; "+ahead, "; ")
	}
	if !rec.SyncedAt.IsZero() {
		t := rec.SyncedAt
		es.SyncedAt = &t
	}
	writeJSON(w, http.StatusOK, es)
}

// DeadLetterView is a dead-lettered event as the admin sees it. Reason is why the app
// failed it, from its failure record (delivery.Failure); the broker's own reason and
// description (MaxDeliveryCountExceeded, "Message could not be consumed after N
// delivery attempts.") say only that it failed every delivery.
type DeadLetterView struct {
	MessageID    string     `json:"id"`
	OriginalID   string     `json:"originalId,omitempty"` // a scheduled copy's original message
	SessionID    string     `json:"sessionId"`
	Subject      string     `json:"subject"`
	Reason       string     `json:"reason"`
	FailedAt     *time.Time `json:"failedAt,omitempty"`
	BrokerReason string     `json:"brokerReason"`
	Description  string     `json:"description"`
	Deliveries   int        `json:"deliveryCount"`
	EnqueuedAt   time.Time  `json:"enqueuedAt"`
	Transient    bool       `json:"transient"`
	Replays      int        `json:"replays"`    // auto-sync replays so far
	AutoReplay   bool       `json:"autoReplay"` // auto-sync will replay it
	Events       int        `json:"events"`
}

// deadLetterQueue resolves the {entity} of a dead-letter route to its queue, answering
// the error itself when it can't.
func (o *Ops) deadLetterQueue(w http.ResponseWriter, r *http.Request) (state.Entity, bool) {
	ent, ok := parseEntity(r.PathValue("entity"))
	if !ok {
		writeError(w, apierror.NotFound, "unknown entity "+quote(r.PathValue("entity")))
		return "", false
	}
	if o.o.DeadLetters == nil {
		writeError(w, apierror.Unavailable, "dead letters are not available")
		return "", false
	}
	return ent, true
}

func (o *Ops) serveDeadLetters(w http.ResponseWriter, r *http.Request) {
	ent, ok := o.deadLetterQueue(w, r)
	if !ok {
		return
	}
	var dls []queue.DeadLetter
	var from []string // each dead letter's queue
	for _, q := range nop.EntityQueues(ent) {
		got, err := o.o.DeadLetters.PeekDeadLetters(r.Context(), q, 500)
		if err != nil {
			writeError(w, apierror.Unavailable, "peek dead letters: "+err.Error())
			return
		}
		dls = append(dls, got...)
		for range got {
			from = append(from, q)
		}
	}
	views := make([]DeadLetterView, 0, len(dls))
	for i, d := range dls {
		f := o.deadLetterFailure(r.Context(), from[i], d)
		v := DeadLetterView{MessageID: d.MessageID, SessionID: d.SessionID, Subject: d.Subject, Reason: delivery.NoReason,
			BrokerReason: d.Reason, Description: d.ErrorDescription, Deliveries: d.DeliveryCount, EnqueuedAt: d.EnqueuedAt,
			Transient: TransientDeadLetter(d), AutoReplay: o.autoReplayable(d, f), Events: nop.CountEvents(d.Body)}
		if orig := delivery.OriginalID(d.MessageID, d.ApplicationProperties); orig != d.MessageID {
			v.OriginalID = orig
		}
		if !TransientDeadLetter(d) {
			v.Reason = d.Reason + ": " + d.ErrorDescription // dead-lettered by someone else, for its content
		}
		if f != nil {
			v.Reason, v.Replays = f.Reason, f.Replays
			at := f.LastAt
			v.FailedAt = &at
		}
		views = append(views, v)
	}
	writeJSON(w, http.StatusOK, map[string]any{"entity": ent, "queue": queueOf(ent), "count": len(views), "deadLetters": views})
}

func (o *Ops) serveReplay(w http.ResponseWriter, r *http.Request) {
	ent, ok := o.deadLetterQueue(w, r)
	if !ok {
		return
	}
	var ids []string
	for _, v := range r.URL.Query()["ids"] {
		for _, id := range strings.Split(v, ",") {
			if id = strings.TrimSpace(id); id != "" {
				ids = append(ids, id)
			}
		}
	}
	done := []string{}
	var err error
	for _, q := range nop.EntityQueues(ent) { // an id is in one of them; none: all of both
		var got []string
		got, err = o.o.DeadLetters.Replay(r.Context(), q, ids)
		done = append(done, got...)
		if err != nil {
			break
		}
	}
	if err != nil {
		apierror.Write(w, apierror.New(apierror.Unavailable, err.Error()), map[string]any{"replayed": done})
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"replayed": done, "count": len(done)})
}

func invalidAt(d *state.Doc) time.Time {
	var v struct {
		At time.Time `json:"at"`
	}
	json.Unmarshal(d.Value, &v)
	return v.At
}
