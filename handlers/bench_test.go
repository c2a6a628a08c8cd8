package main

// Whole-app benchmarks (scripts/bench) and the helpers they share with the chaos test
// (chaos_test.go, build tag chaos): the handlers binary runs as a subprocess in local
// mode against a Dataverse simulator in the test process, exactly as a store owner runs
// it. Nothing here runs in the default `go test ./...`: benchmarks run only with -bench.

import (
	"bytes"
	"cmp"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/nopsync/nopsync/shared/dataverse"
	"github.com/nopsync/nopsync/shared/dataverse/dataversetest"
)

// ---------------------------------------------------------------------------------
// The app as a subprocess.

var (
	buildOnce sync.Once
	builtBin  string
	buildErr  error
)

// handlerBinary builds the handlers executable once per test process (or uses
// NOPSYNC_HANDLER_BIN, which scripts/chaos and scripts/bench set after building it).
func handlerBinary(tb testing.TB) string {
	tb.Helper()
	if p := os.Getenv("NOPSYNC_HANDLER_BIN"); p != "" {
		return p
	}
	buildOnce.Do(func() {
		dir, err := os.MkdirTemp("", "nopsync-bin-")
		if err != nil {
			buildErr = err
			return
		}
		builtBin = filepath.Join(dir, "handler")
		out, err := exec.Command("go", "build", "-o", builtBin, ".").CombinedOutput()
		if err != nil {
			buildErr = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if buildErr != nil {
		tb.Fatal(buildErr)
	}
	return builtBin
}

// writeSimCA writes the simulator's CA certificate as PEM, for SSL_CERT_FILE. The
// simulator exposes its CA only as an *x509.CertPool, so the certificate is read from
// the chain the server presents (leaf, then CA).
func writeSimCA(tb testing.TB, sim *dataversetest.Server, dir string) string {
	tb.Helper()
	host := strings.TrimPrefix(sim.URL(), "https://")
	conn, err := tls.Dial("tcp", host, &tls.Config{RootCAs: sim.CertPool()})
	if err != nil {
		tb.Fatalf("TLS to the simulator: %v", err)
	}
	defer conn.Close()
	var ca []byte
	for _, chain := range conn.ConnectionState().VerifiedChains {
		for _, c := range chain {
			if c.IsCA {
				ca = c.Raw
			}
		}
	}
	if ca == nil {
		tb.Fatal("the simulator's chain has no CA certificate")
	}
	path := filepath.Join(dir, "dataversetest-ca.pem")
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: ca}), 0o600); err != nil {
		tb.Fatal(err)
	}
	return path
}

