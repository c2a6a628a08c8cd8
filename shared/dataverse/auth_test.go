package dataverse

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"math/big"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore/cloud"
)

func whoAmIServer(t *testing.T) *fakeEnv {
	return newFakeEnv(t, func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, 200, map[string]any{"UserId": "u", "BusinessUnitId": "b", "OrganizationId": "o"})
	})
}

func TestExpiredTokenIsReplacedOnce(t *testing.T) {
	f := whoAmIServer(t)
	c, _ := f.newClient(t, nil)
	ctx := context.Background()
	if _, err := c.WhoAmI(ctx); err != nil {
		t.Fatal(err)
	}
	// the token still looks valid to the client (expires_in 3599) but
	// Dataverse now rejects it: the client must fetch a new one, not reuse
	// MSAL's cached token
	f.revokeAll()
	if _, err := c.WhoAmI(ctx); err != nil {
		t.Fatalf("after revocation: %v", err)
	}
	if n := f.tokenCount(); n != 2 {
		t.Fatalf("token requests = %d, want 2", n)
	}
}

func TestPersistent401IsAnAuthFailure(t *testing.T) {
	f := newFakeEnv(t, func(w http.ResponseWriter, r *http.Request) {
		dvError(w, 401, "0x80072182", "The user is not a member of the organization.")
	})
	c, _ := f.newClient(t, nil)
	_, err := c.WhoAmI(context.Background())
	if !IsAuthFailure(err) || IsRetryable(err) {
		t.Fatalf("err = %v", err)
	}
	if calls := f.apiCalls.Load(); calls != 2 {
		t.Fatalf("Dataverse calls = %d, want 2 (one resend with a fresh token)", calls)
	}
}

func TestRotatedSecretIsReadAgain(t *testing.T) {
	f := whoAmIServer(t)
	old := f.secret
	src := &testSecret{current: old}
	c, logs := f.newClient(t, func(o *Options) { o.Secret = src })
	ctx := context.Background()
	if _, err := c.WhoAmI(ctx); err != nil {
		t.Fatal(err)
	}
	// rotate: Entra now only takes the new secret, and the current token expires
	rotated := "fake-rotated-secret-value"
	f.setSecret(rotated)
	src.mu.Lock()
	src.next = rotated
	src.mu.Unlock()
	f.revokeAll()
	if _, err := c.WhoAmI(ctx); err != nil {
		t.Fatalf("after rotation: %v", err)
	}
	if src.invalidated != 1 {
		t.Fatalf("Invalidate calls = %d, want 1", src.invalidated)
	}
	if l := logs.all(); strings.Contains(l, rotated) || strings.Contains(l, old) {
		t.Fatal("secret in logs")
	}
}

func TestRejectedSecretWithoutRotationFailsCleanly(t *testing.T) {
	f := whoAmIServer(t)
	secret := "fake-wrong-secret-value"
	src := &testSecret{current: secret}
	c, logs := f.newClient(t, func(o *Options) { o.Secret = src })
	_, err := c.WhoAmI(context.Background())
	var de *Error
	if !IsAuthFailure(err) || IsRetryable(err) || !errors.As(err, &de) || de.Code != "invalid_client" {
		t.Fatalf("err = %#v", err)
	}
	if !strings.Contains(err.Error(), "AADSTS7000215") || strings.Contains(err.Error(), "Trace ID") {
		t.Fatalf("error text = %q", err)
	}
	if strings.Contains(err.Error(), secret) || strings.Contains(logs.all(), secret) {
		t.Fatal("secret leaked")
	}
	if src.invalidated != 1 || f.apiCalls.Load() != 0 {
		t.Fatalf("invalidated %d, Dataverse calls %d", src.invalidated, f.apiCalls.Load())
	}
}

func TestAuthorityHost(t *testing.T) {
	// The environment is package config's to read: the client takes the option only.
	t.Setenv("AZURE_AUTHORITY_HOST", "https://login.microsoftonline.us")
	h, err := authorityHost("")
	if err != nil || h != cloud.AzurePublic.ActiveDirectoryAuthorityHost || instanceDiscoveryOff(h) {
		t.Fatalf("default = %q %v", h, err)
	}
	if h, _ := authorityHost("https://login.microsoftonline.us"); h != "https://login.microsoftonline.us/" || instanceDiscoveryOff(h) {
		t.Fatalf("sovereign cloud = %q", h)
	}
	for _, h := range []string{"https://127.0.0.1:8443", "https://login.contoso-stack.local/", "https://login.microsoftonline.com.evil.example/"} {
		got, err := authorityHost(h)
		if err != nil || !instanceDiscoveryOff(got) {
			t.Errorf("%s: %q %v, want instance discovery off", h, got, err)
		}
	}
	if _, err := authorityHost("http://login.microsoftonline.com"); err == nil {
		t.Error("http authority accepted")
	}
}

func TestNewValidatesOptions(t *testing.T) {
	good := Options{EnvironmentURL: "https://org.crm.dynamics.com", TenantID: "t", ClientID: "c", Secret: StaticSecret("fake")}
	if _, err := New(good); err != nil {
		t.Fatal(err)
	}
	for name, mod := range map[string]func(*Options){
		"no url":      func(o *Options) { o.EnvironmentURL = "" },
		"http remote": func(o *Options) { o.EnvironmentURL = "http://org.crm.dynamics.com" },
		"no scheme":   func(o *Options) { o.EnvironmentURL = "org.crm.dynamics.com" },
		"no tenant":   func(o *Options) { o.TenantID = "" },
		"no client":   func(o *Options) { o.ClientID = "" },
		"no secret":   func(o *Options) { o.Secret = nil },
		"bad auth":    func(o *Options) { o.AuthorityHost = "ftp://x" },
	} {
		o := good
		mod(&o)
		if _, err := New(o); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

func TestUntrustedCertificateIsRefused(t *testing.T) {
	f := whoAmIServer(t)
	// trust only an unrelated CA (httptest servers all share one certificate)
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "other CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), IsCA: true,
		BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	ca, _ := x509.ParseCertificate(der)
	pool := x509.NewCertPool()
	pool.AddCert(ca)
	c, _ := f.newClient(t, func(o *Options) { o.RootCAs = pool; o.MaxRetries = -1 })
	_, err = c.WhoAmI(context.Background())
	if err == nil || !strings.Contains(err.Error(), "certificate") {
		t.Fatalf("err = %v", err)
	}
}
