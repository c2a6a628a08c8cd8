package nopdb

import (
	"bytes"
	"cmp"
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/nopsync/nopsync/shared/dataverse"
	"github.com/nopsync/nopsync/shared/nop"
	"github.com/nopsync/nopsync/shared/state"
)

// Page limits.
const (
	DefaultPageSize = 500
	MaxPageSize     = 5000
)

// Dataverse limits the reader checks so a row that can't be written is a failure with its
// reason here rather than a refused write later.
const (
	// maxMoneyUnits is 1,000,000,000,000 in ten-thousandths: the range Dataverse's money
	// columns on products and orders accept (0 to 1,000,000,000,000).
	maxMoneyUnits = 1_000_000_000_000 * 10000
)

// maxID is the largest nopCommerce id (Id columns are C# int).
const maxID = 1<<31 - 1

// RowFailure is a row that could not become a valid event, and why.
type RowFailure struct {
	Entity Entity
	ID     string // the nopCommerce id, decimal
	Reason string
}

// Page is one page of rows read by ReadPage.
type Page struct {
	Events   []*nop.Event // "<entity>.updated" or "<entity>.deleted", validated as intake validates
	Hashes   []string     // DataHash of each event's data, same order
	Failures []RowFailure // rows that could not become a valid event
	Rows     int          // rows of the entity read (events + failures)
	Last     int64        // the last primary key read: the cursor of the next page
	Done     bool         // no rows after Last
}

// querier is a read-only transaction, or the pool on SQL Server (whose driver has no
// read-only transactions; ApplicationIntent=ReadOnly stands in).
type querier interface {
	QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error)
}

// ReadPage reads up to limit rows of entity with primary key > after, in key order, and
// returns their events (see Page). limit <= 0 means DefaultPageSize; it is capped at
// MaxPageSize. Customers are the registered ones (of any store: nopCommerce shares
// customers between stores), up to limit of them, plus the GDPR-deleted customers whose
// ids fall among them; products all; orders those of Options.StoreID.
//
// A row whose data can't make a valid event (odd data) is a RowFailure, never an
// error; an error means the page could not be read at all (connection, schema) and
// nothing of it should be used. On PostgreSQL and MySQL a page is read in one read-only
// repeatable-read transaction, so an order and its items are of the same moment; on SQL
// Server (whose driver has no read-only transactions) its queries run one after another.
func (r *Reader) ReadPage(ctx context.Context, entity Entity, after int64, limit int) (Page, error) {
	if _, ok := nop.ParseEntity(string(entity)); !ok {
		return Page{}, fmt.Errorf("nopdb: unknown entity %q", entity)
	}
	if limit <= 0 {
		limit = DefaultPageSize
	}
	limit = min(limit, MaxPageSize)
	if after >= maxID { // nopCommerce ids are C# ints: nothing lies beyond
		return Page{Last: after, Done: true}, nil
	}
	after = max(after, 0)
	op := "reading " + string(entity) + "s"
	var currency string
	if entity == state.Order {
		c, err := r.StoreCurrency(ctx)
		if err != nil {
			return Page{}, err
		}
		currency = c
	}
	var q querier = r.db
	if r.d.provider != SQLServer {
		tx, err := r.db.BeginTx(ctx, &sql.TxOptions{ReadOnly: true, Isolation: sql.LevelRepeatableRead})
		if err != nil {
			return Page{}, r.red.wrap(op, err)
		}
		defer tx.Rollback() //nolint:errcheck // read-only: nothing to keep
		q = tx
	}
	pb := &pageBuilder{r: r, entity: entity, at: r.now().UTC().Format("2006-01-02T15:04:05.000Z")}
	var err error
	switch entity {
	case state.Customer:
		err = r.readCustomers(ctx, q, pb, after, limit)
	case state.Product:
		err = r.readProducts(ctx, q, pb, after, limit)
	case state.Order:
		err = r.readOrders(ctx, q, pb, after, limit, currency)
	default:
		return Page{}, fmt.Errorf("nopdb: unknown entity %q", entity)
	}
	if err != nil {
		return Page{}, r.red.wrap(op, err)
	}
	pb.finish()
	if entity != state.Customer { // customers set Done themselves
		pb.page.Done = pb.page.Rows < limit
	}
	if pb.page.Rows == 0 && pb.page.Last < after {
		pb.page.Last = after
	}
	return pb.page, nil
}

