package storesync_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nopsync/nopsync/shared/intake"
	"github.com/nopsync/nopsync/shared/localqueue"
	"github.com/nopsync/nopsync/shared/nop"
	"github.com/nopsync/nopsync/shared/queue"
	"github.com/nopsync/nopsync/shared/state"
	"github.com/nopsync/nopsync/shared/storesync"
	"github.com/nopsync/nopsync/shared/storesync/storesynctest"
)

// fakeApp is the app's events endpoint: the real intake (signature, validation) in
// front of a sender that records the entity ids it is given.
type fakeApp struct {
	mu       sync.Mutex
	ids      []string
	requests int
	down     int         // answer 503 to this many more requests
	after    func(n int) // called after a request was accepted
	in       *intake.Intake
}

func (f *fakeApp) Send(_ context.Context, _ string, msgs []queue.Message) error {
	for _, m := range msgs {
		evs, _, err := nop.DecodeEnvelope(m.Body)
		if err != nil {
			return err
		}
		f.mu.Lock()
		for _, ev := range evs {
			f.ids = append(f.ids, ev.EntityID())
		}
		f.mu.Unlock()
	}
	return nil
}

func (f *fakeApp) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	f.requests++
	n := f.requests
	down := f.down > 0
	if down {
		f.down--
	}
	f.mu.Unlock()
	if r.Header.Get("x-functions-key") != "fkey" {
		http.Error(w, `{"error":{"code":"unauthorized","message":"no key"}}`, http.StatusUnauthorized)
		return
	}
	if down {
		w.Header().Set("Retry-After", "1")
		http.Error(w, `{"error":{"code":"unavailable","message":"down"}}`, http.StatusServiceUnavailable)
		return
	}
	rec := httptest.NewRecorder()
	f.in.ServeHTTP(rec, r)
	for k, v := range rec.Header() {
		w.Header()[k] = v
	}
	w.WriteHeader(rec.Code)
	w.Write(rec.Body.Bytes())
	if rec.Code == http.StatusAccepted && f.after != nil {
		f.after(n)
	}
}

func (f *fakeApp) take() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := f.ids
	f.ids = nil
	return out
}

func newFakeApp(t *testing.T) (*fakeApp, string) {
	f := &fakeApp{}
	f.in = intake.New(intake.Options{Sender: f, Secrets: intake.StaticSecrets{"whsecret"}})
	srv := httptest.NewServer(http.StripPrefix("/api/events/", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		r.SetPathValue("entity", r.URL.Path)
		f.ServeHTTP(w, r)
	})))
	t.Cleanup(srv.Close)
	return f, srv.URL + "/api/events/{entity}"
}