// freeAddr returns a loopback address with a free port (kept across restarts: the
// store posts to one fixed URL).
func freeAddr(tb testing.TB) string {
	tb.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// appEnv is the environment of the app subprocess: local mode against sim.
func appEnv(sim *dataversetest.Server, caFile, dataDir, addr, webhookSecret string, extra ...string) []string {
	env := []string{
		"PATH=" + os.Getenv("PATH"), "HOME=" + os.Getenv("HOME"),
		"SSL_CERT_FILE=" + caFile,
		"DATAVERSE_URL=" + sim.URL(), "DATAVERSE_TENANT_ID=" + sim.TenantID, "DATAVERSE_CLIENT_ID=" + sim.ClientID,
		"DATAVERSE_CLIENT_SECRET=" + sim.ClientSecret(), "AZURE_AUTHORITY_HOST=" + sim.AuthorityHost(),
		"LOCAL_DATA_DIR=" + dataDir, "LISTEN_ADDR=" + addr, "WEBHOOK_SECRET=" + webhookSecret,
		"STORE_CURRENCY_CODE=USD",
	}
	if n := os.Getenv("BENCH_BULK_SIZE"); n != "" {
		env = append(env, "DATAVERSE_BULK_SIZE="+n) // the app's rows per bulk request, for a comparison
	}
	if f := os.Getenv("NOPSYNC_CPUPROFILE"); f != "" {
		env = append(env, "NOPSYNC_CPUPROFILE="+f) // the app's CPU profile, for a look afterwards
	}
	if g := os.Getenv("BENCH_APP_GODEBUG"); g != "" {
		env = append(env, "GODEBUG="+g) // e.g. gctrace=1: the app's heap at each collection, in its log
	}
	return append(env, extra...)
}

// appProc is one run of the app subprocess.
type appProc struct {
	cmd     *exec.Cmd
	base    string
	started time.Time
	ready   time.Duration // process start to first answer on LISTEN_ADDR
	done    chan struct{}
	err     error
}

// startApp starts the binary with env, its stdout and stderr appended to logFile, and
// waits until GET / answers on addr.
func startApp(tb testing.TB, bin string, env []string, addr, logFile string) *appProc {
	tb.Helper()
	return launch(tb, bin, env, addr, logFile, false)
}

// startAppAnswer is startApp for Azure mode: any HTTP answer on the handler port counts
// (the custom handler serves only the function routes).
func startAppAnswer(tb testing.TB, bin string, env []string, addr, logFile string) *appProc {
	tb.Helper()
	return launch(tb, bin, env, addr, logFile, true)
}

func launch(tb testing.TB, bin string, env []string, addr, logFile string, anyStatus bool) *appProc {
	tb.Helper()
	lf, err := os.OpenFile(logFile, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		tb.Fatal(err)
	}
	cmd := exec.Command(bin)
	cmd.Env = env
	cmd.Stdout, cmd.Stderr = lf, lf
	p := &appProc{cmd: cmd, base: "http://" + addr, done: make(chan struct{})}
	p.started = time.Now()
	if err := cmd.Start(); err != nil {
		lf.Close()
		tb.Fatal(err)
	}
	go func() {
		p.err = cmd.Wait()
		lf.Close()
		close(p.done)
	}()
	tb.Cleanup(p.kill)
	c := &http.Client{Timeout: time.Second}
	deadline := time.Now().Add(30 * time.Second)
	for {
		res, err := c.Get(p.base + "/")
		if err == nil {
			res.Body.Close()
			if res.StatusCode == http.StatusOK || anyStatus {
				p.ready = time.Since(p.started)
				return p
			}
		}
		select {
		case <-p.done:
			tb.Fatalf("the app exited before answering: %v; log %s:\n%s", p.err, logFile, tail(logFile, 2000))
		default:
		}
		if time.Now().After(deadline) {
			tb.Fatalf("the app did not answer on %s within 30 s; log:\n%s", addr, tail(logFile, 2000))
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// kill ends the process with SIGKILL (no clean shutdown) and waits for it.
func (p *appProc) kill() {
	select {
	case <-p.done:
		return
	default:
	}
	_ = p.cmd.Process.Signal(syscall.SIGKILL)
	<-p.done
}

// stop ends the process with SIGTERM (clean shutdown), SIGKILL after 20 s.
func (p *appProc) stop() {
	select {
	case <-p.done:
		return
	default:
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(20 * time.Second):
		p.kill()
	}
}

// memKB reads a field of /proc/<pid>/status (VmHWM: peak RSS, VmRSS: current), in KiB.
func (p *appProc) memKB(field string) int {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", p.cmd.Process.Pid))
	if err != nil {
		return -1
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, field+":"); ok {
			n, _ := strconv.Atoi(strings.TrimSuffix(strings.TrimSpace(v), " kB"))
			return n
		}
	}
	return -1
}

func tail(path string, n int) string {
	b, _ := os.ReadFile(path)
	if len(b) > n {
		b = b[len(b)-n:]
	}
	return string(b)
}

// ---------------------------------------------------------------------------------
// Talking to the app as the store does.

// storeClient posts signed events and follows the app's routes.
type storeClient struct {
	base   func() string // current base URL (fixed address; the process may be restarting)
	secret string
	hc     *http.Client
	// retries counts POSTs that were refused (connection refused, 5xx) and sent again.
	retries atomic.Int64
}

func newStoreClient(base func() string, secret string) *storeClient {
	tr := &http.Transport{MaxIdleConnsPerHost: 64, DisableCompression: true}
	return &storeClient{base: base, secret: secret, hc: &http.Client{Transport: tr, Timeout: 30 * time.Second}}
}

func signBody(secret string, t int64, body []byte) string {
	m := hmac.New(sha256.New, []byte(secret))
	fmt.Fprintf(m, "%d.", t)
	m.Write(body)
	return "t=" + strconv.FormatInt(t, 10) + ",v1=" + hex.EncodeToString(m.Sum(nil))
}

// postOnce sends one signed request and returns the status and the response body.
func (s *storeClient) postOnce(ctx context.Context, entity string, body []byte) (int, []byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, s.base()+"/api/events/"+entity, bytes.NewReader(body))
	if err != nil {
		return 0, nil, err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("X-Nop-Signature", signBody(s.secret, time.Now().Unix(), body))
	res, err := s.hc.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	return res.StatusCode, b, nil
}

// post sends events until the app accepts them (202), as the store's emitter does: a
// connection error, 429 or 5xx is retried with a short pause; any other answer is an
// error.
func (s *storeClient) post(ctx context.Context, entity string, body []byte) error {
	pause := 50 * time.Millisecond
	for {
		code, b, err := s.postOnce(ctx, entity, body)
		switch {
		case err == nil && code == http.StatusAccepted:
			return nil
		case err == nil && code != http.StatusTooManyRequests && code < 500:
			return fmt.Errorf("POST /api/events/%s: %d %s", entity, code, b)
		case ctx.Err() != nil:
			return fmt.Errorf("POST /api/events/%s: gave up: %w (last: %d %v)", entity, ctx.Err(), code, err)
		}
		s.retries.Add(1)
		select {
		case <-ctx.Done():
		case <-time.After(pause):
		}
		pause = min(pause*2, time.Second)
	}
}

func (s *storeClient) getJSON(ctx context.Context, path string, out any) error {
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, s.base()+path, nil)
	res, err := s.hc.Do(req)
	if err != nil {
		return err
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	if res.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: %d %s", path, res.StatusCode, b)
	}
	return json.Unmarshal(b, out)
}

func (s *storeClient) postJSON(ctx context.Context, path string, body any, out any) (int, error) {
	b, _ := json.Marshal(body)
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, s.base()+path, bytes.NewReader(b))
	req.Header.Set("Content-Type", "application/json")
	res, err := s.hc.Do(req)
	if err != nil {
		return 0, err
	}
	defer res.Body.Close()
	rb, _ := io.ReadAll(res.Body)
	if out != nil {
		_ = json.Unmarshal(rb, out)
	}
	return res.StatusCode, nil
}

// appStatus is the part of GET /api/status the tests read.
type appStatus struct {
	Healthy  bool                                                       `json:"healthy"`
	Entities map[string]map[string]int                                  `json:"entities"`
	Queues   map[string]struct{ Active, DeadLettered, Scheduled int64 } `json:"queues"`
	Failures []struct {
		Entity, ID, Error string
		Attempts          int
	} `json:"recentFailures"`
}

func (st *appStatus) active() (n int64) {
	for _, q := range st.Queues {
		n += q.Active + q.Scheduled // a scheduled copy is work still to do
	}
	return n
}

func (st *appStatus) deadLettered() (n int64) {
	for _, q := range st.Queues {
		n += q.DeadLettered
	}
	return n
}

// waitDrained polls the status page until every queue is empty (three polls in a row)
// or the deadline passes; it returns the last status.
func (s *storeClient) waitDrained(ctx context.Context, every time.Duration) (*appStatus, error) {
	calm := 0
	var last *appStatus
	for {
		var st appStatus
		if err := s.getJSON(ctx, "/api/status", &st); err == nil {
			last = &st
			if st.active() == 0 {
				calm++
				if calm >= 3 {
					return last, nil
				}
			} else {
				calm = 0
			}
		}
		select {
		case <-ctx.Done():
			return last, ctx.Err()
		case <-time.After(every):
		}
	}
}

// ---------------------------------------------------------------------------------
// A store's events. Every object is generated from its id and version, so the checks
// can recompute what its latest state must look like in Dataverse.

const (
	storeT0 = "2026-11-20T08:00:00Z"
	// taxPct: prices incl. tax are prices excl. tax + 10 % (cents, rounded).
	taxPct = 10
)

var t0, _ = time.Parse(time.RFC3339, storeT0)

func at(sec int) string {
	return t0.Add(time.Duration(sec) * time.Second).UTC().Format("2006-01-02T15:04:05.000Z")
}

func money(cents int) string { return fmt.Sprintf("%d.%02d00", cents/100, cents%100) }

func incl(cents int) int { return cents + (cents*taxPct+50)/100 }

func eventID(entity string, id, seq int) string {
	return uuid.NewSHA1(uuid.NameSpaceOID, []byte(fmt.Sprintf("nopsync-bench/%s/%d/%d", entity, id, seq))).String()
}

func event(entity, action string, id, seq int, data map[string]any) json.RawMessage {
	b, err := json.Marshal(map[string]any{
		"id": eventID(entity, id, seq), "type": entity + "." + action, "occurredOnUtc": at(id%1000 + seq*60),
		"sequence": seq, "storeId": 1, "data": data,
	})
	if err != nil {
		panic(err)
	}
	return b
}

func address(first, last, email string, id int) map[string]any {
	return map[string]any{"firstName": first, "lastName": last, "email": email, "company": nil,
		"address1": fmt.Sprintf("%d Main Street", id), "address2": nil, "city": "Springfield", "county": nil,
		"stateProvince": "Illinois", "zipPostalCode": fmt.Sprintf("%05d", id%100000), "country": "United States",
		"countryIsoCode": "US", "phone": fmt.Sprintf("+1 555 %07d", id)}
}

func customerEmail(id int) string { return fmt.Sprintf("customer%07d@example.test", id) }

// customerLast is the lastname a customer has at a version (the checks look for it).
func customerLast(id, ver int) string { return fmt.Sprintf("Buyer%d-v%d", id, ver) }

func customerData(id, ver int) map[string]any {
	email := customerEmail(id)
	first, last := fmt.Sprintf("Pat%d", id), customerLast(id, ver)
	return map[string]any{
		"id": id, "customerGuid": uuid.NewSHA1(uuid.NameSpaceOID, []byte("customer/"+strconv.Itoa(id))).String(),
		"email": email, "username": email, "firstName": first, "lastName": last, "company": nil,
		"phone": fmt.Sprintf("+1 555 %07d", id*10+ver), "isGuest": false, "isRegistered": true, "active": true,
		"deleted": false, "createdOnUtc": at(id % 1000), "address": address(first, last, email, id),
	}
}

// product catalogue: families (grouped) with children, and simple products.
type productSpec struct {
	id, family int // family: the grouped product it belongs to (0 none)
	grouped    bool
	children   []int
	sku        string // "" → no sku (productnumber NOP-<id>)
}

func (p productSpec) number() string {
	if p.sku != "" {
		return p.sku
	}
	return "NOP-" + strconv.Itoa(p.id)
}

func productName(id, ver int) string { return fmt.Sprintf("Widget %d mk%d", id, ver) }

func productPrice(id, ver int) int { return 500 + (id*37)%9000 + ver*100 }

func productData(p productSpec, ver int) map[string]any {
	typ, price := 5, productPrice(p.id, ver)
	if p.grouped {
		typ, price = 10, 0
	}
	var sku any
	if p.sku != "" {
		sku = p.sku
	}
	children := p.children
	if children == nil {
		children = []int{}
	}
	return map[string]any{
		"id": p.id, "productType": typ, "parentGroupedProductId": p.family, "name": productName(p.id, ver),
		"shortDescription": "A very fine widget", "fullDescription": nil, "sku": sku, "gtin": nil,
		"manufacturerPartNumber": nil, "price": money(price), "productCost": money(price / 2), "oldPrice": "0.0000",
		"stockQuantity": 100 + ver, "manageInventoryMethod": 1, "published": true, "deleted": false,
		"updatedOnUtc": at(p.id%1000 + ver*60), "pictureUrls": []string{}, "associatedProductIds": children,
	}
}

// catalogue returns nFamilies families of childrenEach children and nSimple simple
// products; ids start at base.
func catalogue(base, nFamilies, childrenEach, nSimple int) []productSpec {
	var out []productSpec
	id := base
	for f := 0; f < nFamilies; f++ {
		fam := productSpec{id: id, grouped: true, sku: fmt.Sprintf("FAM-%d", id)}
		id++
		for c := 0; c < childrenEach; c++ {
			fam.children = append(fam.children, id)
			out = append(out, productSpec{id: id, family: fam.id, sku: fmt.Sprintf("SKU-%d", id)})
			id++
		}
		out = append(out, fam)
	}
	for s := 0; s < nSimple; s++ {
		sp := productSpec{id: id, sku: fmt.Sprintf("SKU-%d", id)}
		if s%7 == 3 {
			sp.sku = "" // no sku: productnumber NOP-<id>
		}
		out = append(out, sp)
		id++
	}
	return out
}

// orderSpec is one order and the lifecycle the store sends for it.
type orderSpec struct {
	id, customer int
	lines        []orderLine
	feeCents     int // payment method fee incl. tax (a write-in line when > 0)
	shipCents    int // shipping incl. tax
	discCents    int // order discount
	// stages: "placed", "paid", "completed", "cancelled", in business order.
	stages []string
}

type orderLine struct {
	itemID, qty, unitExcl, discExcl int
	product                         productSpec
}

func (o orderSpec) number() string { return fmt.Sprintf("NOP-ORD-%d", o.id) }

// total is orderTotal in cents, per nopCommerce's formula.
func (o orderSpec) total() int {
	sub := 0
	for _, l := range o.lines {
		sub += incl(l.unitExcl)*l.qty - incl(l.discExcl)
	}
	return sub + o.shipCents + o.feeCents - o.discCents
}

// final is what Dynamics 365 must show: salesorder statecode/statuscode and whether an
// invoice exists.
func (o orderSpec) final() (state, status int, invoiced bool) {
	last := o.stages[len(o.stages)-1]
	paid := slices.Contains(o.stages, "paid")
	switch last {
	case "completed":
		return 3, 100001, paid
	case "cancelled":
		return 2, 4, paid
	case "paid":
		return 0, 2, true
	}
	return 0, 1, false
}

func (o orderSpec) data(stage int) map[string]any {
	st := o.stages[stage]
	orderStatus, payStatus, shipStatus := 10, 10, 20
	var paid any
	paidNow := slices.Contains(o.stages[:stage+1], "paid")
	if paidNow {
		payStatus, orderStatus = 30, 20
		paid = at(o.id%1000 + 120)
	}
	switch st {
	case "completed":
		orderStatus, shipStatus = 30, 40
	case "cancelled":
		orderStatus = 40
	}
	var items []map[string]any
	subIncl, subExcl := 0, 0
	for _, l := range o.lines {
		priceIncl := incl(l.unitExcl)*l.qty - incl(l.discExcl)
		priceExcl := l.unitExcl*l.qty - l.discExcl
		subIncl += priceIncl
		subExcl += priceExcl
		var sku any
		if l.product.sku != "" {
			sku = l.product.sku
		}
		items = append(items, map[string]any{
			"id": l.itemID, "orderItemGuid": uuid.NewSHA1(uuid.NameSpaceOID, []byte("item/"+strconv.Itoa(l.itemID))).String(),
			"product": map[string]any{"id": l.product.id, "name": productName(l.product.id, 1), "sku": sku,
				"productType": 5, "parentGroupedProductId": l.product.family},
			"quantity": l.qty, "unitPriceInclTax": money(incl(l.unitExcl)), "unitPriceExclTax": money(l.unitExcl),
			"priceInclTax": money(priceIncl), "priceExclTax": money(priceExcl),
			"discountAmountInclTax": money(incl(l.discExcl)), "discountAmountExclTax": money(l.discExcl),
			"attributeDescription": nil,
		})
	}
	cust := customerData(o.customer, 2)
	email := customerEmail(o.customer)
	bill := address(cust["firstName"].(string), cust["lastName"].(string), email, o.customer)
	shipExcl := o.shipCents * 100 / (100 + taxPct)
	feeExcl := o.feeCents * 100 / (100 + taxPct)
	total := o.total()
	return map[string]any{
		"id": o.id, "orderGuid": uuid.NewSHA1(uuid.NameSpaceOID, []byte("order/"+strconv.Itoa(o.id))).String(),
		"customOrderNumber": o.number(), "customer": cust, "currencyCode": "USD", "customerCurrencyCode": "USD",
		"currencyRate": "1.0000", "orderStatus": orderStatus, "paymentStatus": payStatus, "shippingStatus": shipStatus,
		"orderSubtotalInclTax": money(subIncl), "orderSubtotalExclTax": money(subExcl),
		"orderSubTotalDiscountInclTax": "0.0000", "orderSubTotalDiscountExclTax": "0.0000",
		"orderShippingInclTax": money(o.shipCents), "orderShippingExclTax": money(shipExcl),
		"paymentMethodAdditionalFeeInclTax": money(o.feeCents), "paymentMethodAdditionalFeeExclTax": money(feeExcl),
		"orderTax": money(total - (subExcl + shipExcl + feeExcl - o.discCents)), "orderDiscount": money(o.discCents),
		"orderTotal": money(total), "refundedAmount": "0.0000", "paymentMethodSystemName": "Payments.CheckMoneyOrder",
		"shippingMethod": "Ground", "paidDateUtc": paid, "createdOnUtc": at(o.id % 1000), "deleted": false,
		"billingAddress": bill, "shippingAddress": bill, "items": items,
	}
}

// orders makes n orders (ids from base) of the given customers over the simple products
// of cat; lifecycles: half placed→paid→completed, a fifth placed→cancelled, the rest
// stop at paid or placed.
func orders(rng *rand.Rand, base, n int, customers []int, cat []productSpec) []orderSpec {
	var sellable []productSpec
	for _, p := range cat {
		if !p.grouped {
			sellable = append(sellable, p)
		}
	}
	out := make([]orderSpec, 0, n)
	item := base * 10
	for i := 0; i < n; i++ {
		o := orderSpec{id: base + i, customer: customers[rng.IntN(len(customers))], shipCents: 550}
		for k := rng.IntN(3) + 1; k > 0; k-- {
			p := sellable[rng.IntN(len(sellable))]
			l := orderLine{itemID: item, qty: rng.IntN(3) + 1, unitExcl: productPrice(p.id, 1), product: p}
			if rng.IntN(4) == 0 {
				l.discExcl = 100
			}
			item++
			o.lines = append(o.lines, l)
		}
		if rng.IntN(3) == 0 {
			o.feeCents = 220
		}
		if rng.IntN(5) == 0 {
			o.discCents = 300
		}
		switch r := rng.IntN(20); {
		case r < 10:
			o.stages = []string{"placed", "paid", "completed"}
		case r < 14:
			o.stages = []string{"placed", "cancelled"}
		case r < 17:
			o.stages = []string{"placed", "paid"}
		default:
			o.stages = []string{"placed"}
		}
		out = append(out, o)
	}
	return out
}

func (o orderSpec) events() []json.RawMessage {
	var out []json.RawMessage
	for i, st := range o.stages {
		out = append(out, event("order", st, o.id, i+1, o.data(i)))
	}
	return out
}

// arrayOf joins events into one JSON array body.
func arrayOf(evs []json.RawMessage) []byte {
	var b bytes.Buffer
	b.WriteByte('[')
	for i, e := range evs {
		if i > 0 {
			b.WriteByte(',')
		}
		b.Write(e)
	}
	b.WriteByte(']')
	return b.Bytes()
}

// ---------------------------------------------------------------------------------
// Benchmarks. Each records its figures with b.ReportMetric and, when
// NOPSYNC_BENCH_SUMMARY names a file, appends a summary line to it (scripts/bench
// prints the table).

func summary(tb testing.TB, format string, args ...any) {
	line := fmt.Sprintf(format, args...)
	tb.Log(line)
	if f := os.Getenv("NOPSYNC_BENCH_SUMMARY"); f != "" {
		fh, err := os.OpenFile(f, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
		if err == nil {
			fmt.Fprintln(fh, line)
			fh.Close()
		}
	}
}

// benchEnv starts a simulator with o and the app against it; it returns both and the
// store client.
type benchRig struct {
	sim    *dataversetest.Server
	app    *appProc
	store  *storeClient
	log    string
	bin    string
	env    []string
	addr   string
	secret string
}

func newBenchRig(b testing.TB, o dataversetest.Options, extraEnv ...string) *benchRig {
	b.Helper()
	dir := b.TempDir()
	sim := dataversetest.NewServer(o)
	r := &benchRig{sim: sim, bin: handlerBinary(b), addr: freeAddr(b), secret: "bench-webhook-" + uuid.NewString(), log: filepath.Join(dir, "app.log")}
	b.Cleanup(r.closeSim)
	if f := os.Getenv("BENCH_APP_LOG"); f != "" {
		r.log = f // keep the app's log for a look afterwards
	}
	r.env = appEnv(sim, writeSimCA(b, sim, dir), filepath.Join(dir, "data"), r.addr, r.secret, extraEnv...)
	r.app = startApp(b, r.bin, r.env, r.addr, r.log)
	r.store = newStoreClient(func() string { return "http://" + r.addr }, r.secret)
	return r
}

// closeSim closes the simulator and lets go of it: a benchmark that runs several rigs
// one after the other then doesn't carry an earlier one's rows in its heap (and its
// garbage collection) through the later ones.
func (r *benchRig) closeSim() {
	if r.sim != nil {
		r.sim.Close()
		r.sim = nil
	}
}

// importArrays posts evs as arrays of 1000 (the initial import), conc at a time.
func (r *benchRig) importArrays(ctx context.Context, entity string, evs []json.RawMessage, conc int) error {
	var chunks [][]json.RawMessage
	for i := 0; i < len(evs); i += 1000 {
		chunks = append(chunks, evs[i:min(i+1000, len(evs))])
	}
	errc := make(chan error, len(chunks))
	sem := make(chan struct{}, conc)
	var wg sync.WaitGroup
	for _, c := range chunks {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			errc <- r.store.post(ctx, entity, arrayOf(c))
		}()
	}
	wg.Wait()
	close(errc)
	for err := range errc {
		if err != nil {
			return err
		}
	}
	return nil
}

// waitAnswered waits until the simulator has answered every request (or ctx ends): it
// shows a write's rows while the write still takes its execution time, so a run is done
// when its last request has been answered, not when its rows show.
func waitAnswered(ctx context.Context, sim *dataversetest.Server) {
	for sim.Stats().InFlight > 0 && ctx.Err() == nil {
		time.Sleep(5 * time.Millisecond)
	}
}

// benchCatalogue is the benchmarks' catalogue: BENCH_PRODUCTS products (500), a fifth of
// them in families of 4 (20 families for 500), the rest simple.
func benchCatalogue() []productSpec {
	n := max(envInt("BENCH_PRODUCTS", 500), 5)
	families := n / 25
	return catalogue(900000, families, 4, n-5*families)
}

// importCatalogue sends the benchmarks' catalogue (benchCatalogue) through store, as an import sends products before orders, and waits until
// every product is in the simulator and the app's queues are drained.
func importCatalogue(ctx context.Context, b testing.TB, store *storeClient, sim *dataversetest.Server) []productSpec {
	b.Helper()
	cat := benchCatalogue()
	var pev []json.RawMessage
	for _, p := range cat {
		pev = append(pev, event("product", "updated", p.id, 1, productData(p, 1)))
	}
	if err := (&benchRig{store: store}).importArrays(ctx, "product", pev, 2); err != nil {
		b.Fatal(err)
	}
	if err := waitRows(ctx, sim, "products", len(cat)); err != nil {
		b.Fatal(err)
	}
	if _, err := store.waitDrained(ctx, 200*time.Millisecond); err != nil {
		b.Fatal(err)
	}
	return cat
}

// waitRows waits until the simulator holds want rows of set (or ctx ends).
func waitRows(ctx context.Context, sim *dataversetest.Server, set string, want int) error {
	for sim.Count(set) < want {
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s: %d of %d rows: %w", set, sim.Count(set), want, ctx.Err())
		case <-time.After(20 * time.Millisecond):
		}
	}
	return nil
}

