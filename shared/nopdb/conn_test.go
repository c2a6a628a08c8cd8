package nopdb

import (
	"context"
	"errors"
	"net"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"

	"github.com/go-sql-driver/mysql"
	"github.com/jackc/pgx/v5"

	"github.com/nopsync/nopsync/shared/nopdb/nopdbtest"
	"github.com/nopsync/nopsync/shared/state"
)

// TestSchemaCheck: a complete schema passes; a missing column, a missing table and a
// schema older than 4.60 are *SchemaErrors naming the table, the column and the
// nopCommerce versions the reader expects.
func TestSchemaCheck(t *testing.T) {
	forEachProvider(t, func(t *testing.T, provider string) {
		ctx := context.Background()
		s := newStore(t, provider)
		r := s.open()
		if err := r.Check(ctx); err != nil {
			t.Fatalf("complete schema: %v", err)
		}

		s.exec("ALTER TABLE " + s.q("Order") + " DROP COLUMN " + s.q("OrderTotal"))
		var se *SchemaError
		err := r.Check(ctx)
		if !errors.As(err, &se) || se.Table != "Order" || se.Column != "OrderTotal" || se.Older ||
			!strings.Contains(err.Error(), `"OrderTotal"`) || !strings.Contains(err.Error(), "4.60 to 4.90") {
			t.Fatalf("missing Order.OrderTotal: %v", err)
		}

		s.exec("DROP TABLE " + s.q("OrderItem"))
		s.exec("ALTER TABLE " + s.q("Order") + " ADD " + s.q("OrderTotal") + " decimal(18,4) NULL")
		err = r.Check(ctx)
		if !errors.As(err, &se) || se.Table != "OrderItem" || se.Column != "" || !strings.Contains(err.Error(), `table "OrderItem" is missing`) {
			t.Fatalf("missing OrderItem: %v", err)
		}

		// Before 4.60 names, company and phone were GenericAttribute rows.
		s.exec("ALTER TABLE " + s.q("Customer") + " DROP COLUMN " + s.q("FirstName"))
		err = r.Check(ctx)
		if !errors.As(err, &se) || !se.Older || se.Column != "FirstName" || !strings.Contains(err.Error(), "older than 4.60") {
			t.Fatalf("4.50 schema: %v", err)
		}
		// Reading such a schema fails with the driver's error, never a crash.
		if _, err := r.ReadPage(ctx, state.Customer, 0, 10); err == nil {
			t.Fatal("read customers without a FirstName column")
		}
	})
}

// TestSchemaCheckMySQLTableCase: on a MySQL or MariaDB server that compares table names
// with case (lower_case_table_names 0, Linux's default), a table stored in lower case is
// not the one the reader's queries name: Check names it, rather than every page failing
// with the driver's error.
func TestSchemaCheckMySQLTableCase(t *testing.T) {
	forEachProvider(t, func(t *testing.T, provider string) {
		if provider != MySQL {
			t.Skip("MySQL's table-name case rule")
		}
		ctx := context.Background()
		s := newStore(t, provider)
		r := s.open()
		var lower int
		if err := r.db.QueryRowContext(ctx, "SELECT @@lower_case_table_names").Scan(&lower); err != nil || lower != 0 {
			t.Skipf("the server folds table names (lower_case_table_names %d, %v)", lower, err)
		}
		s.exec("RENAME TABLE `OrderItem` TO `orderitem`")
		var se *SchemaError
		if err := r.Check(ctx); !errors.As(err, &se) || se.Table != "OrderItem" {
			t.Fatalf("table stored as orderitem: %v, want the schema error naming OrderItem", err)
		}
	})
}

// TestReadOnlySession: the reader's connections refuse writes (PostgreSQL
// default_transaction_read_only, MySQL SET SESSION TRANSACTION READ ONLY).
func TestReadOnlySession(t *testing.T) {
	forEachProvider(t, func(t *testing.T, provider string) {
		s := newStore(t, provider)
		r := s.open()
		_, err := r.db.Exec("INSERT INTO " + s.q("Setting") + " (" + s.q("Name") + ", " + s.q("Value") + ", " + s.q("StoreId") + ") VALUES ('x', 'y', 0)")
		if err == nil || !strings.Contains(strings.ToLower(err.Error()), "read") {
			t.Fatalf("a write through the reader's pool: %v", err)
		}
	})
}

