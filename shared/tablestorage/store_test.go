package tablestorage

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/nopsync/nopsync/shared/state"
	"github.com/nopsync/nopsync/shared/state/statetest"
)

// connectionString returns the Azurite (or real account) connection string, or skips.
func connectionString(t testing.TB) string {
	cs := os.Getenv("TEST_TABLE_CONNECTION_STRING")
	if cs == "" {
		t.Skip("TEST_TABLE_CONNECTION_STRING not set: start Azurite with `eval \"$(scripts/azurite start)\"` (scripts/test does this)")
	}
	return cs
}

// newTestStore opens a store on a new, uniquely named table, dropped when the test ends.
func newTestStore(t testing.TB, o Options) *Store {
	t.Helper()
	cs := connectionString(t)
	if o.Table == "" {
		o.Table = fmt.Sprintf("t%d%08x", time.Now().UnixNano()%1e9, rand.Uint32())
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	s, err := NewFromConnectionString(ctx, cs, o)
	if err != nil {
		t.Fatalf("open: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if err := s.DeleteTable(ctx); err != nil {
			t.Errorf("drop table %s: %v", s.Table(), err)
		}
	})
	return s
}

func TestConformance(t *testing.T) {
	connectionString(t)
	statetest.Run(t, func(t *testing.T) state.Store { return newTestStore(t, Options{}) })
}

// One shard: every writer of an entity contends for the same counter row.
func TestConformanceOneShard(t *testing.T) {
	connectionString(t)
	statetest.RunConcurrency(t, func(t *testing.T) state.Store { return newTestStore(t, Options{Shards: 1}) })
}

// An entity's records and their counter rows spread over its shards' partitions, each
// counter in its records' partition; the table keeps the shard count it was created with.
func TestRecordsSpreadOverPartitions(t *testing.T) {
	ctx := context.Background()
	s := newTestStore(t, Options{Shards: 4})
	const n = 40
	for i := 1; i <= n; i++ {
		if err := s.Save(ctx, &state.Record{Entity: state.Customer, ID: fmt.Sprint(i), Status: state.Synced}); err != nil {
			t.Fatal(err)
		}
	}
	records := map[string]int{} // partition → records
	counters := map[string][]string{}
	pager := s.c.NewListEntitiesPager(nil)
	for pager.More() {
		page, err := pager.NextPage(ctx)
		if err != nil {
			t.Fatal(err)
		}
		for _, b := range page.Entities {
			var e struct{ PartitionKey, RowKey string }
			if err := json.Unmarshal(b, &e); err != nil {
				t.Fatal(err)
			}
			switch {
			case strings.HasPrefix(e.RowKey, counterPrefix):
				counters[e.PartitionKey] = append(counters[e.PartitionKey], e.RowKey)
			case e.PartitionKey != layoutPartition:
				records[e.PartitionKey]++
			}
		}
	}
	if len(records) != 4 {
		t.Fatalf("records in partitions %v, want 4 partitions", records)
	}
	for pk := range records {
		rows := counters[pk]
		if !strings.HasPrefix(pk, "customer-") || len(rows) == 0 || len(rows) > countersPerShard {
			t.Errorf("partition %s: counter rows %q", pk, rows)
		}
		for _, rk := range rows {
			if !strings.HasPrefix(rk, counterPrefix+strings.TrimPrefix(pk, "customer-")+"-") {
				t.Errorf("partition %s holds counter row %q of another shard", pk, rk)
			}
		}
	}

	// Reopened with another shard count, the table keeps its own: every record is found,
	// in id order, and counted.
	s2, err := NewFromConnectionString(ctx, connectionString(t), Options{Table: s.Table(), Shards: 16})
	if err != nil {
		t.Fatal(err)
	}
	if r, err := s2.Get(ctx, state.Customer, "37"); err != nil || r.Status != state.Synced {
		t.Fatalf("get after reopening: %v %v", r, err)
	}
	var ids []string
	if err := s2.Scan(ctx, state.Customer, nil, func(r *state.Record) error { ids = append(ids, r.ID); return nil }); err != nil {
		t.Fatal(err)
	}
	if len(ids) != n || ids[0] != "1" || ids[9] != "10" || ids[n-1] != fmt.Sprint(n) {
		t.Fatalf("scan after reopening: %v", ids)
	}
	c, err := s2.Counts(ctx)
	if err != nil || c[state.Customer][state.Synced] != n {
		t.Fatalf("counts after reopening: %v %v", c, err)
	}
}