// pageBuilder turns entity data into validated events: rows are collected in key order
// (add, fail) and their events built by finish, on up to maxBuilders goroutines (JSON
// encoding and validation are most of a page's CPU).
type pageBuilder struct {
	r      *Reader
	entity Entity
	at     string // occurredOnUtc: the time the page was read
	page   Page
	rows   []pendingRow
}

// pendingRow is one row read: its data, or why it can't be an event.
type pendingRow struct {
	id      int64
	deleted bool
	data    any
	reason  string
	ev      *nop.Event
	hash    string
}

const maxBuilders = 4

func (pb *pageBuilder) fail(id int64, format string, args ...any) {
	pb.rows = append(pb.rows, pendingRow{id: id, reason: fmt.Sprintf(format, args...)})
}

func (pb *pageBuilder) add(id int64, deleted bool, data any) {
	pb.rows = append(pb.rows, pendingRow{id: id, deleted: deleted, data: data})
}

// finish builds the events of the rows added and fills page.Events, Hashes and Failures
// in key order.
func (pb *pageBuilder) finish() {
	var next atomic.Int64
	var wg sync.WaitGroup
	for range min(runtime.GOMAXPROCS(0), maxBuilders, max(len(pb.rows)/50, 1)) {
		wg.Go(func() {
			for {
				i := int(next.Add(1) - 1)
				if i >= len(pb.rows) {
					return
				}
				if pb.rows[i].reason == "" {
					pb.build(&pb.rows[i])
				}
			}
		})
	}
	wg.Wait()
	for i := range pb.rows {
		p := &pb.rows[i]
		if p.reason != "" {
			pb.page.Failures = append(pb.page.Failures, RowFailure{Entity: pb.entity, ID: strconv.FormatInt(p.id, 10), Reason: p.reason})
			continue
		}
		pb.page.Events = append(pb.page.Events, p.ev)
		pb.page.Hashes = append(pb.page.Hashes, p.hash)
	}
	pb.rows = nil
}

// build makes the event of one row: data marshalled, hashed, wrapped in an event and run
// through nop.DecodeRequest (intake's own validation); a refusal becomes its reason.
func (pb *pageBuilder) build(p *pendingRow) {
	// Without HTML escaping: json.Marshal writes each <, > and & as six bytes, which took a
	// product description full of HTML over the event size limit an emitter's event of the
	// same data stays under.
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(p.data); err != nil {
		p.reason = fmt.Sprintf("encoding its data: %v", err)
		return
	}
	raw := bytes.TrimSuffix(buf.Bytes(), []byte("\n"))
	hash := compactHash(raw) // the encoder's output is compact already: DataHash(raw) without the copy
	action := "updated"
	if p.deleted {
		action = "deleted"
	}
	var b strings.Builder
	b.Grow(len(raw) + 160)
	b.WriteString(`{"id":"`)
	b.WriteString(EventID(pb.entity, p.id, hash))
	b.WriteString(`","type":"`)
	b.WriteString(string(pb.entity) + "." + action)
	b.WriteString(`","occurredOnUtc":"`)
	b.WriteString(pb.at)
	b.WriteString(`","storeId":`)
	b.WriteString(strconv.Itoa(pb.r.storeID))
	b.WriteString(`,"data":`)
	b.Write(raw)
	b.WriteString("}")
	evs, err := nop.DecodeRequest(pb.entity, []byte(b.String()))
	if err != nil {
		var ve *nop.ValidationError
		switch {
		case errors.As(err, &ve) && ve.Field != "":
			p.reason = ve.Field + ": " + ve.Message
		case errors.Is(err, nop.ErrTooLarge):
			p.reason = fmt.Sprintf("its event is %d bytes, over the %d an event may have", b.Len(), nop.MaxEventBytes)
		default:
			p.reason = err.Error()
		}
		return
	}
	p.ev, p.hash = evs[0], hash
}

// checkMoney returns an error for an amount outside [0, 1,000,000,000,000].
func checkMoney(field string, m nop.Money) error {
	if m.Units() < 0 || m.Units() > maxMoneyUnits {
		return fmt.Errorf("%s %s is beyond Dataverse's money range (0 to 1000000000000)", field, m.StringFixed(4))
	}
	return nil
}

