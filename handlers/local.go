package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/nopsync/nopsync/shared/apierror"
	"github.com/nopsync/nopsync/shared/config"
	"github.com/nopsync/nopsync/shared/dataverse"
	"github.com/nopsync/nopsync/shared/dataverse/dataversetest"
	"github.com/nopsync/nopsync/shared/delivery"
	"github.com/nopsync/nopsync/shared/funchost"
	"github.com/nopsync/nopsync/shared/localqueue"
	"github.com/nopsync/nopsync/shared/localstore"
	"github.com/nopsync/nopsync/shared/nop"
	"github.com/nopsync/nopsync/shared/state"
)

// localOptions lets tests shorten local mode's clocks.
type localOptions struct {
	// started receives the listen address once the public routes answer.
	started func(addr string)
	// timerEvery is the autosync timer's period (default one minute, as in function.json).
	timerEvery time.Duration
	// redeliveryDelay is the embedded queue's pause before redelivering a failed message.
	redeliveryDelay time.Duration
	// workers per queue (default 8, like host.json's maxConcurrentSessions).
	workers int
	// sandbox overrides the sandbox's simulator options.
	sandbox *dataversetest.Options
	// maxDeliveryCount of the embedded queue (default 10, as the Bicep sets).
	maxDeliveryCount int
	// tuneDelivery adjusts the failure policy (package delivery: delays, breaker).
	tuneDelivery func(*delivery.Options)
	// wrapStore wraps the state store (a test's outage switch).
	wrapStore func(state.Store) state.Store
	// tuneDataverse adjusts the Dataverse client (a test's own simulator: its CA, a
	// fake vault's secret source, fewer retries).
	tuneDataverse func(*dataverse.Options)
	// peerTTL is the peer leases' lifetime with the state in Table Storage (default 30 s).
	peerTTL time.Duration
}

