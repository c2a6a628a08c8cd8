package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nopsync/nopsync/shared/nopdb/nopdbtest"
)

// storeSizes is a small generated store for the end-to-end tests.
var storeSizes = nopdbtest.Sizes{Customers: 40, Products: 30, GroupedShare: 0.2, Orders: 60, Seed: 7}

// newStoreDB creates and fills a nopCommerce database on provider's test server.
func newStoreDB(t *testing.T, provider string, sz nopdbtest.Sizes) (string, *nopdbtest.Stats, func(entity string, n int) []int64) {
	t.Helper()
	conn, db := nopdbtest.NewDatabase(t, provider)
	ctx := context.Background()
	st, err := nopdbtest.Generate(ctx, db, provider, sz)
	if err != nil {
		t.Fatal(err)
	}
	change := func(entity string, n int) []int64 {
		ids, err := nopdbtest.ChangeEvery(ctx, db, provider, entity, n)
		if err != nil {
			t.Fatal(err)
		}
		return ids
	}
	return conn, &st, change
}

type runView struct {
	ID      string `json:"id"`
	Outcome string `json:"outcome"`
	Error   string `json:"error"`
	Source  string `json:"source"`
	Store   map[string]struct {
		RowsRead  int  `json:"rowsRead"`
		Queued    int  `json:"queued"`
		Unchanged int  `json:"unchanged"`
		Failed    int  `json:"failed"`
		Done      bool `json:"done"`
	} `json:"store"`
}

// storeRun starts a store run over the routes and waits for its end.
func storeRun(t *testing.T, base, body string) (runView, []byte) {
	t.Helper()
	code, out := post(t, base+"/api/sync", "application/json", []byte(body), nil)
	if code != 202 {
		t.Fatalf("POST /api/sync %s: %d %v", body, code, out)
	}
	id, _ := out["runId"].(string)
	var run runView
	var raw []byte
	waitFor(t, "run "+id, func() bool {
		res, err := httpGet(base + "/api/sync/" + id)
		if err != nil {
			t.Fatal(err)
		}
		raw = res
		run = runView{}
		json.Unmarshal(res, &run)
		return run.Outcome != "" && run.Outcome != "running"
	})
	return run, raw
}

func entityCounts(t *testing.T, base, entity string) map[string]any {
	_, st := getJSON(t, base+"/api/status")
	ents, _ := st["entities"].(map[string]any)
	c, _ := ents[entity].(map[string]any)
	return c
}

// TestLocalModeReadsStoreDatabase: with NOP_DB_* set, local mode reads a real
// nopCommerce database (PostgreSQL and MariaDB) into the sandbox; a second run queues
// nothing, a run after changes queues exactly the changed rows.
func TestLocalModeReadsStoreDatabase(t *testing.T) {
	for _, provider := range nopdbtest.Providers {
		t.Run(provider, func(t *testing.T) {
			conn, stats, change := newStoreDB(t, provider, storeSizes)
			base := startLocal(t, map[string]string{"NOP_DB_PROVIDER": provider, "NOP_DB_CONNECTION": conn, "AUTO_SYNC_ENABLED": "false"}, nil)

			run, raw := storeRun(t, base, `{"source":"store"}`)
			if run.Outcome != "succeeded" {
				t.Fatalf("first run: %s", raw)
			}
			if c := run.Store["customer"]; c.Queued != stats.Customers || c.Failed != 0 || !c.Done {
				t.Fatalf("customers: %+v, generated %d", c, stats.Customers)
			}
			if p := run.Store["product"]; p.Queued != stats.Products {
				t.Fatalf("products: %+v, generated %d", p, stats.Products)
			}
			if o := run.Store["order"]; o.Queued != stats.Orders {
				t.Fatalf("orders: %+v, generated %d", o, stats.Orders)
			}
			waitFor(t, "every order synced", func() bool {
				c := entityCounts(t, base, "order")
				return c["synced"] == float64(stats.Orders)
			})
			if c := entityCounts(t, base, "product"); c["synced"] != float64(stats.Products) || c["failed"] != float64(0) {
				t.Fatalf("products in state: %v", c)
			}
			if n := len(sandboxRows(t, base, "salesorders")); n != stats.Orders {
				t.Fatalf("sandbox holds %d orders, want %d", n, stats.Orders)
			}
			if dir := os.Getenv("NOPSYNC_WRITE_EXAMPLES"); dir != "" && provider == nopdbtest.PostgreSQL {
				// examples/runs/sync-run-progress.json is written this way (NOPSYNC_WRITE_EXAMPLES=<repo>/examples/runs).
				var b bytes.Buffer
				json.Indent(&b, raw, "", "  ")
				os.WriteFile(filepath.Join(dir, "sync-run-progress.json"), b.Bytes(), 0o644)
			}

			// Nothing changed: nothing queued.
			run, raw = storeRun(t, base, `{"source":"store"}`)
			for ent, p := range run.Store {
				if p.Queued != 0 || p.Unchanged != p.RowsRead {
					t.Fatalf("unchanged run queued %s: %s", ent, raw)
				}
			}
			// A tenth of the orders changed: exactly those are queued. (Orders carry their
			// customer's data, so customers are changed after the orders are read.)
			ords := change("order", 10)
			run, raw = storeRun(t, base, `{"source":"store","entities":["order"]}`)
			if run.Store["order"].Queued != len(ords) || run.Store["order"].Unchanged != stats.Orders-len(ords) || run.Store["customer"].RowsRead != 0 {
				t.Fatalf("after changing %d orders: %s", len(ords), raw)
			}
			cust := change("customer", 10)
			run, raw = storeRun(t, base, `{"source":"store","entities":["customer"]}`)
			if run.Store["customer"].Queued != len(cust) || len(cust) == 0 {
				t.Fatalf("after changing %d customers: %s", len(cust), raw)
			}
			_, st := getJSON(t, base+"/api/status")
			store, _ := st["store"].(map[string]any)
			last, _ := store["lastRun"].(map[string]any)
			if store["reachable"] != true || store["currency"] != "USD" || last["id"] != run.ID {
				t.Fatalf("status store: %v", store)
			}
		})
	}
}

