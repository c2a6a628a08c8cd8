package dataversetest

import (
	"fmt"
	"strings"
	"testing"
)

// filter-rows "Condition limits": no more than 500 conditions in a query.
func TestQueryConditionLimit(t *testing.T) {
	c := newTC(t, Options{})
	conds := func(n int) string {
		var cs []string
		for i := 0; i < n; i++ {
			cs = append(cs, fmt.Sprintf("emailaddress1 eq 'a%d@x'", i))
		}
		return strings.Join(cs, " or ")
	}
	c.must(200, c.do("GET", "contacts?$select=contactid&$filter="+conds(500), nil))
	r := c.must(400, c.do("GET", "contacts?$select=contactid&$filter=statecode eq 0 and ("+conds(500)+")", nil))
	if r.errCode() != "0x8004430c" {
		t.Fatalf("501 conditions: %s", r.raw)
	}
	r = c.must(400, c.do("GET", "contacts?$select=contactid&$filter="+conds(499)+" or contains(lastname,'x') or startswith(lastname,'y')", nil))
	if r.errCode() != "0x8004430c" {
		t.Fatalf("499 comparisons and 2 functions: %s", r.raw)
	}
}

// publish-revise-revert-retire-activate-products and the error code reference: a product
// in a price list can't be retired; retiring a family retires its hierarchy, unless a
// child can't be; a retired family or child is never Active again; one publish per request.
func TestProductRetireRules(t *testing.T) {
	f := newSales(t, Options{})
	c := f.c
	retire := map[string]any{"statecode": 1, "statuscode": 2}
	r := c.must(400, c.do("PATCH", "products("+f.product+")", retire, "If-Match", "*"))
	if r.errCode() != "0x8004f997" || !strings.Contains(r.errMsg(), "pricelists") {
		t.Fatalf("retire a product in a price list: %s", r.raw)
	}
	var item string
	for _, it := range c.s.Rows("productpricelevels") {
		item = it["productpricelevelid"].(string)
	}
	c.must(204, c.do("DELETE", "productpricelevels("+item+")", nil))
	c.must(204, c.do("PATCH", "products("+f.product+")", retire, "If-Match", "*"))
	// A retired product without a parent can be activated again.
	c.must(204, c.do("PATCH", "products("+f.product+")", map[string]any{"statecode": 0, "statuscode": 1}, "If-Match", "*"))

	fam := entityID(c.must(204, c.do("POST", "products", map[string]any{"name": "family", "productnumber": "F1", "productstructure": 2})))
	kid := f.newProduct(t, "C1", fam)
	kid2 := f.newProduct(t, "C2", fam)
	c.must(204, c.do("POST", "products("+fam+")/Microsoft.Dynamics.CRM.PublishProductHierarchy", nil))
	c.must(204, c.do("POST", "productpricelevels", map[string]any{"amount": 5,
		"pricelevelid@odata.bind": "/pricelevels(" + f.priceList + ")", "productid@odata.bind": "/products(" + kid + ")",
		"uomid@odata.bind": "/uoms(" + f.unit + ")"}))
	r = c.must(400, c.do("PATCH", "products("+fam+")", retire, "If-Match", "*"))
	if r.errCode() != "0x8004f910" {
		t.Fatalf("retire a family whose child is in a price list: %s", r.raw)
	}
	if f.row("products", kid2)["statecode"] != 0 {
		t.Fatal("a refused family retirement retired a child")
	}
	// The parent can't change once set.
	fam2 := entityID(c.must(204, c.do("POST", "products", map[string]any{"name": "family 2", "productnumber": "F2", "productstructure": 2})))
	c.must(400, c.do("PATCH", "products("+kid2+")", map[string]any{"parentproductid@odata.bind": "/products(" + fam2 + ")"}, "If-Match", "*"))

	for _, it := range c.s.Rows("productpricelevels") {
		if it["_productid_value"] == kid {
			c.must(204, c.do("DELETE", "productpricelevels("+it["productpricelevelid"].(string)+")", nil))
		}
	}
	c.must(204, c.do("PATCH", "products("+fam+")", retire, "If-Match", "*"))
	for _, id := range []string{fam, kid, kid2} {
		if st := f.row("products", id)["statecode"]; st != 1 {
			t.Fatalf("product %s state %v after its family retired, want Retired", id, st)
		}
	}
	for _, id := range []string{fam, kid} {
		r = c.must(400, c.do("PATCH", "products("+id+")", map[string]any{"statecode": 0, "statuscode": 1}, "If-Match", "*"))
		if !strings.Contains(r.errMsg(), "can't activate a retired product family") {
			t.Fatalf("re-activate %s: %s", id, r.raw)
		}
	}

	// A retired bundle can't be activated either ("You can't activate a retired product
	// family or a retired bundle record").
	bundle := entityID(c.must(204, c.do("POST", "products", map[string]any{"name": "bundle", "productnumber": "B1", "productstructure": 3,
		"defaultuomscheduleid@odata.bind": "/uomschedules(" + f.group + ")", "defaultuomid@odata.bind": "/uoms(" + f.unit + ")"})))
	c.must(204, c.do("PATCH", "products("+bundle+")", map[string]any{"statecode": 0, "statuscode": 1}, "If-Match", "*"))
	c.must(204, c.do("PATCH", "products("+bundle+")", retire, "If-Match", "*"))
	if r = c.must(400, c.do("PATCH", "products("+bundle+")", map[string]any{"statecode": 0, "statuscode": 1}, "If-Match", "*")); !strings.Contains(r.errMsg(), "retired bundle") {
		t.Fatalf("re-activate a retired bundle: %s", r.raw)
	}
	// A price list item's amount reaches 1e14 (other money columns 1e12).
	a0 := f.newProduct(t, "P-0", "")
	priceItem := func(amount float64) map[string]any {
		return map[string]any{"amount": amount, "pricelevelid@odata.bind": "/pricelevels(" + f.priceList + ")",
			"productid@odata.bind": "/products(" + a0 + ")", "uomid@odata.bind": "/uoms(" + f.unit + ")"}
	}
	c.must(400, c.do("POST", "productpricelevels", priceItem(2e14)))
	c.must(204, c.do("POST", "productpricelevels", priceItem(5e12)))
	c.must(400, c.do("PATCH", "products("+a0+")", map[string]any{"price": 5e12}, "If-Match", "*"))
	// "Decimals Supported" (quantitydecimal) is 0 to 5.
	if r = c.must(400, c.do("PATCH", "products("+a0+")", map[string]any{"quantitydecimal": 6}, "If-Match", "*")); !strings.Contains(r.errMsg(), "0 to 5") {
		t.Fatalf("quantitydecimal 6: %s", r.raw)
	}
	c.must(400, c.do("PATCH", "products("+a0+")", map[string]any{"quantitydecimal": -1}, "If-Match", "*"))
	c.must(204, c.do("PATCH", "products("+a0+")", map[string]any{"quantitydecimal": 5}, "If-Match", "*"))

	// One publish per request: UpdateMultiple setting two products Active is refused.
	a, b := f.newProduct(t, "P-A", ""), f.newProduct(t, "P-B", "")
	target := func(id string) map[string]any {
		return map[string]any{"@odata.type": "Microsoft.Dynamics.CRM.product", "productid": id, "statecode": 0, "statuscode": 1}
	}
	r = c.must(400, c.do("POST", "products/Microsoft.Dynamics.CRM.UpdateMultiple", map[string]any{"Targets": []any{target(a), target(b)}}))
	if !strings.Contains(r.errMsg(), "cannot publish multiple") || f.row("products", a)["statecode"] != 2 {
		t.Fatalf("UpdateMultiple publishing two: %s", r.raw)
	}
	c.must(204, c.do("POST", "products/Microsoft.Dynamics.CRM.UpdateMultiple", map[string]any{"Targets": []any{target(a)}}))
}

