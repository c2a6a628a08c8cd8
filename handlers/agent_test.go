package main

import (
	"context"
	"errors"
	"maps"
	"net"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nopsync/nopsync/shared/config"
	"github.com/nopsync/nopsync/shared/nopdb/nopdbtest"
)

// countingTransport counts the agent's requests that could not reach the app.
type countingTransport struct{ refused, sent atomic.Int64 }

func (c *countingTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	res, err := http.DefaultTransport.RoundTrip(r)
	if err != nil {
		c.refused.Add(1)
	} else {
		c.sent.Add(1)
	}
	return res, err
}

// startLocalAt runs local mode on addr until stop is called (or the test ends).
func startLocalAt(t *testing.T, env map[string]string, addr string) (stop func()) {
	t.Helper()
	env["LISTEN_ADDR"] = addr
	env["LOCAL_DATA_DIR"] = t.TempDir()
	cfg, err := config.Load(func(k string) (string, bool) { v, ok := env[k]; return v, ok })
	if err != nil {
		t.Fatal(err)
	}
	started := make(chan struct{})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- runLocal(ctx, cfg, testLog(t), &localOptions{redeliveryDelay: 20 * time.Millisecond, started: func(string) { close(started) }})
	}()
	select {
	case <-started:
	case err := <-done:
		t.Fatalf("local mode did not start: %v", err)
	}
	var stopped atomic.Bool
	stop = func() {
		if stopped.CompareAndSwap(false, true) {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("local mode: %v", err)
			}
		}
	}
	t.Cleanup(stop)
	return stop
}

// TestAgentPushesIntoLocalMode: push mode end to end. The agent reads a real nopCommerce
// database and POSTs to an app in local mode that is not up yet; once it is, everything
// lands in the sandbox. The app is then stopped, rows change, and after its restart the
// agent delivers exactly the changed rows.
func TestAgentPushesIntoLocalMode(t *testing.T) {
	conn, stats, change := newStoreDB(t, nopdbtest.PostgreSQL, storeSizes)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	const secret = "agent-webhook-secret-0123456789"
	env := map[string]string{"NOP_DB_PROVIDER": "postgresql", "NOP_DB_CONNECTION": conn, "WEBHOOK_SECRET": secret,
		"AGENT_EVENTS_URL": "http://" + addr + "/api/events/{entity}", "AGENT_STATE_FILE": filepath.Join(t.TempDir(), "agent.json")}
	cfg, err := config.Load(func(k string) (string, bool) { v, ok := env[k]; return v, ok })
	if err != nil {
		t.Fatal(err)
	}
	tr := &countingTransport{}
	ctx, cancel := context.WithCancel(context.Background())
	agentDone := make(chan error, 1)
	go func() {
		agentDone <- runAgent(ctx, cfg, nil, testLog(t), &agentOptions{period: 200 * time.Millisecond, minBackoff: 20 * time.Millisecond,
			maxBackoff: 100 * time.Millisecond, pageSize: 25, client: &http.Client{Transport: tr, Timeout: 30 * time.Second}})
	}()
	defer func() {
		cancel()
		if err := <-agentDone; err != nil {
			t.Errorf("agent: %v", err)
		}
	}()

	waitFor(t, "the agent to find the app down", func() bool { return tr.refused.Load() >= 2 })
	// The app as it runs here for the agent: the app's own settings, no reader.
	appEnv := map[string]string{"WEBHOOK_SECRET": secret, "AUTO_SYNC_ENABLED": "false"}
	stop := startLocalAt(t, appEnv, addr)
	base := "http://" + addr
	waitFor(t, "every order synced", func() bool {
		return entityCounts(t, base, "order")["synced"] == float64(stats.Orders)
	})
	if c := entityCounts(t, base, "customer"); c["synced"].(float64) < float64(stats.Customers) {
		t.Fatalf("customers: %v", c)
	}
	if n := len(sandboxRows(t, base, "salesorders")); n != stats.Orders {
		t.Fatalf("sandbox holds %d orders, want %d", n, stats.Orders)
	}

	stop()
	refused := tr.refused.Load()
	prods := change("product", 10)
	waitFor(t, "the agent to find the app down again", func() bool { return tr.refused.Load() >= refused+2 })
	startLocalAt(t, map[string]string{"WEBHOOK_SECRET": secret, "AUTO_SYNC_ENABLED": "false"}, addr)
	// A new sandbox: what lands in it is what the agent sent after the restart.
	waitFor(t, "the changed products synced", func() bool {
		return entityCounts(t, base, "product")["synced"] == float64(len(prods))
	})
	for _, ent := range []string{"customer", "order"} {
		if c := entityCounts(t, base, ent); c["synced"] != float64(0) || c["pending"] != float64(0) {
			t.Fatalf("%ss sent again after the restart: %v", ent, c)
		}
	}
}

