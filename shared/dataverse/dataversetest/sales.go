package dataversetest

import (
	"fmt"
	"math/big"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/google/uuid"
)

// Dynamics 365 Sales rules (the Sales developer guide and the product, salesorder and
// salesorderdetail table references). Error codes are from Learn:
// reference/web-service-error-codes; the HTTP status of business-rule errors is not
// documented and is 400 here.

// pricing is the organization's pricing settings (Options.PricingDecimalPrecision,
// DiscountPerUnit, SystemPricingOff; the organizations row holds them).
type pricing struct {
	precision int  // pricingdecimalprecision
	perUnit   bool // discountcalculationmethod 1
	system    bool // oobpricecalculationenabled
}

func (s *Server) pricing(x *tx) pricing {
	p := pricing{precision: 2, system: true}
	if o := x.get("organization", s.organizationID); o != nil {
		p.precision = o.intv("pricingdecimalprecision")
		p.perUnit = o.intv("discountcalculationmethod") == 1
		p.system = o.boolv("oobpricecalculationenabled")
	}
	return p
}

// ---- decimal helpers: exact arithmetic on the shortest decimal form of each float ----

func ratOf(f float64) *big.Rat {
	r, ok := new(big.Rat).SetString(strconv.FormatFloat(f, 'f', -1, 64))
	if !ok {
		return new(big.Rat)
	}
	return r
}

// roundRat rounds half away from zero to p decimals.
func roundRat(r *big.Rat, p int) *big.Rat {
	scale := new(big.Int).Exp(big.NewInt(10), big.NewInt(int64(p)), nil)
	x := new(big.Rat).Mul(r, new(big.Rat).SetInt(scale))
	q, m := new(big.Int).QuoRem(x.Num(), x.Denom(), new(big.Int))
	if new(big.Int).Mul(new(big.Int).Abs(m), big.NewInt(2)).Cmp(x.Denom()) >= 0 {
		if x.Sign() < 0 {
			q.Sub(q, big.NewInt(1))
		} else {
			q.Add(q, big.NewInt(1))
		}
	}
	return new(big.Rat).SetFrac(q, scale)
}

func ratFloat(r *big.Rat) float64 { f, _ := r.Float64(); return f }

func round(f float64, p int) float64 { return ratFloat(roundRat(ratOf(f), p)) }

func (s *Server) currencyPrecision(x *tx, currencyID string) int {
	if c := x.get("transactioncurrency", currencyID); c != nil && c.vals["currencyprecision"] != nil {
		return c.intv("currencyprecision")
	}
	return 2
}

// changedKeys lists body properties other than state and annotations.
func changedKeys(body map[string]any) []string {
	var out []string
	for k := range body {
		if k == "statecode" || k == "statuscode" || strings.HasPrefix(k, "@") {
			continue
		}
		out = append(out, k)
	}
	return out
}

func badArg(format string, a ...any) *apiError {
	return errf(http.StatusBadRequest, codeInvalidArgument, format, a...)
}

func (s *Server) beforeCreate(x *tx, t *table, r *row, body map[string]any) *apiError {
	switch t.logical {
	case "transactioncurrency":
		return s.checkCurrency(x, r)
	case "uomschedule":
		if r.str("name") == "" {
			return badArg("name is required for uomschedule.")
		}
		if r.str("baseuomname") == "" {
			r.vals["baseuomname"] = "Primary Unit"
		}
	case "uom":
		sched := r.ref("uomscheduleid")
		if sched == "" {
			return badArg("uomscheduleid is required for uom.")
		}
		if r.str("name") == "" {
			return badArg("name is required for uom.")
		}
		if r.vals["quantity"] == nil {
			r.vals["quantity"] = 1.0
		}
		if r.ref("baseuom") == "" {
			for _, u := range x.referencing("uom", "uomscheduleid", sched) {
				if u.boolv("isschedulebaseuom") {
					r.setRef("baseuom", "uom", u.id)
				}
			}
		}
		r.vals["isschedulebaseuom"] = false
	case "pricelevel":
		if r.ref("transactioncurrencyid") == "" {
			r.setRef("transactioncurrencyid", "transactioncurrency", s.baseCurrencyID)
		}
		return s.checkPriceLevel(x, r)
	case "product":
		if r.vals["productstructure"] == nil {
			r.vals["productstructure"] = 1
		}
		if r.vals["quantitydecimal"] == nil {
			r.vals["quantitydecimal"] = 0
		}
		// New products start Draft unless CreateProductsWithoutParentInActiveState
		// and the product has no parent family. statecode isn't valid for create.
		if s.o.ProductsCreatedActive && r.ref("parentproductid") == "" && r.intv("productstructure") == 1 {
			r.vals["statecode"], r.vals["statuscode"] = 0, 1
		} else {
			r.vals["statecode"], r.vals["statuscode"] = 2, 0
		}
		return s.checkProduct(x, nil, r)
	case "productpricelevel":
		return s.checkPriceListItem(x, r)
	case "organization":
		return errf(http.StatusMethodNotAllowed, codeZero, "The organization row can't be created.")
	case "salesorder", "invoice":
		if st, ok := body["statecode"]; ok && fmt.Sprint(st) != "0" {
			return s.orderStateError(t, r.intv("statecode"))
		}
		r.vals["statecode"] = 0
		if r.vals["statuscode"] == nil || !contains(t.states[0], r.intv("statuscode")) {
			r.vals["statuscode"] = 1
		}
		numCol, prefix := "ordernumber", "ORD"
		if t.logical == "invoice" {
			numCol, prefix = "invoicenumber", "INV"
		}
		if r.str(numCol) == "" {
			r.vals[numCol] = fmt.Sprintf("%s-%05d-%s", prefix, x.st.seq+1, strings.ToUpper(uuid.NewString()[:6]))
		}
		if err := s.checkOrderCurrency(x, r); err != nil {
			return err
		}
		s.computeTotals(x, t, r)
	case "salesorderdetail", "invoicedetail":
		return s.checkLine(x, t, r)
	}
	return nil
}