// importScale is the simulator's TimeScale for the import benchmark: the limits (and
// Retry-After) run scale times slower than real time... see BenchmarkImport.
func envFloat(name string, def float64) float64 {
	if v, err := strconv.ParseFloat(os.Getenv(name), 64); err == nil && v > 0 {
		return v
	}
	return def
}

func envInt(name string, def int) int {
	if v, err := strconv.Atoi(os.Getenv(name)); err == nil && v > 0 {
		return v
	}
	return def
}

// benchCostModel returns the simulator's execution costs BENCH_COST_MODEL picks, and
// its name: "default" (2 ms per request + 2 ms per row written, with the
// x-ms-ratelimit-* headers) or "perrow" (30 ms per request + 8 ms per row written,
// without the headers: the client has only its latencies to pace by).
func benchCostModel(b *testing.B) (string, dataversetest.ExecutionCost) {
	b.Helper()
	model := os.Getenv("BENCH_COST_MODEL")
	if model == "" {
		model = "default"
	}
	cost, ok := dataversetest.CostModels[model]
	if !ok {
		b.Fatalf("BENCH_COST_MODEL %q: want default or perrow", model)
	}
	return model, cost
}

// BenchmarkImport: the initial import (arrays of 1000 events to /api/events/{entity})
// of 20,000 customers, then 500 products (BENCH_PRODUCTS), then 5,000 orders (a store's worth in one run,
// each part measured and the rows of all three together), against the simulator with service-protection
// limits on and requests taking their execution time. Figures are in simulated time
// (real time ÷ TimeScale) and compared with the simulator's ideal ceiling.
//
// The documented limits are per 300 s window; an import of 20,000 rows fits into one
// window's budget, so the sustained ceiling would never bind. The bench keeps the
// limits' rates (requests and execution seconds per second) but shortens the window
// to 30 s, so the run spans several windows and the ceiling is the one a long import
// meets.
func BenchmarkImport(b *testing.B) {
	// BENCH_IMPORT_STATE=table keeps the sync state in Table Storage (Azurite), as in
	// Azure; "both" runs the import with the embedded store, then again with the state
	// in Table Storage, and reports how the second compares; the default is local mode's
	// embedded store.
	var stores []string
	switch st := os.Getenv("BENCH_IMPORT_STATE"); st {
	case "":
		stores = []string{"embedded"}
	case "table":
		stores = []string{"table"}
	case "both":
		stores = []string{"embedded", "table"}
	default:
		b.Fatalf("BENCH_IMPORT_STATE=%q: want table, both or nothing", st)
	}
	if slices.Contains(stores, "table") && os.Getenv("TEST_TABLE_CONNECTION_STRING") == "" {
		b.Skip("BENCH_IMPORT_STATE=table or both needs TEST_TABLE_CONNECTION_STRING")
	}
	for range b.N {
		rates := map[string]map[string]float64{}
		for _, st := range stores {
			rates[st] = benchImport(b, st, len(stores) > 1)
			debug.FreeOSMemory() // a collection, then the freed memory back to the system
		}
		if len(stores) > 1 {
			e, t := rates["embedded"], rates["table"]
			summary(b, "| initial import, state in Table Storage (Azurite) against the embedded store, one after the other | customers %.0f%%, products %.0f%%, orders %.0f%%, the store's worth %.0f%% of the embedded import's rate | customers %.0f vs %.0f/s, products %.0f vs %.0f/s, orders %.0f vs %.0f/s, rows %.0f vs %.0f/s | load average at the end: %s |",
				100*t["customers"]/e["customers"], 100*t["products"]/e["products"], 100*t["orders"]/e["orders"], 100*t["store"]/e["store"],
				t["customers"], e["customers"], t["products"], e["products"], t["orders"], e["orders"], t["store"], e["store"], loadAverage())
			b.ReportMetric(100*t["customers"]/e["customers"], "customers-%embedded")
			b.ReportMetric(100*t["orders"]/e["orders"], "orders-%embedded")
		}
	}
}

