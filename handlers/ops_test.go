package main

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/security/keyvault/azsecrets"

	"github.com/nopsync/nopsync/shared/config"
	"github.com/nopsync/nopsync/shared/dataverse"
	"github.com/nopsync/nopsync/shared/dataverse/dataversetest"
	"github.com/nopsync/nopsync/shared/delivery"
	"github.com/nopsync/nopsync/shared/keyvault"
)

// fakeVault stands in for Key Vault: the value an admin last put there, and its expiry.
type fakeVault struct {
	mu      sync.Mutex
	value   string
	expires time.Time
	reads   int
}

func (v *fakeVault) GetSecret(_ context.Context, name, _ string, _ *azsecrets.GetSecretOptions) (azsecrets.GetSecretResponse, error) {
	v.mu.Lock()
	defer v.mu.Unlock()
	v.reads++
	if name != "dataverse-client-secret" {
		return azsecrets.GetSecretResponse{}, errors.New("no such secret " + name)
	}
	val, exp := v.value, v.expires
	return azsecrets.GetSecretResponse{Secret: azsecrets.Secret{Value: &val, Attributes: &azsecrets.SecretAttributes{Expires: &exp}}}, nil
}

func (v *fakeVault) set(s string) { v.mu.Lock(); v.value = s; v.mu.Unlock() }

// simEnv points local mode at sim.
func simEnv(t *testing.T, sim *dataversetest.Server, extra map[string]string) map[string]string {
	env := map[string]string{
		"LOCAL_DATA_DIR": t.TempDir(), "DATAVERSE_URL": sim.URL(), "DATAVERSE_TENANT_ID": sim.TenantID, "DATAVERSE_CLIENT_ID": sim.ClientID,
		"DATAVERSE_CLIENT_SECRET": "unused-when-a-vault-is-given", "AZURE_AUTHORITY_HOST": sim.AuthorityHost(),
	}
	for k, v := range extra {
		env[k] = v
	}
	return env
}

// withVault makes the Dataverse client read its secret from vault (cached, re-read after
// Entra rejects it), trusting sim's CA, with short retries.
func withVault(sim *dataversetest.Server, vault *fakeVault) func(*dataverse.Options) {
	secrets := keyvault.NewWithGetter(vault, keyvault.Options{TTL: time.Hour})
	return func(o *dataverse.Options) {
		o.RootCAs = sim.CertPool()
		o.Secret = secrets.Source("dataverse-client-secret")
		o.MaxRetries = 2
		o.RetryDelay = 10 * time.Millisecond
		o.MaxRetryDelay = 2 * time.Second
	}
}

func customer(id int, seq int) []byte {
	return []byte(fmt.Sprintf(`{"id":"c-%d-%d","type":"customer.updated","occurredOnUtc":"2026-11-25T09:00:00Z","sequence":%d,"data":{"id":%d,"customerGuid":"5a3e7c1e-2f4b-4d7a-8a0e-6c1d2b3a4f42","email":"customer%d@example.com","username":null,"firstName":"Test","lastName":"Customer %d","company":null,"phone":null,"isGuest":false,"isRegistered":true,"active":true,"deleted":false,"createdOnUtc":"2026-11-25T09:00:00Z","address":null}}`, id, seq, seq, id, id, id))
}

func contactsWithEmail(sim *dataversetest.Server, email string) int {
	n := 0
	for _, r := range sim.Rows("contacts") {
		if r["emailaddress1"] == email {
			n++
		}
	}
	return n
}

