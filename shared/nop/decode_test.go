package nop_test

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nopsync/nopsync/shared/nop"
)

type raw = json.RawMessage

func TestDecodeRules(t *testing.T) {
	long := strings.Repeat("x", 129)
	cases := []struct {
		file, path string
		value      any
		field, msg string // field "" with msg "" means: valid
	}{
		// envelope fields
		{"customer", "id", remove, "id", "is required"},
		{"customer", "id", "", "id", "1 to 128"},
		{"customer", "id", long, "id", "1 to 128"},
		{"customer", "id", long[:128], "", ""},
		{"customer", "id", strings.Repeat("é", 128), "", ""},
		{"customer", "id", strings.Repeat("😀", 64), "", ""},
		{"customer", "id", strings.Repeat("😀", 64) + "x", "id", "1 to 128"}, // 129 UTF-16 units, as Service Bus counts
		{"customer", "id", raw("17"), "id", "must be a string"},
		{"customer", "id", "a\nb", "id", "control characters"},
		{"customer", "id", raw("null"), "id", "must not be null"},
		{"customer", "type", remove, "type", "is required"},
		{"customer", "type", "order.paid", "type", "does not match"},
		{"customer", "type", "customer.paid", "type", "unknown customer action"},
		{"customer", "type", "customer", "type", "<entity>.<action>"},
		{"customer", "type", "widget.created", "type", "<entity>.<action>"},
		{"customer", "type", "Customer.created", "type", "<entity>.<action>"},
		{"customer", "type", "customer.created", "", ""},
		{"customer", "occurredOnUtc", remove, "occurredOnUtc", "is required"},
		{"customer", "occurredOnUtc", "2026-01-02 03:04:05Z", "occurredOnUtc", "RFC 3339"},
		{"customer", "occurredOnUtc", "2026-01-02T03:04:05+01:00", "occurredOnUtc", "must be UTC"},
		{"customer", "occurredOnUtc", "2026-01-02T03:04:05+00:00", "", ""},
		{"customer", "occurredOnUtc", "2026-01-02T3:04:05Z", "occurredOnUtc", "RFC 3339"},
		{"customer", "occurredOnUtc", "2026-01-02T03:04:05.Z", "occurredOnUtc", "RFC 3339"},
		{"customer", "occurredOnUtc", "2026-01-02T03:04:05.1234567891Z", "", ""}, // RFC 3339 sets no limit on the fraction
		{"customer", "occurredOnUtc", "2026-01-02T03:04:05.123456789Z", "", ""},
		{"customer", "occurredOnUtc", "2026-01-02t03:04:05.5z", "", ""}, // RFC 3339 section 5.6: t and z may be lower case
		{"customer", "occurredOnUtc", "2026-01-02x03:04:05Z", "occurredOnUtc", "RFC 3339"},
		{"customer", "occurredOnUtc", "2026-01-02T03:04:05x", "occurredOnUtc", "RFC 3339"},
		{"customer", "occurredOnUtc", "2026-02-30T03:04:05Z", "occurredOnUtc", "RFC 3339"},
		{"customer", "occurredOnUtc", raw("1767323045"), "occurredOnUtc", "must be a string"},
		{"customer", "sequence", raw("-1"), "sequence", ">= 0"},
		{"customer", "sequence", raw("1.5"), "sequence", "must be an integer"},
		{"customer", "sequence", raw("1e3"), "sequence", "must be an integer"},
		{"customer", "sequence", "5", "sequence", "must be an integer"},
		{"customer", "sequence", raw("9223372036854775808"), "sequence", "out of range"},
		{"customer", "sequence", raw("9223372036854775807"), "", ""},
		{"customer", "sequence", raw("null"), "", ""},
		{"customer", "sequence", remove, "", ""},
		{"customer", "storeId", raw("0"), "", ""}, // nopCommerce's "no store": the default store (TestStoreIDZeroIsTheDefaultStore)
		{"customer", "storeId", raw("-1"), "storeId", ">= 0"},
		{"customer", "storeId", "1", "storeId", "must be an integer"},
		{"customer", "storeId", remove, "", ""},
		{"customer", "data", remove, "data", "is required"},
		{"customer", "data", raw("null"), "data", "must not be null"},
		{"customer", "data", raw("[]"), "data", "must be an object"},
		{"customer", "somethingNew", raw(`{"x":1}`), "", ""},
		{"customer", "Id", "other", "", ""}, // names match exactly: "Id" is an unknown field
		{"customer", "type", "customer.deleted", "data.deleted", "must be true"},

		// customer
		{"customer", "data.id", raw("0"), "data.id", "must be > 0"},
		{"customer", "data.id", raw("-4"), "data.id", "must be > 0"},
		{"customer", "data.id", raw("2147483648"), "data.id", "<= 2147483647"},
		{"customer", "data.id", raw("7.0"), "data.id", "must be an integer"},
		{"customer", "data.id", "7", "data.id", "must be an integer"},
		{"customer", "data.customerGuid", "5a3e7c1e2f4b4d7a8a0e6c1d2b3a4f42", "data.customerGuid", "UUID"},
		{"customer", "data.customerGuid", "5A3E7C1E-2F4B-4D7A-8A0E-6C1D2B3A4F42", "", ""},
		{"customer", "data.customerGuid", remove, "data.customerGuid", "is required"},
		{"customer", "data.email", raw("5"), "data.email", "must be a string"},
		{"customer", "data.email", remove, "", ""},
		{"customer", "data.isGuest", "false", "data.isGuest", "must be a boolean"},
		{"customer", "data.isRegistered", remove, "data.isRegistered", "is required"},
		{"customer", "data.active", raw("1"), "data.active", "must be a boolean"},
		{"customer", "data.deleted", raw("null"), "data.deleted", "must not be null"},
		{"customer", "data.createdOnUtc", "yesterday", "data.createdOnUtc", "RFC 3339"},
		{"customer", "data.address", "London", "data.address", "must be an object"},
		{"customer", "data.address", raw("null"), "", ""},
		{"customer", "data.address.countryIsoCode", "GBR", "data.address.countryIsoCode", "2 letters"},
		{"customer", "data.address.countryIsoCode", "G1", "data.address.countryIsoCode", "2 letters"},
		{"customer", "data.address.countryIsoCode", "", "", ""},
		{"customer", "data.address.city", raw("false"), "data.address.city", "must be a string"},

		// product
		{"product", "data.id", raw("0"), "data.id", "must be > 0"},
		{"product", "data.productType", raw("7"), "data.productType", "must be one of [5 10]"},
		{"product", "data.parentGroupedProductId", raw("-1"), "data.parentGroupedProductId", ">= 0"},
		{"product", "data.parentGroupedProductId", remove, "data.parentGroupedProductId", "is required"},
		{"product", "data.name", "", "data.name", "1 to 400"},
		{"product", "data.name", strings.Repeat("n", 401), "data.name", "1 to 400"},
		{"product", "data.name", strings.Repeat("ñ", 400), "", ""},
		{"product", "data.name", raw("null"), "data.name", "must not be null"},
		{"product", "data.sku", raw("12"), "data.sku", "must be a string"},
		{"product", "data.price", raw("19.99"), "data.price", "decimal string"},
		{"product", "data.price", "19.99999", "data.price", "at most 4 fractional digits"},
		{"product", "data.price", "1e3", "data.price", "decimal string"},
		{"product", "data.price", "+1", "data.price", "decimal string"},
		{"product", "data.price", " 1", "data.price", "decimal string"},
		{"product", "data.price", ".5", "data.price", "decimal string"},
		{"product", "data.price", "1.", "data.price", "decimal string"},
		{"product", "data.price", "NaN", "data.price", "decimal string"},
		{"product", "data.price", "123456789012345", "data.price", "decimal string"},
		{"product", "data.price", "-1.5", "", ""},
		{"product", "data.price", "12345678901234.9999", "", ""},
		{"product", "data.productCost", remove, "data.productCost", "is required"},
		{"product", "data.oldPrice", raw("null"), "data.oldPrice", "must not be null"},
		{"product", "data.stockQuantity", raw("1.5"), "data.stockQuantity", "must be an integer"},
		{"product", "data.manageInventoryMethod", raw("3"), "data.manageInventoryMethod", "must be one of [0 1 2]"},
		{"product", "data.published", "yes", "data.published", "must be a boolean"},
		{"product", "data.updatedOnUtc", "2026-01-02T03:04:05", "data.updatedOnUtc", "RFC 3339"},
		{"product", "data.pictureUrls", raw(`["/images/1.jpeg"]`), "data.pictureUrls[0]", "absolute"},
		{"product", "data.pictureUrls", raw(`["https://a.example/1.jpeg","ftp://a.example/2.jpeg"]`), "data.pictureUrls[1]", "absolute"},
		{"product", "data.pictureUrls", raw(`[5]`), "data.pictureUrls[0]", "must be a string"},
		{"product", "data.pictureUrls", "https://a.example/1.jpeg", "data.pictureUrls", "must be an array"},
		{"product", "data.pictureUrls", raw(`[]`), "", ""},
		{"product", "data.pictureUrls", remove, "", ""},
		{"product", "data.associatedProductIds", raw(`[31, 0]`), "data.associatedProductIds[1]", "> 0"},
		{"product", "data.associatedProductIds", raw(`["31"]`), "data.associatedProductIds[0]", "must be an integer"},
		{"product", "data.productType", raw("5"), "data.associatedProductIds", "only grouped products"},
		{"product", "type", "product.deleted", "data.deleted", "must be true"},

		// order
		{"order", "data.id", raw("0"), "data.id", "must be > 0"},
		{"order", "data.orderGuid", "nope", "data.orderGuid", "UUID"},
		{"order", "data.customOrderNumber", raw("900"), "data.customOrderNumber", "must be a string"},
		{"order", "data.customer", remove, "data.customer", "is required"},
		{"order", "data.customer", raw("null"), "data.customer", "must not be null"},
		{"order", "data.customer.id", raw("0"), "data.customer.id", "must be > 0"},
		{"order", "data.customer.isGuest", remove, "data.customer.isGuest", "is required"},
		{"order", "data.customer.address", raw(`{"countryIsoCode":"Germany"}`), "data.customer.address.countryIsoCode", "2 letters"},
		{"order", "data.currencyCode", "EU", "data.currencyCode", "3 letters"},
		{"order", "data.currencyCode", "E1R", "data.currencyCode", "3 letters"},
		{"order", "data.currencyCode", raw("null"), "data.currencyCode", "must not be null"},
		{"order", "data.customerCurrencyCode", raw("1"), "data.customerCurrencyCode", "must be a string"},
		{"order", "data.currencyRate", raw("1.085"), "data.currencyRate", "decimal string"},
		{"order", "data.orderStatus", raw("15"), "data.orderStatus", "must be one of [10 20 30 40]"},
		{"order", "data.paymentStatus", raw("45"), "data.paymentStatus", "must be one of [10 20 30 35 40 50]"},
		{"order", "data.paymentStatus", raw("35"), "", ""},
		{"order", "data.shippingStatus", raw("35"), "data.shippingStatus", "must be one of [10 20 25 30 40]"},
		{"order", "data.shippingStatus", "20", "data.shippingStatus", "must be an integer"},
		{"order", "data.orderSubtotalInclTax", remove, "data.orderSubtotalInclTax", "is required"},
		{"order", "data.orderSubtotalExclTax", raw("30"), "data.orderSubtotalExclTax", "decimal string"},
		{"order", "data.orderSubTotalDiscountInclTax", "0.00001", "data.orderSubTotalDiscountInclTax", "fractional"},
		{"order", "data.orderSubTotalDiscountExclTax", remove, "data.orderSubTotalDiscountExclTax", "is required"},
		{"order", "data.orderShippingInclTax", remove, "data.orderShippingInclTax", "is required"},
		{"order", "data.orderShippingExclTax", remove, "data.orderShippingExclTax", "is required"},
		{"order", "data.paymentMethodAdditionalFeeInclTax", "-1.0000", "", ""},
		{"order", "data.paymentMethodAdditionalFeeExclTax", remove, "data.paymentMethodAdditionalFeeExclTax", "is required"},
		{"order", "data.orderTax", "6,65", "data.orderTax", "decimal string"},
		{"order", "data.orderDiscount", remove, "data.orderDiscount", "is required"},
		{"order", "data.orderTotal", raw("41.65"), "data.orderTotal", "decimal string"},
		{"order", "data.refundedAmount", remove, "data.refundedAmount", "is required"},
		{"order", "data.paymentMethodSystemName", raw("[]"), "data.paymentMethodSystemName", "must be a string"},
		{"order", "data.shippingMethod", "Ground", "", ""},
		{"order", "data.paidDateUtc", raw("null"), "", ""},
		{"order", "data.paidDateUtc", "2026-01-02", "data.paidDateUtc", "RFC 3339"},
		{"order", "data.createdOnUtc", remove, "data.createdOnUtc", "is required"},
		{"order", "data.deleted", raw("0"), "data.deleted", "must be a boolean"},
		{"order", "data.billingAddress", remove, "data.billingAddress", "is required"},
		{"order", "data.billingAddress", raw("null"), "data.billingAddress", "must not be null"},
		{"order", "data.billingAddress.countryIsoCode", "GBR", "data.billingAddress.countryIsoCode", "2 letters"},
		{"order", "data.shippingAddress", raw(`"same"`), "data.shippingAddress", "must be an object"},
		{"order", "data.shippingAddress", raw(`{"city":"Paris","countryIsoCode":"FR"}`), "", ""},
		{"order", "data.items", raw("[]"), "data.items", "at least 1"},
		{"order", "data.items", remove, "data.items", "is required"},
		{"order", "data.items", raw("{}"), "data.items", "must be an array"},
		{"order", "data.items[1]", "item", "data.items[1]", "must be an object"},
		{"order", "data.items[0].id", raw("0"), "data.items[0].id", "must be > 0"},
		{"order", "data.items[0].orderItemGuid", "x", "data.items[0].orderItemGuid", "UUID"},
		{"order", "data.items[0].product", remove, "data.items[0].product", "is required"},
		{"order", "data.items[0].product.id", raw("0"), "data.items[0].product.id", "must be > 0"},
		{"order", "data.items[0].product.name", "", "data.items[0].product.name", "1 to 400"},
		{"order", "data.items[0].product.sku", raw("1"), "data.items[0].product.sku", "must be a string"},
		{"order", "data.items[0].product.productType", raw("3"), "data.items[0].product.productType", "must be one of"},
		{"order", "data.items[0].product.parentGroupedProductId", raw("-1"), "data.items[0].product.parentGroupedProductId", ">= 0"},
		{"order", "data.items[0].quantity", raw("0"), "data.items[0].quantity", "must be > 0"},
		{"order", "data.items[1].quantity", raw("-2"), "data.items[1].quantity", "must be > 0"},
		{"order", "data.items[0].quantity", raw("2.5"), "data.items[0].quantity", "must be an integer"},
		{"order", "data.items[0].unitPriceInclTax", "1.23456", "data.items[0].unitPriceInclTax", "fractional"},
		{"order", "data.items[0].unitPriceExclTax", remove, "data.items[0].unitPriceExclTax", "is required"},
		{"order", "data.items[0].priceInclTax", raw("23.8"), "data.items[0].priceInclTax", "decimal string"},
		{"order", "data.items[0].priceExclTax", remove, "data.items[0].priceExclTax", "is required"},
		{"order", "data.items[0].discountAmountInclTax", remove, "data.items[0].discountAmountInclTax", "is required"},
		{"order", "data.items[0].discountAmountExclTax", "1e2", "data.items[0].discountAmountExclTax", "decimal string"},
		{"order", "data.items[0].attributeDescription", raw("{}"), "data.items[0].attributeDescription", "must be a string"},
		{"order", "type", "order.deleted", "data.deleted", "must be true"},
	}
	for _, tc := range cases {
		name := fmt.Sprintf("%s/%s=%v", tc.file, tc.path, tc.value)
		if tc.value == remove {
			name = fmt.Sprintf("%s/%s(removed)", tc.file, tc.path)
		}
		t.Run(name, func(t *testing.T) {
			body := mutate(t, readTestdata(t, tc.file+".json"), tc.path, tc.value)
			evs, err := nop.DecodeRequest(nop.Entity(tc.file), body)
			if tc.msg == "" {
				if err != nil {
					t.Fatalf("want valid, got %v", err)
				}
				if len(evs) != 1 {
					t.Fatalf("want 1 event, got %d", len(evs))
				}
				return
			}
			var ve *nop.ValidationError
			if !errors.As(err, &ve) {
				t.Fatalf("want *ValidationError, got %T %v", err, err)
			}
			if evs != nil {
				t.Errorf("events returned with an error")
			}
			if ve.Index != 0 || ve.Field != tc.field || !strings.Contains(ve.Message, tc.msg) {
				t.Errorf("got index %d field %q message %q; want index 0 field %q message containing %q",
					ve.Index, ve.Field, ve.Message, tc.field, tc.msg)
			}
		})
	}
}

