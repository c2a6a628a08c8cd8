package syncer

// Product family moves: a grouped product turned simple and back, families deleted or
// re-created, a product's sku reused after its delete, after a lost state, alone and in
// import arrays, and what they cost in requests.

import (
	"fmt"
	"math/rand/v2"
	"strings"
	"testing"

	"github.com/nopsync/nopsync/shared/dataverse"
	"github.com/nopsync/nopsync/shared/dataverse/dataversetest"
	"github.com/nopsync/nopsync/shared/nop"
	"github.com/nopsync/nopsync/shared/state"
)

func movesFam(d map[string]any) { d["productType"] = 10; d["price"] = "0.0000" }

func movesChild(t *testing.T, id, parent int, seq int64, edit func(d map[string]any)) *nop.Event {
	return productEvent(t, id, seq, func(d map[string]any) {
		d["parentGroupedProductId"] = parent
		if edit != nil {
			edit(d)
		}
	})
}

func movesSend(t *testing.T, e *env, bulk bool, evs ...*nop.Event) {
	t.Helper()
	if !bulk {
		e.each(state.Product, evs...)
	} else if err := e.deliver(e.eng, state.Product, evs...); err != nil {
		t.Fatal(err)
	}
}

// requests counts the simulator's requests of f.
func movesRequests(e *env, f func()) int {
	before := e.srv.Stats().Requests
	f()
	return e.srv.Stats().Requests - before
}

// A new product of an Active family, one event each (a product added to a grouped product
// in the admin), costs what a new simple product does and one read of its family's row
// (an admin may have retired the family in Dynamics 365, and the product's parent can't
// change once set); its next events don't read it again.
func TestProductNewInAFamilyReadsItsFamilyOnce(t *testing.T) {
	e := newEnv(t, envOptions{})
	e.each(state.Product, productEvent(t, 1, 1, movesFam))
	e.each(state.Product, productEvent(t, 500, 1, nil)) // bootstrap and warm-up
	children := movesRequests(e, func() {
		for id := 2; id <= 11; id++ {
			e.each(state.Product, movesChild(t, id, 1, 1, nil))
		}
	})
	simple := movesRequests(e, func() {
		for id := 600; id < 610; id++ {
			e.each(state.Product, productEvent(t, id, 1, nil))
		}
	})
	if children > simple+10 {
		t.Errorf("10 new products of an Active family, one event each: %d requests; 10 new simple products: %d", children, simple)
	}
	changed := movesRequests(e, func() {
		for id := 2; id <= 11; id++ {
			e.each(state.Product, movesChild(t, id, 1, 2, func(d map[string]any) { d["price"] = "12.0000" }))
		}
	})
	changedSimple := movesRequests(e, func() {
		for id := 600; id < 610; id++ {
			e.each(state.Product, productEvent(t, id, 2, func(d map[string]any) { d["price"] = "12.0000" }))
		}
	})
	t.Logf("new: %d requests for 10 products of a family, %d for 10 simple ones; changed: %d and %d", children, simple, changed, changedSimple)
	if changed > changedSimple {
		t.Errorf("the same 10 products changed: %d requests; 10 simple products changed: %d", changed, changedSimple)
	}
}

// In an import, a chunk of products whose families an earlier chunk wrote costs no more
// requests than a chunk of as many simple products.
func TestProductChunkOfAFamilysProductsCostsAsSimpleOnes(t *testing.T) {
	chunk := func(setup func(e *env), evs []*nop.Event) int {
		e := newEnv(t, envOptions{})
		e.each(state.Product, productEvent(t, 9999, 1, nil)) // bootstrap
		if setup != nil {
			setup(e)
		}
		n := movesRequests(e, func() { movesSend(t, e, true, evs...) })
		for _, ev := range evs {
			if r := e.rec(state.Product, ev.Product.ID); r.Status != state.Synced {
				t.Errorf("product %d: %s %q", ev.Product.ID, r.Status, r.Reason)
			}
		}
		return n
	}
	var kids []*nop.Event
	for f := 100; f < 104; f++ {
		for k := 1; k <= 9; k++ {
			kids = append(kids, movesChild(t, f*10+k, f, 1, nil))
		}
	}
	inFamilies := chunk(func(e *env) {
		var fams []*nop.Event
		for f := 100; f < 104; f++ {
			fams = append(fams, productEvent(t, f, 1, movesFam))
		}
		movesSend(t, e, true, fams...)
	}, kids)
	simple := chunk(nil, newProducts(t, len(kids)))
	if inFamilies > simple {
		t.Errorf("%d products of families of an earlier chunk: %d requests; as many simple products: %d", len(kids), inFamilies, simple)
	}
}

// A simple product in the price list turned into a family after the state was lost: the
// family keeps the price list item of its days as a product (dropPriceItem only knows the
// item from the state).
func TestProductTurnedFamilyAfterAWipeLeavesThePriceList(t *testing.T) {
	for _, bulk := range []bool{false, true} {
		t.Run(fmt.Sprintf("bulk=%v", bulk), func(t *testing.T) {
			e := newEnv(t, envOptions{})
			e.each(state.Product, productEvent(t, 80, 1, nil))
			e.wipeState()
			e.eng = e.engine()
			movesSend(t, e, bulk, productEvent(t, 80, 2, movesFam))
			row := e.row("products", productID(1, 80))
			if numOf(row["productstructure"]) != productStructureFamily {
				t.Fatalf("structure %v", row["productstructure"])
			}
			if n := len(e.priceItems(productID(1, 80))); n != 0 {
				t.Errorf("family 80 after a wipe keeps %d price list items of its simple days (record %q)", n, e.rec(state.Product, 80).Reason)
			}
		})
	}
}

