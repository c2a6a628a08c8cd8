package dataversetest

import (
	"strings"
	"testing"

	"github.com/google/uuid"
)

// salesFixture creates a unit group (with its base unit), a USD price list and an
// Active product with a price list item, the way the app bootstraps.
type salesFixture struct {
	c                               *tc
	group, unit, priceList, product string
	contact, eur                    string
}

func newSales(t testing.TB, o Options) *salesFixture {
	t.Helper()
	if o.Currencies == nil {
		o.Currencies = []Currency{{ISOCode: "EUR", Name: "Euro", Symbol: "€", Precision: 2, ExchangeRate: 0.9}}
	}
	c := newTC(t, o)
	f := &salesFixture{c: c}
	f.group = entityID(c.must(204, c.do("POST", "uomschedules", map[string]any{"name": "Default Unit", "baseuomname": "Primary Unit"})))
	units := c.do("GET", "uoms?$filter=_uomscheduleid_value eq "+f.group, nil)
	v := units.body["value"].([]any)
	if len(v) != 1 || v[0].(map[string]any)["name"] != "Primary Unit" || v[0].(map[string]any)["isschedulebaseuom"] != true {
		t.Fatalf("base unit: %s", units.raw)
	}
	f.unit = v[0].(map[string]any)["uomid"].(string)
	f.priceList = entityID(c.must(204, c.do("POST", "pricelevels", map[string]any{"name": "nopCommerce USD",
		"transactioncurrencyid@odata.bind": "/transactioncurrencies(" + c.s.BaseCurrencyID() + ")"})))
	for _, r := range c.s.Rows("transactioncurrencies") {
		if r["isocurrencycode"] == "EUR" {
			f.eur = r["transactioncurrencyid"].(string)
		}
	}
	f.product = f.newProduct(t, "SKU-1", "")
	if f.row("products", f.product)["statecode"] == 2 {
		c.must(204, c.do("PATCH", "products("+f.product+")", map[string]any{"statecode": 0, "statuscode": 1}, "If-Match", "*"))
	}
	c.must(204, c.do("POST", "productpricelevels", map[string]any{"amount": 19.99,
		"pricelevelid@odata.bind": "/pricelevels(" + f.priceList + ")", "productid@odata.bind": "/products(" + f.product + ")",
		"uomid@odata.bind": "/uoms(" + f.unit + ")"}))
	f.contact = entityID(c.must(204, c.do("POST", "contacts", map[string]any{"lastname": "Buyer"})))
	return f
}

func (f *salesFixture) newProduct(t testing.TB, number, parent string) string {
	t.Helper()
	body := map[string]any{"name": number, "productnumber": number, "price": 10,
		"defaultuomscheduleid@odata.bind": "/uomschedules(" + f.group + ")", "defaultuomid@odata.bind": "/uoms(" + f.unit + ")"}
	if parent != "" {
		body["parentproductid@odata.bind"] = "/products(" + parent + ")"
	}
	return entityID(f.c.must(204, f.c.do("POST", "products", body)))
}

func (f *salesFixture) order(t *testing.T, extra map[string]any) string {
	t.Helper()
	body := map[string]any{"name": "SO-1", "customerid_contact@odata.bind": "/contacts(" + f.contact + ")",
		"pricelevelid@odata.bind": "/pricelevels(" + f.priceList + ")"}
	for k, v := range extra {
		body[k] = v
	}
	return entityID(f.c.must(204, f.c.do("POST", "salesorders", body)))
}

func (f *salesFixture) line(order string, body map[string]any) res {
	body["salesorderid@odata.bind"] = "/salesorders(" + order + ")"
	return f.c.do("POST", "salesorderdetails", body)
}

func (f *salesFixture) row(set, id string) map[string]any {
	r, ok := f.c.s.Row(set, id)
	if !ok {
		f.c.t.Fatalf("no %s row %s", set, id)
	}
	return r
}