// TestSecretRotatedMidStream: the client secret is rotated in Entra and Key Vault while
// events flow; the app picks up the new one without a restart and nothing is lost.
func TestSecretRotatedMidStream(t *testing.T) {
	sim := dataversetest.NewServer(dataversetest.Options{ClientSecret: "secret-one-not-real", TokenLifetime: 2 * time.Second})
	defer sim.Close()
	vault := &fakeVault{value: "secret-one-not-real", expires: time.Now().Add(20 * 24 * time.Hour)}
	base := startLocal(t, simEnv(t, sim, nil), &localOptions{tuneDataverse: withVault(sim, vault)})

	for i := 1; i <= 5; i++ {
		if code, body := post(t, base+"/api/events/customer", "application/json", customer(i, 1), nil); code != 202 {
			t.Fatalf("POST %d: %d %v", i, code, body)
		}
	}
	waitFor(t, "the first five contacts", func() bool { return sim.Count("contacts") == 5 })

	// Rotation: the new secret goes into Key Vault and Entra drops the old one.
	vault.set("secret-two-not-real")
	sim.SetClientSecret("secret-two-not-real")
	time.Sleep(2100 * time.Millisecond) // the cached token expires
	for i := 6; i <= 10; i++ {
		if code, body := post(t, base+"/api/events/customer", "application/json", customer(i, 1), nil); code != 202 {
			t.Fatalf("POST %d: %d %v", i, code, body)
		}
	}
	waitFor(t, "all ten contacts after the rotation", func() bool { return sim.Count("contacts") == 10 })
	for i := 1; i <= 10; i++ {
		if n := contactsWithEmail(sim, fmt.Sprintf("customer%d@example.com", i)); n != 1 {
			t.Errorf("customer %d: %d contacts", i, n)
		}
	}
	_, st := getJSON(t, base+"/api/status")
	secret, _ := st["secret"].(map[string]any)
	if secret["daysLeft"] == nil || secret["warning"] == nil {
		t.Errorf("status must show the expiry with a warning (20 days left): %v", secret)
	}
	if q := st["queues"].(map[string]any)["customer"].(map[string]any); q["deadLettered"] != float64(0) {
		t.Errorf("dead letters after the rotation: %v", q)
	}
}

// TestDataverseUnreachableShownInStatus: with a bad secret the status page says so, the
// store's events are still accepted, and they land once the secret is fixed.
func TestDataverseUnreachableShownInStatus(t *testing.T) {
	sim := dataversetest.NewServer(dataversetest.Options{ClientSecret: "the-right-secret-not-real"})
	defer sim.Close()
	vault := &fakeVault{value: "a-wrong-secret-not-real", expires: time.Now().Add(365 * 24 * time.Hour)}
	base := startLocal(t, simEnv(t, sim, map[string]string{"AUTO_SYNC_PERIOD_MINUTES": "1"}), &localOptions{tuneDataverse: withVault(sim, vault), timerEvery: 200 * time.Millisecond})

	if code, body := post(t, base+"/api/events/customer", "application/json", customer(1, 1), nil); code != 202 {
		t.Fatalf("events must be accepted while Dataverse is unreachable: %d %v", code, body)
	}
	_, st := getJSON(t, base+"/api/status")
	dv, _ := st["dataverse"].(map[string]any)
	if st["healthy"] != false || dv["reachable"] != false || !strings.Contains(strings.ToLower(fmt.Sprint(dv["error"])), "auth") {
		t.Errorf("status must show Dataverse unreachable with the reason: healthy=%v %v", st["healthy"], dv)
	}
	if strings.Contains(fmt.Sprint(st), "a-wrong-secret-not-real") {
		t.Error("the status page shows the secret")
	}
	waitFor(t, "the failure recorded", func() bool {
		_, es := getJSON(t, base+"/api/status/customer/1")
		return es["status"] == "failed" && es["transient"] == true
	})
	vault.set("the-right-secret-not-real")
	waitFor(t, "the event to land once the secret is fixed", func() bool { return sim.Count("contacts") == 1 })
}

// TestWritesDisabled: DATAVERSE_WRITES_ENABLED=false records events as pending and writes
// nothing.
func TestWritesDisabled(t *testing.T) {
	sim := dataversetest.NewServer(dataversetest.Options{})
	defer sim.Close()
	base := startLocal(t, simEnv(t, sim, map[string]string{"DATAVERSE_CLIENT_SECRET": sim.ClientSecret(), "DATAVERSE_WRITES_ENABLED": "false"}), &localOptions{tuneDataverse: trust(sim)})
	if code, _ := post(t, base+"/api/events/customer", "application/json", example(t, "customer-created.json"), nil); code != 202 {
		t.Fatal(code)
	}
	waitFor(t, "the event recorded as pending", func() bool {
		_, es := getJSON(t, base+"/api/status/customer/42")
		return es["status"] == "pending"
	})
	time.Sleep(200 * time.Millisecond)
	if n := sim.Stats().RowsWritten; n != 0 {
		t.Errorf("%d rows written with writes disabled", n)
	}
}