// A family turned simple (kept a family), its product taken out, then grouped again and
// the product put back: everything ends as a plain family and its product, without the
// notes; the newest events redelivered write nothing.
func TestProductKeptFamilyGroupedAgain(t *testing.T) {
	for _, bulk := range []bool{false, true} {
		t.Run(fmt.Sprintf("bulk=%v", bulk), func(t *testing.T) {
			e := newEnv(t, envOptions{})
			e.each(state.Product, productEvent(t, 50, 1, movesFam), movesChild(t, 51, 50, 1, nil))
			movesSend(t, e, bulk, productEvent(t, 50, 2, nil))
			movesSend(t, e, bulk, movesChild(t, 51, 0, 2, nil))
			again := productEvent(t, 50, 3, func(d map[string]any) { movesFam(d); d["name"] = "Again" })
			back := movesChild(t, 51, 50, 3, func(d map[string]any) { d["price"] = "12.0000" })
			movesSend(t, e, bulk, again)
			movesSend(t, e, bulk, back)
			fam, rec := e.row("products", productID(1, 50)), e.rec(state.Product, 50)
			if numOf(fam["productstructure"]) != productStructureFamily || numOf(fam["statecode"]) != productActive || fam["name"] != "Again" {
				t.Errorf("family 50: %v %v %v", fam["productstructure"], fam["statecode"], fam["name"])
			}
			if rec.Status != state.Synced || rec.Reason != "" || rec.Extra["keptFamily"] != "" || len(e.priceItems(productID(1, 50))) != 0 {
				t.Errorf("family 50 record: %s %q %v", rec.Status, rec.Reason, rec.Extra)
			}
			kid, krec := e.row("products", productID(1, 51)), e.rec(state.Product, 51)
			if numOf(kid["statecode"]) != productActive || numOf(kid["price"]) != 12 || len(e.priceItems(productID(1, 51))) != 1 {
				t.Errorf("product 51: %v %v", kid["statecode"], kid["price"])
			}
			if krec.Status != state.Synced || krec.Reason != "" {
				t.Errorf("product 51 record: %s %q", krec.Status, krec.Reason)
			}
			e.writesNothing(t, func() { movesSend(t, e, bulk, again, back) })
		})
	}
}

// One chunk holds a product's own delete and its family's update (deletes now go first):
// the product ends Retired (its family's PublishProductHierarchy does not re-activate it),
// the family and its other product Active with the new data.
func TestProductChunkChildDeletedFamilyUpdated(t *testing.T) {
	e := newEnv(t, envOptions{})
	e.each(state.Product, productEvent(t, 100, 1, movesFam), movesChild(t, 101, 100, 1, nil), movesChild(t, 102, 100, 1, nil))
	movesSend(t, e, true,
		movesChild(t, 101, 100, 2, func(d map[string]any) { d["deleted"] = true }),
		productEvent(t, 100, 2, func(d map[string]any) { movesFam(d); d["name"] = "Renamed" }),
		movesChild(t, 102, 100, 2, func(d map[string]any) { d["price"] = "7.0000" }))
	if st := numOf(e.row("products", productID(1, 101))["statecode"]); st != productRetired {
		t.Errorf("deleted product 101: state %v, want Retired", st)
	}
	fam := e.row("products", productID(1, 100))
	if numOf(fam["statecode"]) != productActive || fam["name"] != "Renamed" {
		t.Errorf("family: %v %v", fam["statecode"], fam["name"])
	}
	if k := e.row("products", productID(1, 102)); numOf(k["statecode"]) != productActive || numOf(k["price"]) != 7 {
		t.Errorf("product 102: %v %v", k["statecode"], k["price"])
	}
	for _, id := range []int{100, 101, 102} {
		if r := e.rec(state.Product, id); r.Status != state.Synced {
			t.Errorf("product %d: %s %q", id, r.Status, r.Reason)
		}
	}
}

// A product arrives first and its family is made as a stub; the family's own event then
// says simple (written after the product left it). Single events and a chunk.
func TestProductFamilyStubThenSimple(t *testing.T) {
	for _, bulk := range []bool{false, true} {
		t.Run(fmt.Sprintf("bulk=%v", bulk), func(t *testing.T) {
			e := newEnv(t, envOptions{})
			e.each(state.Product, movesChild(t, 91, 90, 1, nil))
			simple := productEvent(t, 90, 2, func(d map[string]any) { d["price"] = "30.0000" })
			movesSend(t, e, bulk, simple)
			fam, rec := e.row("products", productID(1, 90)), e.rec(state.Product, 90)
			if numOf(fam["productstructure"]) != productStructureFamily || numOf(fam["statecode"]) != productActive ||
				fam["productnumber"] != "SKU-90" {
				t.Errorf("product 90: %v %v %v", fam["productstructure"], fam["statecode"], fam["productnumber"])
			}
			if rec.Status != state.Synced || !strings.Contains(rec.Reason, "kept a product family") || rec.Extra[extraFamilyStub] != "" {
				t.Errorf("product 90 record: %s %q %v", rec.Status, rec.Reason, rec.Extra)
			}
			if k := e.row("products", productID(1, 91)); numOf(k["statecode"]) != productActive {
				t.Errorf("product 91: %v", k["statecode"])
			}
			e.writesNothing(t, func() { movesSend(t, e, bulk, simple) })
		})
	}
}

// A family turned simple (kept a family) and then deleted, under each DELETE_POLICY.
func TestProductKeptFamilyDeleted(t *testing.T) {
	for _, policy := range []string{"deactivate", "delete", "ignore"} {
		for _, bulk := range []bool{false, true} {
			t.Run(fmt.Sprintf("%s/bulk=%v", policy, bulk), func(t *testing.T) {
				e := newEnv(t, envOptions{settings: func(s *Settings) { s.DeletePolicy = policy }})
				e.each(state.Product, productEvent(t, 50, 1, movesFam), movesChild(t, 51, 50, 1, nil), productEvent(t, 55, 1, movesFam))
				e.each(state.Product, productEvent(t, 50, 2, nil), productEvent(t, 55, 2, nil), movesChild(t, 51, 0, 2, nil))
				del := func(id int) *nop.Event { return productEvent(t, id, 3, func(d map[string]any) { d["deleted"] = true }) }
				movesSend(t, e, bulk, del(50), del(55))
				for _, id := range []int{50, 55} {
					rec := e.rec(state.Product, id)
					row, ok := e.srv.Row("products", productID(1, id))
					t.Logf("product %d: exists=%v state=%v | %s %q", id, ok, row["statecode"], rec.Status, rec.Reason)
					switch policy {
					case "deactivate":
						if !ok || numOf(row["statecode"]) != productRetired || rec.Status != state.Synced {
							t.Errorf("product %d not retired", id)
						}
					case "delete":
						if id == 55 && ok || id == 50 && (!ok || numOf(row["statecode"]) != productRetired) {
							t.Errorf("product %d: exists %v", id, ok)
						}
					case "ignore":
						if !ok || numOf(row["statecode"]) != productActive || rec.Status != state.Skipped {
							t.Errorf("product %d changed", id)
						}
					}
				}
			})
		}
	}
}