// runLocal runs the whole app in this process: the public routes on LISTEN_ADDR, the
// queue functions fed by the embedded queue through the same host-protocol code as in
// Azure, the autosync timer on an in-process clock, and (without DATAVERSE_URL) the
// Dataverse sandbox.
func runLocal(ctx context.Context, cfg *config.Config, log *slog.Logger, lo *localOptions) error {
	if lo == nil {
		lo = &localOptions{}
	}
	if lo.timerEvery <= 0 {
		lo.timerEvery = time.Minute
	}
	if lo.workers <= 0 {
		lo.workers = 8 // as host.json's maxConcurrentSessions
	}
	a := &app{cfg: cfg, log: log, tuneDelivery: lo.tuneDelivery}
	defer a.Close()

	if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
		return fmt.Errorf("LOCAL_DATA_DIR %s: %w", cfg.DataDir, err)
	}
	// The sandbox (and so the sync state with it) lives in memory: an event sent again
	// after a restart must land again, not be dropped as a repeat of one sent before.
	q, err := localqueue.Open(localqueue.Options{Dir: filepath.Join(cfg.DataDir, "queue"), RedeliveryDelay: lo.redeliveryDelay,
		MaxDeliveryCount: lo.maxDeliveryCount, ForgetDuplicates: cfg.Sandbox()})
	if err != nil {
		return fmt.Errorf("embedded queue in %s: %w", cfg.DataDir, err)
	}
	a.closers = append(a.closers, func() { q.Close() })
	a.sender, a.deadLetters, a.inspector = q, q, q

	mux := http.NewServeMux()
	var sim *dataversetest.Server
	// Processes that keep their state in one table share one Dataverse budget, as in
	// Azure; with the embedded store (one process by construction) or the sandbox (a
	// Dataverse of its own) there is nobody to share with.
	var peers instancePeers
	sharedState := cfg.StateConnectionString != "" && !cfg.Sandbox()
	if cfg.Sandbox() {
		so := dataversetest.Options{BaseCurrency: dataversetest.Currency{ISOCode: cfg.StoreCurrencyCode, Name: cfg.StoreCurrencyCode, Symbol: cfg.StoreCurrencyCode, Precision: 2}}
		if lo.sandbox != nil {
			so = *lo.sandbox
		}
		sim = dataversetest.NewServer(so)
		a.closers = append(a.closers, sim.Close)
		a.dv, err = sim.Client(dataverse.Options{BulkChunkSize: cfg.BulkSize})
		if err != nil {
			return fmt.Errorf("sandbox client: %w", err)
		}
		mux.Handle("/sandbox/", http.StripPrefix("/sandbox", sim.BrowseHandler()))
	} else {
		tune := lo.tuneDataverse
		if sharedState {
			tune = peers.tune(tune)
		}
		if a.dv, err = newDataverseClient(cfg, log, nil, tune); err != nil {
			return err
		}
	}

	// The sandbox lives in memory, so its sync state must too: durable state over an
	// empty sandbox would skip writes the sandbox never saw. The queue stays durable.
	switch {
	case cfg.Sandbox():
		if cfg.StateConnectionString != "" {
			log.Warn("STATE_STORAGE_CONNECTION_STRING is ignored with the sandbox: its state is kept in memory, as its rows are")
		}
		st, err := localstore.Open("")
		if err != nil {
			return err
		}
		a.closers = append(a.closers, func() { st.Close() })
		a.store = st
	case cfg.StateConnectionString != "":
		if a.store, err = newTableStore(ctx, cfg, nil); err != nil {
			return err
		}
	default:
		st, err := localstore.Open(filepath.Join(cfg.DataDir, "state"))
		if err != nil {
			return fmt.Errorf("embedded state store in %s: %w", cfg.DataDir, err)
		}
		a.closers = append(a.closers, func() { st.Close() })
		a.store = st
	}

	if lo.wrapStore != nil {
		a.store = lo.wrapStore(a.store)
	}
	if sharedState {
		peers.start(a, a.store, lo.peerTTL)
	}
	webhook, err := webhookSecrets(cfg, nil)
	if err != nil {
		return err
	}
	if a.source, err = newStoreSource(cfg, nil); err != nil {
		return err
	}
	if a.source != nil {
		a.closers = append(a.closers, func() { a.source.Close() })
	}
	if err := a.wire(webhook); err != nil {
		return err
	}
	host := funchost.NewServer(a.functions(), log, 9*time.Minute)

	pub := a.public()
	mux.Handle("/api/", pub)
	mux.Handle("/{api}/", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		// The host matches the route prefix in any case (/API/status), as public matches
		// the rest; other paths get the same JSON 404 as unknown routes under /api.
		if strings.EqualFold(r.PathValue("api"), "api") {
			pub.ServeHTTP(w, r)
			return
		}
		apierror.Write(w, apierror.New(apierror.NotFound, "no route "+r.URL.Path), nil)
	}))
	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(map[string]any{
			"app":     "nopsync (local mode)",
			"routes":  []string{"POST /api/events/{customer|product|order}", "POST /api/sync", "GET /api/sync/{runId}", "GET /api/status", "GET /api/status/{entity}/{id}", "GET /api/deadletters/{entity}", "POST /api/deadletters/{entity}/replay"},
			"sandbox": map[bool]any{true: []string{"/sandbox/api/data/v9.2/contacts", "/sandbox/api/data/v9.2/products", "/sandbox/api/data/v9.2/salesorders", "/sandbox/api/data/v9.2/salesorderdetails", "/sandbox/api/data/v9.2/invoices"}, false: nil}[sim != nil],
		})
	})

	ln, err := net.Listen("tcp", cfg.ListenAddr)
	if err != nil {
		return fmt.Errorf("LISTEN_ADDR %s: %w", cfg.ListenAddr, err)
	}
	if ip := ln.Addr().(*net.TCPAddr).IP; !ip.IsLoopback() {
		// Local mode has no function keys: sync, status and dead-letter replay answer anyone
		// who reaches this address.
		log.Warn("local mode listens beyond this machine and its admin routes have no key (/api/sync, /api/status, /api/deadletters): keep LISTEN_ADDR on 127.0.0.1 or put the port behind a firewall", "addr", ln.Addr().String())
	}
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	for _, qn := range nop.Queues() { // each queue's function has the queue's name
		fn := qn
		wg.Add(1)
		go func() {
			defer wg.Done()
			err := q.Run(ctx, qn, lo.workers, func(ctx context.Context, d localqueue.Delivery) error {
				return invokeQueueFunction(ctx, host, fn, d)
			})
			if err != nil && !errors.Is(err, context.Canceled) {
				log.Error("queue consumer stopped", "queue", qn, "error", err)
			}
		}()
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		runTimer(ctx, host, lo.timerEvery, log)
	}()

	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	addr := ln.Addr().String()
	log.Info("local mode started", "listen", "http://"+addr, "sandbox", sim != nil, "dataDir", cfg.DataDir, "currency", cfg.StoreCurrencyCode)
	banner := fmt.Sprintf("nopsync local mode: http://%s  (status: /api/status", addr)
	if sim != nil {
		banner += ", sandbox: /sandbox/api/data/v9.2/contacts"
	}
	fmt.Fprintln(os.Stdout, banner+")") // information: stdout, as the host expects of a handler
	if lo.started != nil {
		lo.started(addr)
	}
	select {
	case <-ctx.Done():
	case err := <-errc:
		cancel()
		wg.Wait()
		return fmt.Errorf("serve %s: %w", addr, err)
	}
	sctx, scancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer scancel()
	srv.Shutdown(sctx)
	wg.Wait()
	return nil
}

