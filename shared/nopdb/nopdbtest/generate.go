package nopdbtest

import (
	"context"
	"database/sql"
	"fmt"
	"math/rand/v2"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/stdlib"
)

// Role ids and system names as a fresh nopCommerce install creates them
// (NopCustomerDefaults; InstallationService.InstallCustomersAndUsersAsync).
const (
	RoleAdministrators = 1
	RoleRegistered     = 3
	RoleGuests         = 4
)

// Reference ids Seed creates.
const (
	CountryUS      = 1
	CountryGB      = 2
	StateNewYork   = 1
	CurrencyUSD    = 1
	CurrencyEUR    = 2
	PrimaryStoreID = 1
)

// Insert inserts one row (column → value; nil is NULL) with parameters. Bool values go
// in as the column's type wants them on provider.
func Insert(ctx context.Context, db *sql.DB, provider, tableName string, row map[string]any) error {
	names := make([]string, 0, len(row))
	for k := range row {
		names = append(names, k)
	}
	sort.Strings(names)
	qs := make([]string, len(names))
	ph := make([]string, len(names))
	args := make([]any, len(names))
	for i, n := range names {
		qs[i] = Quote(provider, n)
		ph[i] = "?"
		if provider == PostgreSQL {
			ph[i] = "$" + strconv.Itoa(i+1)
		}
		v := row[n]
		if b, ok := v.(bool); ok && provider == MySQL {
			v = 0
			if b {
				v = 1
			}
		}
		args[i] = v
	}
	q := "INSERT INTO " + Quote(provider, tableName) + " (" + strings.Join(qs, ", ") + ") VALUES (" + strings.Join(ph, ", ") + ")"
	if _, err := db.ExecContext(ctx, q, args...); err != nil {
		return fmt.Errorf("nopdbtest: inserting into %s: %w", tableName, err)
	}
	return nil
}

// Seed inserts the reference rows every store has: the customer roles, two countries
// and a state, the currencies USD (primary, id 1) and EUR, and the primary store
// currency setting (all stores).
func Seed(ctx context.Context, db *sql.DB, provider string) error {
	b := newBulk(ctx, db, provider)
	b.add("CustomerRole", []string{"Id", "Name", "SystemName", "Active", "IsSystemRole"},
		[]any{RoleAdministrators, "Administrators", "Administrators", true, true},
		[]any{2, "Forum Moderators", "ForumModerators", true, true},
		[]any{RoleRegistered, "Registered", "Registered", true, true},
		[]any{RoleGuests, "Guests", "Guests", true, true},
		[]any{5, "Vendors", "Vendors", true, true})
	b.add("Country", []string{"Id", "Name", "TwoLetterIsoCode", "ThreeLetterIsoCode", "Published"},
		[]any{CountryUS, "United States", "US", "USA", true},
		[]any{CountryGB, "United Kingdom", "GB", "GBR", true})
	b.add("StateProvince", []string{"Id", "CountryId", "Name", "Abbreviation"}, []any{StateNewYork, CountryUS, "New York", "NY"})
	b.add("Currency", []string{"Id", "Name", "CurrencyCode", "Rate", "Published", "DisplayOrder"},
		[]any{CurrencyUSD, "US Dollar", "USD", dec(10000), true, 1},
		[]any{CurrencyEUR, "Euro", "EUR", dec(9000), true, 2})
	b.add("Setting", []string{"Id", "Name", "Value", "StoreId"}, []any{1, "currencysettings.primarystorecurrencyid", strconv.Itoa(CurrencyUSD), 0})
	return b.flushAll()
}

// Sizes sizes a generated store.
type Sizes struct {
	Customers    int     // registered customers (a tenth as many guests are added for guest orders)
	Products     int     // products in all
	GroupedShare float64 // share of Products in grouped families (a grouped product and 4 associated ones each)
	Orders       int     // orders of store 1
	MaxItems     int     // items per order: 1 to MaxItems (default 5)
	Seed         uint64  // random seed (same seed, same store)
}

// Stats says what Generate wrote.
type Stats struct {
	Customers, Guests, Addresses, Products, Grouped, Pictures, Orders, Items int
}

