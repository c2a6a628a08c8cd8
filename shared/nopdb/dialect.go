package nopdb

import (
	"strconv"
	"strings"
)

// Providers, nopCommerce's own names for its database engines (DataSettings.DataProvider:
// src/Libraries/Nop.Data/DataProviderType.cs).
const (
	SQLServer  = "sqlserver"
	MySQL      = "mysql"
	PostgreSQL = "postgresql"
)

// dialect is what differs between the engines nopCommerce supports; every query is built
// by the same functions below from a dialect, so the three engines read the same columns
// with the same joins, filters and order.
//
// The SQL Server dialect is tested as text only (golden queries in dialect_test.go): no
// SQL Server can run where the tests run. PostgreSQL and MariaDB run the queries for real.
type dialect struct {
	provider string
	open     string // identifier quotes
	close    string
	falseLit string // boolean literals comparable with nopCommerce's bool columns
	trueLit  string
}

var dialects = map[string]*dialect{
	// SQL Server: bit columns, [bracketed] names, TOP (n), @p1 parameters.
	SQLServer: {provider: SQLServer, open: "[", close: "]", falseLit: "0", trueLit: "1"},
	// MySQL/MariaDB: tinyint(1) columns, `backquoted` names, LIMIT n, ? parameters.
	MySQL: {provider: MySQL, open: "`", close: "`", falseLit: "0", trueLit: "1"},
	// PostgreSQL: boolean columns, names kept in their case so "double-quoted", citext
	// strings, LIMIT n, $1 parameters.
	PostgreSQL: {provider: PostgreSQL, open: `"`, close: `"`, falseLit: "false", trueLit: "true"},
}

// id quotes a name: q("Order") is [Order], `Order` or "Order".
func (d *dialect) id(name string) string { return d.open + name + d.close }

// col quotes alias.Column.
func (d *dialect) col(alias, name string) string { return alias + "." + d.id(name) }

// cols quotes alias.Column for each name.
func (d *dialect) cols(alias string, names ...string) []string {
	out := make([]string, len(names))
	for i, n := range names {
		out[i] = d.col(alias, n)
	}
	return out
}

// guid reads a Guid column as its 36-character text form. SQL Server's uniqueidentifier
// comes back from the driver as 16 bytes in SQL Server's own byte order, so it is
// converted on the server; MySQL stores nopCommerce's Guids as char(36) already.
func (d *dialect) guid(expr string) string {
	switch d.provider {
	case SQLServer:
		return "CONVERT(NVARCHAR(36), " + expr + ")"
	case PostgreSQL:
		return "CAST(" + expr + " AS text)"
	}
	return expr
}

// param is the n-th (1-based) query parameter.
func (d *dialect) param(n int) string {
	switch d.provider {
	case SQLServer:
		return "@p" + strconv.Itoa(n)
	case PostgreSQL:
		return "$" + strconv.Itoa(n)
	}
	return "?"
}

// query assembles SELECT list FROM from [WHERE where] [ORDER BY order], limited to limit
// rows when limit > 0 (TOP on SQL Server, LIMIT elsewhere).
func (d *dialect) query(list []string, from, where, order string, limit int) string {
	var b strings.Builder
	b.WriteString("SELECT ")
	if limit > 0 && d.provider == SQLServer {
		b.WriteString("TOP (" + strconv.Itoa(limit) + ") ")
	}
	b.WriteString(strings.Join(list, ", "))
	b.WriteString(" FROM " + from)
	if where != "" {
		b.WriteString(" WHERE " + where)
	}
	if order != "" {
		b.WriteString(" ORDER BY " + order)
	}
	if limit > 0 && d.provider != SQLServer {
		b.WriteString(" LIMIT " + strconv.Itoa(limit))
	}
	return b.String()
}

// inList is "(1,2,3)": ids come from integer columns read by the reader, never from
// outside, so they are written as literals (SQL Server takes at most 2100 parameters).
func inList(ids []int64) string {
	var b strings.Builder
	b.WriteByte('(')
	for i, id := range ids {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteString(strconv.FormatInt(id, 10))
	}
	b.WriteByte(')')
	return b.String()
}

// customerList is the select list of a customer row (see scanCustomer).
func (d *dialect) customerList() []string {
	l := []string{d.col("c", "Id"), d.guid(d.col("c", "CustomerGuid"))}
	return append(l, d.cols("c", "Username", "Email", "FirstName", "LastName", "Company", "Phone",
		"Active", "Deleted", "CreatedOnUtc", "BillingAddress_Id", "ShippingAddress_Id")...)
}