func checkEmail(field string, email *string) error {
	if email == nil {
		return nil
	}
	return dataverse.CheckContactEmail(field, *email)
}

// ---- customers

type customerRow struct {
	id                                                 int64
	guid, username, email, first, last, company, phone sql.NullString
	active, deleted                                    nbool
	created                                            sql.NullTime
	billing, shipping                                  sql.NullInt64
	guest, registered                                  bool
}

// customers reads customer rows with query and sets their Guests and Registered flags.
func (r *Reader) customers(ctx context.Context, q querier, query string, args ...any) ([]customerRow, error) {
	cs, err := queryAll(ctx, q, scanCustomer, query, args...)
	if err != nil || len(cs) == 0 {
		return cs, err
	}
	roles, err := r.roleIDs(ctx, q)
	if err != nil {
		return nil, err
	}
	at := make(map[int64]*customerRow, len(cs))
	ids := make([]int64, len(cs))
	for i := range cs {
		at[cs[i].id] = &cs[i]
		ids[i] = cs[i].id
	}
	for len(ids) > 0 {
		n := min(len(ids), 1000)
		links, err := queryAll(ctx, q, scanPair, r.d.customerRoles(ids[:n]))
		if err != nil {
			return nil, err
		}
		for _, l := range links { // customer id, role id
			if c := at[l[0]]; c != nil {
				c.guest = c.guest || l[1] == roles.guests
				c.registered = c.registered || l[1] == roles.registered
			}
		}
		ids = ids[n:]
	}
	return cs, nil
}

// roleIDs are the ids of the Registered and Guests customer roles.
type roleIDs struct{ registered, guests int64 }

func (r *Reader) roleIDs(ctx context.Context, q querier) (roleIDs, error) {
	r.mu.Lock()
	cached := r.roles
	r.mu.Unlock()
	if cached.registered != 0 {
		return cached, nil
	}
	type roleRow struct {
		id   int64
		name string
	}
	all, err := queryAll(ctx, q, func(rows *sql.Rows, x *roleRow) error { return rows.Scan(&x.id, &x.name) }, r.d.roles())
	if err != nil {
		return roleIDs{}, err
	}
	var ids roleIDs
	for _, x := range all {
		switch x.name {
		case "Registered":
			ids.registered = x.id
		case "Guests":
			ids.guests = x.id
		}
	}
	if ids.registered == 0 {
		return roleIDs{}, errors.New("the customer role with system name Registered is missing (CustomerRole)")
	}
	r.mu.Lock()
	r.roles = ids
	r.mu.Unlock()
	return ids, nil
}

// scanCustomer scans a row of customerList.
func scanCustomer(rows *sql.Rows, c *customerRow) error {
	return rows.Scan(&c.id, &c.guid, &c.username, &c.email, &c.first, &c.last, &c.company, &c.phone,
		&c.active, &c.deleted, &c.created, &c.billing, &c.shipping)
}

// addressIDs are the customers' main address ids: billing, else shipping.
func (c *customerRow) addressID() int64 {
	switch {
	case c.billing.Valid && c.billing.Int64 > 0:
		return c.billing.Int64
	case c.shipping.Valid && c.shipping.Int64 > 0:
		return c.shipping.Int64
	}
	return 0
}

// customer is the customer object of docs/events.md. The customer's main address is its
// default billing address, else its default shipping address (Customer.BillingAddress_Id,
// ShippingAddress_Id), else null.
func (c *customerRow) customer(addrs map[int64]*nop.Address) nop.Customer {
	out := nop.Customer{
		ID:           int(c.id),
		CustomerGUID: strings.ToLower(c.guid.String),
		Email:        str(c.email),
		Username:     str(c.username),
		FirstName:    str(c.first),
		LastName:     str(c.last),
		Company:      str(c.company),
		Phone:        str(c.phone),
		IsGuest:      c.guest,
		IsRegistered: c.registered,
		Active:       c.active.V,
		Deleted:      c.deleted.V,
		Address:      addrs[c.addressID()],
	}
	if c.created.Valid {
		out.CreatedOnUtc = utc(c.created.Time)
	}
	return out
}