// placedOrders is each order's "placed" event, with the rows Dynamics 365 writes for them
// however they are sent: the header, each line (the payment fee is one too), and after
// each line the header again with its totals recalculated (the simulator's Sales rules,
// as the platform's price calculation does); lines counts the order lines.
func placedOrders(ords []orderSpec) (evs []json.RawMessage, rows, lines int) {
	for _, o := range ords {
		o.stages = []string{"placed"}
		evs = append(evs, o.events()[0])
		n := len(o.lines)
		if o.feeCents > 0 {
			n++
		}
		rows += 1 + 2*n
		lines += n
	}
	return evs, rows, lines
}

// loadAverage is the machine's 1, 5 and 15-minute load averages (Linux), or "?": other
// work on the 2 cores moves the figures, so a summary says how busy the machine was.
func loadAverage() string {
	b, err := os.ReadFile("/proc/loadavg")
	if f := strings.Fields(string(b)); err == nil && len(f) >= 3 {
		return strings.Join(f[:3], " ")
	}
	return "?"
}

// benchImport runs BenchmarkImport's import once with the sync state in store
// ("embedded" or "table") and returns the simulated rate of each part; named adds the
// store to the metrics' names (several stores in one run).
func benchImport(b *testing.B, store string, named bool) map[string]float64 {
	nCust := envInt("BENCH_CUSTOMERS", 20000)
	nOrders := envInt("BENCH_ORDERS", 5000)
	scale := envFloat("BENCH_TIMESCALE", 1)
	out := map[string]float64{}
	prefix := ""
	if named {
		prefix = store + "-"
	}
	limits := dataversetest.Limits{Requests: 600, ExecutionTime: 120 * time.Second, Window: 30 * time.Second, Concurrent: 52}
	var env []string
	if store == "table" {
		env = []string{"STATE_STORAGE_CONNECTION_STRING=" + os.Getenv("TEST_TABLE_CONNECTION_STRING"), fmt.Sprintf("SYNC_STATE_TABLE=import%d", time.Now().Unix())}
	}
	model, cost := benchCostModel(b)
	r := newBenchRig(b, dataversetest.Options{TimeScale: scale, Limits: limits, SleepExecutionTime: true,
		ExecutionCost: cost, NoRateLimitHeaders: model == "perrow"}, env...)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
	defer cancel()

	// measure imports evs and waits until every set holds its count of rows (an order
	// is in Dataverse when its lines are) and, with drain, until the app has nothing left
	// to do (a product is published after its row is written). rowsPerRecord is what
	// Dynamics 365 writes per record, 0 for what the simulator wrote.
	type rowCount struct {
		set  string
		want int
	}
	appBulk := dataverse.DefaultBulkChunkSize // unless BENCH_BULK_SIZE sets DATAVERSE_BULK_SIZE
	if n, err := strconv.Atoi(os.Getenv("BENCH_BULK_SIZE")); err == nil && n > 0 {
		appBulk = n
	}
	var storeRows int
	var storeTime, storeExec time.Duration
	measure := func(name, entity string, evs []json.RawMessage, rowsPerRecord float64, drain bool, wants ...rowCount) {
		s0 := r.sim.Stats()
		start := time.Now()
		if err := r.importArrays(ctx, entity, evs, 4); err != nil {
			b.Fatal(err)
		}
		accepted := time.Since(start)
		for _, w := range wants {
			if err := waitRows(ctx, r.sim, w.set, w.want); err != nil {
				b.Fatal(err)
			}
		}
		if drain {
			if _, err := r.store.waitDrained(ctx, 20*time.Millisecond); err != nil {
				b.Fatal(err)
			}
		}
		waitAnswered(ctx, r.sim)
		real := time.Since(start)
		s1 := r.sim.Stats()
		n := float64(len(evs))
		sim := real.Seconds() / scale
		rate := n / sim
		reqs := s1.Requests - s0.Requests
		rows := s1.RowsWritten - s0.RowsWritten
		storeRows += rows
		storeTime += real
		storeExec += s1.Execution - s0.Execution
		fmt.Fprintf(os.Stderr, "%s (state %s):\n", name, store)
		printOperations(s0, s1)
		if rowsPerRecord == 0 {
			rowsPerRecord = float64(rows) / n
		}
		perReq := float64(rows) / float64(max(1, reqs-(s1.Throttled-s0.Throttled)))
		// The ceiling for rows written 1000 per request (the client's bulk size) by up
		// to 52 requests at once (the concurrency limit).
		ideal := r.sim.IdealThroughput(1000, 52)
		idealRecords := ideal.Ceiling / rowsPerRecord
		// The app writes DATAVERSE_BULK_SIZE rows per request (default 100): its own
		// ceiling is that lower one, shown beside the goal's.
		atBulk := r.sim.IdealThroughput(appBulk, 52).Ceiling / rowsPerRecord
		out[name] = rate
		b.ReportMetric(rate, prefix+name+"/s-sim")
		b.ReportMetric(100*rate/idealRecords, prefix+name+"-%ideal")
		execUsed := (s1.Execution - s0.Execution).Seconds() / real.Seconds()
		inFlight := (s1.Busy - s0.Busy).Seconds() / real.Seconds()
		summary(b, "| initial import: %d %s (arrays of 1000), cost model %s, state %s | %.0f %s/s simulated (%.0f s) | %.0f%% of the ideal %.0f/s (%s-bound; %.0f/s at the app's %d rows per request) | %d requests = %.1f/s of 20/s allowed (%.1f rows written each), %d rows, execution %.1f s/s of 4 s/s allowed, %d × 429, %.1f requests in flight on average; accepted in %.1f s real, in Dataverse after %.1f s real (TimeScale %g); load average %s |",
			len(evs), name, model, store, rate, name, sim, 100*rate/idealRecords, idealRecords, ideal.Limit, atBulk, appBulk,
			reqs, float64(reqs)/sim, perReq, rows, execUsed, s1.Throttled-s0.Throttled,
			inFlight, accepted.Seconds(), real.Seconds(), scale, loadAverage())
	}

	var cev []json.RawMessage
	ids := make([]int, nCust)
	for i := range nCust {
		ids[i] = 1 + i
		cev = append(cev, event("customer", "updated", 1+i, 1, customerData(1+i, 2)))
	}
	measure("customers", "customer", cev, 1, false, rowCount{"contacts", nCust})

	// Then the catalogue, as a store's import sends it before its orders: its rows are
	// what the simulator wrote (products, families, price list items), and a product is
	// in place once published, when the app has drained.
	cat := benchCatalogue()
	var pev []json.RawMessage
	for _, p := range cat {
		pev = append(pev, event("product", "updated", p.id, 1, productData(p, 1)))
	}
	measure("products", "product", pev, 0, true, rowCount{"products", len(cat)})

	rng := rand.New(rand.NewPCG(7, 7))
	oev, rows, allLines := placedOrders(orders(rng, 500000, nOrders, ids, cat))
	measure("orders", "order", oev, float64(rows)/float64(nOrders), false, rowCount{"salesorders", nOrders}, rowCount{"salesorderdetails", allLines})

	// The store's worth in one run: every row the three wrote over their times together.
	storeSim := storeTime.Seconds() / scale
	storeRate := float64(storeRows) / storeSim
	ideal := r.sim.IdealThroughput(1000, 52)
	out["store"] = storeRate
	b.ReportMetric(100*storeRate/ideal.Ceiling, prefix+"store-%ideal")
	// What the mix allows: the ceiling charges each row its share of a 1000-row request;
	// the requests the import sent (one-record operations such as a product's publish and
	// price list item included) were charged storeExec for the same rows. At the whole
	// execution budget the import can reach ceilingExec/storeExec of the ceiling.
	budget := limits.ExecutionTime.Seconds() / limits.Window.Seconds() // s of execution per s
	ceilingExec := float64(storeRows) * budget / ideal.ExecutionBound
	allows := min(1, ceilingExec/storeExec.Seconds())
	summary(b, "| initial import, a store's worth in one run: %d customers, then %d products, then %d orders, cost model %s, state %s | %.0f rows written/s simulated (%d rows in %.0f s) | %.0f%% of the ideal %.0f rows/s; requests charged %.0f s of execution where the ceiling counts %.0f s for these rows, so this mix allows at most %.0f%% of the ideal: the import reached %.0f%% of that | %d × 429 in all; load average %s |",
		nCust, len(cat), nOrders, model, store, storeRate, storeRows, storeSim, 100*storeRate/ideal.Ceiling, ideal.Ceiling,
		storeExec.Seconds(), ceilingExec, 100*allows, 100*storeRate/ideal.Ceiling/allows, r.sim.Stats().Throttled, loadAverage())
	if v := r.sim.RetryAfterViolations(); v != 0 {
		b.Errorf("%d requests sent before their Retry-After expired", v)
	}
	summary(b, "| initial import: the app (state "+store+") | peak RSS %d MiB | Retry-After violations: %d | |", r.app.memKB("VmHWM")/1024, r.sim.RetryAfterViolations())
	r.app.stop()
	r.closeSim()
	return out
}

