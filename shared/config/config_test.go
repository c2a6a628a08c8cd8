package config

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func lookup(m map[string]string) Lookup {
	return func(k string) (string, bool) { v, ok := m[k]; return v, ok }
}

func TestLocalDefaults(t *testing.T) {
	c, err := Load(lookup(nil))
	if err != nil {
		t.Fatalf("Load with no settings in local mode: %v", err)
	}
	if !c.Local || !c.Sandbox() {
		t.Errorf("Local=%v Sandbox=%v, want both true without FUNCTIONS_CUSTOMHANDLER_PORT and DATAVERSE_URL", c.Local, c.Sandbox())
	}
	if c.ListenAddr != "127.0.0.1:7071" || c.StoreCurrencyCode != "USD" || c.PriceListName != "nopCommerce USD" ||
		c.AutoSyncPeriod != 60*time.Minute || !c.AutoSyncEnabled || c.DeletePolicy != DeleteDeactivate ||
		!c.WritesEnabled || c.SyncImages || c.StateTable != "syncstate" || c.UnitGroupName != "Default Unit" || c.BulkSize != 100 {
		t.Errorf("defaults not applied: %+v", c)
	}
}

func TestAzureRequiresSettingsAndNamesThem(t *testing.T) {
	_, err := Load(lookup(map[string]string{"FUNCTIONS_CUSTOMHANDLER_PORT": "4567"}))
	var ce *Error
	if !errors.As(err, &ce) {
		t.Fatalf("want *Error, got %v", err)
	}
	for _, name := range []string{"DATAVERSE_URL", "DATAVERSE_TENANT_ID", "DATAVERSE_CLIENT_ID", "DATAVERSE_CLIENT_SECRET",
		"WEBHOOK_SECRET", "STORE_CURRENCY_CODE", "ServiceBusConnection__fullyQualifiedNamespace", "STATE_STORAGE_CONNECTION_STRING"} {
		if !strings.Contains(err.Error(), name+" ") {
			t.Errorf("error does not name %s:\n%v", name, err)
		}
	}
}

func validAzure() map[string]string {
	return map[string]string{
		"FUNCTIONS_CUSTOMHANDLER_PORT":                  "4567",
		"DATAVERSE_URL":                                 "https://contoso.crm.dynamics.com/",
		"DATAVERSE_TENANT_ID":                           "8c6f8a4e-1111-4b4b-9a9a-000000000001",
		"DATAVERSE_CLIENT_ID":                           "8c6f8a4e-2222-4b4b-9a9a-000000000002",
		"KEY_VAULT_URL":                                 "https://kv-test.vault.azure.net",
		"STORE_CURRENCY_CODE":                           "eur",
		"ServiceBusConnection__fullyQualifiedNamespace": "sb-test.servicebus.windows.net",
		"AzureWebJobsStorage__accountName":              "sttest",
	}
}

func TestAzureValid(t *testing.T) {
	c, err := Load(lookup(validAzure()))
	if err != nil {
		t.Fatal(err)
	}
	if c.Local || c.HandlerPort != 4567 || c.DataverseURL != "https://contoso.crm.dynamics.com" || c.StoreCurrencyCode != "EUR" ||
		c.PriceListName != "nopCommerce EUR" || c.ClientSecretName != "dataverse-client-secret" || c.WebhookSecretName != "webhook-secret" {
		t.Errorf("unexpected config: %+v", c)
	}
}

// Outside the public cloud the state table is at the account's own endpoint.
func TestTableServiceURI(t *testing.T) {
	m := validAzure()
	m["AzureWebJobsStorage__tableServiceUri"] = "https://sttest.table.core.usgovcloudapi.net/"
	c, err := Load(lookup(m))
	if err != nil || c.TableServiceURL != "https://sttest.table.core.usgovcloudapi.net/" {
		t.Fatalf("%v %+v", err, c)
	}
	delete(m, "AzureWebJobsStorage__accountName") // the URI alone is enough for the state table
	if _, err := Load(lookup(m)); err != nil {
		t.Errorf("tableServiceUri without accountName: %v", err)
	}
}

