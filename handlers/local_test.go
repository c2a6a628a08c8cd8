package main

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nopsync/nopsync/shared/config"
	"github.com/nopsync/nopsync/shared/dataverse"
	"github.com/nopsync/nopsync/shared/dataverse/dataversetest"
)

func testLog(t *testing.T) *slog.Logger {
	if testing.Verbose() {
		return slog.New(slog.NewTextHandler(os.Stderr, nil))
	}
	return slog.New(slog.DiscardHandler)
}

// startLocal runs local mode until the test ends and returns its base URL.
func startLocal(t *testing.T, env map[string]string, lo *localOptions) string {
	t.Helper()
	if env == nil {
		env = map[string]string{}
	}
	if _, ok := env["LOCAL_DATA_DIR"]; !ok {
		env["LOCAL_DATA_DIR"] = t.TempDir()
	}
	env["LISTEN_ADDR"] = "127.0.0.1:0"
	cfg, err := config.Load(func(k string) (string, bool) { v, ok := env[k]; return v, ok })
	if err != nil {
		t.Fatal(err)
	}
	if lo == nil {
		lo = &localOptions{}
	}
	if lo.redeliveryDelay == 0 {
		lo.redeliveryDelay = 20 * time.Millisecond
	}
	addrc := make(chan string, 1)
	lo.started = func(a string) { addrc <- a }
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- runLocal(ctx, cfg, testLog(t), lo) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("local mode: %v", err)
		}
	})
	select {
	case a := <-addrc:
		return "http://" + a
	case err := <-done:
		t.Fatalf("local mode did not start: %v", err)
	case <-time.After(20 * time.Second):
		t.Fatal("local mode did not start in 20 s")
	}
	return ""
}

func example(t *testing.T, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("..", "examples", name))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func post(t *testing.T, url, contentType string, body []byte, header map[string]string) (int, map[string]any) {
	t.Helper()
	req, _ := http.NewRequest("POST", url, bytes.NewReader(body))
	req.Header.Set("Content-Type", contentType)
	for k, v := range header {
		req.Header.Set(k, v)
	}
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	var out map[string]any
	b, _ := io.ReadAll(res.Body)
	json.Unmarshal(b, &out)
	if ct := res.Header.Get("Content-Type"); !strings.HasPrefix(ct, "application/json") {
		t.Errorf("POST %s: Content-Type %q", url, ct)
	}
	return res.StatusCode, out
}

func getJSON(t *testing.T, url string) (int, map[string]any) {
	t.Helper()
	res, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	var out map[string]any
	b, _ := io.ReadAll(res.Body)
	json.Unmarshal(b, &out)
	return res.StatusCode, out
}

// waitFor polls cond until it holds or 20 s pass.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(25 * time.Millisecond)
	}
}

func sandboxRows(t *testing.T, base, set string) []map[string]any {
	code, body := getJSON(t, base+"/sandbox/api/data/v9.2/"+set)
	if code != 200 {
		t.Fatalf("sandbox %s: %d %v", set, code, body)
	}
	var rows []map[string]any
	b, _ := json.Marshal(body["value"])
	json.Unmarshal(b, &rows)
	return rows
}

// TestLocalModeEventLandsInSandbox is the newcomer's first run: local mode on its
// embedded defaults, one example event, the contact in the sandbox.
func TestLocalModeEventLandsInSandbox(t *testing.T) {
	base := startLocal(t, nil, nil)
	code, body := post(t, base+"/api/events/customer", "application/json", example(t, "customer-created.json"), nil)
	if code != 202 || body["accepted"] != float64(1) {
		t.Fatalf("POST example: %d %v", code, body)
	}
	waitFor(t, "the contact in the sandbox", func() bool {
		for _, c := range sandboxRows(t, base, "contacts") {
			if c["emailaddress1"] == "ada.lovelace@example.com" && c["lastname"] == "Lovelace" {
				return true
			}
		}
		return false
	})
	code, st := getJSON(t, base+"/api/status")
	if code != 200 {
		t.Fatalf("status: %d", code)
	}
	ents, _ := st["entities"].(map[string]any)
	cust, _ := ents["customer"].(map[string]any)
	if cust["synced"] != float64(1) {
		t.Errorf("status counts: %v", st["entities"])
	}
	code, es := getJSON(t, base+"/api/status/customer/42")
	if code != 200 || es["status"] != "synced" || es["dataverseId"] == "" {
		t.Errorf("entity status: %d %v", code, es)
	}
}