// BenchmarkLiveLatency: live events at a steady rate (default 50/s for 30 s), each a new
// customer; latency from the 202 to the contact's row in the simulator (real time,
// limits on at TimeScale 1, requests taking their execution time).
func BenchmarkLiveLatency(b *testing.B) {
	rate := envInt("BENCH_LIVE_RATE", 50)
	dur := time.Duration(envInt("BENCH_LIVE_SECONDS", 30)) * time.Second
	for range b.N {
		r := newBenchRig(b, dataversetest.Options{SleepExecutionTime: true})
		ctx, cancel := context.WithTimeout(context.Background(), dur+2*time.Minute)
		defer cancel()
		n := int(dur.Seconds()) * rate
		accepted := make([]atomic.Int64, n) // UnixNano of the 202
		landed := make([]time.Time, n)
		ids := make([]string, n)
		for i := range n {
			ids[i] = contactID(2000000 + i)
		}
		var sent atomic.Int64
		var wg sync.WaitGroup
		errc := make(chan error, n)
		// Warm-up: one event so bootstrap and the token are not in the figures.
		if err := r.store.post(ctx, "customer", event("customer", "created", 1999999, 1, customerData(1999999, 1))); err != nil {
			b.Fatal(err)
		}
		if err := waitRows(ctx, r.sim, "contacts", 1); err != nil {
			b.Fatal(err)
		}
		tick := time.NewTicker(time.Second / time.Duration(rate))
		start := time.Now()
		go func() {
			for i := range n {
				<-tick.C
				wg.Add(1)
				go func() {
					defer wg.Done()
					if err := r.store.post(ctx, "customer", event("customer", "created", 2000000+i, 1, customerData(2000000+i, 1))); err != nil {
						errc <- err
						return
					}
					accepted[i].Store(time.Now().UnixNano())
					sent.Add(1)
				}()
			}
			tick.Stop()
		}()
		// Poll the simulator for rows of accepted events.
		pending := n
		for pending > 0 && ctx.Err() == nil {
			pending = 0
			for i := range n {
				if !landed[i].IsZero() {
					continue
				}
				if accepted[i].Load() == 0 && int64(i) >= sent.Load()+200 {
					pending++ // not sent yet
					continue
				}
				if _, ok := r.sim.Row("contacts", ids[i]); ok {
					landed[i] = time.Now()
					continue
				}
				pending++
			}
			time.Sleep(2 * time.Millisecond)
		}
		wg.Wait()
		close(errc)
		for err := range errc {
			b.Fatal(err)
		}
		var lat []time.Duration
		for i := range n {
			acc := accepted[i].Load()
			if landed[i].IsZero() || acc == 0 {
				continue
			}
			lat = append(lat, max(0, landed[i].Sub(time.Unix(0, acc))))
		}
		slices.Sort(lat)
		if len(lat) < n {
			b.Fatalf("%d of %d events landed", len(lat), n)
		}
		p50, p99 := lat[len(lat)/2], lat[len(lat)*99/100]
		b.ReportMetric(float64(p50.Milliseconds()), "p50-ms")
		b.ReportMetric(float64(p99.Milliseconds()), "p99-ms")
		summary(b, "| live events: %d/s for %s (%d new customers) | 202 → row in Dataverse: p50 %s, p99 %s | | max %s; limits on, TimeScale 1 |",
			rate, dur, n, p50.Round(time.Millisecond), p99.Round(time.Millisecond), lat[len(lat)-1].Round(time.Millisecond))
		_ = start
		r.app.stop()
	}
}

