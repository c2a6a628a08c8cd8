package tablestorage

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/data/aztables"

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
// Tables created before blocks place every record by hash, and stay in use.
func TestConformanceHashLayout(t *testing.T) {
	connectionString(t)
	statetest.Run(t, func(t *testing.T) state.Store { return newHashLayoutStore(t, DefaultShards) })
}

func TestConformanceOneShard(t *testing.T) {
	connectionString(t)
	statetest.RunConcurrency(t, func(t *testing.T) state.Store { return newTestStore(t, Options{Shards: 1}) })
}

// newHashLayoutStore opens a store on a new table whose layout row says shards and no
// blocks, as tables created before blocks say: their records are placed by hash.
func newHashLayoutStore(t *testing.T, shards int) *Store {
	t.Helper()
	ctx := context.Background()
	table := fmt.Sprintf("h%d%08x", time.Now().UnixNano()%1e9, rand.Uint32())
	svc, err := aztables.NewServiceClientFromConnectionString(connectionString(t), nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := svc.CreateTable(ctx, table, nil); err != nil {
		t.Fatal(err)
	}
	row, _ := json.Marshal(aztables.EDMEntity{Entity: aztables.Entity{PartitionKey: layoutPartition, RowKey: layoutRow},
		Properties: map[string]any{layoutProp: fmt.Sprint(shards)}})
	if _, err := svc.NewClient(table).AddEntity(ctx, row, nil); err != nil {
		t.Fatal(err)
	}
	return newTestStore(t, Options{Table: table, Shards: 16})
}

// rawRows lists the table's rows by partition: record row keys and counter row keys.
func rawRows(t *testing.T, s *Store) (records, counters map[string][]string) {
	t.Helper()
	records, counters = map[string][]string{}, map[string][]string{}
	pager := s.c.NewListEntitiesPager(nil)
	for pager.More() {
		page, err := pager.NextPage(context.Background())
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
				records[e.PartitionKey] = append(records[e.PartitionKey], e.RowKey)
			}
		}
	}
	return records, counters
}

// An entity's records and their counter rows spread over its shards' partitions, each
// counter in its records' partition; the table keeps the layout it was created with. A
// new table places decimal ids by blocks of 64 (a chunk of consecutive ids in a few
// partitions); a table created before blocks keeps placing every id by hash.
func TestRecordsSpreadOverPartitions(t *testing.T) {
	for _, tc := range []struct {
		name   string
		open   func(t *testing.T) *Store
		layout string
		// partition and counter row of a decimal id
		want func(n uint64, id string) (int, int)
	}{
		{"blocks", func(t *testing.T) *Store { return newTestStore(t, Options{Shards: 4}) }, "4 in blocks of 64",
			func(n uint64, _ string) (int, int) { return int(n / 64 % 4), int(n / 64 / 4 % countersPerShard) }},
		{"hash", func(t *testing.T) *Store { return newHashLayoutStore(t, 4) }, "4",
			func(_ uint64, id string) (int, int) {
				return int(idHash(id) % 4), int(idHash(id) / 4 % countersPerShard)
			}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			s := tc.open(t)
			if got := s.placement().String(); got != tc.layout {
				t.Fatalf("layout %q, want %q", got, tc.layout)
			}
			// Consecutive ids over several blocks, a few far apart, and a non-decimal id.
			var ids []string
			for i := 1; i <= 300; i++ {
				ids = append(ids, fmt.Sprint(i))
			}
			ids = append(ids, "1000000", "4294967296", "18446744073709551615", "abc")
			recs := make([]*state.Record, len(ids))
			for i, id := range ids {
				recs[i] = &state.Record{Entity: state.Customer, ID: id, Status: state.Synced}
			}
			for i, err := range s.SaveMany(ctx, recs) {
				if err != nil {
					t.Fatalf("save %s: %v", ids[i], err)
				}
			}
			records, counters := rawRows(t, s)
			wantRecords, wantCounters := map[string][]string{}, map[string]map[string]bool{}
			for _, id := range ids {
				n, err := strconv.ParseUint(id, 10, 64)
				shard, counter := int(idHash(id)%4), int(idHash(id)/4%countersPerShard)
				if err == nil {
					shard, counter = tc.want(n, id)
				}
				pk := recordPartition(state.Customer, shard)
				wantRecords[pk] = append(wantRecords[pk], rowKeyOf(id))
				if wantCounters[pk] == nil {
					wantCounters[pk] = map[string]bool{}
				}
				wantCounters[pk][counterRowKey(shard, counter)] = true
			}
			for pk, rks := range wantRecords {
				slices.Sort(rks)
				if !slices.Equal(records[pk], rks) {
					t.Errorf("partition %s holds %d records %v…, want %d %v…", pk, len(records[pk]), head(records[pk]), len(rks), head(rks))
				}
				var rows []string
				for rk := range wantCounters[pk] {
					rows = append(rows, rk)
				}
				slices.Sort(rows)
				if !slices.Equal(counters[pk], rows) {
					t.Errorf("partition %s: counter rows %q, want %q", pk, counters[pk], rows)
				}
			}
			if len(records) != len(wantRecords) {
				t.Errorf("records in %d partitions, want %d", len(records), len(wantRecords))
			}

			// Reopened with another shard count, the table keeps its own: every record is
			// found (one read, and all at once), in id order, and counted.
			s2, err := NewFromConnectionString(ctx, connectionString(t), Options{Table: s.Table(), Shards: 16})
			if err != nil {
				t.Fatal(err)
			}
			if s2.placement() != s.placement() {
				t.Fatalf("reopened with layout %v, want %v", s2.placement(), s.placement())
			}
			if r, err := s2.Get(ctx, state.Customer, "37"); err != nil || r.Status != state.Synced {
				t.Fatalf("get after reopening: %v %v", r, err)
			}
			got, err := s2.GetMany(ctx, state.Customer, ids)
			if err != nil || len(got) != len(ids) {
				t.Fatalf("GetMany after reopening: %d of %d records, %v", len(got), len(ids), err)
			}
			var scanned []string
			if err := s2.Scan(ctx, state.Customer, nil, func(r *state.Record) error { scanned = append(scanned, r.ID); return nil }); err != nil {
				t.Fatal(err)
			}
			if len(scanned) != len(ids) || scanned[0] != "1" || scanned[9] != "10" || scanned[299] != "300" || scanned[300] != "1000000" {
				t.Fatalf("scan after reopening: %d records %v…", len(scanned), head(scanned))
			}
			c, err := s2.Counts(ctx)
			if err != nil || c[state.Customer][state.Synced] != len(ids) {
				t.Fatalf("counts after reopening: %v %v", c, err)
			}
		})
	}
}

func head(s []string) []string { return s[:min(len(s), 5)] }

// A layout row this build can't read stops the store from opening, naming the table
// and the value, instead of placing records where nobody finds them.
func TestUnreadableLayoutRow(t *testing.T) {
	ctx := context.Background()
	s := newTestStore(t, Options{})
	row, _ := json.Marshal(aztables.EDMEntity{Entity: aztables.Entity{PartitionKey: layoutPartition, RowKey: layoutRow},
		Properties: map[string]any{layoutProp: "16 in blocks of many"}})
	if _, err := s.c.UpsertEntity(ctx, row, nil); err != nil {
		t.Fatal(err)
	}
	_, err := NewFromConnectionString(ctx, connectionString(t), Options{Table: s.Table()})
	if err == nil || !strings.Contains(err.Error(), s.Table()) || !strings.Contains(err.Error(), "16 in blocks of many") {
		t.Fatalf("open on an unreadable layout row: %v", err)
	}
}
