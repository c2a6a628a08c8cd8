package dataverse

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"strings"
)

// UpsertMode chooses Upsert's preconditions.
type UpsertMode int

const (
	// Upsert creates the row or updates it (plain PATCH).
	Upsert UpsertMode = iota
	// CreateOnly fails with a 412 (IsConflict) when the row exists (If-None-Match: *).
	CreateOnly
	// UpdateOnly fails with a 404 (IsNotFound) when the row is missing (If-Match: *).
	UpdateOnly
)

func (m UpsertMode) String() string {
	switch m {
	case Upsert:
		return "upsert"
	case CreateOnly:
		return "create-only"
	case UpdateOnly:
		return "update-only"
	}
	return "UpsertMode(" + strconv.Itoa(int(m)) + ")"
}

// EntityPath is the resource path of one row: "contacts(<id>)". id is a GUID
// or an alternate-key expression (see AlternateKey).
func EntityPath(set, id string) string {
	return set + "(" + escapeKey(id) + ")"
}

// Bind is an @odata.bind value for a lookup: "/contacts(<id>)".
func Bind(set, id string) string { return "/" + EntityPath(set, id) }

// AlternateKey is the key expression for one alternate-key column, quoting
// the value as OData requires: nop_customerid='10042'.
func AlternateKey(column, value string) string {
	return column + "='" + strings.ReplaceAll(value, "'", "''") + "'"
}

// escapeKey percent-encodes what can't stand in a path segment but keeps
// OData's key syntax (quotes, parentheses, '=' and ',') readable.
func escapeKey(s string) string {
	const keep = "-._~!$&'()*+,;=:@"
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		ch := s[i]
		if ch < 0x80 && (ch >= 'a' && ch <= 'z' || ch >= 'A' && ch <= 'Z' || ch >= '0' && ch <= '9' || strings.IndexByte(keep, ch) >= 0) {
			b.WriteByte(ch)
			continue
		}
		fmt.Fprintf(&b, "%%%02X", ch)
	}
	return b.String()
}

// Upsert writes rec to set(id). created reports whether the row was new: true
// for a CreateOnly write, false for UpdateOnly; in Upsert mode Dataverse answers
// 204 either way, so created is true only when the server answered 201. See
// UpsertMode for the failure cases.
//
// No "Prefer: return=representation": it "adds a Retrieve operation" to the write
// (https://learn.microsoft.com/power-apps/developer/data-platform/webapi/create-entity-web-api#create-with-data-returned),
// charged to the execution-time limit, and nothing is read back.
func (c *Client) Upsert(ctx context.Context, set, id string, rec Record, mode UpsertMode) (created bool, err error) {
	h := map[string]string{}
	switch mode {
	case CreateOnly:
		h["If-None-Match"] = "*"
	case UpdateOnly:
		h["If-Match"] = "*"
	case Upsert:
	default:
		return false, fmt.Errorf("dataverse: unknown upsert mode %d", mode)
	}
	resp, err := c.do(ctx, request{method: http.MethodPatch, path: EntityPath(set, id), body: nonNil(rec), header: h})
	if err != nil {
		return false, err
	}
	return mode == CreateOnly || resp.status == http.StatusCreated, nil
}

// Update changes an existing row; 404 (IsNotFound) when it is missing.
func (c *Client) Update(ctx context.Context, set, id string, rec Record) error {
	_, err := c.Upsert(ctx, set, id, rec, UpdateOnly)
	return err
}

// Create inserts rec (POST) and returns the new row's id from OData-EntityId.
// A primary key value in rec (column <table>id) is honoured, which makes a resend
// after a lost answer safe (the second POST fails with a duplicate instead of a
// copy). Without one the request is sent once: after a 5xx, a timeout or a lost
// answer the error reports OutcomeUnknown and the caller looks the row up first.
func (c *Client) Create(ctx context.Context, set string, rec Record) (string, error) {
	resp, err := c.do(ctx, request{method: http.MethodPost, path: set, body: nonNil(rec),
		unsafe: nonIdempotent(http.MethodPost, set, rec)})
	if err != nil {
		return "", err
	}
	id := EntityIDFromURL(resp.header.Get("OData-EntityId"))
	if id == "" {
		return "", fmt.Errorf("dataverse POST %s: answer has no OData-EntityId", set)
	}
	return id, nil
}

// Delete removes set(id); 404 (IsNotFound) when it does not exist.
func (c *Client) Delete(ctx context.Context, set, id string) error {
	_, err := c.do(ctx, request{method: http.MethodDelete, path: EntityPath(set, id)})
	return err
}

