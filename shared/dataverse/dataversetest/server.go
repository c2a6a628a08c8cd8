// Package dataversetest is an in-process simulator of the Dataverse Web API v9.2 with the
// Dynamics 365 Sales tables the sync writes, plus a Microsoft Entra ID token endpoint that
// azidentity's ClientSecretCredential accepts. It serves HTTPS on 127.0.0.1 with its own
// CA. Each behaviour follows Microsoft's documentation, strictness included, and its
// comment names the page, as "Learn: <page>" for a page under
// https://learn.microsoft.com/power-apps/developer/data-platform/ (api-limits,
// bulk-operations, entity-attribute-metadata, use-upsert-insert-update-record,
// use-alternate-key-reference-record, reference/web-service-error-codes and, under webapi/,
// authenticate-web-api, compose-http-requests-handle-errors, create-entity-web-api,
// associate-disassociate-entities-using-web-api, update-delete-entities-using-web-api,
// execute-batch-operations-using-web-api, perform-conditional-operations-using-web-api,
// query/filter-rows), or by its full address otherwise:
//   - the table reference pages, https://learn.microsoft.com/dynamics365/developer/reference/entities/<table>
//     (product, pricelevel, productpricelevel, uom, uomschedule, salesorder,
//     salesorderdetail, orderclose, invoice) and
//     https://learn.microsoft.com/power-apps/developer/data-platform/reference/entities/<table>
//     (contact, account, transactioncurrency);
//   - the Sales developer guide, https://learn.microsoft.com/dynamics365/sales/developer/
//     (publish-revise-revert-retire-activate-products,
//     create-manage-product-families-products-bundles-product-properties,
//     product-pricing-methods, quote-order-invoice-entities);
//   - Microsoft Entra's client credentials flow,
//     https://learn.microsoft.com/entra/identity-platform/v2-oauth2-client-creds-grant-flow;
//   - Web API client errors,
//     https://learn.microsoft.com/troubleshoot/power-platform/power-apps/dataverse/web-api-client-errors.
//
// Where Microsoft does not document a behaviour (an HTTP status, an error code), the
// behaviour is an Option defaulting to the most likely one, and its comment says so.
//
// Limits on bulk writes, batches and retries (bulk.go, batch.go, webapi.go):
//   - Bulk messages per table: productpricelevel has no CreateMultiple, UpdateMultiple or
//     UpsertMultiple (its table reference page lists none; Options.BulkUnsupported adds
//     tables); they are refused with 0x80040800 "The '<Message>' method does not support
//     entities of type '<table>'" (the form reported in microsoft/coe-starter-kit#9332; the
//     status is Options.BulkRefusalStatus, undocumented). GET sdkmessagefilters answers the
//     check Microsoft gives, sdkmessageid/name eq 'CreateMultiple' and primaryobjecttypecode
//     eq '<table>' (Learn: bulk-operations, "Availability with standard tables").
//   - A bulk request too large for the server fails with "SQL timeout expired", nothing
//     written (Faults.BulkTimeoutRows;
//     https://learn.microsoft.com/troubleshoot/power-platform/power-apps/dataverse/bulk-operation-errors).
//   - $batch stops at the first failing part, earlier parts stay applied; the batch's status
//     is 400 (Learn: webapi/execute-batch-operations-using-web-api, "Handling errors"), a
//     part's 5xx fails it with that status (undocumented). Faults.FailBatchPart fails a
//     chosen part, with a 429 carrying Retry-After and held like any throttled request
//     (Learn: api-limits); Faults.DropAnswers runs a request and loses its answer.
//   - "Prefer: return=representation" adds a retrieve to the write, charged to the
//     execution time (Learn: webapi/create-entity-web-api, "Create with data returned").
//
// It is also what local mode ships as its sandbox (go run ./handlers with no Dataverse
// settings): the app writes to it and /sandbox/ shows what landed.
//
// Typical use from a test, as with net/http/httptest:
//
//	srv := dataversetest.NewServer(dataversetest.Options{TimeScale: 0.01})
//	defer srv.Close()
//	client, err := srv.Client(dataverse.Options{MaxRetries: 1}) // the server's URL, credentials and CA
//	... exercise the code under test ...
//	row, ok := srv.Row("contacts", id)          // what landed, as stored
//	if srv.RetryAfterViolations() != 0 { ... } // Retry-After honoured?
//
// Documented limits and rules it enforces:
//   - A query holds at most 500 conditions (each comparison and string function is one);
//     more gives 400 TooManyConditionsInQuery 0x8004430C (Learn: webapi/query/filter-rows,
//     "Condition limits").
//   - Product lifecycle (Sales developer guide, publish-revise-revert-retire-activate-products;
//     codes from Learn: reference/web-service-error-codes): a product in a price list can't
//     be retired (CannotRetireProductFromActiveBundle 0x8004F997); retiring a family retires
//     its hierarchy and fails while a child can't be retired (ProductHasUnretiredChild
//     0x8004F910); only a retired product without a parent can be set Active again, never a
//     retired family or a retired child of a family; a product's parent can't be changed
//     once set; one product record is published per request (an UpdateMultiple setting
//     several Active is refused; PublishProductHierarchy publishes a family's hierarchy).
//   - The organization's pricing settings, in its organizations row (Options.
//     PricingDecimalPrecision, DiscountPerUnit, SystemPricingOff; Learn:
//     reference/entities/organization): priceperunit keeps pricingdecimalprecision
//     decimals; discountcalculationmethod per unit takes manualdiscountamount off each unit,
//     (price − discount) × quantity; with oobpricecalculationenabled off no amounts are
//     computed.
//   - Security roles (DenyPrivilege): a request needing a privilege the role lacks gets 403
//     PrivilegeDenied 0x80040220 "Principal user (Id=…), is missing prvCreateProduct
//     privilege … for entity 'product'" (Learn: reference/web-service-error-codes;
//     https://learn.microsoft.com/power-platform/admin/security-roles-privileges).
package dataversetest

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"log"
	"maps"
	"math"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"net/url"
	"regexp"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/google/uuid"

	"github.com/nopsync/nopsync/shared/dataverse"
)

