package syncer

import (
	"fmt"
	"html"
	"regexp"
	"strconv"
	"strings"

	"github.com/nopsync/nopsync/shared/dataverse"
	"github.com/nopsync/nopsync/shared/nop"
)

// Dataverse entity sets and the salesorder states the order sync works with
// (Microsoft Learn: the salesorder table reference and update-delete-entities-using-web-api).
const (
	setSalesOrders       = "salesorders"
	setSalesOrderDetails = "salesorderdetails"
	setInvoices          = "invoices"

	orderStateActive    = 0
	orderStateSubmitted = 1
	orderStateCanceled  = 2
	orderStateFulfilled = 3
	orderStateInvoiced  = 4

	orderStatusNew      = 1
	orderStatusPending  = 2
	orderStatusNoMoney  = 4      // Canceled
	orderStatusComplete = 100001 // Fulfilled

	invoiceStatePaid      = 2
	invoiceStatusComplete = 100001 // Paid / Complete

	feeDescription = "Payment fee"
)

// orderWrite is everything the header-and-lines step writes for one order.
type orderWrite struct {
	OrderID string           // salesorderid
	Header  dataverse.Record // PATCH salesorders(OrderID)
	Lines   []lineWrite      // PATCH salesorderdetails(ID), items in order, then the fee line
	Amounts orderAmounts
}

type lineWrite struct {
	ID     string
	Record dataverse.Record
}

// orderRefs are the Dataverse rows an order points at.
type orderRefs struct {
	ContactID  string
	ProductIDs map[int]string // nopCommerce product id -> productid
	Shared     *shared
	// WriteIn lists products Dynamics 365 refuses on order lines (Draft, Retired): their
	// lines are written as write-in products with the product's name.
	WriteIn map[int]bool
}

// salesOrderID is the deterministic salesorderid of a store's order.
func salesOrderID(storeID, orderID int) string {
	return deterministicID(storeID, "salesorder", strconv.Itoa(orderID))
}

// orderLineID is the deterministic salesorderdetailid of an order item.
func orderLineID(storeID, itemID int) string {
	return deterministicID(storeID, "salesorderdetail", strconv.Itoa(itemID))
}

// orderFeeLineID is the deterministic id of an order's payment-fee line.
func orderFeeLineID(storeID, orderID int) string {
	return deterministicID(storeID, "salesorderdetail", "fee-"+strconv.Itoa(orderID))
}

func bindTo(set, id string) string { return "/" + set + "(" + id + ")" }

// activeStatus is the Active statuscode for a store order status (10 → New, else Pending).
func activeStatus(orderStatus int) int {
	if orderStatus == nop.OrderStatusPending {
		return orderStatusNew
	}
	return orderStatusPending
}

// mapOrder builds the salesorder and its lines (docs/dataverse-mapping.md, Order).
func mapOrder(storeID int, o *nop.Order, orderID string, refs orderRefs) (*orderWrite, error) {
	sh := refs.Shared
	p := sh.precision()
	amts := orderTotals(o, p)
	h := dataverse.Record{
		"name":                             ordCut(o.CustomOrderNumber, 300),
		"customerid_contact@odata.bind":    bindTo("contacts", refs.ContactID),
		"pricelevelid@odata.bind":          bindTo("pricelevels", sh.PriceListID),
		"transactioncurrencyid@odata.bind": bindTo("transactioncurrencies", sh.CurrencyID),
		"freightamount":                    moneyValue(amts.Freight, p.amount),
		"discountamount":                   moneyValue(amts.Discount, p.amount),
		"description":                      orderDescription(o, amts),
		"statuscode":                       activeStatus(o.OrderStatus),
	}
	if e := ordStr(o.BillingAddress.Email); e != "" {
		h["emailaddress"] = ordCut(e, 100)
	} else {
		h["emailaddress"] = nil
	}
	addAddress(h, "billto_", &o.BillingAddress)
	addAddress(h, "shipto_", o.ShippingAddress)

	w := &orderWrite{OrderID: orderID, Header: h, Amounts: amts}
	orderBind := bindTo(setSalesOrders, orderID)
	for i, it := range o.Items {
		pid := refs.ProductIDs[it.Product.ID]
		if pid == "" {
			return nil, fmt.Errorf("order %d item %d: product %d has no Dataverse product", o.ID, it.ID, it.Product.ID)
		}
		l := amts.Items[i]
		rec := lineRecord(orderBind, l, p, i+1)
		if refs.WriteIn[it.Product.ID] {
			// A write-in line carries neither product nor unit (Dataverse refuses both).
			rec["isproductoverridden"] = true
			rec["productdescription"] = ordCut(writeInName(it.Product), 500)
			rec["productid@odata.bind"] = nil
			rec["uomid@odata.bind"] = nil
		} else {
			rec["isproductoverridden"] = false
			rec["productdescription"] = nil
			rec["productid@odata.bind"] = bindTo("products", pid)
			rec["uomid@odata.bind"] = bindTo("uoms", sh.BaseUnitID)
		}
		rec["description"] = attributeText(it.AttributeDescription) // nil clears an old one
		w.Lines = append(w.Lines, lineWrite{ID: orderLineID(storeID, it.ID), Record: rec})
	}
	if amts.Fee != nil {
		rec := lineRecord(orderBind, *amts.Fee, p, len(o.Items)+1)
		rec["isproductoverridden"] = true
		rec["productdescription"] = feeDescription
		w.Lines = append(w.Lines, lineWrite{ID: orderFeeLineID(storeID, o.ID), Record: rec})
	}
	return w, nil
}

