package config

import (
	"strings"
	"testing"
)

func loadMap(m map[string]string) (*Config, error) {
	return Load(func(n string) (string, bool) { v, ok := m[n]; return v, ok })
}

func TestStoreReaderSettings(t *testing.T) {
	c, err := loadMap(map[string]string{})
	if err != nil || c.StoreReader() || c.StoreID != 1 || c.NopDBSecretName != "nop-db-connection" || c.AgentStateFile != "nopsync-agent.json" {
		t.Fatalf("defaults: %+v %v", c, err)
	}
	c, err = loadMap(map[string]string{"NOP_DB_PROVIDER": "PostgreSQL", "NOP_DB_CONNECTION": "postgres://r:pw@db/nop", "STORE_ID": "2", "STORE_URL": "https://shop.example.com/"})
	if err != nil || !c.StoreReader() || c.NopDBProvider != "postgresql" || c.StoreID != 2 || c.StoreURL != "https://shop.example.com" {
		t.Fatalf("reader on: %+v %v", c, err)
	}
	for _, tc := range []struct {
		env  map[string]string
		want string
	}{
		{map[string]string{"NOP_DB_PROVIDER": "oracle", "NOP_DB_CONNECTION": "x"}, "NOP_DB_PROVIDER must be sqlserver, mysql or postgresql"},
		{map[string]string{"NOP_DB_PROVIDER": "mysql"}, "NOP_DB_CONNECTION is required"},
		{map[string]string{"NOP_DB_PROVIDER": "mysql", "NOP_DB_CONNECTION": "x", "NOP_DB_MANAGED_IDENTITY": "true"}, "NOP_DB_MANAGED_IDENTITY is for Azure SQL"},
		{map[string]string{"NOP_DB_MANAGED_IDENTITY": "yes"}, "NOP_DB_MANAGED_IDENTITY must be true or false"},
		{map[string]string{"STORE_ID": "0"}, "STORE_ID must be a nopCommerce store id"},
		{map[string]string{"STORE_URL": "shop.example.com"}, "STORE_URL must be"},
		{map[string]string{"AGENT_EVENTS_URL": "ftp://x"}, "AGENT_EVENTS_URL must be"},
	} {
		_, err := loadMap(tc.env)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%v: got %v, want %q", tc.env, err, tc.want)
		}
	}
	// The connection string may come from Key Vault, and is never in an error.
	if _, err := loadMap(map[string]string{"NOP_DB_PROVIDER": "sqlserver", "KEY_VAULT_URL": "https://kv.vault.azure.net", "NOP_DB_MANAGED_IDENTITY": "true"}); err != nil {
		t.Fatalf("vault connection: %v", err)
	}
	_, err = loadMap(map[string]string{"NOP_DB_PROVIDER": "oracle", "NOP_DB_CONNECTION": "Server=x;Password=hunter2secret"})
	if err == nil || strings.Contains(err.Error(), "hunter2secret") {
		t.Fatalf("error shows the connection string: %v", err)
	}
}