func newAgent(t *testing.T, src storesync.Source, url, file string) *storesync.Agent {
	t.Helper()
	a, err := storesync.NewAgent(storesync.AgentOptions{Source: src, EventsURL: url, FunctionKey: "fkey", Secret: "whsecret", StateFile: file,
		PageSize: 10, Entities: []state.Entity{state.Customer}, MinBackoff: time.Millisecond, MaxBackoff: 5 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	return a
}

func TestAgentSendsChangesAndRetries(t *testing.T) {
	ctx := context.Background()
	src := storesynctest.New("USD")
	fill(src, 45)
	app, url := newFakeApp(t)
	app.down = 3 // the app is down for the first three requests
	file := filepath.Join(t.TempDir(), "agent.json")

	p, err := newAgent(t, src, url, file).Pass(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if got := app.take(); !slices.Equal(got, ids(1, 45)) || p[state.Customer].Queued != 45 {
		t.Fatalf("first pass delivered %v (%+v)", got, p[state.Customer])
	}
	if app.requests != 5+3 {
		t.Fatalf("%d requests, want 5 pages + 3 refused while down", app.requests)
	}

	// A restarted agent (same state file) sends nothing unchanged, then exactly the changes.
	a := newAgent(t, src, url, file)
	p, err = a.Pass(ctx)
	if err != nil || len(app.take()) != 0 || p[state.Customer].Unchanged != 45 {
		t.Fatalf("unchanged pass: %v %+v", err, p[state.Customer])
	}
	src.Put(state.Customer, 9, storesynctest.Customer(9, "new9@example.com"))
	src.Put(state.Customer, 44, storesynctest.Customer(44, "new44@example.com"))
	if _, err := a.Pass(ctx); err != nil {
		t.Fatal(err)
	}
	if got := app.take(); !slices.Equal(got, []string{"9", "44"}) {
		t.Fatalf("changed pass delivered %v", got)
	}
}

// What the agent sent stands for what one app holds. Pointed at another app (a new
// deployment), or started with Resend (the app's state table was wiped), it sends every
// row again; the same app with the same state gets nothing unchanged.
func TestAgentSendsEverythingToAnotherApp(t *testing.T) {
	ctx := context.Background()
	src := storesynctest.New("USD")
	fill(src, 25)
	appA, urlA := newFakeApp(t)
	appB, urlB := newFakeApp(t)
	file := filepath.Join(t.TempDir(), "agent.json")
	if _, err := newAgent(t, src, urlA, file).Pass(ctx); err != nil || len(appA.take()) != 25 {
		t.Fatalf("first pass: %v", err)
	}
	if _, err := newAgent(t, src, urlA, file).Pass(ctx); err != nil || len(appA.take()) != 0 {
		t.Fatalf("same app again: %v", err)
	}
	if p, err := newAgent(t, src, urlB, file).Pass(ctx); err != nil || !slices.Equal(appB.take(), ids(1, 25)) {
		t.Fatalf("another app got %+v, %v; want every row", p[state.Customer], err)
	}
	a, err := storesync.NewAgent(storesync.AgentOptions{Source: src, EventsURL: urlB, FunctionKey: "fkey", Secret: "whsecret", StateFile: file,
		PageSize: 10, Entities: []state.Entity{state.Customer}, MinBackoff: time.Millisecond, MaxBackoff: 5 * time.Millisecond, Resend: true})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := a.Pass(ctx); err != nil || len(appB.take()) != 25 {
		t.Fatalf("resend: %v", err)
	}
}

// An events URL that redirects: the agent does not follow it (it would carry the function
// key and the signed events elsewhere) and reports the answer.
func TestAgentDoesNotFollowRedirects(t *testing.T) {
	var leaked atomic.Bool
	elsewhere := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("x-functions-key") != "" || r.Header.Get(intake.SignatureHeader) != "" {
			leaked.Store(true)
		}
		w.WriteHeader(http.StatusAccepted)
	}))
	defer elsewhere.Close()
	redirect := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, elsewhere.URL+r.URL.Path, http.StatusTemporaryRedirect)
	}))
	defer redirect.Close()
	src := storesynctest.New("USD")
	fill(src, 3)
	_, err := newAgent(t, src, redirect.URL+"/api/events/{entity}", filepath.Join(t.TempDir(), "agent.json")).Pass(context.Background())
	if !errors.Is(err, storesync.ErrAgentRefused) || !strings.Contains(err.Error(), "307") {
		t.Errorf("pass: %v, want the redirect reported as a refusal", err)
	}
	if leaked.Load() {
		t.Error("the function key or the signature reached the redirect's target")
	}
}