// BenchmarkLiveDuringImportLatency: single customer events at a steady rate (default 5/s)
// while 20,000 customers are imported in arrays of 1000 (BENCH_CUSTOMERS), limits on
// and requests taking their execution time (BENCH_COST_MODEL as in BenchmarkImport). It imports the customers once
// alone, then as many other customers again with the live events arriving, and reports
// the live events' latency from their 202 to their contact in the simulator and the
// import's throughput in both runs: live events go ahead of the import (their own
// queue and the Dataverse client's slots first), and the import keeps its speed.
func BenchmarkLiveDuringImportLatency(b *testing.B) {
	nCust := envInt("BENCH_CUSTOMERS", 20000)
	rate := envInt("BENCH_LIVE_RATE", 5)
	for range b.N {
		limits := dataversetest.Limits{Requests: 600, ExecutionTime: 120 * time.Second, Window: 30 * time.Second, Concurrent: 52}
		o := dataversetest.Options{Limits: limits, SleepExecutionTime: true}
		costName := "default"
		if c := os.Getenv("BENCH_COST_MODEL"); c != "" { // as in BenchmarkImport
			cost, ok := dataversetest.CostModels[c]
			if !ok {
				b.Fatalf("BENCH_COST_MODEL %q: want default or perrow", c)
			}
			o.ExecutionCost, o.NoRateLimitHeaders, costName = cost, c == "perrow", c
		}
		var env []string
		if n := envInt("BENCH_BULK_SIZE", 0); n > 0 { // the app's DATAVERSE_BULK_SIZE
			env = append(env, fmt.Sprintf("DATAVERSE_BULK_SIZE=%d", n))
		}
		r := newBenchRig(b, o, env...)
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Minute)
		defer cancel()
		// Warm-up: one event so bootstrap and the token are not in the figures.
		if err := r.store.post(ctx, "customer", event("customer", "created", 2999999, 1, customerData(2999999, 1))); err != nil {
			b.Fatal(err)
		}
		if err := waitRows(ctx, r.sim, "contacts", 1); err != nil {
			b.Fatal(err)
		}

		// importRun imports the customers base+1..base+nCust and returns its rate (rows/s)
		// once every contact is in the simulator and no request is in flight.
		importRun := func(base int) (float64, time.Duration) {
			evs := make([]json.RawMessage, nCust)
			ids := make([]string, nCust)
			for i := range nCust {
				evs[i] = event("customer", "updated", base+1+i, 1, customerData(base+1+i, 2))
				ids[i] = contactID(base + 1 + i)
			}
			start := time.Now()
			errc := make(chan error, 1)
			go func() { errc <- r.importArrays(ctx, "customer", evs, 4) }()
			for next := 0; next < nCust; {
				if _, ok := r.sim.Row("contacts", ids[next]); ok {
					next++
					continue
				}
				select {
				case <-ctx.Done():
					b.Fatalf("import: %d of %d contacts: %v", next, nCust, ctx.Err())
				case <-time.After(10 * time.Millisecond):
				}
			}
			if err := <-errc; err != nil {
				b.Fatal(err)
			}
			waitAnswered(ctx, r.sim)
			d := time.Since(start)
			return float64(nCust) / d.Seconds(), d
		}
		alone, aloneD := importRun(3000000)
		if _, err := r.store.waitDrained(ctx, 200*time.Millisecond); err != nil {
			b.Fatal(err)
		}
		// The second import starts with the budget the first had: the first one's
		// execution time has left the window.
		time.Sleep(limits.Window)

		// Live events from now until the second import is done.
		type live struct {
			accepted atomic.Int64 // UnixNano of the 202
			landed   time.Time
		}
		var mu sync.Mutex
		var lives []*live
		stop := make(chan struct{})
		var wg sync.WaitGroup
		errc := make(chan error, 1)
		tickDone := make(chan struct{})
		go func() {
			defer close(tickDone)
			tick := time.NewTicker(time.Second / time.Duration(rate))
			defer tick.Stop()
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				case <-tick.C:
				}
				l := &live{}
				mu.Lock()
				lives = append(lives, l)
				mu.Unlock()
				wg.Add(1)
				go func() {
					defer wg.Done()
					if err := r.store.post(ctx, "customer", event("customer", "created", 4000000+i, 1, customerData(4000000+i, 1))); err != nil {
						select {
						case errc <- err:
						default:
						}
						return
					}
					l.accepted.Store(time.Now().UnixNano())
				}()
			}
		}()
		watchDone := make(chan struct{})
		go func() { // note when each live event's contact shows
			defer close(watchDone)
			for {
				mu.Lock()
				ls := slices.Clone(lives)
				mu.Unlock()
				pending := false
				for i, l := range ls {
					if !l.landed.IsZero() {
						continue
					}
					if _, ok := r.sim.Row("contacts", contactID(4000000+i)); ok {
						l.landed = time.Now()
						continue
					}
					pending = true
				}
				select {
				case <-stop:
					if !pending {
						return
					}
				default:
				}
				if ctx.Err() != nil {
					return
				}
				time.Sleep(2 * time.Millisecond)
			}
		}()
		time.Sleep(time.Second) // live traffic under way before the import starts
		during, duringD := importRun(5000000)
		close(stop)
		<-tickDone
		wg.Wait()
		<-watchDone
		select {
		case err := <-errc:
			b.Fatal(err)
		default:
		}
		var lat []time.Duration
		for _, l := range lives {
			acc := l.accepted.Load()
			if acc == 0 || l.landed.IsZero() {
				b.Fatalf("a live event did not land (%d sent)", len(lives))
			}
			lat = append(lat, max(0, l.landed.Sub(time.Unix(0, acc))))
		}
		slices.Sort(lat)
		p50, p99 := lat[len(lat)/2], lat[len(lat)*99/100]
		ideal := r.sim.IdealThroughput(1000, 52)
		b.ReportMetric(float64(p50.Milliseconds()), "live-p50-ms")
		b.ReportMetric(float64(p99.Milliseconds()), "live-p99-ms")
		b.ReportMetric(during, "import-during/s")
		b.ReportMetric(100*during/alone, "import-%alone")
		summary(b, "| live events during an import: %d/s while %d customers are imported (arrays of 1000), cost model %s, bulk size %s | 202 → contact in Dataverse: p50 %s, p99 %s (max %s, %d events) | p99 < 2 s: %v | import with live events %.0f customers/s (%.1f s) = %.0f%% of the same import alone %.0f/s (%.1f s); ideal %.0f/s (%s-bound); %d × 429, Retry-After violations %d |",
			rate, nCust, costName, cmp.Or(os.Getenv("BENCH_BULK_SIZE"), "100 (default)"), p50.Round(time.Millisecond), p99.Round(time.Millisecond), lat[len(lat)-1].Round(time.Millisecond), len(lat),
			p99 < 2*time.Second, during, duringD.Seconds(), 100*during/alone, alone, aloneD.Seconds(), ideal.Ceiling, ideal.Limit,
			r.sim.Stats().Throttled, r.sim.RetryAfterViolations())
		r.app.stop()
	}
}