// TestConnectionErrors: a wrong password and an unreachable server are clear errors that
// never contain the connection string or its password; unreachable is marked so.
func TestConnectionErrors(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	const secret = "S3cret-Pa55word-zq"
	closed := closedPort(t)

	forEachProvider(t, func(t *testing.T, provider string) {
		admin := nopdbtest.ServerConn(t, provider)
		var wrong, unreachable string
		switch provider {
		case nopdbtest.PostgreSQL:
			cfg, err := pgx.ParseConfig(admin)
			if err != nil {
				t.Fatal(err)
			}
			wrong = "postgres://postgres:" + secret + "@" + cfg.Host + ":" + strconv.Itoa(int(cfg.Port)) + "/postgres?sslmode=disable"
			unreachable = "host=127.0.0.1 port=" + closed + " user=nop password=" + secret + " dbname=nop sslmode=disable connect_timeout=5"
		case nopdbtest.MySQL:
			cfg, err := mysql.ParseDSN(admin)
			if err != nil {
				t.Fatal(err)
			}
			wrong = cfg.User + ":" + secret + "@tcp(" + cfg.Addr + ")/"
			unreachable = "nop:" + secret + "@tcp(127.0.0.1:" + closed + ")/nop?timeout=5s"
		}
		for _, c := range []struct {
			name, conn  string
			unreachable bool
		}{{"wrong password", wrong, false}, {"unreachable", unreachable, true}} {
			_, err := Open(ctx, Options{Provider: provider, Connection: c.conn})
			var e *Error
			if !errors.As(err, &e) {
				t.Fatalf("%s: %T %v", c.name, err, err)
			}
			if e.Unreachable != c.unreachable {
				t.Errorf("%s: Unreachable = %v: %v", c.name, e.Unreachable, err)
			}
			if strings.Contains(err.Error(), secret) || strings.Contains(err.Error(), c.conn) {
				t.Errorf("%s: the error holds the secret: %v", c.name, err)
			}
			t.Logf("%s: %v", c.name, err)
		}
	})

	// SQL Server's driver runs too (no server: the port is closed).
	conn := "sqlserver://sa:" + secret + "@127.0.0.1:" + closed + "?database=nop&dial+timeout=5"
	_, err := Open(ctx, Options{Provider: SQLServer, Connection: conn})
	var e *Error
	if !errors.As(err, &e) || !e.Unreachable || strings.Contains(err.Error(), secret) {
		t.Errorf("sqlserver unreachable: %v", err)
	}
	conn = "server=127.0.0.1;port=" + closed + ";user id=sa;password=" + secret + ";database=nop;dial timeout=5"
	_, err = Open(ctx, Options{Provider: SQLServer, Connection: conn})
	if !errors.As(err, &e) || !e.Unreachable || strings.Contains(err.Error(), secret) {
		t.Errorf("sqlserver (ADO form) unreachable: %v", err)
	}
}

func closedPort(t *testing.T) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	_, port, _ := net.SplitHostPort(l.Addr().String())
	l.Close()
	return port
}

// TestBadOptions: settings errors name the problem, not the secret.
func TestBadOptions(t *testing.T) {
	ctx := context.Background()
	for _, c := range []struct {
		o    Options
		want string
	}{
		{Options{Provider: "oracle", Connection: "x"}, `unknown database provider "oracle"`},
		{Options{Provider: "postgresql"}, "no connection string"},
		{Options{Provider: "mysql", Connection: "u:pw@tcp(h)/db", ManagedIdentity: true}, "managed identity"},
		{Options{Provider: "mysql", Connection: "nop:Very-Secret-1@tcp(127.0.0.1:1)/db?badparam=%zz"}, "opening"},
		{Options{Provider: "postgresql", Connection: "host=127.0.0.1 port=bad user=nop password= Very-Secret-1 dbname=nop"}, "opening"},
		{Options{Provider: "postgresql", Connection: `host=127.0.0.1 port=bad user=nop password='it\'s Very-Secret-1' dbname=nop`}, "opening"},
	} {
		_, err := Open(ctx, c.o)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%+v: %v, want %q", c.o.Provider, err, c.want)
		}
		if err != nil && c.o.Connection != "" && (strings.Contains(err.Error(), "Very-Secret-1") || strings.Contains(err.Error(), c.o.Connection)) {
			t.Errorf("error holds the connection string: %v", err)
		}
	}
}

// TestRedactor: every form of password in the three engines' connection strings.
func TestRedactor(t *testing.T) {
	for _, c := range []struct{ provider, conn, secret string }{
		{PostgreSQL, "postgres://nop:pa55-word@db:5432/nop", "pa55-word"},
		{PostgreSQL, "host=db user=nop password='pa55 word' dbname=nop", "pa55 word"},
		{MySQL, "nop:pa55-word@tcp(db:3306)/nop", "pa55-word"},
		{SQLServer, "server=db;user id=nop;password=pa55-word;database=nop", "pa55-word"},
		{SQLServer, "Server=db;User ID=nop;Pwd={pa55;word};Database=nop", "pa55;word"},
		{SQLServer, "sqlserver://nop:pa55-word@db?database=nop", "pa55-word"},
		{PostgreSQL, "Server=db;Database=nop;User Id=nop;Password=pa55 w@rd", "pa55 w@rd"},
		{MySQL, "Server=db;Database=nop;Uid=nop;Pwd=pa55-word", "pa55-word"},
		// libpq keyword/value forms pgx can't parse when another option is bad.
		{PostgreSQL, "host=db port=bad user=nop password= pa55-word dbname=nop", "pa55-word"},
		{PostgreSQL, `host=db port=bad user=nop password='it\'s pa55-word' dbname=nop`, "pa55-word"},
	} {
		r := newRedactor(c.provider, c.conn)
		msg := r.clean("failed: " + c.conn + " / " + c.secret + " / done")
		if strings.Contains(msg, c.secret) || !strings.Contains(msg, "done") {
			t.Errorf("%s %q: %q", c.provider, c.conn, msg)
		}
	}
}