// Organization pricing settings: pricingdecimalprecision, discountcalculationmethod,
// oobpricecalculationenabled (organization entity reference; Sales "Configure product
// catalog" / system settings).
func TestPricingSettings(t *testing.T) {
	line := func(f *salesFixture) map[string]any {
		o := f.order(t, map[string]any{"freightamount": 1})
		l := entityID(f.c.must(204, f.line(o, map[string]any{"productid@odata.bind": "/products(" + f.product + ")",
			"uomid@odata.bind": "/uoms(" + f.unit + ")", "quantity": 11, "priceperunit": 100.4567, "ispriceoverridden": true,
			"manualdiscountamount": 10})))
		r := f.row("salesorderdetails", l)
		r["order.totalamount"] = f.row("salesorders", o)["totalamount"]
		return r
	}
	f := newSales(t, Options{PricingDecimalPrecision: Precision(0)})
	if r := line(f); r["priceperunit"] != 100.0 || r["extendedamount"] != 1090.0 || r["order.totalamount"] != 1091.0 {
		t.Fatalf("precision 0, line item: %v", r)
	}
	f = newSales(t, Options{PricingDecimalPrecision: Precision(4), DiscountPerUnit: true})
	// (100.4567 − 10) × 11 = 995.0237 → 995.02; line item would be 1105.02 − 10.
	if r := line(f); r["priceperunit"] != 100.4567 || r["extendedamount"] != 995.02 || r["order.totalamount"] != 996.02 {
		t.Fatalf("precision 4, per unit: %v", r)
	}
	f = newSales(t, Options{SystemPricingOff: true})
	if r := line(f); r["extendedamount"] != nil || r["order.totalamount"] != nil {
		t.Fatalf("system pricing off computed amounts: %v", r)
	}
	orgs := f.c.must(200, f.c.do("GET", "organizations?$select=pricingdecimalprecision,discountcalculationmethod,oobpricecalculationenabled", nil))
	v := orgs.body["value"].([]any)
	if len(v) != 1 || v[0].(map[string]any)["oobpricecalculationenabled"] != false || v[0].(map[string]any)["pricingdecimalprecision"] != 2.0 {
		t.Fatalf("organizations: %s", orgs.raw)
	}
	f.c.must(400, f.c.do("PATCH", "organizations("+f.c.s.OrganizationID()+")", map[string]any{"pricingdecimalprecision": 5}, "If-Match", "*"))
	f.c.must(405, f.c.do("DELETE", "organizations("+f.c.s.OrganizationID()+")", nil))
}