func (r *Reader) readCustomers(ctx context.Context, q querier, pb *pageBuilder, after int64, limit int) error {
	roles, err := r.roleIDs(ctx, q)
	if err != nil {
		return err
	}
	cs, err := r.customers(ctx, q, r.d.customersPage(limit), after, roles.registered, after)
	if err != nil {
		return err
	}
	// GDPR-deleted customers in the same id window (to the end on the last page).
	upper := int64(maxID)
	pb.page.Done = len(cs) < limit
	if !pb.page.Done {
		upper = cs[len(cs)-1].id
	}
	gone, err := r.customers(ctx, q, r.d.gdprDeletedCustomers(limit), after, upper)
	if err != nil {
		return err
	}
	if len(gone) == limit {
		// As many as a page holds (a bulk GDPR delete; the Customer table is mostly
		// guests): the page ends at the last one read, and the registered customers after
		// it come on the next page, so a page stays within twice its size.
		upper = gone[len(gone)-1].id
		pb.page.Done = false
		cs = slices.DeleteFunc(cs, func(c customerRow) bool { return c.id > upper })
	}
	if len(gone) > 0 {
		seen := make(map[int64]bool, len(cs))
		for i := range cs {
			seen[cs[i].id] = true
		}
		for _, g := range gone {
			if !seen[g.id] {
				cs = append(cs, g)
			}
		}
		slices.SortFunc(cs, func(a, b customerRow) int { return cmp.Compare(a.id, b.id) })
	}
	if !pb.page.Done {
		pb.page.Last = upper
	}
	ids := make([]int64, 0, len(cs))
	for i := range cs {
		if a := cs[i].addressID(); a > 0 {
			ids = append(ids, a)
		}
	}
	addrs, err := r.addresses(ctx, q, ids)
	if err != nil {
		return err
	}
	for i := range cs {
		c := &cs[i]
		pb.page.Rows++
		pb.page.Last = c.id
		data := c.customer(addrs)
		// A deleted customer is a delete whatever its email (nopCommerce may have
		// suffixed it with "-DELETED", or emptied it in a GDPR delete).
		if !data.Deleted {
			if err := checkEmail("email", data.Email); err != nil {
				pb.fail(c.id, "%v", err)
				continue
			}
		}
		pb.add(c.id, data.Deleted, &data)
	}
	return nil
}

// ---- addresses

// addresses reads addresses by id with their country and state/province.
func (r *Reader) addresses(ctx context.Context, q querier, ids []int64) (map[int64]*nop.Address, error) {
	out := map[int64]*nop.Address{}
	ids = uniq(ids)
	for len(ids) > 0 {
		n := min(len(ids), 1000)
		type addressRow struct {
			id int64
			f  [13]sql.NullString
		}
		as, err := queryAll(ctx, q, func(rows *sql.Rows, a *addressRow) error {
			f := &a.f
			return rows.Scan(&a.id, &f[0], &f[1], &f[2], &f[3], &f[4], &f[5], &f[6], &f[7], &f[8], &f[9], &f[10], &f[11], &f[12])
		}, r.d.addressesByID(ids[:n]))
		if err != nil {
			return nil, err
		}
		for _, a := range as {
			f := &a.f
			out[a.id] = &nop.Address{FirstName: str(f[0]), LastName: str(f[1]), Email: str(f[2]), Company: str(f[3]),
				Address1: str(f[4]), Address2: str(f[5]), City: str(f[6]), County: str(f[7]), StateProvince: str(f[8]),
				ZipPostalCode: str(f[9]), Country: str(f[10]), CountryIsoCode: str(f[11]), Phone: str(f[12])}
		}
		ids = ids[n:]
	}
	return out, nil
}

func uniq(ids []int64) []int64 {
	seen := make(map[int64]bool, len(ids))
	out := ids[:0:0]
	for _, id := range ids {
		if id > 0 && !seen[id] {
			seen[id] = true
			out = append(out, id)
		}
	}
	return out
}

// ---- products

type productRow struct {
	id                                int64
	typ, parent                       sql.NullInt64
	name, short, full, sku, gtin, mpn sql.NullString
	price, cost, old                  nmoney
	stock, manage                     sql.NullInt64
	published, deleted                nbool
	updated                           sql.NullTime
	familyID, familyType              sql.NullInt64
}

