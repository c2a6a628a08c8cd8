package dataversetest

import (
	"sort"
	"strings"
)

// colType is a Dataverse attribute type as far as validation and JSON are concerned.
type colType int

const (
	tString colType = iota
	tMemo
	tInt
	tDecimal
	tMoney
	tBool
	tPicklist
	tDateTime
	tDateOnly
	tGUID
	tImage
)

type column struct {
	name     string
	typ      colType
	maxLen   int
	readOnly bool // IsValidForCreate/Update false: values sent are silently ignored (Learn: entity-attribute-metadata)
}

// lookup is one single-valued navigation property. Polymorphic lookups
// (customerid, parentcustomerid) have one lookup per target sharing attr.
type lookup struct {
	nav    string // navigation property name used with @odata.bind (case-sensitive)
	attr   string // lookup attribute logical name; read back as _<attr>_value
	target string // logical name of the referenced table
}

// collection is a collection-valued navigation property usable for deep insert.
type collection struct {
	name  string // e.g. order_details
	child string // child table logical name
	nav   string // the child's lookup nav pointing at the parent
}

type table struct {
	logical     string
	set         string
	pk          string
	cols        map[string]*column
	navs        map[string]*lookup
	lookupAttrs map[string][]*lookup
	collections map[string]*collection
	keys        [][]string    // alternate keys, each a sorted set of column names
	states      map[int][]int // statecode -> valid statuscodes, first is the default
	defState    int
}

func (t *table) valueName(attr string) string { return "_" + attr + "_value" }

// isValueProp reports whether name is a _x_value lookup property of t and returns the attr.
func (t *table) isValueProp(name string) (string, bool) {
	if !strings.HasPrefix(name, "_") || !strings.HasSuffix(name, "_value") {
		return "", false
	}
	attr := strings.TrimSuffix(strings.TrimPrefix(name, "_"), "_value")
	_, ok := t.lookupAttrs[attr]
	return attr, ok
}

// hasProperty reports whether name can be selected/filtered on t.
func (t *table) hasProperty(name string) bool {
	if name == t.pk {
		return true
	}
	if _, ok := t.cols[name]; ok {
		return true
	}
	_, ok := t.isValueProp(name)
	return ok
}

type schema struct {
	byLogical map[string]*table
	bySet     map[string]*table
}

type tdef struct {
	logical, set, pk string
	cols             []column
	lookups          []lookup
	collections      []collection
	states           map[int][]int
	defState         int
}

func s(name string, n int) column        { return column{name: name, typ: tString, maxLen: n} }
func memo(name string) column            { return column{name: name, typ: tMemo, maxLen: 2000} }
func i(name string) column               { return column{name: name, typ: tInt} }
func dec(name string) column             { return column{name: name, typ: tDecimal} }
func money(name string) column           { return column{name: name, typ: tMoney} }
func b(name string) column               { return column{name: name, typ: tBool} }
func pick(name string) column            { return column{name: name, typ: tPicklist} }
func dt(name string) column              { return column{name: name, typ: tDateTime} }
func donly(name string) column           { return column{name: name, typ: tDateOnly} }
func ro(c column) column                 { c.readOnly = true; return c }
func lk(nav, attr, target string) lookup { return lookup{nav: nav, attr: attr, target: target} }

func addressCols(prefix string) []column {
	return []column{
		s(prefix+"_name", 200), s(prefix+"_line1", 250), s(prefix+"_line2", 250), s(prefix+"_line3", 250),
		s(prefix+"_city", 80), s(prefix+"_county", 50), s(prefix+"_stateorprovince", 50),
		s(prefix+"_postalcode", 20), s(prefix+"_country", 80), s(prefix+"_telephone1", 50),
		s(prefix+"_telephone2", 50), s(prefix+"_fax", 50), pick(prefix + "_addresstypecode"),
		s(prefix+"_postofficebox", 20), pick(prefix + "_shippingmethodcode"),
	}
}

func billShipCols(prefix string) []column {
	return []column{
		s(prefix+"_name", 200), s(prefix+"_line1", 250), s(prefix+"_line2", 250), s(prefix+"_line3", 250),
		s(prefix+"_city", 80), s(prefix+"_stateorprovince", 50), s(prefix+"_postalcode", 20),
		s(prefix+"_country", 80), s(prefix+"_telephone", 50), s(prefix+"_fax", 50), s(prefix+"_contactname", 150),
	}
}

