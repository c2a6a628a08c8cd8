package dataverse

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/uuid"
)

// fakeEnv is a TLS server playing both Entra (discovery + token endpoint)
// and a Dataverse Web API whose behaviour each test supplies.
type fakeEnv struct {
	t      *testing.T
	srv    *httptest.Server
	tenant string
	client string

	mu         sync.Mutex
	secret     string // the only client secret the token endpoint accepts
	tokens     []string
	tokenForms []map[string]string
	valid      map[string]bool // access tokens Dataverse accepts
	lifetime   int             // expires_in for new tokens
	api        http.HandlerFunc
	apiCalls   atomic.Int64
}

func newFakeEnv(t *testing.T, api http.HandlerFunc) *fakeEnv {
	return newFakeEnvProto(t, api, false)
}

// newFakeEnvProto serves HTTP/2 when h2 is set (Dataverse's front ends do).
func newFakeEnvProto(t *testing.T, api http.HandlerFunc, h2 bool) *fakeEnv {
	t.Helper()
	f := &fakeEnv{t: t, tenant: uuid.NewString(), client: uuid.NewString(),
		secret: "fake-secret-" + uuid.NewString(), valid: map[string]bool{}, lifetime: 3599, api: api}
	f.srv = httptest.NewUnstartedServer(http.HandlerFunc(f.serve))
	f.srv.EnableHTTP2 = h2
	f.srv.StartTLS()
	t.Cleanup(f.srv.Close)
	return f
}

func (f *fakeEnv) setSecret(s string) { f.mu.Lock(); f.secret = s; f.mu.Unlock() }

// revokeAll makes Dataverse reject every token issued so far (expiry).
func (f *fakeEnv) revokeAll() { f.mu.Lock(); f.valid = map[string]bool{}; f.mu.Unlock() }

func (f *fakeEnv) tokenCount() int { f.mu.Lock(); defer f.mu.Unlock(); return len(f.tokens) }

func (f *fakeEnv) serve(w http.ResponseWriter, r *http.Request) {
	base := "/" + f.tenant
	switch {
	case r.URL.Path == base+"/v2.0/.well-known/openid-configuration":
		u := f.srv.URL + base
		writeJSON(w, 200, map[string]any{
			"token_endpoint":         u + "/oauth2/v2.0/token",
			"authorization_endpoint": u + "/oauth2/v2.0/authorize",
			"issuer":                 u + "/v2.0",
		})
	case r.URL.Path == base+"/oauth2/v2.0/token":
		_ = r.ParseForm()
		form := map[string]string{}
		for k := range r.PostForm {
			form[k] = r.PostForm.Get(k)
		}
		f.mu.Lock()
		f.tokenForms = append(f.tokenForms, form)
		ok := form["client_id"] == f.client && form["client_secret"] == f.secret && form["grant_type"] == "client_credentials"
		var tok string
		if ok {
			tok = "fake-token-" + uuid.NewString()
			f.tokens = append(f.tokens, tok)
			f.valid[tok] = true
		}
		life := f.lifetime
		f.mu.Unlock()
		if !ok {
			writeJSON(w, 401, map[string]any{"error": "invalid_client",
				"error_description": "AADSTS7000215: Invalid client secret provided.\r\nTrace ID: x", "error_codes": []int{7000215}})
			return
		}
		writeJSON(w, 200, map[string]any{"token_type": "Bearer", "expires_in": life, "access_token": tok})
	case strings.HasPrefix(r.URL.Path, APIPath):
		f.apiCalls.Add(1)
		tok := strings.TrimPrefix(r.Header.Get("Authorization"), "Bearer ")
		f.mu.Lock()
		ok := f.valid[tok]
		f.mu.Unlock()
		if !ok {
			w.Header().Set("WWW-Authenticate", `Bearer authorization_uri="`+f.srv.URL+`/x/oauth2/authorize"`)
			writeJSON(w, 401, map[string]any{"error": map[string]any{"code": "0x80072182", "message": "ExpiredAuthTicket"}})
			return
		}
		f.api(w, r)
	default:
		http.Error(w, "unexpected "+r.URL.Path, 599)
	}
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json; odata.metadata=minimal")
	w.Header().Set("OData-Version", "4.0")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

func dvError(w http.ResponseWriter, status int, code, msg string) {
	writeJSON(w, status, map[string]any{"error": map[string]any{"code": code, "message": msg}})
}

// testSecret is a SecretSource whose value changes only when invalidated,
// like a cached Key Vault read after a rotation.
type testSecret struct {
	mu          sync.Mutex
	current     string
	next        string // returned after the next Invalidate, when set
	invalidated int
}

func (s *testSecret) Secret(context.Context) (string, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.current, nil
}

func (s *testSecret) Invalidate() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.invalidated++
	if s.next != "" {
		s.current, s.next = s.next, ""
	}
}

type logSink struct {
	mu    sync.Mutex
	lines []string
}

func (l *logSink) log(s string) { l.mu.Lock(); l.lines = append(l.lines, s); l.mu.Unlock() }
func (l *logSink) all() string  { l.mu.Lock(); defer l.mu.Unlock(); return strings.Join(l.lines, "\n") }

func (f *fakeEnv) newClient(t *testing.T, mod func(*Options)) (*Client, *logSink) {
	t.Helper()
	pool := f.srv.Client().Transport.(*http.Transport).TLSClientConfig.RootCAs
	logs := &logSink{}
	o := Options{
		EnvironmentURL: f.srv.URL,
		TenantID:       f.tenant,
		ClientID:       f.client,
		Secret:         StaticSecret(f.secret),
		AuthorityHost:  f.srv.URL,
		RootCAs:        pool,
		RetryDelay:     5 * time.Millisecond,
		MaxRetryDelay:  30 * time.Second,
		Logger:         logs.log,
	}
	if mod != nil {
		mod(&o)
	}
	c, err := New(o)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	return c, logs
}

var _ = fmt.Sprintf
