package nopdb

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strconv"
	"strings"
)

// SupportedVersions names the nopCommerce versions whose schema the reader reads.
const SupportedVersions = "4.60 to 4.90"

// SchemaError says the database is not a nopCommerce 4.60–4.90 schema: a table or a
// column the reader needs is missing. Older is set when the missing piece shows a
// nopCommerce older than 4.60 (before 4.60 a customer's names, company and phone were
// GenericAttribute rows, not Customer columns: UpgradeTo460/DataMigration.cs).
type SchemaError struct {
	Table  string
	Column string // "" when the whole table is missing
	Older  bool
}

func (e *SchemaError) Error() string {
	what := fmt.Sprintf("table %q is missing", e.Table)
	if e.Column != "" {
		what = fmt.Sprintf("table %q has no column %q", e.Table, e.Column)
	}
	if e.Older {
		return "nopdb: the store database is from a nopCommerce version older than 4.60 (" + what +
			"; 4.60 moved customer names, company and phone from GenericAttribute to Customer columns): the reader needs nopCommerce " + SupportedVersions
	}
	return "nopdb: the store database is not a nopCommerce " + SupportedVersions + " schema: " + what
}

// required lists every table and column the reader reads, in the order they are checked.
var required = []struct {
	table   string
	columns []string
}{
	{"Customer", []string{"Id", "CustomerGuid", "Username", "Email", "FirstName", "LastName", "Company", "Phone",
		"Active", "Deleted", "CreatedOnUtc", "BillingAddress_Id", "ShippingAddress_Id"}},
	{"CustomerRole", []string{"Id", "SystemName"}},
	{"Customer_CustomerRole_Mapping", []string{"Customer_Id", "CustomerRole_Id"}},
	{"Address", []string{"Id", "FirstName", "LastName", "Email", "Company", "CountryId", "StateProvinceId",
		"County", "City", "Address1", "Address2", "ZipPostalCode", "PhoneNumber"}},
	{"Country", []string{"Id", "Name", "TwoLetterIsoCode"}},
	{"StateProvince", []string{"Id", "Name"}},
	{"Product", []string{"Id", "ProductTypeId", "ParentGroupedProductId", "Name", "ShortDescription", "FullDescription",
		"Sku", "Gtin", "ManufacturerPartNumber", "Price", "ProductCost", "OldPrice", "StockQuantity",
		"ManageInventoryMethodId", "Published", "Deleted", "UpdatedOnUtc", "DisplayOrder"}},
	{"Product_Picture_Mapping", []string{"Id", "ProductId", "PictureId", "DisplayOrder"}},
	{"Picture", []string{"Id", "MimeType", "SeoFilename"}},
	{"Order", []string{"Id", "OrderGuid", "CustomOrderNumber", "StoreId", "CustomerId", "BillingAddressId", "ShippingAddressId",
		"OrderStatusId", "PaymentStatusId", "ShippingStatusId", "CustomerCurrencyCode", "CurrencyRate",
		"OrderSubtotalInclTax", "OrderSubtotalExclTax", "OrderSubTotalDiscountInclTax", "OrderSubTotalDiscountExclTax",
		"OrderShippingInclTax", "OrderShippingExclTax", "PaymentMethodAdditionalFeeInclTax", "PaymentMethodAdditionalFeeExclTax",
		"OrderTax", "OrderDiscount", "OrderTotal", "RefundedAmount", "PaymentMethodSystemName", "ShippingMethod",
		"PaidDateUtc", "CreatedOnUtc", "Deleted"}},
	{"OrderItem", []string{"Id", "OrderItemGuid", "OrderId", "ProductId", "Quantity", "UnitPriceInclTax", "UnitPriceExclTax",
		"PriceInclTax", "PriceExclTax", "DiscountAmountInclTax", "DiscountAmountExclTax", "AttributeDescription"}},
	{"Setting", []string{"Name", "Value", "StoreId"}},
	{"Currency", []string{"Id", "CurrencyCode"}},
}

// since460 are the Customer columns 4.60 added (names, company, phone moved from
// GenericAttribute).
var since460 = map[string]bool{"FirstName": true, "LastName": true, "Company": true, "Phone": true}