// Rows the reader could not turn into events are not sent; the agent's log names each
// with its reason (the app never hears of them).
func TestAgentLogsRowsNotSent(t *testing.T) {
	src := storesynctest.New("USD")
	fill(src, 12)
	src.Fail(state.Customer, 7, "email is 120 characters, over the contact's 100")
	for id := int64(1000); id < 1000+storesync.MaxFailures+50; id++ { // more than a run's progress names
		src.Fail(state.Customer, id, "no email")
	}
	_, url := newFakeApp(t)
	var logs strings.Builder
	a, err := storesync.NewAgent(storesync.AgentOptions{Source: src, EventsURL: url, FunctionKey: "fkey", Secret: "whsecret",
		StateFile: filepath.Join(t.TempDir(), "agent.json"), PageSize: 10, Entities: []state.Entity{state.Customer},
		MinBackoff: time.Millisecond, MaxBackoff: 5 * time.Millisecond, Log: slog.New(slog.NewTextHandler(&logs, nil))})
	if err != nil {
		t.Fatal(err)
	}
	p, err := a.Pass(context.Background())
	if err != nil || p[state.Customer].Failed != 1+storesync.MaxFailures+50 {
		t.Fatalf("pass: %v %+v", err, p[state.Customer])
	}
	named := map[string]bool{}
	var line7 string
	for _, l := range strings.Split(logs.String(), "\n") {
		if !strings.Contains(l, "not sent") {
			continue
		}
		_, id, _ := strings.Cut(l, " id=")
		id, _, _ = strings.Cut(id, " ")
		named[id] = true
		if id == "7" {
			line7 = l
		}
	}
	if !strings.Contains(line7, "level=WARN") || !strings.Contains(line7, "over the contact's 100") {
		t.Errorf("no warning naming row 7 and its reason; log:\n%s", logs.String())
	}
	if len(named) != 1+storesync.MaxFailures+50 {
		t.Errorf("%d rows named in the log, want every one of the %d not sent", len(named), 1+storesync.MaxFailures+50)
	}
}

// An agent stopped mid-pass resumes from its checkpoint when started again.
func TestAgentResumesAfterStop(t *testing.T) {
	src := storesynctest.New("USD")
	fill(src, 45)
	app, url := newFakeApp(t)
	file := filepath.Join(t.TempDir(), "agent.json")
	ctx, cancel := context.WithCancel(context.Background())
	app.after = func(n int) {
		if n == 2 {
			cancel() // stopped after its second page was accepted
		}
	}
	if _, err := newAgent(t, src, url, file).Pass(ctx); err == nil {
		t.Fatal("the stopped pass reported no error")
	}
	first := app.take()
	app.after = nil
	if _, err := newAgent(t, src, url, file).Pass(context.Background()); err != nil {
		t.Fatal(err)
	}
	second := app.take()
	// The restart goes on after the last checkpoint: the second page at the latest.
	if len(first) != 20 || (second[0] != "21" && second[0] != "11") {
		t.Fatalf("before the stop %v, after %v", first, second)
	}
	all := append(first, second...)
	slices.SortFunc(all, func(a, b string) int { x, _ := strconv.Atoi(a); y, _ := strconv.Atoi(b); return x - y })
	all = slices.Compact(all)
	if !slices.Equal(all, ids(1, 45)) {
		t.Fatalf("delivered %v", all)
	}
}

func TestAgentRefusals(t *testing.T) {
	ctx := context.Background()
	src := storesynctest.New("USD")
	fill(src, 5)
	app, url := newFakeApp(t)
	// The app refuses event 3 as invalid: it is left out, the rest go again.
	bad := &badEvent{app: app, id: "3"}
	srv := httptest.NewServer(bad)
	defer srv.Close()
	p, err := newAgent(t, src, srv.URL+"/api/events/{entity}", filepath.Join(t.TempDir(), "a.json")).Pass(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if got := app.take(); !slices.Equal(got, []string{"1", "2", "4", "5"}) {
		t.Fatalf("delivered %v", got)
	}
	// The pass counts it failed with the app's reason, not queued.
	if c := p[state.Customer]; c.Queued != 4 || c.Failed != 1 || len(c.Failures) != 1 || c.Failures[0].ID != "3" || !strings.Contains(c.Failures[0].Reason, "data.email: too long") {
		t.Fatalf("progress %+v, want 4 queued and customer 3 failed with the app's reason", c)
	}
	// A wrong function key is not retried: the pass stops with the reason.
	a, _ := storesync.NewAgent(storesync.AgentOptions{Source: src, EventsURL: url, FunctionKey: "wrong", StateFile: filepath.Join(t.TempDir(), "b.json"), Entities: []state.Entity{state.Customer}})
	if _, err := a.Pass(ctx); !errors.Is(err, storesync.ErrAgentRefused) || !strings.Contains(err.Error(), "401") {
		t.Fatalf("wrong key: %v", err)
	}
}

// badEvent answers 400 for the event of one entity id (as intake would for an invalid
// one) and passes everything else to the app.
type badEvent struct {
	app *fakeApp
	id  string
}

func (b *badEvent) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	evs, err := nop.DecodeRequest(state.Customer, body)
	if err == nil {
		for i, ev := range evs {
			if ev.EntityID() == b.id {
				w.Header().Set("Content-Type", "application/json")
				w.WriteHeader(http.StatusBadRequest)
				fmt.Fprintf(w, `{"error":{"code":"invalid_event","message":"data.email: too long","index":%d,"field":"data.email"}}`, i)
				return
			}
		}
	}
	r.Body = readCloser{strings.NewReader(string(body))}
	r.SetPathValue("entity", "customer")
	b.app.ServeHTTP(w, r)
}

