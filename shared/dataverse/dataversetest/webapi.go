package dataversetest

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math"
	"net/http"
	"net/url"
	"sort"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/google/uuid"
)

// apiReq is one Web API operation, either a top-level request or a $batch part.
type apiReq struct {
	method string
	path   string // escaped path below the API root, e.g. "contacts(…)" or "$batch"
	query  url.Values
	header http.Header
	body   []byte
	base   string // absolute API root, ending in "/api/data/v9.2/"
}

type apiResp struct {
	status    int
	header    http.Header
	body      []byte
	entityURL string // URI of the row written (Content-ID references in $batch)
	rowsRead  int
	// retrieves: operations beyond the request itself to charge (return=representation
	// "adds a Retrieve operation", see representation)
	retrieves int
}

func jsonResp(status int, v any) *apiResp {
	b, _ := json.Marshal(v)
	h := http.Header{}
	h.Set("Content-Type", "application/json; odata.metadata=minimal")
	return &apiResp{status: status, header: h, body: b}
}

func errResp(e *apiError) *apiResp {
	r := jsonResp(e.status, map[string]any{"error": map[string]any{"code": e.code, "message": e.message}})
	for k, v := range e.header {
		r.header[k] = v
	}
	return r
}

func noContent() *apiResp { return &apiResp{status: http.StatusNoContent, header: http.Header{}} }

// exec runs one operation inside x. The caller commits or rolls back.
func (s *Server) exec(x *tx, q *apiReq) *apiResp {
	x.publishes = 0 // counted per request, and per part of a $batch
	resp, err := s.route(x, q)
	if err != nil {
		return errResp(err)
	}
	return resp
}

var unboundActions = map[string]bool{"FulfillSalesOrder": true, "CancelSalesOrder": true,
	"ConvertSalesOrderToInvoice": true, "UnlockSalesOrderPricing": true}

func (s *Server) route(x *tx, q *apiReq) (*apiResp, *apiError) {
	segs := splitPath(q.path)
	if len(segs) == 0 || segs[0] == "" {
		return nil, errf(http.StatusNotFound, codeResourceNotFound, "Resource not found for the segment ''.")
	}
	first, err := url.PathUnescape(segs[0])
	if err != nil {
		return nil, errf(http.StatusBadRequest, codeZero, "Bad Request - Error in query syntax.")
	}
	noRoute := func() *apiError {
		return errf(http.StatusNotFound, codeResourceNotFound, "No HTTP resource was found that matches the request URI '%s%s'.", q.base, q.path)
	}
	if first == "WhoAmI" || first == "WhoAmI()" || first == "Microsoft.Dynamics.CRM.WhoAmI" {
		// GET only (Learn: webapi/compose-http-requests-handle-errors); POST gives 404 "No HTTP resource was found ...".
		if q.method != http.MethodGet || len(segs) > 1 {
			return nil, noRoute()
		}
		return jsonResp(http.StatusOK, map[string]any{
			"@odata.context": q.base + "$metadata#Microsoft.Dynamics.CRM.WhoAmIResponse",
			"BusinessUnitId": s.businessUnitID, "UserId": s.userID, "OrganizationId": s.organizationID}), nil
	}
	if name := strings.TrimPrefix(first, "Microsoft.Dynamics.CRM."); unboundActions[name] {
		if q.method != http.MethodPost || len(segs) > 1 {
			return nil, noRoute()
		}
		return s.unboundAction(x, q, name)
	}
	if first == "sdkmessagefilters" && len(segs) == 1 {
		return s.sdkMessageFilters(q)
	}
	name, key, hasKey, perr := parseSegment(first)
	if perr != nil {
		return nil, perr
	}
	t := s.sc.bySet[name]
	if t == nil {
		return nil, errf(http.StatusNotFound, codeResourceNotFound, "Resource not found for the segment '%s'.", name)
	}
	if op := privilegeOp(q.method); op != "" {
		if err := s.checkPrivilege(x, t, op); err != nil {
			return nil, err
		}
	}
	if !hasKey {
		switch {
		case len(segs) == 1 && q.method == http.MethodGet:
			return s.query(x, q, t)
		case len(segs) == 1 && q.method == http.MethodPost:
			return s.create(x, q, t)
		case len(segs) == 2 && q.method == http.MethodPost && strings.HasPrefix(segs[1], "Microsoft.Dynamics.CRM."):
			return s.bulk(x, q, t, strings.TrimPrefix(segs[1], "Microsoft.Dynamics.CRM."))
		case len(segs) == 1:
			return nil, errf(http.StatusMethodNotAllowed, codeZero, "The HTTP method '%s' is not allowed on the entity set '%s'.", q.method, t.set)
		}
		return nil, errf(http.StatusNotFound, codeResourceNotFound, "Resource not found for the segment '%s'.", segs[1])
	}
	k, kerr := parseKey(t, key)
	if kerr != nil {
		return nil, kerr
	}
	if len(segs) == 1 {
		switch q.method {
		case http.MethodGet:
			return s.retrieve(x, q, t, k)
		case http.MethodPatch:
			return s.upsert(x, q, t, k, first)
		case http.MethodDelete:
			return s.delete(x, q, t, k)
		}
		return nil, errf(http.StatusMethodNotAllowed, codeZero, "The HTTP method '%s' is not allowed here.", q.method)
	}
	if len(segs) == 2 && q.method == http.MethodPost && strings.HasPrefix(segs[1], "Microsoft.Dynamics.CRM.") {
		return s.boundAction(x, q, t, k, strings.TrimPrefix(segs[1], "Microsoft.Dynamics.CRM."))
	}
	if len(segs) == 3 && segs[2] == "$ref" {
		return s.refOp(x, q, t, k, segs[1])
	}
	if len(segs) == 2 {
		return s.propertyOp(x, q, t, k, segs[1])
	}
	return nil, errf(http.StatusNotFound, codeResourceNotFound, "Resource not found for the segment '%s'.", segs[len(segs)-1])
}

