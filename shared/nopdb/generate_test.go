package nopdb

import (
	"context"
	"strconv"
	"testing"

	"github.com/nopsync/nopsync/shared/nop"
	"github.com/nopsync/nopsync/shared/nopdb/nopdbtest"
	"github.com/nopsync/nopsync/shared/state"
)

// TestGeneratedStorePagingAndChanges reads a generated store: every registered customer,
// product and store-1 order once, in id order, whatever the page size; a read resumed
// from a cursor gives the same events as the uninterrupted one; every order's totals add
// up as docs/events.md says; and after nopdbtest.ChangeEvery exactly the changed rows get a
// new hash.
func TestGeneratedStorePagingAndChanges(t *testing.T) {
	forEachProvider(t, func(t *testing.T, provider string) {
		ctx := context.Background()
		conn, db := nopdbtest.NewDatabase(t, provider)
		sz := nopdbtest.Sizes{Customers: 120, Products: 100, GroupedShare: 0.1, Orders: 150, MaxItems: 5, Seed: 7}
		st, err := nopdbtest.Generate(ctx, db, provider, sz)
		if err != nil {
			t.Fatal(err)
		}
		if st.Customers != 120 || st.Products != 100 || st.Grouped != 2 || st.Orders != 150 || st.Items < 150 {
			t.Fatalf("generated %+v", st)
		}
		s := &store{t: t, provider: provider, conn: conn, db: db}
		r := s.open()

		want := map[state.Entity]int{state.Customer: st.Customers, state.Product: st.Products, state.Order: st.Orders}
		whole := map[state.Entity][]string{}
		for _, e := range state.Entities {
			events, hashes, fails, _ := readAll(t, r, e, 1000)
			if len(fails) > 0 {
				t.Fatalf("%s failures: %+v", e, fails[0])
			}
			if len(events) != want[e] {
				t.Fatalf("%d %s events, want %d", len(events), e, want[e])
			}
			for i := range events {
				if i > 0 && mustInt(events[i].EntityID()) <= mustInt(events[i-1].EntityID()) {
					t.Fatalf("%s events out of id order at %d", e, i)
				}
				whole[e] = append(whole[e], events[i].ID)
				if e == state.Order {
					checkTotals(t, events[i].Order)
				}
			}
			_ = hashes
			// Small pages: the same events.
			small, _, _, pages := readAll(t, r, e, 7)
			if len(small) != len(events) || pages < len(events)/7 {
				t.Fatalf("%s in pages of 7: %d events in %d pages", e, len(small), pages)
			}
			for i := range small {
				if small[i].ID != events[i].ID {
					t.Fatalf("%s %s: id %s in small pages, %s in one", e, small[i].EntityID(), small[i].ID, events[i].ID)
				}
			}
			// Resume from the middle: the rest, exactly.
			mid := mustInt(events[len(events)/2].EntityID())
			var rest []*nop.Event
			for after := mid; ; {
				p, err := r.ReadPage(ctx, e, after, 10)
				if err != nil {
					t.Fatal(err)
				}
				rest = append(rest, p.Events...)
				after = p.Last
				if p.Done {
					break
				}
			}
			if tail := events[len(events)/2+1:]; len(rest) != len(tail) || rest[0].ID != tail[0].ID || rest[len(rest)-1].ID != tail[len(tail)-1].ID {
				t.Fatalf("%s resumed after %d: %d events, want %d", e, mid, len(rest), len(tail))
			}
			// Past the end: an empty, done page that keeps the cursor.
			if p, err := r.ReadPage(ctx, e, 1<<40, 10); err != nil || !p.Done || p.Rows != 0 || p.Last != 1<<40 {
				t.Fatalf("%s past the end: %+v %v", e, p, err)
			}
		}

		// Change every 10th row of each entity: exactly those get new ids. (An order
		// carries its customer as it is now, so a customer change changes that
		// customer's orders too: each entity's baseline is read just before its change.)
		for _, e := range state.Entities {
			base, _, _, _ := readAll(t, r, e, 1000)
			whole[e] = whole[e][:0]
			for _, ev := range base {
				whole[e] = append(whole[e], ev.ID)
			}
			changed, err := nopdbtest.ChangeEvery(ctx, db, provider, string(e), 10)
			if err != nil {
				t.Fatal(err)
			}
			isChanged := map[string]bool{}
			for _, id := range changed {
				isChanged[strconv.FormatInt(id, 10)] = true
			}
			events, _, _, _ := readAll(t, r, e, 1000)
			n := 0
			for i, ev := range events {
				if (ev.ID != whole[e][i]) != isChanged[ev.EntityID()] {
					t.Errorf("%s %s: id changed %v, row changed %v", e, ev.EntityID(), ev.ID != whole[e][i], isChanged[ev.EntityID()])
				}
				if isChanged[ev.EntityID()] {
					n++
				}
			}
			if n == 0 || n != len(changed) {
				t.Errorf("%s: %d changed rows read, ChangeEvery changed %d", e, n, len(changed))
			}
		}
	})
}

// checkTotals checks docs/events.md's guarantee for an order without gift cards or reward
// points: orderTotal = subtotal incl − subtotal discount + shipping + fee − discount, and
// subtotal = Σ item priceInclTax.
func checkTotals(t *testing.T, o *nop.Order) {
	t.Helper()
	total := o.OrderSubtotalInclTax.Sub(o.OrderSubTotalDiscountInclTax).Add(o.OrderShippingInclTax).
		Add(o.PaymentMethodAdditionalFeeInclTax).Sub(o.OrderDiscount)
	var sum nop.Money
	for _, it := range o.Items {
		sum = sum.Add(it.PriceInclTax)
	}
	if total.Cmp(o.OrderTotal) != 0 || sum.Cmp(o.OrderSubtotalInclTax) != 0 {
		t.Fatalf("order %d: total %s, computed %s; subtotal %s, items %s", o.ID, o.OrderTotal, total, o.OrderSubtotalInclTax, sum)
	}
}