// A security role without a privilege: 403 PrivilegeDenied naming it (web service error
// codes: 0x80040220).
func TestPrivilegeDenied(t *testing.T) {
	c := newTC(t, Options{})
	c.s.DenyPrivilege("contacts", PrivCreate)
	r := c.must(403, c.do("POST", "contacts", map[string]any{"lastname": "x"}))
	if r.errCode() != "0x80040220" || !strings.Contains(r.errMsg(), "is missing prvCreateContact privilege") || !strings.Contains(r.errMsg(), "for entity 'contact'") {
		t.Fatalf("denied create: %s", r.raw)
	}
	c.must(200, c.do("GET", "contacts?$select=contactid", nil))
	if _, err := c.s.Insert("contacts", map[string]any{"lastname": "typed in"}); err != nil {
		t.Fatalf("a test's direct insert is not checked: %v", err)
	}
	c.s.AllowPrivilege("contacts", PrivCreate)
	c.must(204, c.do("POST", "contacts", map[string]any{"lastname": "x"}))
	c.s.DenyPrivilege("contacts", PrivRead)
	c.must(403, c.do("GET", "contacts?$select=contactid", nil))
}

// Deleting a product family deletes its products and their price list items (product
// table reference: product_parent_product, Delete: Cascade); a product of the family on
// an order line (product_order_details, Restrict) refuses the whole delete.
func TestProductFamilyDeleteCascades(t *testing.T) {
	f := newSales(t, Options{})
	c := f.c
	fam := entityID(c.must(204, c.do("POST", "products", map[string]any{"name": "family", "productnumber": "F1", "productstructure": 2})))
	kid := f.newProduct(t, "C1", fam)
	kid2 := f.newProduct(t, "C2", fam)
	item := entityID(c.must(204, c.do("POST", "productpricelevels", map[string]any{"amount": 5,
		"pricelevelid@odata.bind": "/pricelevels(" + f.priceList + ")", "productid@odata.bind": "/products(" + kid + ")",
		"uomid@odata.bind": "/uoms(" + f.unit + ")"})))
	c.must(204, c.do("DELETE", "products("+fam+")", nil))
	for _, r := range [][2]string{{"products", kid}, {"products", kid2}, {"productpricelevels", item}} {
		if _, ok := c.s.Row(r[0], r[1]); ok {
			t.Errorf("%s %s kept after its family's delete", r[0], r[1])
		}
	}

	fam2 := entityID(c.must(204, c.do("POST", "products", map[string]any{"name": "family 2", "productnumber": "F2", "productstructure": 2})))
	kid3 := f.newProduct(t, "C3", fam2)
	c.must(204, c.do("POST", "products("+fam2+")/Microsoft.Dynamics.CRM.PublishProductHierarchy", nil))
	c.must(204, c.do("POST", "productpricelevels", map[string]any{"amount": 5,
		"pricelevelid@odata.bind": "/pricelevels(" + f.priceList + ")", "productid@odata.bind": "/products(" + kid3 + ")",
		"uomid@odata.bind": "/uoms(" + f.unit + ")"}))
	order := f.order(t, nil)
	c.must(204, f.line(order, map[string]any{"productid@odata.bind": "/products(" + kid3 + ")", "uomid@odata.bind": "/uoms(" + f.unit + ")", "quantity": 1}))
	if r := c.must(405, c.do("DELETE", "products("+fam2+")", nil)); r.errCode() != "0x80048103" {
		t.Fatalf("delete a family whose product is on an order line: %s", r.raw)
	}
	for _, id := range []string{fam2, kid3} {
		if _, ok := c.s.Row("products", id); !ok {
			t.Errorf("product %s gone after a refused delete", id)
		}
	}
}

