//go:build chaos

package main

// The outage phases of the chaos test (scripts/chaos): the app binary in local mode,
// with its real failure policy (copies after 10–60 s, breaker) and the embedded queue's
// Service Bus semantics (maxDeliveryCount 10, redelivery at once), through an outage of
// Dataverse (every request 503, or connection refused) or of the state store (Table
// Storage in Azurite behind a port that is closed: connection refused), each of
// CHAOS_OUTAGE_MINUTES (default "5,30"). The store keeps sending events during the
// outage; auto-sync is off. Each phase prints the time from the end of the outage until
// everything accepted is in Dataverse, and the dead letters, and fails when anything is
// dead-lettered or landing takes more than two minutes (operations.md). The phases run
// side by side, one app process each.

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/nopsync/nopsync/shared/dataverse/dataversetest"
)

func TestChaosOutages(t *testing.T) {
	var lengths []time.Duration
	for _, s := range strings.Split(envString("CHAOS_OUTAGE_MINUTES", "5,30"), ",") {
		m, err := strconv.ParseFloat(strings.TrimSpace(s), 64)
		if err != nil || m <= 0 {
			t.Fatalf("CHAOS_OUTAGE_MINUTES: %q is not a number of minutes", s)
		}
		lengths = append(lengths, time.Duration(m*float64(time.Minute)))
	}
	kinds := strings.Split(envString("CHAOS_OUTAGE_KINDS", "dataverse-503,dataverse-refused,state-store"), ",")
	bin := handlerBinary(t)
	for _, length := range lengths {
		for _, kind := range kinds {
			t.Run(fmt.Sprintf("%s-%s", kind, length), func(t *testing.T) {
				t.Parallel()
				outagePhase(t, bin, strings.TrimSpace(kind), length)
			})
		}
	}
}

func envString(name, def string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return def
}

