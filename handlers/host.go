package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"path/filepath"
	"strconv"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"

	"github.com/nopsync/nopsync/shared/config"
	"github.com/nopsync/nopsync/shared/dataverse"
	"github.com/nopsync/nopsync/shared/funchost"
	"github.com/nopsync/nopsync/shared/intake"
	"github.com/nopsync/nopsync/shared/keyvault"
	"github.com/nopsync/nopsync/shared/nopdb"
	"github.com/nopsync/nopsync/shared/servicebus"
	"github.com/nopsync/nopsync/shared/state"
	"github.com/nopsync/nopsync/shared/tablestorage"
)

// invocationTimeout stays below host.json's functionTimeout (10 minutes): the host sends
// no cancellation, so the handler bounds its own work.
const invocationTimeout = 9 * time.Minute

func loadConfig(env func(string) (string, bool)) (*config.Config, error) {
	path := "local.settings.json"
	if root, ok := env("FUNCTIONS_APP_ROOT_PATH"); ok && root != "" {
		path = filepath.Join(root, path)
	}
	get, err := config.Source(env, path)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", errConfig, err)
	}
	cfg, err := config.Load(get)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", errConfig, err)
	}
	// A connection string given as a setting is checked now, as its driver reads it: a
	// malformed one stops the app naming it (docs/store-reader.md: "Bad settings stop the
	// app at start"); one read from Key Vault is checked at its first use.
	if cfg.StoreReader() && cfg.NopDBConnection != "" {
		if err := nopdb.CheckConnection(cfg.NopDBProvider, cfg.NopDBConnection); err != nil {
			return nil, fmt.Errorf("%w: NOP_DB_CONNECTION: %w", errConfig, err)
		}
	}
	return cfg, nil
}

// runHost serves the custom-handler protocol on the port the Functions host chose. The
// port is bound and GET / answered before any network work; the app is built in the
// background (see startup.go).
func runHost(ctx context.Context, cfg *config.Config, log *slog.Logger) error {
	return serveHost(ctx, cfg, log, startOptions{}, func(ctx context.Context) (*app, error) { return newAzureApp(ctx, cfg, log) })
}

func serveHost(ctx context.Context, cfg *config.Config, log *slog.Logger, so startOptions, build func(context.Context) (*app, error)) error {
	if len(cfg.WebhookSecrets) == 0 && cfg.KeyVaultURL == "" {
		// A setting, not an outage: stop with its name rather than retry.
		return fmt.Errorf("%w: %w", errConfig, errNoWebhookSecret)
	}
	ln, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(cfg.HandlerPort)))
	if err != nil {
		return fmt.Errorf("FUNCTIONS_CUSTOMHANDLER_PORT %d: %w", cfg.HandlerPort, err)
	}
	st := newStarter(log, so)
	defer st.close()
	srv := &http.Server{Handler: funchost.NewServer(st.functions(), log, invocationTimeout), ReadHeaderTimeout: 30 * time.Second}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	log.Info("custom handler listening; starting the app", "port", cfg.HandlerPort)
	sctx, stopStarting := context.WithCancel(ctx)
	defer stopStarting()
	go st.run(sctx, build)
	select {
	case <-ctx.Done():
		stopStarting()
		shut, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		return srv.Shutdown(shut)
	case err := <-errc:
		return err
	}
}

// newAzureApp builds the app on Azure's services, authenticating with the app's managed
// identity. ctx bounds the network work (the state table's creation and layout row).
func newAzureApp(ctx context.Context, cfg *config.Config, log *slog.Logger) (_ *app, err error) {
	cred, err := keyvault.Credential(cfg.ManagedIdentityClient)
	if err != nil {
		return nil, fmt.Errorf("managed identity: %w", err)
	}
	a := &app{cfg: cfg, log: log}
	defer func() {
		if err != nil {
			a.Close()
		}
	}()
	var vault *keyvault.Secrets
	if cfg.KeyVaultURL != "" {
		if vault, err = keyvault.New(cfg.KeyVaultURL, cred, keyvault.Options{}); err != nil {
			return nil, fmt.Errorf("KEY_VAULT_URL: %w", err)
		}
	}
	var peers instancePeers
	if a.dv, err = newDataverseClient(cfg, log, vault, peers.tune(nil)); err != nil {
		return nil, err
	}
	sb, err := servicebus.New(cfg.ServiceBusNamespace, cred, servicebus.Options{})
	if err != nil {
		return nil, fmt.Errorf("ServiceBusConnection__fullyQualifiedNamespace: %w", err)
	}
	a.closers = append(a.closers, func() { sb.Close(context.Background()) })
	a.sender, a.deadLetters, a.inspector = sb, sb, sb
	if a.store, err = newTableStore(ctx, cfg, cred); err != nil {
		return nil, err
	}
	peers.start(a, a.store, 0)
	webhook, err := webhookSecrets(cfg, vault)
	if err != nil {
		return nil, err
	}
	if a.source, err = newStoreSource(cfg, vault); err != nil {
		return nil, err
	}
	if a.source != nil {
		a.closers = append(a.closers, func() { a.source.Close() })
	}
	if err := a.wire(webhook); err != nil {
		return nil, err
	}
	return a, nil
}