// Options configure a Server. The zero value is a stock Sales environment with USD as
// base currency, the documented service protection limits and real-time clocks.
type Options struct {
	// TenantID, ClientID, ClientSecret of the app registration; generated when empty.
	TenantID, ClientID, ClientSecret string
	// TimeScale multiplies every simulated duration: the limits window, execution time
	// budget, execution costs and Retry-After. 0.01 makes the 300 s window 3 s. Default 1.
	TimeScale float64
	// Limits are the service protection limits (Learn: api-limits).
	Limits Limits
	// ExecutionCost is the simulated server time per operation (before TimeScale); zero
	// fields take CostDefault's. CostModels names the models the benchmarks choose from.
	ExecutionCost ExecutionCost
	// NoRateLimitHeaders leaves out the x-ms-ratelimit-burst-remaining-xrm-requests and
	// x-ms-ratelimit-time-remaining-xrm-requests headers (see limits.go): an environment
	// that doesn't send them, so a client has only its latencies to go by.
	NoRateLimitHeaders bool
	// SleepExecutionTime makes requests actually take their (scaled) execution time, so
	// the concurrency limit and client parallelism behave realistically. The simulator's
	// own work on a request counts toward that time, as a real server's does.
	SleepExecutionTime bool
	// DopHint is the x-ms-dop-hint response header value. Default 4.
	DopHint int
	// History keeps, for every row, each committed write: when, by which request, and
	// the row as it stood afterwards (see Server.History). For tests that need to find
	// out which request left a row as it is; it keeps every version in memory.
	History bool
	// TokenLifetime is the access token lifetime (real time, not scaled). Default 1 h.
	TokenLifetime time.Duration
	// BaseCurrency defaults to USD with precision 2.
	BaseCurrency Currency
	// Currencies are seeded in addition to the base currency.
	Currencies []Currency
	// PriceLists and UnitGroups are seeded when set (the app normally creates them).
	PriceLists []PriceList
	UnitGroups []UnitGroup
	// ProductsCreatedActive mirrors Organization.CreateProductsWithoutParentInActiveState=1:
	// products without a parent family start Active instead of Draft (publish-revise-revert-retire-activate-products).
	ProductsCreatedActive bool
	// ActiveProductsUpdatable lets Active products be updated in place; by default such
	// updates fail with ProductCanOnlyBeUpdatedInDraft (publish-revise-revert-retire-activate-products;
	// whether a PATCH of an Active product fails is not documented).
	ActiveProductsUpdatable bool
	// ConvertSetsOrderInvoiced makes ConvertSalesOrderToInvoice move the order to
	// Invoiced (4/100003). Default: the order keeps its state (not documented).
	ConvertSetsOrderInvoiced bool
	// AllowInactiveProductsOnLines accepts Draft/Retired products on order lines.
	AllowInactiveProductsOnLines bool
	// RefuseFamiliesOnLines refuses a product family on an order or invoice line. The
	// docs do not say whether Dataverse takes one (the app writes a product family's
	// lines as products, and falls back to write-in lines when refused); this plays an
	// environment that refuses.
	RefuseFamiliesOnLines bool
	// AllowStringCaseFunctions accepts tolower()/toupper() in $filter. Dataverse documents
	// only contains/startswith/endswith; string comparisons are case-insensitive anyway.
	AllowStringCaseFunctions bool
	// UpsertMultipleRequiresAlternateKey rejects UpsertMultiple targets that identify the
	// row only by primary key (see bulk.go for what the docs say).
	UpsertMultipleRequiresAlternateKey bool
	// BulkUnsupported lists entity sets whose CreateMultiple/UpdateMultiple/UpsertMultiple
	// messages are not available ("not all standard tables support these messages").
	BulkUnsupported []string
	// BulkRefusalStatus is the HTTP status of the answer refusing a bulk message on a table
	// without it (default 400; see bulk.go).
	BulkRefusalStatus int
	// NoMessageFilters answers sdkmessagefilters with 403, as for a role that can't read it.
	NoMessageFilters bool
	// AlternateKeys declares alternate keys per entity set, e.g. {"contacts": {{"emailaddress1"}}}.
	AlternateKeys map[string][][]string
	// ExtraColumns adds columns per entity set: name -> type (string, memo, int, decimal,
	// money, bool, picklist, datetime, date).
	ExtraColumns map[string]map[string]string
	// ViolationGrace: a request arriving within this real time after a 429 is not counted
	// as a Retry-After violation (it was already in flight). Default 100 ms.
	ViolationGrace time.Duration
	// Seed for fault injection randomness (0: fixed default).
	Seed uint64
	// PricingDecimalPrecision is the organization's pricingdecimalprecision (0–4), the
	// decimals a priceperunit keeps; nil: 2, the default.
	PricingDecimalPrecision *int
	// DiscountPerUnit sets discountcalculationmethod to per unit (1): a line's
	// manualdiscountamount is taken off each unit, (price − discount) × quantity. Default
	// line item (0): price × quantity − discount.
	DiscountPerUnit bool
	// SystemPricingOff clears oobpricecalculationenabled: Dataverse computes no line or
	// order amounts (a custom pricing plug-in would).
	SystemPricingOff bool
}

