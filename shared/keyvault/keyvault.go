// Package keyvault reads the app's secrets (Dataverse client secret, webhook
// secret) from Azure Key Vault with azsecrets, caching them for a while and
// re-reading on demand so a rotated secret is picked up without a restart.
package keyvault

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azidentity"
	"github.com/Azure/azure-sdk-for-go/sdk/security/keyvault/azsecrets"

	"github.com/nopsync/nopsync/shared/dataverse"
)

// DefaultTTL is how long a secret read from the vault is reused.
const DefaultTTL = 10 * time.Minute

// Options configure Secrets.
type Options struct {
	// TTL of the cache (default DefaultTTL).
	TTL time.Duration
	// ClientOptions for azsecrets (transport, retries; tests set
	// DisableChallengeResourceVerification).
	ClientOptions *azsecrets.ClientOptions
	// Now is the clock (default time.Now).
	Now func() time.Time
}

// Getter is the part of azsecrets.Client that Secrets uses.
type Getter interface {
	GetSecret(ctx context.Context, name, version string, o *azsecrets.GetSecretOptions) (azsecrets.GetSecretResponse, error)
}

// Secrets reads secrets from one vault and caches them for TTL.
type Secrets struct {
	get Getter
	ttl time.Duration
	now func() time.Time

	mu    sync.Mutex
	cache map[string]entry
	// one read at a time per name, so a burst of misses costs one vault call
	inflight map[string]*call
}

type entry struct {
	value   string
	expires *time.Time
	readAt  time.Time
}

type call struct {
	done chan struct{}
	e    entry
	err  error
}

// New builds a Secrets for vaultURL (https://<name>.vault.azure.net/),
// authenticating with cred (the app's managed identity: see Credential).
func New(vaultURL string, cred azcore.TokenCredential, o Options) (*Secrets, error) {
	if vaultURL == "" {
		return nil, errors.New("keyvault: vault URL is required")
	}
	c, err := azsecrets.NewClient(vaultURL, cred, o.ClientOptions)
	if err != nil {
		return nil, fmt.Errorf("keyvault: %w", err)
	}
	return NewWithGetter(c, o), nil
}

