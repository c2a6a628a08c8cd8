package dataverse_test

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/nopsync/nopsync/shared/dataverse"
	"github.com/nopsync/nopsync/shared/dataverse/dataversetest"
	"github.com/nopsync/nopsync/shared/localstore"
	"github.com/nopsync/nopsync/shared/state"
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

// sharedRun writes rows from three clients of one application user (8 goroutines each)
// against one simulator, the per-row cost model and no x-ms-ratelimit-* headers; with
// share, the clients count each other through peer leases in one state store.
func sharedRun(t *testing.T, share bool) dataversetest.Stats {
	t.Helper()
	s := dataversetest.NewServer(dataversetest.Options{
		TimeScale: 0.1, SleepExecutionTime: true, DopHint: 8,
		Limits:        dataversetest.Limits{Window: 20 * time.Second, ExecutionTime: 10 * time.Second},
		ExecutionCost: dataversetest.CostPerRow, NoRateLimitHeaders: true,
	})
	t.Cleanup(s.Close)
	store, err := localstore.Open("")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = store.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	const per = 25
	cost := dataversetest.CostPerRow
	rows := int(12*time.Second/(cost.PerRowWritten+cost.PerRequest/per)) / per * per
	work := make(chan []dataverse.Record)
	go func() {
		defer close(work)
		for i := 0; i < rows; i += per {
			work <- contactRows(per, fmt.Sprintf("S%d-", i))
		}
	}()
	var peers []*state.Peers
	for i := range 3 {
		p := state.NewPeers(store, fmt.Sprintf("instance-%d", i), time.Second)
		p.TrackCalls() // as the app's instances do: counted while they call
		if err := p.Renew(ctx); err != nil {
			t.Fatal(err)
		}
		peers = append(peers, p)
	}
	var wg sync.WaitGroup
	errs := make(chan error, 24)
	for _, p := range peers {
		go p.Run(ctx, nil)
		o := dataverse.Options{MaxRetries: 20, RetryDelay: 10 * time.Millisecond}
		if share {
			o.Peers = p.Calling
		}
		c, err := s.Client(o)
		if err != nil {
			t.Fatal(err)
		}
		for range 8 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for recs := range work {
					if err := c.UpsertMultiple(ctx, "contacts", "contact", recs); err != nil {
						errs <- err
						return
					}
				}
			}()
		}
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	if n := s.Count("contacts"); n != rows {
		t.Fatalf("%d contacts, want %d", n, rows)
	}
	if v := s.RetryAfterViolations(); share && v != 0 {
		t.Fatalf("%d Retry-After violations", v) // an instance can't see another's 429
	}
	return s.Stats()
}

// Three instances of one app user, counting each other through peer leases in one
// state store, together stay within the user's budget; each pacing to the whole budget
// by itself, they are answered 429.
func TestPeersShareTheBudget(t *testing.T) {
	if st := sharedRun(t, true); st.Throttled != 0 {
		t.Fatalf("sharing: %d answers 429", st.Throttled)
	}
	if st := sharedRun(t, false); st.Throttled == 0 {
		t.Fatal("not sharing: no 429, the run doesn't need sharing")
	}
}