// Precision returns a pointer to p, for Options.PricingDecimalPrecision.
func Precision(p int) *int { return &p }

// Limits are the per-user service protection limits. Zero fields take the documented
// defaults: 6000 requests and 1200 s execution time per 300 s sliding window, 52 concurrent.
type Limits struct {
	Disabled      bool
	Requests      int
	ExecutionTime time.Duration
	Window        time.Duration
	Concurrent    int
}

// ExecutionCost is the simulated server time an operation takes (unscaled).
type ExecutionCost struct {
	PerRequest    time.Duration // default 2 ms
	PerRowWritten time.Duration // default 2 ms
	PerRowRead    time.Duration // default 50 µs
}

// Currency seeds a transactioncurrency row.
type Currency struct {
	ID           string // generated when empty
	ISOCode      string
	Name         string
	Symbol       string
	Precision    int
	ExchangeRate float64 // default 1
}

// PriceList seeds a pricelevel in the currency with the given ISO code (base when empty).
type PriceList struct{ ID, Name, Currency string }

// UnitGroup seeds a uomschedule and its base unit (BaseUnit default "Primary Unit").
type UnitGroup struct{ ID, Name, BaseUnit, BaseUnitID string }

// Faults injects failures into Web API requests (not the token endpoint).
type Faults struct {
	Error503Rate       float64       // probability of a 503 per request
	Latency            time.Duration // added to every request (real time)
	Force429           int           // the next N requests get 429
	Force429RetryAfter time.Duration // Retry-After of forced 429s (scaled like the rest), default 1 s
	Force429Code       string        // default the request-count code 0x80072322

	// BulkTimeoutRows: a CreateMultiple/UpdateMultiple/UpsertMultiple request with more
	// targets than this fails with 500 "SQL timeout expired" and writes nothing.
	BulkTimeoutRows int
	// FailBatchPart: the next $batch is answered at this operation (1-based, counted over
	// the whole batch) with FailBatchPartStatus (default 500) instead of running it; the
	// operations before it ran, later ones don't. A 429 carries Retry-After
	// Force429RetryAfter and counts as throttling (Retry-After violations are tracked).
	FailBatchPart       int
	FailBatchPartStatus int
	// FailBatchWith, when set, limits FailBatchPart to a $batch holding an operation whose
	// path starts with it (e.g. "ConvertSalesOrderToInvoice").
	FailBatchWith string
	// DropAnswers: the next N requests whose path below the API root is DropAnswerPath
	// (e.g. "ConvertSalesOrderToInvoice", "$batch") run, then the connection is cut
	// before the answer is sent: a lost answer.
	DropAnswers    int
	DropAnswerPath string
}

// Stats counts what the server saw.
type Stats struct {
	Requests       int // Web API requests (a $batch counts once)
	BatchParts     int
	Throttled      int // 429 responses
	Injected503    int
	RowsWritten    int
	TokensIssued   int
	Unauthorized   int
	MaxConcurrency int // highest number of requests in flight at once
	// Busy is requests in flight integrated over real time (admitted to answered): Busy
	// over an interval divided by its length is the average number in flight.
	Busy time.Duration
	// Execution is the execution time charged to requests (scaled, as the limits see it).
	Execution time.Duration
	// InFlight is the number of requests admitted and not yet answered. A write's rows are
	// visible while it still takes its execution time (SleepExecutionTime).
	InFlight int
	// Operations breaks the requests that ran down by kind: method and path with keys
	// left out, e.g. "GET salesorders", "POST products/Microsoft.Dynamics.CRM.CreateMultiple",
	// "POST $batch". Requests refused by a fault or a limit are not in it.
	Operations map[string]OpStats
}

