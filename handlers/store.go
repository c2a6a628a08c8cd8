package main

import (
	"context"
	"fmt"

	"github.com/nopsync/nopsync/shared/config"
	"github.com/nopsync/nopsync/shared/keyvault"
	"github.com/nopsync/nopsync/shared/nopdb"
	"github.com/nopsync/nopsync/shared/storesync"
)

// newStoreSource builds the store reader's source from the settings, or nil when the
// reader is off. The database is opened on first use, not here: an unreachable store
// is a failed run on the status page, never a failed start.
func newStoreSource(cfg *config.Config, vault *keyvault.Secrets) (*storesync.DB, error) {
	if !cfg.StoreReader() {
		return nil, nil
	}
	db := &storesync.DB{Options: nopdb.Options{
		Provider: cfg.NopDBProvider, Connection: cfg.NopDBConnection, ManagedIdentity: cfg.NopDBManagedIdentity,
		StoreID: cfg.StoreID, StoreURL: cfg.StoreURL,
	}}
	if cfg.NopDBManagedIdentity || (cfg.NopDBConnection == "" && vault == nil) {
		cred, err := keyvault.Credential(cfg.ManagedIdentityClient)
		if err != nil {
			return nil, fmt.Errorf("managed identity: %w", err)
		}
		db.Options.Credential = cred
		if vault == nil && cfg.NopDBConnection == "" {
			if vault, err = keyvault.New(cfg.KeyVaultURL, cred, keyvault.Options{}); err != nil {
				return nil, fmt.Errorf("KEY_VAULT_URL: %w", err)
			}
		}
	}
	if cfg.NopDBConnection == "" {
		name := cfg.NopDBSecretName
		db.ConnectionString = func(ctx context.Context) (string, error) {
			v, _, err := vault.Get(ctx, name)
			if err != nil {
				return "", fmt.Errorf("read the Key Vault secret %q (NOP_DB_CONNECTION_SECRET_NAME): %w", name, err)
			}
			return v, nil
		}
	}
	return db, nil
}

// storeSource is the source the runs read, nil when the reader is off.
func (a *app) storeSource() storesync.Source {
	if a.source == nil {
		return nil
	}
	return a.source
}
