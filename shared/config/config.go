// Package config reads and validates the app's settings: app settings in Azure (environment
// variables), plus local.settings.json's "Values" in local mode. Environment variables win.
// Every setting the code reads is listed in Known, so infrastructure and docs can be checked
// against it.
package config

import (
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"
)

// Setting describes one setting the code reads.
type Setting struct {
	Name      string
	Default   string
	Required  bool // required in Azure (local mode has embedded defaults for some)
	Secret    bool // never logged or shown
	LocalOnly bool // meaningful only in local mode (not set in Azure)
	AzureOnly bool // set by the platform or only meaningful in Azure
	Doc       string
}

// Known lists every setting the code reads.
func Known() []Setting {
	return []Setting{
		{Name: "DATAVERSE_URL", Required: true, Doc: "Dataverse environment URL, e.g. https://contoso.crm.dynamics.com (local mode: empty = built-in sandbox)"},
		{Name: "DATAVERSE_TENANT_ID", Required: true, Doc: "directory (tenant) id of the app registration"},
		{Name: "DATAVERSE_CLIENT_ID", Required: true, Doc: "application (client) id of the app registration"},
		{Name: "DATAVERSE_CLIENT_SECRET", Secret: true, Doc: "client secret itself (local runs, or a Key Vault reference); else read from Key Vault"},
		{Name: "KEY_VAULT_URL", Doc: "vault holding the secrets, read with the app's managed identity"},
		{Name: "DATAVERSE_CLIENT_SECRET_NAME", Default: "dataverse-client-secret", Doc: "name of the client secret in the vault"},
		{Name: "WEBHOOK_SECRET", Secret: true, Doc: "signature secret itself; several may be given separated by commas during rotation"},
		{Name: "WEBHOOK_SECRET_NAME", Default: "webhook-secret", Doc: "name of the webhook secret in the vault"},
		{Name: "STORE_CURRENCY_CODE", Required: true, Doc: "the store's primary currency (ISO 4217); local mode defaults to USD"},
		{Name: "AUTO_SYNC_ENABLED", Default: "true", Doc: "enable auto synchronization"},
		{Name: "AUTO_SYNC_PERIOD_MINUTES", Default: "60", Doc: "auto synchronization period in minutes"},
		{Name: "DELETE_POLICY", Default: "deactivate", Doc: "deactivate, delete or ignore"},
		{Name: "PRICE_LIST_NAME", Doc: "price list name; default 'nopCommerce <STORE_CURRENCY_CODE>'"},
		{Name: "UNIT_GROUP_NAME", Default: "Default Unit", Doc: "unit group of synced products"},
		{Name: "SYNC_IMAGES", Default: "false", Doc: "copy the first product picture into entityimage"},
		{Name: "DATAVERSE_WRITES_ENABLED", Default: "true", Doc: "false makes the app read-only towards Dynamics 365"},
		{Name: "DATAVERSE_BULK_SIZE", Default: "100", Doc: "rows per bulk write request (1-1000); Microsoft's range starts at 100 with no plug-ins, and the Sales tables run pricing plug-ins"},
		{Name: "ServiceBusConnection__fullyQualifiedNamespace", Required: true, AzureOnly: true, Doc: "Service Bus namespace host name (identity-based)"},
		{Name: "STATE_STORAGE_CONNECTION_STRING", Secret: true, Doc: "Table Storage connection string for sync state (Azurite in local runs)"},
		{Name: "AzureWebJobsStorage__accountName", AzureOnly: true, Doc: "storage account of the app; its Table service holds sync state when no connection string is set"},
		{Name: "AzureWebJobsStorage__tableServiceUri", AzureOnly: true, Doc: "Table service URL of that account (the deployment sets the account's own endpoint, right in every cloud); empty: https://<account>.table.core.windows.net/"},
		{Name: "SYNC_STATE_TABLE", Default: "syncstate", Doc: "table name for sync state"},
		{Name: "AZURE_AUTHORITY_HOST", Doc: "Entra authority host for sovereign/private clouds"},
		{Name: "AZURE_CLIENT_ID", AzureOnly: true, Doc: "client id of the app's user-assigned managed identity"},
		{Name: "FUNCTIONS_CUSTOMHANDLER_PORT", AzureOnly: true, Doc: "set by the Functions host; absent = local mode"},
		{Name: "NOP_DB_PROVIDER", Doc: "store reader: the store database's engine, sqlserver, mysql or postgresql (nopCommerce's names); empty = reader off"},
		{Name: "NOP_DB_CONNECTION", Secret: true, Doc: "store reader: the database connection string itself (local runs and the agent); else read from Key Vault"},
		{Name: "NOP_DB_CONNECTION_SECRET_NAME", Default: "nop-db-connection", Doc: "store reader: name of the connection string in the vault of KEY_VAULT_URL"},
		{Name: "NOP_DB_MANAGED_IDENTITY", Default: "false", Doc: "store reader: true = Azure SQL with the app's managed identity (Entra authentication), no password"},
		{Name: "STORE_ID", Default: "1", Doc: "store reader: the nopCommerce store whose orders are read (multi-store installs)"},
		{Name: "STORE_URL", Doc: "store reader: the store's public URL, for picture URLs; empty = no pictures"},
		{Name: "AGENT_EVENTS_URL", LocalOnly: true, Doc: "push agent: the app's events URL, e.g. https://func-nopsync-x.azurewebsites.net/api/events"},
		{Name: "AGENT_FUNCTION_KEY", Secret: true, LocalOnly: true, Doc: "push agent: the function key sent as x-functions-key"},
		{Name: "AGENT_STATE_FILE", Default: "nopsync-agent.json", LocalOnly: true, Doc: "push agent: its checkpoint file (cursor and what was sent), so a restarted agent resumes"},
		{Name: "LISTEN_ADDR", Default: "127.0.0.1:7071", LocalOnly: true, Doc: "local mode: address of the public routes"},
		{Name: "LOCAL_DATA_DIR", Default: ".nopsync", LocalOnly: true, Doc: "local mode: folder of the embedded queue, state and sandbox"},
		{Name: "NOPSYNC_CPUPROFILE", LocalOnly: true, Doc: "write a CPU profile of the whole run to this file (scripts/bench); empty = none"},
	}
}