func TestStoreIDZeroIsTheDefaultStore(t *testing.T) {
	var ev map[string]any
	if err := json.Unmarshal(readTestdata(t, "customer.json"), &ev); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		storeID any // nil: left out
		want    int
	}{{0, 1}, {nil, 1}, {3, 3}} {
		delete(ev, "storeId")
		if c.storeID != nil {
			ev["storeId"] = c.storeID
		}
		body, _ := json.Marshal(ev)
		evs, err := nop.DecodeRequest("customer", body)
		if err != nil || len(evs) != 1 || evs[0].StoreID != c.want {
			t.Errorf("storeId %v: %v, want store %d", c.storeID, err, c.want)
		}
	}
}

func TestDecodeValuesCustomer(t *testing.T) {
	evs, err := nop.DecodeRequest("customer", readTestdata(t, "customer.json"))
	if err != nil {
		t.Fatal(err)
	}
	ev := evs[0]
	if ev.ID != "evt-customer-0001" || ev.Type != "customer.updated" || ev.Entity() != "customer" || ev.Action() != "updated" {
		t.Errorf("envelope fields: %+v", ev)
	}
	if want := time.Date(2026, 1, 2, 3, 4, 5, 678e6, time.UTC); !ev.OccurredOnUtc.Equal(want) || ev.OccurredOnUtc.Location() != time.UTC {
		t.Errorf("occurredOnUtc %v", ev.OccurredOnUtc)
	}
	if ev.Sequence == nil || *ev.Sequence != 10 || ev.StoreID != 1 || ev.EntityID() != "7" {
		t.Errorf("sequence/store/id: %v %d %q", ev.Sequence, ev.StoreID, ev.EntityID())
	}
	if ev.Product != nil || ev.Order != nil || ev.Customer == nil {
		t.Fatal("exactly Customer must be set")
	}
	c := ev.Customer
	if c.ID != 7 || c.CustomerGUID != "11111111-2222-4333-8444-555555555555" || *c.Email != "grace@example.org" ||
		c.Username != nil || c.Company != nil || *c.Phone != "+1 555 0100" || c.IsGuest || !c.IsRegistered || !c.Active || c.Deleted {
		t.Errorf("customer: %+v", c)
	}
	if c.Address == nil || *c.Address.CountryIsoCode != "US" || c.Address.Address2 != nil || *c.Address.City != "Arlington" {
		t.Errorf("address: %+v", c.Address)
	}
	var data map[string]any
	if err := json.Unmarshal(ev.Data, &data); err != nil || data["id"] != 7.0 {
		t.Errorf("Data is not the data object: %s", ev.Data)
	}
}