// TestSandboxStateStaysInMemory: with the sandbox, a Table Storage connection string
// (say, copied into local.settings.json for another run) does not move the sync state
// out of memory: durable state over a sandbox that starts empty would skip writes the
// sandbox never saw. Here the table's endpoint refuses connections, so an app that used
// it would not sync.
func TestSandboxStateStaysInMemory(t *testing.T) {
	refused := freeAddr(t) // nothing listens there
	base := startLocal(t, map[string]string{
		"STATE_STORAGE_CONNECTION_STRING": "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey=bm90LWEta2V5;TableEndpoint=http://" + refused + "/devstoreaccount1;",
		"SYNC_STATE_TABLE":                "sandboxstate",
	}, nil)
	code, body := post(t, base+"/api/events/customer", "application/json", example(t, "customer-created.json"), nil)
	if code != 202 {
		t.Fatalf("POST example: %d %v", code, body)
	}
	waitFor(t, "the contact in the sandbox", func() bool {
		for _, c := range sandboxRows(t, base, "contacts") {
			if c["emailaddress1"] == "ada.lovelace@example.com" {
				return true
			}
		}
		return false
	})
	if code, es := getJSON(t, base+"/api/status/customer/42"); code != 200 || es["status"] != "synced" {
		t.Errorf("entity status: %d %v", code, es)
	}
}

func sign(secret string, t int64, body []byte) string {
	m := hmac.New(sha256.New, []byte(secret))
	fmt.Fprintf(m, "%d.", t)
	m.Write(body)
	return "t=" + strconv.FormatInt(t, 10) + ",v1=" + hex.EncodeToString(m.Sum(nil))
}

// TestEventsContract sends docs/events.md's contract requests to the running app.
func TestEventsContract(t *testing.T) {
	const secret = "test-webhook-secret-not-real"
	base := startLocal(t, map[string]string{"WEBHOOK_SECRET": secret}, nil)
	ev := example(t, "customer-created.json")
	now := time.Now().Unix()

	code, body := post(t, base+"/api/events/customer", "application/json", ev, nil)
	if code != 401 || errCode(body) != "unauthorized" {
		t.Errorf("unsigned: %d %v", code, body)
	}
	code, body = post(t, base+"/api/events/customer", "application/json", ev, map[string]string{"X-Nop-Signature": sign(secret, now-301, ev)})
	if code != 401 {
		t.Errorf("signature older than 300 s: %d %v", code, body)
	}
	code, body = post(t, base+"/api/events/customer", "application/json", ev, map[string]string{"X-Nop-Signature": sign(secret, now, ev)})
	if code != 202 || body["accepted"] != float64(1) {
		t.Errorf("signed: %d %v", code, body)
	}
	bad := bytes.Replace(ev, []byte(`"email": "ada.lovelace@example.com"`), []byte(`"email": 42`), 1)
	code, body = post(t, base+"/api/events/customer", "application/json", bad, map[string]string{"X-Nop-Signature": sign(secret, now, bad)})
	if e, _ := body["error"].(map[string]any); code != 400 || e["code"] != "invalid_event" || e["field"] != "data.email" {
		t.Errorf("invalid field: %d %v", code, body)
	}
	big := bytes.Repeat([]byte(" "), 4<<20+1)
	code, body = post(t, base+"/api/events/customer", "application/json", big, map[string]string{"X-Nop-Signature": sign(secret, now, big)})
	if code != 413 || errCode(body) != "too_large" {
		t.Errorf("oversized: %d %v", code, body)
	}
	code, body = post(t, base+"/api/events/customer", "text/plain", ev, map[string]string{"X-Nop-Signature": sign(secret, now, ev)})
	if code != 415 {
		t.Errorf("text/plain: %d %v", code, body)
	}
	code, body = post(t, base+"/api/events/invoice", "application/json", ev, map[string]string{"X-Nop-Signature": sign(secret, now, ev)})
	if code != 404 || errCode(body) != "not_found" {
		t.Errorf("unknown entity: %d %v", code, body)
	}
	res, err := http.Get(base + "/api/events/customer")
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	if res.StatusCode != 405 {
		t.Errorf("GET events: %d", res.StatusCode)
	}
}

func errCode(body map[string]any) string {
	e, _ := body["error"].(map[string]any)
	s, _ := e["code"].(string)
	return s
}