// DeletePolicy says what a nopCommerce delete does in Dynamics 365.
type DeletePolicy string

const (
	DeleteDeactivate DeletePolicy = "deactivate"
	DeleteDelete     DeletePolicy = "delete"
	DeleteIgnore     DeletePolicy = "ignore"
)

// Config is the validated settings.
type Config struct {
	Local       bool   // no FUNCTIONS_CUSTOMHANDLER_PORT: the whole app in one process
	HandlerPort int    // Azure: the port the host calls
	ListenAddr  string // local mode
	CPUProfile  string // file for a CPU profile of the run; "" none
	DataDir     string // local mode

	DataverseURL          string // "" in local mode = sandbox
	TenantID              string
	ClientID              string
	ClientSecret          string
	KeyVaultURL           string
	ClientSecretName      string
	WebhookSecrets        []string
	WebhookSecretName     string
	AuthorityHost         string
	ManagedIdentityClient string

	StoreCurrencyCode     string
	AutoSyncEnabled       bool
	AutoSyncPeriod        time.Duration
	DeletePolicy          DeletePolicy
	PriceListName         string
	UnitGroupName         string
	SyncImages            bool
	WritesEnabled         bool
	BulkSize              int // rows per bulk write request (DATAVERSE_BULK_SIZE)
	ServiceBusNamespace   string
	StateConnectionString string
	StorageAccountName    string
	// TableServiceURL is the state account's Table service URL (AzureWebJobsStorage__tableServiceUri);
	// empty: derived from StorageAccountName for Azure's public cloud.
	TableServiceURL string
	StateTable      string

	// Store reader (docs/store-reader.md); NopDBProvider "" = off.
	NopDBProvider        string
	NopDBConnection      string
	NopDBSecretName      string
	NopDBManagedIdentity bool
	StoreID              int
	StoreURL             string
	AgentEventsURL       string
	AgentFunctionKey     string
	AgentStateFile       string
}