// fakeCredential hands out a token and counts the requests.
type fakeCredential struct{ calls atomic.Int32 }

func (c *fakeCredential) GetToken(context.Context, policy.TokenRequestOptions) (azcore.AccessToken, error) {
	c.calls.Add(1)
	return azcore.AccessToken{Token: "token", ExpiresOn: time.Now().Add(time.Hour)}, nil
}

// TestManagedIdentityConnector: Azure SQL with a managed identity builds its token
// connector and fails like any unreachable server when there is none (no SQL Server
// can run here, so the sign-in itself is not exercised).
func TestManagedIdentityConnector(t *testing.T) {
	cred := &fakeCredential{}
	conn := "sqlserver://127.0.0.1:" + closedPort(t) + "?database=nop&dial+timeout=5"
	_, err := Open(context.Background(), Options{Provider: SQLServer, Connection: conn, ManagedIdentity: true, Credential: cred})
	var e *Error
	if !errors.As(err, &e) || !e.Unreachable {
		t.Fatalf("managed identity, no server: %v", err)
	}
}

// TestNopCommerceConnectionString: the connection string from nopCommerce's
// App_Data/appsettings.json (ADO.NET form) opens the reader on both engines.
func TestNopCommerceConnectionString(t *testing.T) {
	forEachProvider(t, func(t *testing.T, provider string) {
		s := newStore(t, provider)
		var ado string
		switch provider {
		case nopdbtest.PostgreSQL:
			cfg, err := pgx.ParseConfig(s.conn)
			if err != nil {
				t.Fatal(err)
			}
			ado = "Server=" + cfg.Host + ";Port=" + strconv.Itoa(int(cfg.Port)) + ";Database=" + cfg.Database +
				";User Id=" + cfg.User + ";Password=" + cfg.Password + ";SslMode=Disable"
		case nopdbtest.MySQL:
			cfg, err := mysql.ParseDSN(s.conn)
			if err != nil {
				t.Fatal(err)
			}
			host, port, _ := net.SplitHostPort(cfg.Addr)
			ado = "Server=" + host + ";Port=" + port + ";Database=" + cfg.DBName + ";Uid=" + cfg.User + ";Pwd=" + cfg.Passwd + ";SslMode=None"
		}
		r, err := Open(context.Background(), Options{Provider: provider, Connection: ado})
		if err != nil {
			t.Fatalf("%s: %v", provider, err)
		}
		defer r.Close()
		if err := r.Check(context.Background()); err != nil {
			t.Fatal(err)
		}
	})
}

func TestFromADONet(t *testing.T) {
	for _, c := range []struct{ provider, in, want string }{
		{PostgreSQL, "Server=db.example;Port=5433;Database=nop;User Id=nop;Password='p@ss w'", "postgres://nop:p%40ss%20w@db.example:5433/nop?sslmode=prefer"},
		{PostgreSQL, "Host=db;Database=nop;Username=nop;Password=x;SSL Mode=Require", "postgres://nop:x@db:5432/nop?sslmode=require"},
		{MySQL, "Server=db;Database=nop;Uid=nop;Pwd=x;SslMode=VerifyFull", "nop:x@tcp(db:3306)/nop?tls=true"},
		{MySQL, "server=db:3307;database=nop;user id=nop;password=x", "nop:x@tcp(db:3307)/nop?tls=preferred"},
	} {
		got, ok := fromADONet(c.provider, c.in)
		if !ok || got != c.want {
			t.Errorf("%s %q: %q, %v; want %q", c.provider, c.in, got, ok, c.want)
		}
	}
	for _, c := range []struct{ provider, in string }{
		{PostgreSQL, "postgres://nop:x@db/nop"}, {PostgreSQL, "host=db user=nop"}, {MySQL, "nop:x@tcp(db)/nop"},
		{SQLServer, "server=db;user id=nop;password=x"},
	} {
		if got, ok := fromADONet(c.provider, c.in); ok {
			t.Errorf("%s %q taken for ADO.NET: %q", c.provider, c.in, got)
		}
	}
}