func TestSettingsValidatedAtStartup(t *testing.T) {
	env := map[string]string{"AUTO_SYNC_PERIOD_MINUTES": "often", "DELETE_POLICY": "shred", "LOCAL_DATA_DIR": t.TempDir()}
	err := run(context.Background(), func(k string) (string, bool) { v, ok := env[k]; return v, ok }, nil, testLog(t))
	if err == nil || !strings.Contains(err.Error(), "AUTO_SYNC_PERIOD_MINUTES") || !strings.Contains(err.Error(), "DELETE_POLICY") {
		t.Errorf("want an error naming both bad settings, got %v", err)
	}
	env = map[string]string{"FUNCTIONS_CUSTOMHANDLER_PORT": "5555"}
	err = run(context.Background(), func(k string) (string, bool) { v, ok := env[k]; return v, ok }, nil, testLog(t))
	if err == nil || !strings.Contains(err.Error(), "DATAVERSE_URL") || !strings.Contains(err.Error(), "WEBHOOK_SECRET") {
		t.Errorf("Azure mode without settings: want errors naming them, got %v", err)
	}
	// A store connection string its driver can't read stops the app naming the setting,
	// in local mode, in Azure mode and for the agent, without repeating the password.
	for _, c := range [][2]string{
		{"postgresql", "host=127.0.0.1 port=bad user=nop password=SENTINELPW dbname=nop"},
		{"postgresql", "postgres://nop:SENT%ZZINELPW@127.0.0.1:3/nop"},
		{"mysql", "nop:SENTINELPW@tcp(127.0.0.1:3)/nop?parseTime=maybe"},
		{"sqlserver", "Server=127.0.0.1,3;User Id=nop;Password=SENTINELPW;Encrypt=maybe"},
	} {
		for _, args := range [][]string{nil, {"agent"}} {
			env = map[string]string{"LOCAL_DATA_DIR": t.TempDir(), "NOP_DB_PROVIDER": c[0], "NOP_DB_CONNECTION": c[1], "STORE_CURRENCY_CODE": "USD", "LISTEN_ADDR": "127.0.0.1:0"}
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second) // a started app serves until then
			err = run(ctx, func(k string) (string, bool) { v, ok := env[k]; return v, ok }, args, testLog(t))
			if err == nil || !strings.Contains(err.Error(), "NOP_DB_CONNECTION") || strings.Contains(err.Error(), "SENTINEL") || strings.Contains(err.Error(), "ZZINEL") {
				t.Errorf("%s %v: want an error naming NOP_DB_CONNECTION without the password, got %v", c[0], args, err)
			}
			cancel()
		}
	}
}

// TestQueueSurvivesRestart: an event accepted while Dynamics 365 is down stays queued
// across a restart of the process and lands once it is back.
func TestQueueSurvivesRestart(t *testing.T) {
	sim := dataversetest.NewServer(dataversetest.Options{})
	defer sim.Close()
	sim.SetFaults(dataversetest.Faults{Error503Rate: 1})
	dir := t.TempDir()
	env := func() map[string]string {
		return map[string]string{
			"LOCAL_DATA_DIR": dir, "DATAVERSE_URL": sim.URL(), "DATAVERSE_TENANT_ID": sim.TenantID, "DATAVERSE_CLIENT_ID": sim.ClientID,
			"DATAVERSE_CLIENT_SECRET": sim.ClientSecret(), "AZURE_AUTHORITY_HOST": sim.AuthorityHost(),
		}
	}
	lo := &localOptions{tuneDataverse: trust(sim)}
	cfg, err := config.Load(func(k string) (string, bool) { v, ok := env()[k]; return v, ok })
	if err != nil {
		t.Fatal(err)
	}
	cfg.ListenAddr = "127.0.0.1:0"
	addrc := make(chan string, 1)
	lo.started = func(a string) { addrc <- a }
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- runLocal(ctx, cfg, testLog(t), lo) }()
	base := "http://" + <-addrc
	if code, body := post(t, base+"/api/events/customer", "application/json", example(t, "customer-created.json"), nil); code != 202 {
		t.Fatalf("POST: %d %v", code, body)
	}
	waitFor(t, "the first failed attempt", func() bool { return sim.Stats().Requests > 0 || sim.Stats().TokensIssued > 0 })
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if n := sim.Count("contacts"); n != 0 {
		t.Fatalf("contact written while Dataverse was failing: %d", n)
	}
	sim.SetFaults(dataversetest.Faults{})
	base = startLocal(t, env(), &localOptions{tuneDataverse: trust(sim)})
	waitFor(t, "the queued event to land after the restart", func() bool { return sim.Count("contacts") == 1 })
	_ = base
}