// TestLocalModeStoreFaults: a wrong password, an unreachable server and a currency
// mismatch are failed runs with their reason on the status page; the connection
// string never shows.
func TestLocalModeStoreFaults(t *testing.T) {
	conn, _, _ := newStoreDB(t, nopdbtest.PostgreSQL, nopdbtest.Sizes{Customers: 3, Products: 2, Orders: 2, Seed: 1})
	secret := "Wr0ngPassw0rd-" + fmt.Sprint(time.Now().UnixNano())
	for _, tc := range []struct {
		name, conn, currency, want string
	}{
		{"wrong password", replacePassword(t, conn, secret), "USD", "password"},
		{"unreachable", "postgres://nop:" + secret + "@127.0.0.1:1/nop?sslmode=disable&connect_timeout=2", "USD", "store database"},
		{"currency mismatch", conn, "EUR", "currency mismatch: the store's primary currency is USD"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			base := startLocal(t, map[string]string{"NOP_DB_PROVIDER": "postgresql", "NOP_DB_CONNECTION": tc.conn, "STORE_CURRENCY_CODE": tc.currency, "AUTO_SYNC_ENABLED": "false"}, nil)
			run, raw := storeRun(t, base, `{"source":"store"}`)
			if run.Outcome != "failed" || !strings.Contains(run.Error, tc.want) {
				t.Fatalf("run: %s", raw)
			}
			res, _ := httpGet(base + "/api/status")
			var st struct {
				Healthy bool `json:"healthy"`
				Store   struct {
					Error   *string `json:"error"`
					LastRun struct {
						Error string `json:"error"`
					} `json:"lastRun"`
				} `json:"store"`
			}
			json.Unmarshal(res, &st)
			if st.Healthy || st.Store.Error == nil || st.Store.LastRun.Error == "" {
				t.Fatalf("status: %s", res)
			}
			for _, b := range [][]byte{res, raw} {
				if strings.Contains(string(b), secret) || strings.Contains(string(b), tc.conn) {
					t.Fatalf("the connection string shows: %s", b)
				}
			}
		})
	}
}

// replacePassword returns a postgres:// connection string with another password.
func replacePassword(t *testing.T, conn, pw string) string {
	t.Helper()
	at := strings.LastIndex(conn, "@")
	colon := strings.LastIndex(conn[:at], ":")
	if at < 0 || colon < 0 {
		t.Fatalf("unexpected connection string form")
	}
	return conn[:colon+1] + pw + conn[at:]
}

func httpGet(url string) ([]byte, error) {
	res, err := http.Get(url)
	if err != nil {
		return nil, err
	}
	defer res.Body.Close()
	return io.ReadAll(res.Body)
}
