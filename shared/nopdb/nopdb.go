// Package nopdb reads a nopCommerce store's own database (read-only) and turns its
// customers, products and orders into the events of docs/events.md, exactly as a store-side
// emitter would send them, so the app can import and keep in step a store that sends
// nothing.
//
// Engines: SQL Server / Azure SQL (github.com/microsoft/go-mssqldb; Entra ID with a
// managed identity through azidentity), MySQL / MariaDB (github.com/go-sql-driver/mysql)
// and PostgreSQL (github.com/jackc/pgx/v5). Tables and columns are nopCommerce 4.60 to
// 4.90's (src/Libraries/Nop.Data/Mapping/Builders/, NameCompatibilityManager for the names
// that differ from the class names). Queries for all three are built by one builder
// (dialect.go); PostgreSQL and MariaDB run them in this package's tests, SQL Server's are
// checked as text only.
//
// Reading is keyset-paged by primary key (ReadPage), so memory is bounded by the page
// size and a cut-off run resumes from Page.Last. Each event carries the data hash
// (DataHash) its id is derived from: the same state read twice gives the same event id.
//
// The connection string is a secret: no error of this package contains it or any part
// of it (see redactor).
package nopdb

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
	"github.com/Azure/azure-sdk-for-go/sdk/azidentity"
	"github.com/go-sql-driver/mysql"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/stdlib"
	mssql "github.com/microsoft/go-mssqldb"
	"github.com/microsoft/go-mssqldb/msdsn"

	"github.com/nopsync/nopsync/shared/state"
)

// Entity is a nopCommerce entity kind: state.Customer, state.Product or state.Order.
type Entity = state.Entity

// Options configure a Reader.
type Options struct {
	Provider        string                 // "sqlserver", "mysql" or "postgresql" (nopCommerce's names)
	Connection      string                 // a secret, never in an error: the Go driver's form, or nopCommerce's own (ADO.NET) one
	ManagedIdentity bool                   // Azure SQL with Entra ID: a token from Credential, no password
	Credential      azcore.TokenCredential // with ManagedIdentity; nil: azidentity's DefaultAzureCredential
	StoreID         int                    // the store whose orders are read; 0 means 1
	StoreURL        string                 // the store's public URL for picture URLs; "": no pictures
}

// connectTimeout bounds a connection attempt when the connection string sets none, so an
// unreachable server (packets dropped, not refused) is an error in seconds, not after the
// operating system's TCP timeout. go-mssqldb's own default is 15 s as well.
const connectTimeout = 15 * time.Second

// azureSQLScope is the token scope of Azure SQL Database
// (learn.microsoft.com/azure/azure-sql/database/authentication-aad-overview).
const azureSQLScope = "https://database.windows.net/.default"

// Reader reads one store's database. It is safe for concurrent use.
type Reader struct {
	db       *sql.DB
	d        *dialect
	storeID  int
	storeURL string
	red      *redactor
	now      func() time.Time

	mu    sync.Mutex
	roles roleIDs // customer role ids, once read
}

// Open checks the options and opens a connection pool (read-only where the engine
// allows it: PostgreSQL default_transaction_read_only, MySQL SET SESSION TRANSACTION READ
// ONLY, SQL Server ApplicationIntent=ReadOnly) and pings the database. Errors never hold
// the connection string; an unreachable server gives an *Error with Unreachable set.
func Open(ctx context.Context, o Options) (*Reader, error) {
	d, ok := dialects[strings.ToLower(strings.TrimSpace(o.Provider))]
	if !ok {
		return nil, fmt.Errorf("nopdb: unknown database provider %q (want sqlserver, mysql or postgresql)", o.Provider)
	}
	if strings.TrimSpace(o.Connection) == "" {
		return nil, errors.New("nopdb: no connection string")
	}
	if o.ManagedIdentity && d.provider != SQLServer {
		return nil, fmt.Errorf("nopdb: managed identity sign-in is for Azure SQL (provider sqlserver), not %s", d.provider)
	}
	red := newRedactor(d.provider, o.Connection)
	connector, err := newConnector(d, o)
	if err != nil {
		return nil, red.wrap("opening the store database", err)
	}
	db := sql.OpenDB(connector)
	db.SetMaxOpenConns(4)
	db.SetMaxIdleConns(4)
	db.SetConnMaxIdleTime(5 * time.Minute)
	r := &Reader{db: db, d: d, storeID: o.StoreID, storeURL: strings.TrimRight(strings.TrimSpace(o.StoreURL), "/"), red: red, now: time.Now}
	if r.storeID <= 0 {
		r.storeID = 1
	}
	if err := db.PingContext(ctx); err != nil {
		db.Close()
		return nil, red.wrap("connecting to the store database", err)
	}
	return r, nil
}

