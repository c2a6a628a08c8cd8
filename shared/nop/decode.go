package nop

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/nopsync/nopsync/shared/queue"
)

// DecodeRequest decodes and validates the body of POST /api/events/{entity}: one event
// object, or an array of 1 to MaxEvents events, all of that entity. It returns every
// event or none: the first problem found is returned as a *ValidationError (400), or a
// *TooLargeError (413, errors.Is(err, ErrTooLarge)) when the body is over MaxBodyBytes
// or an event over MaxEventBytes. Size limits are checked before anything else.
//
// Fields the contract does not define are ignored (forward compatibility); every field it
// does define is checked: presence, JSON type, range, format, nopCommerce enumeration.
// Field names match exactly (case-sensitive), unlike encoding/json's default.
func DecodeRequest(entity Entity, body []byte) ([]*Event, error) {
	if _, ok := ParseEntity(string(entity)); !ok {
		return nil, &ValidationError{Index: -1, Message: fmt.Sprintf("unknown entity %q", entity)}
	}
	if len(body) > MaxBodyBytes {
		return nil, &TooLargeError{Index: -1, Size: len(body), Limit: MaxBodyBytes}
	}
	raws, isArray, err := splitBody(body)
	if err != nil {
		return nil, err
	}
	if isArray && (len(raws) == 0 || len(raws) > MaxEvents) {
		return nil, &ValidationError{Index: -1, Message: fmt.Sprintf("an array must hold 1 to %d events, this one holds %d", MaxEvents, len(raws))}
	}
	return decodeEvents(entity, raws)
}

// decodeEvents checks sizes of all events first, then validates each one, then
// duplicate ids. want "" accepts any entity but requires all events to share one.
func decodeEvents(want Entity, raws []json.RawMessage) ([]*Event, error) {
	for i, r := range raws {
		if len(r) > MaxEventBytes {
			return nil, &TooLargeError{Index: i, Size: len(r), Limit: MaxEventBytes}
		}
	}
	events := make([]*Event, len(raws))
	seen := make(map[string]int, len(raws))
	d := &decoder{slab: make([]member, 0, 64)}
	for i, r := range raws {
		d.index, d.err, d.slab = i, nil, d.slab[:0] // members are dead once an event is decoded
		ev, err := decodeEvent(d, want, r)
		if err != nil {
			return nil, err
		}
		if want == "" {
			want = ev.Entity() // the first event fixes the entity of the rest
		}
		if j, dup := seen[ev.ID]; dup {
			return nil, &ValidationError{Index: i, Field: "id", Message: fmt.Sprintf("duplicate id, also used by event %d", j)}
		}
		seen[ev.ID] = i
		events[i] = ev
	}
	return events, nil
}

// splitBody checks the body is JSON and returns its events' raw bytes.
func splitBody(body []byte) ([]json.RawMessage, bool, error) {
	trimmed := bytes.TrimSpace(body)
	if len(trimmed) == 0 {
		return nil, false, &ValidationError{Index: -1, Message: "empty body: expected an event object or an array of events"}
	}
	if !utf8.Valid(trimmed) {
		return nil, false, &ValidationError{Index: -1, Message: "malformed JSON: body is not valid UTF-8"}
	}
	if err := checkSyntax(trimmed); err != nil {
		return nil, false, err
	}
	// One copy, so the events don't alias the caller's buffer.
	trimmed = bytes.Clone(trimmed)
	switch trimmed[0] {
	case '{':
		return []json.RawMessage{json.RawMessage(trimmed)}, false, nil
	case '[':
		raws, ok := splitArray(trimmed)
		if !ok {
			return nil, true, &ValidationError{Index: -1, Message: "malformed JSON"}
		}
		for i, r := range raws {
			if len(r) == 0 || r[0] != '{' {
				return nil, true, &ValidationError{Index: i, Message: "must be an event object, got " + jsonKind(r)}
			}
		}
		return raws, true, nil
	default:
		return nil, false, &ValidationError{Index: -1, Message: "expected an event object or an array of events, got " + jsonKind(trimmed)}
	}
}