func contains(list []int, v int) bool {
	for _, x := range list {
		if x == v {
			return true
		}
	}
	return false
}

func (s *Server) beforeUpdate(x *tx, t *table, old, r *row, body map[string]any) *apiError {
	switch t.logical {
	case "transactioncurrency":
		return s.checkCurrency(x, r)
	case "pricelevel":
		return s.checkPriceLevel(x, r)
	case "product":
		return s.updateProduct(x, old, r, body)
	case "productpricelevel":
		return s.checkPriceListItem(x, r)
	case "salesorder":
		return s.updateOrder(x, t, old, r, body)
	case "invoice":
		if old.intv("statecode") != 0 && len(changedKeys(body)) > 0 || old.intv("statecode") != 0 && r.intv("statecode") != old.intv("statecode") {
			return readOnlyRecord(t.logical)
		}
		if err := s.checkOrderCurrency(x, r); err != nil {
			return err
		}
		s.computeTotals(x, t, r)
	case "salesorderdetail", "invoicedetail":
		return s.checkLine(x, t, r)
	case "organization":
		if p := r.intv("pricingdecimalprecision"); p < 0 || p > 4 {
			return badArg("pricingdecimalprecision must be between 0 and 4.")
		}
	case "uom":
		if old.ref("uomscheduleid") != r.ref("uomscheduleid") {
			return badArg("The unit group of a unit can't be changed.")
		}
	}
	return nil
}

func (s *Server) afterWrite(x *tx, t *table, old, r *row) *apiError {
	switch t.logical {
	case "uomschedule":
		if old == nil {
			// Creating a unit group creates its base unit named baseuomname (uomschedule table reference).
			id := s.pendingBaseUnitID
			if id == "" {
				id = uuid.NewString()
			}
			u := s.newRow(s.sc.byLogical["uom"], id)
			u.vals["name"] = r.str("baseuomname")
			u.vals["quantity"] = 1.0
			u.vals["isschedulebaseuom"] = true
			u.setRef("uomscheduleid", "uomschedule", r.id)
			u.setRef("baseuom", "uom", u.id)
			x.put("uom", u)
		}
	case "salesorderdetail", "invoicedetail":
		pt, attr := parentOf(t)
		if old != nil && old.ref(attr) != "" && old.ref(attr) != r.ref(attr) {
			s.refreshTotals(x, pt, old.ref(attr))
		}
		s.refreshTotals(x, pt, r.ref(attr))
	}
	return nil
}

func (s *Server) beforeDelete(x *tx, t *table, r *row) *apiError {
	switch t.logical {
	case "salesorderdetail", "invoicedetail":
		pt, attr := parentOf(t)
		if p := x.get(pt, r.ref(attr)); p != nil && !x.isDeleting(p.id) && p.intv("statecode") != 0 {
			return readOnlyRecord(pt)
		}
	case "uom":
		if r.boolv("isschedulebaseuom") && !x.isDeleting(r.ref("uomscheduleid")) {
			return errf(http.StatusBadRequest, codeInvalidArgument, "The base unit of a unit group can't be deleted.")
		}
	case "organization":
		return errf(http.StatusMethodNotAllowed, codeZero, "The organization row can't be deleted.")
	case "transactioncurrency":
		if r.id == s.baseCurrencyID {
			return errf(http.StatusBadRequest, codeInvalidArgument, "The base currency can't be deleted.")
		}
	}
	x.markDeleting(r.id)
	return nil
}

func (s *Server) afterDelete(x *tx, t *table, r *row) *apiError {
	switch t.logical {
	case "salesorderdetail", "invoicedetail":
		pt, attr := parentOf(t)
		if p := r.ref(attr); p != "" && !x.isDeleting(p) {
			s.refreshTotals(x, pt, p)
		}
	}
	return nil
}

func parentOf(t *table) (string, string) {
	if t.logical == "invoicedetail" {
		return "invoice", "invoiceid"
	}
	return "salesorder", "salesorderid"
}

// ---- reference data ----

func (s *Server) checkCurrency(x *tx, r *row) *apiError {
	iso := r.str("isocurrencycode")
	if iso == "" {
		return badArg("isocurrencycode is required.")
	}
	for _, o := range x.st.rows["transactioncurrency"] {
		if o.id != r.id && strings.EqualFold(o.str("isocurrencycode"), iso) {
			return errf(http.StatusBadRequest, codeDuplicateIsoCurrency, "A currency with the ISO code %s already exists.", iso)
		}
	}
	if r.vals["currencyprecision"] == nil {
		r.vals["currencyprecision"] = 2
	}
	if r.vals["exchangerate"] == nil {
		r.vals["exchangerate"] = 1.0
	}
	return nil
}