func TestMalformedSettingsAreNamed(t *testing.T) {
	cases := map[string]string{
		"DATAVERSE_URL":                                 "http://contoso.crm.dynamics.com",
		"DATAVERSE_TENANT_ID":                           "not-a-guid",
		"STORE_CURRENCY_CODE":                           "EURO",
		"AUTO_SYNC_ENABLED":                             "sometimes",
		"AUTO_SYNC_PERIOD_MINUTES":                      "0",
		"DELETE_POLICY":                                 "shred",
		"SYNC_IMAGES":                                   "yes please",
		"DATAVERSE_WRITES_ENABLED":                      "maybe",
		"DATAVERSE_BULK_SIZE":                           "1001",
		"SYNC_STATE_TABLE":                              "sync-state",
		"KEY_VAULT_URL":                                 "kv",
		"FUNCTIONS_CUSTOMHANDLER_PORT":                  "http",
		"ServiceBusConnection__fullyQualifiedNamespace": "https://sb-test.servicebus.windows.net/",
		"AzureWebJobsStorage__accountName":              "St_Test",
		"STATE_STORAGE_CONNECTION_STRING":               "not-a-connection-string",
		"AzureWebJobsStorage__tableServiceUri":          "sttest.table.core.usgovcloudapi.net",
		"AZURE_CLIENT_ID":                               "/subscriptions/x/resourceGroups/rg/providers/Microsoft.ManagedIdentity/userAssignedIdentities/id-app",
	}
	more := [][2]string{
		{"SYNC_STATE_TABLE", "Tables"}, // reserved by Table Storage
		{"KEY_VAULT_URL", "https://kv-nopsync.vault.azure.net/secrets/webhook-secret"},
		{"WEBHOOK_SECRET_NAME", "webhook_secret"},
		{"DATAVERSE_CLIENT_SECRET_NAME", "dataverse client secret"},
		{"NOP_DB_CONNECTION_SECRET_NAME", "nop.db.connection"},
		{"WEBHOOK_SECRET_NAME", strings.Repeat("a", 128)},
	}
	for name, bad := range cases {
		more = append(more, [2]string{name, bad})
	}
	for _, c := range more {
		name, bad := c[0], c[1]
		m := validAzure()
		m[name] = bad
		_, err := Load(lookup(m))
		if err == nil || !strings.Contains(err.Error(), name+" ") {
			t.Errorf("%s=%q: want an error naming it, got %v", name, bad, err)
		}
	}
}

// The state store's connection string is checked at start, as the Table client reads it,
// and the error never repeats it (it holds the account key).
func TestStateConnectionString(t *testing.T) {
	const key = "c2VjcmV0LWtleS1ub3QtcmVhbA=="
	for s, ok := range map[string]bool{
		"DefaultEndpointsProtocol=https;AccountName=sttest;AccountKey=" + key + ";EndpointSuffix=core.windows.net":                                 true,
		"DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey=" + key + ";TableEndpoint=http://127.0.0.1:10002/devstoreaccount1;": true,
		"AccountName=sttest;SharedAccessSignature=sv=2024&sig=abc":                                                                                 true,
		"TableEndpoint=https://sttest.table.core.windows.net/;SharedAccessSignature=sv=2024&sig=abc":                                               false, // aztables needs AccountName
		"UseDevelopmentStorage=true":                false, // not understood by aztables
		"AccountName=sttest":                        false,
		"AccountName=sttest;AccountKey=not*base64!": false, // aztables fails decoding it, after start
		"AccountKey=" + key:                         false,
		"AccountName=sttest;AccountKey=" + key + ";TableEndpoint=sttest.table": false,
		"sttest " + key: false,
	} {
		m := validAzure()
		m["STATE_STORAGE_CONNECTION_STRING"] = s
		_, err := Load(lookup(m))
		if (err == nil) != ok {
			t.Errorf("%q: %v, want ok=%v", s, err, ok)
		}
		if err != nil && (strings.Contains(err.Error(), key) || !strings.Contains(err.Error(), "STATE_STORAGE_CONNECTION_STRING")) {
			t.Errorf("%q: the error repeats the key or does not name the setting: %v", s, err)
		}
	}
}

// A Key Vault reference App Service could not resolve reaches the app as the value; it
// stops the app naming the setting, instead of being taken for the secret.
func TestUnresolvedKeyVaultReference(t *testing.T) {
	m := validAzure()
	m["WEBHOOK_SECRET"] = "@Microsoft.KeyVault(SecretUri=https://kv-test.vault.azure.net/secrets/webhook-secret/)"
	m["DATAVERSE_CLIENT_SECRET"] = " @Microsoft.KeyVault(VaultName=kv-test;SecretName=dataverse-client-secret)"
	_, err := Load(lookup(m))
	for _, name := range []string{"WEBHOOK_SECRET", "DATAVERSE_CLIENT_SECRET"} {
		if err == nil || strings.Count(err.Error(), name+" is a Key Vault reference") != 1 {
			t.Errorf("%s: %v, want one error naming it", name, err)
		}
	}
}

