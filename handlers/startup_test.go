package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nopsync/nopsync/shared/config"
	"github.com/nopsync/nopsync/shared/dataverse/dataversetest"
	"github.com/nopsync/nopsync/shared/funchost"
)

// postHost invokes a function over HTTP as the Functions host does.
func postHost(t *testing.T, base, fn string, payload []byte) (int, map[string]any) {
	t.Helper()
	res, err := http.Post(base+"/"+fn, "application/json", bytes.NewReader(payload))
	if err != nil {
		t.Fatalf("POST /%s: %v", fn, err)
	}
	defer res.Body.Close()
	var out map[string]any
	b, _ := io.ReadAll(res.Body)
	json.Unmarshal(b, &out)
	return res.StatusCode, out
}

// resHeader reads a header of the HTTP output the host sends the caller.
func resHeader(out map[string]any, name string) string {
	outs, _ := out["Outputs"].(map[string]any)
	res, _ := outs["res"].(map[string]any)
	h, _ := res["headers"].(map[string]any)
	for k, v := range h {
		if strings.EqualFold(k, name) {
			return fmt.Sprint(v)
		}
	}
	return ""
}

func signedEventPayload(t *testing.T, secret string, ev []byte) []byte {
	t.Helper()
	r := httptest.NewRequest("POST", "https://func-test.azurewebsites.net/api/events/customer", bytes.NewReader(ev))
	r.Header.Set("Content-Type", "application/json")
	r.Header.Set("X-Nop-Signature", sign(secret, time.Now().Unix(), ev))
	b, err := funchost.EncodeHTTP("events", "req", r, map[string]string{"entity": "customer"}, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func statusPayload(t *testing.T) []byte {
	t.Helper()
	r := httptest.NewRequest("GET", "https://func-test.azurewebsites.net/api/status", nil)
	b, err := funchost.EncodeHTTP("status", "req", r, nil, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestStartupAnswersBeforeTheApp: with the app's start-up failing (the state store
// answering 403, as right after a first deployment), the handler answers GET / and every
// function answers "not ready" the documented way; once start-up succeeds, by itself, the
// functions are the app's.
func TestStartupAnswersBeforeTheApp(t *testing.T) {
	const secret = "startup-secret-not-real"
	a, _, _ := hostTestApp(t, secret)
	var storeUp atomic.Bool
	var attempts atomic.Int32
	build := func(ctx context.Context) (*app, error) {
		attempts.Add(1)
		if !storeUp.Load() {
			return nil, errors.New("tablestorage: create table: 403 AuthorizationPermissionMismatch")
		}
		return a, nil
	}
	addr := freeAddr(t)
	_, port, _ := net.SplitHostPort(addr)
	cfg := &config.Config{WebhookSecrets: []string{secret}}
	cfg.HandlerPort, _ = strconv.Atoi(port)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- serveHost(ctx, cfg, testLog(t), startOptions{MinBackoff: 5 * time.Millisecond, MaxBackoff: 20 * time.Millisecond, QueueWait: 10 * time.Millisecond}, build)
	}()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("serveHost: %v", err)
		}
	})
	base := "http://" + addr
	var res *http.Response
	var err error
	for i := 0; i < 500; i++ {
		if res, err = http.Get(base + "/"); err == nil {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	if err != nil {
		t.Fatalf("GET / never answered: %v", err)
	}
	res.Body.Close()
	if res.StatusCode != 200 {
		t.Fatalf("GET / while the store refuses: %d", res.StatusCode)
	}
	for attempts.Load() < 2 {
		time.Sleep(5 * time.Millisecond) // start-up keeps trying
	}

	ev := example(t, "customer-created.json")
	code, out := postHost(t, base, "events", signedEventPayload(t, secret, ev))
	status, body := resOutput(t, out)
	e, _ := body["error"].(map[string]any)
	if code != 200 || status != "503" || e["code"] != "unavailable" || resHeader(out, "Retry-After") == "" {
		t.Errorf("events while starting: host %d, res %s %v Retry-After %q; want 503 unavailable with Retry-After", code, status, body, resHeader(out, "Retry-After"))
	}
	msg, err := funchost.EncodeServiceBus("customers", "msg", funchost.ServiceBusMessage{Body: []byte(`{"evt":{}}`), MessageID: "m-1", SessionID: "customer-1", DeliveryCount: 1, EnqueuedTime: time.Now()}, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if code, out := postHost(t, base, "customers", msg); code < 500 {
		t.Errorf("queue invocation while starting: %d %v, want 5xx", code, out)
	}
	code, out = postHost(t, base, "status", statusPayload(t))
	status, body = resOutput(t, out)
	starting, _ := body["starting"].(map[string]any)
	if code != 200 || status != "200" || body["healthy"] != false || !strings.Contains(fmt.Sprint(starting["lastError"]), "403") {
		t.Errorf("status while starting: host %d res %s %v; want 200, healthy false, the 403 as lastError", code, status, body)
	}
	// Only the status page renders while starting; an entity's state is not known yet.
	r := httptest.NewRequest("GET", "https://func-test.azurewebsites.net/api/Status/customer/42/", nil)
	entityReq, err := funchost.EncodeHTTP("status", "req", r, nil, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	code, out = postHost(t, base, "status", entityReq)
	if status, body := resOutput(t, out); code != 200 || status != "503" {
		t.Errorf("entity status while starting: host %d res %s %v; want 503", code, status, body)
	}
	if code, _ := postHost(t, base, "autosync", []byte(`{"Data":{"timer":{"IsPastDue":false}},"Metadata":{}}`)); code != 200 {
		t.Errorf("timer while starting: %d", code)
	}

	storeUp.Store(true)
	for {
		_, out = postHost(t, base, "events", signedEventPayload(t, secret, ev))
		if status, _ = resOutput(t, out); status != "503" {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	if status != "202" {
		t.Errorf("events once started: %s, want 202", status)
	}
	if code, out := postHost(t, base, "status", statusPayload(t)); code != 200 {
		t.Errorf("status once started: %d %v", code, out)
	} else if _, body := resOutput(t, out); body["entities"] == nil || body["starting"] != nil {
		t.Errorf("status once started is not the app's: %v", body)
	}
}

// TestStartupProcessSurvivesStoreOutage runs the real executable in Azure mode
// (FUNCTIONS_CUSTOMHANDLER_PORT) with its state table behind a proxy that first refuses
// (403 as before role assignments take effect, or no listener at all), then passes
// requests to Azurite. The process answers GET / while the store is out, stays up, and
// serves events once the store is back, without a restart.
func TestStartupProcessSurvivesStoreOutage(t *testing.T) {
	conn := os.Getenv("TEST_TABLE_CONNECTION_STRING")
	if conn == "" {
		t.Skip("TEST_TABLE_CONNECTION_STRING not set: start Azurite with `eval \"$(scripts/azurite start)\"` (scripts/test does this)")
	}
	var azurite *url.URL
	for _, part := range strings.Split(conn, ";") {
		if k, v, ok := strings.Cut(part, "="); ok && strings.EqualFold(k, "TableEndpoint") {
			azurite, _ = url.Parse(v)
		}
	}
	if azurite == nil {
		t.Fatal("no TableEndpoint in TEST_TABLE_CONNECTION_STRING")
	}
	for _, mode := range []string{"403", "refused"} {
		t.Run(mode, func(t *testing.T) {
			var up atomic.Bool
			var refusedWhileDown atomic.Int32
			proxy := httputil.NewSingleHostReverseProxy(&url.URL{Scheme: azurite.Scheme, Host: azurite.Host})
			front := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if !up.Load() {
					refusedWhileDown.Add(1)
					w.Header().Set("Content-Type", "application/json")
					w.Header().Set("x-ms-error-code", "AuthorizationPermissionMismatch")
					w.WriteHeader(http.StatusForbidden)
					io.WriteString(w, `{"odata.error":{"code":"AuthorizationPermissionMismatch","message":{"lang":"en-US","value":"This request is not authorized to perform this operation using this permission."}}}`)
					return
				}
				proxy.ServeHTTP(w, r)
			})
			storeAddr := freeAddr(t)
			var srv *http.Server
			listen := func() {
				ln, err := net.Listen("tcp", storeAddr)
				if err != nil {
					t.Fatal(err)
				}
				srv = &http.Server{Handler: front}
				go srv.Serve(ln)
				t.Cleanup(func() { srv.Close() })
			}
			if mode == "403" {
				listen()
			} else {
				up.Store(true) // nothing listens until the store comes back
			}
			proxied := strings.Replace(conn, "TableEndpoint="+azurite.Scheme+"://"+azurite.Host, "TableEndpoint=http://"+storeAddr, 1)

			sim := dataversetest.NewServer(dataversetest.Options{})
			t.Cleanup(sim.Close)
			dir := t.TempDir()
			ca := writeSimCA(t, sim, dir)
			const secret = "startup-proc-secret-not-real"
			addr := freeAddr(t)
			_, port, _ := net.SplitHostPort(addr)
			env := appEnv(sim, ca, filepath.Join(dir, "data"), "", secret,
				"FUNCTIONS_CUSTOMHANDLER_PORT="+port, "STATE_STORAGE_CONNECTION_STRING="+proxied,
				"SYNC_STATE_TABLE=startup"+mode+strconv.FormatInt(time.Now().UnixNano()%1e9, 10),
				"ServiceBusConnection__fullyQualifiedNamespace=nopsync-test.servicebus.windows.net")
			p := launch(t, handlerBinary(t), env, addr, filepath.Join(dir, "app.log"), true)
			// GET / answered (launch waits for it) while the store could not have been used.
			if mode == "403" && refusedWhileDown.Load() == 0 {
				// The answer came before the first table request; fine, and wait for one
				// so the rest of the test runs against a refused start-up.
				for refusedWhileDown.Load() == 0 {
					time.Sleep(5 * time.Millisecond)
				}
			}
			base := "http://" + addr
			ev := example(t, "customer-created.json")
			code, out := postHost(t, base, "events", signedEventPayload(t, secret, ev))
			if status, body := resOutput(t, out); code != 200 || status != "503" || resHeader(out, "Retry-After") == "" {
				t.Errorf("events while the store is out: host %d res %s %v, want 503 with Retry-After", code, status, body)
			}
			select {
			case <-p.done:
				t.Fatalf("the process exited while the store was out: %v\n%s", p.err, tail(filepath.Join(dir, "app.log"), 2000))
			default:
			}

			if mode == "403" {
				up.Store(true)
			} else {
				listen()
			}
			// Ready: the intake itself answers. A malformed (signed) body gets its 400
			// without a Service Bus, which this test has not got.
			deadline := time.Now().Add(2 * time.Minute)
			for {
				_, out = postHost(t, base, "events", signedEventPayload(t, secret, []byte(`{"id":`)))
				status, body := resOutput(t, out)
				if e, _ := body["error"].(map[string]any); status == "400" && e["code"] == "invalid_event" {
					break
				}
				if status != "503" || time.Now().After(deadline) {
					t.Fatalf("events after the store came back: %s %v\n%s", status, body, tail(filepath.Join(dir, "app.log"), 2000))
				}
				time.Sleep(100 * time.Millisecond)
			}
			p.stop()
			checkLogStreams(t, filepath.Join(dir, "app.log"), map[string]string{
				"storage account key": connValue(conn, "AccountKey"), "client secret": sim.ClientSecret(), "webhook secret": secret})
		})
	}
}

// checkLogStreams: every line the process wrote is one JSON record (the log file merges
// stdout and stderr; the split itself is TestLogSeverityAsTheHostSeesIt's), and none holds
// a secret, though the start-up errors quote the store's answers.
func checkLogStreams(t *testing.T, path string, secrets map[string]string) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	for what, v := range secrets {
		if v == "" {
			t.Fatalf("no %s to look for", what)
		}
		if bytes.Contains(b, []byte(v)) {
			t.Errorf("the logs hold the %s", what)
		}
	}
	for _, line := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		var rec map[string]any
		if json.Unmarshal([]byte(line), &rec) != nil || rec["level"] == nil {
			t.Errorf("log line is not one JSON record: %q", line)
		}
	}
}

// connValue reads one key of a storage connection string.
func connValue(conn, key string) string {
	for _, part := range strings.Split(conn, ";") {
		if k, v, ok := strings.Cut(part, "="); ok && strings.EqualFold(k, key) {
			return v
		}
	}
	return ""
}

// syncBuffer is a bytes.Buffer safe for a process's output goroutine and the test.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// TestProcessLogStreams runs the executable as the Functions host does, reading its stdout
// and stderr apart: a start-up retry is a warning on stderr (the host logs it as Warning),
// information goes to stdout, and a setting that stops the app is one error line on stderr
// (logged as Error).
func TestProcessLogStreams(t *testing.T) {
	bin := handlerBinary(t)
	refuse := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("x-ms-error-code", "AuthorizationPermissionMismatch")
		w.WriteHeader(http.StatusForbidden)
	}))
	defer refuse.Close()
	addr := freeAddr(t)
	_, port, _ := net.SplitHostPort(addr)
	conn := "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey=bm90LWEta2V5;TableEndpoint=" + refuse.URL + "/devstoreaccount1;"
	base := []string{"PATH=" + os.Getenv("PATH"), "HOME=" + os.Getenv("HOME"), "FUNCTIONS_CUSTOMHANDLER_PORT=" + port,
		"DATAVERSE_URL=https://org.crm.dynamics.com", "DATAVERSE_TENANT_ID=00000000-0000-0000-0000-000000000001",
		"DATAVERSE_CLIENT_ID=00000000-0000-0000-0000-000000000002", "DATAVERSE_CLIENT_SECRET=not-a-real-secret",
		"STORE_CURRENCY_CODE=USD", "ServiceBusConnection__fullyQualifiedNamespace=nopsync-test.servicebus.windows.net",
		"STATE_STORAGE_CONNECTION_STRING=" + conn}

	run := func(env []string, until func(stdout, stderr string) bool) (string, string) {
		t.Helper()
		var stdout, stderr syncBuffer
		cmd := exec.Command(bin)
		cmd.Env, cmd.Stdout, cmd.Stderr = env, &stdout, &stderr
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		done := make(chan struct{})
		go func() { cmd.Wait(); close(done) }()
		deadline := time.After(time.Minute)
		for !until(stdout.String(), stderr.String()) {
			select {
			case <-done:
				return stdout.String(), stderr.String()
			case <-deadline:
				cmd.Process.Kill()
				<-done
				t.Fatalf("gave up waiting; stdout %q stderr %q", stdout.String(), stderr.String())
			case <-time.After(10 * time.Millisecond):
			}
		}
		cmd.Process.Kill()
		<-done
		return stdout.String(), stderr.String()
	}
	levels := func(stream, out string) []string {
		var ls []string
		for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
			if line == "" {
				continue
			}
			var rec map[string]any
			if err := json.Unmarshal([]byte(line), &rec); err != nil {
				t.Errorf("%s line is not one JSON record: %q", stream, line)
				continue
			}
			ls = append(ls, fmt.Sprint(rec["level"])+"/"+hostLevel(stream, line))
		}
		return ls
	}

	stdout, stderr := run(append(base, "WEBHOOK_SECRET=not-a-real-webhook-secret"), func(_, stderr string) bool {
		return strings.Contains(stderr, "start-up not finished")
	})
	for _, l := range levels("stdout", stdout) {
		if l != "INFO/Information" {
			t.Errorf("stdout holds a %s line: %s", l, stdout)
		}
	}
	for _, l := range levels("stderr", stderr) {
		if l != "WARN/Warning" {
			t.Errorf("stderr during a start-up retry holds a %s line (want WARN/Warning): %s", l, stderr)
		}
	}
	if !strings.Contains(stdout, "custom handler listening") {
		t.Errorf("stdout lacks the start-up line: %q", stdout)
	}

	// No webhook secret in Azure: the app stops at once, naming the setting, in one error line.
	stdout, stderr = run(base, func(string, string) bool { return false })
	if got := levels("stderr", stderr); len(got) != 1 || got[0] != "ERROR/Error" || !strings.Contains(stderr, "WEBHOOK_SECRET") {
		t.Errorf("stopping on a missing setting: stderr %v %q, want one ERROR line naming WEBHOOK_SECRET", got, stderr)
	}
	if strings.TrimSpace(stdout) != "" {
		t.Errorf("stopping on a missing setting: stdout %q", stdout)
	}
	for _, out := range []string{stdout, stderr} {
		if strings.Contains(out, "not-a-real-secret") || strings.Contains(out, "bm90LWEta2V5") {
			t.Errorf("a secret in the output: %q", out)
		}
	}
}
