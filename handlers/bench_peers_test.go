package main

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/nopsync/nopsync/shared/dataverse/dataversetest"
)

// BenchmarkImportThreeInstances: three app processes (local mode) share one state table
// in Table Storage (Azurite) and call one Dataverse simulator as one application user,
// as scaled-out instances in Azure do. Each is sent its own customers (arrays of 1000,
// BENCH_INSTANCE_CUSTOMERS each, default 5,000) at the same time; the figure is the
// customers all three land per simulated second against the simulator's ceiling for that
// one user, with the 429s and Retry-After violations of the whole run. Limits and cost
// models as in BenchmarkImport (BENCH_COST_MODEL, BENCH_TIMESCALE). BENCH_INSTANCE_ORDERS
// (default 0: none) adds orders: that many to each busy instance, of its own customers,
// after the products (threeInstanceOrders).
//
// Dataverse's limits are per user, so three instances each keeping to the whole budget
// would spend three times it: the instances count each other through peer leases in the
// state table and each paces to its third. The import starts once every process has
// renewed its lease after the last one started, so each counts all three.
func BenchmarkImportThreeInstances(b *testing.B) {
	instances := envInt("BENCH_INSTANCES", 3) // 1: the same import on one process, for comparison
	// BENCH_BUSY_INSTANCES: how many of them are sent customers (default all); the others
	// stay idle, as instances serving only the events endpoint or an empty queue do.
	busy := min(instances, envInt("BENCH_BUSY_INSTANCES", instances))
	each := envInt("BENCH_INSTANCE_CUSTOMERS", 5000)
	scale := envFloat("BENCH_TIMESCALE", 1)
	conn := os.Getenv("TEST_TABLE_CONNECTION_STRING")
	if conn == "" {
		b.Skip("needs TEST_TABLE_CONNECTION_STRING (Azurite; scripts/bench starts it)")
	}
	model, cost := benchCostModel(b)
	for range b.N {
		limits := dataversetest.Limits{Requests: 600, ExecutionTime: 120 * time.Second, Window: 30 * time.Second, Concurrent: 52}
		sim := dataversetest.NewServer(dataversetest.Options{TimeScale: scale, Limits: limits, SleepExecutionTime: true,
			ExecutionCost: cost, NoRateLimitHeaders: model == "perrow"})
		defer sim.Close()
		dir := b.TempDir()
		ca := writeSimCA(b, sim, dir)
		bin := handlerBinary(b)
		table := fmt.Sprintf("three%d", time.Now().UnixNano())
		apps := make([]*appProc, instances)
		stores := make([]*storeClient, instances)
		for i := range instances {
			addr, secret := freeAddr(b), "bench-webhook-"+uuid.NewString()
			env := appEnv(sim, ca, filepath.Join(dir, fmt.Sprintf("data%d", i)), addr, secret,
				"STATE_STORAGE_CONNECTION_STRING="+conn, "SYNC_STATE_TABLE="+table)
			apps[i] = startApp(b, bin, env, addr, filepath.Join(dir, fmt.Sprintf("app%d.log", i)))
			stores[i] = newStoreClient(func() string { return "http://" + addr }, secret)
		}
		// Each process renews its lease every third of its lifetime (30 s): after that the
		// first ones to start count the last too.
		time.Sleep(peerLeaseTTL/3 + time.Second)

		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
		defer cancel()
		s0 := sim.Stats()
		start := time.Now()
		// Every 5 s (BENCH_TIMELINE_SECONDS): the execution time the simulator charged per second and its requests, to
		// tell pacing (bursts, then pauses) from a slower feed (an even, lower spend).
		var timeline []string
		every := time.Duration(envFloat("BENCH_TIMELINE_SECONDS", 5) * float64(time.Second))
		tick := time.NewTicker(every)
		stopTick := make(chan struct{})
		tickDone := make(chan struct{})
		go func() {
			defer close(tickDone)
			prev := s0
			for {
				select {
				case <-stopTick:
					return
				case <-tick.C:
					cur := sim.Stats()
					timeline = append(timeline, fmt.Sprintf("%.1f/%d", (cur.Execution-prev.Execution).Seconds()/every.Seconds(), cur.Requests-prev.Requests))
					prev = cur
				}
			}
		}()
		var wg sync.WaitGroup
		errc := make(chan error, instances)
		accepted := make([]time.Duration, instances)
		for i := range busy {
			var evs []json.RawMessage
			for k := range each {
				id := 1 + i*each + k
				evs = append(evs, event("customer", "updated", id, 1, customerData(id, 2)))
			}
			r := &benchRig{store: stores[i]}
			wg.Add(1)
			go func() {
				defer wg.Done()
				errc <- r.importArrays(ctx, "customer", evs, 4)
				accepted[i] = time.Since(start)
			}()
		}
		wg.Wait()
		close(errc)
		for err := range errc {
			if err != nil {
				b.Fatal(err)
			}
		}
		if err := waitRows(ctx, sim, "contacts", busy*each); err != nil {
			b.Fatal(err)
		}
		waitAnswered(ctx, sim)
		real := time.Since(start)
		s1 := sim.Stats()
		tick.Stop()
		close(stopTick)
		<-tickDone
		b.Logf("execution s/s / requests, per %v: %s", every, strings.Join(timeline, " "))
		printOperations(s0, s1)
		n := busy * each
		simSec := real.Seconds() / scale
		rate := float64(n) / simSec
		ideal := sim.IdealThroughput(1000, 52)
		reqs, throttled := s1.Requests-s0.Requests, s1.Throttled-s0.Throttled
		rows := s1.RowsWritten - s0.RowsWritten
		execUsed := (s1.Execution - s0.Execution).Seconds() / real.Seconds()
		inFlight := (s1.Busy - s0.Busy).Seconds() / real.Seconds()
		b.ReportMetric(rate, "customers/s-sim")
		b.ReportMetric(100*rate/ideal.Ceiling, "%ideal")
		b.ReportMetric(float64(throttled), "429s")
		b.ReportMetric(float64(sim.RetryAfterViolations()), "retry-after-violations")
		rss := ""
		for i, a := range apps {
			if i < busy {
				rss += fmt.Sprintf(" %d MiB (accepted in %.1f s)", a.memKB("VmHWM")/1024, accepted[i].Seconds())
			} else {
				rss += fmt.Sprintf(" %d MiB (idle)", a.memKB("VmHWM")/1024)
			}
			if i < len(apps)-1 {
				rss += ","
			}
		}
		summary(b, "| %d instances (%d of them sent customers), one state table (Azurite) and one Dataverse user: %d customers each (arrays of 1000), cost model %s | %.0f customers/s simulated (%.0f s) | %.0f%% of the ideal %.0f/s (%s-bound) | %d × 429, %d Retry-After violations; %d requests (%.1f rows each), %d rows, execution %.1f s/s of 4 s/s allowed, %.1f requests in flight on average; peak RSS and time to 202 per process:%s; TimeScale %g |",
			instances, busy, each, model, rate, simSec, 100*rate/ideal.Ceiling, ideal.Ceiling, ideal.Limit,
			throttled, sim.RetryAfterViolations(), reqs, float64(rows)/float64(max(1, reqs-throttled)), rows, execUsed, inFlight, rss, scale)
		if nOrd := envInt("BENCH_INSTANCE_ORDERS", 0); nOrd > 0 && ctx.Err() == nil {
			threeInstanceOrders(ctx, b, sim, stores[:busy], each, nOrd, model)
		}
		if v := sim.RetryAfterViolations(); v != 0 {
			b.Errorf("%d requests sent before their Retry-After expired", v)
		}
		for _, a := range apps {
			a.stop()
		}
	}
}