func checkSyntax(b []byte) error {
	if json.Valid(b) {
		return nil
	}
	var v json.RawMessage
	err := json.Unmarshal(b, &v)
	var se *json.SyntaxError
	if errors.As(err, &se) {
		return &ValidationError{Index: -1, Message: fmt.Sprintf("malformed JSON at byte %d: %s", se.Offset, se.Error())}
	}
	return &ValidationError{Index: -1, Message: "malformed JSON"}
}

// jsonKind names the JSON type of a raw value by its first byte.
func jsonKind(r json.RawMessage) string {
	if len(r) == 0 {
		return "nothing"
	}
	switch r[0] {
	case '{':
		return "an object"
	case '[':
		return "an array"
	case '"':
		return "a string"
	case 't', 'f':
		return "a boolean"
	case 'n':
		return "null"
	default:
		return "a number"
	}
}

// decoder records the first problem found in one event.
type decoder struct {
	index int
	err   *ValidationError
	slab  []member // members of this event's objects (see appendMembers)
}

func (d *decoder) fail(path, format string, args ...any) {
	if d.err == nil {
		d.err = &ValidationError{Index: d.index, Field: path, Message: fmt.Sprintf(format, args...)}
	}
}

// object is a JSON object being read field by field.
type object struct {
	d       *decoder
	path    string
	members []member
}

// lookup finds a member; the last one wins when a key repeats, as in encoding/json.
func (o *object) lookup(name string) (json.RawMessage, bool) {
	for i := len(o.members) - 1; i >= 0; i-- {
		if o.members[i].key == name {
			return o.members[i].value, true
		}
	}
	return nil, false
}

func join(path, name string) string {
	if path == "" {
		return name
	}
	return path + "." + name
}

// asObject reads raw as an object; nil (after recording a problem) when it isn't one.
func (d *decoder) asObject(path string, raw json.RawMessage) *object {
	if len(raw) == 0 || raw[0] != '{' {
		d.fail(path, "must be an object, got %s", jsonKind(raw))
		return nil
	}
	full, m, ok := appendMembers(d.slab, raw)
	if !ok {
		d.fail(path, "malformed object")
		return nil
	}
	d.slab = full
	return &object{d: d, path: path, members: m}
}

// get returns a field's raw value; ok is false when it is absent or null.
func (o *object) get(name string) (json.RawMessage, bool) {
	r, ok := o.lookup(name)
	if !ok || (len(r) == 4 && string(r) == "null") {
		return nil, false
	}
	return r, true
}

func (o *object) required(name string) (json.RawMessage, bool) {
	r, ok := o.get(name)
	if !ok {
		if _, present := o.lookup(name); present {
			o.d.fail(join(o.path, name), "must not be null")
		} else {
			o.d.fail(join(o.path, name), "is required")
		}
	}
	return r, ok
}

func (o *object) decodeString(name string, r json.RawMessage) (string, bool) {
	if r[0] != '"' {
		o.d.fail(join(o.path, name), "must be a string, got %s", jsonKind(r))
		return "", false
	}
	s, ok := unquote(r)
	if !ok {
		o.d.fail(join(o.path, name), "malformed string")
		return "", false
	}
	return s, true
}

// str reads a required string.
func (o *object) str(name string) string {
	r, ok := o.required(name)
	if !ok {
		return ""
	}
	s, _ := o.decodeString(name, r)
	return s
}

// optStr reads a "string or null" field: nil when null or absent.
func (o *object) optStr(name string) *string {
	r, ok := o.get(name)
	if !ok {
		return nil
	}
	s, ok := o.decodeString(name, r)
	if !ok {
		return nil
	}
	return &s
}

