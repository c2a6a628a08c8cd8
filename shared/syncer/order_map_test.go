package syncer

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/nopsync/nopsync/shared/nop"
	"github.com/nopsync/nopsync/shared/state"
)

// specExamples is the repository's examples folder, from shared/syncer.
const specExamples = "../../examples"

// loadOrderEvents decodes an example of examples/ (one event or an array) as the intake would.
func loadOrderEvents(t testing.TB, name string) []*nop.Event {
	t.Helper()
	evs, err := nop.DecodeRequest(state.Order, readExample(t, name))
	if err != nil {
		t.Fatalf("decoding %s: %v", name, err)
	}
	return evs
}

func readExample(t testing.TB, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(specExamples, name))
	if err != nil {
		t.Fatalf("reading example: %v", err)
	}
	return b
}

func TestMapOrderSpecExample(t *testing.T) {
	ev := loadOrderEvents(t, "order-placed.json")[0]
	o := ev.Order
	sh := &shared{CurrencyID: "cur-1", CurrencyPrecision: 2, PriceListID: "pl-1", UnitGroupID: "ug-1", BaseUnitID: "uom-1",
		PricingPrecision: defaultPricingPrecision}
	refs := orderRefs{ContactID: "contact-42", ProductIDs: map[int]string{7: "prod-7", 12: "prod-12"}, Shared: sh}
	orderID := salesOrderID(ev.StoreID, o.ID)
	w, err := mapOrder(ev.StoreID, o, orderID, refs)
	if err != nil {
		t.Fatal(err)
	}
	h := w.Header
	for col, want := range map[string]any{
		"name":                             "1001",
		"customerid_contact@odata.bind":    "/contacts(contact-42)",
		"pricelevelid@odata.bind":          "/pricelevels(pl-1)",
		"transactioncurrencyid@odata.bind": "/transactioncurrencies(cur-1)",
		"freightamount":                    json.Number("11.00"),
		"discountamount":                   json.Number("5.00"),
		"statuscode":                       orderStatusNew,
		"billto_line1":                     "12 St James's Square",
		"billto_city":                      "London",
		"billto_postalcode":                "SW1Y 4JH",
		"billto_country":                   "United Kingdom",
		"billto_contactname":               "Ada Lovelace",
		"billto_name":                      "Ada Lovelace / Analytical Engines Ltd",
		"billto_line2":                     nil,
		"shipto_line1":                     "12 St James's Square",
		"emailaddress":                     "ada.lovelace@example.com",
	} {
		if got, ok := h[col]; !ok || got != want {
			t.Errorf("header %s = %#v, want %#v", col, got, want)
		}
	}
	desc, _ := h["description"].(string)
	for _, part := range []string{"nopCommerce order 1001 (9d2c6b7a-1e3f-4a5b-8c7d-0e1f2a3b1001)", "Payments.CheckMoneyOrder", "Ground"} {
		if !strings.Contains(desc, part) {
			t.Errorf("description %q lacks %q", desc, part)
		}
	}
	if len(w.Lines) != 3 {
		t.Fatalf("%d lines, want 2 items and the fee", len(w.Lines))
	}
	l0, l1, fee := w.Lines[0], w.Lines[1], w.Lines[2]
	if l0.ID != orderLineID(1, 5001) || l1.ID != orderLineID(1, 5002) || fee.ID != orderFeeLineID(1, 1001) {
		t.Errorf("line ids %s %s %s are not the deterministic ones", l0.ID, l1.ID, fee.ID)
	}
	checkCols := func(name string, rec map[string]any, want map[string]any) {
		t.Helper()
		for col, w := range want {
			if got, ok := rec[col]; !ok || got != w {
				t.Errorf("%s %s = %#v, want %#v", name, col, got, w)
			}
		}
	}
	checkCols("line 1", l0.Record, map[string]any{
		"salesorderid@odata.bind": "/salesorders(" + orderID + ")",
		"productid@odata.bind":    "/products(prod-7)", "uomid@odata.bind": "/uoms(uom-1)",
		"quantity": 2, "priceperunit": json.Number("100.00"), "ispriceoverridden": true,
		"manualdiscountamount": json.Number("0.00"), "tax": json.Number("20.00"),
	})
	if d, ok := l0.Record["description"]; !ok || d != nil {
		t.Errorf("line 1 description %#v, want an explicit null", d)
	}
	checkCols("line 2", l1.Record, map[string]any{
		"productid@odata.bind": "/products(prod-12)", "quantity": 1, "priceperunit": json.Number("10.00"),
		"manualdiscountamount": json.Number("1.00"), "tax": json.Number("0.90"),
	})
	if d := l1.Record["description"]; d != "Colour: black" {
		t.Errorf("line 2 description %#v, want the attribute description", d)
	}
	checkCols("fee line", fee.Record, map[string]any{
		"isproductoverridden": true, "productdescription": "Payment fee", "quantity": 1,
		"priceperunit": json.Number("2.20"), "tax": json.Number("0.00"), "ispriceoverridden": true,
	})
	for _, col := range []string{"productid@odata.bind", "uomid@odata.bind"} {
		if _, ok := fee.Record[col]; ok {
			t.Errorf("fee line carries %s: Dataverse refuses a write-in line with a product or unit", col)
		}
	}
	if w.Amounts.Total.String() != "238.10" {
		t.Errorf("total %s, want 238.10", w.Amounts.Total)
	}

	// A missing product is an error naming the item, not a line without product.
	delete(refs.ProductIDs, 12)
	if _, err := mapOrder(ev.StoreID, o, orderID, refs); err == nil || !strings.Contains(err.Error(), "product 12") {
		t.Errorf("mapOrder without product 12: %v", err)
	}
}