func (s *Server) checkPriceLevel(x *tx, r *row) *apiError {
	name := r.str("name")
	if name == "" {
		return badArg("name is required for pricelevel.")
	}
	for _, o := range x.st.rows["pricelevel"] {
		if o.id != r.id && strings.EqualFold(o.str("name"), name) {
			return errf(http.StatusBadRequest, codePriceLevelNameExists, "A price list with the name %s already exists. Specify a unique name.", name)
		}
	}
	return nil
}

// ---- products ----

func (s *Server) checkProduct(x *tx, old, r *row) *apiError {
	num := r.str("productnumber")
	if num == "" {
		return errf(http.StatusBadRequest, codeProductNoProductNumber, "The product ID (productnumber) is required.")
	}
	for _, o := range x.sameText("product", "productnumber", num) {
		if o.id != r.id && strings.EqualFold(o.str("productnumber"), num) {
			return errf(http.StatusBadRequest, codeProductNumberExists, "A product with the product ID %s already exists. Specify a unique product ID.", num)
		}
	}
	if r.ref("defaultuomid") != "" {
		sched := r.ref("defaultuomscheduleid")
		if sched == "" {
			return errf(http.StatusBadRequest, codeProductMissingUomSched, "The unit group is required when a default unit is set.")
		}
		if u := x.get("uom", r.ref("defaultuomid")); u == nil || !strings.EqualFold(u.ref("uomscheduleid"), sched) {
			return errf(http.StatusBadRequest, codeProductInvalidUnit, "The unit is not valid for this product: it doesn't belong to the product's unit group.")
		}
	}
	if p := r.ref("parentproductid"); p != "" {
		if strings.EqualFold(p, r.id) {
			return errf(http.StatusBadRequest, codeCannotSetProductAsParent, "A product can't be its own parent.")
		}
		if pr := x.get("product", p); pr == nil || pr.intv("productstructure") != 2 {
			return errf(http.StatusBadRequest, codeCannotSetProductAsParent, "Only a product family can be set as the parent of a product, family or bundle.")
		}
		if old != nil && old.ref("parentproductid") != "" && !strings.EqualFold(old.ref("parentproductid"), p) {
			return errf(http.StatusBadRequest, codeCannotSetProductAsParent, "The parent of a product can't be changed once it is set.")
		}
	}
	// Only a product family can be a parent (product families page): a family that holds
	// products stays one. Whether Dataverse changes productstructure on update otherwise is
	// not documented; the simulator allows it for a row with no products under it.
	if old != nil && old.intv("productstructure") == 2 && r.intv("productstructure") != 2 &&
		len(x.referencing("product", "parentproductid", r.id)) > 0 {
		return errf(http.StatusBadRequest, codeCannotSetProductAsParent, "Only a product family can be set as the parent of a product, family or bundle.")
	}
	return nil
}

const (
	prodActive, prodRetired, prodDraft, prodRevised = 0, 1, 2, 3
)

func (s *Server) updateProduct(x *tx, old, r *row, body map[string]any) *apiError {
	from := old.intv("statecode")
	if len(changedKeys(body)) > 0 && (from == prodActive || from == prodRetired) && !s.o.ActiveProductsUpdatable {
		return errf(http.StatusBadRequest, codeOnlyUpdatedInDraft, "Product, product family and bundle can only be updated in draft state.")
	}
	if err := s.checkProduct(x, old, r); err != nil {
		return err
	}
	if _, ok := body["statecode"]; !ok {
		return nil
	}
	to := r.intv("statecode")
	switch {
	case from == prodDraft && to == prodDraft:
		return errf(http.StatusBadRequest, codeAlreadyDraft, "The product is already in Draft state.")
	case from == prodActive && to == prodActive:
		return errf(http.StatusBadRequest, codeAlreadyActive, "The product is already Active.")
	case from == to:
		return nil
	case to == prodActive && (from == prodDraft || from == prodRevised):
		if err := s.countPublish(x); err != nil {
			return err
		}
		return s.checkParentActive(x, r)
	case from == prodDraft && to == prodRevised:
		return errf(http.StatusBadRequest, codeDraftToRevised, "A product in Draft state can't be set to Under Revision.")
	case from == prodActive && to == prodDraft:
		return errf(http.StatusBadRequest, codeActiveToDraft, "An Active product can't be set back to Draft; revise it instead.")
	case from == prodActive && to == prodRevised:
		s.reviseHierarchy(x, r)
		return nil
	case (from == prodActive || from == prodRevised) && to == prodRetired:
		return s.retire(x, r)
	case from == prodRetired && to == prodActive:
		// productstructure 2 is a family, 3 a bundle: "You can't activate a retired
		// product family or a retired bundle record" (Learn: publish-revise-revert-retire-activate-products).
		if st := r.intv("productstructure"); r.ref("parentproductid") != "" || st == 2 || st == 3 {
			return badArg("You can't activate a retired product family or a retired bundle record, or a retired product of a product family: only a retired product without a parent can be activated again.")
		}
		return s.countPublish(x)
	}
	return badArg("The product can't change from state %d to state %d.", from, to)
}