func commonCols() []column {
	return []column{ro(dt("createdon")), ro(dt("modifiedon")), ro(column{name: "versionnumber", typ: tInt}),
		ro(dt("overriddencreatedon")), ro(i("importsequencenumber")), ro(i("timezoneruleversionnumber")),
		ro(i("utcconversiontimezonecode"))}
}

func pricingCols() []column {
	return []column{
		s("name", 300), memo("description"), money("freightamount"), money("discountamount"), dec("discountpercentage"),
		ro(money("totalamount")), ro(money("totallineitemamount")), ro(money("totaldiscountamount")),
		ro(money("totallineitemdiscountamount")), ro(money("totaltax")), ro(money("totalamountlessfreight")),
		b("ispricelocked"), ro(pick("pricingerrorcode")), pick("paymenttermscode"), pick("shippingmethodcode"),
		pick("freighttermscode"), b("willcall"), ro(dec("exchangerate")), s("emailaddress", 100),
	}
}

func lineCols() []column {
	return []column{
		b("isproductoverridden"), s("productdescription", 500), dec("quantity"), money("priceperunit"),
		b("ispriceoverridden"), money("manualdiscountamount"), money("tax"), ro(money("baseamount")),
		ro(money("extendedamount")), ro(money("volumediscountamount")), memo("description"), pick("producttypecode"),
		i("lineitemnumber"), i("sequencenumber"), dec("quantityshipped"), dec("quantitybackordered"),
		dec("quantitycancelled"), ro(pick("pricingerrorcode")), b("willcall"), donly("requestdeliveryby"),
		s("productname", 500), ro(dec("exchangerate")),
	}
}