// CheckConnection parses a connection string as the provider's driver will, without
// connecting: a malformed one (a bad port, escape or option value) is a setting to fix,
// not an unreachable database. The error never holds the connection string.
func CheckConnection(provider, connection string) error {
	d, ok := dialects[strings.ToLower(strings.TrimSpace(provider))]
	if !ok {
		return fmt.Errorf("nopdb: unknown database provider %q (want sqlserver, mysql or postgresql)", provider)
	}
	red := newRedactor(d.provider, connection)
	if c, ok := fromADONet(d.provider, connection); ok {
		connection = c
	}
	var err error
	switch d.provider {
	case PostgreSQL:
		_, err = pgx.ParseConfig(connection)
	case MySQL:
		_, err = mysql.ParseDSN(connection)
	default:
		_, err = msdsn.Parse(connection)
	}
	return red.wrap("reading the connection string", err)
}

// Close closes the connection pool.
func (r *Reader) Close() error { return r.db.Close() }

// Provider returns the engine's provider name.
func (r *Reader) Provider() string { return r.d.provider }

func newConnector(d *dialect, o Options) (driver.Connector, error) {
	if c, ok := fromADONet(d.provider, o.Connection); ok {
		o.Connection = c
	}
	switch d.provider {
	case PostgreSQL:
		cfg, err := pgx.ParseConfig(o.Connection)
		if err != nil {
			return nil, err
		}
		cfg.RuntimeParams["default_transaction_read_only"] = "on"
		if cfg.ConnectTimeout == 0 {
			cfg.ConnectTimeout = connectTimeout
		}
		// Most of a page's queries are one-offs (id lists written into them): preparing
		// and caching each would cost a round trip and a cache slot for nothing.
		cfg.DefaultQueryExecMode = pgx.QueryExecModeExec
		return stdlib.GetConnector(*cfg), nil
	case MySQL:
		cfg, err := mysql.ParseDSN(o.Connection)
		if err != nil {
			return nil, err
		}
		cfg.ParseTime = true
		cfg.Loc = time.UTC
		if cfg.Timeout == 0 {
			cfg.Timeout = connectTimeout
		}
		c, err := mysql.NewConnector(cfg)
		if err != nil {
			return nil, err
		}
		return &initConnector{Connector: c, init: "SET SESSION TRANSACTION READ ONLY"}, nil
	default:
		cfg, err := msdsn.Parse(o.Connection)
		if err != nil {
			return nil, err
		}
		cfg.ReadOnlyIntent = true
		if !o.ManagedIdentity {
			return mssql.NewConnectorConfig(cfg), nil
		}
		cred := o.Credential
		if cred == nil {
			if cred, err = azidentity.NewDefaultAzureCredential(nil); err != nil {
				return nil, err
			}
		}
		return mssql.NewSecurityTokenConnector(cfg, func(ctx context.Context) (string, error) {
			tok, err := cred.GetToken(ctx, policy.TokenRequestOptions{Scopes: []string{azureSQLScope}})
			return tok.Token, err
		})
	}
}

// initConnector runs a statement on every new connection (MySQL has no connection
// parameter that makes a session read-only on both MySQL and MariaDB).
type initConnector struct {
	driver.Connector
	init string
}

func (c *initConnector) Connect(ctx context.Context) (driver.Conn, error) {
	conn, err := c.Connector.Connect(ctx)
	if err != nil {
		return nil, err
	}
	ex, ok := conn.(driver.ExecerContext)
	if !ok {
		conn.Close()
		return nil, errors.New("nopdb: the MySQL driver cannot run statements on a new connection")
	}
	if _, err := ex.ExecContext(ctx, c.init, nil); err != nil {
		conn.Close()
		return nil, err
	}
	return conn, nil
}

// Error is a database error with its context and the driver's message, with the
// connection string and its secret parts removed. It does not wrap the driver's error
// (whose text may hold them); errors.Is still matches context.Canceled and
// context.DeadlineExceeded.
type Error struct {
	Op          string // what was being done: "connecting to the store database", "reading orders"
	Msg         string // the driver's message, redacted
	Unreachable bool   // the server could not be reached (network, DNS, refused, timeout)
	cause       error  // context errors only
}

func (e *Error) Error() string { return "nopdb: " + e.Op + ": " + e.Msg }

// Unwrap returns context.Canceled or context.DeadlineExceeded when the error was one.
func (e *Error) Unwrap() error { return e.cause }

// redactor removes the connection string and its secret values from error text.
type redactor struct {
	secrets []string // longest first
}