// Generate fills an empty nopCommerce schema (Seed included) with a consistent
// generated store: registered customers with a default address, guests, simple and
// grouped products (families of 1 grouped + 4 associated) with pictures on every other
// product, and orders of 1–MaxItems items whose totals add up as nopCommerce's do.
// Rows go in as multi-row INSERTs of 1000 rows. Ids are dense from 1: customer i has
// address i; registered customers are 1..Customers, guests follow.
func Generate(ctx context.Context, db *sql.DB, provider string, sz Sizes) (Stats, error) {
	if sz.MaxItems <= 0 {
		sz.MaxItems = 5
	}
	rng := rand.New(rand.NewPCG(sz.Seed, 0x6e6f70))
	var st Stats
	if err := Seed(ctx, db, provider); err != nil {
		return st, err
	}
	b := newBulk(ctx, db, provider)
	base := time.Date(2025, 1, 1, 8, 0, 0, 0, time.UTC)

	// Customers, their addresses and roles.
	guests := sz.Customers / 10
	custCols := []string{"Id", "CustomerGuid", "Username", "Email", "FirstName", "LastName", "Company", "Phone",
		"CountryId", "StateProvinceId", "IsTaxExempt", "Active", "Deleted", "IsSystemAccount", "CreatedOnUtc", "LastActivityDateUtc",
		"RegisteredInStoreId", "BillingAddress_Id", "ShippingAddress_Id"}
	addrCols := []string{"Id", "FirstName", "LastName", "Email", "Company", "CountryId", "StateProvinceId", "City", "Address1",
		"Address2", "ZipPostalCode", "PhoneNumber", "CreatedOnUtc"}
	for i := 1; i <= sz.Customers+guests; i++ {
		created := base.Add(time.Duration(i) * time.Minute)
		if i <= sz.Customers {
			first, last := firstNames[i%len(firstNames)], lastNames[(i/7)%len(lastNames)]
			email := fmt.Sprintf("%s.%s.%d@example.com", strings.ToLower(first), strings.ToLower(last), i)
			phone := fmt.Sprintf("+1 212 555 %04d", i%10000)
			var company any
			if i%4 == 0 {
				company = fmt.Sprintf("%s Trading %d", last, i%97)
			}
			if err := b.add("Address", addrCols, []any{i, first, last, email, company, CountryUS, StateNewYork, "New York",
				fmt.Sprintf("%d Broadway", i%900+1), nil, fmt.Sprintf("1%04d", i%10000), phone, created}); err != nil {
				return st, err
			}
			if err := b.add("Customer", custCols, []any{i, guid(rng), email, email, first, last, company, phone,
				CountryUS, StateNewYork, false, true, false, false, created, created, PrimaryStoreID, i, i}); err != nil {
				return st, err
			}
			if err := b.add("CustomerAddresses", []string{"Customer_Id", "Address_Id"}, []any{i, i}); err != nil {
				return st, err
			}
			if err := b.add("Customer_CustomerRole_Mapping", []string{"Customer_Id", "CustomerRole_Id"}, []any{i, RoleRegistered}); err != nil {
				return st, err
			}
			st.Customers++
			st.Addresses++
			continue
		}
		if err := b.add("Customer", custCols, []any{i, guid(rng), nil, nil, nil, nil, nil, nil,
			0, 0, false, true, false, false, created, created, PrimaryStoreID, nil, nil}); err != nil {
			return st, err
		}
		if err := b.add("Customer_CustomerRole_Mapping", []string{"Customer_Id", "CustomerRole_Id"}, []any{i, RoleGuests}); err != nil {
			return st, err
		}
		st.Guests++
	}

	// Products: families first, then simple products.
	families := int(float64(sz.Products)*sz.GroupedShare) / 5
	prodCols := []string{"Id", "ProductTypeId", "ParentGroupedProductId", "VisibleIndividually", "Name", "ShortDescription",
		"FullDescription", "Sku", "ManufacturerPartNumber", "Gtin", "Price", "OldPrice", "ProductCost", "ManageInventoryMethodId",
		"StockQuantity", "DisplayOrder", "Published", "Deleted", "CreatedOnUtc", "UpdatedOnUtc"}
	price := make([]int64, sz.Products+1) // ten-thousandths; 0 for grouped products
	var sellable []int
	for id := 1; id <= sz.Products; id++ {
		typ, parent, visible, order := 5, 0, true, 0
		if id <= families*5 {
			if (id-1)%5 == 0 {
				typ = 10
				st.Grouped++
			} else {
				parent, visible, order = id-(id-1)%5, false, (id-1)%5
			}
		}
		name := fmt.Sprintf("%s %s %d", adjectives[id%len(adjectives)], nouns[(id/3)%len(nouns)], id)
		var p, cost int64
		manage, stock := 0, 0
		if typ == 5 {
			p = (rng.Int64N(50000) + 100) * 100 // 1.00 to 500.99
			cost = p * 6 / 10
			manage, stock = 1, rng.IntN(1000)
			price[id] = p
			sellable = append(sellable, id)
		}
		ts := base.Add(time.Duration(id) * time.Second)
		if err := b.add("Product", prodCols, []any{id, typ, parent, visible, name, "A fine " + strings.ToLower(name) + ".", nil,
			fmt.Sprintf("SKU-%06d", id), nil, nil, dec(p), dec(0), dec(cost), manage, stock, order, true, false, ts, ts}); err != nil {
			return st, err
		}
		st.Products++
		if id%2 == 0 {
			if err := b.add("Picture", []string{"Id", "MimeType", "SeoFilename", "IsNew"}, []any{id, "image/jpeg", slug(name), false}); err != nil {
				return st, err
			}
			if err := b.add("Product_Picture_Mapping", []string{"Id", "ProductId", "PictureId", "DisplayOrder"}, []any{id, id, id, 0}); err != nil {
				return st, err
			}
			st.Pictures++
		}
	}
	if len(sellable) == 0 && sz.Orders > 0 {
		return st, fmt.Errorf("nopdbtest: %d orders need simple products", sz.Orders)
	}

	// Orders with their items and copied addresses (nopCommerce copies them at checkout).
	orderCols := []string{"Id", "OrderGuid", "CustomOrderNumber", "StoreId", "CustomerId", "BillingAddressId", "ShippingAddressId",
		"PickupInStore", "OrderStatusId", "ShippingStatusId", "PaymentStatusId", "PaymentMethodSystemName", "CustomerCurrencyCode",
		"CurrencyRate", "CustomerTaxDisplayTypeId", "OrderSubtotalInclTax", "OrderSubtotalExclTax", "OrderSubTotalDiscountInclTax",
		"OrderSubTotalDiscountExclTax", "OrderShippingInclTax", "OrderShippingExclTax", "PaymentMethodAdditionalFeeInclTax",
		"PaymentMethodAdditionalFeeExclTax", "TaxRates", "OrderTax", "OrderDiscount", "OrderTotal", "RefundedAmount", "ShippingMethod",
		"PaidDateUtc", "Deleted", "CreatedOnUtc"}
	itemCols := []string{"Id", "OrderItemGuid", "OrderId", "ProductId", "Quantity", "UnitPriceInclTax", "UnitPriceExclTax",
		"PriceInclTax", "PriceExclTax", "DiscountAmountInclTax", "DiscountAmountExclTax", "OriginalProductCost", "AttributeDescription"}
	addrID := sz.Customers
	itemID := 0
	for id := 1; id <= sz.Orders; id++ {
		created := base.Add(time.Duration(id) * 30 * time.Second)
		cust := 1 + rng.IntN(max(sz.Customers, 1))
		if guests > 0 && rng.IntN(10) == 0 {
			cust = sz.Customers + 1 + rng.IntN(guests)
		}
		first, last := firstNames[cust%len(firstNames)], lastNames[(cust/7)%len(lastNames)]
		email := fmt.Sprintf("%s.%s.%d@example.com", strings.ToLower(first), strings.ToLower(last), cust)
		addrID++
		billing := addrID
		if err := b.add("Address", addrCols, []any{billing, first, last, email, nil, CountryUS, StateNewYork, "New York",
			fmt.Sprintf("%d Broadway", cust%900+1), nil, fmt.Sprintf("1%04d", cust%10000), "+1 212 555 0100", created}); err != nil {
			return st, err
		}
		st.Addresses++
		var shipping any
		shipStatus := 10 // not required
		if id%10 < 7 {
			addrID++
			shipping = addrID
			if err := b.add("Address", addrCols, []any{addrID, first, last, email, nil, CountryUS, StateNewYork, "New York",
				fmt.Sprintf("%d Broadway", cust%900+1), nil, fmt.Sprintf("1%04d", cust%10000), "+1 212 555 0100", created}); err != nil {
				return st, err
			}
			st.Addresses++
			shipStatus = []int{20, 30, 40}[id%3]
		}
		n := 1 + rng.IntN(sz.MaxItems)
		var subIncl, subExcl int64
		for k := 0; k < n; k++ {
			itemID++
			pid := sellable[rng.IntN(len(sellable))]
			qty := 1 + rng.IntN(3)
			unitExcl := price[pid]
			unitIncl := unitExcl * 11 / 10
			lineExcl, lineIncl := unitExcl*int64(qty), unitIncl*int64(qty)
			subIncl += lineIncl
			subExcl += lineExcl
			var attrs any
			if k%3 == 1 {
				attrs = "Colour: black"
			} else {
				attrs = ""
			}
			if err := b.add("OrderItem", itemCols, []any{itemID, guid(rng), id, pid, qty, dec(unitIncl), dec(unitExcl),
				dec(lineIncl), dec(lineExcl), dec(0), dec(0), dec(unitExcl * 6 / 10), attrs}); err != nil {
				return st, err
			}
			st.Items++
		}
		shipExcl, shipIncl := int64(0), int64(0)
		if shipping != nil {
			shipExcl, shipIncl = 100000, 110000
		}
		tax := (subIncl - subExcl) + (shipIncl - shipExcl)
		total := subIncl + shipIncl
		payment, status := []int{10, 30, 30, 30, 20}[id%5], 20
		var paid any
		if payment == 30 {
			paid = created.Add(time.Minute)
			if shipStatus == 10 || shipStatus >= 30 {
				status = 30
			}
		}
		if payment == 10 {
			status = 10
		}
		if id%50 == 0 {
			status = 40
		}
		if err := b.add("Order", orderCols, []any{id, guid(rng), strconv.Itoa(id), PrimaryStoreID, cust, billing, shipping, false,
			status, shipStatus, payment, "Payments.CheckMoneyOrder", "USD", dec(10000), 0,
			dec(subIncl), dec(subExcl), dec(0), dec(0), dec(shipIncl), dec(shipExcl), dec(0), dec(0), "10:" + dec(tax).s + ";   ",
			dec(tax), dec(0), dec(total), dec(0), "Ground", paid, false, created}); err != nil {
			return st, err
		}
		st.Orders++
	}
	if err := b.flushAll(); err != nil {
		return st, err
	}
	if provider == PostgreSQL { // explicit ids leave the identity sequences behind
		for _, t := range tables {
			if t.columns[0].kind != kID {
				continue
			}
			q := fmt.Sprintf(`SELECT setval(pg_get_serial_sequence('%s', 'Id'), COALESCE((SELECT MAX("Id") FROM %s), 0) + 1, false)`,
				Quote(provider, t.name), Quote(provider, t.name))
			if _, err := db.ExecContext(ctx, q); err != nil {
				return st, fmt.Errorf("nopdbtest: resetting %s's identity: %w", t.name, err)
			}
		}
	}
	return st, nil
}