// customersPage: the customers in role $2 (Registered) with Id > $1 (and $3, the same
// value: MySQL parameters are positional), by Id. It is
// driven by the role mapping's primary key (Customer_Id, CustomerRole_Id), so each
// page costs the same however many customers come before it.
func (d *dialect) customersPage(limit int) string {
	from := d.id("Customer_CustomerRole_Mapping") + " rm JOIN " + d.id("Customer") + " c ON " + d.col("c", "Id") + " = " + d.col("rm", "Customer_Id")
	return d.query(d.customerList(), from,
		d.col("rm", "Customer_Id")+" > "+d.param(1)+" AND "+d.col("rm", "CustomerRole_Id")+" = "+d.param(2)+" AND "+d.col("c", "Id")+" > "+d.param(3),
		d.col("rm", "Customer_Id"), limit)
}

// gdprDeletedCustomers: the first limit customers with $1 < Id <= $2 deleted with an
// empty email.
// nopCommerce's GDPR "permanent delete" (GdprService.PermanentDeleteCustomerAsync)
// empties Email and Username, sets Deleted and moves the customer from the Registered
// role to Guests, so these are not in customersPage. The id window is the one a page of
// customersPage covered, so over a whole run the Customer key is scanned once.
func (d *dialect) gdprDeletedCustomers(limit int) string {
	return d.query(d.customerList(), d.id("Customer")+" c",
		d.col("c", "Id")+" > "+d.param(1)+" AND "+d.col("c", "Id")+" <= "+d.param(2)+" AND "+d.col("c", "Deleted")+" = "+d.trueLit+
			" AND "+d.col("c", "Email")+" = ''", d.col("c", "Id"), limit)
}

// customersByID: the customers with these ids (the customers of a page of orders).
func (d *dialect) customersByID(ids []int64) string {
	return d.query(d.customerList(), d.id("Customer")+" c", d.col("c", "Id")+" IN "+inList(ids), "", 0)
}

// customerRoles: the roles of these customers (Customer_CustomerRole_Mapping).
func (d *dialect) customerRoles(ids []int64) string {
	return d.query(d.cols("m", "Customer_Id", "CustomerRole_Id"), d.id("Customer_CustomerRole_Mapping")+" m",
		d.col("m", "Customer_Id")+" IN "+inList(ids), "", 0)
}

// roles: the ids of the customer roles with these system names (nopCommerce's
// NopCustomerDefaults: "Registered", "Guests").
func (d *dialect) roles() string {
	return d.query(d.cols("r", "Id", "SystemName"), d.id("CustomerRole")+" r",
		d.col("r", "SystemName")+" IN ('Registered', 'Guests')", "", 0)
}

// addressesByID: addresses with their state/province name and country name and code.
func (d *dialect) addressesByID(ids []int64) string {
	l := d.cols("a", "Id", "FirstName", "LastName", "Email", "Company", "Address1", "Address2", "City", "County")
	l = append(l, d.col("sp", "Name"), d.col("a", "ZipPostalCode"), d.col("co", "Name"), d.col("co", "TwoLetterIsoCode"), d.col("a", "PhoneNumber"))
	from := d.id("Address") + " a LEFT JOIN " + d.id("StateProvince") + " sp ON " + d.col("sp", "Id") + " = " + d.col("a", "StateProvinceId") +
		" LEFT JOIN " + d.id("Country") + " co ON " + d.col("co", "Id") + " = " + d.col("a", "CountryId")
	return d.query(l, from, d.col("a", "Id")+" IN "+inList(ids), "", 0)
}

// productsPage: products with Id > $1, by Id.
func (d *dialect) productsPage(limit int) string {
	l := d.cols("p", "Id", "ProductTypeId", "ParentGroupedProductId", "Name", "ShortDescription", "FullDescription",
		"Sku", "Gtin", "ManufacturerPartNumber", "Price", "ProductCost", "OldPrice", "StockQuantity",
		"ManageInventoryMethodId", "Published", "Deleted", "UpdatedOnUtc")
	return d.query(l, d.id("Product")+" p", d.col("p", "Id")+" > "+d.param(1), d.col("p", "Id"), limit)
}

// productsByID: the order-item view of these products (the products of a page of order
// items, the families of a page of products).
func (d *dialect) productsByID(ids []int64) string {
	return d.query(d.cols("p", "Id", "Name", "Sku", "ProductTypeId", "ParentGroupedProductId"), d.id("Product")+" p",
		d.col("p", "Id")+" IN "+inList(ids), "", 0)
}