// builtinTables is the Dynamics 365 Sales subset the app writes (the table reference pages).
func builtinTables() []tdef {
	activeInactive := map[int][]int{0: {1}, 1: {2}}
	return []tdef{
		{logical: "contact", set: "contacts", pk: "contactid", states: activeInactive,
			cols: cat([]column{s("firstname", 50), s("lastname", 50), s("middlename", 50), ro(s("fullname", 160)),
				s("emailaddress1", 100), s("emailaddress2", 100), s("emailaddress3", 100), s("telephone1", 50),
				s("telephone2", 50), s("mobilephone", 50), s("fax", 50), s("jobtitle", 100), memo("description"),
				donly("birthdate"), pick("gendercode"), b("donotemail"), s("websiteurl", 200), s("nickname", 100),
				s("employeeid", 50), s("externaluseridentifier", 50), pick("preferredcontactmethodcode"),
				pick("customertypecode"), pick("accountrolecode"), s("department", 100), s("salutation", 100),
				pick("statecode"), pick("statuscode")}, addressCols("address1"), addressCols("address2"), commonCols()),
			lookups: []lookup{lk("parentcustomerid_account", "parentcustomerid", "account"),
				lk("parentcustomerid_contact", "parentcustomerid", "contact"),
				lk("transactioncurrencyid", "transactioncurrencyid", "transactioncurrency"),
				lk("defaultpricelevelid", "defaultpricelevelid", "pricelevel")}},
		{logical: "account", set: "accounts", pk: "accountid", states: activeInactive,
			cols: cat([]column{s("name", 160), s("accountnumber", 20), s("emailaddress1", 100), s("emailaddress2", 100),
				s("telephone1", 50), s("telephone2", 50), s("fax", 50), s("websiteurl", 200), memo("description"),
				money("revenue"), i("numberofemployees"), pick("customertypecode"), pick("industrycode"),
				pick("statecode"), pick("statuscode")}, addressCols("address1"), addressCols("address2"), commonCols()),
			lookups: []lookup{lk("primarycontactid", "primarycontactid", "contact"),
				lk("parentaccountid", "parentaccountid", "account"),
				lk("transactioncurrencyid", "transactioncurrencyid", "transactioncurrency"),
				lk("defaultpricelevelid", "defaultpricelevelid", "pricelevel")}},
		{logical: "transactioncurrency", set: "transactioncurrencies", pk: "transactioncurrencyid", states: activeInactive,
			cols: cat([]column{s("isocurrencycode", 5), s("currencyname", 100), s("currencysymbol", 10),
				i("currencyprecision"), dec("exchangerate"), ro(pick("currencytype")), pick("statecode"), pick("statuscode")}, commonCols())},
		{logical: "uomschedule", set: "uomschedules", pk: "uomscheduleid", states: activeInactive,
			cols: cat([]column{s("name", 200), s("baseuomname", 100), memo("description"), pick("statecode"), pick("statuscode")}, commonCols())},
		{logical: "uom", set: "uoms", pk: "uomid",
			cols:    cat([]column{s("name", 100), dec("quantity"), ro(b("isschedulebaseuom"))}, commonCols()),
			lookups: []lookup{lk("uomscheduleid", "uomscheduleid", "uomschedule"), lk("baseuom", "baseuom", "uom")}},
		{logical: "pricelevel", set: "pricelevels", pk: "pricelevelid", states: map[int][]int{0: {100001}, 1: {100002}},
			cols: cat([]column{s("name", 100), memo("description"), donly("begindate"), donly("enddate"),
				pick("freighttermscode"), pick("paymentmethodcode"), pick("shippingmethodcode"), pick("statecode"), pick("statuscode")}, commonCols()),
			lookups: []lookup{lk("transactioncurrencyid", "transactioncurrencyid", "transactioncurrency")}},
		{logical: "product", set: "products", pk: "productid", defState: 2,
			states: map[int][]int{0: {1}, 1: {2}, 2: {0}, 3: {3}},
			cols: cat([]column{s("name", 100), s("productnumber", 100), memo("description"), money("price"),
				money("currentcost"), money("standardcost"), dec("quantityonhand"), i("quantitydecimal"),
				pick("productstructure"), pick("producttypecode"), s("vendorname", 100), s("vendorpartnumber", 100),
				s("suppliername", 100), s("vendorid", 100), dec("stockweight"), dec("stockvolume"), s("size", 200),
				s("producturl", 255), donly("validfromdate"), donly("validtodate"), column{name: "entityimage", typ: tImage},
				b("isstockitem"), b("iskit"), ro(s("hierarchypath", 450)), pick("statecode"), pick("statuscode")}, commonCols()),
			lookups: []lookup{lk("defaultuomid", "defaultuomid", "uom"), lk("defaultuomscheduleid", "defaultuomscheduleid", "uomschedule"),
				lk("parentproductid", "parentproductid", "product"), lk("pricelevelid", "pricelevelid", "pricelevel"),
				lk("transactioncurrencyid", "transactioncurrencyid", "transactioncurrency")}},
		{logical: "productpricelevel", set: "productpricelevels", pk: "productpricelevelid",
			cols: cat([]column{money("amount"), dec("percentage"), pick("pricingmethodcode"), pick("quantitysellingcode"),
				pick("roundingpolicycode"), pick("roundingoptioncode"), money("roundingoptionamount")}, commonCols()),
			lookups: []lookup{lk("pricelevelid", "pricelevelid", "pricelevel"), lk("productid", "productid", "product"),
				lk("uomid", "uomid", "uom"), lk("uomscheduleid", "uomscheduleid", "uomschedule"),
				lk("transactioncurrencyid", "transactioncurrencyid", "transactioncurrency")}},
		{logical: "salesorder", set: "salesorders", pk: "salesorderid",
			states: map[int][]int{0: {1, 2}, 1: {3}, 2: {4}, 3: {100001, 100002}, 4: {100003}},
			cols: cat([]column{s("ordernumber", 100), donly("datefulfilled"), donly("submitdate"), donly("requestdeliveryby"),
				pick("statecode"), pick("statuscode")}, pricingCols(), billShipCols("billto"), billShipCols("shipto"), commonCols()),
			lookups: []lookup{lk("customerid_account", "customerid", "account"), lk("customerid_contact", "customerid", "contact"),
				lk("pricelevelid", "pricelevelid", "pricelevel"), lk("transactioncurrencyid", "transactioncurrencyid", "transactioncurrency")},
			collections: []collection{{name: "order_details", child: "salesorderdetail", nav: "salesorderid"}}},
		{logical: "salesorderdetail", set: "salesorderdetails", pk: "salesorderdetailid",
			cols: cat([]column{ro(pick("salesorderstatecode")), ro(b("salesorderispricelocked"))}, lineCols(), commonCols()),
			lookups: []lookup{lk("salesorderid", "salesorderid", "salesorder"), lk("productid", "productid", "product"),
				lk("uomid", "uomid", "uom"), lk("transactioncurrencyid", "transactioncurrencyid", "transactioncurrency")}},
		{logical: "invoice", set: "invoices", pk: "invoiceid",
			states: map[int][]int{0: {1, 2, 4, 5, 6}, 1: {3, 7}, 2: {100001, 100002}, 3: {100003}},
			cols: cat([]column{s("invoicenumber", 100), donly("datedelivered"), donly("duedate"), pick("statecode"), pick("statuscode")},
				pricingCols(), billShipCols("billto"), billShipCols("shipto"), commonCols()),
			lookups: []lookup{lk("customerid_account", "customerid", "account"), lk("customerid_contact", "customerid", "contact"),
				lk("pricelevelid", "pricelevelid", "pricelevel"), lk("transactioncurrencyid", "transactioncurrencyid", "transactioncurrency"),
				lk("salesorderid", "salesorderid", "salesorder")},
			collections: []collection{{name: "invoice_details", child: "invoicedetail", nav: "invoiceid"}}},
		{logical: "invoicedetail", set: "invoicedetails", pk: "invoicedetailid",
			cols: cat([]column{ro(b("invoiceispricelocked")), ro(pick("invoicestatecode"))}, lineCols(), commonCols()),
			lookups: []lookup{lk("invoiceid", "invoiceid", "invoice"), lk("productid", "productid", "product"),
				lk("uomid", "uomid", "uom"), lk("transactioncurrencyid", "transactioncurrencyid", "transactioncurrency"),
				lk("salesorderdetailid", "salesorderdetailid", "salesorderdetail")}},
		// The organization's pricing settings (Learn: reference/entities/organization): one
		// row, read and updated only.
		{logical: "organization", set: "organizations", pk: "organizationid",
			cols: cat([]column{s("name", 160), i("pricingdecimalprecision"), pick("discountcalculationmethod"),
				b("oobpricecalculationenabled")}, commonCols())},
		{logical: "orderclose", set: "ordercloses", pk: "activityid", defState: 0,
			states:  map[int][]int{0: {1}, 1: {2}, 2: {3}},
			cols:    cat([]column{s("subject", 200), memo("description"), dt("actualend"), dt("actualstart"), pick("statecode"), pick("statuscode")}, commonCols()),
			lookups: []lookup{lk("salesorderid", "salesorderid", "salesorder")}},
	}
}

