package dataversetest

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/subtle"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/json"
	"math"
	"math/big"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/google/uuid"
)

// newCertificates makes a throwaway CA and a leaf for 127.0.0.1, ::1 and localhost.
func newCertificates() (tls.Certificate, *x509.CertPool, error) {
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return tls.Certificate{}, nil, err
	}
	now := time.Now()
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "dataversetest CA"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(48 * time.Hour), IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		return tls.Certificate{}, nil, err
	}
	caCert, err := x509.ParseCertificate(caDER)
	if err != nil {
		return tls.Certificate{}, nil, err
	}
	leafKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return tls.Certificate{}, nil, err
	}
	leafTmpl := &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "127.0.0.1"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(47 * time.Hour),
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1"), net.IPv6loopback}, DNSNames: []string{"localhost"},
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
	leafDER, err := x509.CreateCertificate(rand.Reader, leafTmpl, caCert, &leafKey.PublicKey, caKey)
	if err != nil {
		return tls.Certificate{}, nil, err
	}
	pool := x509.NewCertPool()
	pool.AddCert(caCert)
	return tls.Certificate{Certificate: [][]byte{leafDER, caDER}, PrivateKey: leafKey}, pool, nil
}

type tokenInfo struct {
	subject string
	expires time.Time
}

type authState struct {
	mu      sync.Mutex
	current string
	tokens  map[string]tokenInfo
	count   int
}

func newAuthState(secret string) *authState {
	return &authState{current: secret, tokens: map[string]tokenInfo{}}
}

func (a *authState) setSecret(v string) { a.mu.Lock(); a.current = v; a.mu.Unlock() }
func (a *authState) secret() string     { a.mu.Lock(); defer a.mu.Unlock(); return a.current }
func (a *authState) issued() int        { a.mu.Lock(); defer a.mu.Unlock(); return a.count }