// associatedProducts: the products (not deleted) of these grouped products, in the order
// nopCommerce lists them (ProductService.GetAssociatedProductsAsync: DisplayOrder, Id).
func (d *dialect) associatedProducts(parents []int64) string {
	return d.query(d.cols("p", "ParentGroupedProductId", "Id"), d.id("Product")+" p",
		d.col("p", "ParentGroupedProductId")+" IN "+inList(parents)+" AND "+d.col("p", "Deleted")+" = "+d.falseLit,
		d.col("p", "ParentGroupedProductId")+", "+d.col("p", "DisplayOrder")+", "+d.col("p", "Id"), 0)
}

// pictures: the pictures of the products with $1 < Id <= $2, each product's in display
// order (its first one is its main picture).
func (d *dialect) pictures() string {
	l := []string{d.col("m", "ProductId"), d.col("pic", "Id"), d.col("pic", "MimeType"), d.col("pic", "SeoFilename")}
	from := d.id("Product_Picture_Mapping") + " m JOIN " + d.id("Picture") + " pic ON " + d.col("pic", "Id") + " = " + d.col("m", "PictureId")
	return d.query(l, from, d.col("m", "ProductId")+" > "+d.param(1)+" AND "+d.col("m", "ProductId")+" <= "+d.param(2),
		d.col("m", "ProductId")+", "+d.col("m", "DisplayOrder")+", "+d.col("m", "Id"), 0)
}

// ordersPage: the orders of store $2 with Id > $1, by Id.
func (d *dialect) ordersPage(limit int) string {
	l := []string{d.col("o", "Id"), d.guid(d.col("o", "OrderGuid"))}
	l = append(l, d.cols("o", "CustomOrderNumber", "CustomerId", "BillingAddressId", "ShippingAddressId",
		"OrderStatusId", "PaymentStatusId", "ShippingStatusId", "CustomerCurrencyCode", "CurrencyRate",
		"OrderSubtotalInclTax", "OrderSubtotalExclTax", "OrderSubTotalDiscountInclTax", "OrderSubTotalDiscountExclTax",
		"OrderShippingInclTax", "OrderShippingExclTax", "PaymentMethodAdditionalFeeInclTax", "PaymentMethodAdditionalFeeExclTax",
		"OrderTax", "OrderDiscount", "OrderTotal", "RefundedAmount", "PaymentMethodSystemName", "ShippingMethod",
		"PaidDateUtc", "CreatedOnUtc", "Deleted")...)
	return d.query(l, d.id("Order")+" o",
		d.col("o", "Id")+" > "+d.param(1)+" AND "+d.col("o", "StoreId")+" = "+d.param(2), d.col("o", "Id"), limit)
}

// orderItems: the items of the orders with $1 < OrderId <= $2.
func (d *dialect) orderItems() string {
	l := []string{d.col("oi", "OrderId"), d.col("oi", "Id"), d.guid(d.col("oi", "OrderItemGuid"))}
	l = append(l, d.cols("oi", "ProductId", "Quantity", "UnitPriceInclTax", "UnitPriceExclTax", "PriceInclTax", "PriceExclTax",
		"DiscountAmountInclTax", "DiscountAmountExclTax", "AttributeDescription")...)
	return d.query(l, d.id("OrderItem")+" oi", d.col("oi", "OrderId")+" > "+d.param(1)+" AND "+d.col("oi", "OrderId")+" <= "+d.param(2),
		d.col("oi", "OrderId")+", "+d.col("oi", "Id"), 0)
}

// currencySetting: the primary store currency setting for all stores (StoreId 0) and
// for store $1 (a per-store override), the override first.
func (d *dialect) currencySetting() string {
	return d.query(d.cols("s", "Value", "StoreId"), d.id("Setting")+" s",
		d.col("s", "Name")+" = 'currencysettings.primarystorecurrencyid' AND "+d.col("s", "StoreId")+" IN (0, "+d.param(1)+")",
		d.col("s", "StoreId")+" DESC", 0)
}

// currencyCode: Currency.CurrencyCode of the currency with Id $1.
func (d *dialect) currencyCode() string {
	return d.query(d.cols("cu", "CurrencyCode"), d.id("Currency")+" cu", d.col("cu", "Id")+" = "+d.param(1), "", 0)
}

// columns lists the columns of the current schema (INFORMATION_SCHEMA is on all three).
func (d *dialect) columns() string {
	schema := "SCHEMA_NAME()"
	switch d.provider {
	case MySQL:
		schema = "DATABASE()"
	case PostgreSQL:
		schema = "current_schema()"
	}
	return "SELECT TABLE_NAME, COLUMN_NAME FROM INFORMATION_SCHEMA.COLUMNS WHERE TABLE_SCHEMA = " + schema
}