// trust makes the Dataverse client trust sim's CA.
func trust(sim *dataversetest.Server) func(*dataverse.Options) {
	return func(o *dataverse.Options) { o.RootCAs = sim.CertPool() }
}

// Local mode settles a message as the host does: any 2xx completes it, anything else
// fails the invocation with the function's last log line.
func TestInvokeSettlesAsTheHost(t *testing.T) {
	for status, ok := range map[int]bool{200: true, 202: true, 204: true, 0: true, 299: true, 300: false, 400: false, 500: false} {
		h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if status == 0 {
				return // nothing written
			}
			w.WriteHeader(status)
			w.Write([]byte(`{"Logs":["last words"]}`))
		})
		err := invoke(context.Background(), h, "customers", []byte(`{}`))
		if (err == nil) != ok {
			t.Errorf("answer %d: %v, want ok=%v", status, err, ok)
		}
		if err != nil && !strings.Contains(err.Error(), "last words") {
			t.Errorf("answer %d: %v does not carry the function's log", status, err)
		}
	}
}

// Local mode has no function keys: listening beyond this machine, it says so at start.
func TestLocalModeWarnsWhenReachableFromOutside(t *testing.T) {
	for _, c := range []struct {
		addr string
		warn bool
	}{{"127.0.0.1:0", false}, {"0.0.0.0:0", true}} {
		env := map[string]string{"LISTEN_ADDR": c.addr, "LOCAL_DATA_DIR": t.TempDir(), "AUTO_SYNC_ENABLED": "false", "WEBHOOK_SECRET": "local-warn-secret-0123456789"}
		cfg, err := config.Load(func(k string) (string, bool) { v, ok := env[k]; return v, ok })
		if err != nil {
			t.Fatal(err)
		}
		var buf syncBuffer
		log := slog.New(slog.NewTextHandler(&buf, nil))
		ctx, cancel := context.WithCancel(context.Background())
		started := make(chan struct{})
		done := make(chan error, 1)
		go func() { done <- runLocal(ctx, cfg, log, &localOptions{started: func(string) { close(started) }}) }()
		select {
		case <-started:
		case err := <-done:
			t.Fatalf("%s: local mode did not start: %v", c.addr, err)
		}
		cancel()
		if err := <-done; err != nil {
			t.Fatalf("%s: %v", c.addr, err)
		}
		if got := strings.Contains(buf.String(), "admin routes have no key"); got != c.warn {
			t.Errorf("%s: warned %v, want %v", c.addr, got, c.warn)
		}
	}
}

// Local mode answers every request under the route prefix in JSON, as the app's errors
// are: a route taking other methods 405 with Allow, an unknown one 404; the prefix in
// any case reaches the routes, as the host matches it (/API/status).
func TestLocalModeAnswersUnknownRoutesInJSON(t *testing.T) {
	base := startLocal(t, nil, nil)
	for _, c := range []struct {
		method, path string
		want         int
		allow        string
	}{
		{"POST", "/api/status", 405, "GET"},
		{"GET", "/api/status/customer/42/extra", 404, ""},
		{"GET", "/api/deadletters", 404, ""},
		{"GET", "/api/nothing", 404, ""},
		{"GET", "/API/status", 200, ""},
		{"GET", "/Api/Status/customer/42", 404, ""}, // the route, answering that it has no such entity
	} {
		req, _ := http.NewRequest(c.method, base+c.path, nil)
		res, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		var body map[string]any
		derr := json.NewDecoder(res.Body).Decode(&body)
		res.Body.Close()
		if res.StatusCode != c.want || derr != nil || !strings.HasPrefix(res.Header.Get("Content-Type"), "application/json") {
			t.Errorf("%s %s: %d %s (%v), want %d in JSON", c.method, c.path, res.StatusCode, res.Header.Get("Content-Type"), derr, c.want)
		}
		if c.allow != "" && res.Header.Get("Allow") != c.allow {
			t.Errorf("%s %s: Allow %q, want %q", c.method, c.path, res.Header.Get("Allow"), c.allow)
		}
	}
}