func TestDecodeValuesProductAndDefaults(t *testing.T) {
	body := mutate(t, readTestdata(t, "product.json"), "data.pictureUrls", remove)
	evs, err := nop.DecodeRequest("product", body)
	if err != nil {
		t.Fatal(err)
	}
	ev := evs[0]
	p := ev.Product
	if ev.Sequence != nil || ev.StoreID != 1 {
		t.Errorf("absent sequence/storeId: %v %d", ev.Sequence, ev.StoreID)
	}
	if p.ID != 30 || p.ProductType != nop.ProductTypeGrouped || p.Name != "Tripods" || p.StockQuantity != -3 ||
		p.ShortDescription != nil || *p.FullDescription != "<p>All tripods</p>" || !p.Published {
		t.Errorf("product: %+v", p)
	}
	if p.PictureURLs == nil || len(p.PictureURLs) != 0 {
		t.Errorf("absent pictureUrls must decode to an empty slice, got %#v", p.PictureURLs)
	}
	if fmt.Sprint(p.AssociatedProductIDs) != "[31 32]" {
		t.Errorf("associated %v", p.AssociatedProductIDs)
	}
	evs, err = nop.DecodeRequest("product", readTestdata(t, "product.json"))
	if err != nil {
		t.Fatal(err)
	}
	if got := evs[0].Product.PictureURLs; len(got) != 2 || got[1] != "http://shop.example.org/images/2.png" {
		t.Errorf("pictureUrls %v", got)
	}
}