type readCloser struct{ *strings.Reader }

func (readCloser) Close() error { return nil }

// A row that goes back to a state the agent sent earlier (A, B, then A again, each in a
// pass of its own) reaches the app each time, though the three passes run within
// Service Bus's duplicate detection window: the reader's id for A is the same both
// times, and the queue would drop the second A while the app answered 202, leaving the
// app on B for good. The pass's part of the id keeps them apart; within a pass, a row
// read again in the same state keeps its id.
func TestAgentStateReturnedToWithinDuplicateWindow(t *testing.T) {
	ctx := context.Background()
	q, err := localqueue.Open(localqueue.Options{}) // duplicate detection over 10 minutes, as the Bicep sets it
	if err != nil {
		t.Fatal(err)
	}
	defer q.Close()
	in := intake.New(intake.Options{Sender: q, Secrets: intake.StaticSecrets{"whsecret"}})
	srv := httptest.NewServer(http.StripPrefix("/api/events/", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		r.SetPathValue("entity", r.URL.Path)
		in.ServeHTTP(w, r)
	})))
	defer srv.Close()
	src := storesynctest.New("USD")
	a := newAgent(t, src, srv.URL+"/api/events/{entity}", filepath.Join(t.TempDir(), "agent.json"))
	for i, email := range []string{"a@example.com", "b@example.com", "a@example.com", "a@example.com"} {
		src.Put(state.Customer, 1, storesynctest.Customer(1, email))
		p, err := a.Pass(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if want := i < 3; (p[state.Customer].Queued == 1) != want {
			t.Fatalf("pass %d (%s): %+v, want sent %v", i+1, email, p[state.Customer], want)
		}
	}

	var got []string
	rctx, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
	defer cancel()
	bulk, _ := nop.BulkQueue(state.Customer)
	for _, name := range []string{"customers", bulk} {
		q.Run(rctx, name, 1, func(_ context.Context, d localqueue.Delivery) error {
			evs, _, err := nop.DecodeEnvelope(d.Body)
			if err != nil {
				return err
			}
			for _, ev := range evs {
				got = append(got, *ev.Customer.Email)
			}
			return nil
		})
	}
	if !slices.Equal(got, []string{"a@example.com", "b@example.com", "a@example.com"}) {
		t.Fatalf("the app received %v, want the three states in order", got)
	}
}