func (r *Reader) readProducts(ctx context.Context, q querier, pb *pageBuilder, after int64, limit int) error {
	ps, err := queryAll(ctx, q, func(rows *sql.Rows, p *productRow) error {
		return rows.Scan(&p.id, &p.typ, &p.parent, &p.name, &p.short, &p.full, &p.sku, &p.gtin, &p.mpn,
			&p.price, &p.cost, &p.old, &p.stock, &p.manage, &p.published, &p.deleted, &p.updated)
	}, r.d.productsPage(limit), after)
	if err != nil {
		return err
	}
	if len(ps) == 0 {
		return nil
	}
	last := ps[len(ps)-1].id

	var parents []int64
	for i := range ps {
		if ps[i].parent.Int64 > 0 {
			parents = append(parents, ps[i].parent.Int64)
		}
	}
	families, err := r.productsByID(ctx, q, parents)
	if err != nil {
		return err
	}
	for i := range ps {
		if f := families[ps[i].parent.Int64]; f != nil {
			ps[i].familyID, ps[i].familyType = sql.NullInt64{Int64: f.id, Valid: true}, f.typ
		}
	}

	var grouped []int64
	for i := range ps {
		if ps[i].typ.Int64 == nop.ProductTypeGrouped {
			grouped = append(grouped, ps[i].id)
		}
	}
	assoc := map[int64][]int{}
	for len(grouped) > 0 {
		n := min(len(grouped), 1000)
		links, err := queryAll(ctx, q, scanPair, r.d.associatedProducts(grouped[:n]))
		if err != nil {
			return err
		}
		for _, l := range links { // grouped product id, associated product id
			assoc[l[0]] = append(assoc[l[0]], int(l[1]))
		}
		grouped = grouped[n:]
	}

	pictures := map[int64]string{}
	if r.storeURL != "" {
		type pictureRow struct {
			product, picture int64
			mime, seo        sql.NullString
		}
		pics, err := queryAll(ctx, q, func(rows *sql.Rows, p *pictureRow) error {
			return rows.Scan(&p.product, &p.picture, &p.mime, &p.seo)
		}, r.d.pictures(), after, last)
		if err != nil {
			return err
		}
		for _, p := range pics {
			if _, ok := pictures[p.product]; !ok {
				pictures[p.product] = r.pictureURL(p.picture, p.mime.String, p.seo.String)
			}
		}
	}

	for i := range ps {
		p := &ps[i]
		pb.page.Rows++
		pb.page.Last = p.id
		data := nop.Product{
			ID:                     int(p.id),
			ProductType:            int(p.typ.Int64),
			ParentGroupedProductID: int(p.parent.Int64),
			ShortDescription:       str(p.short),
			FullDescription:        str(p.full),
			Sku:                    str(p.sku),
			Gtin:                   str(p.gtin),
			ManufacturerPartNumber: str(p.mpn),
			Price:                  p.price.V,
			ProductCost:            p.cost.V,
			OldPrice:               p.old.V,
			StockQuantity:          int(p.stock.Int64),
			ManageInventoryMethod:  int(p.manage.Int64),
			Published:              p.published.V,
			Deleted:                p.deleted.V,
			PictureURLs:            []string{},
			AssociatedProductIDs:   []int{},
		}
		if p.name.Valid {
			data.Name = p.name.String
		}
		if p.updated.Valid {
			data.UpdatedOnUtc = utc(p.updated.Time)
		}
		if u, ok := pictures[p.id]; ok {
			data.PictureURLs = append(data.PictureURLs, u)
		}
		if data.ProductType == nop.ProductTypeGrouped {
			data.AssociatedProductIDs = append(data.AssociatedProductIDs, assoc[p.id]...)
		}
		if reason := productProblem(p, &data); reason != "" {
			pb.fail(p.id, "%s", reason)
			continue
		}
		pb.add(p.id, data.Deleted, &data)
	}
	return nil
}

// itemProduct is the product of an order item as it is now.
type itemProduct struct {
	id          int64
	name, sku   sql.NullString
	typ, parent sql.NullInt64
}

