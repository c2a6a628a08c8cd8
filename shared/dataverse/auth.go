package dataverse

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/cloud"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/runtime"
	"github.com/Azure/azure-sdk-for-go/sdk/azidentity"

	"github.com/nopsync/nopsync/shared/internal/cut"
)

// publicAuthorityHosts are Microsoft's public cloud authorities; for any
// other host MSAL's instance discovery (which asks login.microsoftonline.com
// to vouch for the host) is turned off, as private clouds and Azure Stack need.
var publicAuthorityHosts = map[string]bool{
	"login.microsoftonline.com": true,
	"login.microsoftonline.us":  true,
	"login.chinacloudapi.cn":    true,
}

// authorityHost resolves the Entra authority: the option, else the public cloud.
func authorityHost(h string) (string, error) {
	if h == "" {
		h = cloud.AzurePublic.ActiveDirectoryAuthorityHost
	}
	u, err := url.Parse(h)
	if err != nil || u.Scheme != "https" || u.Host == "" {
		return "", fmt.Errorf("dataverse: authority host %q is not an https URL", h)
	}
	if !strings.HasSuffix(h, "/") {
		h += "/"
	}
	return h, nil
}

func instanceDiscoveryOff(authority string) bool {
	u, err := url.Parse(authority)
	return err != nil || !publicAuthorityHosts[strings.ToLower(u.Hostname())]
}

