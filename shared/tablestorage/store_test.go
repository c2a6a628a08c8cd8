package tablestorage

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
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