// A secret pasted into the wrong setting is named, not repeated: the error stops the app
// and is logged at every restart.
func TestPastedSecretsNotRepeated(t *testing.T) {
	const secret = "c2VjcmV0LW5vdC1yZWFs"
	for name, v := range map[string]string{
		"ServiceBusConnection__fullyQualifiedNamespace": "Endpoint=sb://sb-x.servicebus.windows.net/;SharedAccessKeyName=RootManageSharedAccessKey;SharedAccessKey=" + secret,
		"AzureWebJobsStorage__accountName":              "DefaultEndpointsProtocol=https;AccountName=st;AccountKey=" + secret,
		"AzureWebJobsStorage__tableServiceUri":          "https://st.table.core.windows.net/?sv=2024&sig=" + secret,
		"NOP_DB_PROVIDER":                               "postgres://reader:" + secret + "@db/nop",
	} {
		m := validAzure()
		m[name] = v
		_, err := Load(lookup(m))
		if err == nil || !strings.Contains(err.Error(), name) {
			t.Errorf("%s: %v, want an error naming it", name, err)
		} else if strings.Contains(strings.ToLower(err.Error()), strings.ToLower(secret)) {
			t.Errorf("%s: the error repeats the secret: %v", name, err)
		}
	}
}

func TestLocalSettingsFileAndEnvironmentWins(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "local.settings.json")
	if err := os.WriteFile(p, []byte(`{"IsEncrypted":false,"Values":{"STORE_CURRENCY_CODE":"GBP","AUTO_SYNC_PERIOD_MINUTES":5,"LISTEN_ADDR":"127.0.0.1:9999"}}`), 0o600); err != nil {
		t.Fatal(err)
	}
	get, err := Source(lookup(map[string]string{"LISTEN_ADDR": "127.0.0.1:8888"}), p)
	if err != nil {
		t.Fatal(err)
	}
	c, err := Load(get)
	if err != nil {
		t.Fatal(err)
	}
	if c.StoreCurrencyCode != "GBP" || c.AutoSyncPeriod != 5*time.Minute || c.ListenAddr != "127.0.0.1:8888" {
		t.Errorf("file values or env precedence wrong: currency %s period %s listen %s", c.StoreCurrencyCode, c.AutoSyncPeriod, c.ListenAddr)
	}
	if _, err := Source(lookup(nil), filepath.Join(dir, "missing.json")); err != nil {
		t.Errorf("a missing local.settings.json must be fine: %v", err)
	}
	os.WriteFile(p, []byte(`{"IsEncrypted":true,"Values":{}}`), 0o600)
	if _, err := Source(lookup(nil), p); err == nil || !strings.Contains(err.Error(), "encrypted") {
		t.Errorf("encrypted file: want a clear error, got %v", err)
	}
	os.WriteFile(p, []byte(`{`), 0o600)
	if _, err := Source(lookup(nil), p); err == nil || !strings.Contains(err.Error(), "local.settings.json") {
		t.Errorf("malformed file: want an error naming it, got %v", err)
	}
}

func TestKnownHasNoDuplicates(t *testing.T) {
	seen := map[string]bool{}
	for _, s := range Known() {
		if seen[s.Name] {
			t.Errorf("%s listed twice", s.Name)
		}
		seen[s.Name] = true
	}
}

func TestBulkSizeSetting(t *testing.T) {
	for v, want := range map[string]int{"1": 1, "250": 250, "1000": 1000, "0": -1, "-5": -1, "many": -1} {
		m := validAzure()
		m["DATAVERSE_BULK_SIZE"] = v
		c, err := Load(lookup(m))
		switch {
		case want < 0 && (err == nil || !strings.Contains(err.Error(), "DATAVERSE_BULK_SIZE ")):
			t.Errorf("DATAVERSE_BULK_SIZE=%q: want an error naming it, got %v", v, err)
		case want > 0 && (err != nil || c.BulkSize != want):
			t.Errorf("DATAVERSE_BULK_SIZE=%q: %v, bulk size %v", v, err, c)
		}
	}
}
