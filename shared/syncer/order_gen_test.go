package syncer

import (
	"fmt"
	"math/rand/v2"
	"time"

	"github.com/nopsync/nopsync/shared/nop"
)

// genOptions steers genOrder.
type genOptions struct {
	// Round: nopCommerce's ShoppingCartSettings.RoundPricesDuringCalculation (the default):
	// every amount is rounded to 2 decimals as it is computed. Off, amounts keep the 4
	// decimals nopCommerce stores (price incl. tax = price × (1 + rate), decimal(18,4)).
	Round bool
}

// taxRates are tax rates in basis points (1900 = 19%), including awkward ones.
var taxRates = []int64{0, 500, 750, 825, 1000, 1900, 2000, 2100, 2500}

// withTax returns m × (1 + bp/10000) rounded half away from zero to 4 decimals, as
// nopCommerce's TaxService.CalculatePrice followed by decimal(18,4) storage does.
func withTax(m nop.Money, bp int64) nop.Money {
	return mulFrac(m, 10000+bp, 10000)
}

// mulFrac returns m × num / den rounded half away from zero to 4 decimals.
func mulFrac(m nop.Money, num, den int64) nop.Money {
	u := m.Units() * num
	neg := u < 0
	if neg {
		u = -u
	}
	q, r := u/den, u%den
	if 2*r >= den {
		q++
	}
	if neg {
		q = -q
	}
	return nop.MoneyFromUnits(q)
}

// cents returns a random amount between lo and hi cents, as money.
func cents(r *rand.Rand, lo, hi int64) nop.Money {
	return nop.MoneyFromUnits((lo + r.Int64N(hi-lo+1)) * 100)
}

func genPtr[T any](v T) *T { return &v }

// genOrder builds an order the way nopCommerce computes one (OrderProcessingService and
// OrderTotalCalculationService): unit price excl. tax, item discount, line totals with tax
// per line, a subtotal discount, shipping and a payment fee with tax, an order discount,
// and orderTotal = orderSubtotalInclTax − orderSubTotalDiscountInclTax + orderShippingInclTax
// + paymentMethodAdditionalFeeInclTax − orderDiscount with orderSubtotalInclTax = Σ priceInclTax.
func genOrder(r *rand.Rand, id int, o genOptions) *nop.Order {
	bp := taxRates[r.IntN(len(taxRates))]
	round := func(m nop.Money) nop.Money {
		if o.Round {
			return m.Round(2)
		}
		return m
	}
	ord := &nop.Order{
		ID:                   id,
		OrderGUID:            fmt.Sprintf("00000000-0000-4000-8000-%012d", id),
		CustomOrderNumber:    fmt.Sprint(id),
		CurrencyCode:         "USD",
		CustomerCurrencyCode: "USD",
		CurrencyRate:         nop.MoneyFromInt(1),
		OrderStatus:          nop.OrderStatusPending,
		PaymentStatus:        nop.PaymentStatusPending,
		ShippingStatus:       nop.ShippingStatusNotYetShipped,
		CreatedOnUtc:         time.Date(2026, 11, 25, 10, 0, 0, 0, time.UTC),
		Customer: nop.Customer{
			ID: 100000 + id, CustomerGUID: fmt.Sprintf("00000000-0000-4000-9000-%012d", id),
			Email:     genPtr(fmt.Sprintf("buyer%d@example.test", id)),
			FirstName: genPtr("Gen"), LastName: genPtr(fmt.Sprintf("Buyer %d", id)),
			IsRegistered: true, Active: true,
		},
		BillingAddress: nop.Address{FirstName: genPtr("Gen"), LastName: genPtr("Buyer"),
			Email: genPtr(fmt.Sprintf("buyer%d@example.test", id)), City: genPtr("Springfield"), Country: genPtr("United States")},
		PaymentMethodSystemName: genPtr("Payments.Manual"),
		ShippingMethod:          genPtr("Ground"),
	}
	n := 1 + r.IntN(6)
	var subIncl, subExcl, tax nop.Money
	for i := range n {
		qty := 1 + r.IntN(5)
		unitExcl := cents(r, 1, 50000)
		if !o.Round && r.IntN(3) == 0 {
			// Prices entered with tax and computed back: 4 decimals excl. tax.
			unitExcl = unitExcl.Add(nop.MoneyFromUnits(r.Int64N(100)))
		}
		lineExcl := unitExcl.Mul(qty)
		var discExcl nop.Money
		switch r.IntN(4) {
		case 0: // percentage item discount
			discExcl = round(mulFrac(lineExcl, 5+r.Int64N(30), 100))
		case 1: // fixed item discount, at most the line
			d := cents(r, 1, 2000)
			if d.Cmp(lineExcl) > 0 {
				d = lineExcl
			}
			discExcl = d
		}
		priceExcl := lineExcl.Sub(discExcl)
		priceIncl := round(withTax(priceExcl, bp))
		ord.Items = append(ord.Items, nop.OrderItem{
			ID: id*100 + i + 1, OrderItemGUID: fmt.Sprintf("00000000-0000-4000-a000-%010d%02d", id, i),
			Product:          nop.ItemProduct{ID: 1 + r.IntN(40), Name: "Generated product", ProductType: nop.ProductTypeSimple},
			Quantity:         qty,
			UnitPriceExclTax: unitExcl, UnitPriceInclTax: round(withTax(unitExcl, bp)),
			PriceExclTax: priceExcl, PriceInclTax: priceIncl,
			DiscountAmountExclTax: discExcl, DiscountAmountInclTax: round(withTax(discExcl, bp)),
		})
		subExcl = subExcl.Add(priceExcl)
		subIncl = subIncl.Add(priceIncl)
		tax = tax.Add(priceIncl.Sub(priceExcl))
	}
	ord.OrderSubtotalExclTax, ord.OrderSubtotalInclTax = subExcl, subIncl
	if r.IntN(3) == 0 {
		ord.OrderSubTotalDiscountExclTax = round(mulFrac(subExcl, 5+r.Int64N(20), 100))
		ord.OrderSubTotalDiscountInclTax = round(withTax(ord.OrderSubTotalDiscountExclTax, bp))
	}
	if r.IntN(5) != 0 {
		ord.OrderShippingExclTax = cents(r, 0, 3000)
		ord.OrderShippingInclTax = round(withTax(ord.OrderShippingExclTax, bp))
	}
	switch r.IntN(4) {
	case 0:
		ord.PaymentMethodAdditionalFeeExclTax = cents(r, 1, 500)
	case 1: // a percentage fee, so sub-cent amounts too
		ord.PaymentMethodAdditionalFeeExclTax = round(mulFrac(subExcl, 1+r.Int64N(3), 100))
	}
	ord.PaymentMethodAdditionalFeeInclTax = round(withTax(ord.PaymentMethodAdditionalFeeExclTax, bp))
	if r.IntN(3) == 0 {
		ord.OrderDiscount = cents(r, 1, 1500)
	}
	ord.OrderTotal = subIncl.Sub(ord.OrderSubTotalDiscountInclTax).Add(ord.OrderShippingInclTax).
		Add(ord.PaymentMethodAdditionalFeeInclTax).Sub(ord.OrderDiscount)
	if ord.OrderTotal.Sign() < 0 {
		// nopCommerce never lets a total go below zero: drop the order discount.
		ord.OrderTotal = ord.OrderTotal.Add(ord.OrderDiscount)
		ord.OrderDiscount = nop.Money{}
	}
	ord.OrderTax = tax
	return ord
}