// publish-revise-revert-retire-activate-products: Draft by default, publish by PATCH, revise, retire,
// ProductCanOnlyBeUpdatedInDraft, unique productnumber, unit group rules.
func TestProductLifecycle(t *testing.T) {
	f := newSales(t, Options{})
	c := f.c
	p := f.newProduct(t, "SKU-2", "")
	if r := f.row("products", p); r["statecode"] != 2 || r["statuscode"] != 0 {
		t.Fatalf("new product state %v/%v, want Draft 2/0", r["statecode"], r["statuscode"])
	}
	c.must(204, c.do("PATCH", "products("+p+")", map[string]any{"name": "renamed in draft"}, "If-Match", "*"))
	c.must(204, c.do("PATCH", "products("+p+")", map[string]any{"statecode": 0, "statuscode": 1}, "If-Match", "*"))
	r := c.must(400, c.do("PATCH", "products("+p+")", map[string]any{"price": 12}, "If-Match", "*"))
	if r.errCode() != "0x8004f995" || r.errMsg() != "Product, product family and bundle can only be updated in draft state." {
		t.Fatalf("active update: %s", r.raw)
	}
	c.must(400, c.do("PATCH", "products("+p+")", map[string]any{"statecode": 2, "statuscode": 0}, "If-Match", "*"))
	c.must(204, c.do("PATCH", "products("+p+")", map[string]any{"statecode": 3, "statuscode": 3}, "If-Match", "*"))
	c.must(204, c.do("PATCH", "products("+p+")", map[string]any{"price": 12}, "If-Match", "*"))
	c.must(204, c.do("PATCH", "products("+p+")", map[string]any{"statecode": 0, "statuscode": 1}, "If-Match", "*"))
	c.must(204, c.do("PATCH", "products("+p+")", map[string]any{"statecode": 1, "statuscode": 2}, "If-Match", "*"))
	if r := f.row("products", p); r["statecode"] != 1 || r["price"] != 12.0 {
		t.Fatalf("retired product: %v", r)
	}
	r = c.must(400, c.do("POST", "products", map[string]any{"name": "dup", "productnumber": "sku-2"}))
	if r.errCode() != "0x80043b06" {
		t.Fatalf("duplicate productnumber: %s", r.raw)
	}
	other := entityID(c.must(204, c.do("POST", "uomschedules", map[string]any{"name": "Other"})))
	var otherUnit string
	for _, u := range c.s.Rows("uoms") {
		if u["_uomscheduleid_value"] == other {
			otherUnit = u["uomid"].(string)
		}
	}
	r = c.must(400, c.do("POST", "products", map[string]any{"name": "x", "productnumber": "X1",
		"defaultuomscheduleid@odata.bind": "/uomschedules(" + f.group + ")", "defaultuomid@odata.bind": "/uoms(" + otherUnit + ")"}))
	if r.errCode() != "0x80043b14" {
		t.Fatalf("unit outside group: %s", r.raw)
	}
	// Option ActiveProductsUpdatable.
	g := newSales(t, Options{ActiveProductsUpdatable: true, ProductsCreatedActive: true})
	q := g.newProduct(t, "SKU-3", "")
	if r := g.row("products", q); r["statecode"] != 0 {
		t.Fatalf("ProductsCreatedActive: state %v", r["statecode"])
	}
	g.c.must(204, g.c.do("PATCH", "products("+q+")", map[string]any{"price": 3}, "If-Match", "*"))
}

// create-manage-product-families-products-bundles-product-properties: only families are parents; children publish after the family;
// PublishProductHierarchy publishes a family and its children.
func TestProductFamilies(t *testing.T) {
	f := newSales(t, Options{ProductsCreatedActive: true})
	c := f.c
	r := c.must(400, c.do("POST", "products", map[string]any{"name": "child", "productnumber": "C0", "parentproductid@odata.bind": "/products(" + f.product + ")"}))
	if r.errCode() != "0x8004f998" {
		t.Fatalf("product as parent: %s", r.raw)
	}
	fam := entityID(c.must(204, c.do("POST", "products", map[string]any{"name": "family", "productnumber": "F1", "productstructure": 2})))
	if f.row("products", fam)["statecode"] != 2 {
		t.Fatal("family not Draft")
	}
	kid := f.newProduct(t, "C1", fam)
	kid2 := f.newProduct(t, "C2", fam)
	if f.row("products", kid)["statecode"] != 2 {
		t.Fatal("child with parent should be Draft even with ProductsCreatedActive")
	}
	r = c.must(400, c.do("PATCH", "products("+kid+")", map[string]any{"statecode": 0}, "If-Match", "*"))
	if r.errCode() != "0x8004f909" {
		t.Fatalf("child before family: %s", r.raw)
	}
	c.must(204, c.do("POST", "products("+fam+")/Microsoft.Dynamics.CRM.PublishProductHierarchy", nil))
	for _, id := range []string{fam, kid, kid2} {
		if r := f.row("products", id); r["statecode"] != 0 || r["statuscode"] != 1 {
			t.Fatalf("product %s not Active after PublishProductHierarchy: %v", id, r)
		}
	}
}