// productsByID reads products by id (their order-item view).
func (r *Reader) productsByID(ctx context.Context, q querier, ids []int64) (map[int64]*itemProduct, error) {
	out := map[int64]*itemProduct{}
	ids = uniq(ids)
	for len(ids) > 0 {
		n := min(len(ids), 1000)
		ps, err := queryAll(ctx, q, func(rows *sql.Rows, p *itemProduct) error {
			return rows.Scan(&p.id, &p.name, &p.sku, &p.typ, &p.parent)
		}, r.d.productsByID(ids[:n]))
		if err != nil {
			return nil, err
		}
		for i := range ps {
			out[ps[i].id] = &ps[i]
		}
		ids = ids[n:]
	}
	return out, nil
}

// productProblem says why a product row can't be sent, or "".
func productProblem(p *productRow, data *nop.Product) string {
	if !p.name.Valid || strings.TrimSpace(p.name.String) == "" {
		return "the product has no name"
	}
	if data.Deleted { // a delete needs neither a family nor amounts Dataverse takes
		return ""
	}
	if data.ParentGroupedProductID > 0 && data.ParentGroupedProductID != data.ID {
		switch {
		case !p.familyID.Valid:
			return fmt.Sprintf("its product family (grouped product %d, ParentGroupedProductId) does not exist", data.ParentGroupedProductID)
		case p.familyType.Int64 != nop.ProductTypeGrouped:
			return fmt.Sprintf("its product family %d (ParentGroupedProductId) is not a grouped product (ProductTypeId %d)", data.ParentGroupedProductID, p.familyType.Int64)
		}
	}
	for _, f := range []struct {
		name string
		m    nop.Money
	}{{"price", data.Price}, {"productCost", data.ProductCost}, {"oldPrice", data.OldPrice}} {
		if err := checkMoney(f.name, f.m); err != nil {
			return err.Error()
		}
	}
	return ""
}

// pictureURL is the URL nopCommerce serves a picture at in full size
// (src/Libraries/Nop.Services/Media/PictureService.cs, GetPictureUrlAsync with
// targetSize 0): {store}/images/thumbs/{Id:0000000}_{SeoFilename}.{extension}, without
// "_{SeoFilename}" when it is empty; the extension comes from the MIME type
// (GetFileExtensionFromMimeTypeAsync).
func (r *Reader) pictureURL(id int64, mime, seo string) string {
	ext := mime
	if i := strings.LastIndexByte(ext, '/'); i >= 0 {
		ext = ext[i+1:]
	}
	switch ext {
	case "pjpeg":
		ext = "jpg"
	case "x-png":
		ext = "png"
	case "x-icon":
		ext = "ico"
	}
	name := fmt.Sprintf("%07d", id)
	if seo != "" {
		name += "_" + seo
	}
	return r.storeURL + "/images/thumbs/" + name + "." + ext
}

// ---- orders

type orderRow struct {
	id                              int64
	guid, number                    sql.NullString
	customer, billing, shipping     sql.NullInt64
	status, payment, shippingStatus sql.NullInt64
	customerCurrency                sql.NullString
	rate                            nmoney
	amounts                         [12]nmoney
	paymentMethod, shippingMethod   sql.NullString
	paid, created                   sql.NullTime
	deleted                         nbool
}

// orderAmountNames are the order's money fields in orderRow.amounts order.
var orderAmountNames = [12]string{"orderSubtotalInclTax", "orderSubtotalExclTax", "orderSubTotalDiscountInclTax",
	"orderSubTotalDiscountExclTax", "orderShippingInclTax", "orderShippingExclTax", "paymentMethodAdditionalFeeInclTax",
	"paymentMethodAdditionalFeeExclTax", "orderTax", "orderDiscount", "orderTotal", "refundedAmount"}

type itemRow struct {
	orderID, id         int64
	guid                sql.NullString
	productID, quantity sql.NullInt64
	amounts             [6]nmoney
	attributes          sql.NullString
	pid                 sql.NullInt64
	pname, psku         sql.NullString
	ptype, pparent      sql.NullInt64
}

var itemAmountNames = [6]string{"unitPriceInclTax", "unitPriceExclTax", "priceInclTax", "priceExclTax", "discountAmountInclTax", "discountAmountExclTax"}