// OpStats is what one kind of request cost (Stats.Operations).
type OpStats struct {
	Requests    int
	RowsWritten int
	RowsRead    int
	Execution   time.Duration // charged, scaled as Stats.Execution
}

// keyInPath matches a key in a request path: "(<guid>)" or "(<alternate key>)".
var keyInPath = regexp.MustCompile(`\([^)]*\)`)

// operation names a request's kind for Stats.Operations.
func operation(method, path string) string {
	return method + " " + keyInPath.ReplaceAllString(path, "()")
}

// Server is a running simulator.
type Server struct {
	TenantID, ClientID string

	o      Options
	scale  float64
	ts     *httptest.Server
	pool   *x509.CertPool
	client *http.Client

	mu sync.Mutex // guards sc rows (st)
	sc *schema
	st *store

	userID, businessUnitID, organizationID string
	baseCurrencyID                         string

	auth *authState
	lim  *limiter

	pendingBaseUnitID string
	denied            map[string]bool // "set/op" privileges the role lacks (DenyPrivilege)

	fmu    sync.Mutex
	faults Faults
	rng    *rand.Rand
	stats  Stats

	hist map[string][]Write // logical/id → committed writes (Options.History), guarded by mu
}

// Write is one committed write of a row (Options.History).
type Write struct {
	At      time.Time
	Request string         // method and path (a $batch with its operations' paths)
	Row     map[string]any // the row after the request; nil: deleted
}

// History returns the committed writes of a row of an entity set, oldest first
// (Options.History; nil without it).
func (s *Server) History(set, id string) []Write {
	s.mu.Lock()
	defer s.mu.Unlock()
	t := s.sc.bySet[set]
	if t == nil {
		return nil
	}
	return slices.Clone(s.hist[t.logical+"/"+strings.ToLower(id)])
}

// recordHistory keeps the rows x changed (mu held, x committed).
func (s *Server) recordHistory(x *tx, request string) {
	if !s.o.History {
		return
	}
	if s.hist == nil {
		s.hist = map[string][]Write{}
	}
	now := time.Now()
	seen := map[string]bool{}
	for _, u := range x.undo {
		k := u.logical + "/" + u.id
		if seen[k] {
			continue
		}
		seen[k] = true
		w := Write{At: now, Request: request}
		if r := x.get(u.logical, u.id); r != nil {
			w.Row = copyVals(r)
		}
		s.hist[k] = append(s.hist[k], w)
	}
}

// NewServer starts a simulator on https://127.0.0.1:<port>. Close it when done.
func NewServer(o Options) *Server {
	s := newServer(o)
	cert, pool, err := newCertificates()
	if err != nil {
		panic(fmt.Sprintf("dataversetest: certificates: %v", err))
	}
	s.pool = pool
	s.ts = httptest.NewUnstartedServer(s.Handler())
	s.ts.Config.ErrorLog = log.New(io.Discard, "", 0) // clients closing connections aren't news
	s.ts.TLS = &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
	s.ts.StartTLS()
	tr := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12},
		MaxIdleConnsPerHost: 128, ForceAttemptHTTP2: true}
	s.client = &http.Client{Transport: tr, Timeout: 2 * time.Minute}
	return s
}

func newServer(o Options) *Server {
	if o.TimeScale <= 0 {
		o.TimeScale = 1
	}
	if o.DopHint == 0 {
		o.DopHint = 4
	}
	if o.TokenLifetime == 0 {
		o.TokenLifetime = time.Hour
	}
	if o.ViolationGrace == 0 {
		o.ViolationGrace = 100 * time.Millisecond
	}
	l := &o.Limits
	if l.Requests == 0 {
		l.Requests = 6000
	}
	if l.ExecutionTime == 0 {
		l.ExecutionTime = 1200 * time.Second
	}
	if l.Window == 0 {
		l.Window = 300 * time.Second
	}
	if l.Concurrent == 0 {
		l.Concurrent = 52
	}
	c := &o.ExecutionCost
	if c.PerRequest == 0 {
		c.PerRequest = CostDefault.PerRequest
	}
	if c.PerRowWritten == 0 {
		c.PerRowWritten = CostDefault.PerRowWritten
	}
	if c.PerRowRead == 0 {
		c.PerRowRead = CostDefault.PerRowRead
	}
	if o.TenantID == "" {
		o.TenantID = uuid.NewString()
	}
	if o.ClientID == "" {
		o.ClientID = uuid.NewString()
	}
	if o.ClientSecret == "" {
		o.ClientSecret = "sim-secret-" + uuid.NewString()
	}
	seed := o.Seed
	if seed == 0 {
		seed = 42
	}
	s := &Server{TenantID: o.TenantID, ClientID: o.ClientID, o: o, scale: o.TimeScale,
		userID: uuid.NewString(), businessUnitID: uuid.NewString(), organizationID: uuid.NewString(),
		rng: rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))}
	s.sc = newSchema(&s.o)
	s.st = newStore(s.sc)
	s.auth = newAuthState(o.ClientSecret)
	s.lim = newLimiter(s)
	s.seed()
	return s
}