// formerFamilyOrder is an order of one line, product 55 ("Former family") sold as a
// simple product, and nothing else on its total.
func formerFamilyOrder(id int) *nop.Order {
	o := genOrder(rand.New(rand.NewPCG(5, 5)), id, genOptions{Round: true})
	o.Items = o.Items[:1]
	o.Items[0].Product = nop.ItemProduct{ID: 55, Name: "Former family", Sku: genPtr("SKU-55"), ProductType: nop.ProductTypeSimple}
	o.OrderSubtotalInclTax, o.OrderTotal = o.Items[0].PriceInclTax, o.Items[0].PriceInclTax
	o.OrderSubTotalDiscountInclTax, o.OrderShippingInclTax, o.PaymentMethodAdditionalFeeInclTax, o.OrderDiscount = nop.Money{}, nop.Money{}, nop.Money{}, nop.Money{}
	return o
}

// A grouped product turned simple that holds no products becomes a plain product: sold in
// the store, its order line points at a product row, not at a product family.
func TestOrderLineOfAFormerFamily(t *testing.T) {
	for _, bulk := range []bool{false, true} {
		t.Run(fmt.Sprintf("bulk=%v", bulk), func(t *testing.T) {
			h := newOrderHarness(t, harnessOptions{})
			h.each(state.Product, productEvent(t, 55, 1, movesFam), productEvent(t, 55, 2, func(d map[string]any) { d["price"] = "20.0000" }))
			o := formerFamilyOrder(9301)
			sendOrder(t, h, o, "order.placed", 1, bulk)
			ls := h.lines(salesOrderID(1, o.ID))
			if len(ls) != 1 {
				t.Fatalf("%d lines: %q", len(ls), h.record(o.ID).Reason)
			}
			pid := fmt.Sprint(ls[0]["_productid_value"])
			if pid != "<nil>" {
				p := h.row("products", pid)
				if numOf(p["productstructure"]) == productStructureFamily {
					t.Errorf("order line of product 55 sold as a simple product points at a product family row (pricingerrorcode %v, record %q)",
						ls[0]["pricingerrorcode"], h.record(o.ID).Reason)
				}
			}
		})
	}
}

// A grouped product turned simple while it holds a product stays a product family in
// Dynamics 365 (keepFamily); sold on an order line in an environment that refuses a
// family there (the docs do not say), its line is written in, with the reason, and the
// order lands. Alone and in an array.
func TestOrderLineOfAKeptFamilyRefused(t *testing.T) {
	for _, bulk := range []bool{false, true} {
		t.Run(fmt.Sprintf("bulk=%v", bulk), func(t *testing.T) {
			h := newOrderHarness(t, harnessOptions{sim: dataversetest.Options{RefuseFamiliesOnLines: true}})
			h.each(state.Product, productEvent(t, 55, 1, movesFam), movesChild(t, 56, 55, 1, nil))
			h.each(state.Product, productEvent(t, 55, 2, func(d map[string]any) { d["price"] = "20.0000" }))
			if row := h.row("products", productID(1, 55)); numOf(row["productstructure"]) != productStructureFamily {
				t.Fatalf("product 55: structure %v, want kept a family", row["productstructure"])
			}
			o := formerFamilyOrder(9302)
			sendOrder(t, h, o, "order.placed", 1, bulk)
			rec := h.record(o.ID)
			ls := h.lines(salesOrderID(1, o.ID))
			if rec.Status != state.Synced || len(ls) != 1 || fmt.Sprint(ls[0]["_productid_value"]) != "<nil>" || ls[0]["isproductoverridden"] != true {
				t.Fatalf("order %d: %s %q, lines %v", o.ID, rec.Status, rec.Reason, ls)
			}
			if !strings.Contains(rec.Reason, "written as write-in lines: Former family") {
				t.Errorf("order %d: reason %q, want the write-in line named", o.ID, rec.Reason)
			}
		})
	}
}

// A product deleted and a new product with its sku in one chunk, against the same events
// one by one in business order (delete first): both paths agree on the new product's
// number and on the number's claim.
func TestProductDeletedAndItsSkuReused(t *testing.T) {
	for _, policy := range []string{"deactivate", "delete"} {
		res := map[bool]string{}
		for _, bulk := range []bool{false, true} {
			e := newEnv(t, envOptions{settings: func(s *Settings) { s.DeletePolicy = policy }})
			e.each(state.Product, productEvent(t, 10, 1, func(d map[string]any) { d["sku"] = "SHARED" }))
			movesSend(t, e, bulk,
				productEvent(t, 10, 2, func(d map[string]any) { d["sku"] = "SHARED"; d["deleted"] = true }),
				productEvent(t, 11, 1, func(d map[string]any) { d["sku"] = "SHARED" }))
			row := e.row("products", productID(1, 11))
			owner := ""
			if doc, err := e.st.GetDoc(e.ctx, productNumberKind, numberKey("SHARED")); err == nil {
				owner = string(doc.Value)
			}
			res[bulk] = fmt.Sprintf("number=%v claim=%s reason=%q", row["productnumber"], owner, e.rec(state.Product, 11).Reason)
			t.Logf("%s bulk=%v: %s", policy, bulk, res[bulk])
			if row["productnumber"] == "SHARED" && owner != "1/11" {
				t.Errorf("%s bulk=%v: product 11 holds number SHARED but the claim names %q", policy, bulk, owner)
				// Its sku changed and changed back: the number is free, the stale claim refuses it.
				e.each(state.Product, productEvent(t, 11, 2, func(d map[string]any) { d["sku"] = "OTHER" }),
					productEvent(t, 11, 3, func(d map[string]any) { d["sku"] = "SHARED" }))
				if n := e.row("products", productID(1, 11))["productnumber"]; n != "SHARED" {
					t.Errorf("%s bulk=%v: sku SHARED back on product 11, no row holds it, product number %v written (%q)", policy, bulk, n, e.rec(state.Product, 11).Reason)
				}
			}
		}
		if res[false] != res[true] {
			t.Errorf("%s: single %s, chunk %s", policy, res[false], res[true])
		}
	}
}

