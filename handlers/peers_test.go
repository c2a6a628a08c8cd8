package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/nopsync/nopsync/shared/dataverse"
	"github.com/nopsync/nopsync/shared/dataverse/dataversetest"
	"github.com/nopsync/nopsync/shared/state"
	"github.com/nopsync/nopsync/shared/tablestorage"
)

// TestLocalModeSharesBudgetThroughStateTable: local-mode processes that keep their state
// in one table count each other, and their Dataverse clients divide the budget by that
// count, as Azure mode's instances do; with the embedded store a process counts nobody.
func TestLocalModeSharesBudgetThroughStateTable(t *testing.T) {
	conn := os.Getenv("TEST_TABLE_CONNECTION_STRING")
	if conn == "" {
		t.Skip("TEST_TABLE_CONNECTION_STRING not set: start Azurite with `eval \"$(scripts/azurite start)\"` (scripts/test does this)")
	}
	sim := dataversetest.NewServer(dataversetest.Options{})
	defer sim.Close()
	table := fmt.Sprintf("peers%d", time.Now().UnixNano())
	env := func(shared bool) map[string]string {
		e := map[string]string{
			"DATAVERSE_URL": sim.URL(), "DATAVERSE_TENANT_ID": sim.TenantID, "DATAVERSE_CLIENT_ID": sim.ClientID,
			"DATAVERSE_CLIENT_SECRET": sim.ClientSecret(), "AZURE_AUTHORITY_HOST": sim.AuthorityHost(),
		}
		if shared {
			e["STATE_STORAGE_CONNECTION_STRING"], e["SYNC_STATE_TABLE"] = conn, table
		}
		return e
	}
	// Each process's client options, as the client reads them.
	var mu sync.Mutex
	var peers []func() int
	capture := func(o *dataverse.Options) {
		o.RootCAs = sim.CertPool()
		mu.Lock()
		peers = append(peers, o.Peers)
		mu.Unlock()
	}
	count := func(i int) int {
		mu.Lock()
		defer mu.Unlock()
		if peers[i] == nil {
			return 0
		}
		return peers[i]()
	}
	// Leases of 3 s, renewed every second: short enough for a test, long enough for a
	// renewal against Azurite on a loaded machine (the whole suite runs at once).
	const ttl = 3 * time.Second
	for range 2 {
		startLocal(t, env(true), &localOptions{tuneDataverse: capture, peerTTL: ttl})
	}
	if peers[0] == nil || peers[1] == nil {
		t.Fatal("a local-mode process with its state in Table Storage does not count its peers")
	}
	// Both ask on every poll: asking is what makes a process busy, and a process that
	// never asks is rightly left out of the other's count.
	both := func() bool { a, b := count(0), count(1); return a == 2 && b == 2 }
	waitFor(t, "both processes to count two instances", both)

	// A third process on the table that does not call Dataverse (as an instance serving
	// only the events endpoint): once its start-up is a lease's lifetime behind it, the
	// busy two leave it out although its lease is live.
	startLocal(t, env(true), &localOptions{tuneDataverse: capture, peerTTL: ttl})
	tbl, err := tablestorage.NewFromConnectionString(context.Background(), conn, tablestorage.Options{Table: table})
	if err != nil {
		t.Fatal(err)
	}
	liveLeases := func() int {
		docs, err := tbl.ListDocs(context.Background(), state.PeerKind)
		if err != nil {
			t.Fatal(err)
		}
		n := 0
		for _, d := range docs {
			var l struct{ Until time.Time }
			if json.Unmarshal(d.Value, &l) == nil && l.Until.After(time.Now()) {
				n++
			}
		}
		return n
	}
	// The first two keep calling (count is what their clients ask before each request).
	waitFor(t, "three live leases", func() bool { count(0); count(1); return liveLeases() == 3 })
	for end := time.Now().Add(ttl + ttl/2); time.Now().Before(end); time.Sleep(25 * time.Millisecond) {
		count(0) // past a lease's lifetime and several renewals
		count(1)
	}
	waitFor(t, "the busy processes to count two with an idle third live", func() bool {
		return both() && liveLeases() == 3
	})

	startLocal(t, env(false), &localOptions{tuneDataverse: capture})
	if peers[3] != nil {
		t.Fatalf("a process with the embedded state store counts peers (%d)", count(3))
	}
}