// countPublish allows one product publish (or activation) per request: "You cannot
// publish multiple product family, product, or bundle records at once"; a family's
// hierarchy is published with PublishProductHierarchy.
func (s *Server) countPublish(x *tx) *apiError {
	x.publishes++
	if x.publishes > 1 {
		return badArg("You cannot publish multiple product family, product, or bundle records at once: publish them one per request, or a family's hierarchy with PublishProductHierarchy.")
	}
	return nil
}

// inPriceList reports whether a price list item refers to the product.
func inPriceList(x *tx, productID string) bool {
	return len(x.referencing("productpricelevel", "productid", productID)) > 0
}

// retire checks and applies retiring r (already set Retired): a product in a price list
// can't be retired (CannotRetireProductFromActiveBundle); retiring a family retires its
// whole hierarchy, which fails while a descendant can't be retired (ProductHasUnretiredChild).
func (s *Server) retire(x *tx, r *row) *apiError {
	if inPriceList(x, r.id) {
		return errf(http.StatusBadRequest, codeCannotRetireInPriceList,
			"This product cannot be retired because it is a part of some active bundles or pricelists. Please remove it from all bundles or pricelists before retiring.")
	}
	if r.intv("productstructure") != 2 {
		return nil
	}
	for _, k := range x.referencing("product", "parentproductid", r.id) {
		if k.intv("statecode") == prodRetired {
			continue
		}
		if inPriceList(x, k.id) {
			return errf(http.StatusBadRequest, codeProductHasUnretiredChild,
				"The product family %s has a child product (%s) that can't be retired: it is part of a price list.", r.str("productnumber"), k.str("productnumber"))
		}
		c := k.clone()
		c.vals["statecode"], c.vals["statuscode"] = prodRetired, 2
		c.vals["modifiedon"] = s.nowString()
		if err := s.retire(x, c); err != nil {
			return err
		}
		x.put("product", c)
	}
	return nil
}

// reviseHierarchy sets the Active descendants of a revised family Under Revision too:
// "When invoked for a product family record, it revises the product family and its
// child records" (Learn: publish-revise-revert-retire-activate-products).
func (s *Server) reviseHierarchy(x *tx, r *row) {
	for _, k := range x.referencing("product", "parentproductid", r.id) {
		if k.intv("statecode") != prodActive {
			continue
		}
		c := k.clone()
		c.vals["statecode"], c.vals["statuscode"] = prodRevised, 3
		c.vals["modifiedon"] = s.nowString()
		x.put("product", c)
		s.reviseHierarchy(x, c)
	}
}

func (s *Server) checkParentActive(x *tx, r *row) *apiError {
	if p := r.ref("parentproductid"); p != "" {
		if pr := x.get("product", p); pr == nil || pr.intv("statecode") != prodActive {
			return errf(http.StatusBadRequest, codeChildOfNonActiveFamily, "You can't publish a child product, family or bundle whose parent product family isn't active.")
		}
	}
	return nil
}

// publishHierarchy is PublishProductHierarchy: the product and every Draft/Under Revision
// descendant become Active (publish-revise-revert-retire-activate-products).
func (s *Server) publishHierarchy(x *tx, r *row) *apiError {
	if st := r.intv("statecode"); st == prodDraft || st == prodRevised {
		if err := s.checkParentActive(x, r); err != nil {
			return err
		}
		c := r.clone()
		c.vals["statecode"], c.vals["statuscode"] = prodActive, 1
		c.vals["modifiedon"] = s.nowString()
		x.put("product", c)
	}
	for _, k := range x.referencing("product", "parentproductid", r.id) {
		if err := s.publishHierarchy(x, x.get("product", k.id)); err != nil {
			return err
		}
	}
	return nil
}

func (s *Server) checkPriceListItem(x *tx, r *row) *apiError {
	pl := x.get("pricelevel", r.ref("pricelevelid"))
	if pl == nil {
		return badArg("pricelevelid is required for productpricelevel.")
	}
	p := x.get("product", r.ref("productid"))
	if p == nil {
		return badArg("productid is required for productpricelevel.")
	}
	if r.ref("uomid") == "" && p.ref("defaultuomid") != "" {
		r.setRef("uomid", "uom", p.ref("defaultuomid"))
	}
	u := x.get("uom", r.ref("uomid"))
	if u == nil {
		return badArg("uomid is required for productpricelevel.")
	}
	sched := p.ref("defaultuomscheduleid")
	if sched == "" {
		return errf(http.StatusBadRequest, codeProductMissingUomSched, "The product has no unit group.")
	}
	if !strings.EqualFold(u.ref("uomscheduleid"), sched) {
		return errf(http.StatusBadRequest, codeProductInvalidUnit, "The unit is not valid for this product.")
	}
	for _, o := range x.referencing("productpricelevel", "productid", p.id) {
		if o.id != r.id && strings.EqualFold(o.ref("pricelevelid"), pl.id) && strings.EqualFold(o.ref("productid"), p.id) && strings.EqualFold(o.ref("uomid"), u.id) {
			return errf(http.StatusBadRequest, codeDuplicateProductPrice, "This product and unit combination has a price for this price list.")
		}
	}
	r.setRef("uomscheduleid", "uomschedule", sched)
	r.setRef("transactioncurrencyid", "transactioncurrency", pl.ref("transactioncurrencyid"))
	if r.vals["pricingmethodcode"] == nil {
		r.vals["pricingmethodcode"] = 1
	}
	if r.vals["quantitysellingcode"] == nil {
		r.vals["quantitysellingcode"] = 1
	}
	if a, ok := r.vals["amount"].(float64); ok {
		r.vals["amount"] = round(a, s.currencyPrecision(x, pl.ref("transactioncurrencyid")))
	}
	return nil
}

