package nopdb

import (
	"context"
	"reflect"
	"strings"
	"testing"

	"github.com/nopsync/nopsync/shared/nop"
	"github.com/nopsync/nopsync/shared/nopdb/nopdbtest"
	"github.com/nopsync/nopsync/shared/state"
)

// TestGDPRDeletesPaged: a bulk GDPR delete leaves many deleted guests between (or after)
// the registered customers; a page still holds at most twice its size, and every
// customer comes once, in id order.
func TestGDPRDeletesPaged(t *testing.T) {
	forEachProvider(t, func(t *testing.T, provider string) {
		s := exampleStore(t, provider)
		for id := 100; id < 160; id++ {
			s.customer(id, nopdbtest.RoleGuests, map[string]any{"Email": "", "Username": "", "Deleted": true})
		}
		s.customer(160, nopdbtest.RoleRegistered, map[string]any{"Email": "after@example.com"})
		for id := 161; id < 190; id++ {
			s.customer(id, nopdbtest.RoleGuests, map[string]any{"Email": "", "Username": "", "Deleted": true})
		}
		r := s.open()
		all, _, _, _ := readAll(t, r, state.Customer, 1000)
		const limit = 10
		var after int64
		var paged []*nop.Event
		for pages := 0; ; pages++ {
			p, err := r.ReadPage(context.Background(), state.Customer, after, limit)
			if err != nil {
				t.Fatal(err)
			}
			if p.Rows > 2*limit {
				t.Fatalf("a page of %d rows at limit %d", p.Rows, limit)
			}
			paged = append(paged, p.Events...)
			after = p.Last
			if p.Done || pages > 1000 {
				break
			}
		}
		if len(paged) != len(all) || len(all) < 90 {
			t.Fatalf("paged %d customers, in one page %d (want the same, 90 or more)", len(paged), len(all))
		}
		for i := range all {
			if paged[i].ID != all[i].ID {
				t.Fatalf("customer %d is %s paged, %s in one page", i, paged[i].EntityID(), all[i].EntityID())
			}
		}
	})
}

// TestDeletes: soft-deleted rows become *.deleted events with data.deleted true; a GDPR
// delete (Deleted, email and username emptied, moved from Registered to Guests: nopCommerce's
// GdprService.PermanentDeleteCustomerAsync) is a customer.deleted, on whatever page its id
// falls; guests and customers in no role are not read; deleted associated products leave
// their family.
func TestDeletes(t *testing.T) {
	forEachProvider(t, func(t *testing.T, provider string) {
		s := exampleStore(t, provider)
		s.customer(50, nopdbtest.RoleRegistered, map[string]any{"Email": "gone@example.com-DELETED", "Username": "gone@example.com-DELETED", "Deleted": true})
		s.customer(51, nopdbtest.RoleGuests, map[string]any{"Email": "", "Username": "", "Deleted": true, "Active": false, "FirstName": nil})
		s.customer(52, nopdbtest.RoleGuests, nil)
		s.customer(53, 0, map[string]any{"Email": "norole@example.com"})
		s.customer(54, nopdbtest.RoleGuests, map[string]any{"Deleted": true}) // a guest deleted in admin: no email at all
		s.customer(55, nopdbtest.RoleRegistered, map[string]any{"Email": "last@example.com"})
		s.customer(56, nopdbtest.RoleGuests, map[string]any{"Email": "", "Username": "", "Deleted": true}) // after the last registered one
		s.product(14, map[string]any{"ParentGroupedProductId": 20, "Name": "Lens pen", "Deleted": true})
		s.product(15, map[string]any{"Name": "Old tripod", "Deleted": true, "Price": "9999999999999.0000"})
		s.order(1002, map[string]any{"Deleted": true})
		s.item(5003, 1002, 7, nil)
		r := s.open()

		customers, _, fails, _ := readAll(t, r, state.Customer, 100)
		got := byID(customers)
		if len(fails) > 0 || len(got) != 5 || got["52"] != nil || got["53"] != nil || got["54"] != nil {
			t.Fatalf("customers read: %v, failures %+v (want 42, 50, 51, 55, 56)", keys(got), fails)
		}
		// Pages of one registered customer each: the GDPR deletes still come, once, in id order.
		small, _, _, _ := readAll(t, r, state.Customer, 1)
		if len(small) != len(customers) {
			t.Fatalf("pages of 1: %d customers, want %d", len(small), len(customers))
		}
		for i := range small {
			if small[i].ID != customers[i].ID {
				t.Fatalf("pages of 1: customer %d is %s, want %s", i, small[i].EntityID(), customers[i].EntityID())
			}
		}
		for _, id := range []string{"50", "51", "56"} {
			if ev := got[id]; ev.Type != "customer.deleted" || !ev.Customer.Deleted {
				t.Errorf("customer %s: %s deleted=%v", id, ev.Type, ev.Customer.Deleted)
			}
		}
		if e := got["51"].Customer.Email; e == nil || *e != "" {
			t.Errorf("GDPR-deleted customer's email: %v", e)
		}

		products, _, fails, _ := readAll(t, r, state.Product, 100)
		gp := byID(products)
		if len(fails) > 0 {
			t.Fatalf("product failures: %+v", fails)
		}
		for _, id := range []string{"14", "15"} {
			if ev := gp[id]; ev == nil || ev.Type != "product.deleted" || !ev.Product.Deleted {
				t.Errorf("product %s: %+v", id, ev)
			}
		}
		if ids := gp["20"].Product.AssociatedProductIDs; !reflect.DeepEqual(ids, []int{12, 13}) {
			t.Errorf("family 20 lists %v, want [12 13] (deleted 14 left out)", ids)
		}

		orders, _, fails, _ := readAll(t, r, state.Order, 100)
		if len(fails) > 0 {
			t.Fatalf("order failures: %+v", fails)
		}
		if ev := byID(orders)["1002"]; ev == nil || ev.Type != "order.deleted" || !ev.Order.Deleted {
			t.Errorf("order 1002: %+v", ev)
		}
	})
}