// ChangeEvery changes every n-th row (Id divisible by n) of an entity's table the way a
// store's day changes them (a registered customer's phone, a product's stock, an
// order's shipping method) and returns the ids of the changed rows the reader reads
// (registered customers, all products, store 1's orders).
//
// An order event carries its customer as the customer is now, so changing customers
// also changes the data of their orders (a product's stock does not: an order item
// carries only the product's id, name, sku, type and family). To change exactly 1 % of
// all rows with exactly that many entities to queue, change orders and products, or
// count the orders of the changed customers too.
func ChangeEvery(ctx context.Context, db *sql.DB, provider, entity string, n int) ([]int64, error) {
	q := func(s string) string { return Quote(provider, s) }
	mod := fmt.Sprintf("MOD(%s, %d) = 0", q("Id"), n)
	var sel, upd string
	switch entity {
	case "customer":
		sel = fmt.Sprintf("SELECT c.%s FROM %s c WHERE MOD(c.%s, %d) = 0 AND EXISTS (SELECT 1 FROM %s m WHERE m.%s = c.%s AND m.%s = %d) ORDER BY c.%s",
			q("Id"), q("Customer"), q("Id"), n, q("Customer_CustomerRole_Mapping"), q("Customer_Id"), q("Id"), q("CustomerRole_Id"), RoleRegistered, q("Id"))
		upd = fmt.Sprintf("UPDATE %s SET %s = CONCAT('+1 646 555 ', %s) WHERE %s", q("Customer"), q("Phone"), q("Id"), mod)
	case "product":
		sel = fmt.Sprintf("SELECT %s FROM %s WHERE %s ORDER BY %s", q("Id"), q("Product"), mod, q("Id"))
		upd = fmt.Sprintf("UPDATE %s SET %s = %s + 1 WHERE %s", q("Product"), q("StockQuantity"), q("StockQuantity"), mod)
	case "order":
		sel = fmt.Sprintf("SELECT %s FROM %s WHERE %s AND %s = %d ORDER BY %s", q("Id"), q("Order"), mod, q("StoreId"), PrimaryStoreID, q("Id"))
		upd = fmt.Sprintf("UPDATE %s SET %s = CONCAT('Next day air ', %s) WHERE %s", q("Order"), q("ShippingMethod"), q("Id"), mod)
	default:
		return nil, fmt.Errorf("nopdbtest: unknown entity %q", entity)
	}
	rows, err := db.QueryContext(ctx, sel)
	if err != nil {
		return nil, err
	}
	var ids []int64
	for rows.Next() {
		var id int64
		if err := rows.Scan(&id); err != nil {
			rows.Close()
			return nil, err
		}
		ids = append(ids, id)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, err
	}
	if _, err := db.ExecContext(ctx, upd); err != nil {
		return nil, fmt.Errorf("nopdbtest: changing %ss: %w", entity, err)
	}
	return ids, nil
}