// check validates a bearer token (Learn: webapi/authenticate-web-api;
// 401 on missing, expired and unknown tokens).
func (a *authState) check(header, tenant, origin string) (string, *apiError) {
	fail := func(msg string) (string, *apiError) {
		e := errf(http.StatusUnauthorized, "", "%s", msg)
		e.header = http.Header{}
		e.header.Set("WWW-Authenticate", "Bearer authorization_uri="+origin+"/"+tenant+"/oauth2/authorize, resource_id="+origin+"/")
		return "", e
	}
	tok, ok := strings.CutPrefix(header, "Bearer ")
	if !ok || tok == "" {
		return fail("RequestIsNotAuthenticated: the request has no bearer token.")
	}
	a.mu.Lock()
	info, found := a.tokens[tok]
	a.mu.Unlock()
	if !found {
		return fail("InvalidAuthTicket: the bearer token is not valid for this environment.")
	}
	if time.Now().After(info.expires) {
		return fail("ExpiredAuthTicket: the access token has expired.")
	}
	return info.subject, nil
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

// tenantOf returns the first path segment, the tenant in /{tenant}/...
func tenantOf(path string) string {
	p := strings.TrimPrefix(path, "/")
	if i := strings.IndexByte(p, '/'); i >= 0 {
		return p[:i]
	}
	return p
}

// openIDConfig serves /{tenant}/v2.0/.well-known/openid-configuration. MSAL needs
// authorization_endpoint, token_endpoint and an issuer on the authority's host.
func (s *Server) openIDConfig(w http.ResponseWriter, r *http.Request, origin string) {
	tenant := tenantOf(r.URL.Path)
	if tenant != s.TenantID && tenant != "organizations" && tenant != "common" {
		entraError(w, http.StatusBadRequest, "invalid_tenant", 90002, "Tenant '"+tenant+"' not found.")
		return
	}
	base := origin + "/" + s.TenantID
	writeJSON(w, http.StatusOK, map[string]any{
		"token_endpoint":                        base + "/oauth2/v2.0/token",
		"authorization_endpoint":                base + "/oauth2/v2.0/authorize",
		"device_authorization_endpoint":         base + "/oauth2/v2.0/devicecode",
		"issuer":                                base + "/v2.0",
		"jwks_uri":                              base + "/discovery/v2.0/keys",
		"token_endpoint_auth_methods_supported": []string{"client_secret_post", "private_key_jwt", "client_secret_basic"},
		"response_types_supported":              []string{"code", "id_token", "code id_token", "id_token token"},
		"scopes_supported":                      []string{"openid", "profile", "email", "offline_access"},
		"subject_types_supported":               []string{"pairwise"},
		"id_token_signing_alg_values_supported": []string{"RS256"},
		"tenant_region_scope":                   "EU",
		"cloud_instance_name":                   "microsoftonline.com",
	})
}

// instanceDiscovery serves /common/discovery/instance for clients that don't disable it.
func (s *Server) instanceDiscovery(w http.ResponseWriter, r *http.Request, origin string) {
	host := strings.TrimPrefix(strings.TrimPrefix(origin, "https://"), "http://")
	writeJSON(w, http.StatusOK, map[string]any{
		"tenant_discovery_endpoint": origin + "/" + s.TenantID + "/v2.0/.well-known/openid-configuration",
		"api-version":               "1.1",
		"metadata":                  []any{map[string]any{"preferred_network": host, "preferred_cache": host, "aliases": []string{host}}},
	})
}

func entraError(w http.ResponseWriter, status int, code string, aadsts int, desc string) {
	writeJSON(w, status, map[string]any{
		"error":             code,
		"error_description": "AADSTS" + itoa(aadsts) + ": " + desc + " Trace ID: " + uuid.NewString() + " Correlation ID: " + uuid.NewString() + " Timestamp: " + time.Now().UTC().Format("2006-01-02 15:04:05Z"),
		"error_codes":       []int{aadsts},
		"timestamp":         time.Now().UTC().Format("2006-01-02 15:04:05Z"),
		"trace_id":          uuid.NewString(),
		"correlation_id":    uuid.NewString(),
	})
}

func itoa(n int) string { return big.NewInt(int64(n)).String() }

// token implements the client credentials grant of /{tenant}/oauth2/v2.0/token
// (v2-oauth2-client-creds-grant-flow).
func (s *Server) token(w http.ResponseWriter, r *http.Request, origin string) {
	if r.Method != http.MethodPost {
		entraError(w, http.StatusMethodNotAllowed, "invalid_request", 900561, "The endpoint only accepts POST requests.")
		return
	}
	if tenant := tenantOf(r.URL.Path); tenant != s.TenantID {
		entraError(w, http.StatusBadRequest, "invalid_request", 90002, "Tenant '"+tenant+"' not found. Check to make sure you have the correct tenant ID and are signing into the correct cloud.")
		return
	}
	if err := r.ParseForm(); err != nil {
		entraError(w, http.StatusBadRequest, "invalid_request", 900144, "The request body must contain the following parameter: 'grant_type'.")
		return
	}
	clientID, secret := r.PostForm.Get("client_id"), r.PostForm.Get("client_secret")
	if u, p, ok := r.BasicAuth(); ok {
		clientID, secret = u, p
	}
	if gt := r.PostForm.Get("grant_type"); gt != "client_credentials" {
		entraError(w, http.StatusBadRequest, "unsupported_grant_type", 70003, "The app requested an unsupported grant type '"+gt+"'.")
		return
	}
	if clientID != s.ClientID {
		entraError(w, http.StatusBadRequest, "unauthorized_client", 700016, "Application with identifier '"+clientID+"' was not found in the directory '"+s.TenantID+"'.")
		return
	}
	if secret == "" {
		entraError(w, http.StatusUnauthorized, "invalid_client", 7000218, "The request body must contain the following parameter: 'client_assertion' or 'client_secret'.")
		return
	}
	if subtle.ConstantTimeCompare([]byte(secret), []byte(s.auth.secret())) != 1 {
		entraError(w, http.StatusUnauthorized, "invalid_client", 7000215, "Invalid client secret provided. Ensure the secret being sent in the request is the client secret value, not the client secret ID, for a secret added to app '"+s.ClientID+"'.")
		return
	}
	scope := r.PostForm.Get("scope")
	if !s.validScope(scope, origin) {
		entraError(w, http.StatusBadRequest, "invalid_scope", 70011, "The provided request must include a 'scope' input parameter. The provided value for the input parameter 'scope' is not valid. The scope "+scope+" is not valid.")
		return
	}
	buf := make([]byte, 24)
	_, _ = rand.Read(buf)
	tok := "dvsim." + hex.EncodeToString(buf)
	life := s.o.TokenLifetime
	s.auth.mu.Lock()
	s.auth.tokens[tok] = tokenInfo{subject: s.ClientID, expires: time.Now().Add(life)}
	s.auth.count++
	s.auth.mu.Unlock()
	secs := int(math.Ceil(life.Seconds()))
	writeJSON(w, http.StatusOK, map[string]any{"token_type": "Bearer", "expires_in": secs, "ext_expires_in": secs, "access_token": tok})
}

// validScope accepts "<environment URL>/.default" (v2-oauth2-client-creds-grant-flow; also with a double slash,
// which is what a trailing-slash URL + "/.default" produces).
func (s *Server) validScope(scope, origin string) bool {
	n := 0
	for _, sc := range strings.Fields(scope) {
		switch sc {
		case "openid", "offline_access", "profile", "email": // MSAL adds the OIDC scopes; Entra ignores them here
			continue
		}
		n++
		res, ok := strings.CutSuffix(sc, "/.default")
		if !ok {
			return false
		}
		res = strings.TrimSuffix(res, "/")
		want := strings.TrimSuffix(origin, "/")
		if !strings.EqualFold(res, want) && !(s.ts != nil && strings.EqualFold(res, strings.TrimSuffix(s.ts.URL, "/"))) {
			return false
		}
	}
	return n > 0
}