func isLoopback(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// newHTTPClient trusts the system roots and, when given, extra roots (the
// simulator's CA). x509.CertPool can't be merged, so with extra roots the
// chain is verified against each pool in turn.
func newHTTPClient(extra *x509.CertPool) *http.Client {
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.MaxIdleConnsPerHost = MaxConcurrentRequests
	cfg := &tls.Config{MinVersion: tls.VersionTLS12}
	if extra != nil {
		cfg.InsecureSkipVerify = true // replaced by VerifyConnection below
		cfg.VerifyConnection = func(cs tls.ConnectionState) error {
			if len(cs.PeerCertificates) == 0 {
				return errors.New("tls: server sent no certificate")
			}
			inter := x509.NewCertPool()
			for _, c := range cs.PeerCertificates[1:] {
				inter.AddCert(c)
			}
			var firstErr error
			for _, roots := range []*x509.CertPool{extra, nil} { // nil: system roots
				_, err := cs.PeerCertificates[0].Verify(x509.VerifyOptions{
					DNSName: cs.ServerName, Roots: roots, Intermediates: inter,
				})
				if err == nil {
					return nil
				}
				if firstErr == nil {
					firstErr = err
				}
			}
			return firstErr
		}
	}
	tr.TLSClientConfig = cfg
	return &http.Client{Transport: tr}
}

// authError is a token-endpoint failure, kept free of secrets.
type authError struct {
	status    int
	code      string // e.g. "invalid_client" or "AADSTS7000215"
	message   string // first line of error_description
	retryable bool
	err       error
}

func (e *authError) Error() string {
	return fmt.Sprintf("token request failed: %d %s: %s", e.status, e.code, e.message)
}
func (e *authError) Unwrap() error { return e.err }

// NonRetriable tells azcore's retry policy not to resend the request.
func (e *authError) NonRetriable() {}

// tokenSource is the TokenCredential the bearer policy uses: an azidentity
// client-secret credential, rebuilt when the secret is rotated (token
// endpoint rejects it) or a token is rejected by Dataverse (MSAL would
// otherwise hand back the same cached token).
type tokenSource struct {
	tenantID, clientID, authority string
	secret                        SecretSource
	transport                     policy.Transporter
	retry                         policy.RetryOptions
	log                           func(string)

	mu         sync.Mutex
	cred       azcore.TokenCredential
	secretUsed string
	gen        uint64
	lastToken  string
	stale      bool // lastToken was rejected: drop the credential's cache
}

var _ azcore.TokenCredential = (*tokenSource)(nil)

func (t *tokenSource) build(secret string) (azcore.TokenCredential, error) {
	return azidentity.NewClientSecretCredential(t.tenantID, t.clientID, secret, &azidentity.ClientSecretCredentialOptions{
		ClientOptions: azcore.ClientOptions{
			Cloud:     cloud.Configuration{ActiveDirectoryAuthorityHost: t.authority},
			Transport: t.transport,
			Retry:     t.retry,
		},
		DisableInstanceDiscovery: instanceDiscoveryOff(t.authority),
	})
}

// current returns the credential to use, building it when missing or stale.
func (t *tokenSource) current(ctx context.Context) (azcore.TokenCredential, uint64, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.cred != nil && !t.stale {
		return t.cred, t.gen, nil
	}
	secret := t.secretUsed
	if t.cred == nil {
		s, err := t.secret.Secret(ctx)
		if err != nil {
			return nil, 0, &authError{code: "SecretUnavailable", message: "reading the client secret failed", retryable: true, err: err}
		}
		secret = s
	}
	cred, err := t.build(secret)
	if err != nil {
		return nil, 0, &authError{code: "InvalidCredential", message: "building the client credential failed"}
	}
	t.cred, t.secretUsed, t.stale = cred, secret, false
	t.gen++
	return t.cred, t.gen, nil
}

// rotate re-reads the secret after the token endpoint rejected the one in
// use (generation gen). It reports false when the secret did not change,
// so retrying would only be rejected again.
func (t *tokenSource) rotate(ctx context.Context, gen uint64) (azcore.TokenCredential, bool, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.gen != gen && t.cred != nil {
		return t.cred, true, nil // someone rotated meanwhile
	}
	t.secret.Invalidate()
	s, err := t.secret.Secret(ctx)
	if err != nil {
		return nil, false, &authError{code: "SecretUnavailable", message: "re-reading the client secret failed", retryable: true, err: err}
	}
	if s == t.secretUsed {
		return nil, false, nil
	}
	cred, err := t.build(s)
	if err != nil {
		return nil, false, &authError{code: "InvalidCredential", message: "building the client credential failed"}
	}
	t.cred, t.secretUsed, t.stale = cred, s, false
	t.gen++
	t.log("dataverse: client secret changed; using the new one")
	return cred, true, nil
}

// rejected is called when Dataverse answered 401 to a request carrying
// token; the next GetToken then fetches a new token from the endpoint.
func (t *tokenSource) rejected(token string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if token != "" && token == t.lastToken {
		t.stale = true
	}
}

func (t *tokenSource) GetToken(ctx context.Context, tro policy.TokenRequestOptions) (azcore.AccessToken, error) {
	cred, gen, err := t.current(ctx)
	if err != nil {
		return azcore.AccessToken{}, err
	}
	tk, err := cred.GetToken(ctx, tro)
	if err != nil {
		ae := classifyTokenError(err)
		if ae.retryable || ae.status == 0 {
			return azcore.AccessToken{}, ae
		}
		t.log(fmt.Sprintf("dataverse: token endpoint rejected the client credential (%d %s); re-reading the secret", ae.status, ae.code))
		cred, changed, rerr := t.rotate(ctx, gen)
		if rerr != nil {
			return azcore.AccessToken{}, rerr
		}
		if !changed {
			return azcore.AccessToken{}, ae
		}
		if tk, err = cred.GetToken(ctx, tro); err != nil {
			return azcore.AccessToken{}, classifyTokenError(err)
		}
	}
	t.mu.Lock()
	t.lastToken = tk.Token
	t.mu.Unlock()
	return tk, nil
}

// classifyTokenError extracts status and Entra error code from an azidentity
// error without copying the raw response (which names the token URL).
func classifyTokenError(err error) *authError {
	var afe *azidentity.AuthenticationFailedError
	if errors.As(err, &afe) && afe.RawResponse != nil {
		ae := &authError{status: afe.RawResponse.StatusCode, code: "AuthenticationFailed",
			message: "the token endpoint rejected the client credentials"}
		if body, rerr := runtime.Payload(afe.RawResponse); rerr == nil {
			var e struct {
				Error       string `json:"error"`
				Description string `json:"error_description"`
			}
			if json.Unmarshal(body, &e) == nil && e.Error != "" {
				ae.code = e.Error
				if e.Description != "" {
					ae.message = cut.Bytes(strings.SplitN(e.Description, "\r\n", 2)[0], 300, "…")
				}
			}
		}
		ae.retryable = ae.status >= 500 || ae.status == http.StatusTooManyRequests
		return ae
	}
	// no HTTP answer: the token endpoint could not be reached
	return &authError{code: "TokenEndpointUnreachable", message: "could not reach the token endpoint", retryable: true, err: err}
}