func (s *Server) seed() {
	x := s.st.begin()
	base := s.o.BaseCurrency
	if base.ISOCode == "" {
		base = Currency{ISOCode: "USD", Name: "US Dollar", Symbol: "$", Precision: 2}
	}
	s.baseCurrencyID = s.seedCurrency(x, base)
	org := s.newRow(s.sc.byLogical["organization"], s.organizationID)
	org.vals["name"] = "Simulated organization"
	org.vals["pricingdecimalprecision"] = 2
	if p := s.o.PricingDecimalPrecision; p != nil {
		org.vals["pricingdecimalprecision"] = *p
	}
	org.vals["discountcalculationmethod"] = 0
	if s.o.DiscountPerUnit {
		org.vals["discountcalculationmethod"] = 1
	}
	org.vals["oobpricecalculationenabled"] = !s.o.SystemPricingOff
	x.put("organization", org)
	for _, c := range s.o.Currencies {
		s.seedCurrency(x, c)
	}
	for _, p := range s.o.PriceLists {
		cur := s.baseCurrencyID
		if p.Currency != "" {
			for _, r := range x.sorted("transactioncurrency") {
				if strings.EqualFold(r.str("isocurrencycode"), p.Currency) {
					cur = r.id
				}
			}
		}
		id := p.ID
		if id == "" {
			id = uuid.NewString()
		}
		body := map[string]any{"name": p.Name, "transactioncurrencyid@odata.bind": "/transactioncurrencies(" + cur + ")"}
		if _, err := s.createRow(x, s.sc.byLogical["pricelevel"], id, body, nil); err != nil {
			panic(fmt.Sprintf("dataversetest: seed price list %q: %v", p.Name, err))
		}
	}
	for _, g := range s.o.UnitGroups {
		id := g.ID
		if id == "" {
			id = uuid.NewString()
		}
		bu := g.BaseUnit
		if bu == "" {
			bu = "Primary Unit"
		}
		s.pendingBaseUnitID = g.BaseUnitID
		if _, err := s.createRow(x, s.sc.byLogical["uomschedule"], id, map[string]any{"name": g.Name, "baseuomname": bu}, nil); err != nil {
			panic(fmt.Sprintf("dataversetest: seed unit group %q: %v", g.Name, err))
		}
		s.pendingBaseUnitID = ""
	}
}

func (s *Server) seedCurrency(x *tx, c Currency) string {
	id := c.ID
	if id == "" {
		id = uuid.NewString()
	}
	rate := c.ExchangeRate
	if rate == 0 {
		rate = 1
	}
	r := s.newRow(s.sc.byLogical["transactioncurrency"], id)
	r.vals["isocurrencycode"] = c.ISOCode
	r.vals["currencyname"] = c.Name
	r.vals["currencysymbol"] = c.Symbol
	r.vals["currencyprecision"] = c.Precision
	r.vals["exchangerate"] = rate
	r.vals["currencytype"] = 0
	r.vals["statecode"] = 0
	r.vals["statuscode"] = 1
	x.put("transactioncurrency", r)
	return r.id
}

// URL is the environment URL (Web API under /api/data/v9.2/).
func (s *Server) URL() string { return s.ts.URL }

// AuthorityHost is the value for azidentity's ClientOptions.Cloud.ActiveDirectoryAuthorityHost
// (and the app's AZURE_AUTHORITY_HOST setting). Use DisableInstanceDiscovery: true.
func (s *Server) AuthorityHost() string { return s.ts.URL + "/" }

// SetClientSecret rotates the app registration's secret: the old one fails from now on
// with AADSTS7000215 invalid_client. Tokens already issued stay valid until they expire.
func (s *Server) SetClientSecret(secret string) { s.auth.setSecret(secret) }

// ClientSecret is the current client secret.
func (s *Server) ClientSecret() string { return s.auth.secret() }