func newRedactor(provider, conn string) *redactor {
	set := map[string]bool{conn: true, strings.TrimSpace(conn): true}
	add := func(s string) {
		if len(s) >= 3 { // a 1–2 character "secret" would blank out ordinary words
			set[s] = true
		}
	}
	parsed := conn
	if c, ok := fromADONet(provider, conn); ok {
		parsed = c
		set[c] = true
	}
	switch provider {
	case PostgreSQL:
		if cfg, err := pgx.ParseConfig(parsed); err == nil {
			add(cfg.Password)
		}
	case MySQL:
		if cfg, err := mysql.ParseDSN(parsed); err == nil {
			add(cfg.Passwd)
		}
	case SQLServer:
		if cfg, err := msdsn.Parse(conn); err == nil {
			add(cfg.Password)
		}
	}
	// Whatever the driver made of it: every password=, pwd= or user:pass@ value.
	for _, part := range strings.FieldsFunc(conn, func(r rune) bool { return r == ';' || r == ' ' || r == '&' || r == '?' }) {
		k, v, ok := strings.Cut(part, "=")
		if ok && strings.Contains(strings.ToLower(k), "password") || strings.EqualFold(strings.TrimSpace(k), "pwd") {
			add(strings.Trim(strings.TrimSpace(v), `'"{}`))
		}
	}
	if provider == PostgreSQL {
		for _, pw := range libpqPasswords(conn) {
			add(pw)
			// pgx's own message masks only the first word of a value it could not parse.
			for _, word := range strings.Fields(pw) {
				add(strings.Trim(word, `'`))
			}
		}
	}
	if at := strings.LastIndex(conn, "@"); at > 0 {
		userinfo := conn[:at]
		if i := strings.Index(userinfo, "://"); i >= 0 {
			userinfo = userinfo[i+3:]
		}
		if _, pw, ok := strings.Cut(userinfo, ":"); ok {
			add(pw)
		}
	}
	r := &redactor{}
	for s := range set {
		if s != "" {
			r.secrets = append(r.secrets, s)
		}
	}
	// Longest first, so the whole string goes before any part of it.
	for i := 1; i < len(r.secrets); i++ {
		for j := i; j > 0 && len(r.secrets[j]) > len(r.secrets[j-1]); j-- {
			r.secrets[j], r.secrets[j-1] = r.secrets[j-1], r.secrets[j]
		}
	}
	return r
}

// libpqPasswords reads the password values of a PostgreSQL keyword/value string as libpq
// does ("password = 'it\'s'": spaces around "=", a quoted value with \' and \\ escapes),
// both as written and unescaped, for a string pgx could not parse (its own error text
// then holds the string).
func libpqPasswords(conn string) []string {
	var out []string
	lower := strings.ToLower(conn)
	for from := 0; ; {
		i := strings.Index(lower[from:], "password")
		if i < 0 {
			return out
		}
		j := from + i + len("password")
		from = j
		for j < len(conn) && conn[j] == ' ' {
			j++
		}
		if j >= len(conn) || conn[j] != '=' {
			continue
		}
		j++
		for j < len(conn) && conn[j] == ' ' {
			j++
		}
		if j < len(conn) && conn[j] == '\'' {
			var v strings.Builder
			k := j + 1
			for ; k < len(conn) && conn[k] != '\''; k++ {
				if conn[k] == '\\' && k+1 < len(conn) {
					k++
				}
				v.WriteByte(conn[k])
			}
			out = append(out, v.String(), conn[j+1:min(k, len(conn))])
			continue
		}
		k := j
		for k < len(conn) && conn[k] != ' ' {
			k++
		}
		out = append(out, conn[j:k])
	}
}

// clean returns s with every secret replaced by "[redacted]".
func (r *redactor) clean(s string) string {
	for _, sec := range r.secrets {
		s = strings.ReplaceAll(s, sec, "[redacted]")
	}
	return s
}

// wrap turns a driver error into an *Error (nil stays nil; an *Error or *SchemaError
// is returned as is).
func (r *redactor) wrap(op string, err error) error {
	if err == nil {
		return nil
	}
	var e *Error
	var se *SchemaError
	if errors.As(err, &e) || errors.As(err, &se) {
		return err
	}
	out := &Error{Op: op, Msg: r.clean(err.Error()), Unreachable: unreachable(err)}
	switch {
	case errors.Is(err, context.Canceled):
		out.cause = context.Canceled
	case errors.Is(err, context.DeadlineExceeded):
		out.cause, out.Unreachable = context.DeadlineExceeded, true
	}
	return out
}

// unreachable reports network-level failures (as opposed to a refused login or a bad
// query).
func unreachable(err error) bool {
	var ne net.Error
	var oe *net.OpError
	var de *net.DNSError
	if errors.As(err, &oe) || errors.As(err, &de) || errors.As(err, &ne) || errors.Is(err, driver.ErrBadConn) {
		return true
	}
	msg := strings.ToLower(err.Error())
	for _, s := range []string{"connection refused", "no such host", "i/o timeout", "network is unreachable", "dial tcp", "unable to open tcp connection", "connect: "} {
		if strings.Contains(msg, s) {
			return true
		}
	}
	return false
}