func (r *Reader) readOrders(ctx context.Context, q querier, pb *pageBuilder, after int64, limit int, currency string) error {
	os, err := queryAll(ctx, q, func(rows *sql.Rows, o *orderRow) error {
		a := &o.amounts
		return rows.Scan(&o.id, &o.guid, &o.number, &o.customer, &o.billing, &o.shipping,
			&o.status, &o.payment, &o.shippingStatus, &o.customerCurrency, &o.rate,
			&a[0], &a[1], &a[2], &a[3], &a[4], &a[5], &a[6], &a[7], &a[8], &a[9], &a[10], &a[11],
			&o.paymentMethod, &o.shippingMethod, &o.paid, &o.created, &o.deleted)
	}, r.d.ordersPage(limit), after, r.storeID)
	if err != nil {
		return err
	}
	if len(os) == 0 {
		return nil
	}
	last := os[len(os)-1].id

	its, err := queryAll(ctx, q, func(rows *sql.Rows, it *itemRow) error {
		a := &it.amounts
		return rows.Scan(&it.orderID, &it.id, &it.guid, &it.productID, &it.quantity,
			&a[0], &a[1], &a[2], &a[3], &a[4], &a[5], &it.attributes)
	}, r.d.orderItems(), after, last)
	if err != nil {
		return err
	}
	items := map[int64][]itemRow{}
	for _, it := range its {
		items[it.orderID] = append(items[it.orderID], it)
	}

	var productIDs []int64
	for _, its := range items {
		for _, it := range its {
			productIDs = append(productIDs, it.productID.Int64)
		}
	}
	products, err := r.productsByID(ctx, q, productIDs)
	if err != nil {
		return err
	}
	for _, its := range items {
		for i := range its {
			if p := products[its[i].productID.Int64]; p != nil {
				its[i].pid = sql.NullInt64{Int64: p.id, Valid: true}
				its[i].pname, its[i].psku, its[i].ptype, its[i].pparent = p.name, p.sku, p.typ, p.parent
			}
		}
	}

	var custIDs []int64
	for i := range os {
		custIDs = append(custIDs, os[i].customer.Int64)
	}
	customers := map[int64]*customerRow{}
	custIDs = uniq(custIDs)
	for len(custIDs) > 0 {
		n := min(len(custIDs), 1000)
		cs, err := r.customers(ctx, q, r.d.customersByID(custIDs[:n]))
		if err != nil {
			return err
		}
		for i := range cs {
			customers[cs[i].id] = &cs[i]
		}
		custIDs = custIDs[n:]
	}
	var addrIDs []int64
	for i := range os {
		addrIDs = append(addrIDs, os[i].billing.Int64, os[i].shipping.Int64)
		if c := customers[os[i].customer.Int64]; c != nil {
			addrIDs = append(addrIDs, c.addressID())
		}
	}
	addrs, err := r.addresses(ctx, q, addrIDs)
	if err != nil {
		return err
	}

	for i := range os {
		o := &os[i]
		pb.page.Rows++
		pb.page.Last = o.id
		data, reason := r.order(o, items[o.id], customers, addrs, currency)
		if reason != "" {
			pb.fail(o.id, "%s", reason)
			continue
		}
		pb.add(o.id, data.Deleted, data)
	}
	return nil
}