// StoreReader says whether the store reader is configured.
func (c *Config) StoreReader() bool { return c.NopDBProvider != "" }

// Sandbox says whether Dataverse is the built-in sandbox (local mode without DATAVERSE_URL).
func (c *Config) Sandbox() bool { return c.Local && c.DataverseURL == "" }

// Lookup reads one raw setting.
type Lookup func(name string) (string, bool)

// Source merges the environment with local.settings.json's Values (environment wins).
func Source(env Lookup, localSettingsPath string) (Lookup, error) {
	values := map[string]string{}
	if localSettingsPath != "" {
		b, err := os.ReadFile(localSettingsPath)
		switch {
		case errors.Is(err, os.ErrNotExist):
		case err != nil:
			return nil, fmt.Errorf("config: read %s: %w", localSettingsPath, err)
		default:
			var f struct {
				IsEncrypted bool
				Values      map[string]any
			}
			if err := json.Unmarshal(b, &f); err != nil {
				return nil, fmt.Errorf("config: %s is not valid JSON: %w", localSettingsPath, err)
			}
			if f.IsEncrypted {
				return nil, fmt.Errorf("config: %s is encrypted (IsEncrypted true); decrypt it with 'func settings decrypt' or use environment variables", localSettingsPath)
			}
			for k, v := range f.Values {
				switch v := v.(type) {
				case string:
					values[k] = v
				case bool, float64:
					values[k] = fmt.Sprint(v)
				case nil:
				default:
					return nil, fmt.Errorf("config: %s: Values.%s must be a string", localSettingsPath, k)
				}
			}
		}
	}
	return func(name string) (string, bool) {
		if v, ok := env(name); ok {
			return v, true
		}
		v, ok := values[name]
		return v, ok
	}, nil
}