// After a wiped state, the events of a grouped product turned simple while it holds a
// product (and of its product taken out) land as with the state intact.
func TestProductFamilyTurnedSimpleAfterAWipe(t *testing.T) {
	for _, bulk := range []bool{false, true} {
		t.Run(fmt.Sprintf("bulk=%v", bulk), func(t *testing.T) {
			e := newEnv(t, envOptions{})
			e.each(state.Product, productEvent(t, 50, 1, movesFam), movesChild(t, 51, 50, 1, nil))
			e.wipeState()
			e.eng = e.engine()
			movesSend(t, e, bulk, productEvent(t, 50, 2, nil), movesChild(t, 51, 0, 2, func(d map[string]any) { d["price"] = "11.0000" }))
			fam, rec := e.row("products", productID(1, 50)), e.rec(state.Product, 50)
			if numOf(fam["productstructure"]) != productStructureFamily || numOf(fam["statecode"]) != productActive ||
				rec.Status != state.Synced || !strings.Contains(rec.Reason, "kept a product family") || len(e.priceItems(productID(1, 50))) != 0 {
				t.Errorf("product 50: %v %v | %s %q", fam["productstructure"], fam["statecode"], rec.Status, rec.Reason)
			}
			kid, krec := e.row("products", productID(1, 51)), e.rec(state.Product, 51)
			if numOf(kid["statecode"]) != productActive || numOf(kid["price"]) != 11 || krec.Status != state.Synced {
				t.Errorf("product 51: %v %v | %s %q", kid["statecode"], kid["price"], krec.Status, krec.Reason)
			}
		})
	}
}

// A product new to a family deleted in the store, after a wiped state: written without
// the family, Active, with the reason (as with the state intact).
func TestProductNewInARetiredFamilyAfterAWipe(t *testing.T) {
	for _, bulk := range []bool{false, true} {
		t.Run(fmt.Sprintf("bulk=%v", bulk), func(t *testing.T) {
			e := newEnv(t, envOptions{})
			e.each(state.Product, productEvent(t, 60, 1, movesFam), movesChild(t, 61, 60, 1, nil))
			e.each(state.Product, productEvent(t, 60, 2, func(d map[string]any) { movesFam(d); d["deleted"] = true }))
			e.wipeState()
			e.eng = e.engine()
			movesSend(t, e, bulk, movesChild(t, 62, 60, 1, nil))
			row, rec := e.row("products", productID(1, 62)), e.rec(state.Product, 62)
			if row["_parentproductid_value"] != nil || numOf(row["statecode"]) != productActive || rec.Status != state.Synced ||
				!strings.Contains(rec.Reason, "retired in Dynamics 365, for good") {
				t.Errorf("product 62: parent %v state %v | %s %q", row["_parentproductid_value"], row["statecode"], rec.Status, rec.Reason)
			}
		})
	}
}

// checkWrittenWithoutFamily checks that a new product of a family it can't join is
// written without it, Active.
func checkWrittenWithoutFamily(t *testing.T, e *env, step string, id int) {
	t.Helper()
	row, rec := e.row("products", productID(1, id)), e.rec(state.Product, id)
	if row["_parentproductid_value"] != nil || numOf(row["statecode"]) != productActive {
		t.Errorf("%s: product %d parent %v state %v (%s %q), want no family, Active", step, id,
			row["_parentproductid_value"], row["statecode"], rec.Status, rec.Reason)
	}
}

// An admin retired a family in Dynamics 365 (its record says Synced). A new product naming
// it reads the family's row (with the chunk's look-up in an import) and is written without
// it, Active: under it, it could never be published. Alone and in an array.
func TestProductNewInAFamilyAnAdminRetired(t *testing.T) {
	for _, bulk := range []bool{false, true} {
		t.Run(fmt.Sprintf("bulk=%v", bulk), func(t *testing.T) {
			e := newEnv(t, envOptions{})
			e.each(state.Product, productEvent(t, 1, 1, movesFam))
			if err := e.dv.Update(e.ctx, "products", productID(1, 1), dataverse.Record{"statecode": productRetired, "statuscode": 2}); err != nil {
				t.Fatalf("admin retires family 1: %v", err)
			}
			movesSend(t, e, bulk, movesChild(t, 2, 1, 1, nil))
			checkWrittenWithoutFamily(t, e, "family retired by an admin", 2)
		})
	}
}

// A family whose own write never got through (its record holds the stub made for its first
// product) is deleted in the store; DELETE_POLICY=deactivate retires it. Its record is no
// stub any more, so a later product naming it reads it and is written without it, Active.
func TestProductNewInADeletedStubFamily(t *testing.T) {
	for _, bulk := range []bool{false, true} {
		t.Run(fmt.Sprintf("bulk=%v", bulk), func(t *testing.T) {
			e := newEnv(t, envOptions{settings: func(s *Settings) { s.DeletePolicy = "deactivate" }})
			e.each(state.Product, movesChild(t, 21, 20, 1, nil))
			e.each(state.Product, productEvent(t, 20, 2, func(d map[string]any) { movesFam(d); d["deleted"] = true }))
			if st := numOf(e.row("products", productID(1, 20))["statecode"]); st != productRetired {
				t.Fatalf("family 20: state %v, want Retired", st)
			}
			movesSend(t, e, bulk, movesChild(t, 22, 20, 1, nil))
			checkWrittenWithoutFamily(t, e, "stub family deleted in the store", 22)
		})
	}
}

// A family turned simple while it held a product (kept a family); its product is then
// deleted (DELETE_POLICY=delete deletes the row). The family's next change finds it holds
// no product and makes it a plain product with its price list item (README: a family
// turned simple stays one while it holds products), and its record no longer says it was
// kept a family. Alone and in an array.
func TestProductKeptFamilyEmptiedBecomesAProduct(t *testing.T) {
	for _, bulk := range []bool{false, true} {
		t.Run(fmt.Sprintf("bulk=%v", bulk), func(t *testing.T) {
			e := newEnv(t, envOptions{settings: func(s *Settings) { s.DeletePolicy = "delete" }})
			e.each(state.Product, productEvent(t, 50, 1, movesFam), movesChild(t, 51, 50, 1, nil))
			e.each(state.Product, productEvent(t, 50, 2, nil), movesChild(t, 51, 0, 2, nil))
			e.each(state.Product, productEvent(t, 51, 3, func(d map[string]any) { d["deleted"] = true }))
			if _, ok := e.srv.Row("products", productID(1, 51)); ok {
				t.Fatal("product 51 not deleted")
			}
			movesSend(t, e, bulk, productEvent(t, 50, 3, func(d map[string]any) { d["price"] = "30.0000" }))
			row, rec := e.row("products", productID(1, 50)), e.rec(state.Product, 50)
			if numOf(row["productstructure"]) == productStructureFamily || len(e.priceItems(productID(1, 50))) != 1 {
				t.Errorf("product 50 holds no products: structure %v, %d price list items (%s %q), want a priced product",
					row["productstructure"], len(e.priceItems(productID(1, 50))), rec.Status, rec.Reason)
			}
			if rec.Extra[extraKeptFamily] != "" {
				t.Errorf("product 50, a plain product again: its record keeps keptFamily=%q (%q)", rec.Extra[extraKeptFamily], rec.Reason)
			}
			// A product naming it (an import file, or an event older than its taking-out) is
			// written without a family, not under a plain product (which Dynamics 365 refuses).
			err := e.deliver(e.eng, state.Product, movesChild(t, 52, 50, 1, nil))
			if krec := e.rec(state.Product, 52); err != nil || krec.Status != state.Synced {
				t.Errorf("product 52 naming plain product 50: %v | %s %q", err, krec.Status, krec.Reason)
			}
		})
	}
}