// TestReplayedDeadLetterLandsOnce: an event dead-lettered while Dataverse failed is
// replayed by the admin and lands exactly once.
func TestReplayedDeadLetterLandsOnce(t *testing.T) {
	sim := dataversetest.NewServer(dataversetest.Options{})
	defer sim.Close()
	sim.SetFaults(dataversetest.Faults{Error503Rate: 1})
	tune := func(o *dataverse.Options) {
		o.RootCAs = sim.CertPool()
		o.MaxRetries = 1
		o.RetryDelay = time.Millisecond
	}
	// No delayed copies: every failure fails the invocation, so the message is
	// dead-lettered after its 10 deliveries, through the host protocol as in Azure.
	noCopies := func(o *delivery.Options) { o.RetryFor = -1 }
	base := startLocal(t, simEnv(t, sim, map[string]string{"DATAVERSE_CLIENT_SECRET": sim.ClientSecret(), "AUTO_SYNC_ENABLED": "false"}), &localOptions{tuneDataverse: tune, tuneDelivery: noCopies})
	ev := example(t, "customer-created.json")
	if code, _ := post(t, base+"/api/events/customer", "application/json", ev, nil); code != 202 {
		t.Fatal(code)
	}
	waitFor(t, "the event dead-lettered", func() bool {
		_, dl := getJSON(t, base+"/api/deadletters/customer")
		return dl["count"] == float64(1)
	})
	// The broker's reason and fixed text, and the app's own reason from the state store
	// (the host discarded the failed answers).
	_, dl := getJSON(t, base+"/api/deadletters/customer")
	item := dl["deadLetters"].([]any)[0].(map[string]any)
	reason, _ := item["reason"].(string)
	if item["id"] != "0b4f8f0e-6a0e-4f43-9d61-2c3b1b1e0001" || item["brokerReason"] != "MaxDeliveryCountExceeded" ||
		item["description"] != "Message could not be consumed after 10 delivery attempts." || !strings.Contains(reason, "503") ||
		item["autoReplay"] != true {
		t.Errorf("dead letter: %v", item)
	}
	sim.SetFaults(dataversetest.Faults{})
	code, body := post(t, base+"/api/deadletters/customer/replay", "application/json", nil, nil)
	if code != 200 || body["count"] != float64(1) {
		t.Fatalf("replay: %d %v", code, body)
	}
	waitFor(t, "the replayed event to land", func() bool { return sim.Count("contacts") == 1 })
	// The store re-sends the same event, and the admin replays again: still one contact.
	post(t, base+"/api/events/customer", "application/json", ev, nil)
	post(t, base+"/api/deadletters/customer/replay", "application/json", nil, nil)
	time.Sleep(300 * time.Millisecond)
	if n := contactsWithEmail(sim, "ada.lovelace@example.com"); n != 1 {
		t.Errorf("%d contacts after replays, want 1", n)
	}
}