// pricelevel and productpricelevel table references, price lists: unique names, one price per product+unit, currency checks.
func TestPriceLists(t *testing.T) {
	f := newSales(t, Options{})
	c := f.c
	r := c.must(400, c.do("POST", "pricelevels", map[string]any{"name": "NOPCOMMERCE USD"}))
	if r.errCode() != "0x80043b0f" {
		t.Fatalf("price list name: %s", r.raw)
	}
	r = c.must(400, c.do("POST", "productpricelevels", map[string]any{"amount": 1,
		"pricelevelid@odata.bind": "/pricelevels(" + f.priceList + ")", "productid@odata.bind": "/products(" + f.product + ")",
		"uomid@odata.bind": "/uoms(" + f.unit + ")"}))
	if r.errCode() != "0x80043b08" {
		t.Fatalf("duplicate price: %s", r.raw)
	}
	r = c.must(400, c.do("POST", "salesorders", map[string]any{"name": "x",
		"pricelevelid@odata.bind": "/pricelevels(" + f.priceList + ")", "transactioncurrencyid@odata.bind": "/transactioncurrencies(" + f.eur + ")"}))
	if r.errCode() != "0x80048ced" {
		t.Fatalf("currency mismatch: %s", r.raw)
	}
	r = c.must(400, c.do("POST", "transactioncurrencies", map[string]any{"isocurrencycode": "usd", "currencyname": "x", "currencysymbol": "$", "currencyprecision": 2}))
	if r.errCode() != "0x80048cf3" {
		t.Fatalf("duplicate ISO code: %s", r.raw)
	}
	// Restrict: a unit used by a product, a price list used by an order.
	f.order(t, nil)
	c.must(400, c.do("DELETE", "uoms("+f.unit+")", nil)) // the base unit of a group
	c.must(405, c.do("DELETE", "uomschedules("+f.group+")", nil))
	c.must(405, c.do("DELETE", "pricelevels("+f.priceList+")", nil))
	c.must(400, c.do("DELETE", "transactioncurrencies("+c.s.BaseCurrencyID()+")", nil))
}

// salesorderdetail and salesorder table references, totals: extendedamount = qty × priceperunit − manualdiscountamount + tax;
// totallineitemamount = Σ extendedamount; totalamount = lines − discountamount + freightamount.
func TestOrderLinesAndTotals(t *testing.T) {
	f := newSales(t, Options{})
	c := f.c
	o := f.order(t, map[string]any{"discountamount": 5.005, "freightamount": 7.5})
	// Price from the price list (19.99) unless overridden.
	l1 := entityID(c.must(204, f.line(o, map[string]any{"productid@odata.bind": "/products(" + f.product + ")",
		"uomid@odata.bind": "/uoms(" + f.unit + ")", "quantity": 3, "manualdiscountamount": 1, "tax": 2.345})))
	if r := f.row("salesorderdetails", l1); r["priceperunit"] != 19.99 || r["baseamount"] != 59.97 || r["extendedamount"] != 61.32 || r["tax"] != 2.35 {
		t.Fatalf("line 1: %v", r)
	}
	l2 := entityID(c.must(204, f.line(o, map[string]any{"productid@odata.bind": "/products(" + f.product + ")",
		"uomid@odata.bind": "/uoms(" + f.unit + ")", "quantity": 2, "priceperunit": 4.125, "ispriceoverridden": true})))
	if r := f.row("salesorderdetails", l2); r["priceperunit"] != 4.13 || r["extendedamount"] != 8.26 {
		t.Fatalf("line 2: %v", r)
	}
	// Write-in line: no product or unit allowed.
	r := c.must(400, f.line(o, map[string]any{"isproductoverridden": true, "productdescription": "Fee", "productid@odata.bind": "/products(" + f.product + ")"}))
	if r.errCode() != "0x80043afb" {
		t.Fatalf("write-in with product: %s", r.raw)
	}
	r = c.must(400, f.line(o, map[string]any{"isproductoverridden": true, "productdescription": "Fee", "uomid@odata.bind": "/uoms(" + f.unit + ")"}))
	if r.errCode() != "0x80043afa" {
		t.Fatalf("write-in with unit: %s", r.raw)
	}
	c.must(204, f.line(o, map[string]any{"isproductoverridden": true, "productdescription": "Payment fee", "quantity": 1, "priceperunit": 1.5}))
	so := f.row("salesorders", o)
	// lines 61.32 + 8.26 + 1.50 = 71.08; discount 5.01 (rounded); freight 7.50 → 73.57
	if so["totallineitemamount"] != 71.08 || so["discountamount"] != 5.01 || so["totalamount"] != 73.57 {
		t.Fatalf("totals: line %v discount %v total %v", so["totallineitemamount"], so["discountamount"], so["totalamount"])
	}
	// Deleting a line updates the totals.
	c.must(204, c.do("DELETE", "salesorderdetails("+l2+")", nil))
	if so := f.row("salesorders", o); so["totalamount"] != 65.31 {
		t.Fatalf("after delete total %v", so["totalamount"])
	}
	// A Draft product can't be sold (Draft products are "not available" until published).
	draft := f.newProduct(t, "DRAFT", "")
	c.must(400, f.line(o, map[string]any{"productid@odata.bind": "/products(" + draft + ")", "uomid@odata.bind": "/uoms(" + f.unit + ")", "quantity": 1}))
	// Restrict: product used by lines, contact with orders. Cascade: order lines.
	c.must(405, c.do("DELETE", "products("+f.product+")", nil))
	c.must(405, c.do("DELETE", "contacts("+f.contact+")", nil))
	c.must(204, c.do("DELETE", "salesorders("+o+")", nil))
	if n := c.s.Count("salesorderdetails"); n != 0 {
		t.Fatalf("%d lines after order delete", n)
	}
	c.must(204, c.do("DELETE", "contacts("+f.contact+")", nil))
}