// decimal is an exact decimal(18,4) literal.
type decimal struct{ s string }

// dec formats ten-thousandths as a decimal(18,4) value.
func dec(units int64) decimal {
	sign := ""
	if units < 0 {
		sign, units = "-", -units
	}
	return decimal{fmt.Sprintf("%s%d.%04d", sign, units/10000, units%10000)}
}

func guid(rng *rand.Rand) string {
	var b [16]byte
	for i := range b {
		b[i] = byte(rng.UintN(256))
	}
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:16])
}

func slug(name string) string {
	return strings.ToLower(strings.ReplaceAll(name, " ", "-"))
}

var (
	firstNames = []string{"Ada", "Grace", "Alan", "Edsger", "Barbara", "Donald", "Frances", "John", "Katherine", "Niklaus", "Radia", "Ken"}
	lastNames  = []string{"Lovelace", "Hopper", "Turing", "Dijkstra", "Liskov", "Knuth", "Allen", "Backus", "Johnson", "Wirth", "Perlman", "Thompson", "Ritchie"}
	adjectives = []string{"Classic", "Compact", "Deluxe", "Rugged", "Smart", "Vintage", "Wireless", "Portable"}
	nouns      = []string{"Camera", "Lens", "Tripod", "Backpack", "Speaker", "Lamp", "Kettle", "Notebook", "Watch", "Jacket"}
)