// TestMissingPrivilegeIsASetupProblem: a role without a privilege is shown on the status
// page (table and operation), the entity is recorded failed for retry instead of its
// message being redelivered until it dead-letters, and auto-sync lands it once the role
// is fixed.
func TestMissingPrivilegeIsASetupProblem(t *testing.T) {
	sim := dataversetest.NewServer(dataversetest.Options{})
	defer sim.Close()
	sim.DenyPrivilege("contacts", dataversetest.PrivCreate)
	tune := func(o *dataverse.Options) {
		o.RootCAs = sim.CertPool()
		o.Secret = dataverse.StaticSecret(sim.ClientSecret())
	}
	base := startLocal(t, simEnv(t, sim, map[string]string{"AUTO_SYNC_PERIOD_MINUTES": "1"}), &localOptions{tuneDataverse: tune, timerEvery: 200 * time.Millisecond})
	if code, body := post(t, base+"/api/events/customer", "application/json", customer(1, 1), nil); code != 202 {
		t.Fatalf("POST: %d %v", code, body)
	}
	waitFor(t, "the failure recorded for retry", func() bool {
		_, es := getJSON(t, base+"/api/status/customer/1")
		return es["status"] == "failed" && es["transient"] == true && strings.Contains(fmt.Sprint(es["lastError"]), "prvCreateContact")
	})
	_, st := getJSON(t, base+"/api/status")
	dv, _ := st["dataverse"].(map[string]any)
	if st["healthy"] != false || !strings.Contains(fmt.Sprint(dv["error"]), "refused to create contact") {
		t.Errorf("status must name the table and operation refused: healthy=%v %v", st["healthy"], dv)
	}
	if q := st["queues"].(map[string]any)["customer"].(map[string]any); q["deadLettered"] != float64(0) {
		t.Errorf("dead letters for a setup problem: %v", q)
	}
	// A retry of the failed entities (what auto-sync sends each period for records marked
	// transient, as this one is; asked for here rather than waited for) fails again while
	// the role lacks the privilege, still without a dead letter.
	resend := func() {
		t.Helper()
		if code, body := post(t, base+"/api/sync", "application/json", []byte(`{"entities":["customer"],"scope":"failed"}`), nil); code != 202 {
			t.Fatalf("POST /api/sync: %d %v", code, body)
		}
	}
	resend()
	waitFor(t, "the retry to fail again", func() bool {
		_, es := getJSON(t, base+"/api/status/customer/1")
		n, _ := es["attempts"].(float64)
		return n >= 2 && es["status"] == "failed"
	})
	// The role is fixed: the next retry lands it.
	sim.AllowPrivilege("contacts", dataversetest.PrivCreate)
	resend()
	waitFor(t, "the customer to land once the role is fixed", func() bool { return sim.Count("contacts") == 1 })
	waitFor(t, "the customer recorded synced", func() bool {
		_, es := getJSON(t, base+"/api/status/customer/1")
		return es["status"] == "synced"
	})
}

// With KEY_VAULT_URL set, the client secret is the vault's (docs/operations.md), even
// when DATAVERSE_CLIENT_SECRET is set too (a Key Vault reference App Service resolved):
// its expiry reaches the status page, so the 30-day warning can show.
func TestClientSecretFromTheVaultWithTheSettingToo(t *testing.T) {
	env := map[string]string{
		"FUNCTIONS_CUSTOMHANDLER_PORT": "7777", "DATAVERSE_URL": "https://contoso.crm.dynamics.com",
		"DATAVERSE_TENANT_ID": "11111111-1111-1111-1111-111111111111", "DATAVERSE_CLIENT_ID": "22222222-2222-2222-2222-222222222222",
		"KEY_VAULT_URL": "https://kv-nopsync.vault.azure.net", "STORE_CURRENCY_CODE": "USD",
		"DATAVERSE_CLIENT_SECRET":                       "resolved-reference-not-a-real-secret",
		"ServiceBusConnection__fullyQualifiedNamespace": "sb-x.servicebus.windows.net", "AzureWebJobsStorage__accountName": "stnopsync",
	}
	cfg, err := config.Load(func(k string) (string, bool) { v, ok := env[k]; return v, ok })
	if err != nil {
		t.Fatal(err)
	}
	exp := time.Now().Add(10 * 24 * time.Hour)
	vault := &fakeVault{value: "resolved-reference-not-a-real-secret", expires: exp}
	c, err := newDataverseClient(cfg, testLog(t), keyvault.NewWithGetter(vault, keyvault.Options{}), nil)
	if err != nil {
		t.Fatal(err)
	}
	if got, err := c.SecretExpires(context.Background()); err != nil || got == nil || !got.Equal(exp) {
		t.Errorf("secret expiry %v %v, want the vault's %v", got, err, exp)
	}
}
