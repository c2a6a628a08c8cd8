package nopdb

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"

	"github.com/nopsync/nopsync/shared/nop"
	"github.com/nopsync/nopsync/shared/nopdb/nopdbtest"
	"github.com/nopsync/nopsync/shared/state"
)

// emitterEvent wraps data as an emitter following docs/events.md would send it, encoded
// as nopCommerce's own serializer (Newtonsoft.Json) does by default: no HTML escaping.
func emitterEvent(t *testing.T, entity, id string, data any) []byte {
	t.Helper()
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	ev := map[string]any{"id": id, "type": entity + ".updated", "occurredOnUtc": "2026-12-01T12:00:00Z", "storeId": 1, "data": data}
	if err := enc.Encode(ev); err != nil {
		t.Fatal(err)
	}
	return bytes.TrimSpace(buf.Bytes())
}

// A product whose HTML description is well under the event size limit as an emitter
// sends it (no HTML escaping) is read as an event too: the reader does not write each <,
// > and & as six bytes.
func TestHTMLNotEscapedInEvents(t *testing.T) {
	forEachProvider(t, func(t *testing.T, provider string) {
		s := newStore(t, provider)
		// 9,000 × "<p>x</p>" = 72,000 bytes of ordinary HTML (nopCommerce's FullDescription
		// is nvarchar(max), edited in TinyMCE).
		html := strings.Repeat("<p>x</p>", 9000)
		s.product(1, map[string]any{"Name": "Camera", "FullDescription": html, "Price": "10.0000"})
		r := s.open()
		p, err := r.ReadPage(context.Background(), state.Product, 0, 10)
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("reader: %d events, failures %+v", len(p.Events), p.Failures)

		// The same data as an emitter sends it.
		data := map[string]any{"id": 1, "productType": 5, "parentGroupedProductId": 0, "name": "Camera",
			"shortDescription": nil, "fullDescription": html, "sku": nil, "gtin": nil, "manufacturerPartNumber": nil,
			"price": "10.0000", "productCost": "0.0000", "oldPrice": "0.0000", "stockQuantity": 0, "manageInventoryMethod": 0,
			"published": true, "deleted": false, "updatedOnUtc": "2026-11-25T09:00:00Z", "pictureUrls": []string{}, "associatedProductIds": []int{}}
		body := emitterEvent(t, "product", "emitter-product-1", data)
		evs, derr := nop.DecodeRequest(state.Product, body)
		t.Logf("emitter event: %d bytes, intake: %d events, err %v", len(body), len(evs), derr)
		if derr != nil {
			t.Fatalf("the emitter's event is refused too: %v", derr)
		}
		if len(p.Events) != 1 {
			t.Errorf("reader refused product 1 that an emitter's %d-byte event carries (intake accepts it): %+v", len(body), p.Failures)
		}
	})
}

// nopCommerce's admin delete appends "-DELETED" to a customer's email
// (CustomerSettings.SuffixDeletedCustomers), which can take it past a contact's 100
// characters: the customer's delete and its orders are still read (the orders' contact is
// the customer's, or the billing address's).
func TestDeletedCustomersOrdersStillRead(t *testing.T) {
	forEachProvider(t, func(t *testing.T, provider string) {
		s := exampleStore(t, provider)
		email := strings.Repeat("a", 80) + "@example-company.com" // 100 characters: valid for Dataverse
		s.customer(70, nopdbtest.RoleRegistered, map[string]any{"Email": email, "Username": email})
		s.address(170, map[string]any{"Email": email, "FirstName": "A", "LastName": "B", "CountryId": 1})
		s.order(2001, map[string]any{"CustomerId": 70, "BillingAddressId": 170, "OrderStatusId": 30, "PaymentStatusId": 30,
			"OrderTotal": "1.0000", "OrderSubtotalInclTax": "1.0000", "OrderSubtotalExclTax": "1.0000"})
		s.item(6001, 2001, 7, nil)
		r := s.open()
		orders, _, fails, _ := readAll(t, r, state.Order, 100)
		if byID(orders)["2001"] == nil {
			t.Fatalf("before the delete: order 2001 not read: %+v", fails)
		}
		t.Logf("before the delete: order 2001 read (customer email %d characters)", len(email))

		// The admin deletes the customer: Deleted = 1, "-DELETED" suffix (103+ characters).
		concat := fmt.Sprintf("%s || '-DELETED'", s.q("Email"))
		deleted := "true"
		if provider == nopdbtest.MySQL {
			concat, deleted = fmt.Sprintf("CONCAT(%s, '-DELETED')", s.q("Email")), "1"
		}
		s.exec(fmt.Sprintf("UPDATE %s SET %s = %s, %s = %s WHERE %s = 70", s.q("Customer"), s.q("Deleted"), deleted, s.q("Email"), concat, s.q("Id")))
		customers, _, cf, _ := readAll(t, r, state.Customer, 100)
		if c := byID(customers)["70"]; c == nil || c.Type != "customer.deleted" {
			t.Fatalf("customer 70: %+v %+v", c, cf)
		}
		orders, _, fails, _ = readAll(t, r, state.Order, 100)
		t.Logf("after the delete: customer 70 is customer.deleted; order failures: %+v", fails)
		if byID(orders)["2001"] == nil {
			t.Errorf("order 2001 of the deleted customer is no longer sent (a refund or status change of it never reaches Dynamics 365)")
		}
	})
}