// Load reads and validates every setting. Errors name the setting at fault; all problems
// are reported at once.
func Load(get Lookup) (*Config, error) {
	p := parser{get: get}
	c := &Config{}
	if port, ok := p.str("FUNCTIONS_CUSTOMHANDLER_PORT"); ok && port != "" {
		n, err := strconv.Atoi(port)
		if err != nil || n <= 0 || n > 65535 {
			p.fail("FUNCTIONS_CUSTOMHANDLER_PORT", "must be a TCP port number, got %q", port)
		}
		c.HandlerPort = n
	} else {
		c.Local = true
	}
	c.ListenAddr = p.def("LISTEN_ADDR")
	c.CPUProfile = p.val("NOPSYNC_CPUPROFILE")
	if c.Local {
		if _, _, err := net.SplitHostPort(c.ListenAddr); err != nil {
			p.fail("LISTEN_ADDR", "must be host:port, got %q", c.ListenAddr)
		}
	}
	c.DataDir = p.def("LOCAL_DATA_DIR")

	c.DataverseURL = strings.TrimRight(p.val("DATAVERSE_URL"), "/")
	c.TenantID = p.val("DATAVERSE_TENANT_ID")
	c.ClientID = p.val("DATAVERSE_CLIENT_ID")
	c.ClientSecret = p.val("DATAVERSE_CLIENT_SECRET")
	c.KeyVaultURL = strings.TrimRight(p.val("KEY_VAULT_URL"), "/")
	c.ClientSecretName = p.def("DATAVERSE_CLIENT_SECRET_NAME")
	c.WebhookSecretName = p.def("WEBHOOK_SECRET_NAME")
	for _, s := range strings.Split(p.val("WEBHOOK_SECRET"), ",") {
		if s = strings.TrimSpace(s); s != "" {
			c.WebhookSecrets = append(c.WebhookSecrets, s)
		}
	}
	c.AuthorityHost = p.val("AZURE_AUTHORITY_HOST")
	c.ManagedIdentityClient = p.val("AZURE_CLIENT_ID")
	if c.ManagedIdentityClient != "" && !isGUID(c.ManagedIdentityClient) {
		p.fail("AZURE_CLIENT_ID", "must be the client id of the app's user-assigned managed identity, a GUID (not its resource id)")
	}

	if c.DataverseURL != "" || !c.Local {
		if c.DataverseURL == "" {
			p.fail("DATAVERSE_URL", "is required (the Dataverse environment URL, e.g. https://contoso.crm.dynamics.com)")
		} else if u, err := url.Parse(c.DataverseURL); err != nil || u.Scheme != "https" || u.Host == "" || (u.Path != "" && u.Path != "/") {
			p.fail("DATAVERSE_URL", "must be an https URL of the environment with no path, e.g. https://contoso.crm.dynamics.com")
		}
		if !isGUID(c.TenantID) {
			p.fail("DATAVERSE_TENANT_ID", "must be the directory (tenant) id, a GUID")
		}
		if !isGUID(c.ClientID) {
			p.fail("DATAVERSE_CLIENT_ID", "must be the application (client) id, a GUID")
		}
		if c.ClientSecret == "" && c.KeyVaultURL == "" {
			p.fail("DATAVERSE_CLIENT_SECRET", "is required when KEY_VAULT_URL is not set")
		}
	}
	if c.KeyVaultURL != "" {
		if u, err := url.Parse(c.KeyVaultURL); err != nil || u.Scheme != "https" || u.Host == "" || u.Path != "" || u.RawQuery != "" || u.Fragment != "" {
			p.fail("KEY_VAULT_URL", "must be the vault's https URL with no path, e.g. https://myvault.vault.azure.net")
		}
	}
	for _, s := range [][2]string{{"DATAVERSE_CLIENT_SECRET_NAME", c.ClientSecretName}, {"WEBHOOK_SECRET_NAME", c.WebhookSecretName}} {
		if !validSecretName(s[1]) {
			p.fail(s[0], "must be a Key Vault secret name: 1-127 letters, digits and hyphens, got %q", s[1])
		}
	}
	if c.AuthorityHost != "" {
		if u, err := url.Parse(c.AuthorityHost); err != nil || u.Scheme != "https" || u.Host == "" {
			p.fail("AZURE_AUTHORITY_HOST", "must be an https URL, e.g. https://login.microsoftonline.us/")
		}
	}
	if !c.Local && len(c.WebhookSecrets) == 0 && c.KeyVaultURL == "" {
		p.fail("WEBHOOK_SECRET", "is required in Azure (or KEY_VAULT_URL with the secret named by WEBHOOK_SECRET_NAME): unsigned events are refused")
	}

	c.StoreCurrencyCode = strings.ToUpper(p.val("STORE_CURRENCY_CODE"))
	if c.StoreCurrencyCode == "" && c.Local {
		c.StoreCurrencyCode = "USD"
	}
	if len(c.StoreCurrencyCode) != 3 || strings.Trim(c.StoreCurrencyCode, "ABCDEFGHIJKLMNOPQRSTUVWXYZ") != "" {
		p.fail("STORE_CURRENCY_CODE", "is required: the store's primary currency as a 3-letter ISO 4217 code, got %q", c.StoreCurrencyCode)
	}
	c.AutoSyncEnabled = p.boolean("AUTO_SYNC_ENABLED")
	minutes := p.integer("AUTO_SYNC_PERIOD_MINUTES")
	if minutes < 1 || minutes > 7*24*60 {
		p.fail("AUTO_SYNC_PERIOD_MINUTES", "must be between 1 and 10080 minutes, got %d", minutes)
	}
	c.AutoSyncPeriod = time.Duration(minutes) * time.Minute
	switch dp := DeletePolicy(strings.ToLower(p.def("DELETE_POLICY"))); dp {
	case DeleteDeactivate, DeleteDelete, DeleteIgnore:
		c.DeletePolicy = dp
	default:
		p.fail("DELETE_POLICY", "must be deactivate, delete or ignore, got %q", dp)
	}
	c.PriceListName = p.val("PRICE_LIST_NAME")
	if c.PriceListName == "" {
		c.PriceListName = "nopCommerce " + c.StoreCurrencyCode
	}
	if len(c.PriceListName) > 100 {
		p.fail("PRICE_LIST_NAME", "must be at most 100 characters (Dataverse's limit)")
	}
	c.UnitGroupName = p.def("UNIT_GROUP_NAME")
	if c.UnitGroupName == "" || len(c.UnitGroupName) > 200 {
		p.fail("UNIT_GROUP_NAME", "must be 1 to 200 characters")
	}
	c.SyncImages = p.boolean("SYNC_IMAGES")
	c.WritesEnabled = p.boolean("DATAVERSE_WRITES_ENABLED")
	// "100 - 1,000 records per request is a reasonable place to start if the size of the
	// record data is small and there are no plug-ins"
	// (https://learn.microsoft.com/power-apps/developer/data-platform/bulk-operations); a
	// $batch holds at most 1000 requests.
	c.BulkSize = p.integer("DATAVERSE_BULK_SIZE")
	if c.BulkSize < 1 || c.BulkSize > 1000 {
		p.fail("DATAVERSE_BULK_SIZE", "must be between 1 and 1000 rows per request, got %d", c.BulkSize)
	}

	c.ServiceBusNamespace = p.val("ServiceBusConnection__fullyQualifiedNamespace")
	if !c.Local && c.ServiceBusNamespace == "" {
		p.fail("ServiceBusConnection__fullyQualifiedNamespace", "is required in Azure (e.g. mynamespace.servicebus.windows.net)")
	} else if c.ServiceBusNamespace != "" && !hostName.MatchString(c.ServiceBusNamespace) {
		p.fail("ServiceBusConnection__fullyQualifiedNamespace", "must be the namespace's host name alone, e.g. mynamespace.servicebus.windows.net (no https://, no path, not a connection string)%s", shown(c.ServiceBusNamespace))
	}
	c.StateConnectionString = p.val("STATE_STORAGE_CONNECTION_STRING")
	c.StorageAccountName = p.val("AzureWebJobsStorage__accountName")
	if !c.Local && c.StateConnectionString == "" && c.StorageAccountName == "" && p.val("AzureWebJobsStorage__tableServiceUri") == "" {
		p.fail("STATE_STORAGE_CONNECTION_STRING", "or AzureWebJobsStorage__accountName (or __tableServiceUri) is required in Azure (Table Storage for sync state)")
	}
	if c.StateConnectionString != "" {
		if msg := checkStorageConnectionString(c.StateConnectionString); msg != "" {
			p.fail("STATE_STORAGE_CONNECTION_STRING", "%s", msg) // never the value: it holds the account key
		}
	}
	if c.StorageAccountName != "" && !storageAccount.MatchString(c.StorageAccountName) {
		p.fail("AzureWebJobsStorage__accountName", "must be a storage account name, 3-24 lower-case letters and digits (not a connection string)%s", shown(c.StorageAccountName))
	}
	// Outside Azure's public cloud the account's endpoints are not <account>.table.core.windows.net:
	// the Functions host takes the service URIs then (Microsoft Learn: functions-reference,
	// "Connecting to host storage with an identity"), and so does the app.
	c.TableServiceURL = p.val("AzureWebJobsStorage__tableServiceUri")
	if c.TableServiceURL != "" {
		if u, err := url.Parse(c.TableServiceURL); err != nil || u.Scheme != "https" || u.Host == "" || u.RawQuery != "" {
			p.fail("AzureWebJobsStorage__tableServiceUri", "must be the storage account's Table service URL, e.g. https://stx.table.core.windows.net/ (no query)%s", shown(c.TableServiceURL))
		}
	}
	c.StateTable = p.def("SYNC_STATE_TABLE")
	if !validTableName(c.StateTable) {
		p.fail("SYNC_STATE_TABLE", "must be 3-63 letters or digits, starting with a letter, and not \"tables\" (reserved), got %q", c.StateTable)
	}
	c.NopDBProvider = strings.ToLower(p.val("NOP_DB_PROVIDER"))
	c.NopDBConnection = p.val("NOP_DB_CONNECTION")
	c.NopDBSecretName = p.def("NOP_DB_CONNECTION_SECRET_NAME")
	if !validSecretName(c.NopDBSecretName) {
		p.fail("NOP_DB_CONNECTION_SECRET_NAME", "must be a Key Vault secret name: 1-127 letters, digits and hyphens, got %q", c.NopDBSecretName)
	}
	c.NopDBManagedIdentity = p.boolean("NOP_DB_MANAGED_IDENTITY")
	switch c.NopDBProvider {
	case "":
	case "sqlserver", "mysql", "postgresql":
		if c.NopDBConnection == "" && c.KeyVaultURL == "" {
			p.fail("NOP_DB_CONNECTION", "is required with NOP_DB_PROVIDER (or KEY_VAULT_URL with the connection string named by NOP_DB_CONNECTION_SECRET_NAME)")
		}
		if c.NopDBManagedIdentity && c.NopDBProvider != "sqlserver" {
			p.fail("NOP_DB_MANAGED_IDENTITY", "is for Azure SQL (NOP_DB_PROVIDER sqlserver), not %s", c.NopDBProvider)
		}
	default:
		p.fail("NOP_DB_PROVIDER", "must be sqlserver, mysql or postgresql (nopCommerce's names; the connection string goes in NOP_DB_CONNECTION)%s", shown(c.NopDBProvider))
	}
	c.StoreID = p.integer("STORE_ID")
	if c.StoreID < 1 {
		p.fail("STORE_ID", "must be a nopCommerce store id (1 or more), got %d", c.StoreID)
	}
	c.StoreURL = strings.TrimRight(p.val("STORE_URL"), "/")
	if c.StoreURL != "" {
		if u, err := url.Parse(c.StoreURL); err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
			p.fail("STORE_URL", "must be the store's public http(s) URL, e.g. https://store.example.com")
		}
	}
	c.AgentEventsURL = strings.TrimRight(p.val("AGENT_EVENTS_URL"), "/")
	if c.AgentEventsURL != "" {
		if u, err := url.Parse(c.AgentEventsURL); err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
			p.fail("AGENT_EVENTS_URL", "must be the app's events URL, e.g. https://func-nopsync-x.azurewebsites.net/api/events")
		} else if u.RawQuery != "" || u.User != nil {
			// The URL is logged; a function key in "?code=" would be too.
			p.fail("AGENT_EVENTS_URL", "must not carry a query or user info: put the function key in AGENT_FUNCTION_KEY")
		}
	}
	c.AgentFunctionKey = p.val("AGENT_FUNCTION_KEY")
	c.AgentStateFile = p.def("AGENT_STATE_FILE")
	if len(p.errs) > 0 {
		sort.Strings(p.errs)
		return nil, &Error{Problems: p.errs}
	}
	return c, nil
}

