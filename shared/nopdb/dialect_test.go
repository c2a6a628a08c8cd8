package nopdb

import (
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

var update = flag.Bool("update", false, "rewrite the golden query files in testdata/queries")

// queries are every query the reader runs, per dialect.
func queries(d *dialect) map[string]string {
	return map[string]string{
		"customers_page":      d.customersPage(500),
		"customers_by_id":     d.customersByID([]int64{3, 7}),
		"gdpr_deleted":        d.gdprDeletedCustomers(500),
		"customer_roles":      d.customerRoles([]int64{3, 7}),
		"roles":               d.roles(),
		"products_by_id":      d.productsByID([]int64{7, 12}),
		"addresses_by_id":     d.addressesByID([]int64{11, 12}),
		"products_page":       d.productsPage(500),
		"associated_products": d.associatedProducts([]int64{20, 21}),
		"pictures":            d.pictures(),
		"orders_page":         d.ordersPage(500),
		"order_items":         d.orderItems(),
		"currency_setting":    d.currencySetting(),
		"currency_code":       d.currencyCode(),
		"columns":             d.columns(),
	}
}

// TestQueriesGolden pins the text of every query on the three engines. SQL Server can't
// run in the tests, so its golden files are the only check its queries get: they were
// read against nopCommerce's SQL Server schema (bracketed names, TOP (n), @pN
// parameters, bit columns compared with 0, uniqueidentifier converted to text) but not
// run. PostgreSQL's and MySQL's also run against real servers (reader_test.go).
// Run with -update after a deliberate change and review the diff.
func TestQueriesGolden(t *testing.T) {
	for _, p := range []string{SQLServer, MySQL, PostgreSQL} {
		d := dialects[p]
		for name, q := range queries(d) {
			path := filepath.Join("testdata", "queries", p, name+".sql")
			if *update {
				if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(path, []byte(q+"\n"), 0o644); err != nil {
					t.Fatal(err)
				}
				continue
			}
			want, err := os.ReadFile(path)
			if err != nil {
				t.Fatalf("%s: %v (run go test -run TestQueriesGolden -update)", path, err)
			}
			if got := q + "\n"; got != string(want) {
				t.Errorf("%s %s changed:\n got: %s\nwant: %s", p, name, got, want)
			}
		}
	}
}

// TestDialectsShareStructure checks the three dialects' queries differ only in quoting,
// parameters, limits, boolean literals and Guid conversion: the same text once those are
// normalised.
func TestDialectsShareStructure(t *testing.T) {
	norm := func(p, q string) string {
		r := strings.NewReplacer("[", "", "]", "", "`", "", `"`, "", "@p1", "?", "@p2", "?", "@p3", "?", "$1", "?", "$2", "?", "$3", "?",
			" = false", " = 0", " = true", " = 1", "TOP (500) ", "", " LIMIT 500", "", "CONVERT(NVARCHAR(36), ", "", "CAST(", "", " AS text)", "")
		q = r.Replace(q)
		if p == MySQL { // MySQL's Guid columns need no conversion, so it has no closing paren to drop
			return q
		}
		return strings.NewReplacer("CustomerGuid)", "CustomerGuid", "OrderGuid)", "OrderGuid", "OrderItemGuid)", "OrderItemGuid").Replace(q)
	}
	base := queries(dialects[MySQL])
	for _, p := range []string{SQLServer, PostgreSQL} {
		for name, q := range queries(dialects[p]) {
			if name == "columns" {
				continue // the current schema's name is engine-specific
			}
			if got, want := norm(p, q), norm(MySQL, base[name]); got != want {
				t.Errorf("%s %s differs from MySQL's beyond the dialect:\n%s\n%s", p, name, got, want)
			}
		}
	}
}

func TestQuoteOrderEverywhere(t *testing.T) {
	want := map[string]string{SQLServer: "FROM [Order] o", MySQL: "FROM `Order` o", PostgreSQL: `FROM "Order" o`}
	for p, w := range want {
		if q := dialects[p].ordersPage(10); !strings.Contains(q, w) {
			t.Errorf("%s: orders query does not quote the reserved table name: %s", p, q)
		}
	}
}