// contactID is the contact id the app derives for customer id (syncer.deterministicID,
// repeated here so the checks do not depend on the package under test).
func contactID(customer int) string { return rowID(1, "contact", strconv.Itoa(customer)) }

var idNamespace = uuid.NewSHA1(uuid.NameSpaceURL, []byte("https://github.com/nopsync/nopsync/dataverse-ids"))

func rowID(storeID int, kind, key string) string {
	return uuid.NewSHA1(idNamespace, []byte(strconv.Itoa(storeID)+"/"+kind+"/"+key)).String()
}

// BenchmarkIntake: requests per second and latency of POST /api/events/customer on
// loopback (one event per request, 32 clients, a bounded count), with the app's queue
// consumers running against the simulator; and the app's memory.
func BenchmarkIntake(b *testing.B) {
	total := envInt("BENCH_INTAKE_REQUESTS", 20000)
	clients := 32
	for range b.N {
		r := newBenchRig(b, dataversetest.Options{Limits: dataversetest.Limits{Disabled: true}})
		bodies := make([][]byte, total)
		for i := range total {
			bodies[i] = event("customer", "created", 3000000+i, 1, customerData(3000000+i, 1))
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		defer cancel()
		lat := make([]time.Duration, total)
		var next atomic.Int64
		var failed atomic.Int64
		var wg sync.WaitGroup
		runtime.GC()
		start := time.Now()
		for range clients {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for {
					i := int(next.Add(1)) - 1
					if i >= total || ctx.Err() != nil {
						return
					}
					t := time.Now()
					code, body, err := r.store.postOnce(ctx, "customer", bodies[i])
					lat[i] = time.Since(t)
					if err != nil || code != http.StatusAccepted {
						if failed.Add(1) == 1 {
							b.Errorf("POST: %d %s %v", code, body, err)
						}
					}
				}
			}()
		}
		wg.Wait()
		el := time.Since(start)
		slices.Sort(lat)
		rps := float64(total) / el.Seconds()
		p50, p99 := lat[total/2], lat[total*99/100]
		rss := r.app.memKB("VmRSS")
		hwm := r.app.memKB("VmHWM")
		b.ReportMetric(rps, "req/s")
		b.ReportMetric(float64(p99.Microseconds())/1000, "p99-ms")
		b.ReportMetric(float64(hwm)/1024, "peakRSS-MiB")
		summary(b, "| intake: POST /api/events/customer, %d single events, %d clients, loopback | %.0f requests/s, p99 %s | | p50 %s; app RSS %d MiB after, peak %d MiB; %d failed; queue consumers running |",
			total, clients, rps, p99.Round(10*time.Microsecond), p50.Round(10*time.Microsecond), rss/1024, hwm/1024, failed.Load())
		r.app.stop()
	}
}