// ---- orders and invoices ----

func (s *Server) checkOrderCurrency(x *tx, r *row) *apiError {
	pl := x.get("pricelevel", r.ref("pricelevelid"))
	if r.ref("transactioncurrencyid") == "" {
		if pl != nil {
			r.setRef("transactioncurrencyid", "transactioncurrency", pl.ref("transactioncurrencyid"))
		} else {
			r.setRef("transactioncurrencyid", "transactioncurrency", s.baseCurrencyID)
		}
	}
	if pl != nil && !strings.EqualFold(pl.ref("transactioncurrencyid"), r.ref("transactioncurrencyid")) {
		return errf(http.StatusBadRequest, codeCurrencyNotEqual, "The currency of the record does not match the currency of the price list.")
	}
	if c := x.get("transactioncurrency", r.ref("transactioncurrencyid")); c != nil {
		r.vals["exchangerate"] = c.num("exchangerate")
	}
	return nil
}

// orderStateError is the answer to a PATCH that tries to close an order (salesorder table reference: only active orders
// can be edited; Learn: webapi/update-delete-entities-using-web-api).
func (s *Server) orderStateError(t *table, to int) *apiError {
	if t.logical != "salesorder" {
		return badArg("Invoices are created Active; set other states with a PATCH of statecode and statuscode afterwards.")
	}
	switch to {
	case 3:
		return badArg("This message can not be used to set the state of SalesOrder to Fulfilled. In order to set state of SalesOrder, use the FulfillSalesOrder Request message instead.")
	case 2:
		return badArg("This message can not be used to set the state of SalesOrder to Canceled. In order to set state of SalesOrder to Canceled, use the CancelSalesOrderRequest Request message instead.")
	case 4:
		return badArg("This message can not be used to set the state of SalesOrder to Invoiced. Use ConvertSalesOrderToInvoice instead.")
	}
	return badArg("Sales orders are created Active.")
}

func (s *Server) updateOrder(x *tx, t *table, old, r *row, body map[string]any) *apiError {
	from := old.intv("statecode")
	_, stateChange := body["statecode"]
	to := r.intv("statecode")
	if stateChange && to != from && (to == 2 || to == 3 || to == 4) {
		return s.orderStateError(t, to)
	}
	switch {
	case from == 0:
	case from == 1 && len(changedKeys(body)) == 0 && (to == 0 || to == 1):
		// Submitted orders can be set back to Active; nothing else changes (salesorder table reference).
	default:
		return readOnlyRecord(t.logical)
	}
	if err := s.checkOrderCurrency(x, r); err != nil {
		return err
	}
	if !strings.EqualFold(old.ref("transactioncurrencyid"), r.ref("transactioncurrencyid")) && len(x.referencing("salesorderdetail", "salesorderid", r.id)) > 0 {
		return badArg("The currency of an order with products can't be changed.")
	}
	s.computeTotals(x, t, r)
	return nil
}