// Client returns a Dataverse client for this server: o with the server's environment URL,
// tenant, client id, authority host and CA filled in, and its client secret unless
// o.Secret is set (a test of secret rotation passes its own source). Everything else in
// o (retries, bulk size, logger) is the caller's; a zero o.Limits is the server's own
// limits, TimeScale applied, so the client paces itself to them.
func (s *Server) Client(o dataverse.Options) (*dataverse.Client, error) {
	o.EnvironmentURL, o.TenantID, o.ClientID = s.URL(), s.TenantID, s.ClientID
	if o.Limits == (dataverse.Limits{}) && !s.o.Limits.Disabled {
		l := s.o.Limits
		o.Limits = dataverse.Limits{Window: s.scaled(l.Window), Requests: l.Requests, Execution: s.scaled(l.ExecutionTime)}
	}
	o.AuthorityHost, o.RootCAs = s.AuthorityHost(), s.CertPool()
	if o.Secret == nil {
		o.Secret = dataverse.StaticSecret(s.ClientSecret())
	}
	return dataverse.New(o)
}

// CertPool trusts the simulator's CA.
func (s *Server) CertPool() *x509.CertPool { return s.pool }

// HTTPClient is an *http.Client that trusts the simulator's CA.
func (s *Server) HTTPClient() *http.Client { return s.client }

// Close shuts the server down.
func (s *Server) Close() {
	s.ts.Close()
	s.client.CloseIdleConnections()
}

// SetFaults replaces the fault injection settings.
func (s *Server) SetFaults(f Faults) {
	s.fmu.Lock()
	defer s.fmu.Unlock()
	s.faults = f
}

// Stats returns counters since start.
func (s *Server) Stats() Stats {
	s.fmu.Lock()
	st := s.stats
	st.Operations = maps.Clone(s.stats.Operations)
	s.fmu.Unlock()
	st.MaxConcurrency = s.lim.maxInFlight()
	st.Busy, st.Execution, st.InFlight = s.lim.usage()
	st.TokensIssued = s.auth.issued()
	return st
}

// UserID, BusinessUnitID, OrganizationID are what WhoAmI returns.
func (s *Server) UserID() string         { return s.userID }
func (s *Server) BusinessUnitID() string { return s.businessUnitID }
func (s *Server) OrganizationID() string { return s.organizationID }

// BaseCurrencyID is the seeded base transactioncurrency's id.
func (s *Server) BaseCurrencyID() string { return s.baseCurrencyID }

// Rows returns copies of every row of an entity set in creation order, as stored:
// columns by logical name (strings, int for whole numbers/choices, float64 for
// decimal/money, bool), lookups as "_<attr>_value" GUID strings, plus the primary key.
func (s *Server) Rows(set string) []map[string]any {
	s.mu.Lock()
	defer s.mu.Unlock()
	t := s.sc.bySet[set]
	if t == nil {
		return nil
	}
	x := s.st.begin()
	var out []map[string]any
	for _, r := range x.sorted(t.logical) {
		out = append(out, copyVals(r))
	}
	return out
}

// Row returns a copy of one row by primary key.
func (s *Server) Row(set, id string) (map[string]any, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	t := s.sc.bySet[set]
	if t == nil {
		return nil, false
	}
	r := s.st.begin().get(t.logical, id)
	if r == nil {
		return nil, false
	}
	return copyVals(r), true
}

// Count returns the number of rows in an entity set.
func (s *Server) Count(set string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	if t := s.sc.bySet[set]; t != nil {
		return len(s.st.rows[t.logical])
	}
	return 0
}

func copyVals(r *row) map[string]any {
	m := make(map[string]any, len(r.vals))
	for k, v := range r.vals {
		if v != nil {
			m[k] = v
		}
	}
	return m
}

// Handler serves the token endpoints and the Web API (auth required), for mounting with
// http.StripPrefix; links in responses use the mount prefix.
func (s *Server) Handler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { s.serve(w, r, false) })
}

// BrowseHandler serves read-only GET requests of the Web API without a token (local
// mode's sandbox browsing). Writes get 405.
func (s *Server) BrowseHandler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { s.serve(w, r, true) })
}

const apiRoot = "/api/data/v9.2/"

func (s *Server) serve(w http.ResponseWriter, r *http.Request, browse bool) {
	h := w.Header()
	h.Set("OData-Version", "4.0")
	h.Set("x-ms-dop-hint", fmt.Sprint(s.o.DopHint))
	h.Set("REQ_ID", uuid.NewString())
	p := r.URL.Path
	prefix := mountPrefix(r)
	scheme := "http"
	if r.TLS != nil {
		scheme = "https"
	}
	origin := scheme + "://" + r.Host + prefix
	switch {
	case !browse && strings.HasSuffix(p, "/v2.0/.well-known/openid-configuration"):
		s.openIDConfig(w, r, origin)
		return
	case !browse && strings.HasSuffix(p, "/oauth2/v2.0/token"):
		s.token(w, r, origin)
		return
	case !browse && strings.HasSuffix(p, "/discovery/instance"):
		s.instanceDiscovery(w, r, origin)
		return
	case strings.HasPrefix(p, apiRoot):
	default:
		writeResp(w, errResp(errf(http.StatusNotFound, codeResourceNotFound, "Resource not found for the segment '%s'.", strings.TrimPrefix(p, "/"))))
		return
	}
	s.serveAPI(w, r, origin, browse)
}