func (o *object) boolean(name string) bool {
	r, ok := o.required(name)
	if !ok {
		return false
	}
	switch string(r) {
	case "true":
		return true
	case "false":
		return false
	}
	o.d.fail(join(o.path, name), "must be a boolean, got %s", jsonKind(r))
	return false
}

func (o *object) decodeInt(name string, r json.RawMessage, min, max int64) (int64, bool) {
	if r[0] != '-' && (r[0] < '0' || r[0] > '9') {
		o.d.fail(join(o.path, name), "must be an integer, got %s", jsonKind(r))
		return 0, false
	}
	n, err := strconv.ParseInt(string(r), 10, 64)
	if err != nil {
		var ne *strconv.NumError
		if errors.As(err, &ne) && errors.Is(ne.Err, strconv.ErrRange) {
			o.d.fail(join(o.path, name), "is out of range")
		} else {
			o.d.fail(join(o.path, name), "must be an integer (no fraction or exponent), got %s", r)
		}
		return 0, false
	}
	switch {
	case n < min && min == 1:
		o.d.fail(join(o.path, name), "must be > 0, got %d", n)
		return 0, false
	case n < min:
		o.d.fail(join(o.path, name), "must be >= %d, got %d", min, n)
		return 0, false
	case n > max:
		o.d.fail(join(o.path, name), "must be <= %d, got %d", max, n)
		return 0, false
	}
	return n, true
}

// integer reads a required int within [min, max].
func (o *object) integer(name string, min, max int64) int {
	r, ok := o.required(name)
	if !ok {
		return 0
	}
	n, _ := o.decodeInt(name, r, min, max)
	return int(n)
}

// enum reads a required int that must be one of allowed.
func (o *object) enum(name string, allowed ...int) int {
	n := o.integer(name, minInt32, maxInt32)
	if o.d.err == nil && !slices.Contains(allowed, n) {
		o.d.fail(join(o.path, name), "must be one of %v, got %d", allowed, n)
	}
	return n
}

func (o *object) decodeTime(name string, r json.RawMessage) (time.Time, bool) {
	s, ok := o.decodeString(name, r)
	if !ok {
		return time.Time{}, false
	}
	// RFC 3339 (section 5.6) lets "T" and "Z" be lower case; Go's parser wants them upper.
	norm := s
	if len(norm) > 10 && norm[10] == 't' {
		norm = norm[:10] + "T" + norm[11:]
	}
	if strings.HasSuffix(norm, "z") {
		norm = norm[:len(norm)-1] + "Z"
	}
	t, err := time.Parse(time.RFC3339Nano, norm)
	if err != nil || !rfc3339Shape(norm) {
		o.d.fail(join(o.path, name), "must be an RFC 3339 time such as \"2026-11-25T10:15:02.113Z\", got %q", s)
		return time.Time{}, false
	}
	if _, off := t.Zone(); off != 0 {
		o.d.fail(join(o.path, name), "must be UTC (ending in Z), got %q", s)
		return time.Time{}, false
	}
	return t.UTC(), true
}

// rfc3339Shape checks the layout time.Parse is lenient about (it takes a 1-digit hour):
// YYYY-MM-DDTHH:MM:SS, optional fraction, then Z or ±HH:MM.
func rfc3339Shape(s string) bool {
	const layout = "dddd-dd-ddTdd:dd:dd"
	if len(s) < len(layout)+1 {
		return false
	}
	for i := 0; i < len(layout); i++ {
		if layout[i] == 'd' {
			if s[i] < '0' || s[i] > '9' {
				return false
			}
		} else if s[i] != layout[i] {
			return false
		}
	}
	rest := s[len(layout):]
	if rest[0] == '.' {
		n := 1
		for n < len(rest) && rest[n] >= '0' && rest[n] <= '9' {
			n++
		}
		if n == 1 { // any number of digits (RFC 3339); beyond nanoseconds they are cut
			return false
		}
		rest = rest[n:]
	}
	if rest == "Z" {
		return true
	}
	return len(rest) == 6 && (rest[0] == '+' || rest[0] == '-') && rest[3] == ':' &&
		allDigits(rest[1:3]) && allDigits(rest[4:6])
}