// BenchmarkStartup: time from starting the process to its first answer (GET / on
// LISTEN_ADDR, local mode against the simulator). Azure mode (FUNCTIONS_CUSTOMHANDLER_PORT)
// needs Service Bus, Table Storage and a managed identity to build its clients, so its
// readiness is not measured here.
func BenchmarkStartup(b *testing.B) {
	runs := envInt("BENCH_STARTUP_RUNS", 10)
	for range b.N {
		sim := dataversetest.NewServer(dataversetest.Options{})
		defer sim.Close()
		dir := b.TempDir()
		ca := writeSimCA(b, sim, dir)
		bin := handlerBinary(b)
		var ds []time.Duration
		for i := range runs {
			addr := freeAddr(b)
			env := appEnv(sim, ca, filepath.Join(dir, "data"+strconv.Itoa(i)), addr, "startup-secret-"+uuid.NewString())
			p := startApp(b, bin, env, addr, filepath.Join(dir, "app.log"))
			ds = append(ds, p.ready)
			p.stop()
		}
		slices.Sort(ds)
		b.ReportMetric(float64(ds[len(ds)/2].Microseconds())/1000, "median-ms")
		summary(b, "| start-up: process start → first answer to GET / (local mode), %d runs | median %s | | max %s |",
			runs, ds[len(ds)/2].Round(100*time.Microsecond), ds[len(ds)-1].Round(100*time.Microsecond))

		// Azure mode answers GET / before it builds its clients and creates the state
		// table in the background; a Table service (Azurite, which scripts/bench starts)
		// lets that succeed. Service Bus and the managed identity are not contacted before
		// the first event.
		conn := os.Getenv("TEST_TABLE_CONNECTION_STRING")
		if conn == "" {
			summary(b, "| start-up: Azure mode (FUNCTIONS_CUSTOMHANDLER_PORT) | not measured | | needs a Table service at start: set TEST_TABLE_CONNECTION_STRING (scripts/bench starts Azurite) |")
			continue
		}
		ds = ds[:0]
		for i := range runs {
			addr := freeAddr(b)
			_, port, _ := net.SplitHostPort(addr)
			env := appEnv(sim, ca, filepath.Join(dir, "azdata"+strconv.Itoa(i)), "", "startup-secret-"+uuid.NewString(),
				"FUNCTIONS_CUSTOMHANDLER_PORT="+port, "STATE_STORAGE_CONNECTION_STRING="+conn,
				"SYNC_STATE_TABLE=startup"+strconv.Itoa(i), "ServiceBusConnection__fullyQualifiedNamespace=nopsync-bench.servicebus.windows.net")
			p := startAppAnswer(b, bin, env, addr, filepath.Join(dir, "app-azure.log"))
			ds = append(ds, p.ready)
			p.stop()
		}
		slices.Sort(ds)
		summary(b, "| start-up: Azure mode, process start → first answer on FUNCTIONS_CUSTOMHANDLER_PORT (GET /), %d runs | median %s | | max %s; answered before the app (state table in Azurite) is built |",
			runs, ds[len(ds)/2].Round(100*time.Microsecond), ds[len(ds)-1].Round(100*time.Microsecond))
	}
}

// BenchmarkImportMemory: the importer's peak RSS (VmHWM of the app process) after
// importing 20,000 and 100,000 customers, each into a fresh app; limits off so it runs
// as fast as the app can. Flat memory: the two peaks differ by less than 20 %.
func BenchmarkImportMemory(b *testing.B) {
	sizes := []int{envInt("BENCH_MEM_SMALL", 20000), envInt("BENCH_MEM_LARGE", 100000)}
	// BENCH_MEM_STATE=table keeps the sync state in Table Storage (TEST_TABLE_CONNECTION_STRING,
	// e.g. Azurite), as in Azure; the default is local mode's embedded state store, which
	// keeps records in its journal file and a small index in memory.
	where := "embedded state store"
	var extra func(n int) []string
	if os.Getenv("BENCH_MEM_STATE") == "table" {
		conn := os.Getenv("TEST_TABLE_CONNECTION_STRING")
		if conn == "" {
			b.Skip("BENCH_MEM_STATE=table needs TEST_TABLE_CONNECTION_STRING")
		}
		where = "state in Table Storage (Azurite)"
		extra = func(n int) []string {
			return []string{"STATE_STORAGE_CONNECTION_STRING=" + conn, fmt.Sprintf("SYNC_STATE_TABLE=mem%d%d", n, time.Now().Unix())}
		}
	}
	for range b.N {
		var peaks []int
		for _, n := range sizes {
			var env []string
			if extra != nil {
				env = extra(n)
			}
			r := newBenchRig(b, dataversetest.Options{Limits: dataversetest.Limits{Disabled: true}}, env...)
			ctx, cancel := context.WithTimeout(context.Background(), time.Duration(envInt("BENCH_MEM_MINUTES", 15))*time.Minute)
			start := time.Now()
			// Generated and sent page by page, as an importer reads the store's pages.
			for page := 0; page < n; page += 10000 {
				var evs []json.RawMessage
				for i := page; i < min(page+10000, n); i++ {
					evs = append(evs, event("customer", "updated", 1+i, 1, customerData(1+i, 1)))
				}
				if err := r.importArrays(ctx, "customer", evs, 2); err != nil {
					cancel()
					b.Fatal(err)
				}
			}
			if err := waitRows(ctx, r.sim, "contacts", n); err != nil {
				// Report how far it got and the peak so far, then fail.
				cancel()
				b.Errorf("%v", err)
				summary(b, "| import memory: %d customers, %s | INCOMPLETE: %d rows after %.0f s; peak RSS so far %d MiB | | |", n, where, r.sim.Count("contacts"), time.Since(start).Seconds(), r.app.memKB("VmHWM")/1024)
				return
			}
			cancel()
			hwm := r.app.memKB("VmHWM")
			peaks = append(peaks, hwm)
			summary(b, "| import memory: %d customers, %s | peak RSS (VmHWM) %d MiB | | %.0f s, %.0f customers/s real (limits off) |", n, where, hwm/1024, time.Since(start).Seconds(), float64(n)/time.Since(start).Seconds())
			r.app.stop()
			r.sim.Close()
		}
		ratio := float64(peaks[1]) / float64(peaks[0])
		b.ReportMetric(ratio, "peak-ratio")
		verdict := "flat (< 20 % apart)"
		if ratio > 1.2 || ratio < 1/1.2 {
			verdict = "NOT flat (≥ 20 % apart)"
		}
		summary(b, "| import memory: peak RSS %d vs %d customers, %s | ratio %.2f | %s | |", sizes[1], sizes[0], where, ratio, verdict)
	}
}

var _ = errors.New