// checkLine validates an order/invoice line and computes its amounts (salesorderdetail
// table reference; product-pricing-methods): extendedamount = quantity × priceperunit −
// manualdiscountamount + tax, money rounded to the currency precision, prices to 2.
func (s *Server) checkLine(x *tx, t *table, r *row) *apiError {
	pt, attr := parentOf(t)
	parent := x.get(pt, r.ref(attr))
	if parent == nil {
		return badArg("%s is required for %s.", attr, t.logical)
	}
	if parent.intv("statecode") != 0 {
		return readOnlyRecord(pt)
	}
	cur := parent.ref("transactioncurrencyid")
	prec := s.currencyPrecision(x, cur)
	r.setRef("transactioncurrencyid", "transactioncurrency", cur)
	if t.logical == "salesorderdetail" {
		r.vals["salesorderstatecode"] = parent.intv("statecode")
		r.vals["salesorderispricelocked"] = parent.boolv("ispricelocked")
	}
	if r.vals["producttypecode"] == nil {
		r.vals["producttypecode"] = 1
	}
	qty := ratOf(r.num("quantity"))
	if r.boolv("isproductoverridden") {
		if r.ref("productid") != "" {
			return errf(http.StatusBadRequest, codeBothProductAndDesc, "A write-in product line can't specify a product (productid) and a product description.")
		}
		if r.ref("uomid") != "" {
			return errf(http.StatusBadRequest, codeBothUomAndDesc, "A write-in product line can't specify a unit (uomid).")
		}
	} else {
		p := x.get("product", r.ref("productid"))
		if p == nil {
			return badArg("productid is required for a line that isn't a write-in product (isproductoverridden false).")
		}
		if !s.o.AllowInactiveProductsOnLines && p.intv("statecode") != prodActive && p.intv("statecode") != prodRevised {
			return badArg("The product %s is not active (Draft or Retired products can't be added to orders).", p.str("productnumber"))
		}
		if s.o.RefuseFamiliesOnLines && p.intv("productstructure") == 2 {
			return badArg("The product %s is a product family, which can't be added to orders.", p.str("productnumber"))
		}
		if r.ref("uomid") == "" && p.ref("defaultuomid") != "" {
			r.setRef("uomid", "uom", p.ref("defaultuomid"))
		}
		u := x.get("uom", r.ref("uomid"))
		if u == nil {
			return badArg("uomid is required for an existing-product line.")
		}
		if !strings.EqualFold(u.ref("uomscheduleid"), p.ref("defaultuomscheduleid")) {
			return errf(http.StatusBadRequest, codeProductInvalidUnit, "The unit is not valid for this product.")
		}
		if dec := decimalsOf(r.num("quantity")); dec > p.intv("quantitydecimal") {
			return errf(http.StatusBadRequest, "0x80043b07", "The quantity has more decimals than the product supports (%d).", p.intv("quantitydecimal"))
		}
		if !r.boolv("ispriceoverridden") {
			// Price from the order's price list item; without one Dataverse records a
			// pricing error (11 Product Not In Price Level) and prices the line at 0.
			price, found := 0.0, false
			for _, ppl := range x.referencing("productpricelevel", "productid", p.id) {
				if strings.EqualFold(ppl.ref("pricelevelid"), parent.ref("pricelevelid")) && strings.EqualFold(ppl.ref("uomid"), u.id) {
					price, found = ppl.num("amount"), true
				}
			}
			r.vals["priceperunit"] = price
			if found {
				r.vals["pricingerrorcode"] = 0
			} else {
				r.vals["pricingerrorcode"] = 11
			}
		}
	}
	if r.vals["priceperunit"] == nil {
		r.vals["priceperunit"] = 0.0
	}
	pr := s.pricing(x)
	ppu := roundRat(ratOf(r.num("priceperunit")), pr.precision)
	r.vals["priceperunit"] = ratFloat(ppu)
	manual := roundRat(ratOf(r.num("manualdiscountamount")), prec)
	tax := roundRat(ratOf(r.num("tax")), prec)
	if r.vals["manualdiscountamount"] != nil {
		r.vals["manualdiscountamount"] = ratFloat(manual)
	}
	if r.vals["tax"] != nil {
		r.vals["tax"] = ratFloat(tax)
	}
	if !pr.system {
		// System pricing off: Dataverse computes no amounts (a pricing plug-in would).
		return nil
	}
	base := roundRat(new(big.Rat).Mul(qty, ppu), prec)
	var ext *big.Rat
	if pr.perUnit {
		// Per unit: the discount comes off each unit, (price − discount) × quantity.
		ext = roundRat(new(big.Rat).Mul(qty, new(big.Rat).Sub(ppu, manual)), prec)
	} else {
		ext = new(big.Rat).Sub(base, manual)
	}
	ext.Add(ext, tax)
	r.vals["baseamount"] = ratFloat(base)
	r.vals["extendedamount"] = ratFloat(roundRat(ext, prec))
	r.vals["volumediscountamount"] = 0.0
	return nil
}

func decimalsOf(f float64) int {
	str := strconv.FormatFloat(f, 'f', -1, 64)
	if i := strings.IndexByte(str, '.'); i >= 0 {
		return len(str) - i - 1
	}
	return 0
}

// computeTotals: totallineitemamount = Σ extendedamount; totalamount =
// totallineitemamount − discountamount (− discountpercentage) + freightamount.
func (s *Server) computeTotals(x *tx, t *table, r *row) {
	lineTable, attr := "salesorderdetail", "salesorderid"
	if t.logical == "invoice" {
		lineTable, attr = "invoicedetail", "invoiceid"
	}
	if !s.pricing(x).system {
		return // system pricing off: no totals computed
	}
	prec := s.currencyPrecision(x, r.ref("transactioncurrencyid"))
	lines, manual, tax := new(big.Rat), new(big.Rat), new(big.Rat)
	for _, l := range x.referencing(lineTable, attr, r.id) {
		if x.isDeleting(l.id) {
			continue
		}
		lines.Add(lines, ratOf(l.num("extendedamount")))
		if m := ratOf(l.num("manualdiscountamount")); s.pricing(x).perUnit {
			manual.Add(manual, new(big.Rat).Mul(m, ratOf(l.num("quantity"))))
		} else {
			manual.Add(manual, m)
		}
		tax.Add(tax, ratOf(l.num("tax")))
	}
	if r.vals["discountamount"] != nil {
		r.vals["discountamount"] = round(r.num("discountamount"), prec)
	}
	if r.vals["freightamount"] != nil {
		r.vals["freightamount"] = round(r.num("freightamount"), prec)
	}
	disc := ratOf(r.num("discountamount"))
	if pct := r.num("discountpercentage"); pct != 0 {
		disc.Add(disc, roundRat(new(big.Rat).Mul(lines, new(big.Rat).Quo(ratOf(pct), big.NewRat(100, 1))), prec))
	}
	less := new(big.Rat).Sub(lines, disc)
	total := new(big.Rat).Add(less, ratOf(r.num("freightamount")))
	r.vals["totallineitemamount"] = ratFloat(roundRat(lines, prec))
	r.vals["totallineitemdiscountamount"] = ratFloat(roundRat(manual, prec))
	r.vals["totaltax"] = ratFloat(roundRat(tax, prec))
	r.vals["totaldiscountamount"] = ratFloat(roundRat(new(big.Rat).Add(disc, manual), prec))
	r.vals["totalamountlessfreight"] = ratFloat(roundRat(less, prec))
	r.vals["totalamount"] = ratFloat(roundRat(total, prec))
}