// mountPrefix recovers the prefix http.StripPrefix removed, so links stay absolute.
func mountPrefix(r *http.Request) string {
	orig := r.RequestURI
	if i := strings.IndexByte(orig, '?'); i >= 0 {
		orig = orig[:i]
	}
	if strings.HasPrefix(orig, "http://") || strings.HasPrefix(orig, "https://") {
		return ""
	}
	if esc := r.URL.EscapedPath(); strings.HasSuffix(orig, esc) {
		return strings.TrimSuffix(orig, esc)
	}
	return ""
}

func writeResp(w http.ResponseWriter, resp *apiResp) {
	for k, v := range resp.header {
		w.Header()[k] = v
	}
	if w.Header().Get("Content-Type") == "" && len(resp.body) > 0 {
		w.Header().Set("Content-Type", "application/json; odata.metadata=minimal")
	}
	w.WriteHeader(resp.status)
	if len(resp.body) > 0 {
		_, _ = w.Write(resp.body)
	}
}

func (s *Server) scaled(d time.Duration) time.Duration { return time.Duration(float64(d) * s.scale) }

// retryAfterSeconds turns a scaled wait into the whole seconds sent in Retry-After:
// rounded up, at least 1 (Learn: api-limits: integer seconds).
func retryAfterSeconds(d time.Duration) int {
	secs := int(math.Ceil(d.Seconds()))
	if secs < 1 {
		secs = 1
	}
	return secs
}

// MaxURLLength is the longest request URL the Web API takes: 32 KB (32,768 characters).
// Longer GETs must travel inside a $batch.
const MaxURLLength = 32768

func (s *Server) serveAPI(w http.ResponseWriter, r *http.Request, origin string, browse bool) {
	base := origin + apiRoot
	if n := len(origin) + len(r.RequestURI); n > MaxURLLength {
		// The front end refuses it before Dataverse sees it: no limits are charged.
		writeResp(w, errResp(errf(http.StatusRequestURITooLong, codeZero, "The request URL is %d characters long; the limit is %d.", n, MaxURLLength)))
		return
	}
	if browse && r.Method != http.MethodGet {
		writeResp(w, errResp(errf(http.StatusMethodNotAllowed, codeZero, "The sandbox browser is read-only.")))
		return
	}
	s.fmu.Lock()
	f := s.faults
	s.fmu.Unlock()
	if f.Latency > 0 {
		time.Sleep(f.Latency)
	}
	user := "browse"
	if !browse {
		sub, aerr := s.auth.check(r.Header.Get("Authorization"), s.TenantID, origin)
		if aerr != nil {
			s.count(func(st *Stats) { st.Unauthorized++ })
			writeResp(w, errResp(aerr))
			return
		}
		user = sub
	}
	s.count(func(st *Stats) { st.Requests++ })
	// Fault injection, then the service protection limits (Learn: api-limits).
	if e := s.injectFault(user); e != nil {
		writeResp(w, errResp(e))
		return
	}
	release, lerr := s.lim.admit(user)
	if lerr != nil {
		s.count(func(st *Stats) { st.Throttled++ })
		writeResp(w, errResp(lerr))
		return
	}
	defer release()
	began := time.Now()
	body, err := io.ReadAll(r.Body)
	if err != nil {
		writeResp(w, errResp(errf(http.StatusBadRequest, codeZero, "could not read the request body: %v", err)))
		return
	}
	path := strings.TrimPrefix(r.URL.EscapedPath(), apiRoot)
	q := &apiReq{method: r.Method, path: path, query: r.URL.Query(), header: r.Header, body: body, base: base}
	var resp *apiResp
	var rows, reads, ops int
	if path == "$batch" {
		if r.Method != http.MethodPost {
			resp = errResp(errf(http.StatusMethodNotAllowed, codeZero, "$batch requires POST."))
		} else {
			resp, rows, reads, ops = s.batch(q, user)
		}
	} else {
		s.mu.Lock()
		x := s.st.begin()
		resp = s.exec(x, q)
		if resp.status >= 400 {
			x.rollback()
		}
		s.recordHistory(x, r.Method+" "+path)
		rows, reads, ops = x.rows, resp.rowsRead, 1+resp.retrieves
		s.mu.Unlock()
	}
	cost := time.Duration(ops)*s.o.ExecutionCost.PerRequest + time.Duration(rows)*s.o.ExecutionCost.PerRowWritten +
		time.Duration(reads)*s.o.ExecutionCost.PerRowRead
	s.lim.record(user, s.scaled(cost))
	op := operation(r.Method, path)
	s.count(func(st *Stats) {
		st.RowsWritten += rows
		if st.Operations == nil {
			st.Operations = map[string]OpStats{}
		}
		o := st.Operations[op]
		o.Requests++
		o.RowsWritten += rows
		o.RowsRead += reads
		o.Execution += s.scaled(cost)
		st.Operations[op] = o
	})
	if s.o.SleepExecutionTime {
		// The request takes its execution time in all: the simulator's own work (reading,
		// parsing, applying) is part of it, as a real server's is.
		time.Sleep(s.scaled(cost) - time.Since(began))
	}
	if s.dropAnswer(path) {
		// the request ran; its answer is lost (net/http cuts the connection or stream)
		panic(http.ErrAbortHandler)
	}
	if !s.o.NoRateLimitHeaders {
		s.lim.headers(user, resp.header)
	}
	writeResp(w, resp)
}