// TestOddData: rows that can't make a valid event are failures with their reason; the
// rows around them are read as usual and nothing stops.
func TestOddData(t *testing.T) {
	forEachProvider(t, func(t *testing.T, provider string) {
		s := exampleStore(t, provider)
		long := strings.Repeat("x", 95) + "@example.com"
		s.customer(60, nopdbtest.RoleRegistered, map[string]any{"Email": long, "Username": long})
		s.customer(61, nopdbtest.RoleRegistered, map[string]any{"Email": "nameless@example.com"}) // null names
		s.customer(62, nopdbtest.RoleRegistered, map[string]any{"Email": "dangling@example.com", "BillingAddress_Id": 999})
		s.product(30, map[string]any{"Name": "Gold bar", "Price": "1000000000000.0001"})
		s.product(31, map[string]any{"Name": "Orphan", "ParentGroupedProductId": 999})
		s.product(32, map[string]any{"Name": "Child of a simple product", "ParentGroupedProductId": 7})
		s.product(33, map[string]any{"Name": nil})
		s.product(34, map[string]any{"Name": "Odd type", "ProductTypeId": 7})
		if provider == nopdbtest.PostgreSQL { // citext has no length; MySQL's varchar(400) refuses it
			s.product(35, map[string]any{"Name": strings.Repeat("n", 401)})
		}
		s.order(1003, nil)                                      // no items
		s.order(1004, map[string]any{"BillingAddressId": 998})  // billing address gone
		s.order(1005, map[string]any{"CustomerId": 997})        // customer gone
		s.order(1006, map[string]any{"OrderTotal": "-1.0000"})  // negative total
		s.order(1007, map[string]any{"CustomOrderNumber": nil}) // number not set yet
		s.order(1008, map[string]any{"StoreId": 2})             // another store's order
		s.order(1009, map[string]any{"PaymentStatusId": 99})    // not a PaymentStatus
		s.item(5004, 1004, 7, nil)
		s.item(5005, 1005, 7, nil)
		s.item(5006, 1006, 7, nil)
		s.item(5007, 1007, 7, nil)
		s.item(5008, 1008, 7, nil)
		s.item(5009, 1009, 7, nil)
		s.order(1010, nil)
		s.item(5010, 1010, 404, nil) // product gone
		r := s.open()

		customers, _, fails, _ := readAll(t, r, state.Customer, 2)
		got := byID(customers)
		if f := failureOf(fails, "60"); f == nil || !strings.Contains(f.Reason, "107 characters") || !strings.Contains(f.Reason, "100") {
			t.Errorf("customer 60 with a 107-character email: %+v", f)
		}
		if c := got["61"]; c == nil || c.Customer.FirstName != nil || c.Customer.LastName != nil {
			t.Errorf("customer 61 with null names: %+v", c)
		}
		if c := got["62"]; c == nil || c.Customer.Address != nil {
			t.Errorf("customer 62 whose billing address is gone: %+v", c)
		}
		if got["42"] == nil {
			t.Error("customer 42 missing")
		}

		products, _, fails, _ := readAll(t, r, state.Product, 3)
		want := map[string]string{
			"30": "beyond Dataverse's money range",
			"31": "grouped product 999",
			"32": "is not a grouped product",
			"33": "has no name",
			"34": "productType",
		}
		if provider == nopdbtest.PostgreSQL {
			want["35"] = "name"
		}
		for id, reason := range want {
			if f := failureOf(fails, id); f == nil || !strings.Contains(f.Reason, reason) || f.Entity != state.Product {
				t.Errorf("product %s: failure %+v, want a reason with %q", id, f, reason)
			}
		}
		if len(products) != 4 || len(fails) != len(want) {
			t.Errorf("%d products and %d failures, want 4 and %d: %+v", len(products), len(fails), len(want), fails)
		}

		orders, _, fails, _ := readAll(t, r, state.Order, 4)
		wantOrders := map[string]string{
			"1003": "no items",
			"1004": "billing address 998",
			"1005": "customer 997",
			"1006": "orderTotal -1.0000 is beyond",
			"1009": "paymentStatus",
			"1010": "product 404",
		}
		for id, reason := range wantOrders {
			if f := failureOf(fails, id); f == nil || !strings.Contains(f.Reason, reason) {
				t.Errorf("order %s: failure %+v, want a reason with %q", id, f, reason)
			}
		}
		for _, f := range fails {
			t.Logf("order %s: %s", f.ID, f.Reason)
		}
		og := byID(orders)
		if og["1008"] != nil || failureOf(fails, "1008") != nil {
			t.Error("store 2's order 1008 was read for store 1")
		}
		if o := og["1007"]; o == nil || o.Order.CustomOrderNumber != "1007" {
			t.Errorf("order 1007 without a custom number: %+v", o)
		}
		if len(orders) != 2 || len(fails) != len(wantOrders) {
			t.Errorf("%d orders and %d failures: %v %+v", len(orders), len(fails), keys(og), fails)
		}
	})
}

