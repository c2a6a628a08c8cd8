package dataverse_test

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/nopsync/nopsync/shared/dataverse"
	"github.com/nopsync/nopsync/shared/dataverse/dataversetest"
)

// pacedRun writes rows in bulk requests from 8 goroutines against a simulator whose
// execution budget (1 s per 2 s window, real time) is far below what 8 requests in
// flight spend, and returns the server's stats and the client's pacing.
func pacedRun(t *testing.T, cost dataversetest.ExecutionCost, noHeaders, noPacing bool, rows, perRequest int) (dataversetest.Stats, dataverse.PacingStats) {
	t.Helper()
	e := newSim(t, dataversetest.Options{
		TimeScale: 0.1, SleepExecutionTime: true, DopHint: 8,
		Limits:        dataversetest.Limits{Window: 20 * time.Second, ExecutionTime: 10 * time.Second},
		ExecutionCost: cost, NoRateLimitHeaders: noHeaders,
	}, func(o *dataverse.Options) { o.NoPacing = noPacing; o.MaxRetries = 20 })
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	work := make(chan []dataverse.Record)
	go func() {
		defer close(work)
		for i := 0; i < rows; i += perRequest {
			work <- contactRows(perRequest, fmt.Sprintf("P%d-", i))
		}
	}()
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for recs := range work {
				if err := e.c.UpsertMultiple(ctx, "contacts", "contact", recs); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	if n := e.s.Count("contacts"); n != rows {
		t.Fatalf("%d contacts, want %d", n, rows)
	}
	if v := e.s.RetryAfterViolations(); v != 0 {
		t.Fatalf("%d Retry-After violations", v)
	}
	return e.s.Stats(), e.c.Pacing()
}

// The client paces itself to the execution budget from what it observes: under either
// cost model, with or without the x-ms-ratelimit-* headers, a run that spends more
// than a window's budget is held back by the client and never answered 429.
func TestPacingKeepsWithinExecutionBudget(t *testing.T) {
	for _, tc := range []struct {
		name       string
		cost       dataversetest.ExecutionCost
		noHeaders  bool
		perRequest int
	}{
		{"default cost, headers", dataversetest.CostDefault, false, 100},
		{"per-row cost, latency only", dataversetest.CostPerRow, true, 25},
	} {
		t.Run(tc.name, func(t *testing.T) {
			// 1.2 s of execution against a budget of 1 s per 2 s window.
			perRow := tc.cost.PerRowWritten + tc.cost.PerRequest/time.Duration(tc.perRequest)
			rows := int(12*time.Second/perRow) / tc.perRequest * tc.perRequest
			st, p := pacedRun(t, tc.cost, tc.noHeaders, false, rows, tc.perRequest)
			if st.Throttled != 0 {
				t.Fatalf("%d answers 429 (pacing %+v)", st.Throttled, p)
			}
			if p.Delayed == 0 {
				t.Fatalf("no request was held back; execution charged %s", st.Execution)
			}
		})
	}
}

// Without pacing the same run is answered 429: the run above does need holding back.
func TestPacingOffTripsTheLimit(t *testing.T) {
	cost := dataversetest.CostPerRow
	rows := int(12*time.Second/(cost.PerRowWritten+cost.PerRequest/25)) / 25 * 25
	st, _ := pacedRun(t, cost, true, true, rows, 25)
	if st.Throttled == 0 {
		t.Fatalf("no 429 without pacing; execution charged %s", st.Execution)
	}
}