var (
	brTag   = regexp.MustCompile(`(?i)<br\s*/?>`)
	htmlTag = regexp.MustCompile(`<[^>]*>`)
)

// attributeText turns nopCommerce's attribute description ("Color: Red<br />Size: 8",
// HTML-encoded) into plain lines; nil stays nil.
func attributeText(s *string) any {
	if s == nil || strings.TrimSpace(*s) == "" {
		return nil
	}
	t := brTag.ReplaceAllString(*s, "\n")
	t = html.UnescapeString(htmlTag.ReplaceAllString(t, ""))
	return ordCut(strings.TrimSpace(t), 2000)
}

// writeInName names a write-in line's product: "Name (SKU)".
func writeInName(p nop.ItemProduct) string {
	if sku := ordStr(p.Sku); sku != "" {
		return p.Name + " (" + sku + ")"
	}
	return p.Name
}

func lineRecord(orderBind string, l lineAmounts, p precision, n int) dataverse.Record {
	return dataverse.Record{
		"salesorderid@odata.bind": orderBind,
		"lineitemnumber":          n,
		"quantity":                l.Quantity,
		"priceperunit":            moneyValue(l.PricePerUnit, p.price),
		"ispriceoverridden":       true,
		"manualdiscountamount":    moneyValue(l.ManualDiscount, p.amount),
		"tax":                     moneyValue(l.Tax, p.amount),
	}
}

// addAddress sets the billto_/shipto_ columns; a nil address clears them.
func addAddress(r dataverse.Record, prefix string, a *nop.Address) {
	if a == nil {
		a = &nop.Address{}
	}
	name := strings.TrimSpace(ordStr(a.FirstName) + " " + ordStr(a.LastName))
	state := ordStr(a.StateProvince)
	if state == "" {
		state = ordStr(a.County)
	}
	set := func(col, v string, n int) {
		if v == "" {
			r[prefix+col] = nil
			return
		}
		r[prefix+col] = ordCut(v, n)
	}
	set("name", ordJoin(" / ", name, ordStr(a.Company)), 200)
	set("contactname", name, 150)
	set("line1", ordStr(a.Address1), 250)
	set("line2", ordStr(a.Address2), 250)
	set("city", ordStr(a.City), 80)
	set("stateorprovince", state, 50)
	set("postalcode", ordStr(a.ZipPostalCode), 20)
	set("country", ordStr(a.Country), 80)
	set("telephone", ordStr(a.Phone), 50)
}

// orderDescription is "nopCommerce order <id> (<guid>)" with payment and shipping method,
// refunds and voids, and any difference between the order total and its parts.
func orderDescription(o *nop.Order, a orderAmounts) string {
	var b strings.Builder
	fmt.Fprintf(&b, "nopCommerce order %d (%s)", o.ID, o.OrderGUID)
	if s := ordStr(o.PaymentMethodSystemName); s != "" {
		fmt.Fprintf(&b, "\nPayment method: %s", s)
	}
	if s := ordStr(o.ShippingMethod); s != "" {
		fmt.Fprintf(&b, "\nShipping method: %s", s)
	}
	if n := paymentNote(o); n != "" {
		b.WriteString("\n")
		b.WriteString(n)
	}
	if !a.Unexplained.IsZero() {
		// Gift cards and reward points, or the currency's cash rounding (nopCommerce rounds
		// orderTotal to a currency's RoundingType, e.g. 0.05 for CHF): the event can't tell.
		fmt.Fprintf(&b, "\nnopCommerce order total %s: %s from its parts (gift cards or reward points, or the currency's cash rounding)", o.OrderTotal.String(), a.Unexplained.String())
	}
	return ordCut(b.String(), 2000)
}

// paymentNote describes a refund or void ("" when there is none).
func paymentNote(o *nop.Order) string {
	switch {
	case o.PaymentStatus == nop.PaymentStatusVoided:
		return "Payment voided in nopCommerce"
	case o.PaymentStatus == nop.PaymentStatusRefunded:
		return "Refunded in nopCommerce: " + o.RefundedAmount.String()
	case o.PaymentStatus == nop.PaymentStatusPartiallyRefunded || o.RefundedAmount.Sign() > 0:
		return "Partially refunded in nopCommerce: " + o.RefundedAmount.String()
	}
	return ""
}

// orderPaid reports whether the store order is paid (an invoice belongs in Dynamics 365).
// Refunded and voided orders that were paid keep their invoice; one never paid gets none.
func orderPaid(o *nop.Order) bool {
	return o.PaymentStatus == nop.PaymentStatusPaid || o.PaidDateUtc != nil
}

func ordStr(p *string) string {
	if p == nil {
		return ""
	}
	return strings.TrimSpace(*p)
}

func ordJoin(sep string, parts ...string) string {
	var out []string
	for _, p := range parts {
		if p != "" {
			out = append(out, p)
		}
	}
	return strings.Join(out, sep)
}

// cut shortens s to at most n runes (Dataverse rejects longer strings).
func ordCut(s string, n int) string {
	if len(s) <= n {
		return s
	}
	r := []rune(s)
	if len(r) <= n {
		return s
	}
	return string(r[:n])
}