// newDataverseClient builds the production Dataverse client; the client secret comes
// from the setting or, re-read after Entra rejects it, from Key Vault.
// tune, when set, adjusts the options (tests: their simulator's CA, a fake vault, fewer retries).
func newDataverseClient(cfg *config.Config, log *slog.Logger, vault *keyvault.Secrets, tune func(*dataverse.Options)) (*dataverse.Client, error) {
	if vault == nil && cfg.KeyVaultURL != "" {
		cred, err := keyvault.Credential(cfg.ManagedIdentityClient)
		if err != nil {
			return nil, fmt.Errorf("managed identity: %w", err)
		}
		if vault, err = keyvault.New(cfg.KeyVaultURL, cred, keyvault.Options{}); err != nil {
			return nil, fmt.Errorf("KEY_VAULT_URL: %w", err)
		}
	}
	// With KEY_VAULT_URL the secret is the vault's (docs/operations.md), so its expiry
	// reaches the status page; DATAVERSE_CLIENT_SECRET, when set too, stands in while the
	// vault can't give it.
	var secret dataverse.SecretSource
	switch {
	case vault != nil && cfg.ClientSecret != "":
		secret = vault.Source(cfg.ClientSecretName).OrValue(cfg.ClientSecret)
	case vault != nil:
		secret = vault.Source(cfg.ClientSecretName)
	case cfg.ClientSecret != "":
		secret = dataverse.StaticSecret(cfg.ClientSecret)
	default:
		return nil, errors.New("DATAVERSE_CLIENT_SECRET or KEY_VAULT_URL is required")
	}
	o := dataverse.Options{
		EnvironmentURL: cfg.DataverseURL, TenantID: cfg.TenantID, ClientID: cfg.ClientID,
		Secret: secret, AuthorityHost: cfg.AuthorityHost, BulkChunkSize: cfg.BulkSize,
		Logger: func(line string) { log.Debug(line, "component", "dataverse") },
	}
	if tune != nil {
		tune(&o)
	}
	c, err := dataverse.New(o)
	if err != nil {
		return nil, fmt.Errorf("DATAVERSE_URL: %w", err)
	}
	return c, nil
}

// newTableStore opens the sync-state table from a connection string, or from the app's
// storage account with the managed identity.
func newTableStore(ctx context.Context, cfg *config.Config, cred azcore.TokenCredential) (state.Store, error) {
	if cfg.StateConnectionString != "" {
		s, err := tablestorage.NewFromConnectionString(ctx, cfg.StateConnectionString, tablestorage.Options{Table: cfg.StateTable})
		if err != nil {
			return nil, fmt.Errorf("STATE_STORAGE_CONNECTION_STRING: %w", err)
		}
		return s, nil
	}
	if cred == nil {
		return nil, errors.New("STATE_STORAGE_CONNECTION_STRING is required here")
	}
	if cfg.TableServiceURL != "" {
		s, err := tablestorage.NewWithCredential(ctx, cfg.TableServiceURL, cred, tablestorage.Options{Table: cfg.StateTable})
		if err != nil {
			return nil, fmt.Errorf("AzureWebJobsStorage__tableServiceUri: %w", err)
		}
		return s, nil
	}
	s, err := tablestorage.NewForAccount(ctx, cfg.StorageAccountName, cred, tablestorage.Options{Table: cfg.StateTable})
	if err != nil {
		return nil, fmt.Errorf("AzureWebJobsStorage__accountName: %w", err)
	}
	return s, nil
}

// webhookSecrets returns where the webhook secrets come from, or nil when none is
// configured (allowed in local mode only).
func webhookSecrets(cfg *config.Config, vault *keyvault.Secrets) (intake.WebhookSecrets, error) {
	if len(cfg.WebhookSecrets) > 0 {
		return intake.StaticSecrets(cfg.WebhookSecrets), nil
	}
	if cfg.KeyVaultURL == "" {
		return nil, nil
	}
	if vault == nil {
		cred, err := keyvault.Credential(cfg.ManagedIdentityClient)
		if err != nil {
			return nil, fmt.Errorf("managed identity: %w", err)
		}
		if vault, err = keyvault.New(cfg.KeyVaultURL, cred, keyvault.Options{}); err != nil {
			return nil, fmt.Errorf("KEY_VAULT_URL: %w", err)
		}
	}
	return &vaultWebhookSecrets{s: vault, name: cfg.WebhookSecretName}, nil
}
