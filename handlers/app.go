package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nopsync/nopsync/shared/apierror"
	"github.com/nopsync/nopsync/shared/config"
	"github.com/nopsync/nopsync/shared/dataverse"
	"github.com/nopsync/nopsync/shared/delivery"
	"github.com/nopsync/nopsync/shared/funchost"
	"github.com/nopsync/nopsync/shared/intake"
	"github.com/nopsync/nopsync/shared/keyvault"
	"github.com/nopsync/nopsync/shared/nop"
	"github.com/nopsync/nopsync/shared/nopdb"
	"github.com/nopsync/nopsync/shared/ops"
	"github.com/nopsync/nopsync/shared/pictures"
	"github.com/nopsync/nopsync/shared/queue"
	"github.com/nopsync/nopsync/shared/state"
	"github.com/nopsync/nopsync/shared/storesync"
	"github.com/nopsync/nopsync/shared/syncer"
)

// functionNames lists the functions this executable serves: one folder each under
// functions/ (the drift tests hold the two lists together).
var functionNames = []string{"events", "customers", "products", "orders", "customers-bulk", "products-bulk", "orders-bulk", "autosync", "sync", "status", "deadletters"}

// app holds the clients and services, built once and shared by every invocation.
type app struct {
	cfg *config.Config
	log *slog.Logger

	store       state.Store
	sender      queue.Sender
	deadLetters queue.DeadLetters
	inspector   queue.Inspector
	dv          *dataverse.Client
	engine      *syncer.Engine
	ops         *ops.Ops
	intake      *intake.Intake
	deliveries  *delivery.Handler
	// tuneDelivery adjusts the failure policy (tests scale its delays).
	tuneDelivery func(*delivery.Options)
	source       *storesync.DB // the store reader's database; nil: reader off

	closers []func()
}

func (a *app) Close() {
	for i := len(a.closers) - 1; i >= 0; i-- {
		a.closers[i]()
	}
}

// wire builds the services on top of the outside systems already set on a (store,
// queues, Dataverse client).
func (a *app) wire(webhookSecrets intake.WebhookSecrets) error {
	a.store = ops.TrackFailures(a.store, time.Now)
	eng, err := syncer.New(syncer.Options{
		DV:    a.dv,
		State: a.store,
		Settings: syncer.Settings{
			StoreCurrencyCode: a.cfg.StoreCurrencyCode,
			PriceListName:     a.cfg.PriceListName,
			UnitGroupName:     a.cfg.UnitGroupName,
			DeletePolicy:      string(a.cfg.DeletePolicy),
			SyncImages:        a.cfg.SyncImages,
			WritesEnabled:     a.cfg.WritesEnabled,
		},
		// Picture URLs come from events: fetched from public addresses only, never from
		// the app's own port.
		HTTPClient: pictures.NewClient(pictures.Options{DenyPorts: ownPorts(a.cfg)}),
		Log:        a.log,
	})
	if err != nil {
		return fmt.Errorf("sync engine: %w", err)
	}
	a.engine = eng
	do := delivery.Options{Apply: eng.HandleMessage, State: a.store, Log: a.log,
		Outage: func(err error) bool { return !syncer.IsBusy(err) }}
	if s, ok := a.sender.(queue.Scheduler); ok {
		do.Scheduler = s
	}
	if a.tuneDelivery != nil {
		a.tuneDelivery(&do)
	}
	if a.deliveries, err = delivery.New(do); err != nil {
		return fmt.Errorf("delivery policy: %w", err)
	}
	a.ops = ops.New(ops.Options{
		State:              a.store,
		Sender:             a.sender,
		DeadLetters:        a.deadLetters,
		Inspector:          a.inspector,
		Probe:              probe{eng},
		Secret:             secretExpiry{a.dv},
		WebhookSecrets:     webhookSecrets,
		Stale:              eng,
		InvalidMessageKind: syncer.InvalidMessageKind,
		WritesEnabled:      a.cfg.WritesEnabled,
		AutoSyncEnabled:    a.cfg.AutoSyncEnabled,
		AutoSyncPeriod:     a.cfg.AutoSyncPeriod,
		Store:              a.storeSource(),
		StoreHash:          nopdb.DataHash,
		StoreCurrencyCode:  a.cfg.StoreCurrencyCode,
		Log:                a.log,
	})
	a.closers = append(a.closers, a.ops.Close)
	allowUnsigned := false
	if webhookSecrets == nil {
		if !a.cfg.Local {
			return errNoWebhookSecret
		}
		allowUnsigned = true
		a.log.Warn("no webhook secret configured: local mode accepts unsigned events (set WEBHOOK_SECRET to require signatures)")
	}
	a.intake = intake.New(intake.Options{Sender: a.sender, Secrets: webhookSecrets, Log: a.log, AllowUnsigned: allowUnsigned})
	return nil
}