// DELETE_POLICY=delete: the product's row is already gone when its delete is handled (a
// first attempt deleted it and stopped before recording, or an admin deleted it). The
// number is free in Dynamics 365, and its claim is released: a product with that sku
// writes it and claims it.
func TestProductDeleteOfAGoneRowReleasesItsNumber(t *testing.T) {
	e := newEnv(t, envOptions{settings: func(s *Settings) { s.DeletePolicy = "delete" }})
	e.each(state.Product, productEvent(t, 10, 1, func(d map[string]any) { d["sku"] = "SHARED" }))
	// The row is already gone when the delete is handled: the first attempt's delete went
	// through and the instance stopped before recording it (or an admin deleted the row).
	if err := e.dv.Delete(e.ctx, "products", productID(1, 10)); err != nil {
		t.Fatal(err)
	}
	del := productEvent(t, 10, 2, func(d map[string]any) { d["sku"] = "SHARED"; d["deleted"] = true })
	if err := e.deliver(e.eng, state.Product, del); err != nil {
		t.Fatal(err)
	}
	if _, ok := e.srv.Row("products", productID(1, 10)); ok {
		t.Fatal("product 10 not deleted")
	}
	owner := ""
	if doc, err := e.st.GetDoc(e.ctx, productNumberKind, numberKey("SHARED")); err == nil {
		owner = string(doc.Value)
	}
	if owner != "" {
		t.Errorf("product 10 deleted (row already gone): its claim on SHARED still names %q", owner)
	}
	// A product with that sku then holds the number, the claim naming product 10.
	e.each(state.Product, productEvent(t, 11, 1, func(d map[string]any) { d["sku"] = "SHARED" }))
	if doc, err := e.st.GetDoc(e.ctx, productNumberKind, numberKey("SHARED")); err == nil &&
		e.row("products", productID(1, 11))["productnumber"] == "SHARED" && string(doc.Value) != "1/11" {
		t.Errorf("product 11 holds number SHARED but the claim names %q", doc.Value)
	}
}

// A family's delete failing (transiently) in the chunk of a new product of it: the product
// finds the family Active in the chunk's look-up and joins it, as one by one.
func TestProductChunkFamilyDeleteFailed(t *testing.T) {
	e := newEnv(t, envOptions{})
	e.each(state.Product, productEvent(t, 70, 1, movesFam), movesChild(t, 71, 70, 1, nil))
	fail := true
	e.fdv.setFail(func(op, set string, recs []dataverse.Record) error {
		if fail && set == "products" && strings.HasPrefix(op, "Update") {
			for _, r := range recs {
				if numOf(r["statecode"]) == productRetired {
					fail = false
					return unavailable()
				}
			}
		}
		return nil
	})
	err := e.deliver(e.eng, state.Product,
		productEvent(t, 70, 2, func(d map[string]any) { movesFam(d); d["deleted"] = true }),
		movesChild(t, 72, 70, 1, nil))
	if err == nil {
		t.Fatal("the chunk reported no failure for the family's delete")
	}
	row, rec := e.row("products", productID(1, 72)), e.rec(state.Product, 72)
	if !strings.EqualFold(fmt.Sprint(row["_parentproductid_value"]), productID(1, 70)) || numOf(row["statecode"]) != productActive || rec.Status != state.Synced {
		t.Errorf("product 72: parent %v state %v | %s %q, want in family 70, Active", row["_parentproductid_value"], row["statecode"], rec.Status, rec.Reason)
	}
}

// nopCommerce shares products between the stores of an install, so a product's events
// may carry another storeId. Written from store 1 (claim "1/10"), deleted by an event of
// store 2 (DELETE_POLICY=delete): the claim is released all the same.
func TestProductDeleteFromAnotherStoreReleasesItsNumber(t *testing.T) {
	e := newEnv(t, envOptions{settings: func(s *Settings) { s.DeletePolicy = "delete" }})
	e.each(state.Product, productEvent(t, 10, 1, func(d map[string]any) { d["sku"] = "SHARED" }))
	tmpl := example(t, "product-simple.json")[0]
	tmpl["storeId"] = 2
	del := mkEvent(t, tmpl, "prod-10-2", 2, func(d map[string]any) {
		d["id"], d["sku"], d["pictureUrls"], d["deleted"] = 10, "SHARED", []any{}, true
	})
	if del.StoreID != 2 {
		t.Fatalf("store %d", del.StoreID)
	}
	e.each(state.Product, del)
	if _, ok := e.srv.Row("products", productID(1, 10)); ok {
		t.Fatal("product 10 not deleted")
	}
	if doc, err := e.st.GetDoc(e.ctx, productNumberKind, numberKey("SHARED")); err == nil && len(doc.Value) != 0 {
		t.Errorf("product 10 deleted by an event of store 2: its claim on SHARED still names %q", doc.Value)
	}
}

// familyProducts are the first events of products f*10+1 .. f*10+n of families fs, from store 1.
func familyProducts(t *testing.T, n int, fs ...int) []*nop.Event {
	var kids []*nop.Event
	for _, f := range fs {
		for k := 1; k <= n; k++ {
			kids = append(kids, movesChild(t, f*10+k, f, 1, nil))
		}
	}
	return kids
}

// chunkOfFamilyProductsCost is the requests of a chunk of 9 new products of family 1,
// written before by setup.
func chunkOfFamilyProductsCost(t *testing.T, setup func(e *env)) (int, *env) {
	e := newEnv(t, envOptions{})
	e.each(state.Product, productEvent(t, 9999, 1, nil)) // bootstrap
	setup(e)
	kids := familyProducts(t, 9, 1)
	n := movesRequests(e, func() { movesSend(t, e, true, kids...) })
	for _, ev := range kids {
		row, rec := e.row("products", productID(1, ev.Product.ID)), e.rec(state.Product, ev.Product.ID)
		if row["_parentproductid_value"] == nil || rec.Status != state.Synced {
			t.Errorf("product %d: parent %v | %s %q", ev.Product.ID, row["_parentproductid_value"], rec.Status, rec.Reason)
		}
	}
	return n, e
}