// currentFaults is a copy of the fault settings.
func (s *Server) currentFaults() Faults {
	s.fmu.Lock()
	defer s.fmu.Unlock()
	return s.faults
}

// dropAnswer consumes one Faults.DropAnswers for a request to path.
func (s *Server) dropAnswer(path string) bool {
	s.fmu.Lock()
	defer s.fmu.Unlock()
	if s.faults.DropAnswers > 0 && path == s.faults.DropAnswerPath {
		s.faults.DropAnswers--
		return true
	}
	return false
}

// batchPartFault consumes Faults.FailBatchPart for a batch whose operations' paths (below
// the API root) are paths: the operation number and its status.
func (s *Server) batchPartFault(paths []string) (part, status int, retryAfter time.Duration) {
	s.fmu.Lock()
	defer s.fmu.Unlock()
	f := &s.faults
	if f.FailBatchPart <= 0 {
		return 0, 0, 0
	}
	if f.FailBatchWith != "" {
		match := false
		for _, p := range paths {
			match = match || strings.HasPrefix(p, f.FailBatchWith)
		}
		if !match {
			return 0, 0, 0
		}
	}
	part, status, retryAfter = f.FailBatchPart, f.FailBatchPartStatus, f.Force429RetryAfter
	f.FailBatchPart = 0
	if status == 0 {
		status = http.StatusInternalServerError
	}
	if retryAfter == 0 {
		retryAfter = time.Second
	}
	return part, status, retryAfter
}

func (s *Server) count(f func(*Stats)) {
	s.fmu.Lock()
	f(&s.stats)
	s.fmu.Unlock()
}

func (s *Server) injectFault(user string) *apiError {
	s.fmu.Lock()
	defer s.fmu.Unlock()
	f := &s.faults
	if f.Force429 > 0 {
		f.Force429--
		s.stats.Throttled++
		ra := f.Force429RetryAfter
		if ra == 0 {
			ra = time.Second
		}
		code := f.Force429Code
		if code == "" {
			code = codeReqLimit
		}
		return s.lim.throttle(user, code, s.scaled(ra))
	}
	if f.Error503Rate > 0 && s.rng.Float64() < f.Error503Rate {
		s.stats.Injected503++
		return errf(http.StatusServiceUnavailable, "0x80040216", "Service Unavailable (injected fault).")
	}
	return nil
}

// sortedKeys is a helper for deterministic iteration.
func sortedKeys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// Insert creates a row through the same rules as POST /{set} (no auth, no limits): for
// tests that need rows "an admin typed in" before the app runs. It returns the new id.
func (s *Server) Insert(set string, rec map[string]any) (string, error) {
	resp := s.direct(http.MethodPost, set, rec)
	if resp.status >= 400 {
		return "", fmt.Errorf("dataversetest: insert into %s: %d %s", set, resp.status, resp.body)
	}
	loc := resp.entityURL
	return strings.TrimSuffix(loc[strings.LastIndexByte(loc, '(')+1:], ")"), nil
}

// Update patches an existing row through the same rules as PATCH with If-Match: *.
func (s *Server) Update(set, id string, rec map[string]any) error {
	resp := s.direct(http.MethodPatch, set+"("+id+")", rec)
	if resp.status >= 400 {
		return fmt.Errorf("dataversetest: update %s(%s): %d %s", set, id, resp.status, resp.body)
	}
	return nil
}

// Delete deletes a row through the same rules as DELETE (Restrict, cascades).
func (s *Server) Delete(set, id string) error {
	resp := s.direct(http.MethodDelete, set+"("+id+")", nil)
	if resp.status >= 400 {
		return fmt.Errorf("dataversetest: delete %s(%s): %d %s", set, id, resp.status, resp.body)
	}
	return nil
}

func (s *Server) direct(method, path string, rec map[string]any) *apiResp {
	var body []byte
	if rec != nil {
		body, _ = json.Marshal(rec)
	}
	h := http.Header{}
	if method == http.MethodPatch {
		h.Set("If-Match", "*")
	}
	q := &apiReq{method: method, path: path, query: url.Values{}, header: h, body: body, base: s.URL() + apiRoot}
	s.mu.Lock()
	defer s.mu.Unlock()
	x := s.st.begin()
	x.system = true
	resp := s.exec(x, q)
	if resp.status >= 400 {
		x.rollback()
	}
	return resp
}
