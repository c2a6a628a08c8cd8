package nopdb

import (
	"context"
	"database/sql"
	"fmt"
	"maps"
	"path/filepath"
	"runtime"
	"testing"
	"time"

	"github.com/nopsync/nopsync/shared/nop"
	"github.com/nopsync/nopsync/shared/nopdb/nopdbtest"
	"github.com/nopsync/nopsync/shared/state"
)

// store is a test database on one engine.
type store struct {
	t        *testing.T
	provider string
	conn     string
	db       *sql.DB
}

// newStore creates a fresh nopCommerce database (schema and reference rows) on the
// provider's test server.
func newStore(t *testing.T, provider string) *store {
	t.Helper()
	conn, db := nopdbtest.NewDatabase(t, provider)
	if err := nopdbtest.Seed(context.Background(), db, provider); err != nil {
		t.Fatal(err)
	}
	return &store{t: t, provider: provider, conn: conn, db: db}
}

func (s *store) insert(table string, row map[string]any) {
	s.t.Helper()
	if err := nopdbtest.Insert(context.Background(), s.db, s.provider, table, row); err != nil {
		s.t.Fatal(err)
	}
}

func (s *store) exec(q string) {
	s.t.Helper()
	if _, err := s.db.Exec(q); err != nil {
		s.t.Fatalf("%s: %v", q, err)
	}
}

func (s *store) q(name string) string { return nopdbtest.Quote(s.provider, name) }

// open opens a reader on the store with StoreURL set and a fixed clock.
func (s *store) open(mod ...func(*Options)) *Reader {
	s.t.Helper()
	o := Options{Provider: s.provider, Connection: s.conn, StoreURL: "https://store.example.com/"}
	for _, m := range mod {
		m(&o)
	}
	r, err := Open(context.Background(), o)
	if err != nil {
		s.t.Fatal(err)
	}
	r.now = func() time.Time { return readAt }
	s.t.Cleanup(func() { r.Close() })
	return r
}

var readAt = time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)

func ts(s string) time.Time {
	t, err := time.Parse("2006-01-02 15:04:05", s)
	if err != nil {
		panic(err)
	}
	return t
}

func with(base map[string]any, over map[string]any) map[string]any {
	out := maps.Clone(base)
	maps.Copy(out, over)
	return out
}

// Rows with every NOT NULL column set; tests override what they need.

func (s *store) customer(id int, role int, over map[string]any) {
	s.t.Helper()
	s.insert("Customer", with(map[string]any{"Id": id, "CustomerGuid": guidOf(id), "CountryId": 0, "StateProvinceId": 0,
		"IsTaxExempt": false, "Active": true, "Deleted": false, "IsSystemAccount": false,
		"CreatedOnUtc": ts("2026-11-25 09:00:00"), "LastActivityDateUtc": ts("2026-11-25 09:00:00"), "RegisteredInStoreId": 1}, over))
	if role > 0 {
		s.insert("Customer_CustomerRole_Mapping", map[string]any{"Customer_Id": id, "CustomerRole_Id": role})
	}
}

func (s *store) address(id int, over map[string]any) {
	s.t.Helper()
	s.insert("Address", with(map[string]any{"Id": id, "CreatedOnUtc": ts("2026-11-25 09:00:00")}, over))
}

func (s *store) product(id int, over map[string]any) {
	s.t.Helper()
	s.insert("Product", with(map[string]any{"Id": id, "ProductTypeId": 5, "ParentGroupedProductId": 0, "VisibleIndividually": true,
		"Name": "Product", "Price": "1.0000", "OldPrice": "0.0000", "ProductCost": "0.0000", "ManageInventoryMethodId": 0,
		"StockQuantity": 0, "DisplayOrder": 0, "Published": true, "Deleted": false,
		"CreatedOnUtc": ts("2026-11-25 09:00:00"), "UpdatedOnUtc": ts("2026-11-25 09:00:00")}, over))
}

func (s *store) order(id int, over map[string]any) {
	s.t.Helper()
	base := map[string]any{"Id": id, "OrderGuid": guidOf(900000 + id), "CustomOrderNumber": "", "StoreId": 1, "CustomerId": 42,
		"BillingAddressId": 101, "PickupInStore": false, "OrderStatusId": 10, "ShippingStatusId": 10, "PaymentStatusId": 10,
		"CustomerCurrencyCode": "USD", "CurrencyRate": "1.0000", "CustomerTaxDisplayTypeId": 0, "Deleted": false,
		"CreatedOnUtc": ts("2026-11-25 10:00:00")}
	for _, m := range []string{"OrderSubtotalInclTax", "OrderSubtotalExclTax", "OrderSubTotalDiscountInclTax", "OrderSubTotalDiscountExclTax",
		"OrderShippingInclTax", "OrderShippingExclTax", "PaymentMethodAdditionalFeeInclTax", "PaymentMethodAdditionalFeeExclTax",
		"OrderTax", "OrderDiscount", "OrderTotal", "RefundedAmount"} {
		base[m] = "0.0000"
	}
	s.insert("Order", with(base, over))
}

func (s *store) item(id, orderID, productID int, over map[string]any) {
	s.t.Helper()
	base := map[string]any{"Id": id, "OrderItemGuid": guidOf(800000 + id), "OrderId": orderID, "ProductId": productID, "Quantity": 1}
	for _, m := range []string{"UnitPriceInclTax", "UnitPriceExclTax", "PriceInclTax", "PriceExclTax", "DiscountAmountInclTax",
		"DiscountAmountExclTax", "OriginalProductCost"} {
		base[m] = "1.0000"
	}
	base["DiscountAmountInclTax"], base["DiscountAmountExclTax"] = "0.0000", "0.0000"
	s.insert("OrderItem", with(base, over))
}

func guidOf(n int) string { return fmt.Sprintf("00000000-0000-4000-8000-%012d", n) }

// readAll reads every page of entity from cursor 0 with page size limit.
func readAll(t *testing.T, r *Reader, entity state.Entity, limit int) (events []*nop.Event, hashes []string, failures []RowFailure, pages int) {
	t.Helper()
	var after int64
	for {
		p, err := r.ReadPage(context.Background(), entity, after, limit)
		if err != nil {
			t.Fatalf("reading %ss after %d: %v", entity, after, err)
		}
		pages++
		if len(p.Events) != len(p.Hashes) {
			t.Fatalf("%d events, %d hashes", len(p.Events), len(p.Hashes))
		}
		if p.Rows != len(p.Events)+len(p.Failures) {
			t.Fatalf("page of %d rows has %d events and %d failures", p.Rows, len(p.Events), len(p.Failures))
		}
		events = append(events, p.Events...)
		hashes = append(hashes, p.Hashes...)
		failures = append(failures, p.Failures...)
		if p.Rows > 0 && p.Last <= after {
			t.Fatalf("cursor did not move: after %d, last %d", after, p.Last)
		}
		after = p.Last
		if p.Done {
			return
		}
		if pages > 100000 {
			t.Fatal("no end of pages")
		}
	}
}

func byID(events []*nop.Event) map[string]*nop.Event {
	m := map[string]*nop.Event{}
	for _, e := range events {
		m[e.EntityID()] = e
	}
	return m
}

func examplesDir(t *testing.T) string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "..", "..", "examples")
}

// forEachProvider runs f on PostgreSQL and MariaDB.
func forEachProvider(t *testing.T, f func(t *testing.T, provider string)) {
	for _, p := range nopdbtest.Providers {
		t.Run(p, func(t *testing.T) { f(t, p) })
	}
}
