package main

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/nopsync/nopsync/shared/apierror"
	"github.com/nopsync/nopsync/shared/funchost"
	"github.com/nopsync/nopsync/shared/nop"
)

// The Functions host polls a custom handler's GET / for 30 s after starting it and stops
// the app after three failed starts (Azure/azure-functions-host
// src/WebJobs.Script/Workers/Http/HttpWorkerOptions.cs, WorkerProcess.cs). Anything that
// needs the network (tokens, the state table, Key Vault) may take longer than that, or fail
// for minutes right after a first deployment while role assignments take effect (403). So
// the handler answers GET / at once and builds the app in the background, retrying, while
// the functions answer "not ready": the events intake 503 with Retry-After, queue
// invocations a failure (5xx, so Service Bus redelivers), the status page 200 with
// healthy false and the reason.

// startOptions tunes the background start-up.
type startOptions struct {
	// AttemptTimeout bounds one attempt (default 30 s).
	AttemptTimeout time.Duration
	// MinBackoff and MaxBackoff bound the wait between attempts, doubling from the first to
	// the second (defaults 1 s and 30 s).
	MinBackoff, MaxBackoff time.Duration
	// QueueWait is how long a queue invocation that arrives before the app is ready waits
	// for it before failing (default 2 minutes, well inside the 5-minute message lock and
	// the 10-minute functionTimeout). The host redelivers an abandoned message at once, so
	// failing at once would spend a message's deliveries in a second.
	QueueWait time.Duration
	// RetryAfter is the Retry-After of the intake's 503 while starting (default 10 s).
	RetryAfter time.Duration
}

// starter holds the app once built and answers for it until then.
type starter struct {
	o     startOptions
	log   *slog.Logger
	since time.Time

	ready chan struct{} // closed when app is set

	mu       sync.Mutex
	app      *app
	fns      map[string]funchost.Function
	attempts int
	lastErr  string
}

func newStarter(log *slog.Logger, o startOptions) *starter {
	if o.AttemptTimeout <= 0 {
		o.AttemptTimeout = 30 * time.Second
	}
	if o.MinBackoff <= 0 {
		o.MinBackoff = time.Second
	}
	if o.MaxBackoff < o.MinBackoff {
		o.MaxBackoff = max(30*time.Second, o.MinBackoff)
	}
	if o.QueueWait <= 0 {
		o.QueueWait = 2 * time.Minute
	}
	if o.RetryAfter <= 0 {
		o.RetryAfter = 10 * time.Second
	}
	return &starter{o: o, log: log, since: time.Now(), ready: make(chan struct{})}
}

// run builds the app with build until it succeeds or ctx ends. Each attempt has its own
// deadline; a failed attempt's partial app is closed by build.
func (s *starter) run(ctx context.Context, build func(context.Context) (*app, error)) {
	backoff := s.o.MinBackoff
	for {
		actx, cancel := context.WithTimeout(ctx, s.o.AttemptTimeout)
		a, err := build(actx)
		cancel()
		if err == nil {
			s.mu.Lock()
			s.app, s.fns = a, a.functions()
			s.attempts++
			s.lastErr = ""
			s.mu.Unlock()
			close(s.ready)
			s.log.Info("app ready", "attempts", s.attempts, "after", time.Since(s.since).Round(time.Millisecond).String())
			return
		}
		s.mu.Lock()
		s.attempts++
		s.lastErr = err.Error()
		n := s.attempts
		s.mu.Unlock()
		s.log.Warn("start-up not finished; retrying", "attempt", n, "retryIn", backoff.String(), "error", err.Error())
		select {
		case <-ctx.Done():
			return
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, s.o.MaxBackoff)
	}
}

// close closes the app if it was built.
func (s *starter) close() {
	s.mu.Lock()
	a := s.app
	s.mu.Unlock()
	if a != nil {
		a.Close()
	}
}

// state returns the functions once ready, else nil and why not.
func (s *starter) state() (map[string]funchost.Function, int, string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.fns, s.attempts, s.lastErr
}

// functions serves every function name: the app's own once it is ready, the answers
// above until then.
func (s *starter) functions() map[string]funchost.Function {
	fns := map[string]funchost.Function{}
	starting := funchost.HTTPFunction(http.HandlerFunc(s.serveStarting), "req", "res")
	for _, name := range functionNames {
		_, isQueue := nop.QueueEntity(name) // a queue function has its queue's name
		fns[name] = func(ctx context.Context, inv *funchost.Invocation) (*funchost.Result, error) {
			if isQueue {
				t := time.NewTimer(s.o.QueueWait)
				select {
				case <-s.ready:
				case <-t.C:
				case <-ctx.Done():
				}
				t.Stop()
			}
			ready, _, lastErr := s.state()
			if ready != nil {
				return ready[name](ctx, inv)
			}
			switch {
			case isQueue:
				return nil, fmt.Errorf("the app is still starting (%s); the message is redelivered", orNone(lastErr))
			case name == "autosync":
				return &funchost.Result{Logs: []string{"auto-sync skipped: the app is still starting"}}, nil
			default:
				return starting(ctx, inv)
			}
		}
	}
	return fns
}

// serveStarting answers the HTTP functions before the app is ready.
func (s *starter) serveStarting(w http.ResponseWriter, r *http.Request) {
	_, attempts, lastErr := s.state()
	w.Header().Set("Content-Type", "application/json")
	if hostPath(r.URL.Path) == "/api/status" && r.Method == http.MethodGet {
		// The status page renders when things are broken: 200, healthy false.
		b, _ := json.Marshal(map[string]any{"healthy": false, "starting": map[string]any{
			"since": s.since.UTC().Format(time.RFC3339), "attempts": attempts, "lastError": nullable(lastErr)}})
		w.WriteHeader(http.StatusOK)
		w.Write(b)
		return
	}
	w.Header().Set("Retry-After", strconv.Itoa(int((s.o.RetryAfter+time.Second-1)/time.Second)))
	apierror.Write(w, apierror.New(apierror.Unavailable, "the app is starting; nothing was accepted, retry later"), nil)
}

func orNone(lastErr string) string {
	if lastErr == "" {
		return "first attempt under way"
	}
	return "last attempt: " + lastErr
}

func nullable(s string) any {
	if s == "" {
		return nil
	}
	return s
}
