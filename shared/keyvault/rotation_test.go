package keyvault_test

import (
	"context"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/nopsync/nopsync/shared/dataverse"
	"github.com/nopsync/nopsync/shared/dataverse/dataversetest"
)

// The whole rotation story: the client secret lives in Key Vault, is cached
// for the TTL, and after a rotation (new secret in Entra and in the vault,
// old token expired) the Dataverse client re-reads it and carries on.
func TestDataverseClientPicksUpRotatedVaultSecret(t *testing.T) {
	sim := dataversetest.NewServer(dataversetest.Options{TokenLifetime: 300 * time.Millisecond})
	t.Cleanup(sim.Close)
	v := newFakeVault(t)
	exp := time.Now().Add(10 * 24 * time.Hour).Truncate(time.Second).UTC()
	v.set("dataverse-client-secret", sim.ClientSecret(), exp)
	secrets := newSecrets(t, v, &clock{t: time.Now()}) // TTL 1 minute on a clock that stands still

	c, err := sim.Client(dataverse.Options{Secret: secrets.Source("dataverse-client-secret")})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if _, err := c.WhoAmI(ctx); err != nil {
		t.Fatal(err)
	}
	if got, err := c.SecretExpires(ctx); err != nil || got == nil || !got.Equal(exp) {
		t.Fatalf("SecretExpires = %v %v", got, err)
	}
	rotated := "fake-rotated-" + uuid.NewString()
	sim.SetClientSecret(rotated)
	v.set("dataverse-client-secret", rotated, exp.Add(365*24*time.Hour))
	time.Sleep(400 * time.Millisecond) // the old token expires; the cache still holds the old secret
	if _, err := c.WhoAmI(ctx); err != nil {
		t.Fatalf("after rotation: %v", err)
	}
	if got, _ := c.SecretExpires(ctx); got == nil || !got.Equal(exp.Add(365*24*time.Hour)) {
		t.Fatalf("expiry after rotation = %v", got)
	}
	if n := v.reads.Load(); n != 2 {
		t.Fatalf("vault reads = %d, want 2 (first read, re-read after rejection)", n)
	}
}