// salesorder table reference, quote-order-invoice-entities: state machine, FulfillSalesOrder / CancelSalesOrder, read-only closed orders,
// ConvertSalesOrderToInvoice, paid invoices.
func TestOrderStates(t *testing.T) {
	f := newSales(t, Options{})
	c := f.c
	o := f.order(t, map[string]any{"freightamount": 1})
	c.must(204, f.line(o, map[string]any{"productid@odata.bind": "/products(" + f.product + ")", "uomid@odata.bind": "/uoms(" + f.unit + ")", "quantity": 1}))
	c.must(204, c.do("PATCH", "salesorders("+o+")", map[string]any{"statuscode": 2}, "If-Match", "*"))
	r := c.must(400, c.do("PATCH", "salesorders("+o+")", map[string]any{"statecode": 3, "statuscode": 100001}, "If-Match", "*"))
	if !strings.Contains(r.errMsg(), "use the FulfillSalesOrder Request") {
		t.Fatalf("fulfil by PATCH: %s", r.raw)
	}
	r = c.must(400, c.do("PATCH", "salesorders("+o+")", map[string]any{"statecode": 2, "statuscode": 4}, "If-Match", "*"))
	if !strings.Contains(r.errMsg(), "use the CancelSalesOrderRequest Request message instead") {
		t.Fatalf("cancel by PATCH: %s", r.raw)
	}
	// Invoice from the order.
	r = c.must(200, c.do("POST", "ConvertSalesOrderToInvoice", map[string]any{"SalesOrderId": o, "ColumnSet": map[string]any{"AllColumns": true}}))
	inv, _ := r.body["invoiceid"].(string)
	if inv == "" || r.body["_salesorderid_value"] != o || r.body["totalamount"] != 20.99 || r.body["_customerid_value"] != f.contact {
		t.Fatalf("invoice: %s", r.raw)
	}
	if lines := c.do("GET", "invoicedetails?$filter=_invoiceid_value eq "+inv, nil).body["value"].([]any); len(lines) != 1 {
		t.Fatalf("invoice lines: %d", len(lines))
	}
	c.must(204, c.do("PATCH", "invoices("+inv+")", map[string]any{"statecode": 2, "statuscode": 100001}, "If-Match", "*"))
	c.must(400, c.do("PATCH", "invoices("+inv+")", map[string]any{"name": "changed"}, "If-Match", "*"))
	// Fulfil: creates an orderclose and closes the order.
	c.must(204, c.do("POST", "FulfillSalesOrder", map[string]any{"OrderClose": map[string]any{"@odata.type": "Microsoft.Dynamics.CRM.orderclose",
		"salesorderid@odata.bind": "/salesorders(" + o + ")", "subject": "Shipped"}, "Status": 100001}))
	if so := f.row("salesorders", o); so["statecode"] != 3 || so["statuscode"] != 100001 {
		t.Fatalf("fulfilled order: %v", so)
	}
	if oc := c.s.Rows("ordercloses"); len(oc) != 1 || oc[0]["_salesorderid_value"] != o || oc[0]["subject"] != "Shipped" {
		t.Fatalf("ordercloses: %v", oc)
	}
	// Closed orders are read-only, lines included.
	r = c.must(400, c.do("PATCH", "salesorders("+o+")", map[string]any{"name": "x"}, "If-Match", "*"))
	if r.errCode() != "0x8004022e" {
		t.Fatalf("closed order update: %s", r.raw)
	}
	c.must(400, f.line(o, map[string]any{"isproductoverridden": true, "productdescription": "late", "quantity": 1, "priceperunit": 1}))
	c.must(400, c.do("POST", "CancelSalesOrder", map[string]any{"OrderClose": map[string]any{"@odata.type": "Microsoft.Dynamics.CRM.orderclose",
		"salesorderid@odata.bind": "/salesorders(" + o + ")"}, "Status": 4}))
	// Cancel another order; a bad status is rejected.
	o2 := f.order(t, nil)
	c.must(400, c.do("POST", "CancelSalesOrder", map[string]any{"OrderClose": map[string]any{"@odata.type": "Microsoft.Dynamics.CRM.orderclose",
		"salesorderid@odata.bind": "/salesorders(" + o2 + ")"}, "Status": 100001}))
	c.must(204, c.do("POST", "CancelSalesOrder", map[string]any{"OrderClose": map[string]any{"@odata.type": "Microsoft.Dynamics.CRM.orderclose",
		"salesorderid@odata.bind": "/salesorders(" + o2 + ")"}, "Status": 4}))
	if so := f.row("salesorders", o2); so["statecode"] != 2 || so["statuscode"] != 4 {
		t.Fatalf("canceled: %v", so)
	}
	// An order with an invoice can't be deleted; one without can (fulfilled or not).
	c.must(405, c.do("DELETE", "salesorders("+o+")", nil))
	c.must(204, c.do("DELETE", "salesorders("+o2+")", nil))
	c.must(404, c.do("POST", "ConvertSalesOrderToInvoice", map[string]any{"SalesOrderId": uuid.NewString(), "ColumnSet": map[string]any{"AllColumns": true}}))
}