// invokeQueueFunction hands an embedded-queue delivery to the queue function exactly as
// the Functions host would: a host-shaped invocation POSTed to /{function}; anything but
// 200 is a failed invocation, so the queue redelivers (and dead-letters at the limit).
func invokeQueueFunction(ctx context.Context, host http.Handler, fn string, d localqueue.Delivery) error {
	body, err := funchost.EncodeServiceBus(fn, "msg", funchost.ServiceBusMessage{
		Body: d.Body, MessageID: d.MessageID, SessionID: d.SessionID, ContentType: d.ContentType, Subject: d.Subject,
		LockToken: d.LockToken, DeliveryCount: d.DeliveryCount, SequenceNumber: d.SequenceNumber, EnqueuedTime: d.EnqueuedAt,
		ApplicationProperties: d.ApplicationProperties,
	}, time.Now())
	if err != nil {
		return err
	}
	return invoke(ctx, host, fn, body)
}

func invoke(ctx context.Context, host http.Handler, fn string, body []byte) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, "/"+fn, bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	rec := &memResponse{header: http.Header{}}
	host.ServeHTTP(rec, req)
	if rec.status == 0 {
		rec.status = http.StatusOK // nothing written: net/http answers 200
	}
	// The host completes a message on any 2xx, whatever the body; anything else fails
	// the invocation.
	if rec.status < 200 || rec.status > 299 {
		var res funchost.Result
		json.Unmarshal(rec.body.Bytes(), &res)
		msg := fmt.Sprintf("function %s answered %d", fn, rec.status)
		if len(res.Logs) > 0 {
			msg += ": " + res.Logs[len(res.Logs)-1]
		}
		return errors.New(msg)
	}
	return nil
}

// runTimer fires the autosync function on minute boundaries (or every d in tests), with
// the payload the host's timer trigger sends.
func runTimer(ctx context.Context, host http.Handler, d time.Duration, log *slog.Logger) {
	var last time.Time
	for {
		now := time.Now()
		next := now.Truncate(d).Add(d)
		select {
		case <-ctx.Done():
			return
		case <-time.After(next.Sub(now)):
		}
		body, err := funchost.EncodeTimer("autosync", "timer", last, next.Add(d), false, time.Now())
		if err == nil {
			err = invoke(ctx, host, "autosync", body)
		}
		if err != nil && ctx.Err() == nil {
			log.Error("autosync timer", "error", err)
		}
		last = next
	}
}

// memResponse keeps an in-process response.
type memResponse struct {
	header http.Header
	status int
	body   bytes.Buffer
}

func (m *memResponse) Header() http.Header { return m.header }
func (m *memResponse) WriteHeader(s int) {
	if m.status == 0 {
		m.status = s
	}
}
func (m *memResponse) Write(b []byte) (int, error) {
	if m.status == 0 {
		m.status = http.StatusOK
	}
	return m.body.Write(b)
}