func (o *object) timeField(name string) time.Time {
	r, ok := o.required(name)
	if !ok {
		return time.Time{}
	}
	t, _ := o.decodeTime(name, r)
	return t
}

func (o *object) optTime(name string) *time.Time {
	r, ok := o.get(name)
	if !ok {
		return nil
	}
	t, ok := o.decodeTime(name, r)
	if !ok {
		return nil
	}
	return &t
}

func (o *object) money(name string) Money {
	r, ok := o.required(name)
	if !ok {
		return Money{}
	}
	if r[0] != '"' {
		o.d.fail(join(o.path, name), "must be a decimal string such as \"19.9900\", got %s", jsonKind(r))
		return Money{}
	}
	s, ok := o.decodeString(name, r)
	if !ok {
		return Money{}
	}
	m, err := ParseMoney(s)
	if err != nil {
		o.d.fail(join(o.path, name), "%v, got %q", err, s)
		return Money{}
	}
	return m
}

func (o *object) uuid(name string) string {
	s := o.str(name)
	if o.d.err == nil && !isUUID(s) {
		o.d.fail(join(o.path, name), "must be a UUID such as \"5a3e7c1e-2f4b-4d7a-8a0e-6c1d2b3a4f42\", got %q", s)
	}
	return s
}

func isUUID(s string) bool {
	if len(s) != 36 {
		return false
	}
	for i := 0; i < 36; i++ {
		c := s[i]
		switch i {
		case 8, 13, 18, 23:
			if c != '-' {
				return false
			}
		default:
			if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f' || c >= 'A' && c <= 'F') {
				return false
			}
		}
	}
	return true
}

func isLetters(s string, n int) bool {
	if len(s) != n {
		return false
	}
	for i := 0; i < n; i++ {
		c := s[i]
		if !(c >= 'A' && c <= 'Z' || c >= 'a' && c <= 'z') {
			return false
		}
	}
	return true
}

// optObject reads an "object or null" field: nil when null or absent.
func (o *object) optObject(name string) *object {
	r, ok := o.get(name)
	if !ok {
		return nil
	}
	return o.d.asObject(join(o.path, name), r)
}

func (o *object) reqObject(name string) *object {
	r, ok := o.required(name)
	if !ok {
		return nil
	}
	return o.d.asObject(join(o.path, name), r)
}

// array reads an array field; absent or null gives nil, and a problem when required.
func (o *object) array(name string, required bool) []json.RawMessage {
	var r json.RawMessage
	var ok bool
	if required {
		r, ok = o.required(name)
	} else {
		r, ok = o.get(name)
	}
	if !ok {
		return nil
	}
	if r[0] != '[' {
		o.d.fail(join(o.path, name), "must be an array, got %s", jsonKind(r))
		return nil
	}
	items, ok := splitArray(r)
	if !ok {
		o.d.fail(join(o.path, name), "malformed array")
		return nil
	}
	return items
}

func elem(path string, i int) string { return path + "[" + strconv.Itoa(i) + "]" }