// splitPath splits on "/" outside parentheses and quotes.
func splitPath(p string) []string {
	var out []string
	depth, inq, start := 0, false, 0
	for i := 0; i < len(p); i++ {
		switch c := p[i]; {
		case c == '\'':
			inq = !inq
		case inq:
		case c == '(':
			depth++
		case c == ')':
			depth--
		case c == '/' && depth == 0:
			out = append(out, p[start:i])
			start = i + 1
		}
	}
	return append(out, p[start:])
}

func parseSegment(seg string) (name, key string, hasKey bool, err *apiError) {
	i := strings.IndexByte(seg, '(')
	if i < 0 {
		return seg, "", false, nil
	}
	if !strings.HasSuffix(seg, ")") {
		return "", "", false, errf(http.StatusBadRequest, codeZero, "Bad Request - Error in query syntax.")
	}
	return seg[:i], seg[i+1 : len(seg)-1], true, nil
}

// rowKey addresses one row: by primary key (id) or by alternate key values (alt).
type rowKey struct {
	id  string
	alt map[string]any
}

func parseKey(t *table, key string) (rowKey, *apiError) {
	parts, err := splitKeyParts(key)
	if err != nil {
		return rowKey{}, err
	}
	invalid := errf(http.StatusBadRequest, codeZero,
		"The key in the request URI is not valid for resource 'Microsoft.Dynamics.CRM.%s'. Ensure that the names and number of key properties match the declared or alternate key properties for the resource 'Microsoft.Dynamics.CRM.%s'.", t.logical, t.logical)
	if len(parts) == 1 && (parts[0].name == "" || parts[0].name == t.pk) {
		id, ok := parts[0].val.(guidLit)
		if !ok {
			return rowKey{}, errf(http.StatusBadRequest, codeZero, "Bad Request - Error in query syntax.")
		}
		return rowKey{id: string(id)}, nil
	}
	names := make([]string, 0, len(parts))
	alt := map[string]any{}
	for _, p := range parts {
		if p.name == "" {
			return rowKey{}, invalid
		}
		names = append(names, p.name)
		v := p.val
		if g, ok := v.(guidLit); ok {
			v = string(g)
		}
		// Learn: use-alternate-key-reference-record: key values containing / < > * % & : \ ? + break addressing by key.
		if str, ok := v.(string); ok && strings.ContainsAny(str, `/<>*%&:\?+`) {
			return rowKey{}, errf(http.StatusBadRequest, codeZero,
				"The key value '%s' for '%s' contains a character that can't be used in a key (/ < > * %% & : \\ ? +).", str, p.name)
		}
		alt[p.name] = v
	}
	sort.Strings(names)
	for _, k := range t.keys {
		if strings.Join(k, ",") == strings.Join(names, ",") {
			return rowKey{alt: alt}, nil
		}
	}
	return rowKey{}, invalid
}

type guidLit string

// splitKeyParts parses "a='x',b=1" or "<guid>" into name/value pairs.
type keyPart struct {
	name string
	val  any
}

func splitKeyParts(key string) ([]keyPart, *apiError) {
	bad := errf(http.StatusBadRequest, codeZero, "Bad Request - Error in query syntax.")
	var out []keyPart
	i := 0
	for i < len(key) {
		name := ""
		j := i
		for j < len(key) && key[j] != '=' && key[j] != ',' && key[j] != '\'' {
			j++
		}
		if j < len(key) && key[j] == '=' {
			name = strings.TrimSpace(key[i:j])
			i = j + 1
		}
		var val any
		if i < len(key) && key[i] == '\'' {
			var sb strings.Builder
			i++
			closed := false
			for i < len(key) {
				if key[i] == '\'' {
					if i+1 < len(key) && key[i+1] == '\'' {
						sb.WriteByte('\'')
						i += 2
						continue
					}
					i++
					closed = true
					break
				}
				sb.WriteByte(key[i])
				i++
			}
			if !closed {
				return nil, bad
			}
			val = sb.String()
		} else {
			j := i
			for j < len(key) && key[j] != ',' {
				j++
			}
			lit := strings.TrimSpace(key[i:j])
			i = j
			if _, err := uuid.Parse(lit); err == nil && len(lit) == 36 {
				val = guidLit(strings.ToLower(lit))
			} else if lit == "true" || lit == "false" {
				val = lit == "true"
			} else if n, err := strconv.ParseFloat(lit, 64); err == nil {
				val = n
			} else {
				return nil, bad
			}
		}
		out = append(out, keyPart{name, val})
		if i < len(key) {
			if key[i] != ',' {
				return nil, bad
			}
			i++
		}
	}
	if len(out) == 0 {
		return nil, bad
	}
	return out, nil
}

