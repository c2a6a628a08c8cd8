package syncer

import (
	"math/rand/v2"
	"testing"

	"github.com/nopsync/nopsync/shared/nop"
)

func orderMoney(t testing.TB, s string) nop.Money {
	t.Helper()
	m, err := nop.ParseMoney(s)
	if err != nil {
		t.Fatalf("money %q: %v", s, err)
	}
	return m
}

// dataverseTotal recomputes totalamount the way Dataverse does from the values the app
// sends, each first stored at its column's precision: extendedamount = quantity ×
// priceperunit − manualdiscountamount + tax per line, totalamount = Σ extendedamount −
// discountamount + freightamount. It fails the test when a value would be rounded on
// storage (the app must send values Dataverse keeps as they are).
func dataverseTotal(t *testing.T, a orderAmounts, p precision) nop.Money {
	t.Helper()
	stored := func(what string, m nop.Money, dec int) nop.Money {
		if r := m.Round(dec); r != m {
			t.Fatalf("%s %s has more than %d decimals: Dataverse would store %s", what, m, dec, r)
		}
		return m
	}
	lines := append([]lineAmounts(nil), a.Items...)
	if a.Fee != nil {
		lines = append(lines, *a.Fee)
	}
	total := nop.Money{}
	for _, l := range lines {
		ext := stored("priceperunit", l.PricePerUnit, p.price).Mul(l.Quantity).
			Sub(stored("manualdiscountamount", l.ManualDiscount, p.amount)).
			Add(stored("tax", l.Tax, p.amount))
		if ext != l.Extended {
			t.Fatalf("line extended %s, mapping says %s", ext, l.Extended)
		}
		total = total.Add(stored("extendedamount", ext, p.amount))
	}
	return total.Sub(stored("discountamount", a.Discount, p.amount)).Add(stored("freightamount", a.Freight, p.amount))
}

func TestOrderTotalsSpecExample(t *testing.T) {
	o := &nop.Order{
		OrderSubtotalInclTax: orderMoney(t, "229.9"), OrderShippingInclTax: orderMoney(t, "11"),
		PaymentMethodAdditionalFeeInclTax: orderMoney(t, "2.2"), OrderDiscount: orderMoney(t, "5"),
		OrderTotal: orderMoney(t, "238.1"),
		Items: []nop.OrderItem{
			{Quantity: 2, UnitPriceExclTax: orderMoney(t, "100"), PriceInclTax: orderMoney(t, "220")},
			{Quantity: 1, UnitPriceExclTax: orderMoney(t, "10"), DiscountAmountExclTax: orderMoney(t, "1"), PriceInclTax: orderMoney(t, "9.9")},
		},
	}
	p := precisionFor(2, 2)
	a := orderTotals(o, p)
	want := []lineAmounts{
		{Quantity: 2, PricePerUnit: orderMoney(t, "100"), Tax: orderMoney(t, "20"), Extended: orderMoney(t, "220")},
		{Quantity: 1, PricePerUnit: orderMoney(t, "10"), ManualDiscount: orderMoney(t, "1"), Tax: orderMoney(t, "0.9"), Extended: orderMoney(t, "9.9")},
	}
	for i, l := range a.Items {
		if l != want[i] {
			t.Errorf("line %d = %+v, want %+v", i, l, want[i])
		}
	}
	if a.Fee == nil || a.Fee.PricePerUnit != orderMoney(t, "2.2") || a.Fee.Tax != (nop.Money{}) || a.Fee.Quantity != 1 {
		t.Errorf("fee line = %+v, want 1 × 2.20, no tax", a.Fee)
	}
	if a.Discount != orderMoney(t, "5") || a.Freight != orderMoney(t, "11") {
		t.Errorf("discount %s freight %s, want 5 and 11", a.Discount, a.Freight)
	}
	if got := dataverseTotal(t, a, p); got != o.OrderTotal || a.Total != got {
		t.Errorf("totalamount %s (mapping says %s), want %s", got, a.Total, o.OrderTotal)
	}
	if !a.Residual.IsZero() || !a.Unexplained.IsZero() {
		t.Errorf("residual %s unexplained %s, want none", a.Residual, a.Unexplained)
	}
}