// bulk buffers rows per table and writes them fast: on PostgreSQL with COPY (text
// format, through pgx), elsewhere as multi-row INSERTs with literal values (generated
// values only: numbers, decimals, times, and strings without backslashes).
type bulk struct {
	ctx      context.Context
	db       *sql.DB
	provider string
	order    []string
	cols     map[string][]string
	rows     map[string][]string
}

const (
	bulkRows = 1000  // rows per INSERT
	copyRows = 20000 // rows per COPY
)

func newBulk(ctx context.Context, db *sql.DB, provider string) *bulk {
	return &bulk{ctx: ctx, db: db, provider: provider, cols: map[string][]string{}, rows: map[string][]string{}}
}

func (b *bulk) add(table string, cols []string, rows ...[]any) error {
	if _, ok := b.cols[table]; !ok {
		b.cols[table] = cols
		b.order = append(b.order, table)
	}
	limit := bulkRows
	if b.provider == PostgreSQL {
		limit = copyRows
	}
	for _, r := range rows {
		lits := make([]string, len(r))
		for i, v := range r {
			lits[i] = b.literal(v)
		}
		if b.provider == PostgreSQL {
			b.rows[table] = append(b.rows[table], strings.Join(lits, "\t")+"\n")
		} else {
			b.rows[table] = append(b.rows[table], "("+strings.Join(lits, ",")+")")
		}
		if len(b.rows[table]) >= limit {
			if err := b.flush(table); err != nil {
				return err
			}
		}
	}
	return nil
}