var (
	// hostName is a DNS host name: letters, digits, hyphens, dots.
	hostName = regexp.MustCompile(`^[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?)*$`)
	// storageAccount is a storage account name (Microsoft Learn: storage account overview).
	storageAccount = regexp.MustCompile(`^[a-z0-9]{3,24}$`)
)

// shown is ", got <v>" for a bad value that can be repeated in an error, and "" for one
// that may be a secret pasted into the wrong setting (a connection string, a URL with a
// query): the error stops the app and is logged at every restart.
func shown(v string) string {
	if strings.ContainsAny(v, "=;?&@") || len(v) > 100 {
		return ""
	}
	return fmt.Sprintf(", got %q", v)
}

// checkStorageConnectionString says what keeps s from being a storage connection string
// the Table client takes ("" when nothing): AccountName with its AccountKey or a
// SharedAccessSignature (not UseDevelopmentStorage=true). The answer never holds the string,
// whose key is a secret.
func checkStorageConnectionString(s string) string {
	kv := map[string]string{}
	for _, part := range strings.Split(s, ";") {
		if strings.TrimSpace(part) == "" {
			continue
		}
		k, v, ok := strings.Cut(part, "=")
		if !ok {
			return "is not a storage connection string: every part must be Name=value"
		}
		kv[strings.ToLower(strings.TrimSpace(k))] = strings.TrimSpace(v)
	}
	if strings.EqualFold(kv["usedevelopmentstorage"], "true") {
		return "is UseDevelopmentStorage=true, which the Table client does not understand: give Azurite's full connection string (AccountName, AccountKey, TableEndpoint)"
	}
	// The Table client (aztables) needs AccountName in every form, and AccountKey or a
	// SharedAccessSignature with it.
	if kv["accountname"] == "" {
		return "is not a storage connection string: it names no AccountName"
	}
	if kv["accountkey"] == "" && kv["sharedaccesssignature"] == "" {
		return "is not a storage connection string: it needs AccountKey or SharedAccessSignature with AccountName"
	}
	if k := kv["accountkey"]; k != "" {
		// aztables decodes the key as standard base64 when it builds the client; a key
		// cut short or pasted with a character changed would fail there, after start.
		if _, err := base64.StdEncoding.DecodeString(k); err != nil {
			return "has an AccountKey that is not base64: copy the connection string again from the storage account's access keys"
		}
	}
	if e := kv["tableendpoint"]; e != "" {
		if u, err := url.Parse(e); err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
			return "has a TableEndpoint that is not an http(s) URL"
		}
	}
	return ""
}