// find resolves a key to a row (nil when absent).
func (s *Server) find(x *tx, t *table, k rowKey) *row {
	if k.id != "" {
		return x.get(t.logical, k.id)
	}
	for _, r := range x.st.rows[t.logical] { // alternate keys are unique: order doesn't matter
		if matchAlt(r, k.alt) {
			return r
		}
	}
	return nil
}

func matchAlt(r *row, alt map[string]any) bool {
	for c, v := range alt {
		if !valuesEqual(r.vals[c], v) {
			return false
		}
	}
	return true
}

// valuesEqual compares like SQL Server's default collation: strings case-insensitively.
func valuesEqual(a, b any) bool {
	if a == nil || b == nil {
		return a == nil && b == nil
	}
	as, aok := a.(string)
	bs, bok := b.(string)
	if aok && bok {
		return strings.EqualFold(as, bs)
	}
	af, aok := toFloat(a)
	bf, bok := toFloat(b)
	if aok && bok {
		return af == bf
	}
	return a == b
}

func toFloat(v any) (float64, bool) {
	switch n := v.(type) {
	case float64:
		return n, true
	case int:
		return float64(n), true
	case json.Number:
		f, err := n.Float64()
		return f, err == nil
	}
	return 0, false
}

func (s *Server) keyNotFound(t *table, k rowKey) *apiError {
	if k.id != "" {
		return notFoundByID(t.logical, k.id)
	}
	return notFoundByKey(t.logical)
}

// resolveRef resolves an @odata.bind / @odata.id value to a row id of table target.
func (s *Server) resolveRef(x *tx, ref string, target string, prop string) (string, *apiError) {
	p := ref
	if i := strings.Index(p, "/api/data/v9.2/"); i >= 0 {
		p = p[i+len("/api/data/v9.2/"):]
	}
	p = strings.TrimPrefix(p, "/")
	if up, err := url.PathUnescape(p); err == nil {
		p = up
	}
	name, key, hasKey, err := parseSegment(p)
	if err != nil || !hasKey {
		return "", errf(http.StatusBadRequest, codePayloadError, "Error identified in Payload provided by the user for Entity :'%s'. The value '%s' for '%s' is not a valid entity reference.", target, ref, prop)
	}
	t := s.sc.bySet[name]
	if t == nil {
		return "", errf(http.StatusNotFound, codeResourceNotFound, "Resource not found for the segment '%s'.", name)
	}
	if t.logical != target {
		return "", errf(http.StatusBadRequest, codePayloadError,
			"Error identified in Payload provided by the user for Entity :'%s'. A reference to '%s' was found where '%s' is expected for '%s'.", target, t.logical, target, prop)
	}
	k, kerr := parseKey(t, key)
	if kerr != nil {
		return "", kerr
	}
	r := s.find(x, t, k)
	if r == nil {
		return "", s.keyNotFound(t, k)
	}
	return r.id, nil
}

