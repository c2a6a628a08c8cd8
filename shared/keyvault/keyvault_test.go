package keyvault_test

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
	"github.com/Azure/azure-sdk-for-go/sdk/security/keyvault/azsecrets"

	"github.com/nopsync/nopsync/shared/keyvault"
)

// fakeCred is an azcore.TokenCredential handing out one fixed token.
type fakeCred struct{ calls atomic.Int64 }

func (f *fakeCred) GetToken(_ context.Context, o policy.TokenRequestOptions) (azcore.AccessToken, error) {
	f.calls.Add(1)
	return azcore.AccessToken{Token: "fake-kv-token", ExpiresOn: time.Now().Add(time.Hour)}, nil
}

// fakeVault serves the Key Vault REST shape GET /secrets/{name}?api-version=…
// behind the bearer challenge azsecrets expects.
type fakeVault struct {
	srv   *httptest.Server
	mu    sync.Mutex
	vals  map[string]string
	exp   map[string]time.Time
	reads atomic.Int64
}

func newFakeVault(t *testing.T) *fakeVault {
	v := &fakeVault{vals: map[string]string{}, exp: map[string]time.Time{}}
	v.srv = httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Authorization") != "Bearer fake-kv-token" {
			w.Header().Set("WWW-Authenticate", `Bearer authorization="https://login.microsoftonline.com/00000000-0000-0000-0000-000000000000", resource="https://vault.azure.net"`)
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		name, ok := strings.CutPrefix(r.URL.Path, "/secrets/")
		name = strings.TrimSuffix(name, "/")
		if !ok || r.Method != http.MethodGet || r.URL.Query().Get("api-version") == "" {
			http.Error(w, "bad request", 400)
			return
		}
		v.reads.Add(1)
		v.mu.Lock()
		val, found := v.vals[name]
		exp, hasExp := v.exp[name]
		v.mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		if !found {
			w.WriteHeader(404)
			_ = json.NewEncoder(w).Encode(map[string]any{"error": map[string]any{"code": "SecretNotFound",
				"message": "A secret with (name/id) " + name + " was not found in this key vault."}})
			return
		}
		attrs := map[string]any{"enabled": true, "created": time.Now().Unix()}
		if hasExp {
			attrs["exp"] = exp.Unix()
		}
		_ = json.NewEncoder(w).Encode(map[string]any{"value": val, "id": v.srv.URL + "/secrets/" + name + "/0123456789abcdef", "attributes": attrs})
	}))
	t.Cleanup(v.srv.Close)
	return v
}

func (v *fakeVault) set(name, val string, exp time.Time) {
	v.mu.Lock()
	defer v.mu.Unlock()
	v.vals[name] = val
	if !exp.IsZero() {
		v.exp[name] = exp
	}
}

type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) now() time.Time          { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *clock) advance(d time.Duration) { c.mu.Lock(); c.t = c.t.Add(d); c.mu.Unlock() }