// decodeEvent validates one event object with d (index set, no error yet). want ""
// accepts any known entity.
func decodeEvent(d *decoder, want Entity, raw json.RawMessage) (*Event, error) {
	o := d.asObject("", raw)
	if o == nil {
		return nil, d.err
	}
	ev := &Event{Raw: raw, StoreID: 1}

	ev.ID = o.str("id")
	if d.err == nil {
		if n := queue.IDLength(ev.ID); n < 1 || n > MaxIDLength {
			d.fail("id", "must be 1 to %d characters, got %d", MaxIDLength, n)
		} else if strings.ContainsFunc(ev.ID, isControl) {
			d.fail("id", "must not contain control characters")
		}
	}

	ev.Type = o.str("type")
	var entity Entity
	if d.err == nil {
		ent, action, ok := strings.Cut(ev.Type, ".")
		e, known := ParseEntity(ent)
		switch {
		case !ok || !known:
			d.fail("type", "must be \"<entity>.<action>\" with entity customer, product or order, got %q", ev.Type)
		case want != "" && e != want:
			d.fail("type", "entity %q does not match the %s events of this request", ent, want)
		case !slices.Contains(Actions[e], action):
			d.fail("type", "unknown %s action %q (allowed: %s)", e, action, strings.Join(Actions[e], ", "))
		}
		entity = e
	}

	ev.OccurredOnUtc = o.timeField("occurredOnUtc")
	if r, ok := o.get("sequence"); ok {
		if n, ok := o.decodeInt("sequence", r, 0, 1<<63-1); ok {
			ev.Sequence = &n
		}
	}
	if r, ok := o.get("storeId"); ok {
		// 0 is nopCommerce's "no store" (a RegisteredInStoreId where none was set, settings
		// for all stores): the default store, as when storeId is left out.
		if n, ok := o.decodeInt("storeId", r, 0, maxInt32); ok && n > 0 {
			ev.StoreID = int(n)
		}
	}
	data := o.reqObject("data")
	if d.err != nil {
		return nil, d.err
	}
	ev.Data, _ = o.lookup("data")

	switch entity {
	case "customer":
		c := decodeCustomer(data)
		ev.Customer = &c
	case "product":
		p := decodeProduct(data)
		ev.Product = &p
	case "order":
		or := decodeOrder(data)
		ev.Order = &or
	}
	if d.err == nil && ev.Action() == "deleted" && !ev.Deleted() {
		d.fail("data.deleted", "must be true in a %s event", ev.Type)
	}
	if d.err != nil {
		return nil, d.err
	}
	return ev, nil
}

func isControl(r rune) bool { return r < 0x20 || r == 0x7f || (r >= 0x80 && r < 0xa0) }

func decodeAddress(o *object) Address {
	a := Address{
		FirstName:     o.optStr("firstName"),
		LastName:      o.optStr("lastName"),
		Email:         o.optStr("email"),
		Company:       o.optStr("company"),
		Address1:      o.optStr("address1"),
		Address2:      o.optStr("address2"),
		City:          o.optStr("city"),
		County:        o.optStr("county"),
		StateProvince: o.optStr("stateProvince"),
		ZipPostalCode: o.optStr("zipPostalCode"),
		Country:       o.optStr("country"),
		Phone:         o.optStr("phone"),
	}
	// An empty countryIsoCode means "no country", as nopCommerce has no country then.
	if c := o.optStr("countryIsoCode"); c != nil && *c != "" {
		if !isLetters(*c, 2) {
			o.d.fail(join(o.path, "countryIsoCode"), "must be 2 letters (ISO 3166-1 alpha-2), got %q", *c)
		} else {
			up := strings.ToUpper(*c)
			a.CountryIsoCode = &up
		}
	}
	return a
}

func decodeCustomer(o *object) Customer {
	c := Customer{
		ID:           o.integer("id", 1, maxInt32),
		CustomerGUID: o.uuid("customerGuid"),
		Email:        o.optStr("email"),
		Username:     o.optStr("username"),
		FirstName:    o.optStr("firstName"),
		LastName:     o.optStr("lastName"),
		Company:      o.optStr("company"),
		Phone:        o.optStr("phone"),
		IsGuest:      o.boolean("isGuest"),
		IsRegistered: o.boolean("isRegistered"),
		Active:       o.boolean("active"),
		Deleted:      o.boolean("deleted"),
		CreatedOnUtc: o.timeField("createdOnUtc"),
	}
	if a := o.optObject("address"); a != nil {
		addr := decodeAddress(a)
		c.Address = &addr
	}
	return c
}