// TestPictures: the main picture (lowest DisplayOrder) as nopCommerce names it under
// the store URL; none without a store URL.
func TestPictures(t *testing.T) {
	forEachProvider(t, func(t *testing.T, provider string) {
		s := exampleStore(t, provider)
		s.product(40, map[string]any{"Name": "No SEO name"})
		s.insert("Picture", map[string]any{"Id": 40, "MimeType": "image/pjpeg", "IsNew": false})
		s.insert("Product_Picture_Mapping", map[string]any{"Id": 40, "ProductId": 40, "PictureId": 40, "DisplayOrder": 0})
		events, _, _, _ := readAll(t, s.open(), state.Product, 100)
		got := byID(events)
		if u := got["7"].Product.PictureURLs; !reflect.DeepEqual(u, []string{"https://store.example.com/images/thumbs/0000007_nikon-d5500-dslr.jpeg"}) {
			t.Errorf("product 7 pictures %v", u)
		}
		if u := got["40"].Product.PictureURLs; !reflect.DeepEqual(u, []string{"https://store.example.com/images/thumbs/0000040.jpg"}) {
			t.Errorf("product 40 pictures %v", u)
		}
		events, _, _, _ = readAll(t, s.open(func(o *Options) { o.StoreURL = "" }), state.Product, 100)
		if u := byID(events)["7"].Product.PictureURLs; len(u) != 0 {
			t.Errorf("no store URL, yet pictures %v", u)
		}
	})
}

// TestAssociatedOrder: a family lists its products by DisplayOrder, then id, as
// nopCommerce's GetAssociatedProductsAsync does.
func TestAssociatedOrder(t *testing.T) {
	forEachProvider(t, func(t *testing.T, provider string) {
		s := newStore(t, provider)
		s.product(1, map[string]any{"ProductTypeId": 10, "Name": "Family"})
		s.product(2, map[string]any{"ParentGroupedProductId": 1, "DisplayOrder": 5})
		s.product(3, map[string]any{"ParentGroupedProductId": 1, "DisplayOrder": 1})
		s.product(4, map[string]any{"ParentGroupedProductId": 1, "DisplayOrder": 1})
		events, _, _, _ := readAll(t, s.open(), state.Product, 100)
		if ids := byID(events)["1"].Product.AssociatedProductIDs; !reflect.DeepEqual(ids, []int{3, 4, 2}) {
			t.Errorf("associated %v, want [3 4 2]", ids)
		}
	})
}

// TestStoreCurrency: the all-stores setting, a per-store override, and a setting that
// names no currency.
func TestStoreCurrency(t *testing.T) {
	forEachProvider(t, func(t *testing.T, provider string) {
		s := newStore(t, provider)
		ctx := context.Background()
		r := s.open()
		if c, err := r.StoreCurrency(ctx); err != nil || c != "USD" {
			t.Fatalf("store currency %q, %v; want USD", c, err)
		}
		s.insert("Setting", map[string]any{"Id": 2, "Name": "currencysettings.primarystorecurrencyid", "Value": "2", "StoreId": 1})
		if c, err := r.StoreCurrency(ctx); err != nil || c != "EUR" {
			t.Fatalf("store 1 overrides with EUR (same reader): got %q, %v", c, err)
		}
		if c, err := s.open(func(o *Options) { o.StoreID = 3 }).StoreCurrency(ctx); err != nil || c != "USD" {
			t.Fatalf("store 3 has no override: got %q, %v", c, err)
		}
		s.exec("UPDATE " + s.q("Setting") + " SET " + s.q("Value") + " = '77'")
		_, err := s.open().StoreCurrency(ctx)
		if err == nil || !strings.Contains(err.Error(), "currency 77") {
			t.Fatalf("missing currency: %v", err)
		}
		if _, err := s.open().ReadPage(ctx, state.Order, 0, 10); err == nil {
			t.Fatal("orders read without a store currency")
		}
	})
}

func failureOf(fs []RowFailure, id string) *RowFailure {
	for i := range fs {
		if fs[i].ID == id {
			return &fs[i]
		}
	}
	return nil
}