func TestDecodeValuesOrder(t *testing.T) {
	body := mutate(t, readTestdata(t, "order.json"), "data.currencyCode", "eur")
	body = mutate(t, body, "data.billingAddress.countryIsoCode", "gb")
	evs, err := nop.DecodeRequest("order", body)
	if err != nil {
		t.Fatal(err)
	}
	ev := evs[0]
	o := ev.Order
	if ev.StoreID != 2 || o.ID != 900 || ev.EntityID() != "900" || o.CustomOrderNumber != "2026-900" {
		t.Errorf("order ids: %+v", o)
	}
	if o.CurrencyCode != "EUR" || *o.BillingAddress.CountryIsoCode != "GB" {
		t.Errorf("codes must be upper-cased: %q %q", o.CurrencyCode, *o.BillingAddress.CountryIsoCode)
	}
	if !strings.Contains(string(ev.Raw), `"eur"`) {
		t.Errorf("raw event must keep the bytes as received")
	}
	if !o.Customer.IsGuest || o.Customer.Email != nil || o.Customer.Address != nil {
		t.Errorf("guest customer: %+v", o.Customer)
	}
	if o.OrderStatus != nop.OrderStatusProcessing || o.PaymentStatus != nop.PaymentStatusPaid || o.ShippingStatus != nop.ShippingStatusNotYetShipped {
		t.Errorf("statuses %d %d %d", o.OrderStatus, o.PaymentStatus, o.ShippingStatus)
	}
	if o.OrderTotal.String() != "41.65" || o.CurrencyRate.StringFixed(4) != "1.0850" || o.OrderTax.Units() != 66500 {
		t.Errorf("money: %v %v %v", o.OrderTotal, o.CurrencyRate, o.OrderTax)
	}
	if o.PaidDateUtc == nil || !o.PaidDateUtc.Equal(time.Date(2026, 1, 2, 3, 4, 0, 0, time.UTC)) {
		t.Errorf("paidDateUtc %v", o.PaidDateUtc)
	}
	if o.ShippingAddress != nil || o.ShippingMethod != nil || *o.PaymentMethodSystemName != "Payments.Manual" {
		t.Errorf("nullable fields: %+v", o)
	}
	if len(o.Items) != 2 {
		t.Fatalf("items %d", len(o.Items))
	}
	it := o.Items[1]
	if it.ID != 2 || it.Quantity != 1 || it.Product.ID != 32 || *it.Product.Sku != "TT-1" || it.Product.ParentGroupedProductID != 30 ||
		it.PriceInclTax.String() != "11.90" || *it.AttributeDescription != "Colour: red" || o.Items[0].Product.Sku != nil {
		t.Errorf("item: %+v", it)
	}
	sum := nop.Money{}
	for _, it := range o.Items {
		sum = sum.Add(it.PriceInclTax)
	}
	if sum.Cmp(o.OrderSubtotalInclTax) != 0 {
		t.Errorf("subtotal %v != Σ items %v", o.OrderSubtotalInclTax, sum)
	}
}