// threeInstanceOrders is BenchmarkImportThreeInstances' orders (BENCH_INSTANCE_ORDERS
// each): products first through the first instance (not measured), then each busy
// instance is sent orders of its own customers at the same time; the figure is the
// orders all of them land per simulated second against the simulator's ceiling for the
// rows Dynamics 365 writes per order.
func threeInstanceOrders(ctx context.Context, b *testing.B, sim *dataversetest.Server, stores []*storeClient, customersEach, nOrd int, model string) {
	scale := envFloat("BENCH_TIMESCALE", 1)
	cat := importCatalogue(ctx, b, stores[0], sim)
	evs := make([][]json.RawMessage, len(stores))
	rows, lines := 0, 0
	for i := range stores {
		ids := make([]int, customersEach)
		for k := range ids {
			ids[k] = 1 + i*customersEach + k
		}
		rng := rand.New(rand.NewPCG(7, uint64(i)))
		ev, r, l := placedOrders(orders(rng, 500000+i*nOrd, nOrd, ids, cat))
		evs[i], rows, lines = ev, rows+r, lines+l
	}
	s0 := sim.Stats()
	start := time.Now()
	var wg sync.WaitGroup
	errc := make(chan error, len(stores))
	for i, st := range stores {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errc <- (&benchRig{store: st}).importArrays(ctx, "order", evs[i], 4)
		}()
	}
	wg.Wait()
	close(errc)
	for err := range errc {
		if err != nil {
			b.Fatal(err)
		}
	}
	n := len(stores) * nOrd
	if err := waitRows(ctx, sim, "salesorders", n); err != nil {
		b.Fatal(err)
	}
	if err := waitRows(ctx, sim, "salesorderdetails", lines); err != nil {
		b.Fatal(err)
	}
	waitAnswered(ctx, sim)
	real := time.Since(start)
	s1 := sim.Stats()
	simSec := real.Seconds() / scale
	rate := float64(n) / simSec
	ideal := sim.IdealThroughput(1000, 52).Ceiling / (float64(rows) / float64(n))
	reqs, throttled := s1.Requests-s0.Requests, s1.Throttled-s0.Throttled
	b.ReportMetric(rate, "orders/s-sim")
	b.ReportMetric(100*rate/ideal, "orders-%ideal")
	summary(b, "| %d instances, one state table (Azurite) and one Dataverse user: %d orders each (arrays of 1000, %.1f rows written each), cost model %s | %.0f orders/s simulated (%.0f s) | %.0f%% of the ideal %.0f/s | %d × 429, %d Retry-After violations (whole run); %d requests, execution %.1f s/s of 4 s/s allowed; load average %s |",
		len(stores), nOrd, float64(rows)/float64(n), model, rate, simSec, 100*rate/ideal, ideal, throttled, sim.RetryAfterViolations(),
		reqs, (s1.Execution-s0.Execution).Seconds()/real.Seconds(), loadAverage())
}