// An import chunk of new products of a family the app adopted by its sku (a row an admin
// or another connector made): the chunk's look-up takes the app's own ids, so the family's
// row is read once for the chunk, not once per product.
func TestProductChunkOfAnAdoptedFamilyReadsItOnce(t *testing.T) {
	plain, _ := chunkOfFamilyProductsCost(t, func(e *env) { e.each(state.Product, productEvent(t, 1, 1, movesFam)) })
	adopted, e := chunkOfFamilyProductsCost(t, func(e *env) {
		sh, _ := e.eng.boot.rows(e.ctx)
		if _, err := e.dv.Create(e.ctx, "products", dataverse.Record{"name": "Typed in", "productnumber": "SKU-1", "productstructure": 2,
			"defaultuomscheduleid@odata.bind": dataverse.Bind("uomschedules", sh.UnitGroupID),
			"defaultuomid@odata.bind":         dataverse.Bind("uoms", sh.BaseUnitID)}); err != nil {
			t.Fatal(err)
		}
		e.each(state.Product, productEvent(t, 1, 1, movesFam))
	})
	if r := e.rec(state.Product, 1); !strings.Contains(r.Reason, "adopted") {
		t.Fatalf("family 1 not adopted: %q", r.Reason)
	}
	t.Logf("9 new products of a family: %d requests; of an adopted family: %d", plain, adopted)
	if adopted > plain+1 {
		t.Errorf("a chunk of 9 new products of an adopted family: %d requests, of a family the app made: %d", adopted, plain)
	}
}

// The same for a family whose row was written from another store's event (nopCommerce
// shares products between the stores of an install).
func TestProductChunkOfAFamilyFromAnotherStoreReadsItOnce(t *testing.T) {
	plain, _ := chunkOfFamilyProductsCost(t, func(e *env) { e.each(state.Product, productEvent(t, 1, 1, movesFam)) })
	other, e := chunkOfFamilyProductsCost(t, func(e *env) {
		tmpl := example(t, "product-simple.json")[0]
		tmpl["storeId"] = 2
		e.each(state.Product, mkEvent(t, tmpl, "prod-1-1", 1, func(d map[string]any) {
			d["id"], d["sku"], d["pictureUrls"] = 1, "SKU-1", []any{}
			movesFam(d)
		}))
	})
	if r := e.rec(state.Product, 1); r.DataverseID != productID(2, 1) {
		t.Fatalf("family 1 row %s", r.DataverseID)
	}
	t.Logf("9 new products of a family: %d requests; of a family from store 2: %d", plain, other)
	if other > plain+1 {
		t.Errorf("a chunk of 9 new products of a family written from store 2: %d requests, from store 1: %d", other, plain)
	}
}

// A grouped product deleted in the store before it reached Dynamics 365 (its record names
// no row), then a new product naming it: no stub is made for the deleted family, and the
// product is written without a family, Active, as for a family deleted after it reached
// Dynamics 365. One by one, in a later chunk, and in the chunk of the family's delete.
func TestProductNewInAFamilyDeletedBeforeItReachedDynamics(t *testing.T) {
	for _, tc := range []struct {
		name     string
		together bool // the family's delete and the product in one chunk
		bulk     bool
	}{{"single", false, false}, {"chunk", false, true}, {"one chunk", true, true}} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t, envOptions{settings: func(s *Settings) { s.DeletePolicy = "deactivate" }})
			e.each(state.Product, productEvent(t, 9999, 1, nil)) // bootstrap
			del := productEvent(t, 30, 1, func(d map[string]any) { movesFam(d); d["deleted"] = true })
			kid := movesChild(t, 31, 30, 1, nil)
			if tc.together {
				err := e.deliver(e.eng, state.Product, del, kid)
				if r := e.rec(state.Product, 31); err != nil || r.Status != state.Synced {
					t.Errorf("product 31 in the chunk of its family's delete: %v | %s %q", err, r.Status, r.Reason)
				}
			} else {
				e.each(state.Product, del)
				movesSend(t, e, tc.bulk, kid)
			}
			fam, ok := e.srv.Row("products", productID(1, 30))
			frec := e.rec(state.Product, 30)
			if ok && numOf(fam["statecode"]) != productRetired {
				t.Errorf("family 30, deleted in the store before it reached Dynamics 365: an Active stub %q made for product 31 (record %q, row %q)",
					fam["name"], frec.Reason, frec.DataverseID)
			}
			checkWrittenWithoutFamily(t, e, "family deleted before it reached Dynamics 365", 31)
		})
	}
}

// releaseNumber matches the claim's owner by product id, whatever the store: product 10's
// release leaves "1/110" and "2/210" alone, and frees "2/10" and "12/10".
func TestProductReleaseNumberMatchesTheWholeID(t *testing.T) {
	e := newEnv(t, envOptions{})
	for owner, want := range map[string]string{"1/110": "1/110", "2/210": "2/210", "2/10": "", "12/10": ""} {
		doc := &state.Doc{Kind: productNumberKind, Key: numberKey("N-" + owner), Value: []byte(owner)}
		if err := e.st.SaveDoc(e.ctx, doc); err != nil {
			t.Fatal(err)
		}
		e.eng.products.releaseNumber(e.ctx, 1, 10, "N-"+owner)
		got, err := e.st.GetDoc(e.ctx, productNumberKind, numberKey("N-"+owner))
		if err != nil || string(got.Value) != want {
			t.Errorf("claim %q after product 10's release: %q %v, want %q", owner, got.Value, err, want)
		}
	}
}