// Check verifies that every table and column the reader reads exists. It returns a
// *SchemaError naming the first one missing (and whether the schema is older than
// 4.60), or an *Error when the database can't be queried.
func (r *Reader) Check(ctx context.Context) error {
	cols, err := queryAll(ctx, r.db, func(rows *sql.Rows, c *[2]string) error { return rows.Scan(&c[0], &c[1]) }, r.d.columns())
	if err != nil {
		return r.red.wrap("reading the store database's schema", err)
	}
	// PostgreSQL names are case-sensitive (nopCommerce creates them quoted); SQL Server
	// compares them without case under its usual collations. MySQL compares column names
	// without case, and table names as the server's lower_case_table_names says: 0 (the
	// default on Linux) with case, so a database whose tables were made in lower case
	// (a dump from Windows) does not have the tables the reader's queries name
	// (MySQL reference: identifier case sensitivity).
	foldColumns := r.d.provider != PostgreSQL
	foldTables := r.d.provider == SQLServer
	if r.d.provider == MySQL {
		var lower int
		if err := r.db.QueryRowContext(ctx, "SELECT @@lower_case_table_names").Scan(&lower); err != nil {
			return r.red.wrap("reading the store database's schema", err)
		}
		foldTables = lower != 0
	}
	fold := func(on bool, s string) string {
		if on {
			return strings.ToLower(s)
		}
		return s
	}
	tables := map[string]map[string]bool{}
	for _, tc := range cols { // table, column
		t, c := fold(foldTables, tc[0]), fold(foldColumns, tc[1])
		if tables[t] == nil {
			tables[t] = map[string]bool{}
		}
		tables[t][c] = true
	}
	for _, t := range required {
		cols, ok := tables[fold(foldTables, t.table)]
		if !ok {
			return &SchemaError{Table: t.table}
		}
		for _, c := range t.columns {
			if !cols[fold(foldColumns, c)] {
				return &SchemaError{Table: t.table, Column: c, Older: t.table == "Customer" && since460[c]}
			}
		}
	}
	return nil
}

// StoreCurrency returns the store's primary currency code: the setting
// currencysettings.primarystorecurrencyid (the store's own value before the all-stores
// one, as nopCommerce's SettingService loads it) → Currency.CurrencyCode, upper-cased.
// It is read on every call (each page of orders reads it), so a changed primary
// currency shows at once.
func (r *Reader) StoreCurrency(ctx context.Context) (string, error) {
	const op = "reading the primary store currency"
	var value string
	var store int64
	err := r.db.QueryRowContext(ctx, r.d.currencySetting(), r.storeID).Scan(&value, &store)
	if errors.Is(err, sql.ErrNoRows) {
		return "", fmt.Errorf("nopdb: %s: the setting currencysettings.primarystorecurrencyid is missing", op)
	}
	if err != nil {
		return "", r.red.wrap(op, err)
	}
	id, err := strconv.ParseInt(strings.TrimSpace(value), 10, 64)
	if err != nil {
		return "", fmt.Errorf("nopdb: %s: currencysettings.primarystorecurrencyid is %q, not a currency id", op, value)
	}
	var code sql.NullString
	err = r.db.QueryRowContext(ctx, r.d.currencyCode(), id).Scan(&code)
	if errors.Is(err, sql.ErrNoRows) {
		return "", fmt.Errorf("nopdb: %s: currency %d (currencysettings.primarystorecurrencyid) does not exist", op, id)
	}
	if err != nil {
		return "", r.red.wrap(op, err)
	}
	c := strings.ToUpper(strings.TrimSpace(code.String))
	if !isLetters(c, 3) {
		return "", fmt.Errorf("nopdb: %s: currency %d has code %q, not 3 letters (ISO 4217)", op, id, code.String)
	}
	return c, nil
}

func isLetters(s string, n int) bool {
	if len(s) != n {
		return false
	}
	for i := 0; i < n; i++ {
		if s[i] < 'A' || s[i] > 'Z' {
			return false
		}
	}
	return true
}