// literal is v as an SQL literal (MySQL) or a COPY text field (PostgreSQL).
func (b *bulk) literal(v any) string {
	pg := b.provider == PostgreSQL
	switch x := v.(type) {
	case nil:
		if pg {
			return "\\N"
		}
		return "NULL"
	case bool:
		if pg {
			return strconv.FormatBool(x)
		}
		if x {
			return "1"
		}
		return "0"
	case int:
		return strconv.Itoa(x)
	case int64:
		return strconv.FormatInt(x, 10)
	case decimal:
		return x.s
	case time.Time:
		if pg {
			return x.UTC().Format("2006-01-02 15:04:05.000000")
		}
		return "'" + x.UTC().Format("2006-01-02 15:04:05.000000") + "'"
	case string:
		if pg {
			return strings.NewReplacer("\\", "\\\\", "\t", "\\t", "\n", "\\n", "\r", "\\r").Replace(x)
		}
		return "'" + strings.ReplaceAll(x, "'", "''") + "'"
	}
	panic(fmt.Sprintf("nopdbtest: no literal for %T", v))
}

func (b *bulk) flush(table string) error {
	rows := b.rows[table]
	if len(rows) == 0 {
		return nil
	}
	qc := make([]string, len(b.cols[table]))
	for i, c := range b.cols[table] {
		qc[i] = Quote(b.provider, c)
	}
	var err error
	if b.provider == PostgreSQL {
		err = b.copy("COPY "+Quote(b.provider, table)+" ("+strings.Join(qc, ",")+") FROM STDIN", strings.Join(rows, ""))
	} else {
		_, err = b.db.ExecContext(b.ctx, "INSERT INTO "+Quote(b.provider, table)+" ("+strings.Join(qc, ",")+") VALUES "+strings.Join(rows, ","))
	}
	if err != nil {
		return fmt.Errorf("nopdbtest: inserting %d rows into %s: %w", len(rows), table, err)
	}
	b.rows[table] = rows[:0]
	return nil
}

// copy runs a COPY ... FROM STDIN with data on one of the pool's pgx connections.
func (b *bulk) copy(stmt, data string) error {
	conn, err := b.db.Conn(b.ctx)
	if err != nil {
		return err
	}
	defer conn.Close()
	return conn.Raw(func(dc any) error {
		c, ok := dc.(*stdlib.Conn)
		if !ok {
			return fmt.Errorf("not a pgx connection: %T", dc)
		}
		_, err := c.Conn().PgConn().CopyFrom(b.ctx, strings.NewReader(data), stmt)
		return err
	})
}

func (b *bulk) flushAll() error {
	for _, t := range b.order {
		if err := b.flush(t); err != nil {
			return err
		}
	}
	return nil
}