// order builds the order object of docs/events.md, or says why it can't.
func (r *Reader) order(o *orderRow, items []itemRow, customers map[int64]*customerRow, addrs map[int64]*nop.Address, currency string) (*nop.Order, string) {
	c := customers[o.customer.Int64]
	if c == nil {
		return nil, fmt.Sprintf("its customer %d does not exist", o.customer.Int64)
	}
	billing := addrs[o.billing.Int64]
	if billing == nil {
		return nil, fmt.Sprintf("its billing address %d does not exist", o.billing.Int64)
	}
	data := &nop.Order{
		ID:                      int(o.id),
		OrderGUID:               strings.ToLower(o.guid.String),
		CustomOrderNumber:       o.number.String,
		Customer:                c.customer(addrs),
		CurrencyCode:            currency,
		CustomerCurrencyCode:    strings.TrimSpace(o.customerCurrency.String),
		CurrencyRate:            o.rate.V,
		OrderStatus:             int(o.status.Int64),
		PaymentStatus:           int(o.payment.Int64),
		ShippingStatus:          int(o.shippingStatus.Int64),
		PaymentMethodSystemName: str(o.paymentMethod),
		ShippingMethod:          str(o.shippingMethod),
		Deleted:                 o.deleted.V,
		BillingAddress:          *billing,
		Items:                   make([]nop.OrderItem, 0, len(items)),
	}
	// CustomOrderNumber is set just after the order's first insert; before that (and
	// with an empty mask) the number people see is the id (CustomNumberFormatter).
	if strings.TrimSpace(data.CustomOrderNumber) == "" {
		data.CustomOrderNumber = strconv.FormatInt(o.id, 10)
	}
	if data.CustomerCurrencyCode == "" {
		data.CustomerCurrencyCode = currency
	}
	if o.shipping.Valid && o.shipping.Int64 > 0 {
		s := addrs[o.shipping.Int64]
		if s == nil {
			return nil, fmt.Sprintf("its shipping address %d does not exist", o.shipping.Int64)
		}
		data.ShippingAddress = s
	}
	if o.paid.Valid {
		t := utc(o.paid.Time)
		data.PaidDateUtc = &t
	}
	if o.created.Valid {
		data.CreatedOnUtc = utc(o.created.Time)
	}
	amounts := [12]*nop.Money{&data.OrderSubtotalInclTax, &data.OrderSubtotalExclTax, &data.OrderSubTotalDiscountInclTax,
		&data.OrderSubTotalDiscountExclTax, &data.OrderShippingInclTax, &data.OrderShippingExclTax,
		&data.PaymentMethodAdditionalFeeInclTax, &data.PaymentMethodAdditionalFeeExclTax, &data.OrderTax,
		&data.OrderDiscount, &data.OrderTotal, &data.RefundedAmount}
	for i := range 12 {
		*amounts[i] = o.amounts[i].V
	}
	if len(items) == 0 {
		return nil, "the order has no items (an order being placed gets its items just after its own row; it is read again next run)"
	}
	for _, it := range items {
		if !it.pid.Valid {
			return nil, fmt.Sprintf("item %d: its product %d does not exist", it.id, it.productID.Int64)
		}
		if !it.pname.Valid || strings.TrimSpace(it.pname.String) == "" {
			return nil, fmt.Sprintf("item %d: its product %d has no name", it.id, it.pid.Int64)
		}
		oi := nop.OrderItem{
			ID:            int(it.id),
			OrderItemGUID: strings.ToLower(it.guid.String),
			Product: nop.ItemProduct{ID: int(it.pid.Int64), Name: it.pname.String, Sku: str(it.psku),
				ProductType: int(it.ptype.Int64), ParentGroupedProductID: int(it.pparent.Int64)},
			Quantity:              int(it.quantity.Int64),
			UnitPriceInclTax:      it.amounts[0].V,
			UnitPriceExclTax:      it.amounts[1].V,
			PriceInclTax:          it.amounts[2].V,
			PriceExclTax:          it.amounts[3].V,
			DiscountAmountInclTax: it.amounts[4].V,
			DiscountAmountExclTax: it.amounts[5].V,
			AttributeDescription:  str(it.attributes),
		}
		if oi.AttributeDescription != nil && *oi.AttributeDescription == "" {
			oi.AttributeDescription = nil // nopCommerce stores "" for an item without attributes
		}
		if !data.Deleted {
			for k, m := range it.amounts {
				if err := checkMoney(fmt.Sprintf("item %d: %s", it.id, itemAmountNames[k]), m.V); err != nil {
					return nil, err.Error()
				}
			}
		}
		data.Items = append(data.Items, oi)
	}
	if !data.Deleted {
		for i := range 12 {
			if err := checkMoney(orderAmountNames[i], o.amounts[i].V); err != nil {
				return nil, err.Error()
			}
		}
		// A deleted customer's email may carry nopCommerce's "-DELETED" suffix past the
		// limit: its orders keep the contact the customer had, or get one from the billing
		// address, so the billing email is what must fit.
		email, field := data.Customer.Email, "customer.email"
		if data.Customer.IsGuest || data.Customer.Deleted || email == nil || *email == "" {
			email, field = data.BillingAddress.Email, "billingAddress.email"
		}
		if err := checkEmail(field, email); err != nil {
			return nil, err.Error()
		}
	}
	return data, ""
}