var errNoWebhookSecret = errors.New("no webhook secret: set WEBHOOK_SECRET or KEY_VAULT_URL with WEBHOOK_SECRET_NAME")

// ownPorts are the ports this process serves on.
func ownPorts(cfg *config.Config) []int {
	var ports []int
	if cfg.HandlerPort > 0 {
		ports = append(ports, cfg.HandlerPort)
	}
	if _, p, err := net.SplitHostPort(cfg.ListenAddr); err == nil {
		if n, err := strconv.Atoi(p); err == nil && n > 0 {
			ports = append(ports, n)
		}
	}
	return ports
}

// public serves the app's public routes (the HTTP functions' routes under /api), matched
// as the Functions host matches them (hostPath).
func (a *app) public() http.Handler {
	mux := http.NewServeMux()
	mux.Handle("/api/events/{entity}", a.intake)
	a.ops.Routes(mux)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if p := hostPath(r.URL.Path); p != r.URL.Path {
			r2 := r.Clone(r.Context())
			r2.URL.Path, r2.URL.RawPath = p, ""
			r = r2
		}
		if _, pattern := mux.Handler(r); pattern == "" {
			noRoute(w, r, mux) // a JSON answer, not net/http's plain text
			return
		}
		mux.ServeHTTP(w, r)
	})
}

// noRoute answers a request no route of mux takes: 405 with Allow when the path has
// routes for other methods, else 404, both as the app's JSON errors.
func noRoute(w http.ResponseWriter, r *http.Request, mux *http.ServeMux) {
	var allow []string
	for _, m := range []string{http.MethodGet, http.MethodPost} {
		r2 := r.Clone(r.Context())
		r2.Method = m
		if _, pattern := mux.Handler(r2); pattern != "" {
			allow = append(allow, m)
		}
	}
	if len(allow) > 0 {
		w.Header().Set("Allow", strings.Join(allow, ", "))
		apierror.Write(w, apierror.New(apierror.MethodNotAllowed, r.Method+" is not allowed on "+r.URL.Path+"; use "+strings.Join(allow, " or ")), nil)
		return
	}
	apierror.Write(w, apierror.New(apierror.NotFound, "no route "+r.URL.Path+" (see docs/operations.md for the routes)"), nil)
}

// hostPath is a request path as the Functions host routes it: ASP.NET Core routing ignores
// case in a route's literal segments and takes a trailing slash, and the host passes the
// URL on as the caller wrote it. Every route here is /api/<literal>[/{parameters}], so the
// first two segments are lowered and a trailing slash dropped; parameters keep their case.
func hostPath(p string) string {
	if len(p) > 1 {
		p = strings.TrimSuffix(p, "/")
	}
	segs := strings.SplitN(p, "/", 4) // "", "api", "<literal>", rest
	for i := 1; i < len(segs) && i <= 2; i++ {
		segs[i] = strings.ToLower(segs[i])
	}
	return strings.Join(segs, "/")
}

// functions maps each function name to its implementation.
func (a *app) functions() map[string]funchost.Function {
	pub := a.public()
	fns := map[string]funchost.Function{
		"events":      funchost.HTTPFunction(pub, "req", "res"),
		"sync":        funchost.HTTPFunction(pub, "req", "res"),
		"status":      funchost.HTTPFunction(pub, "req", "res"),
		"deadletters": funchost.HTTPFunction(pub, "req", "res"),
		"autosync":    a.autosync,
	}
	for _, q := range nop.Queues() { // each queue's function has the queue's name
		fns[q] = a.queueFunction(q)
	}
	return fns
}