func outagePhase(t *testing.T, bin, kind string, length time.Duration) {
	sim := dataversetest.NewServer(dataversetest.Options{Seed: 7})
	defer sim.Close()
	dir := t.TempDir()
	ca := writeSimCA(t, sim, dir)
	addr := freeAddr(t)
	secret := "chaos-webhook-" + uuid.NewString()
	var extra []string
	var dvProxy, tableProxy *tcpProxy
	switch kind {
	case "dataverse-503":
	case "dataverse-refused":
		dvProxy = newTCPProxy(t, strings.TrimPrefix(sim.URL(), "https://"))
		extra = append(extra, "DATAVERSE_URL=https://"+dvProxy.addr, "AZURE_AUTHORITY_HOST=https://"+dvProxy.addr+"/")
	case "state-store":
		conn := os.Getenv("TEST_TABLE_CONNECTION_STRING")
		m := regexp.MustCompile(`TableEndpoint=https?://([^/;]+)`).FindStringSubmatch(conn)
		if m == nil {
			t.Fatal("the state-store phase needs Azurite: TEST_TABLE_CONNECTION_STRING (scripts/chaos starts it)")
		}
		tableProxy = newTCPProxy(t, m[1])
		conn = strings.Replace(conn, m[1], tableProxy.addr, 1)
		extra = append(extra, "STATE_STORAGE_CONNECTION_STRING="+conn, "SYNC_STATE_TABLE=chaos"+strings.ReplaceAll(uuid.NewString()[:8], "-", ""))
	default:
		t.Fatalf("unknown outage kind %q (dataverse-503, dataverse-refused, state-store)", kind)
	}
	env := appEnv(sim, ca, filepath.Join(dir, "data"), addr, secret, append(extra, "AUTO_SYNC_ENABLED=false")...)
	logFile := filepath.Join(dir, "app.log")
	if d := os.Getenv("CHAOS_LOG_DIR"); d != "" {
		logFile = filepath.Join(d, fmt.Sprintf("chaos-outage-%s-%s.log", kind, length))
		os.Remove(logFile)
	}
	app := startApp(t, bin, env, addr, logFile)
	defer app.stop()
	store := newStoreClient(func() string { return "http://" + addr }, secret)
	ctx, cancel := context.WithTimeout(context.Background(), length+30*time.Minute)
	defer cancel()

	// Customers 1..before land first; then the outage; during it the store sends new
	// customers and updates of the first ones, spread over the outage.
	const before, during = 20, 60
	base := 50000
	want := map[int]int{} // customer → latest version
	for i := range before {
		id := base + i
		if err := store.post(ctx, "customer", event("customer", "created", id, 1, customerData(id, 1))); err != nil {
			t.Fatal(err)
		}
		want[id] = 1
	}
	landed := func() int {
		n := 0
		for id, ver := range want {
			if r, ok := sim.Row("contacts", contactID(id)); ok && r["lastname"] == customerLast(id, ver) {
				n++
			}
		}
		return n
	}
	for landed() < before && ctx.Err() == nil {
		time.Sleep(200 * time.Millisecond)
	}

	setDown := func(down bool) {
		setOutage(t, kind, down, sim, dvProxy, func(down bool) { tableProxy.setDown(t, down) })
	}
	setDown(true)
	start := time.Now()
	// The copies waiting, sampled from the status page through the outage (which answers
	// slowly while the state store is down: its reads time out one by one).
	sampler := newStoreClient(func() string { return "http://" + addr }, secret)
	sampler.hc.Timeout = 2 * time.Minute
	var peakScheduled atomic.Int64
	sampleCtx, stopSampling := context.WithCancel(ctx)
	sampled := make(chan struct{})
	go func() {
		defer close(sampled)
		for sampleCtx.Err() == nil {
			var st appStatus
			if sampler.getJSON(sampleCtx, "/api/status", &st) == nil {
				var n int64
				for _, q := range st.Queues {
					n += q.Scheduled
				}
				if n > peakScheduled.Load() {
					peakScheduled.Store(n)
				}
			}
			select {
			case <-sampleCtx.Done():
			case <-time.After(5 * time.Second):
			}
		}
	}()
	t.Logf("%s outage for %s from %s", kind, length, start.UTC().Format(time.TimeOnly))
	for i := range during {
		id, ver, action := base+before+i/2, 1, "created"
		if i%2 == 1 { // an update of a customer synced before the outage
			id, ver, action = base+(i/2)%before, 2+(i/2)/before, "updated"
		}
		if err := store.post(ctx, "customer", event("customer", action, id, ver, customerData(id, ver))); err != nil {
			t.Fatal(err)
		}
		want[id] = ver
		time.Sleep(length * 9 / 10 / during)
	}
	time.Sleep(time.Until(start.Add(length)))
	stopSampling()
	<-sampled
	before2 := landed()
	setDown(false)
	back := time.Now()
	for landed() < len(want) && time.Since(back) < 15*time.Minute && ctx.Err() == nil {
		time.Sleep(200 * time.Millisecond)
	}
	took := time.Since(back)
	got := landed()
	var st appStatus
	if err := store.getJSON(ctx, "/api/status", &st); err != nil {
		t.Errorf("status: %v", err)
	}
	dead := int64(0)
	for _, q := range st.Queues {
		dead += q.DeadLettered
	}
	logs, _ := os.ReadFile(logFile)
	copies := strings.Count(string(logs), "a copy is scheduled")
	failed := strings.Count(string(logs), `"msg":"invocation failed"`)
	t.Logf("%s outage of %s: %d customers in their latest state before it ended (of %d), %d events accepted during it; all %d landed %.1f s after it ended; %d dead letters; %d delayed copies scheduled (peak %d waiting), %d failed invocations",
		kind, length, before2, len(want), during, got, took.Seconds(), dead, copies, peakScheduled.Load(), failed)
	switch {
	case got < len(want):
		t.Errorf("FAIL %s %s: %d of %d customers in their latest state 15 minutes after the outage", kind, length, got, len(want))
	case took > 2*time.Minute:
		t.Errorf("FAIL %s %s: landing took %.1f s after the outage, more than 2 minutes", kind, length, took.Seconds())
	}
	if dead != 0 {
		t.Errorf("FAIL %s %s: %d messages dead-lettered", kind, length, dead)
	}
}