func TestDecodeBody(t *testing.T) {
	cust := readTestdata(t, "customer.json")
	arr := func(evs ...[]byte) []byte {
		parts := make([]string, len(evs))
		for i, e := range evs {
			parts[i] = string(e)
		}
		return []byte("[" + strings.Join(parts, ",") + "]")
	}
	withID := func(id string) []byte { return mutate(t, cust, "id", id) }
	tmpl := string(withID("e-XXXX"))
	many := func(n int) []byte {
		evs := make([][]byte, n)
		for i := range evs {
			evs[i] = []byte(strings.Replace(tmpl, "e-XXXX", fmt.Sprintf("e-%04d", i), 1))
		}
		return arr(evs...)
	}
	cases := []struct {
		name   string
		entity nop.Entity
		body   []byte
		index  int
		field  string
		msg    string
		n      int // when valid
	}{
		{"empty", "customer", []byte("  \n"), -1, "", "empty body", 0},
		{"truncated", "customer", cust[:40], -1, "", "malformed JSON", 0},
		{"trailing garbage", "customer", append(append([]byte{}, cust...), '}'), -1, "", "malformed JSON", 0},
		{"string body", "customer", []byte(`"hello"`), -1, "", "expected an event object", 0},
		{"number body", "customer", []byte(`42`), -1, "", "expected an event object", 0},
		{"raw invalid UTF-8", "customer", []byte(strings.Replace(string(cust), "Grace", "Gr\xffce", 1)), -1, "", "UTF-8", 0},
		{"empty array", "customer", []byte(`[]`), -1, "", "1 to 1000", 0},
		{"1001 events", "customer", many(1001), -1, "", "1 to 1000", 0},
		{"1000 events", "customer", many(1000), 0, "", "", 1000},
		{"array of one", "customer", arr(cust), 0, "", "", 1},
		{"array element not object", "customer", arr(withID("a"), []byte(`"b"`)), 1, "", "must be an event object", 0},
		{"second invalid", "customer", arr(withID("a"), mutate(t, withID("b"), "data.id", 0)), 1, "data.id", "> 0", 0},
		{"duplicate ids", "customer", arr(withID("a"), withID("b"), withID("a")), 2, "id", "duplicate id, also used by event 0", 0},
		{"mixed entities", "customer", arr(withID("a"), readTestdata(t, "product.json")), 1, "type", "does not match", 0},
		{"wrong path entity", "product", cust, 0, "type", "does not match", 0},
		{"unknown entity", "invoice", cust, -1, "", "unknown entity", 0},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			evs, err := nop.DecodeRequest(tc.entity, tc.body)
			if tc.msg == "" {
				if err != nil || len(evs) != tc.n {
					t.Fatalf("want %d events, got %d, %v", tc.n, len(evs), err)
				}
				return
			}
			var ve *nop.ValidationError
			if !errors.As(err, &ve) {
				t.Fatalf("want *ValidationError, got %T %v", err, err)
			}
			if evs != nil || ve.Index != tc.index || ve.Field != tc.field || !strings.Contains(ve.Message, tc.msg) {
				t.Errorf("got %d events, index %d field %q message %q; want index %d field %q message containing %q",
					len(evs), ve.Index, ve.Field, ve.Message, tc.index, tc.field, tc.msg)
			}
		})
	}
}

