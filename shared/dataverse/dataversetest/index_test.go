package dataversetest

import (
	"net/url"
	"os"
	"testing"
)

// TestMain checks every value-index look-up of this package's tests against a scan of
// the whole table (verifyIndexes).
func TestMain(m *testing.M) {
	verifyIndexes = true
	os.Exit(m.Run())
}

// TestValueIndexFollowsWrites: the indexes that answer equality look-ups and the unique
// product number check keep up with creates, renames, deletes and rolled-back writes,
// and compare case-insensitively as the full scan did.
func TestValueIndexFollowsWrites(t *testing.T) {
	f := newSales(t, Options{})
	c := f.c
	byNumber := func(num string) []any {
		t.Helper()
		r := c.must(200, c.do("GET", "products?$select=productid&$filter="+url.QueryEscape("productnumber eq '"+num+"'"), nil))
		return r.body["value"].([]any)
	}
	p := f.newProduct(t, "IDX-1", "")
	if got := byNumber("idx-1"); len(got) != 1 {
		t.Fatalf("look-up by product number (other case) found %d rows, want 1", len(got))
	}
	// A rename frees the old number and takes the new one.
	c.must(204, c.do("PATCH", "products("+p+")", map[string]any{"productnumber": "IDX-2"}, "If-Match", "*"))
	if got := byNumber("IDX-1"); len(got) != 0 {
		t.Fatalf("the old number still finds %d rows after a rename", len(got))
	}
	if got := byNumber("IDX-2"); len(got) != 1 {
		t.Fatalf("the new number finds %d rows, want 1", len(got))
	}
	if r := c.must(400, c.do("POST", "products", map[string]any{"name": "dup", "productnumber": "idx-2"})); r.errCode() != "0x80043b06" {
		t.Fatalf("a duplicate of a renamed product's number: %s", r.raw)
	}
	q := f.newProduct(t, "IDX-1", "") // the freed number
	// A write that fails is rolled back: the index must not keep its value.
	c.must(400, c.do("PATCH", "products("+q+")", map[string]any{"productnumber": "IDX-2"}, "If-Match", "*"))
	if got := byNumber("IDX-1"); len(got) != 1 || got[0].(map[string]any)["productid"] != q {
		t.Fatalf("after a refused rename, IDX-1 finds %v", got)
	}
	// Deleted rows leave the index.
	c.must(204, c.do("DELETE", "products("+q+")", nil))
	if got := byNumber("IDX-1"); len(got) != 0 {
		t.Fatalf("a deleted product is still found: %v", got)
	}
	f.newProduct(t, "IDX-1", "")
	// Non-ASCII values: EqualFold matches the Kelvin sign to "k", as Dataverse's
	// case-insensitive collation compares them here.
	f.newProduct(t, "\u212A-9", "")
	if r := c.must(400, c.do("POST", "products", map[string]any{"name": "dup", "productnumber": "k-9"})); r.errCode() != "0x80043b06" {
		t.Fatalf("a number equal to a non-ASCII one but for case: %s", r.raw)
	}
	if got := byNumber("K-9"); len(got) != 1 {
		t.Fatalf("look-up of K-9 found %d rows, want the Kelvin-sign one", len(got))
	}
	// One price per product, price list and unit still holds with the look-up by product.
	r := c.must(400, c.do("POST", "productpricelevels", map[string]any{"amount": 1,
		"pricelevelid@odata.bind": "/pricelevels(" + f.priceList + ")", "productid@odata.bind": "/products(" + f.product + ")",
		"uomid@odata.bind": "/uoms(" + f.unit + ")"}))
	if r.errCode() != "0x80043b08" {
		t.Fatalf("duplicate price: %s", r.raw)
	}
	c.must(204, c.do("POST", "productpricelevels", map[string]any{"amount": 1,
		"pricelevelid@odata.bind": "/pricelevels(" + f.priceList + ")", "productid@odata.bind": "/products(" + p + ")",
		"uomid@odata.bind": "/uoms(" + f.unit + ")"}))
	// A look-up by a lookup column goes through the lookup index.
	items := c.must(200, c.do("GET", "productpricelevels?$select=amount&$filter="+url.QueryEscape("_productid_value eq "+p), nil))
	if got := items.body["value"].([]any); len(got) != 1 {
		t.Fatalf("price list items of product %s: %d, want 1", p, len(got))
	}
}