func newSecrets(t *testing.T, v *fakeVault, clk *clock) *keyvault.Secrets {
	t.Helper()
	s, err := keyvault.New(v.srv.URL, &fakeCred{}, keyvault.Options{
		TTL: time.Minute,
		Now: clk.now,
		ClientOptions: &azsecrets.ClientOptions{
			ClientOptions:                        azcore.ClientOptions{Transport: v.srv.Client()},
			DisableChallengeResourceVerification: true,
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestGetCachesUntilTTLOrInvalidate(t *testing.T) {
	v := newFakeVault(t)
	exp := time.Date(2027, 5, 1, 0, 0, 0, 0, time.UTC)
	v.set("dataverse-client-secret", "fake-one", exp)
	clk := &clock{t: time.Now()}
	s := newSecrets(t, v, clk)
	ctx := context.Background()

	val, gotExp, err := s.Get(ctx, "dataverse-client-secret")
	if err != nil || val != "fake-one" || gotExp == nil || !gotExp.Equal(exp) {
		t.Fatalf("Get = %q %v %v", val, gotExp, err)
	}
	v.set("dataverse-client-secret", "fake-two", time.Time{})
	if val, _, _ := s.Get(ctx, "dataverse-client-secret"); val != "fake-one" || v.reads.Load() != 1 {
		t.Fatalf("cached Get = %q after %d reads", val, v.reads.Load())
	}
	s.Invalidate("dataverse-client-secret")
	if val, _, _ := s.Get(ctx, "dataverse-client-secret"); val != "fake-two" || v.reads.Load() != 2 {
		t.Fatalf("after Invalidate = %q after %d reads", val, v.reads.Load())
	}
	v.set("dataverse-client-secret", "fake-three", time.Time{})
	clk.advance(59 * time.Second)
	if val, _, _ := s.Get(ctx, "dataverse-client-secret"); val != "fake-two" {
		t.Fatalf("within TTL = %q", val)
	}
	clk.advance(2 * time.Second)
	if val, _, _ := s.Get(ctx, "dataverse-client-secret"); val != "fake-three" || v.reads.Load() != 3 {
		t.Fatalf("after TTL = %q after %d reads", val, v.reads.Load())
	}
}

func TestMissingSecretIsAnErrorAndNotCached(t *testing.T) {
	v := newFakeVault(t)
	s := newSecrets(t, v, &clock{t: time.Now()})
	_, _, err := s.Get(context.Background(), "webhook-secret")
	var re *azcore.ResponseError
	if err == nil || !strings.Contains(err.Error(), `"webhook-secret"`) || !errors.As(err, &re) || re.StatusCode != 404 {
		t.Fatalf("err = %v", err)
	}
	v.set("webhook-secret", "fake-hook", time.Time{})
	val, exp, err := s.Get(context.Background(), "webhook-secret")
	if err != nil || val != "fake-hook" || exp != nil {
		t.Fatalf("after creation: %q %v %v", val, exp, err)
	}
}

func TestConcurrentMissesReadTheVaultOnce(t *testing.T) {
	v := newFakeVault(t)
	v.set("s", "fake-v", time.Time{})
	s := newSecrets(t, v, &clock{t: time.Now()})
	var wg sync.WaitGroup
	for range 20 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if val, _, err := s.Get(context.Background(), "s"); err != nil || val != "fake-v" {
				t.Errorf("Get = %q %v", val, err)
			}
		}()
	}
	wg.Wait()
	if n := v.reads.Load(); n != 1 {
		t.Fatalf("vault reads = %d", n)
	}
}

func TestSourceAdaptsOneSecret(t *testing.T) {
	v := newFakeVault(t)
	exp := time.Now().Add(20 * 24 * time.Hour).Truncate(time.Second).UTC()
	v.set("dataverse-client-secret", "fake-a", exp)
	s := newSecrets(t, v, &clock{t: time.Now()})
	src := s.Source("dataverse-client-secret")
	ctx := context.Background()
	if val, err := src.Secret(ctx); err != nil || val != "fake-a" {
		t.Fatalf("Secret = %q %v", val, err)
	}
	if got, err := src.SecretExpires(ctx); err != nil || got == nil || !got.Equal(exp) {
		t.Fatalf("SecretExpires = %v %v", got, err)
	}
	v.set("dataverse-client-secret", "fake-b", exp)
	src.Invalidate()
	if val, _ := src.Secret(ctx); val != "fake-b" {
		t.Fatalf("after Invalidate = %q", val)
	}
	if val, err := keyvault.Static("fake-env").Secret(ctx); err != nil || val != "fake-env" {
		t.Fatalf("Static = %q %v", val, err)
	}
	if _, err := keyvault.Static("").Secret(ctx); err == nil {
		t.Fatal("empty static secret accepted")
	}
}

// blockingGetter answers GetSecret with the value current when the call
// started, after being released, so a read can straddle a rotation.
type blockingGetter struct {
	mu      sync.Mutex
	value   string
	started chan struct{}
	release chan struct{}
	calls   atomic.Int64
}

func (b *blockingGetter) GetSecret(ctx context.Context, name, version string, _ *azsecrets.GetSecretOptions) (azsecrets.GetSecretResponse, error) {
	b.mu.Lock()
	v := b.value
	b.mu.Unlock()
	if b.calls.Add(1) == 1 {
		close(b.started)
		<-b.release
	}
	var r azsecrets.GetSecretResponse
	r.Value = &v
	return r, nil
}

func TestInvalidateDuringReadIsNotUndone(t *testing.T) {
	g := &blockingGetter{value: "fake-old", started: make(chan struct{}), release: make(chan struct{})}
	s := keyvault.NewWithGetter(g, keyvault.Options{TTL: time.Hour})
	ctx := context.Background()
	done := make(chan string)
	go func() { v, _, _ := s.Get(ctx, "x"); done <- v }()
	<-g.started // a read of the old value is under way
	g.mu.Lock()
	g.value = "fake-new"
	g.mu.Unlock()
	s.Invalidate("x")
	if v, _, err := s.Get(ctx, "x"); err != nil || v != "fake-new" {
		t.Fatalf("Get after Invalidate = %q %v", v, err)
	}
	close(g.release)
	if v := <-done; v != "fake-old" {
		t.Fatalf("straddling read = %q", v)
	}
	if v, _, _ := s.Get(ctx, "x"); v != "fake-new" {
		t.Fatalf("cache holds %q, the straddling read overwrote the fresh value", v)
	}
}

// A vault secret with a value given directly (DATAVERSE_CLIENT_SECRET as well as
// KEY_VAULT_URL): the vault's secret and expiry while the vault has it, the value given
// directly (no expiry, no error) while it has none.
func TestSourceOrValue(t *testing.T) {
	v := newFakeVault(t)
	s := newSecrets(t, v, &clock{t: time.Now()})
	ctx := context.Background()
	f := s.Source("dataverse-client-secret").OrValue("from-the-setting")
	if got, err := f.Secret(ctx); err != nil || got != "from-the-setting" {
		t.Fatalf("no such secret in the vault: %q %v, want the value given", got, err)
	}
	if exp, err := f.SecretExpires(ctx); exp != nil || err != nil {
		t.Fatalf("no such secret in the vault: expiry %v %v, want none and no error", exp, err)
	}
	exp := time.Now().Add(10 * 24 * time.Hour).Truncate(time.Second)
	v.set("dataverse-client-secret", "from-the-vault", exp)
	f.Invalidate()
	if got, err := f.Secret(ctx); err != nil || got != "from-the-vault" {
		t.Fatalf("secret in the vault: %q %v, want the vault's", got, err)
	}
	if got, err := f.SecretExpires(ctx); err != nil || got == nil || !got.Equal(exp) {
		t.Fatalf("secret in the vault: expiry %v %v, want %v", got, err, exp)
	}
}