// padded returns the event with a filler field that makes it exactly size bytes.
func padded(t testing.TB, ev []byte, id string, size int) []byte {
	t.Helper()
	b := mutate(t, ev, "id", id)
	b = mutate(t, b, "zzPad", "")
	b = []byte(strings.Replace(string(b), `"zzPad":""`, `"zzPad":"`+strings.Repeat("p", size-len(b))+`"`, 1))
	if len(b) != size {
		t.Fatalf("padded to %d, want %d", len(b), size)
	}
	return b
}

func TestDecodeSizes(t *testing.T) {
	cust := readTestdata(t, "customer.json")
	atLimit := padded(t, cust, "a", nop.MaxEventBytes)
	over := padded(t, cust, "b", nop.MaxEventBytes+1)

	if _, err := nop.DecodeRequest("customer", atLimit); err != nil {
		t.Errorf("event of exactly 200 KiB: %v", err)
	}
	_, err := nop.DecodeRequest("customer", over)
	var tl *nop.TooLargeError
	if !errors.As(err, &tl) || !errors.Is(err, nop.ErrTooLarge) || tl.Index != 0 || tl.Size != nop.MaxEventBytes+1 {
		t.Errorf("single event over 200 KiB: %v", err)
	}
	// Size wins over validity: event 1 is invalid, event 2 too large.
	bad := mutate(t, cust, "data.id", 0)
	body := []byte("[" + string(mutate(t, cust, "id", "x")) + "," + string(bad) + "," + string(over) + "]")
	_, err = nop.DecodeRequest("customer", body)
	if !errors.As(err, &tl) || tl.Index != 2 {
		t.Errorf("array with an event over 200 KiB: %v", err)
	}
	big := make([]byte, nop.MaxBodyBytes+1)
	_, err = nop.DecodeRequest("customer", big)
	if !errors.As(err, &tl) || tl.Index != -1 {
		t.Errorf("body over 4 MiB: %v", err)
	}
	var ve *nop.ValidationError
	if errors.As(err, &ve) {
		t.Errorf("too large must not be a ValidationError")
	}
}

