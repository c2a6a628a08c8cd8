package nopdbtest

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"fmt"
	"net/url"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/go-sql-driver/mysql"
	_ "github.com/jackc/pgx/v5/stdlib" // registers "pgx"
)

// The test servers' admin connection strings, exported by `eval "$(scripts/storedb start)"`.
const (
	EnvPostgres = "TEST_NOP_POSTGRES" // postgres://postgres:<pw>@127.0.0.1:<port>/postgres?sslmode=disable
	EnvMySQL    = "TEST_NOP_MYSQL"    // root:<pw>@tcp(127.0.0.1:<port>)/
)

// Providers lists the engines the tests run on.
var Providers = []string{PostgreSQL, MySQL}

// ServerConn returns the admin connection string of provider's test server. Without it
// the test is skipped with a note on how to start the servers, or fails when CI=true
// (CI must run these tests, and scripts/test starts the servers).
func ServerConn(tb testing.TB, provider string) string {
	tb.Helper()
	env := EnvPostgres
	if provider == MySQL {
		env = EnvMySQL
	}
	v := os.Getenv(env)
	if v == "" {
		msg := fmt.Sprintf("%s is not set: no %s test server (run `eval \"$(scripts/storedb start)\"`, or scripts/test)", env, provider)
		if os.Getenv("CI") == "true" {
			tb.Fatal(msg)
		} else {
			tb.Skip(msg)
		}
	}
	return v
}

// DriverName is the database/sql driver of provider.
func DriverName(provider string) string {
	if provider == MySQL {
		return "mysql"
	}
	return "pgx"
}

// WithDatabase returns conn (an admin connection string of provider) pointing at
// database name instead.
func WithDatabase(provider, conn, name string) (string, error) {
	if provider == MySQL {
		cfg, err := mysql.ParseDSN(conn)
		if err != nil {
			return "", err
		}
		cfg.DBName = name
		return cfg.FormatDSN(), nil
	}
	u, err := url.Parse(conn)
	if err != nil {
		return "", fmt.Errorf("nopdbtest: %s is not a postgres:// URL", EnvPostgres)
	}
	u.Path = "/" + name
	return u.String(), nil
}

// CreateDatabase creates an empty database named name on the server of admin and
// returns its connection string and an open pool (read-write, for filling it).
func CreateDatabase(ctx context.Context, provider, admin, name string) (string, *sql.DB, error) {
	adb, err := sql.Open(DriverName(provider), admin)
	if err != nil {
		return "", nil, err
	}
	defer adb.Close()
	create := "CREATE DATABASE " + Quote(provider, name)
	if provider == MySQL {
		create += " CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci"
	}
	if _, err := adb.ExecContext(ctx, create); err != nil {
		return "", nil, fmt.Errorf("nopdbtest: creating database %s: %w", name, err)
	}
	conn, err := WithDatabase(provider, admin, name)
	if err != nil {
		return "", nil, err
	}
	db, err := sql.Open(DriverName(provider), conn)
	if err != nil {
		return "", nil, err
	}
	return conn, db, nil
}

// DropDatabase drops database name.
func DropDatabase(ctx context.Context, provider, admin, name string) error {
	adb, err := sql.Open(DriverName(provider), admin)
	if err != nil {
		return err
	}
	defer adb.Close()
	stmt := "DROP DATABASE IF EXISTS " + Quote(provider, name)
	if provider == PostgreSQL {
		stmt += " WITH (FORCE)"
	}
	_, err = adb.ExecContext(ctx, stmt)
	return err
}

// CreateSchema creates nopCommerce's tables in db.
func CreateSchema(ctx context.Context, db *sql.DB, provider string) error {
	stmts, err := Schema(provider)
	if err != nil {
		return err
	}
	for _, st := range stmts {
		if _, err := db.ExecContext(ctx, st); err != nil {
			return fmt.Errorf("nopdbtest: %s: %w", firstWords(st), err)
		}
	}
	return nil
}

func firstWords(s string) string {
	if i := strings.Index(s, "("); i > 0 {
		return s[:i]
	}
	return s
}

// NewDatabase creates a fresh database with nopCommerce's tables (empty) on provider's
// test server for one test, dropped when the test ends. It returns the connection
// string the reader is given and a read-write pool to fill the tables.
func NewDatabase(tb testing.TB, provider string) (string, *sql.DB) {
	tb.Helper()
	admin := ServerConn(tb, provider)
	var b [6]byte
	rand.Read(b[:])
	name := "nop_" + hex.EncodeToString(b[:])
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	conn, db, err := CreateDatabase(ctx, provider, admin, name)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() {
		db.Close()
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if err := DropDatabase(ctx, provider, admin, name); err != nil {
			tb.Logf("dropping test database %s: %v", name, err)
		}
	})
	if err := CreateSchema(ctx, db, provider); err != nil {
		tb.Fatal(err)
	}
	return conn, db
}