// quantityonhand takes 0 to 1,000,000,000 (product table reference: QuantityOnHand).
func TestProductQuantityOnHandRange(t *testing.T) {
	f := newSales(t, Options{})
	draft := f.newProduct(t, "Q1", "")
	f.c.must(204, f.c.do("PATCH", "products("+draft+")", map[string]any{"quantityonhand": 1000000000}, "If-Match", "*"))
	for _, q := range []any{1000000001, 2147483647, -1} {
		if r := f.c.must(400, f.c.do("PATCH", "products("+draft+")", map[string]any{"quantityonhand": q}, "If-Match", "*")); r.errCode() != "0x80044331" {
			t.Fatalf("quantityonhand %v: %s", q, r.raw)
		}
	}
}

// Revising a family revises its Active products too, and PublishProductHierarchy takes
// only a family (Learn: publish-revise-revert-retire-activate-products: "it revises the
// product family and its child records"; "You can use this message only with a product
// family record").
func TestProductFamilyReviseAndPublishHierarchy(t *testing.T) {
	f := newSales(t, Options{})
	c := f.c
	fam := entityID(c.must(204, c.do("POST", "products", map[string]any{"name": "family", "productnumber": "F1", "productstructure": 2})))
	kid := f.newProduct(t, "C1", fam)
	c.must(204, c.do("POST", "products("+fam+")/Microsoft.Dynamics.CRM.PublishProductHierarchy", nil))
	c.must(204, c.do("PATCH", "products("+fam+")", map[string]any{"statecode": 3, "statuscode": 3}, "If-Match", "*"))
	if st := f.row("products", kid)["statecode"]; st != 3 {
		t.Fatalf("child state %v after its family's revise, want Under Revision (3)", st)
	}
	c.must(204, c.do("POST", "products("+fam+")/Microsoft.Dynamics.CRM.PublishProductHierarchy", nil))
	if st := f.row("products", kid)["statecode"]; st != 0 {
		t.Fatalf("child state %v after its family's publish, want Active", st)
	}
	plain := f.newProduct(t, "P1", "")
	c.must(400, c.do("POST", "products("+plain+")/Microsoft.Dynamics.CRM.PublishProductHierarchy", nil))
	if st := f.row("products", plain)["statecode"]; st != 2 {
		t.Fatalf("a product's PublishProductHierarchy changed its state to %v", st)
	}
}

// Only a product family can be a parent (Learn: create-manage-product-families-products-
// bundles-product-properties): a family that holds products is not made a product on
// update; one that holds none is (not documented either way).
func TestProductFamilyWithProductsStaysAFamily(t *testing.T) {
	f := newSales(t, Options{})
	c := f.c
	fam := entityID(c.must(204, c.do("POST", "products", map[string]any{"name": "family", "productnumber": "F1", "productstructure": 2})))
	kid := f.newProduct(t, "C1", fam)
	r := c.must(400, c.do("PATCH", "products("+fam+")", map[string]any{"productstructure": 1}, "If-Match", "*"))
	if r.errCode() != "0x8004f998" {
		t.Fatalf("a family with a product made a product: %s", r.raw)
	}
	if st := f.row("products", fam)["productstructure"]; st != 2 {
		t.Fatalf("family structure %v after the refusal", st)
	}
	c.must(204, c.do("DELETE", "products("+kid+")", nil))
	c.must(204, c.do("PATCH", "products("+fam+")", map[string]any{"productstructure": 1}, "If-Match", "*"))
}