// Learn: webapi/create-entity-web-api: deep insert of order_details creates header and lines atomically.
func TestDeepInsertOrderDetails(t *testing.T) {
	f := newSales(t, Options{})
	c := f.c
	body := map[string]any{"name": "deep", "customerid_contact@odata.bind": "/contacts(" + f.contact + ")",
		"pricelevelid@odata.bind": "/pricelevels(" + f.priceList + ")",
		"order_details": []any{
			map[string]any{"productid@odata.bind": "/products(" + f.product + ")", "uomid@odata.bind": "/uoms(" + f.unit + ")", "quantity": 2},
			map[string]any{"isproductoverridden": true, "productdescription": "Fee", "quantity": 1, "priceperunit": 1},
		}}
	o := entityID(c.must(204, c.do("POST", "salesorders", body)))
	if so := f.row("salesorders", o); so["totalamount"] != 40.98 {
		t.Fatalf("deep insert total %v", so["totalamount"])
	}
	r := c.must(200, c.do("GET", "salesorders("+o+")?$select=name&$expand=order_details($select=extendedamount)", nil))
	if d := r.body["order_details"].([]any); len(d) != 2 {
		t.Fatalf("$expand: %s", r.raw)
	}
	r = c.must(200, c.do("GET", "salesorders("+o+")/order_details?$select=quantity", nil))
	if d := r.body["value"].([]any); len(d) != 2 {
		t.Fatalf("navigation GET: %s", r.raw)
	}
	// A bad line rolls the whole deep insert back.
	body["order_details"] = []any{map[string]any{"isproductoverridden": true, "productdescription": "x", "uomid@odata.bind": "/uoms(" + f.unit + ")"}}
	c.must(400, c.do("POST", "salesorders", body))
	if n := c.s.Count("salesorders"); n != 1 {
		t.Fatalf("%d orders after failed deep insert", n)
	}
}