// queueFunction applies a queue message. A transient failure either fails the
// invocation (Service Bus redelivers at once, then dead-letters), its reason recorded
// in the state store first because the host keeps nothing of a failed answer, or,
// after the first deliveries or during an outage, completes it once a delayed copy is
// scheduled (package delivery).
func (a *app) queueFunction(queueName string) funchost.Function {
	return func(ctx context.Context, inv *funchost.Invocation) (*funchost.Result, error) {
		m, err := inv.ServiceBus("msg")
		switch {
		case errors.Is(err, funchost.ErrUndecodableBody):
			// No delivery makes it readable: applied as it came, it is recorded as an
			// invalid message with its reason and acknowledged, instead of failing every
			// delivery and dead-lettering without one.
			a.log.Error("queue message body can't be read", "queue", queueName, "message", m.MessageID, "error", err)
		case err != nil:
			return nil, err
		}
		err = a.deliveries.Handle(ctx, delivery.Message{Queue: queueName, MessageID: m.MessageID, SessionID: m.SessionID,
			Subject: m.Subject, ContentType: m.ContentType, Body: m.Body, DeliveryCount: m.DeliveryCount, ApplicationProperties: m.ApplicationProperties})
		if err != nil {
			return nil, fmt.Errorf("message %s (delivery %d): %w", m.MessageID, m.DeliveryCount, err)
		}
		return &funchost.Result{Logs: []string{"applied message " + m.MessageID}}, nil
	}
}

// autosync runs on the timer, every minute; ops decides whether a run is due.
func (a *app) autosync(ctx context.Context, inv *funchost.Invocation) (*funchost.Result, error) {
	if _, err := inv.Timer("timer"); err != nil {
		a.log.Warn("autosync: timer payload", "error", err) // the payload is informational
	}
	run, err := a.ops.AutoSync(ctx)
	if err != nil {
		// Not retried by the host either way; the run and its error are recorded.
		a.log.Error("auto-sync run failed", "error", err)
		return &funchost.Result{Logs: []string{"auto-sync failed: " + err.Error()}}, nil
	}
	if run == nil {
		return &funchost.Result{Logs: []string{"auto-sync not due"}}, nil
	}
	return &funchost.Result{Logs: []string{fmt.Sprintf("auto-sync run %s: re-sent %d, replayed %d", run.ID, run.Queued, run.Replayed)}}, nil
}

// probe adapts the engine's connection check to the status page.
type probe struct{ e *syncer.Engine }

func (p probe) Probe(ctx context.Context) ops.Connection {
	c := p.e.Connection(ctx)
	return ops.Connection{Reachable: c.Reachable, OrganizationID: c.OrganizationID, UserID: c.UserID, Currency: c.Currency, Error: c.Error}
}

// secretExpiry reads the client secret's Key Vault expiry through the Dataverse client.
type secretExpiry struct{ c *dataverse.Client }

func (s secretExpiry) ClientSecretExpiry(ctx context.Context) (*time.Time, error) {
	return s.c.SecretExpires(ctx)
}

// vaultWebhookSecrets reads the webhook secret from Key Vault (cached by Secrets). A value
// holding several secrets separated by commas supports rotation: the store signs with
// the new one while the old one is still accepted.
type vaultWebhookSecrets struct {
	s    *keyvault.Secrets
	name string

	mu        sync.Mutex
	refreshed time.Time
}

// minVaultRefresh bounds how often a failed signature makes the app read the vault again.
const minVaultRefresh = 30 * time.Second

func (v *vaultWebhookSecrets) WebhookSecrets(ctx context.Context) ([]string, error) {
	val, _, err := v.s.Get(ctx, v.name)
	if err != nil {
		return nil, fmt.Errorf("webhook secret %q from Key Vault: %w", v.name, err)
	}
	var out []string
	for _, p := range strings.Split(val, ",") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out, nil
}

// RefreshWebhookSecrets reads the vault again after a signature did not match the cached
// secret (a rotation), at most every minVaultRefresh.
func (v *vaultWebhookSecrets) RefreshWebhookSecrets(ctx context.Context) ([]string, error) {
	v.mu.Lock()
	if time.Since(v.refreshed) >= minVaultRefresh {
		v.refreshed = time.Now()
		v.s.Invalidate(v.name)
	}
	v.mu.Unlock()
	return v.WebhookSecrets(ctx)
}