// An event the reader made just under the size limit, which the pass's longer id takes
// over it, is left out and logged with the reason; the pass goes on with the others.
func TestAgentEventOverTheLimitWithItsPassID(t *testing.T) {
	src := storesynctest.New("USD")
	src.Put(state.Customer, 1, storesynctest.Customer(1, "one@example.com"))
	base := storesynctest.Customer(2, "two@example.com")
	const rawOverhead = len(`{"id":"store-customer-2-0123456789abcdef","type":"customer.updated","occurredOnUtc":"2026-12-05T01:02:03.123456789Z","storeId":1,"data":}`)
	pad := nop.MaxEventBytes - 2 - rawOverhead - len(base) - len(`,"pad":""`)
	big := append(base[:len(base)-1:len(base)-1], []byte(`,"pad":"`+strings.Repeat("x", pad)+`"}`)...)
	src.Put(state.Customer, 2, big)
	app, url := newFakeApp(t)
	var logs strings.Builder
	a, err := storesync.NewAgent(storesync.AgentOptions{Source: src, EventsURL: url, FunctionKey: "fkey", Secret: "whsecret",
		StateFile: filepath.Join(t.TempDir(), "agent.json"), Entities: []state.Entity{state.Customer},
		MinBackoff: time.Millisecond, MaxBackoff: 5 * time.Millisecond, Log: slog.New(slog.NewTextHandler(&logs, nil))})
	if err != nil {
		t.Fatal(err)
	}
	p, err := a.Pass(context.Background())
	if c := p[state.Customer]; err != nil || c.RowsRead != 2 || c.Queued != 1 || c.Failed != 1 || len(c.Failures) != 1 || c.Failures[0].ID != "2" {
		t.Fatalf("pass: %v %+v, want 1 queued and customer 2 failed", err, c)
	}
	if got := app.take(); !slices.Equal(got, []string{"1"}) {
		t.Errorf("delivered %v, want customer 1 alone", got)
	}
	if !strings.Contains(logs.String(), "not sent") || !strings.Contains(logs.String(), "id=2") || !strings.Contains(logs.String(), "pass's id") {
		t.Errorf("customer 2 left out without a word; log:\n%s", logs.String())
	}
}

// A state file left empty or cut short (a crash or power cut mid-write) does not stop the
// agent for good: it starts a new pass, and every row lands.
func TestAgentDamagedStateFileStartsANewPass(t *testing.T) {
	src := storesynctest.New("USD")
	fill(src, 5)
	for name, content := range map[string]string{
		"empty":     "",
		"truncated": `{"pass":{"startedAt":"2026-01-02T03:04:05Z","progress":{"customer":{"after":`,
	} {
		app, url := newFakeApp(t)
		file := filepath.Join(t.TempDir(), "agent.json")
		if err := os.WriteFile(file, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		a, err := storesync.NewAgent(storesync.AgentOptions{Source: src, EventsURL: url, FunctionKey: "fkey", Secret: "whsecret",
			StateFile: file, Entities: []state.Entity{state.Customer}, MinBackoff: time.Millisecond, MaxBackoff: 5 * time.Millisecond})
		if err != nil {
			t.Fatalf("%s state file: %v", name, err)
		}
		if _, err := a.Pass(context.Background()); err != nil {
			t.Fatalf("%s state file: pass: %v", name, err)
		}
		if got := app.take(); !slices.Equal(got, ids(1, 5)) {
			t.Errorf("%s state file: delivered %v", name, got)
		}
	}
}

// One event too large for the app, or for a proxy in front of it (413 on an array of one),
// is counted failed with the reason and the pass goes on: the rows after it arrive.
func TestAgentEventTooLargeForTheAppLeftOut(t *testing.T) {
	src := storesynctest.New("USD")
	fill(src, 25)
	app, _ := newFakeApp(t)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		if bytes.Contains(body, []byte(`"c3@example.com"`)) {
			http.Error(w, "Request Entity Too Large", http.StatusRequestEntityTooLarge)
			return
		}
		r.Body = readCloser{strings.NewReader(string(body))}
		r.SetPathValue("entity", "customer")
		app.ServeHTTP(w, r)
	}))
	defer srv.Close()
	p, err := newAgent(t, src, srv.URL+"/api/events/{entity}", filepath.Join(t.TempDir(), "a.json")).Pass(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	got := app.take()
	slices.SortFunc(got, func(a, b string) int { x, _ := strconv.Atoi(a); y, _ := strconv.Atoi(b); return x - y })
	if want := slices.DeleteFunc(ids(1, 25), func(s string) bool { return s == "3" }); !slices.Equal(slices.Compact(got), want) {
		t.Errorf("delivered %v, want every row but 3", got)
	}
	if c := p[state.Customer]; c.Failed != 1 || len(c.Failures) != 1 || c.Failures[0].ID != "3" || !strings.Contains(c.Failures[0].Reason, "413") {
		t.Errorf("progress %+v, want customer 3 failed with the 413", c)
	}
}