// DELETE_POLICY=ignore: a stub family's delete leaves its row Active; a later product of it
// reads it and joins it.
func TestProductIgnoredDeleteOfAStubFamily(t *testing.T) {
	for _, bulk := range []bool{false, true} {
		t.Run(fmt.Sprintf("bulk=%v", bulk), func(t *testing.T) {
			e := newEnv(t, envOptions{settings: func(s *Settings) { s.DeletePolicy = "ignore" }})
			e.each(state.Product, movesChild(t, 21, 20, 1, nil))
			e.each(state.Product, productEvent(t, 20, 2, func(d map[string]any) { movesFam(d); d["deleted"] = true }))
			movesSend(t, e, bulk, movesChild(t, 22, 20, 1, nil))
			row, rec := e.row("products", productID(1, 22)), e.rec(state.Product, 22)
			if !strings.EqualFold(fmt.Sprint(row["_parentproductid_value"]), productID(1, 20)) || numOf(row["statecode"]) != productActive || rec.Status != state.Synced {
				t.Errorf("product 22: parent %v state %v | %s %q", row["_parentproductid_value"], row["statecode"], rec.Status, rec.Reason)
			}
		})
	}
}

// An admin retired a family in Dynamics 365; an import array then holds the family's
// event again, unchanged (a re-import of the catalogue, a re-sync), and a new product of
// it. The product finds the family retired in the chunk's look-up and is written without
// it, Active, as one event alone does.
func TestProductChunkUnchangedFamilyAnAdminRetired(t *testing.T) {
	e := newEnv(t, envOptions{})
	e.each(state.Product, productEvent(t, 1, 1, movesFam))
	if err := e.dv.Update(e.ctx, "products", productID(1, 1), dataverse.Record{"statecode": productRetired, "statuscode": 2}); err != nil {
		t.Fatalf("admin retires family 1: %v", err)
	}
	_ = e.deliver(e.eng, state.Product, productEvent(t, 1, 2, movesFam), movesChild(t, 2, 1, 1, nil))
	checkWrittenWithoutFamily(t, e, "unchanged family retired by an admin, in the array", 2)
}

// After a lost state, an import array holds a family's delete and a change of one of its
// products: the product, which Dynamics 365 holds in that very family, ends as one by one,
// without a note that it moved.
func TestProductChunkFamilyDeleteAfterAWipe(t *testing.T) {
	e := newEnv(t, envOptions{settings: func(s *Settings) { s.DeletePolicy = "deactivate" }})
	e.each(state.Product, productEvent(t, 60, 1, movesFam), movesChild(t, 61, 60, 1, nil))
	e.wipeState()
	e.eng = e.engine()
	_ = e.deliver(e.eng, state.Product,
		productEvent(t, 60, 2, func(d map[string]any) { movesFam(d); d["deleted"] = true }),
		movesChild(t, 61, 60, 2, func(d map[string]any) { d["price"] = "12.0000" }))
	rec := e.rec(state.Product, 61)
	if strings.Contains(rec.Reason, "moved to another grouped product") {
		t.Errorf("product 61, never moved (its family 60 deleted in the same array, after a lost state): %s %q", rec.Status, rec.Reason)
	}
	// One by one, the same events give no such note.
	e2 := newEnv(t, envOptions{settings: func(s *Settings) { s.DeletePolicy = "deactivate" }})
	e2.each(state.Product, productEvent(t, 60, 1, movesFam), movesChild(t, 61, 60, 1, nil))
	e2.wipeState()
	e2.eng = e2.engine()
	e2.each(state.Product, productEvent(t, 60, 2, func(d map[string]any) { movesFam(d); d["deleted"] = true }),
		movesChild(t, 61, 60, 2, func(d map[string]any) { d["price"] = "12.0000" }))
	if r := e2.rec(state.Product, 61); strings.Contains(r.Reason, "moved to another grouped product") {
		t.Errorf("one by one: product 61 %s %q", r.Status, r.Reason)
	}
}

// A product already in family 60 is moved in the store to a new family 70; both arrive
// in one array, and the family's write is refused. The product stays in family 60 whatever
// becomes of 70 (Dynamics 365 can't change its parent): its change lands, with the note,
// without waiting for family 70.
func TestProductChunkMovedToAFamilyThatFailed(t *testing.T) {
	e := newEnv(t, envOptions{})
	e.each(state.Product, productEvent(t, 60, 1, movesFam), movesChild(t, 61, 60, 1, nil))
	e.fdv.setFail(func(op, set string, recs []dataverse.Record) error {
		for _, r := range recs {
			if set == "products" && fmt.Sprint(r["name"]) == "FAMILY SEVENTY" {
				return refuse("family 70 refused")
			}
		}
		return nil
	})
	_ = e.deliver(e.eng, state.Product,
		productEvent(t, 70, 1, func(d map[string]any) { movesFam(d); d["name"] = "FAMILY SEVENTY" }),
		movesChild(t, 61, 70, 2, func(d map[string]any) { d["price"] = "12.0000" }))
	rec := e.rec(state.Product, 61)
	row := e.row("products", productID(1, 61))
	if rec.Status != state.Synced || numOf(row["price"]) != 12 {
		t.Errorf("product 61 moved to family 70 (refused) in one array: %s %q, price %v; want Synced in family 60, price 12",
			rec.Status, rec.Reason, row["price"])
	}
}

// The same move one by one, family 70 never written: no stub is made for family 70, which
// the product would not join.
func TestProductMovedMakesNoStub(t *testing.T) {
	e := newEnv(t, envOptions{})
	e.each(state.Product, productEvent(t, 60, 1, movesFam), movesChild(t, 61, 60, 1, nil))
	e.each(state.Product, movesChild(t, 61, 70, 2, nil))
	rec := e.rec(state.Product, 61)
	if !strings.Contains(rec.Reason, "moved to another grouped product") {
		t.Fatalf("product 61: %s %q", rec.Status, rec.Reason)
	}
	if _, ok := e.srv.Row("products", productID(1, 70)); ok {
		t.Errorf("product 61 stays in family 60, yet a stub for family 70 was made for it")
	}
}

// A product in family 60 moved to family 70, which was deleted in the store before it
// reached Dynamics 365 (one by one, and in the array of 70's delete): the product stays in
// family 60, synced, and no stub is made for 70.
func TestProductMovedToAFamilyDeletedBeforeItReachedDynamics(t *testing.T) {
	for _, together := range []bool{false, true} {
		t.Run(fmt.Sprintf("together=%v", together), func(t *testing.T) {
			e := newEnv(t, envOptions{settings: func(s *Settings) { s.DeletePolicy = "deactivate" }})
			e.each(state.Product, productEvent(t, 60, 1, movesFam), movesChild(t, 61, 60, 1, nil))
			del := productEvent(t, 70, 1, func(d map[string]any) { movesFam(d); d["deleted"] = true })
			kid := movesChild(t, 61, 70, 2, func(d map[string]any) { d["price"] = "12.0000"; d["published"] = false })
			if together {
				_ = e.deliver(e.eng, state.Product, del, kid)
			} else {
				e.each(state.Product, del, kid)
			}
			rec, row := e.rec(state.Product, 61), e.row("products", productID(1, 61))
			if rec.Status != state.Synced || !strings.EqualFold(fmt.Sprint(row["_parentproductid_value"]), productID(1, 60)) ||
				numOf(row["statecode"]) != productActive || numOf(row["price"]) != 12 {
				t.Errorf("product 61: %s %q, parent %v state %v price %v", rec.Status, rec.Reason, row["_parentproductid_value"], row["statecode"], row["price"])
			}
			if _, ok := e.srv.Row("products", productID(1, 70)); ok {
				t.Errorf("a stub made for family 70, deleted before it reached Dynamics 365")
			}
		})
	}
}