func TestExamples(t *testing.T) {
	dir := examplesDir(t)
	files, err := filepath.Glob(filepath.Join(dir, "*.json"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no examples in %s: %v", dir, err)
	}
	for _, f := range files {
		t.Run(filepath.Base(f), func(t *testing.T) {
			body, err := os.ReadFile(f)
			if err != nil {
				t.Fatal(err)
			}
			var probe any
			if err := json.Unmarshal(body, &probe); err != nil {
				t.Fatal(err)
			}
			first := probe
			if a, ok := probe.([]any); ok {
				first = a[0]
			}
			typ, _ := first.(map[string]any)["type"].(string)
			entity := nop.Entity(strings.SplitN(typ, ".", 2)[0])
			evs, err := nop.DecodeRequest(entity, body)
			if err != nil {
				t.Fatalf("example rejected: %v", err)
			}
			for i, ev := range evs {
				if ev.Entity() != entity || ev.EntityID() == "" {
					t.Errorf("event %d: entity %q id %q", i, ev.Entity(), ev.EntityID())
				}
				// The raw event is the exact bytes of the body (or its element).
				if !json.Valid(ev.Raw) || !strings.Contains(string(body), string(ev.Raw)) {
					t.Errorf("event %d: Raw is not a slice of the body", i)
				}
				if o := ev.Order; o != nil {
					sum := nop.Money{}
					for _, it := range o.Items {
						sum = sum.Add(it.PriceInclTax)
					}
					total := o.OrderSubtotalInclTax.Sub(o.OrderSubTotalDiscountInclTax).Add(o.OrderShippingInclTax).
						Add(o.PaymentMethodAdditionalFeeInclTax).Sub(o.OrderDiscount)
					if sum.Cmp(o.OrderSubtotalInclTax) != 0 || total.Cmp(o.OrderTotal) != 0 {
						t.Errorf("event %d: totals don't add up: Σ=%v subtotal=%v computed total=%v total=%v", i, sum, o.OrderSubtotalInclTax, total, o.OrderTotal)
					}
				}
			}
			// Wrong path entity: every example is refused on another entity's path.
			other := nop.Entity("customer")
			if entity == "customer" {
				other = "order"
			}
			if _, err := nop.DecodeRequest(other, body); err == nil {
				t.Errorf("accepted on the %s path", other)
			}
		})
	}
}

// WithID replaces the event's id and nothing else: the other bytes of Raw stay as they
// were (a stored event's data compares byte for byte), and the new id is checked as a
// request's would be.
func TestEventWithID(t *testing.T) {
	body := readTestdata(t, "customer.json") // "id" is also a member of data
	evs, err := nop.DecodeRequest("customer", body)
	if err != nil {
		t.Fatal(err)
	}
	got, err := evs[0].WithID("evt-customer-0001.tagged")
	if err != nil {
		t.Fatal(err)
	}
	want := strings.Replace(string(body), `"evt-customer-0001"`, `"evt-customer-0001.tagged"`, 1)
	if got.ID != "evt-customer-0001.tagged" || string(got.Raw) != strings.TrimSpace(want) || string(got.Data) != string(evs[0].Data) || got.EntityID() != "7" {
		t.Fatalf("WithID gave id %q raw %s", got.ID, got.Raw)
	}
	if evs[0].ID != "evt-customer-0001" || !strings.Contains(string(evs[0].Raw), `"evt-customer-0001"`) {
		t.Fatalf("WithID changed the event it was called on: %q %s", evs[0].ID, evs[0].Raw)
	}
	var ve *nop.ValidationError
	if _, err := evs[0].WithID(strings.Repeat("x", 129)); !errors.As(err, &ve) || ve.Field != "id" {
		t.Fatalf("a 129-character id: %v", err)
	}
}