// Error lists every invalid setting.
type Error struct{ Problems []string }

func (e *Error) Error() string {
	return "invalid settings:\n  " + strings.Join(e.Problems, "\n  ")
}

type parser struct {
	get        Lookup
	errs       []string
	unresolved map[string]bool // settings already reported as unresolved Key Vault references
}

func (p *parser) fail(name, format string, args ...any) {
	p.errs = append(p.errs, name+" "+fmt.Sprintf(format, args...))
}

// keyVaultReference starts an App Service Key Vault reference. App Service replaces it by
// the secret; when it can't (no access, no such secret), the app is given the reference
// itself as the value (Microsoft Learn: app-service-key-vault-references).
const keyVaultReference = "@Microsoft.KeyVault("

func (p *parser) str(name string) (string, bool) {
	v, ok := p.get(name)
	v = strings.TrimSpace(v)
	if strings.HasPrefix(v, keyVaultReference) {
		if !p.unresolved[name] {
			if p.unresolved == nil {
				p.unresolved = map[string]bool{}
			}
			p.unresolved[name] = true
			p.fail(name, "is a Key Vault reference App Service could not resolve: give the app's identity "+
				"read access to the vault's secrets (Key Vault Secrets User) and check the secret's name and version")
		}
		return "", ok
	}
	return v, ok
}