func (o *object) name(name string) string {
	s := o.str(name)
	if o.d.err == nil {
		if n := utf8.RuneCountInString(s); n < 1 || n > MaxNameLength {
			o.d.fail(join(o.path, name), "must be 1 to %d characters, got %d", MaxNameLength, n)
		}
	}
	return s
}

func decodeProduct(o *object) Product {
	p := Product{
		ID:                     o.integer("id", 1, maxInt32),
		ProductType:            o.enum("productType", ProductTypeSimple, ProductTypeGrouped),
		ParentGroupedProductID: o.integer("parentGroupedProductId", 0, maxInt32),
		Name:                   o.name("name"),
		ShortDescription:       o.optStr("shortDescription"),
		FullDescription:        o.optStr("fullDescription"),
		Sku:                    o.optStr("sku"),
		Gtin:                   o.optStr("gtin"),
		ManufacturerPartNumber: o.optStr("manufacturerPartNumber"),
		Price:                  o.money("price"),
		ProductCost:            o.money("productCost"),
		OldPrice:               o.money("oldPrice"),
		StockQuantity:          o.integer("stockQuantity", minInt32, maxInt32),
		ManageInventoryMethod:  o.enum("manageInventoryMethod", ManageInventoryNone, ManageInventoryStock, ManageInventoryByAttributes),
		Published:              o.boolean("published"),
		Deleted:                o.boolean("deleted"),
		UpdatedOnUtc:           o.timeField("updatedOnUtc"),
		PictureURLs:            []string{},
		AssociatedProductIDs:   []int{},
	}
	path := join(o.path, "pictureUrls")
	for i, r := range o.array("pictureUrls", false) {
		if o.d.err != nil {
			break
		}
		ep := elem(path, i)
		if r[0] != '"' {
			o.d.fail(ep, "must be a string, got %s", jsonKind(r))
			break
		}
		s, ok := unquote(r)
		if !ok {
			o.d.fail(ep, "malformed string")
			break
		}
		if u, err := url.Parse(s); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			o.d.fail(ep, "must be an absolute http(s) URL, got %q", s)
			break
		}
		p.PictureURLs = append(p.PictureURLs, s)
	}
	path = join(o.path, "associatedProductIds")
	ids := o.array("associatedProductIds", false)
	for i, r := range ids {
		if o.d.err != nil {
			break
		}
		ep := elem(path, i)
		if r[0] != '-' && (r[0] < '0' || r[0] > '9') {
			o.d.fail(ep, "must be an integer, got %s", jsonKind(r))
			break
		}
		n, err := strconv.ParseInt(string(r), 10, 64)
		if err != nil || n < 1 || n > maxInt32 {
			o.d.fail(ep, "must be a product id > 0, got %s", r)
			break
		}
		p.AssociatedProductIDs = append(p.AssociatedProductIDs, int(n))
	}
	if o.d.err == nil && len(ids) > 0 && p.ProductType != ProductTypeGrouped {
		o.d.fail(path, "only grouped products (productType %d) have associated products", ProductTypeGrouped)
	}
	return p
}

