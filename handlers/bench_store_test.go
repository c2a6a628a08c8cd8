package main

// BenchmarkStoreSync (scripts/bench-store): the store reader on a generated nopCommerce
// store in PostgreSQL, the app as a subprocess in local mode against the Dataverse
// simulator. Nothing here runs in the default `go test ./...`.

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nopsync/nopsync/shared/dataverse/dataversetest"
	"github.com/nopsync/nopsync/shared/nopdb/nopdbtest"
)

// benchRun is the part of GET /api/sync/{runId} the benchmark reads.
type benchRun struct {
	ID      string `json:"id"`
	Outcome string `json:"outcome"`
	Error   string `json:"error"`
	Store   map[string]struct {
		RowsRead, Queued, Unchanged, Failed int
	} `json:"store"`
}

// storeRunBench starts a store run over the app's routes and waits for its end.
func (r *benchRig) storeRun(ctx context.Context, tb testing.TB, entities ...string) (*benchRun, time.Duration) {
	tb.Helper()
	start := time.Now()
	var out struct {
		RunID string `json:"runId"`
	}
	body := map[string]any{"source": "store"}
	if len(entities) > 0 {
		body["entities"] = entities
	}
	code, err := r.store.postJSON(ctx, "/api/sync", body, &out)
	if err != nil || code != 202 {
		tb.Fatalf("POST /api/sync: %d %v", code, err)
	}
	for {
		var run benchRun
		if err := r.store.getJSON(ctx, "/api/sync/"+out.RunID, &run); err == nil && run.Outcome != "running" && run.Outcome != "" {
			if run.Outcome != "succeeded" {
				tb.Fatalf("store run %s: %s", run.ID, run.Error)
			}
			return &run, time.Since(start)
		}
		select {
		case <-ctx.Done():
			tb.Fatalf("store run %s: %v", out.RunID, ctx.Err())
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// restart stops the app and starts it again on the same data (a fresh process, so its
// peak RSS is the next run's own).
func (r *benchRig) restart(tb testing.TB) {
	r.app.stop()
	r.app = startApp(tb, r.bin, r.env, r.addr, r.log)
}

func benchStore(b *testing.B, sz nopdbtest.Sizes) (string, func(entity string, n int) []int64, nopdbtest.Stats) {
	b.Helper()
	conn, db := nopdbtest.NewDatabase(b, nopdbtest.PostgreSQL)
	start := time.Now()
	st, err := nopdbtest.Generate(context.Background(), db, nopdbtest.PostgreSQL, sz)
	if err != nil {
		b.Fatal(err)
	}
	b.Logf("generated %+v in %.0f s", st, time.Since(start).Seconds())
	return conn, func(entity string, n int) []int64 {
		ids, err := nopdbtest.ChangeEvery(context.Background(), db, nopdbtest.PostgreSQL, entity, n)
		if err != nil {
			b.Fatal(err)
		}
		return ids
	}, st
}

// benchStoreSizes: the generated store at the goal's size (BENCH_STORE_CUSTOMERS,
// BENCH_STORE_PRODUCTS, BENCH_STORE_ORDERS; a tenth of the products in grouped families)
// and a tenth of it, with seeds of their own.
func benchStoreSizes() (full, small nopdbtest.Sizes) {
	full = nopdbtest.Sizes{Customers: envInt("BENCH_STORE_CUSTOMERS", 100000), Products: envInt("BENCH_STORE_PRODUCTS", 20000),
		GroupedShare: 0.1, Orders: envInt("BENCH_STORE_ORDERS", 200000), Seed: 1}
	small = nopdbtest.Sizes{Customers: full.Customers / 10, Products: full.Products / 10, GroupedShare: 0.1, Orders: full.Orders / 10, Seed: 2}
	return full, small
}

func readerEnv(conn string) []string {
	return []string{"NOP_DB_PROVIDER=postgresql", "NOP_DB_CONNECTION=" + conn, "AUTO_SYNC_ENABLED=false"}
}

// BenchmarkStoreSync: (a) the initial import of a generated store (BENCH_STORE_CUSTOMERS
// registered customers, default 100,000; BENCH_STORE_PRODUCTS products, 20,000, a tenth
// in grouped families; BENCH_STORE_ORDERS orders of 1–5 items, 200,000) read from
// PostgreSQL and written into the simulator with service-protection limits on (as
// BenchmarkImport), against the simulator's ceiling for the rows written; (b) a run with
// nothing changed, wall time and peak RSS of a fresh app process, and the same for a
// store a tenth that size; (c) a run after changing 1 % of the rows queues exactly those.
func BenchmarkStoreSync(b *testing.B) {
	full, small := benchStoreSizes()
	scale := envFloat("BENCH_TIMESCALE", 1)
	timeout := time.Duration(envInt("BENCH_STORE_MINUTES", 120)) * time.Minute
	for range b.N {
		ctx, cancel := context.WithTimeout(context.Background(), timeout)
		defer cancel()

		// The tenth-size store first: its import with limits off, then its unchanged run.
		conn, _, _ := benchStore(b, small)
		r := newBenchRig(b, dataversetest.Options{Limits: dataversetest.Limits{Disabled: true}}, readerEnv(conn)...)
		r.storeRun(ctx, b)
		if _, err := r.store.waitDrained(ctx, 500*time.Millisecond); err != nil {
			b.Fatal(err)
		}
		r.restart(b)
		run, took := r.storeRun(ctx, b)
		smallRSS := r.app.memKB("VmHWM")
		summary(b, "| store reader: unchanged run, tenth-size store (%d customers, %d products, %d orders) | %.1f s, peak RSS %d MiB | | rows read %d, queued %d; %s |",
			small.Customers, small.Products, small.Orders, took.Seconds(), smallRSS/1024, rowsRead(run), queued(run), r.app.rssParts())
		r.app.stop()
		r.sim.Close()

		// (a) The full store's initial import, limits on.
		conn, change, st := benchStore(b, full)
		limits := dataversetest.Limits{Requests: 600, ExecutionTime: 120 * time.Second, Window: 30 * time.Second, Concurrent: 52}
		r = newBenchRig(b, dataversetest.Options{TimeScale: scale, Limits: limits, SleepExecutionTime: true}, readerEnv(conn)...)
		s0 := r.sim.Stats()
		start := time.Now()
		// Every minute (BENCH_TIMELINE_SECONDS): execution time charged per second, requests
		// per second and rows written per second, to see which phase of the import leaves
		// the limits unspent.
		stopTimeline := benchTimeline(r.sim, time.Duration(envInt("BENCH_TIMELINE_SECONDS", 60))*time.Second)
		run, accepted := r.storeRun(ctx, b)
		if _, err := r.store.waitDrained(ctx, 500*time.Millisecond); err != nil {
			b.Fatal(err)
		}
		waitAnswered(ctx, r.sim)
		real := time.Since(start)
		s1 := r.sim.Stats()
		stopTimeline()
		printOperations(s0, s1)
		sim := real.Seconds() / scale
		rows := float64(s1.RowsWritten - s0.RowsWritten)
		// The ceiling as BenchmarkImport computes it (1000 rows per request), and at the
		// app's default bulk size (DATAVERSE_BULK_SIZE, 100 rows per request).
		ideal := r.sim.IdealThroughput(1000, 52)
		ideal100 := r.sim.IdealThroughput(100, 52)
		b.ReportMetric(rows/sim, "rows/s-sim")
		b.ReportMetric(100*rows/sim/ideal.Ceiling, "%ceiling")
		b.ReportMetric(100*rows/sim/ideal100.Ceiling, "%ceiling-bulk100")
		var status appStatus
		r.store.getJSON(ctx, "/api/status", &status)
		// Execution time the simulator charged per second (its cost model, not only rows):
		// how much of the execution limit the import used.
		execUsed := (s1.Execution - s0.Execution).Seconds() / real.Seconds()
		summary(b, "| store reader: initial import of %d customers, %d products (%d grouped), %d orders (%d items) from PostgreSQL | %.0f rows written/s simulated (%.0f rows in %.0f s) | %.0f%% of the simulator's ceiling %.0f rows/s (%s-bound, 1000 rows per request); %.0f%% of %.0f rows/s at the app's 100 rows per request | read and queued in %.0f s real; %d requests (%.1f/s of 20/s allowed), execution %.1f s/s of 4 s/s allowed, %d × 429; state: %v; TimeScale %g |",
			st.Customers, st.Products, st.Grouped, st.Orders, st.Items, rows/sim, rows, sim, 100*rows/sim/ideal.Ceiling, ideal.Ceiling, ideal.Limit, 100*rows/sim/ideal100.Ceiling, ideal100.Ceiling,
			accepted.Seconds(), s1.Requests-s0.Requests, float64(s1.Requests-s0.Requests)/real.Seconds(), execUsed, s1.Throttled-s0.Throttled, status.Entities, scale)
		summary(b, "| store reader: the import's app process | peak RSS %d MiB | | rows read %d, queued %d, row failures %d |", r.app.memKB("VmHWM")/1024, rowsRead(run), queued(run), failed(run))

		// (b) Nothing changed, a fresh process.
		r.restart(b)
		run, took = r.storeRun(ctx, b)
		fullRSS := r.app.memKB("VmHWM")
		ratio := float64(fullRSS) / float64(smallRSS)
		flat := "flat (within 20 %)"
		if ratio > 1.2 || ratio < 1/1.2 {
			flat = "NOT flat"
		}
		b.ReportMetric(took.Seconds(), "unchanged-s")
		b.ReportMetric(float64(fullRSS)/1024, "unchanged-MiB")
		summary(b, "| store reader: unchanged run, full store | %.1f s, peak RSS %d MiB | goal < 60 s and < 200 MiB; RSS %.2f× the tenth-size store's: %s | rows read %d, queued %d; %s |",
			took.Seconds(), fullRSS/1024, ratio, flat, rowsRead(run), queued(run), r.app.rssParts())

		// (c) 1 % changed: products and orders, then customers (an order carries its
		// customer's data, so changed customers change their orders too).
		prods, ords := change("product", 100), change("order", 100)
		run, took = r.storeRun(ctx, b, "product", "order")
		ok := run.Store["product"].Queued == len(prods) && run.Store["order"].Queued == len(ords)
		cust := change("customer", 100)
		run2, took2 := r.storeRun(ctx, b, "customer")
		ok = ok && run2.Store["customer"].Queued == len(cust)
		verdict := "exactly the changed rows"
		if !ok {
			verdict = "NOT exactly the changed rows"
			b.Errorf("changed %d products, %d orders, %d customers; queued %+v %+v", len(prods), len(ords), len(cust), run.Store, run2.Store)
		}
		summary(b, "| store reader: 1 %% changed | queued %d of %d changed products, %d of %d orders (%.1f s); %d of %d customers (%.1f s) | %s | |",
			run.Store["product"].Queued, len(prods), run.Store["order"].Queued, len(ords), took.Seconds(), run2.Store["customer"].Queued, len(cust), took2.Seconds(), verdict)
		r.app.stop()
		if os.Getenv("BENCH_KEEP") == "" {
			r.sim.Close()
		}
	}
}

func rowsRead(r *benchRun) (n int) {
	for _, p := range r.Store {
		n += p.RowsRead
	}
	return n
}

func queued(r *benchRun) (n int) {
	for _, p := range r.Store {
		n += p.Queued
	}
	return n
}

func failed(r *benchRun) (n int) {
	for _, p := range r.Store {
		n += p.Failed
	}
	return n
}

// benchTimeline prints, every period until stopped, the simulator's execution time charged
// per second, requests per second and rows written per second in that period.
func benchTimeline(sim *dataversetest.Server, period time.Duration) (stop func()) {
	done, stopped := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(stopped)
		prev := sim.Stats()
		prevBusy, prevTotal := cpuTimes()
		tick := time.NewTicker(period)
		defer tick.Stop()
		for {
			select {
			case <-done:
				return
			case <-tick.C:
				cur := sim.Stats()
				sec := period.Seconds()
				// To stderr: a benchmark's log keeps only its first 10 lines (testing.B.trimOutput).
				busy, total := cpuTimes()
				cpu := 0.0
				if total > prevTotal {
					cpu = 100 * float64(busy-prevBusy) / float64(total-prevTotal)
				}
				// In flight: the average number of requests the simulator held; CPU: the
				// machine's, all processes (app, simulator, database) together.
				fmt.Fprintf(os.Stderr, "timeline %s: execution %.1f s/s, %.1f requests/s, %.0f rows/s, %.1f in flight, CPU %.0f %%\n", time.Now().UTC().Format("15:04:05"),
					(cur.Execution-prev.Execution).Seconds()/sec, float64(cur.Requests-prev.Requests)/sec, float64(cur.RowsWritten-prev.RowsWritten)/sec,
					(cur.Busy-prev.Busy).Seconds()/sec, cpu)
				prev, prevBusy, prevTotal = cur, busy, total
			}
		}
	}()
	return func() { close(done); <-stopped }
}

// cpuTimes reads the machine's CPU time from /proc/stat in clock ticks: busy (all but
// idle and iowait) and total; zeros where there is no /proc.
func cpuTimes() (busy, total uint64) {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0, 0
	}
	line, _, _ := strings.Cut(string(b), "\n")
	f := strings.Fields(line)
	if len(f) < 5 || f[0] != "cpu" {
		return 0, 0
	}
	for i, v := range f[1:] {
		n, _ := strconv.ParseUint(v, 10, 64)
		total += n
		if i != 3 && i != 4 { // idle, iowait
			busy += n
		}
	}
	return busy, total
}

// printOperations writes to stderr what each kind of request cost between two of the
// simulator's Stats, the costliest first: where the execution time went.
func printOperations(s0, s1 dataversetest.Stats) {
	type op struct {
		kind string
		d    dataversetest.OpStats
	}
	var ops []op
	total := s1.Execution - s0.Execution
	for k, v := range s1.Operations {
		b := s0.Operations[k]
		d := dataversetest.OpStats{Requests: v.Requests - b.Requests, RowsWritten: v.RowsWritten - b.RowsWritten,
			RowsRead: v.RowsRead - b.RowsRead, Execution: v.Execution - b.Execution}
		if d.Requests > 0 {
			ops = append(ops, op{k, d})
		}
	}
	sort.Slice(ops, func(i, j int) bool { return ops[i].d.Execution > ops[j].d.Execution })
	for _, o := range ops {
		share := 0.0
		if total > 0 {
			share = 100 * float64(o.d.Execution) / float64(total)
		}
		fmt.Fprintf(os.Stderr, "operation %-70s %7d requests %9d rows written %9d rows read %8.0f s execution (%4.1f %%)\n",
			o.kind, o.d.Requests, o.d.RowsWritten, o.d.RowsRead, o.d.Execution.Seconds(), share)
	}
}

// rssParts says what the app's resident memory is made of right now (it is after a run,
// not at its peak): anonymous memory (the Go heap, stacks, the runtime's own) and pages
// of files it maps (its executable).
func (p *appProc) rssParts() string {
	return fmt.Sprintf("resident now: %d MiB anonymous, %d MiB file pages", p.memKB("RssAnon")/1024, p.memKB("RssFile")/1024)
}

// BenchmarkStoreUnchanged: 7(b)'s run with nothing changed, alone and repeated, to see how
// much its peak RSS varies from one fresh process to the next. The full-size and the
// tenth-size stores of BenchmarkStoreSync are each imported once with limits off into
// BENCH_STORE_STATE/full and /tenth (kept, so later runs skip the import; a temporary
// directory when unset); then BENCH_UNCHANGED_RUNS (3) fresh app processes per size each
// run the reader over an unchanged store. Command: scripts/bench-store -bench StoreUnchanged.
func BenchmarkStoreUnchanged(b *testing.B) {
	full, small := benchStoreSizes()
	keep := os.Getenv("BENCH_STORE_STATE")
	runs := envInt("BENCH_UNCHANGED_RUNS", 3)
	for range b.N {
		ctx, cancel := context.WithTimeout(context.Background(), time.Duration(envInt("BENCH_STORE_MINUTES", 120))*time.Minute)
		defer cancel()
		peaks := map[string][]int{}
		for _, sz := range []struct {
			name string
			size nopdbtest.Sizes
		}{{"tenth", small}, {"full", full}} {
			dir := b.TempDir()
			if keep != "" {
				dir = filepath.Join(keep, sz.name)
			}
			_, statErr := os.Stat(filepath.Join(dir, "imported"))
			conn, _, _ := benchStore(b, sz.size)
			r := newBenchRig(b, dataversetest.Options{Limits: dataversetest.Limits{Disabled: true}}, append(readerEnv(conn), "LOCAL_DATA_DIR="+dir)...)
			if statErr != nil { // not imported yet
				start := time.Now()
				r.storeRun(ctx, b)
				if _, err := r.store.waitDrained(ctx, 500*time.Millisecond); err != nil {
					b.Fatal(err)
				}
				if err := os.WriteFile(filepath.Join(dir, "imported"), nil, 0o644); err != nil {
					b.Fatal(err)
				}
				b.Logf("%s store imported (limits off) in %.0f s", sz.name, time.Since(start).Seconds())
			}
			var line []string
			read := 0
			for range runs {
				r.restart(b)
				run, took := r.storeRun(ctx, b)
				if q := queued(run); q != 0 {
					b.Fatalf("%s store: an unchanged run queued %d", sz.name, q)
				}
				kb := r.app.memKB("VmHWM")
				read = rowsRead(run)
				peaks[sz.name] = append(peaks[sz.name], kb)
				line = append(line, fmt.Sprintf("%.1f s %d MiB", took.Seconds(), kb/1024))
			}
			summary(b, "| store reader: unchanged run, %s store, %d fresh processes | %s | | rows read each %d; %s |", sz.name, runs, strings.Join(line, "; "), read, r.app.rssParts())
			r.app.stop()
			r.sim.Close()
		}
		lo, hi := slices.Min(peaks["full"]), slices.Max(peaks["full"])
		tlo, thi := slices.Min(peaks["tenth"]), slices.Max(peaks["tenth"])
		b.ReportMetric(float64(hi)/float64(tlo), "ratio-max")
		summary(b, "| store reader: unchanged run's peak RSS, full vs tenth-size store | ratio %.2f–%.2f (full %d–%d MiB, tenth %d–%d MiB) | goal within 20 %% | |",
			float64(lo)/float64(thi), float64(hi)/float64(tlo), lo/1024, hi/1024, tlo/1024, thi/1024)
	}
}