// Retrieve reads one row, only the given columns when any are named.
func (c *Client) Retrieve(ctx context.Context, set, id string, columns ...string) (Record, error) {
	q := url.Values{}
	if len(columns) > 0 {
		q.Set("$select", strings.Join(columns, ","))
	}
	var rec Record
	if _, err := c.call(ctx, request{method: http.MethodGet, path: EntityPath(set, id), query: q}, &rec); err != nil {
		return nil, err
	}
	return rec, nil
}

// Query selects rows of a set. Zero fields are left out of the request.
type Query struct {
	Select   []string // $select
	Filter   string   // $filter, e.g. "nop_customerid eq '42'"
	OrderBy  string   // $orderby
	Expand   string   // $expand
	Top      int      // $top: stop after this many rows
	PageSize int      // Prefer: odata.maxpagesize (server default 5000)
}

func (q Query) values() url.Values {
	v := url.Values{}
	if len(q.Select) > 0 {
		v.Set("$select", strings.Join(q.Select, ","))
	}
	if q.Filter != "" {
		v.Set("$filter", q.Filter)
	}
	if q.OrderBy != "" {
		v.Set("$orderby", q.OrderBy)
	}
	if q.Expand != "" {
		v.Set("$expand", q.Expand)
	}
	if q.Top > 0 {
		v.Set("$top", strconv.Itoa(q.Top))
	}
	return v
}

// Query calls fn for every row matching q, following @odata.nextLink pages.
// An error from fn stops the query and is returned as is.
func (c *Client) Query(ctx context.Context, set string, q Query, fn func(Record) error) error {
	h := map[string]string{}
	if q.PageSize > 0 {
		h["Prefer"] = "odata.maxpagesize=" + strconv.Itoa(q.PageSize)
	}
	r := request{method: http.MethodGet, path: set, query: q.values(), header: h, op: "GET " + set}
	n := 0
	for {
		var page struct {
			Value    []Record `json:"value"`
			NextLink string   `json:"@odata.nextLink"`
		}
		if _, err := c.call(ctx, r, &page); err != nil {
			return err
		}
		for _, rec := range page.Value {
			if err := fn(rec); err != nil {
				return err
			}
			n++
			if q.Top > 0 && n >= q.Top {
				return nil
			}
		}
		if page.NextLink == "" {
			return nil
		}
		r.path, r.query = page.NextLink, nil
	}
}

// WhoAmI is the caller's identity in the environment.
type WhoAmI struct {
	UserID         string `json:"UserId"`
	BusinessUnitID string `json:"BusinessUnitId"`
	OrganizationID string `json:"OrganizationId"`
}

// WhoAmI checks connectivity and credentials (GET WhoAmI).
func (c *Client) WhoAmI(ctx context.Context) (WhoAmI, error) {
	var w WhoAmI
	_, err := c.call(ctx, request{method: http.MethodGet, path: "WhoAmI"}, &w)
	return w, err
}

// orderClose is the OrderClose entity parameter of the close actions.
func orderClose(orderID, subject string) Record {
	return Record{
		"@odata.type":             "Microsoft.Dynamics.CRM.orderclose",
		"subject":                 subject,
		"salesorderid@odata.bind": Bind("salesorders", orderID),
	}
}

// FulfillSalesOrder closes an order as fulfilled (status e.g. 100001 Complete). A close
// runs once: a second run is refused (the order is closed), so after a 5xx, a timeout or
// a lost answer it is not sent again (see refusesRepeat): the caller reads the order.
func (c *Client) FulfillSalesOrder(ctx context.Context, orderID string, status int) error {
	_, err := c.do(ctx, request{method: http.MethodPost, path: "FulfillSalesOrder", throttledOnly: true,
		body: Record{"OrderClose": orderClose(orderID, "Order fulfilled"), "Status": status}})
	return err
}

// CancelSalesOrder closes an order as canceled (status e.g. 4 No Money).
func (c *Client) CancelSalesOrder(ctx context.Context, orderID string, status int) error {
	_, err := c.do(ctx, request{method: http.MethodPost, path: "CancelSalesOrder", throttledOnly: true,
		body: Record{"OrderClose": orderClose(orderID, "Order canceled"), "Status": status}})
	return err
}

// ConvertSalesOrderToInvoice creates an invoice from an order and returns its id.
// Every call creates another invoice, so the request is sent once (only a 429, which
// Dataverse returns before running it, is waited out and sent again). After a 5xx, a
// timeout or a lost answer the error reports OutcomeUnknown: look the invoice up by
// its salesorderid before converting again.
func (c *Client) ConvertSalesOrderToInvoice(ctx context.Context, orderID string) (string, error) {
	var inv struct {
		InvoiceID string `json:"invoiceid"`
	}
	resp, err := c.call(ctx, request{method: http.MethodPost, path: "ConvertSalesOrderToInvoice", unsafe: true,
		body: Record{"SalesOrderId": orderID, "ColumnSet": Record{"AllColumns": false, "Columns": []string{"invoiceid"}}}}, &inv)
	if err != nil {
		return "", err
	}
	if inv.InvoiceID == "" {
		inv.InvoiceID = EntityIDFromURL(resp.header.Get("OData-EntityId"))
	}
	if inv.InvoiceID == "" {
		return "", fmt.Errorf("dataverse POST ConvertSalesOrderToInvoice: answer has no invoiceid")
	}
	return inv.InvoiceID, nil
}