func decodeOrder(o *object) Order {
	or := Order{
		ID:                   o.integer("id", 1, maxInt32),
		OrderGUID:            o.uuid("orderGuid"),
		CustomOrderNumber:    o.str("customOrderNumber"),
		CurrencyCode:         o.str("currencyCode"),
		CustomerCurrencyCode: o.str("customerCurrencyCode"),
		CurrencyRate:         o.money("currencyRate"),
	}
	if o.d.err == nil {
		if !isLetters(or.CurrencyCode, 3) {
			o.d.fail(join(o.path, "currencyCode"), "must be 3 letters (ISO 4217), got %q", or.CurrencyCode)
		}
		or.CurrencyCode = strings.ToUpper(or.CurrencyCode)
	}
	if c := o.reqObject("customer"); c != nil {
		or.Customer = decodeCustomer(c)
	}
	or.OrderStatus = o.enum("orderStatus", OrderStatusPending, OrderStatusProcessing, OrderStatusComplete, OrderStatusCancelled)
	or.PaymentStatus = o.enum("paymentStatus", PaymentStatusPending, PaymentStatusAuthorized, PaymentStatusPaid,
		PaymentStatusPartiallyRefunded, PaymentStatusRefunded, PaymentStatusVoided)
	or.ShippingStatus = o.enum("shippingStatus", ShippingStatusNotRequired, ShippingStatusNotYetShipped,
		ShippingStatusPartiallyShipped, ShippingStatusShipped, ShippingStatusDelivered)
	or.OrderSubtotalInclTax = o.money("orderSubtotalInclTax")
	or.OrderSubtotalExclTax = o.money("orderSubtotalExclTax")
	or.OrderSubTotalDiscountInclTax = o.money("orderSubTotalDiscountInclTax")
	or.OrderSubTotalDiscountExclTax = o.money("orderSubTotalDiscountExclTax")
	or.OrderShippingInclTax = o.money("orderShippingInclTax")
	or.OrderShippingExclTax = o.money("orderShippingExclTax")
	or.PaymentMethodAdditionalFeeInclTax = o.money("paymentMethodAdditionalFeeInclTax")
	or.PaymentMethodAdditionalFeeExclTax = o.money("paymentMethodAdditionalFeeExclTax")
	or.OrderTax = o.money("orderTax")
	or.OrderDiscount = o.money("orderDiscount")
	or.OrderTotal = o.money("orderTotal")
	or.RefundedAmount = o.money("refundedAmount")
	or.PaymentMethodSystemName = o.optStr("paymentMethodSystemName")
	or.ShippingMethod = o.optStr("shippingMethod")
	or.PaidDateUtc = o.optTime("paidDateUtc")
	or.CreatedOnUtc = o.timeField("createdOnUtc")
	or.Deleted = o.boolean("deleted")
	if b := o.reqObject("billingAddress"); b != nil {
		or.BillingAddress = decodeAddress(b)
	}
	if s := o.optObject("shippingAddress"); s != nil {
		a := decodeAddress(s)
		or.ShippingAddress = &a
	}
	items := o.array("items", true)
	path := join(o.path, "items")
	if o.d.err == nil && len(items) == 0 {
		o.d.fail(path, "must hold at least 1 item")
	}
	or.Items = make([]OrderItem, 0, len(items))
	for i, r := range items {
		if o.d.err != nil {
			break
		}
		it := o.d.asObject(elem(path, i), r)
		if it == nil {
			break
		}
		or.Items = append(or.Items, decodeItem(it))
	}
	return or
}

func decodeItem(o *object) OrderItem {
	it := OrderItem{
		ID:            o.integer("id", 1, maxInt32),
		OrderItemGUID: o.uuid("orderItemGuid"),
	}
	if p := o.reqObject("product"); p != nil {
		it.Product = ItemProduct{
			ID:                     p.integer("id", 1, maxInt32),
			Name:                   p.name("name"),
			Sku:                    p.optStr("sku"),
			ProductType:            p.enum("productType", ProductTypeSimple, ProductTypeGrouped),
			ParentGroupedProductID: p.integer("parentGroupedProductId", 0, maxInt32),
		}
	}
	it.Quantity = o.integer("quantity", 1, maxInt32)
	it.UnitPriceInclTax = o.money("unitPriceInclTax")
	it.UnitPriceExclTax = o.money("unitPriceExclTax")
	it.PriceInclTax = o.money("priceInclTax")
	it.PriceExclTax = o.money("priceExclTax")
	it.DiscountAmountInclTax = o.money("discountAmountInclTax")
	it.DiscountAmountExclTax = o.money("discountAmountExclTax")
	it.AttributeDescription = o.optStr("attributeDescription")
	return it
}