// NewWithGetter builds a Secrets over any Getter (an azsecrets.Client).
func NewWithGetter(g Getter, o Options) *Secrets {
	if o.TTL <= 0 {
		o.TTL = DefaultTTL
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	return &Secrets{get: g, ttl: o.TTL, now: o.Now, cache: map[string]entry{}, inflight: map[string]*call{}}
}

// Credential is the app's managed identity: the user-assigned one with client id
// clientID (the AZURE_CLIENT_ID setting) when it is set, else the default chain (which
// also covers developer sign-ins for local runs).
func Credential(clientID string) (azcore.TokenCredential, error) {
	if id := clientID; id != "" {
		return azidentity.NewManagedIdentityCredential(&azidentity.ManagedIdentityCredentialOptions{ID: azidentity.ClientID(id)})
	}
	return azidentity.NewDefaultAzureCredential(nil)
}

// Get returns the secret's current value and its expiry (nil when the
// secret has none), from the cache when younger than TTL.
func (s *Secrets) Get(ctx context.Context, name string) (string, *time.Time, error) {
	s.mu.Lock()
	if e, ok := s.cache[name]; ok && s.now().Sub(e.readAt) < s.ttl {
		s.mu.Unlock()
		return e.value, e.expires, nil
	}
	if c, ok := s.inflight[name]; ok {
		s.mu.Unlock()
		select {
		case <-c.done:
			return c.e.value, c.e.expires, c.err
		case <-ctx.Done():
			return "", nil, ctx.Err()
		}
	}
	c := &call{done: make(chan struct{})}
	s.inflight[name] = c
	s.mu.Unlock()

	c.e, c.err = s.read(ctx, name)
	s.mu.Lock()
	// an Invalidate during the read dropped this call: its value may predate
	// a rotation, so it answers its own callers but is not cached
	if s.inflight[name] == c {
		delete(s.inflight, name)
		if c.err == nil {
			s.cache[name] = c.e
		}
	}
	s.mu.Unlock()
	close(c.done)
	return c.e.value, c.e.expires, c.err
}

func (s *Secrets) read(ctx context.Context, name string) (entry, error) {
	resp, err := s.get.GetSecret(ctx, name, "", nil)
	if err != nil {
		return entry{}, fmt.Errorf("keyvault: reading secret %q: %w", name, err)
	}
	if resp.Value == nil {
		return entry{}, fmt.Errorf("keyvault: secret %q has no value", name)
	}
	e := entry{value: *resp.Value, readAt: s.now()}
	if resp.Attributes != nil && resp.Attributes.Expires != nil {
		t := resp.Attributes.Expires.UTC()
		e.expires = &t
	}
	return e, nil
}

// Invalidate drops the cached value so the next Get reads the vault (and
// does not join a read that was already under way).
func (s *Secrets) Invalidate(name string) {
	s.mu.Lock()
	delete(s.cache, name)
	delete(s.inflight, name)
	s.mu.Unlock()
}

// Source adapts one named secret to dataverse.SecretSource (with expiry).
func (s *Secrets) Source(name string) *Source { return &Source{s: s, name: name} }

// Source is one vault secret as a dataverse.SecretSource.
type Source struct {
	s    *Secrets
	name string
}

var (
	_ dataverse.SecretSource  = (*Source)(nil)
	_ dataverse.SecretExpirer = (*Source)(nil)
)

func (src *Source) Secret(ctx context.Context) (string, error) {
	v, _, err := src.s.Get(ctx, src.name)
	return v, err
}

func (src *Source) Invalidate() { src.s.Invalidate(src.name) }

// SecretExpires is the secret's Key Vault expiry (nil: none set).
func (src *Source) SecretExpires(ctx context.Context) (*time.Time, error) {
	_, exp, err := src.s.Get(ctx, src.name)
	return exp, err
}

// OrValue is src, with value (the secret given directly) used when the vault can't give
// it: no such secret, or the vault unreachable. With KEY_VAULT_URL set the client secret
// is read from the vault (docs/operations.md), so its expiry reaches the status page and
// a rotation is picked up; DATAVERSE_CLIENT_SECRET set as well (a Key Vault reference,
// resolved by App Service) still works when the vault holds no secret of that name.
func (src *Source) OrValue(value string) *Fallback { return &Fallback{src: src, value: value} }

// Fallback is a vault secret with a value to use when the vault can't give it.
type Fallback struct {
	src   *Source
	value string
}

var (
	_ dataverse.SecretSource  = (*Fallback)(nil)
	_ dataverse.SecretExpirer = (*Fallback)(nil)
)

// fallbackWait bounds a vault read before the value given directly is used instead.
const fallbackWait = 10 * time.Second

func (f *Fallback) Secret(ctx context.Context) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, fallbackWait)
	defer cancel()
	if v, err := f.src.Secret(ctx); err == nil {
		return v, nil
	}
	return f.value, nil
}

func (f *Fallback) Invalidate() { f.src.Invalidate() }

// SecretExpires is the vault secret's expiry; nil when the vault has no such secret
// (the value given directly has no expiry the app can know).
func (f *Fallback) SecretExpires(ctx context.Context) (*time.Time, error) {
	exp, err := f.src.SecretExpires(ctx)
	if IsNotFound(err) {
		return nil, nil
	}
	return exp, err
}

// IsNotFound reports whether err is the vault's answer that it has no such secret.
func IsNotFound(err error) bool {
	var re *azcore.ResponseError
	return errors.As(err, &re) && re.StatusCode == 404
}

// Static is the secret given directly (DATAVERSE_CLIENT_SECRET).
func Static(value string) dataverse.SecretSource { return dataverse.StaticSecret(value) }