// PublishProductHierarchy publishes a product family (or product) and its children.
func (c *Client) PublishProductHierarchy(ctx context.Context, productID string) error {
	_, err := c.do(ctx, request{method: http.MethodPost,
		path: EntityPath("products", productID) + "/Microsoft.Dynamics.CRM.PublishProductHierarchy", body: Record{}})
	return err
}

// refusesRepeat reports whether a request's second run is refused because its first
// changed what it applies to: FulfillSalesOrder and CancelSalesOrder close the order, and
// Dataverse refuses to close a closed one. Sent again blindly after an answer was lost,
// it would report a failure for a step that was done; so it is sent again only after a
// 429 (which Dataverse answers before running anything), and the caller reads the order
// to learn what happened.
func refusesRepeat(method, path string) bool {
	if !strings.EqualFold(method, http.MethodPost) {
		return false
	}
	if i := strings.IndexByte(path, '?'); i >= 0 {
		path = path[:i]
	}
	path = strings.Trim(path, "/")
	switch strings.TrimPrefix(path[strings.LastIndexByte(path, '/')+1:], "Microsoft.Dynamics.CRM.") {
	case "FulfillSalesOrder", "CancelSalesOrder":
		return true
	}
	return false
}

// nonIdempotent reports whether a request must not be sent twice because each run
// makes something new: ConvertSalesOrderToInvoice (another invoice), and a POST
// creating a row without its primary key (another row; with the key, a second run
// fails as a duplicate instead). Creates through a navigation property ("$1/lines",
// "salesorders(…)/order_details") count as without a key.
func nonIdempotent(method, path string, body Record) bool {
	if !strings.EqualFold(method, http.MethodPost) {
		return false
	}
	if i := strings.IndexByte(path, '?'); i >= 0 {
		path = path[:i]
	}
	path = strings.Trim(path, "/")
	last := path[strings.LastIndexByte(path, '/')+1:]
	if strings.TrimPrefix(last, "Microsoft.Dynamics.CRM.") == "ConvertSalesOrderToInvoice" {
		return true
	}
	if strings.Contains(path, "/") {
		// set(key)/Microsoft.Dynamics.CRM.<bound action>, set/Microsoft.Dynamics.CRM.<Message>,
		// or a create through a navigation property (set(key)/nav, $1/nav)
		return isSetName(last)
	}
	if !isSetName(path) {
		return false // an unbound action other than the above, or $batch
	}
	for _, pk := range primaryKeyCandidates(path) {
		if v, ok := body[pk]; ok && v != nil && v != "" {
			return false
		}
	}
	return true
}

// isSetName: entity set names are lower-case logical names (custom ones with a
// prefix and underscore); unbound actions are PascalCase.
func isSetName(s string) bool {
	if s == "" {
		return false
	}
	for _, r := range s {
		if !(r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == '_') {
			return false
		}
	}
	return true
}

// primaryKeyCandidates are the primary key column names a set's table may have:
// <logical name>id, where the set name is the logical name plus "s", "es", or with
// "y" turned into "ies" (contacts, customeraddresses, transactioncurrencies).
func primaryKeyCandidates(set string) []string {
	var out []string
	if strings.HasSuffix(set, "ies") {
		out = append(out, strings.TrimSuffix(set, "ies")+"yid")
	}
	if strings.HasSuffix(set, "es") {
		out = append(out, strings.TrimSuffix(set, "es")+"id")
	}
	if strings.HasSuffix(set, "s") {
		out = append(out, strings.TrimSuffix(set, "s")+"id")
	}
	return out
}

// EntityIDFromURL extracts the key from an OData-EntityId / @odata.id URL:
// ".../contacts(0000-…)" → "0000-…". Alternate-key URLs give the key expression.
func EntityIDFromURL(u string) string {
	i := strings.LastIndexByte(u, '(')
	j := strings.LastIndexByte(u, ')')
	if i < 0 || j < i {
		return ""
	}
	k := u[i+1 : j]
	if dec, err := url.PathUnescape(k); err == nil {
		k = dec
	}
	return k
}

func nonNil(r Record) Record {
	if r == nil {
		return Record{}
	}
	return r
}

// Decode converts a Record into a struct with json tags.
func (r Record) Decode(v any) error {
	b, err := json.Marshal(r)
	if err != nil {
		return err
	}
	return json.Unmarshal(b, v)
}
