package intake

import (
	"context"
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/nopsync/nopsync/shared/queue"
)

type nopSender struct{}

func (nopSender) Send(context.Context, string, []queue.Message) error { return nil }

// rotatingSecrets caches a secret the way the Key Vault source does; the vault itself
// already holds the new one.
type rotatingSecrets struct {
	mu               sync.Mutex
	cached, vault    string
	refreshes, reads int
}

func (r *rotatingSecrets) WebhookSecrets(context.Context) ([]string, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.reads++
	return []string{r.cached}, nil
}

func (r *rotatingSecrets) RefreshWebhookSecrets(context.Context) ([]string, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.refreshes++
	r.cached = r.vault
	return []string{r.cached}, nil
}

// TestRotatedSecretAcceptedAtOnce: a request signed with a secret newer than the cached
// one makes the intake re-read the secrets once, and is accepted.
func TestRotatedSecretAcceptedAtOnce(t *testing.T) {
	now := time.Date(2026, 11, 29, 12, 0, 0, 0, time.UTC)
	secrets := &rotatingSecrets{cached: "old-secret-not-real", vault: "new-secret-not-real"}
	in := New(Options{Sender: nopSender{}, Secrets: secrets, Now: func() time.Time { return now }})
	body := []byte(`{"id":"e1","type":"customer.updated","occurredOnUtc":"2026-11-29T11:59:00Z","data":{"id":1,"customerGuid":"5a3e7c1e-2f4b-4d7a-8a0e-6c1d2b3a4f42","email":"a@example.com","username":null,"firstName":null,"lastName":null,"company":null,"phone":null,"isGuest":false,"isRegistered":true,"active":true,"deleted":false,"createdOnUtc":"2026-11-29T11:00:00Z","address":null}}`)
	req := func(secret string) Response {
		h := http.Header{}
		h.Set("Content-Type", "application/json")
		h.Set(SignatureHeader, Sign(secret, now, body))
		return in.Handle(context.Background(), Request{Method: "POST", Entity: "customer", Header: h, Body: body, BodyPresent: true})
	}
	if r := req("new-secret-not-real"); r.Status != http.StatusAccepted {
		t.Fatalf("signed with the rotated secret: %d %s", r.Status, r.Body)
	}
	if secrets.refreshes != 1 {
		t.Errorf("refreshes = %d, want 1", secrets.refreshes)
	}
	if r := req("new-secret-not-real"); r.Status != http.StatusAccepted || secrets.refreshes != 1 {
		t.Errorf("second request: %d, refreshes %d (the fresh secret must now be cached)", r.Status, secrets.refreshes)
	}
	if r := req("wrong-secret-not-real"); r.Status != http.StatusUnauthorized {
		t.Errorf("wrong secret: %d", r.Status)
	}
}