func TestOrderDescriptionRefundVoidGiftCard(t *testing.T) {
	o := loadOrderEvents(t, "order-placed.json")[0].Order
	o.PaymentStatus = nop.PaymentStatusPartiallyRefunded
	o.RefundedAmount = orderMoney(t, "12.5")
	if d := orderDescription(o, orderAmounts{}); !strings.Contains(d, "Partially refunded in nopCommerce: 12.50") {
		t.Errorf("description %q lacks the partial refund", d)
	}
	o.PaymentStatus = nop.PaymentStatusVoided
	if d := orderDescription(o, orderAmounts{}); !strings.Contains(d, "Payment voided") {
		t.Errorf("description %q lacks the void", d)
	}
	if d := orderDescription(o, orderAmounts{Unexplained: orderMoney(t, "-10")}); !strings.Contains(d, "-10.00 from its parts (gift cards or reward points, or the currency's cash rounding)") || !strings.Contains(d, "nopCommerce order total "+o.OrderTotal.String()) {
		t.Errorf("description %q lacks the order total and its difference from the parts", d)
	}
}

func TestOrderContentDigest(t *testing.T) {
	evs := loadOrderEvents(t, "order-lifecycle.json")
	placed, paid, completed := evs[0].Order, evs[1].Order, evs[2].Order
	if a, b, c := orderContentDigest(placed), orderContentDigest(paid), orderContentDigest(completed); a != b || b != c {
		t.Errorf("status changes alter the content digest: %s %s %s", a, b, c)
	}
	changed := *completed
	changed.Items = append([]nop.OrderItem(nil), completed.Items...)
	changed.Items[1].Quantity = 3
	if orderContentDigest(&changed) == orderContentDigest(completed) {
		t.Error("a changed quantity leaves the content digest unchanged")
	}
	renamed := *completed
	renamed.Items = append([]nop.OrderItem(nil), completed.Items...)
	renamed.Items[0].Product.Name = "Renamed in the catalogue"
	if orderContentDigest(&renamed) != orderContentDigest(completed) {
		t.Error("a catalogue rename changes the content digest")
	}
}

func TestAttributeText(t *testing.T) {
	for in, want := range map[string]any{
		"Colour: black": "Colour: black",
		"Color: Red<br />Size: 8<BR>Gift wrap: Yes": "Color: Red\nSize: 8\nGift wrap: Yes",
		"Engraving: A &amp; B<br/><b>Fast</b>":      "Engraving: A & B\nFast",
		"   ":                                       nil,
	} {
		if got := attributeText(&in); got != want {
			t.Errorf("attributeText(%q) = %#v, want %#v", in, got, want)
		}
	}
	if got := attributeText(nil); got != nil {
		t.Errorf("attributeText(nil) = %#v", got)
	}
}
