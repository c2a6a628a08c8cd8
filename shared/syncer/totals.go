package syncer

import (
	"encoding/json"

	"github.com/nopsync/nopsync/shared/nop"
)

// defaultPricingPrecision is Dataverse's default Organization.PricingDecimalPrecision, the
// number of decimals a priceperunit keeps; bootstrap reads the environment's own.
const defaultPricingPrecision = 2

// precision says how many decimals Dataverse keeps: price for priceperunit, amount for
// every other money column (the currency's currencyprecision). perUnit is the
// organization's discount calculation method: the line's manualdiscountamount comes off
// each unit ((price − discount) × quantity) instead of the line (price × quantity −
// discount).
type precision struct {
	price   int
	amount  int
	perUnit bool
}

// precisionFor returns the precisions for a currency and the organization's pricing
// precision. A unit price is rounded to the lower of the two: quantity × priceperunit then
// already has the currency's decimals, so Dataverse never rounds an extended amount we
// computed.
func precisionFor(currencyPrecision, pricingPrecision int) precision {
	if currencyPrecision < 0 {
		currencyPrecision = 0
	}
	if currencyPrecision > 4 {
		// nopCommerce money has 4 decimals; more cannot carry any information.
		currencyPrecision = 4
	}
	return precision{price: max(0, min(pricingPrecision, currencyPrecision)), amount: currencyPrecision}
}

// lineAmounts is what the app writes on one salesorderdetail, and the extendedamount
// Dataverse computes from it: Extended = Quantity × PricePerUnit − ManualDiscount + Tax,
// or with the per-unit discount method Quantity × (PricePerUnit − ManualDiscount) + Tax.
type lineAmounts struct {
	Quantity       int
	PricePerUnit   nop.Money
	ManualDiscount nop.Money
	Tax            nop.Money
	Extended       nop.Money
}

// lineFor maps one store line. The tax column absorbs the difference between the store's
// line total (including tax) and the net amount Dataverse computes from the rounded unit
// price and discount, so the extended amount is the store's line total at currency
// precision: tax = total − (quantity × priceperunit − manualdiscountamount).
func lineFor(qty int, unitPriceExclTax, discountExclTax, totalInclTax nop.Money, p precision) lineAmounts {
	ppu := unitPriceExclTax.Round(p.price)
	mda := discountExclTax.Round(p.amount)
	ext := totalInclTax.Round(p.amount)
	net := ppu.Mul(qty).Sub(mda)
	if p.perUnit && qty > 0 {
		// The discount per unit; what division leaves over lands in tax with the rest.
		mda = nop.MoneyFromUnits(discountExclTax.Units() / int64(qty)).Round(p.amount)
		net = ppu.Sub(mda).Mul(qty)
	}
	return lineAmounts{Quantity: qty, PricePerUnit: ppu, ManualDiscount: mda, Tax: ext.Sub(net), Extended: ext}
}

// orderAmounts is the money side of a salesorder: its lines (store items in order, then the
// payment fee line when there is one), the header's discountamount and freightamount, and
// the totalamount Dataverse will compute from them.
type orderAmounts struct {
	Items    []lineAmounts
	Fee      *lineAmounts // nil: no fee line (fee is zero or negative)
	Discount nop.Money    // discountamount
	Freight  nop.Money    // freightamount
	Total    nop.Money    // totalamount = Σ Extended − Discount + Freight
	// Residual is the rounding difference moved into one line's tax so that Total equals
	// the store's orderTotal at currency precision (non-zero only for money with more
	// decimals than the currency keeps, e.g. tax computed on 4 decimals).
	Residual nop.Money
	// Unexplained is orderTotal minus the sum of its parts: gift cards and reward points
	// paid part of the order. It is not folded into any line; the description names it.
	Unexplained nop.Money
}

// orderTotals maps an order's money so that Dataverse's totalamount equals the store's
// orderTotal. Per line the salesorderdetail formula alone is exact whenever the store's amounts have
// no more decimals than the currency keeps (nopCommerce with RoundPricesDuringCalculation).
// With 4-decimal amounts (nopCommerce computes price incl. tax as price × (1 + rate) and
// stores 4 decimals) each line rounds on its own and the sum can miss orderTotal by a
// cent or two; when the order's identity holds exactly
//
//	orderTotal = Σ priceInclTax − orderSubTotalDiscountInclTax + orderShippingInclTax
//	             + paymentMethodAdditionalFeeInclTax − orderDiscount
//
// (to within less than a cent) that residual is moved into the tax of the largest line, so
// totalamount still equals round(orderTotal). When the identity does not hold (gift cards,
// reward points) nothing is moved: totalamount is then the sum of the order's parts.
func orderTotals(o *nop.Order, p precision) orderAmounts {
	var a orderAmounts
	exact := nop.Money{} // Σ lines − discount + freight with the store's own 4 decimals
	for _, it := range o.Items {
		l := lineFor(it.Quantity, it.UnitPriceExclTax, it.DiscountAmountExclTax, it.PriceInclTax, p)
		a.Items = append(a.Items, l)
		exact = exact.Add(it.PriceInclTax)
	}
	discount := o.OrderSubTotalDiscountInclTax.Add(o.OrderDiscount)
	fee := o.PaymentMethodAdditionalFeeInclTax
	switch fee.Sign() {
	case 1:
		// A write-in line priced at the fee including tax.
		l := lineFor(1, fee, nop.Money{}, fee, p)
		a.Fee = &l
	case -1:
		// A negative fee (a payment-method rebate) cannot be a line price: it is a discount.
		discount = discount.Sub(fee)
	}
	exact = exact.Add(fee).Sub(o.OrderSubTotalDiscountInclTax).Sub(o.OrderDiscount).Add(o.OrderShippingInclTax)
	a.Discount = discount.Round(p.amount)
	a.Freight = o.OrderShippingInclTax.Round(p.amount)
	a.Total = a.sum()
	a.Unexplained = o.OrderTotal.Sub(exact)
	// Less than a cent apart is rounding (nopCommerce may round orderTotal itself); a
	// gift card or reward points are at least a cent.
	if u := a.Unexplained.Units(); u > -100 && u < 100 {
		a.Unexplained = nop.Money{}
		if r := o.OrderTotal.Round(p.amount).Sub(a.Total); !r.IsZero() {
			if l := a.largest(); l != nil {
				l.Tax = l.Tax.Add(r)
				l.Extended = l.Extended.Add(r)
				a.Residual = r
				a.Total = a.sum()
			}
		}
	}
	return a
}

// sum is Dataverse's totalamount for these lines and header amounts.
func (a *orderAmounts) sum() nop.Money {
	t := nop.Money{}
	for _, l := range a.Items {
		t = t.Add(l.Extended)
	}
	if a.Fee != nil {
		t = t.Add(a.Fee.Extended)
	}
	return t.Sub(a.Discount).Add(a.Freight)
}

// largest returns the line with the largest extended amount (first on ties), where a
// rounding cent is least noticeable.
func (a *orderAmounts) largest() *lineAmounts {
	var best *lineAmounts
	for i := range a.Items {
		if best == nil || a.Items[i].Extended.Cmp(best.Extended) > 0 {
			best = &a.Items[i]
		}
	}
	if a.Fee != nil && (best == nil || a.Fee.Extended.Cmp(best.Extended) > 0) {
		best = a.Fee
	}
	return best
}

// moneyValue renders m for a Dataverse money column: an exact JSON number with the given
// decimals (a float64 could turn 0.1 + 0.2 into 0.30000000000000004).
func moneyValue(m nop.Money, decimals int) json.Number {
	return json.Number(m.StringFixed(decimals))
}