// An agent that an app elsewhere would refuse stops at start naming the setting, rather
// than retrying refused requests for ever; a function key in the URL (which is logged) is
// refused by the settings themselves.
func TestAgentSettingsCheckedAtStart(t *testing.T) {
	base := map[string]string{"NOP_DB_PROVIDER": "postgresql", "NOP_DB_CONNECTION": "postgres://reader:not-a-password@127.0.0.1:1/nop",
		"AGENT_STATE_FILE": filepath.Join(t.TempDir(), "agent.json")}
	load := func(extra map[string]string) (*config.Config, error) {
		env := maps.Clone(base)
		maps.Copy(env, extra)
		return config.Load(func(k string) (string, bool) { v, ok := env[k]; return v, ok })
	}
	for _, c := range []struct {
		env  map[string]string
		want []string
	}{
		{map[string]string{"AGENT_EVENTS_URL": "https://func-x.azurewebsites.net/api/events"}, []string{"WEBHOOK_SECRET", "AGENT_FUNCTION_KEY"}},
		{map[string]string{"AGENT_EVENTS_URL": "https://func-x.azurewebsites.net/api/events", "WEBHOOK_SECRET": "s-0123456789abcdef"}, []string{"AGENT_FUNCTION_KEY"}},
		{map[string]string{"AGENT_EVENTS_URL": "http://10.1.2.3:7071/api/events"}, []string{"WEBHOOK_SECRET"}},
		{map[string]string{"AGENT_EVENTS_URL": "http://10.1.2.3:7071/api/events", "WEBHOOK_SECRET": "s-0123456789abcdef", "AGENT_FUNCTION_KEY": "k"}, []string{"https://"}},
	} {
		cfg, err := load(c.env)
		if err != nil {
			t.Fatalf("%v: %v", c.env, err)
		}
		err = runAgent(context.Background(), cfg, []string{"-once"}, testLog(t), nil)
		if !errors.Is(err, errConfig) {
			t.Fatalf("%v: %v, want a settings error", c.env, err)
		}
		for _, w := range c.want {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("%v: %v does not name %s", c.env, err, w)
			}
		}
		if strings.Contains(err.Error(), "not-a-password") {
			t.Errorf("the connection string reached the error: %v", err)
		}
	}
	if _, err := load(map[string]string{"AGENT_EVENTS_URL": "https://func-x.azurewebsites.net/api/events?code=abc"}); err == nil || !strings.Contains(err.Error(), "AGENT_FUNCTION_KEY") {
		t.Errorf("a key in the URL: %v, want it refused", err)
	}
}

// `agent -once` run by a scheduler: its exit status says whether the pass delivered every
// row. A pass whose rows the app refused ends with an error naming how many of each entity
// (a clean pass, nil); a pass cut short by a signal is an error too, not a quiet exit.
func TestAgentOnceExitStatus(t *testing.T) {
	conn, _, _ := newStoreDB(t, nopdbtest.PostgreSQL, storeSizes)
	var refuseCustomers atomic.Bool
	app := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if refuseCustomers.Load() && strings.HasSuffix(r.URL.Path, "/customer") {
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusBadRequest)
			_, _ = w.Write([]byte(`{"error":{"code":"invalid_event","message":"test refusal","index":0}}`))
			return
		}
		w.WriteHeader(http.StatusAccepted)
	}))
	defer app.Close()
	env := map[string]string{"NOP_DB_PROVIDER": "postgresql", "NOP_DB_CONNECTION": conn,
		"AGENT_EVENTS_URL": app.URL + "/api/events/{entity}", "AGENT_STATE_FILE": filepath.Join(t.TempDir(), "agent.json")}
	cfg, err := config.Load(func(k string) (string, bool) { v, ok := env[k]; return v, ok })
	if err != nil {
		t.Fatal(err)
	}
	once := func(ctx context.Context) error {
		return runAgent(ctx, cfg, []string{"-once"}, testLog(t), &agentOptions{minBackoff: time.Millisecond, maxBackoff: 10 * time.Millisecond})
	}

	refuseCustomers.Store(true)
	err = once(context.Background())
	if err == nil || !strings.Contains(err.Error(), "not delivered") || !strings.Contains(err.Error(), "customers") {
		t.Fatalf("a pass whose customers the app refused: %v, want an error naming them", err)
	}
	if strings.Contains(err.Error(), "products") || strings.Contains(err.Error(), "orders") {
		t.Errorf("%v: names entities that were delivered", err)
	}

	refuseCustomers.Store(false)
	if err := once(context.Background()); err != nil {
		t.Fatalf("a pass that delivered every row: %v", err)
	}

	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := once(ctx); err == nil || !strings.Contains(err.Error(), "interrupted") {
		t.Fatalf("a pass cut short: %v, want an error saying so", err)
	}
}