// TestOrderTotalsGenerated checks totalamount = orderTotal over many orders computed the
// way nopCommerce does, with rounding during calculation (2-decimal money: the per-line
// salesorderdetail formula alone is exact) and without (4-decimal money: exact to the cent only with
// the residual moved into one line's tax).
func TestOrderTotalsGenerated(t *testing.T) {
	for _, tc := range []struct {
		name  string
		round bool
	}{{"rounded", true}, {"4-decimal", false}} {
		t.Run(tc.name, func(t *testing.T) {
			r := rand.New(rand.NewPCG(1, 2))
			p := precisionFor(2, 2)
			adjusted := 0
			for i := range 5000 {
				o := genOrder(r, i+1, genOptions{Round: tc.round})
				a := orderTotals(o, p)
				got := dataverseTotal(t, a, p)
				if want := o.OrderTotal.Round(2); got != want {
					t.Fatalf("order %d: totalamount %s, orderTotal %s (%+v)", o.ID, got, o.OrderTotal, o)
				}
				if !a.Unexplained.IsZero() {
					t.Fatalf("order %d: unexplained %s for an order without gift cards", o.ID, a.Unexplained)
				}
				if !a.Residual.IsZero() {
					adjusted++
					// Each rounded amount (lines, fee, discount, freight) is off by at most half a cent.
					if limit := int64(len(o.Items)+3) * 50; absUnits(a.Residual.Units()) > limit {
						t.Fatalf("order %d: residual %s larger than rounding can explain", o.ID, a.Residual)
					}
				}
				for j, it := range o.Items {
					if a.Items[j].PricePerUnit != it.UnitPriceExclTax.Round(2) || a.Items[j].ManualDiscount != it.DiscountAmountExclTax.Round(2) {
						t.Fatalf("order %d line %d: price %s discount %s from %s / %s", o.ID, j, a.Items[j].PricePerUnit, a.Items[j].ManualDiscount, it.UnitPriceExclTax, it.DiscountAmountExclTax)
					}
				}
			}
			if tc.round && adjusted != 0 {
				t.Errorf("%d rounded orders needed a residual: the per-line formula should be exact for 2-decimal money", adjusted)
			}
			if !tc.round && adjusted == 0 {
				t.Errorf("no 4-decimal order needed a residual: the generator no longer produces sub-cent amounts")
			}
			t.Logf("%s: %d of 5000 orders needed a rounding residual", tc.name, adjusted)
		})
	}
}

func absUnits(n int64) int64 {
	if n < 0 {
		return -n
	}
	return n
}

func TestOrderTotalsCurrencyPrecision(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 4))
	for _, cp := range []int{0, 1, 2, 3, 4} {
		p := precisionFor(cp, 2)
		for i := range 500 {
			o := genOrder(r, i+1, genOptions{Round: i%2 == 0})
			a := orderTotals(o, p)
			if got, want := dataverseTotal(t, a, p), o.OrderTotal.Round(cp); got != want {
				t.Fatalf("precision %d, order %d: totalamount %s, want %s", cp, o.ID, got, want)
			}
		}
	}
}

func TestOrderTotalsGiftCardNotFolded(t *testing.T) {
	r := rand.New(rand.NewPCG(5, 6))
	o := genOrder(r, 7, genOptions{Round: true})
	full := o.OrderTotal
	o.OrderTotal = o.OrderTotal.Sub(orderMoney(t, "10")) // a 10.00 gift card
	p := precisionFor(2, 2)
	a := orderTotals(o, p)
	if !a.Residual.IsZero() {
		t.Errorf("residual %s: a gift card must not land in a line's tax", a.Residual)
	}
	if a.Unexplained != orderMoney(t, "-10") {
		t.Errorf("unexplained %s, want -10", a.Unexplained)
	}
	if got := dataverseTotal(t, a, p); got != full {
		t.Errorf("totalamount %s, want the sum of the parts %s", got, full)
	}
}

func TestOrderTotalsNegativeFeeIsDiscount(t *testing.T) {
	o := &nop.Order{
		OrderDiscount: orderMoney(t, "1"), PaymentMethodAdditionalFeeInclTax: orderMoney(t, "-2.5"),
		OrderTotal: orderMoney(t, "6.5"),
		Items:      []nop.OrderItem{{Quantity: 1, UnitPriceExclTax: orderMoney(t, "10"), PriceInclTax: orderMoney(t, "10")}},
	}
	p := precisionFor(2, 2)
	a := orderTotals(o, p)
	if a.Fee != nil {
		t.Errorf("fee line %+v for a negative fee", a.Fee)
	}
	if a.Discount != orderMoney(t, "3.5") {
		t.Errorf("discount %s, want 3.50", a.Discount)
	}
	if got := dataverseTotal(t, a, p); got != o.OrderTotal {
		t.Errorf("totalamount %s, want %s", got, o.OrderTotal)
	}
}