func (p *parser) val(name string) string {
	v, _ := p.str(name)
	return v
}

// def returns the setting or its documented default.
func (p *parser) def(name string) string {
	if v := p.val(name); v != "" {
		return v
	}
	for _, s := range Known() {
		if s.Name == name {
			return s.Default
		}
	}
	return ""
}

func (p *parser) boolean(name string) bool {
	v := p.def(name)
	b, err := strconv.ParseBool(v)
	if err != nil {
		p.fail(name, "must be true or false, got %q", v)
	}
	return b
}

func (p *parser) integer(name string) int {
	v := p.def(name)
	n, err := strconv.Atoi(v)
	if err != nil {
		p.fail(name, "must be a whole number, got %q", v)
	}
	return n
}

func isGUID(s string) bool {
	if len(s) != 36 {
		return false
	}
	for i, r := range s {
		switch i {
		case 8, 13, 18, 23:
			if r != '-' {
				return false
			}
		default:
			if !strings.ContainsRune("0123456789abcdefABCDEF", r) {
				return false
			}
		}
	}
	return true
}

// validTableName: Table Storage's table name rules (Microsoft Learn, "Understanding the
// Table service data model": alphanumeric, starting with a letter, 3-63 characters, and
// not the reserved name "tables").
func validTableName(s string) bool {
	if len(s) < 3 || len(s) > 63 || strings.EqualFold(s, "tables") {
		return false
	}
	for i, r := range s {
		letter := (r >= 'a' && r <= 'z') || (r >= 'A' && r <= 'Z')
		if !letter && !(i > 0 && r >= '0' && r <= '9') {
			return false
		}
	}
	return true
}

// validSecretName: a Key Vault secret name is 1-127 letters, digits and hyphens (Microsoft
// Learn, "About keys, secrets, and certificates": object identifiers).
func validSecretName(s string) bool {
	if len(s) < 1 || len(s) > 127 {
		return false
	}
	for _, r := range s {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-') {
			return false
		}
	}
	return true
}