func decodeBody(b []byte) (map[string]any, *apiError) {
	if len(bytes.TrimSpace(b)) == 0 {
		return map[string]any{}, nil
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber()
	var m map[string]any
	if err := dec.Decode(&m); err != nil || m == nil {
		return nil, errf(http.StatusBadRequest, codePayloadError, "Error identified in Payload provided by the user for Entity :''. The request body is not a valid JSON object.")
	}
	return m, nil
}

// optionSets are the choice values of columns the sync writes (the table reference pages).
var optionSets = map[string][]int{
	"product.productstructure":              {1, 2, 3},
	"product.producttypecode":               {1, 2, 3, 4},
	"productpricelevel.pricingmethodcode":   {1, 2, 3, 4, 5, 6},
	"productpricelevel.quantitysellingcode": {1, 2, 3},
	"salesorderdetail.producttypecode":      {1, 2, 3, 4, 5},
	"invoicedetail.producttypecode":         {1, 2, 3, 4, 5},
	"contact.address1_addresstypecode":      {1, 2, 3, 4},
	"contact.address2_addresstypecode":      {1, 2, 3, 4},
}

// intRanges are the whole-number columns with a documented range (Microsoft Learn,
// product entity reference: "Decimals Supported", quantitydecimal, 0 to 5).
var intRanges = map[string][2]int{
	"product.quantitydecimal": {0, 5},
}

// decimalRanges are the decimal columns with a documented range (Microsoft Learn,
// product table reference: QuantityOnHand, MinValue 0, MaxValue 1000000000).
var decimalRanges = map[string][2]float64{
	"product.quantityonhand": {0, 1e9},
}

// moneyLimit is the largest value a money column takes: 1e12 (Money's usual range in
// the table references), 1e14 for a price list item's amount (Learn: productpricelevel
// table reference).
func moneyLimit(table, column string) float64 {
	if table == "productpricelevel" && column == "amount" {
		return 1e14
	}
	return 1e12
}

var nonNegativeMoney = map[string]bool{"freightamount": true, "discountamount": true, "manualdiscountamount": true,
	"priceperunit": true, "price": true, "amount": true, "currentcost": true, "standardcost": true, "quantity": false}

func convert(t *table, c *column, v any) (any, *apiError) {
	if v == nil {
		return nil, nil
	}
	mismatch := func(edm string) *apiError {
		return errf(http.StatusBadRequest, codeZero, "Cannot convert the literal '%v' to the expected type '%s'.", v, edm)
	}
	switch c.typ {
	case tString, tMemo, tImage:
		str, ok := v.(string)
		if !ok {
			return nil, mismatch("Edm.String")
		}
		if c.typ != tImage && utf8.RuneCountInString(str) > c.maxLen {
			return nil, errf(http.StatusBadRequest, codeValidation,
				"A validation error occurred. The length of the '%s' attribute of the '%s' entity exceeded the maximum allowed length of '%d'.", c.name, t.logical, c.maxLen)
		}
		return str, nil
	case tInt, tPicklist:
		n, ok := v.(json.Number)
		if !ok {
			return nil, mismatch("Edm.Int32")
		}
		i, err := strconv.Atoi(n.String())
		if err != nil {
			return nil, mismatch("Edm.Int32")
		}
		if opts, known := optionSets[t.logical+"."+c.name]; known && !contains(opts, i) {
			return nil, errf(http.StatusBadRequest, codeValidation,
				"A validation error occurred. The value %d of '%s' on record of type '%s' is outside the valid range.", i, c.name, t.logical)
		}
		if r, ok := intRanges[t.logical+"."+c.name]; ok && (i < r[0] || i > r[1]) {
			return nil, errf(http.StatusBadRequest, codeValidation,
				"A validation error occurred. The value %d of '%s' on record of type '%s' is outside the valid range. Accepted range: %d to %d", i, c.name, t.logical, r[0], r[1])
		}
		return i, nil
	case tDecimal, tMoney:
		n, ok := v.(json.Number)
		if !ok {
			return nil, mismatch("Edm.Decimal")
		}
		f, err := n.Float64()
		if err != nil || math.IsInf(f, 0) {
			return nil, mismatch("Edm.Decimal")
		}
		if limit := moneyLimit(t.logical, c.name); c.typ == tMoney && (nonNegativeMoney[c.name] && f < 0 || math.Abs(f) > limit) {
			return nil, errf(http.StatusBadRequest, codeValidation,
				"A validation error occurred. The value %v of '%s' on record of type '%s' is outside the valid range. Accepted range: 0 to %.0f", f, c.name, t.logical, limit)
		}
		if r, ok := decimalRanges[t.logical+"."+c.name]; ok && c.typ == tDecimal && (f < r[0] || f > r[1]) {
			return nil, errf(http.StatusBadRequest, codeValidation,
				"A validation error occurred. The value %v of '%s' on record of type '%s' is outside the valid range. Accepted range: %.0f to %.0f", f, c.name, t.logical, r[0], r[1])
		}
		return f, nil
	case tBool:
		bv, ok := v.(bool)
		if !ok {
			return nil, mismatch("Edm.Boolean")
		}
		return bv, nil
	case tDateTime, tDateOnly:
		str, ok := v.(string)
		if !ok {
			return nil, mismatch("Edm.DateTimeOffset")
		}
		if c.typ == tDateOnly {
			if tm, err := time.Parse("2006-01-02", str); err == nil {
				return tm.Format("2006-01-02"), nil
			}
		}
		tm, err := time.Parse(time.RFC3339Nano, str)
		if err != nil {
			return nil, mismatch("Edm.DateTimeOffset")
		}
		if c.typ == tDateOnly {
			return tm.Format("2006-01-02"), nil
		}
		return tm.UTC().Format("2006-01-02T15:04:05Z"), nil
	}
	return v, nil
}

// deepInsert is a collection-valued navigation property sent inline on create.
type deepInsert struct {
	coll  *collection
	items []map[string]any
}

// applyBody copies a request body onto r (Learn: entity-attribute-metadata,
// webapi/associate-disassociate-entities-using-web-api): unknown names fail,
// read-only columns are ignored, lookups are set through @odata.bind.
func (s *Server) applyBody(x *tx, t *table, r *row, body map[string]any, creating bool) ([]deepInsert, *apiError) {
	names := make([]string, 0, len(body))
	for k := range body {
		names = append(names, k)
	}
	sort.Strings(names)
	var deep []deepInsert
	for _, k := range names {
		v := body[k]
		if strings.HasPrefix(k, "@") {
			continue
		}
		if nav, ok := strings.CutSuffix(k, "@odata.bind"); ok {
			l := t.navs[nav]
			if l == nil {
				return nil, errf(http.StatusBadRequest, codePayloadError,
					"Error identified in Payload provided by the user for Entity :'%ss', For more information on this error please follow this help link https://go.microsoft.com/fwlink/?linkid=2195293  ----> InnerException : Microsoft.OData.ODataException: An undeclared property '%s' which only has property annotations in the payload but no property value was found in the payload. In OData, only declared navigation properties and declared named streams can be represented as properties without values.", t.logical, nav)
			}
			switch ref := v.(type) {
			case nil:
				r.setRef(l.attr, "", "")
			case string:
				id, err := s.resolveRef(x, ref, l.target, k)
				if err != nil {
					return nil, err
				}
				r.setRef(l.attr, l.target, id)
			default:
				return nil, errf(http.StatusBadRequest, codePayloadError, "Error identified in Payload provided by the user for Entity :'%s'. The value of '%s' must be a string URI.", t.logical, k)
			}
			continue
		}
		if strings.Contains(k, "@") {
			continue // instance annotations such as FormattedValue are ignored on write
		}
		if k == t.pk {
			str, _ := v.(string)
			if creating {
				continue // the caller takes the id from the body
			}
			if !strings.EqualFold(str, r.id) {
				return nil, errf(http.StatusBadRequest, codeInvalidArgument, "Entity Id must be the same as the value set in property bag.")
			}
			continue
		}
		if c := t.cols[k]; c != nil {
			val, err := convert(t, c, v)
			if err != nil {
				return nil, err
			}
			if c.readOnly {
				continue
			}
			r.vals[k] = val
			continue
		}
		if l := t.navs[k]; l != nil {
			if v == nil {
				r.setRef(l.attr, "", "")
				continue
			}
			return nil, errf(http.StatusBadRequest, codePayloadError, "Error identified in Payload provided by the user for Entity :'%s'. Deep insert through the single-valued navigation property '%s' is not supported by the simulator; use %s@odata.bind.", t.logical, k, k)
		}
		if coll := t.collections[k]; coll != nil {
			arr, ok := v.([]any)
			if !ok || !creating {
				return nil, errf(http.StatusBadRequest, codePayloadError, "Error identified in Payload provided by the user for Entity :'%s'. '%s' must be an array of entities on create.", t.logical, k)
			}
			di := deepInsert{coll: coll}
			for _, it := range arr {
				m, ok := it.(map[string]any)
				if !ok {
					return nil, errf(http.StatusBadRequest, codePayloadError, "Error identified in Payload provided by the user for Entity :'%s'. '%s' items must be objects.", t.logical, k)
				}
				di.items = append(di.items, m)
			}
			deep = append(deep, di)
			continue
		}
		return nil, invalidProperty(t.logical, k)
	}
	return deep, nil
}

// newRow builds a row with the platform defaults a create sets.
func (s *Server) newRow(t *table, id string) *row {
	r := &row{id: strings.ToLower(id), vals: map[string]any{}, targets: map[string]string{}}
	r.vals[t.pk] = r.id
	now := s.nowString()
	r.vals["createdon"] = now
	r.vals["modifiedon"] = now
	return r
}

// applyState sets/validates statecode+statuscode (Learn: webapi/update-delete-entities-using-web-api: statuscode defaults to the
// state's default status when omitted).
func applyState(t *table, r *row, body map[string]any, creating bool) *apiError {
	if t.states == nil {
		return nil
	}
	_, hasState := body["statecode"]
	_, hasStatus := body["statuscode"]
	if creating && r.vals["statecode"] == nil {
		r.vals["statecode"] = t.defState
	}
	state := r.intv("statecode")
	valid, ok := t.states[state]
	if !ok {
		return errf(http.StatusBadRequest, codeInvalidArgument, "%d is not a valid state code on %s.", state, t.logical)
	}
	if (hasState && !hasStatus) || r.vals["statuscode"] == nil {
		r.vals["statuscode"] = valid[0]
	}
	status := r.intv("statuscode")
	for _, v := range valid {
		if v == status {
			return nil
		}
	}
	return errf(http.StatusBadRequest, codeInvalidArgument, "%d is not a valid status code for state code %sState.%d on %s.", status, t.logical, state, t.logical)
}

func (s *Server) createRow(x *tx, t *table, id string, body map[string]any, alt map[string]any) (*row, *apiError) {
	if id == "" {
		if v, ok := body[t.pk]; ok {
			str, _ := v.(string)
			if _, err := uuid.Parse(str); err != nil {
				return nil, errf(http.StatusBadRequest, codeZero, "Cannot convert the literal '%v' to the expected type 'Edm.Guid'.", v)
			}
			id = str
		} else {
			id = uuid.NewString()
		}
	}
	if err := s.checkPrivilege(x, t, PrivCreate); err != nil {
		return nil, err
	}
	if x.get(t.logical, id) != nil {
		return nil, errf(http.StatusPreconditionFailed, codeDuplicateRecord, "A record with matching key values already exists.")
	}
	r := s.newRow(t, id)
	deep, err := s.applyBody(x, t, r, body, true)
	if err != nil {
		return nil, err
	}
	for k, v := range alt { // URL key values are copied unless the body has them (Learn: use-upsert-insert-update-record)
		if _, inBody := body[k]; !inBody {
			if attr, ok := t.isValueProp(k); ok {
				r.setRef(attr, t.lookupAttrs[attr][0].target, fmt.Sprint(v))
			} else {
				r.vals[k] = v
			}
		}
	}
	computeNames(t, r)
	if err := applyState(t, r, body, true); err != nil {
		return nil, err
	}
	if err := s.checkKeysUnique(x, t, r); err != nil {
		return nil, err
	}
	if err := s.beforeCreate(x, t, r, body); err != nil {
		return nil, err
	}
	x.put(t.logical, r)
	if err := s.afterWrite(x, t, nil, r); err != nil {
		return nil, err
	}
	for _, d := range deep {
		ct := s.sc.byLogical[d.coll.child]
		for _, item := range d.items {
			item[d.coll.nav+"@odata.bind"] = "/" + t.set + "(" + r.id + ")"
			if _, err := s.createRow(x, ct, "", item, nil); err != nil {
				return nil, err
			}
		}
	}
	return x.get(t.logical, r.id), nil
}

func (s *Server) updateRow(x *tx, t *table, old *row, body map[string]any, alt map[string]any) (*row, *apiError) {
	if err := s.checkPrivilege(x, t, PrivWrite); err != nil {
		return nil, err
	}
	r := old.clone()
	for k := range alt { // key columns in the body are dropped on update (Learn: use-upsert-insert-update-record)
		delete(body, k)
	}
	if _, err := s.applyBody(x, t, r, body, false); err != nil {
		return nil, err
	}
	computeNames(t, r)
	if err := applyState(t, r, body, false); err != nil {
		return nil, err
	}
	if err := s.checkKeysUnique(x, t, r); err != nil {
		return nil, err
	}
	if err := s.beforeUpdate(x, t, old, r, body); err != nil {
		return nil, err
	}
	r.vals["modifiedon"] = s.nowString()
	x.put(t.logical, r)
	if err := s.afterWrite(x, t, old, r); err != nil {
		return nil, err
	}
	return x.get(t.logical, r.id), nil
}

// checkKeysUnique enforces declared alternate keys (412 DuplicateRecordEntityKey, Learn: reference/web-service-error-codes).
func (s *Server) checkKeysUnique(x *tx, t *table, r *row) *apiError {
	for _, k := range t.keys {
		alt := map[string]any{}
		complete := true
		for _, c := range k {
			v := r.vals[c]
			if v == nil {
				complete = false
				break
			}
			alt[c] = v
		}
		if !complete {
			continue
		}
		for _, o := range x.st.rows[t.logical] {
			if o.id != r.id && matchAlt(o, alt) {
				return errf(http.StatusPreconditionFailed, codeDuplicateEntityKey,
					"Entity Key %s violated. A record with the same value for %s already exists. A duplicate record cannot be created or updated.", strings.Join(k, ","), strings.Join(k, ","))
			}
		}
	}
	return nil
}

func etag(r *row) string { return fmt.Sprintf("W/\"%d\"", r.version) }

func prefers(h http.Header, pref string) bool {
	for _, v := range h.Values("Prefer") {
		for _, p := range strings.Split(v, ",") {
			if strings.EqualFold(strings.TrimSpace(p), pref) {
				return true
			}
		}
	}
	return false
}

func (s *Server) create(x *tx, q *apiReq, t *table) (*apiResp, *apiError) {
	body, err := decodeBody(q.body)
	if err != nil {
		return nil, err
	}
	sel, err := parseSelect(t, q.query.Get("$select"))
	if err != nil {
		return nil, err
	}
	r, err := s.createRow(x, t, "", body, nil)
	if err != nil {
		return nil, err
	}
	loc := q.base + t.set + "(" + r.id + ")"
	if prefers(q.header, "return=representation") {
		resp := jsonResp(http.StatusCreated, s.entityJSON(q, t, r, sel, true))
		resp.header.Set("ETag", etag(r))
		resp.header.Set("Preference-Applied", "return=representation")
		resp.entityURL = loc
		representation(resp)
		return resp, nil
	}
	resp := noContent()
	resp.header.Set("OData-EntityId", loc)
	resp.header.Set("Location", loc)
	resp.entityURL = loc
	return resp, nil
}

func (s *Server) upsert(x *tx, q *apiReq, t *table, k rowKey, urlForm string) (*apiResp, *apiError) {
	body, err := decodeBody(q.body)
	if err != nil {
		return nil, err
	}
	sel, err := parseSelect(t, q.query.Get("$select"))
	if err != nil {
		return nil, err
	}
	existing := s.find(x, t, k)
	ifMatch := q.header.Get("If-Match")
	ifNone := q.header.Get("If-None-Match")
	switch {
	case ifMatch == "*" && existing == nil:
		return nil, s.keyNotFound(t, k)
	case ifMatch != "" && ifMatch != "*" && existing == nil:
		return nil, s.keyNotFound(t, k)
	case ifMatch != "" && ifMatch != "*" && ifMatch != etag(existing):
		return nil, errf(http.StatusPreconditionFailed, codeConcurrencyMismatch, "The version of the existing record doesn't match the RowVersion property provided.")
	case ifNone == "*" && existing != nil:
		return nil, errf(http.StatusPreconditionFailed, codeDuplicateRecord, "A record with matching key values already exists.")
	}
	var r *row
	created := existing == nil
	if created {
		r, err = s.createRow(x, t, k.id, body, k.alt)
	} else {
		r, err = s.updateRow(x, t, existing, body, k.alt)
	}
	if err != nil {
		return nil, err
	}
	loc := q.base + t.set + "(" + r.id + ")"
	if prefers(q.header, "return=representation") {
		status := http.StatusOK
		if created {
			status = http.StatusCreated
		}
		resp := jsonResp(status, s.entityJSON(q, t, r, sel, true))
		resp.header.Set("ETag", etag(r))
		resp.header.Set("Preference-Applied", "return=representation")
		resp.entityURL = loc
		representation(resp)
		return resp, nil
	}
	// Learn: use-alternate-key-reference-record: OData-EntityId echoes the URL form used (the alternate key, not the GUID).
	resp := noContent()
	resp.header.Set("OData-EntityId", q.base+urlForm)
	resp.entityURL = loc
	return resp, nil
}

// representation charges the retrieve that "Prefer: return=representation" adds to a
// write: "the request adds a Retrieve operation" (learn.microsoft.com/power-apps/
// developer/data-platform/webapi/create-entity-web-api#create-with-data-returned), one
// more operation and one row read on the execution-time limit.
func representation(resp *apiResp) {
	resp.retrieves++
	resp.rowsRead++
}

func (s *Server) retrieve(x *tx, q *apiReq, t *table, k rowKey) (*apiResp, *apiError) {
	if err := checkQueryOptions(q, "$select", "$expand"); err != nil {
		return nil, err
	}
	sel, err := parseSelect(t, q.query.Get("$select"))
	if err != nil {
		return nil, err
	}
	exp, err := s.parseExpand(t, q.query.Get("$expand"))
	if err != nil {
		return nil, err
	}
	r := s.find(x, t, k)
	if r == nil {
		return nil, s.keyNotFound(t, k)
	}
	if inm := q.header.Get("If-None-Match"); inm != "" && inm == etag(r) && len(exp) == 0 {
		return &apiResp{status: http.StatusNotModified, header: http.Header{}}, nil
	}
	m := s.entityJSON(q, t, r, sel, true)
	s.expandInto(x, q, m, t, r, exp)
	resp := jsonResp(http.StatusOK, m)
	resp.header.Set("ETag", etag(r))
	resp.rowsRead = 1
	return resp, nil
}

func (s *Server) delete(x *tx, q *apiReq, t *table, k rowKey) (*apiResp, *apiError) {
	r := s.find(x, t, k)
	if r == nil {
		return nil, s.keyNotFound(t, k)
	}
	if im := q.header.Get("If-Match"); im != "" && im != "*" && im != etag(r) {
		return nil, errf(http.StatusPreconditionFailed, codeConcurrencyMismatch, "The version of the existing record doesn't match the RowVersion property provided.")
	}
	if err := s.deleteRow(x, t, r); err != nil {
		return nil, err
	}
	return noContent(), nil
}

// refOp handles DELETE <set>(<id>)/<nav>/$ref (clear a lookup) and PUT with {"@odata.id"}.
func (s *Server) refOp(x *tx, q *apiReq, t *table, k rowKey, nav string) (*apiResp, *apiError) {
	l := t.navs[nav]
	if l == nil {
		return nil, errf(http.StatusBadRequest, codeZero, "Could not find a property named '%s' on type 'Microsoft.Dynamics.CRM.%s'.", nav, t.logical)
	}
	r := s.find(x, t, k)
	if r == nil {
		return nil, s.keyNotFound(t, k)
	}
	body := map[string]any{}
	switch q.method {
	case http.MethodDelete:
		body[nav+"@odata.bind"] = nil
	case http.MethodPut:
		m, err := decodeBody(q.body)
		if err != nil {
			return nil, err
		}
		body[nav+"@odata.bind"] = m["@odata.id"]
	default:
		return nil, errf(http.StatusMethodNotAllowed, codeZero, "The HTTP method '%s' is not allowed here.", q.method)
	}
	if _, err := s.updateRow(x, t, r, body, nil); err != nil {
		return nil, err
	}
	return noContent(), nil
}

// propertyOp handles PUT/DELETE/GET on a single column: <set>(<id>)/<column>.
func (s *Server) propertyOp(x *tx, q *apiReq, t *table, k rowKey, name string) (*apiResp, *apiError) {
	c := t.cols[name]
	if coll := t.collections[name]; coll != nil && q.method == http.MethodGet {
		// GET <set>(<id>)/order_details: the related rows, like a filtered query.
		r := s.find(x, t, k)
		if r == nil {
			return nil, s.keyNotFound(t, k)
		}
		ct := s.sc.byLogical[coll.child]
		sel, err := parseSelect(ct, q.query.Get("$select"))
		if err != nil {
			return nil, err
		}
		vals := []any{}
		for _, k := range x.referencing(ct.logical, ct.navs[coll.nav].attr, r.id) {
			vals = append(vals, s.entityJSON(q, ct, k, sel, false))
		}
		resp := jsonResp(http.StatusOK, map[string]any{"@odata.context": q.base + "$metadata#" + ct.set, "value": vals})
		resp.rowsRead = len(vals)
		return resp, nil
	}
	if c == nil {
		if t.navs[name] != nil {
			return nil, errf(http.StatusBadRequest, codeZero, "Navigation property '%s' can only be changed through %s/$ref or @odata.bind.", name, name)
		}
		return nil, errf(http.StatusNotFound, codeResourceNotFound, "Resource not found for the segment '%s'.", name)
	}
	r := s.find(x, t, k)
	if r == nil {
		return nil, s.keyNotFound(t, k)
	}
	switch q.method {
	case http.MethodGet:
		return jsonResp(http.StatusOK, map[string]any{"@odata.context": q.base + "$metadata#" + t.set + "(" + r.id + ")/" + name, "value": r.vals[name]}), nil
	case http.MethodPut:
		m, err := decodeBody(q.body)
		if err != nil {
			return nil, err
		}
		if _, err := s.updateRow(x, t, r, map[string]any{name: m["value"]}, nil); err != nil {
			return nil, err
		}
	case http.MethodDelete:
		if _, err := s.updateRow(x, t, r, map[string]any{name: nil}, nil); err != nil {
			return nil, err
		}
	default:
		return nil, errf(http.StatusMethodNotAllowed, codeZero, "The HTTP method '%s' is not allowed here.", q.method)
	}
	return noContent(), nil
}

// entityJSON renders a row the way the Web API returns it.
func (s *Server) entityJSON(q *apiReq, t *table, r *row, sel []string, withContext bool) map[string]any {
	m := map[string]any{}
	if withContext {
		ctx := q.base + "$metadata#" + t.set
		if len(sel) > 0 {
			ctx += "(" + strings.Join(sel, ",") + ")"
		}
		m["@odata.context"] = ctx + "/$entity"
	}
	m["@odata.etag"] = etag(r)
	put := func(name string) {
		if attr, ok := t.isValueProp(name); ok {
			m[name] = r.vals[name]
			if r.vals[name] != nil && prefersAnnotations(q.header) {
				m[name+"@Microsoft.Dynamics.CRM.lookuplogicalname"] = r.targets[attr]
			}
			return
		}
		m[name] = r.vals[name]
	}
	if len(sel) == 0 {
		for name, c := range t.cols {
			if c.typ == tImage {
				continue
			}
			put(name)
		}
		for attr := range t.lookupAttrs {
			put(t.valueName(attr))
		}
	} else {
		for _, name := range sel {
			put(name)
		}
	}
	m[t.pk] = r.id
	return m
}

func prefersAnnotations(h http.Header) bool {
	for _, v := range h.Values("Prefer") {
		if strings.Contains(v, "odata.include-annotations") {
			return true
		}
	}
	return false
}

func parseSelect(t *table, sel string) ([]string, *apiError) {
	if strings.TrimSpace(sel) == "" {
		return nil, nil
	}
	var out []string
	for _, p := range strings.Split(sel, ",") {
		p = strings.TrimSpace(p)
		if !t.hasProperty(p) {
			return nil, noSuchProperty(t.logical, p)
		}
		out = append(out, p)
	}
	return out, nil
}

// computeNames fills system-calculated name columns (contact.fullname).
func computeNames(t *table, r *row) {
	if t.logical == "contact" {
		r.vals["fullname"] = strings.TrimSpace(strings.Join(strings.Fields(r.str("firstname")+" "+r.str("middlename")+" "+r.str("lastname")), " "))
	}
}
