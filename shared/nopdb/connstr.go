package nopdb

import (
	"net"
	"net/url"
	"strings"

	"github.com/go-sql-driver/mysql"
)

// nopCommerce keeps its connection string in App_Data/appsettings.json in the ADO.NET
// form of its provider's .NET driver ("Server=db;Port=5432;Database=nop;User Id=nop;
// Password=..." for Npgsql, "Server=db;Database=nop;Uid=nop;Pwd=..." for MySqlConnector).
// The Go drivers for PostgreSQL and MySQL take other forms, so a store owner's copy of
// that string is translated here; SQL Server's driver takes the ADO.NET form as it is.

// adoNetKeys maps the ADO.NET keywords (case-insensitive) to what they set.
var adoNetKeys = map[string]string{
	"server": "host", "host": "host", "data source": "host", "datasource": "host", "address": "host", "addr": "host",
	"port":     "port",
	"database": "database", "initial catalog": "database",
	"user id": "user", "userid": "user", "uid": "user", "user": "user", "username": "user", "user name": "user",
	"password": "password", "pwd": "password",
	"sslmode": "ssl", "ssl mode": "ssl",
}

// fromADONet translates an ADO.NET connection string for provider (postgresql or mysql)
// into the Go driver's form; ok is false when conn is not in that form (a URL, a pgx
// "key=value" string or a MySQL DSN are used as they are).
func fromADONet(provider, conn string) (string, bool) {
	if provider == SQLServer || !strings.Contains(conn, ";") || strings.Contains(conn, "://") {
		return "", false
	}
	v := map[string]string{}
	for _, part := range strings.Split(conn, ";") {
		k, val, found := strings.Cut(part, "=")
		if !found {
			continue
		}
		if key, known := adoNetKeys[strings.ToLower(strings.TrimSpace(k))]; known {
			v[key] = strings.Trim(strings.TrimSpace(val), `'"`)
		}
	}
	if v["host"] == "" {
		return "", false
	}
	host, port := v["host"], v["port"]
	if h, p, err := net.SplitHostPort(host); err == nil && port == "" {
		host, port = h, p
	}
	ssl := strings.ToLower(strings.ReplaceAll(v["ssl"], " ", ""))
	if provider == PostgreSQL {
		if port == "" {
			port = "5432"
		}
		u := url.URL{Scheme: "postgres", User: url.UserPassword(v["user"], v["password"]), Host: net.JoinHostPort(host, port), Path: "/" + v["database"]}
		q := url.Values{}
		switch ssl { // Npgsql's SslMode values
		case "disable":
			q.Set("sslmode", "disable")
		case "allow", "prefer", "":
			q.Set("sslmode", "prefer")
		case "require":
			q.Set("sslmode", "require")
		case "verifyca":
			q.Set("sslmode", "verify-ca")
		case "verifyfull":
			q.Set("sslmode", "verify-full")
		}
		u.RawQuery = q.Encode()
		return u.String(), true
	}
	if port == "" {
		port = "3306"
	}
	cfg := mysql.NewConfig()
	cfg.User, cfg.Passwd, cfg.Net, cfg.Addr, cfg.DBName = v["user"], v["password"], "tcp", net.JoinHostPort(host, port), v["database"]
	switch ssl { // MySqlConnector's SslMode values
	case "none", "disabled":
		cfg.TLSConfig = "false"
	case "required":
		cfg.TLSConfig = "skip-verify"
	case "verifyca", "verifyfull":
		cfg.TLSConfig = "true"
	default: // Preferred, the .NET default
		cfg.TLSConfig = "preferred"
	}
	return cfg.FormatDSN(), true
}