// movedNote is how a product's reason says the store moved it to another family.
const movedNote = "moved to another grouped product"

// checkNotMoved checks product 61 (Dynamics 365 holds it in family famRow, which the store
// still names) got its change without a "moved" note and no stub was made for its family.
func checkNotMoved(t *testing.T, e *env, famRow string, price float64) {
	t.Helper()
	rec, row := e.rec(state.Product, 61), e.row("products", productID(1, 61))
	if strings.Contains(rec.Reason, movedNote) {
		t.Errorf("product 61, never moved (Dynamics 365 and the store both put it in family 60): %s %q", rec.Status, rec.Reason)
	}
	if !strings.EqualFold(fmt.Sprint(row["_parentproductid_value"]), famRow) || numOf(row["price"]) != price {
		t.Errorf("product 61: parent %v price %v, want %s and %v", row["_parentproductid_value"], row["price"], famRow, price)
	}
	if !strings.EqualFold(famRow, productID(1, 60)) {
		if _, ok := e.srv.Row("products", productID(1, 60)); ok {
			t.Errorf("a stub family %s was made, though product 61 is in family %s", productID(1, 60), famRow)
		}
	}
}

// Family 60 adopted by its sku (a row an admin made), product 61 in it. After a lost state a
// change of product 61 lands without a note that it moved: nothing tells the adopted row
// from another family, so nothing is said.
func TestProductInAnAdoptedFamilyAfterAWipeNotMoved(t *testing.T) {
	for _, bulk := range []bool{false, true} {
		t.Run(fmt.Sprintf("bulk=%v", bulk), func(t *testing.T) {
			e := newEnv(t, envOptions{})
			e.each(state.Product, productEvent(t, 9999, 1, nil)) // bootstrap
			sh, _ := e.eng.boot.rows(e.ctx)
			adopted, err := e.dv.Create(e.ctx, "products", dataverse.Record{"name": "Typed in", "productnumber": "SKU-60", "productstructure": 2,
				"defaultuomscheduleid@odata.bind": dataverse.Bind("uomschedules", sh.UnitGroupID),
				"defaultuomid@odata.bind":         dataverse.Bind("uoms", sh.BaseUnitID)})
			if err != nil {
				t.Fatal(err)
			}
			e.each(state.Product, productEvent(t, 60, 1, movesFam), movesChild(t, 61, 60, 1, nil))
			if p := e.row("products", productID(1, 61))["_parentproductid_value"]; !strings.EqualFold(fmt.Sprint(p), adopted) {
				t.Fatalf("setup: product 61 parent %v, want the adopted family %s", p, adopted)
			}
			e.wipeState()
			e.eng = e.engine()
			movesSend(t, e, bulk, movesChild(t, 61, 60, 2, func(d map[string]any) { d["price"] = "12.0000" }))
			checkNotMoved(t, e, adopted, 12)
		})
	}
}

// Product 61, unpublished, names simple product 50 as its grouped product: written without
// a family, Retired like any product without one. Product 50 then becomes a grouped product
// and product 61 changes (still unpublished): it joins family 50, kept Active (a product of
// a family is retired only when deleted). Alone and in an array.
func TestProductUnpublishedUnderASimpleProductThenJoins(t *testing.T) {
	for _, bulk := range []bool{false, true} {
		t.Run(fmt.Sprintf("bulk=%v", bulk), func(t *testing.T) {
			e := newEnv(t, envOptions{})
			e.each(state.Product, productEvent(t, 50, 1, nil))
			movesSend(t, e, bulk, movesChild(t, 61, 50, 1, func(d map[string]any) { d["published"] = false }))
			row, rec := e.row("products", productID(1, 61)), e.rec(state.Product, 61)
			t.Logf("step 1: product 61 state %v parent %v | %s %q", row["statecode"], row["_parentproductid_value"], rec.Status, rec.Reason)
			if rec.Status != state.Synced || row["_parentproductid_value"] != nil {
				t.Fatalf("step 1: product 61 %s %q parent %v", rec.Status, rec.Reason, row["_parentproductid_value"])
			}
			e.each(state.Product, productEvent(t, 50, 2, movesFam))
			movesSend(t, e, bulk, movesChild(t, 61, 50, 2, func(d map[string]any) { d["published"] = false; d["price"] = "12.0000" }))
			row, rec = e.row("products", productID(1, 61)), e.rec(state.Product, 61)
			if rec.Status != state.Synced || !strings.EqualFold(fmt.Sprint(row["_parentproductid_value"]), productID(1, 50)) ||
				numOf(row["statecode"]) != productActive || numOf(row["price"]) != 12 {
				t.Errorf("step 2: product 61 %s %q, parent %v state %v price %v; want Synced in family 50, Active (kept), price 12",
					rec.Status, rec.Reason, row["_parentproductid_value"], row["statecode"], row["price"])
			}
			if items := e.priceItems(productID(1, 61)); len(items) != 0 {
				t.Logf("step 2: product 61 has %d price list items", len(items))
			}
		})
	}
}

// Family 60 a stub (its own event never came); after a lost state a change of product 61
// finds the stub at the app's own id: no "moved" note.
func TestProductInAStubFamilyAfterAWipeNotMoved(t *testing.T) {
	for _, bulk := range []bool{false, true} {
		t.Run(fmt.Sprintf("bulk=%v", bulk), func(t *testing.T) {
			e := newEnv(t, envOptions{})
			e.each(state.Product, movesChild(t, 61, 60, 1, nil))
			e.wipeState()
			e.eng = e.engine()
			movesSend(t, e, bulk, movesChild(t, 61, 60, 2, func(d map[string]any) { d["price"] = "12.0000" }))
			checkNotMoved(t, e, productID(1, 60), 12)
		})
	}
}