func (s *Server) refreshTotals(x *tx, logical, id string) {
	p := x.get(logical, id)
	if p == nil || x.isDeleting(id) {
		return
	}
	c := p.clone()
	s.computeTotals(x, s.sc.byLogical[logical], c)
	x.put(logical, c)
}

// ---- actions ----

func (s *Server) unboundAction(x *tx, q *apiReq, name string) (*apiResp, *apiError) {
	body, err := decodeBody(q.body)
	if err != nil {
		return nil, err
	}
	switch name {
	case "FulfillSalesOrder":
		return s.closeOrder(x, q, body, 3, "FulfillSalesOrder")
	case "CancelSalesOrder":
		return s.closeOrder(x, q, body, 2, "CancelSalesOrder")
	case "ConvertSalesOrderToInvoice":
		return s.convertToInvoice(x, q, body)
	case "UnlockSalesOrderPricing":
		return s.setPriceLock(x, fmt.Sprint(body["SalesOrderId"]), false)
	}
	return nil, errf(http.StatusNotFound, codeResourceNotFound, "Resource not found for the segment '%s'.", name)
}

func (s *Server) boundAction(x *tx, q *apiReq, t *table, k rowKey, name string) (*apiResp, *apiError) {
	r := s.find(x, t, k)
	switch {
	case t.logical == "product" && name == "PublishProductHierarchy":
		if r == nil {
			return nil, s.keyNotFound(t, k)
		}
		if r.intv("productstructure") != 2 {
			// "You can use this message only with a product family record" (Learn:
			// publish-revise-revert-retire-activate-products); the error code is not documented.
			return nil, badArg("PublishProductHierarchy can be used only with a product family record.")
		}
		if err := s.publishHierarchy(x, r); err != nil {
			return nil, err
		}
		return noContent(), nil
	case t.logical == "salesorder" && name == "LockSalesOrderPricing":
		if r == nil {
			return nil, s.keyNotFound(t, k)
		}
		return s.setPriceLock(x, r.id, true)
	}
	return nil, errf(http.StatusNotFound, codeResourceNotFound, "Resource not found for the segment 'Microsoft.Dynamics.CRM.%s'.", name)
}

func (s *Server) setPriceLock(x *tx, id string, locked bool) (*apiResp, *apiError) {
	o := x.get("salesorder", id)
	if o == nil {
		return nil, notFoundByID("salesorder", id)
	}
	c := o.clone()
	c.vals["ispricelocked"] = locked
	x.put("salesorder", c)
	return noContent(), nil
}

// closeOrder implements FulfillSalesOrder / CancelSalesOrder: creates the orderclose
// activity and moves the order to Fulfilled (3) or Canceled (2) with Status (quote-order-invoice-entities;
// https://learn.microsoft.com/power-apps/developer/data-platform/webapi/reference/fulfillsalesorder).
func (s *Server) closeOrder(x *tx, q *apiReq, body map[string]any, state int, action string) (*apiResp, *apiError) {
	oc, ok := body["OrderClose"].(map[string]any)
	if !ok {
		return nil, errf(http.StatusBadRequest, codePayloadError, "%s requires the OrderClose parameter (an orderclose entity).", action)
	}
	if tp, _ := oc["@odata.type"].(string); tp != "" && tp != "Microsoft.Dynamics.CRM.orderclose" {
		return nil, errf(http.StatusBadRequest, codePayloadError, "OrderClose must be of type Microsoft.Dynamics.CRM.orderclose, got %s.", tp)
	} else if tp == "" && action == "CancelSalesOrder" {
		// CancelSalesOrder's parameter is typed crmbaseentity: the type annotation is required.
		return nil, errf(http.StatusBadRequest, codePayloadError, "OrderClose needs \"@odata.type\": \"Microsoft.Dynamics.CRM.orderclose\" (the parameter is typed crmbaseentity).")
	}
	statusNum, ok := body["Status"]
	if !ok {
		return nil, errf(http.StatusBadRequest, codePayloadError, "%s requires the Status parameter.", action)
	}
	status, cerr := strconv.Atoi(fmt.Sprint(statusNum))
	if cerr != nil {
		return nil, errf(http.StatusBadRequest, codeZero, "Status must be an integer.")
	}
	ocb := map[string]any{}
	for k, v := range oc {
		if k != "@odata.type" {
			ocb[k] = v
		}
	}
	ref, _ := oc["salesorderid@odata.bind"].(string)
	if ref == "" {
		return nil, badArg("OrderClose must bind salesorderid (salesorderid@odata.bind).")
	}
	t := s.sc.byLogical["salesorder"]
	oid, err := s.resolveRef(x, ref, "salesorder", "salesorderid@odata.bind")
	if err != nil {
		return nil, err
	}
	o := x.get("salesorder", oid)
	if st := o.intv("statecode"); st != 0 && st != 1 {
		return nil, badArg("The sales order is closed (state %d); it can't be fulfilled or canceled.", st)
	}
	if !contains(t.states[state], status) {
		return nil, badArg("%d is not a valid status code for state code SalesOrderState.%d.", status, state)
	}
	ct := s.sc.byLogical["orderclose"]
	close, err := s.createRow(x, ct, "", ocb, nil)
	if err != nil {
		return nil, err
	}
	cc := close.clone()
	cc.vals["statecode"], cc.vals["statuscode"] = 1, 2
	if cc.vals["actualend"] == nil {
		cc.vals["actualend"] = s.nowString()
	}
	x.put("orderclose", cc)
	c := o.clone()
	c.vals["statecode"], c.vals["statuscode"] = state, status
	if state == 3 {
		c.vals["datefulfilled"] = time.Now().UTC().Format("2006-01-02")
	}
	c.vals["modifiedon"] = s.nowString()
	x.put("salesorder", c)
	for _, l := range x.referencing("salesorderdetail", "salesorderid", c.id) {
		lc := l.clone()
		lc.vals["salesorderstatecode"] = state
		x.put("salesorderdetail", lc)
	}
	return noContent(), nil
}