func cat(parts ...[]column) []column {
	var out []column
	for _, p := range parts {
		out = append(out, p...)
	}
	return out
}

var extraTypes = map[string]colType{"string": tString, "memo": tMemo, "int": tInt, "decimal": tDecimal,
	"money": tMoney, "bool": tBool, "picklist": tPicklist, "datetime": tDateTime, "date": tDateOnly}

func newSchema(o *Options) *schema {
	sc := &schema{byLogical: map[string]*table{}, bySet: map[string]*table{}}
	for _, d := range builtinTables() {
		t := &table{logical: d.logical, set: d.set, pk: d.pk, cols: map[string]*column{}, navs: map[string]*lookup{},
			lookupAttrs: map[string][]*lookup{}, collections: map[string]*collection{}, states: d.states, defState: d.defState}
		for _, c := range d.cols {
			c := c
			t.cols[c.name] = &c
		}
		for _, l := range d.lookups {
			l := l
			t.navs[l.nav] = &l
			t.lookupAttrs[l.attr] = append(t.lookupAttrs[l.attr], &l)
		}
		for _, c := range d.collections {
			c := c
			t.collections[c.name] = &c
		}
		for name, typ := range o.ExtraColumns[d.set] {
			ct, ok := extraTypes[typ]
			if !ok {
				ct = tString
			}
			t.cols[name] = &column{name: name, typ: ct, maxLen: 4000}
		}
		for _, k := range o.AlternateKeys[d.set] {
			k = append([]string(nil), k...)
			sort.Strings(k)
			t.keys = append(t.keys, k)
		}
		sc.byLogical[t.logical] = t
		sc.bySet[t.set] = t
	}
	return sc
}