var copyOrderCols = []string{"name", "description", "discountamount", "discountpercentage", "freightamount",
	"ispricelocked", "paymenttermscode", "shippingmethodcode", "freighttermscode", "willcall", "emailaddress",
	"billto_name", "billto_line1", "billto_line2", "billto_line3", "billto_city", "billto_stateorprovince",
	"billto_postalcode", "billto_country", "billto_telephone", "billto_fax", "billto_contactname",
	"shipto_name", "shipto_line1", "shipto_line2", "shipto_line3", "shipto_city", "shipto_stateorprovince",
	"shipto_postalcode", "shipto_country", "shipto_telephone", "shipto_fax", "shipto_contactname"}

var copyLineCols = []string{"isproductoverridden", "productdescription", "quantity", "priceperunit", "ispriceoverridden",
	"manualdiscountamount", "tax", "baseamount", "extendedamount", "volumediscountamount", "description",
	"producttypecode", "lineitemnumber", "sequencenumber", "pricingerrorcode", "productname"}

// convertToInvoice implements ConvertSalesOrderToInvoice: an invoice copying the order's
// customer, price list, currency, amounts and lines, returned as the entity (quote-order-invoice-entities).
func (s *Server) convertToInvoice(x *tx, q *apiReq, body map[string]any) (*apiResp, *apiError) {
	oid, _ := body["SalesOrderId"].(string)
	if _, err := uuid.Parse(oid); err != nil {
		return nil, errf(http.StatusBadRequest, codeZero, "SalesOrderId must be a GUID.")
	}
	o := x.get("salesorder", oid)
	if o == nil {
		return nil, notFoundByID("salesorder", oid)
	}
	if o.intv("statecode") == 2 {
		return nil, badArg("A canceled order can't be converted to an invoice.")
	}
	it := s.sc.byLogical["invoice"]
	inv := s.newRow(it, uuid.NewString())
	for _, c := range copyOrderCols {
		if v := o.vals[c]; v != nil {
			inv.vals[c] = v
		}
	}
	for _, a := range []string{"customerid", "pricelevelid", "transactioncurrencyid"} {
		if id := o.ref(a); id != "" {
			inv.setRef(a, o.targets[a], id)
		}
	}
	inv.setRef("salesorderid", "salesorder", o.id)
	inv.vals["invoicenumber"] = fmt.Sprintf("INV-%05d-%s", x.st.seq+1, strings.ToUpper(uuid.NewString()[:6]))
	inv.vals["statecode"], inv.vals["statuscode"] = 0, 1
	x.put("invoice", inv)
	for _, l := range x.referencing("salesorderdetail", "salesorderid", o.id) {
		d := s.newRow(s.sc.byLogical["invoicedetail"], uuid.NewString())
		for _, c := range copyLineCols {
			if v := l.vals[c]; v != nil {
				d.vals[c] = v
			}
		}
		for _, a := range []string{"productid", "uomid", "transactioncurrencyid"} {
			if id := l.ref(a); id != "" {
				d.setRef(a, l.targets[a], id)
			}
		}
		d.setRef("invoiceid", "invoice", inv.id)
		d.setRef("salesorderdetailid", "salesorderdetail", l.id)
		d.vals["invoicestatecode"] = 0
		x.put("invoicedetail", d)
	}
	c := x.get("invoice", inv.id).clone()
	s.computeTotals(x, it, c)
	x.put("invoice", c)
	if s.o.ConvertSetsOrderInvoiced {
		oc := o.clone()
		oc.vals["statecode"], oc.vals["statuscode"] = 4, 100003
		x.put("salesorder", oc)
	}
	m := s.entityJSON(q, it, x.get("invoice", inv.id), nil, false)
	m["@odata.context"] = q.base + "$metadata#invoices/$entity"
	return jsonResp(http.StatusOK, m), nil
}
