package dataversetest

import (
	"maps"
	"net/http"
	"net/url"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/google/uuid"
)

// maxPageSize is the Web API's page ceiling (Learn: webapi/compose-http-requests-handle-errors, "Paging").
const maxPageSize = 5000

// maxConditions is the most conditions one query may hold: "You can include no more than
// 500 total conditions in a query", else TooManyConditionsInQuery (Learn:
// webapi/query/filter-rows, "Condition limits"). Each comparison and each string function
// is one condition.
const maxConditions = 500

// checkQueryOptions rejects system query options Dataverse doesn't support ($skip) and
// the ones the simulator doesn't implement.
func checkQueryOptions(q *apiReq, allowed ...string) *apiError {
	for k := range q.query {
		if !strings.HasPrefix(k, "$") {
			continue
		}
		ok := false
		for _, a := range allowed {
			ok = ok || k == a
		}
		if ok {
			continue
		}
		if k == "$skip" {
			return errf(http.StatusBadRequest, codeZero, "The query parameter $skip is not supported.")
		}
		return errf(http.StatusBadRequest, codeZero, "The query parameter %s is not supported by the simulator.", k)
	}
	return nil
}

func (s *Server) query(x *tx, q *apiReq, t *table) (*apiResp, *apiError) {
	if err := checkQueryOptions(q, "$select", "$filter", "$top", "$orderby", "$expand", "$count", "$skiptoken"); err != nil {
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
	var pred func(*row) bool
	var keys *keySet
	if f := strings.TrimSpace(q.query.Get("$filter")); f != "" {
		p := &filterParser{s: s, t: t, toks: nil}
		if err := p.tokenize(f); err != nil {
			return nil, err
		}
		e, err := p.parseExpr()
		if err != nil {
			return nil, err
		}
		if p.pos != len(p.toks) {
			return nil, errf(http.StatusBadRequest, codeZero, "Syntax error at position %d in '%s'.", p.pos, f)
		}
		if p.conds > maxConditions {
			return nil, errf(http.StatusBadRequest, codeTooManyConditions,
				"Number of conditions in query exceeded maximum limit: the query has %d conditions; the limit is %d.", p.conds, maxConditions)
		}
		pred = func(r *row) bool { v, _ := e(r).(bool); return v }
		keys = p.keys
	}
	top := -1
	if v := q.query.Get("$top"); v != "" {
		n, perr := strconv.Atoi(v)
		if perr != nil || n < 0 {
			return nil, errf(http.StatusBadRequest, codeZero, "Invalid value '%s' for $top query option found.", v)
		}
		top = n
	}
	// Filter first, then order what matched (creation order, then $orderby).
	var matched []*row
	for _, r := range x.candidates(t, keys) {
		if (keys == nil || keys.mayMatch(r)) && (pred == nil || pred(r)) {
			matched = append(matched, r)
		}
	}
	sort.Slice(matched, func(i, j int) bool { return matched[i].seq < matched[j].seq })
	if ob := strings.TrimSpace(q.query.Get("$orderby")); ob != "" {
		if err := orderBy(t, matched, ob); err != nil {
			return nil, err
		}
	}
	if top >= 0 && top < len(matched) {
		matched = matched[:top]
	}
	pageSize := maxPageSize
	applied := ""
	for _, v := range q.header.Values("Prefer") {
		for _, p := range strings.Split(v, ",") {
			p = strings.TrimSpace(p)
			if n, ok := strings.CutPrefix(p, "odata.maxpagesize="); ok {
				if k, err := strconv.Atoi(strings.Trim(n, "\"")); err == nil && k > 0 && k < pageSize {
					pageSize = k
					applied = p
				}
			}
		}
	}
	skip := 0
	if v := q.query.Get("$skiptoken"); v != "" {
		n, perr := strconv.Atoi(v)
		if perr != nil || n < 0 {
			return nil, errf(http.StatusBadRequest, codeZero, "Invalid $skiptoken.")
		}
		skip = n
	}
	count := len(matched)
	if skip > len(matched) {
		skip = len(matched)
	}
	page := matched[skip:]
	next := ""
	if len(page) > pageSize {
		page = page[:pageSize]
		nq := url0(q)
		nq.Set("$skiptoken", strconv.Itoa(skip+pageSize))
		next = q.base + t.set + "?" + nq.Encode()
	}
	ctx := q.base + "$metadata#" + t.set
	if len(sel) > 0 {
		ctx += "(" + strings.Join(sel, ",") + ")"
	}
	vals := make([]any, 0, len(page))
	for _, r := range page {
		m := s.entityJSON(q, t, r, sel, false)
		s.expandInto(x, q, m, t, r, exp)
		vals = append(vals, m)
	}
	out := map[string]any{"@odata.context": ctx, "value": vals}
	if q.query.Get("$count") == "true" {
		out["@odata.count"] = count
	}
	if next != "" {
		out["@odata.nextLink"] = next
	}
	resp := jsonResp(http.StatusOK, out)
	if applied != "" {
		resp.header.Set("Preference-Applied", applied)
	}
	resp.rowsRead = len(page)
	return resp, nil
}

func url0(q *apiReq) url.Values {
	m := url.Values{}
	for k, v := range q.query {
		m[k] = append([]string(nil), v...)
	}
	return m
}

func orderBy(t *table, rows []*row, ob string) *apiError {
	type key struct {
		name string
		desc bool
	}
	var keys []key
	for _, p := range strings.Split(ob, ",") {
		f := strings.Fields(p)
		if len(f) == 0 || len(f) > 2 || !t.hasProperty(f[0]) {
			name := ""
			if len(f) > 0 {
				name = f[0]
			}
			return noSuchProperty(t.logical, name)
		}
		keys = append(keys, key{f[0], len(f) == 2 && f[1] == "desc"})
	}
	sort.SliceStable(rows, func(i, j int) bool {
		for _, k := range keys {
			c := compareValues(rows[i].vals[k.name], rows[j].vals[k.name])
			if c == 0 {
				continue
			}
			if k.desc {
				return c > 0
			}
			return c < 0
		}
		return false
	})
	return nil
}

// compareValues orders values like SQL Server: nulls first, strings case-insensitively.
func compareValues(a, b any) int {
	if a == nil || b == nil {
		switch {
		case a == nil && b == nil:
			return 0
		case a == nil:
			return -1
		}
		return 1
	}
	if af, ok := toFloat(a); ok {
		if bf, ok := toFloat(b); ok {
			switch {
			case af < bf:
				return -1
			case af > bf:
				return 1
			}
			return 0
		}
	}
	as, aok := a.(string)
	bs, bok := b.(string)
	if aok && bok {
		return strings.Compare(strings.ToLower(as), strings.ToLower(bs))
	}
	ab, aok := a.(bool)
	bb, bok := b.(bool)
	if aok && bok {
		switch {
		case ab == bb:
			return 0
		case !ab:
			return -1
		}
		return 1
	}
	return 0
}

// ---- $expand (collection navigation properties only, e.g. order_details) ----

type expandSpec struct {
	coll *collection
	sel  []string
}

var expandRe = regexp.MustCompile(`^([A-Za-z_][A-Za-z0-9_]*)(?:\(\$select=([^)]*)\))?$`)

func (s *Server) parseExpand(t *table, exp string) ([]expandSpec, *apiError) {
	if strings.TrimSpace(exp) == "" {
		return nil, nil
	}
	var out []expandSpec
	for _, p := range splitTop(exp) {
		m := expandRe.FindStringSubmatch(strings.TrimSpace(p))
		if m == nil {
			return nil, errf(http.StatusBadRequest, codeZero, "The simulator supports $expand=<collection>($select=...) only, got '%s'.", p)
		}
		c := t.collections[m[1]]
		if c == nil {
			return nil, noSuchProperty(t.logical, m[1])
		}
		sel, err := parseSelect(s.sc.byLogical[c.child], m[2])
		if err != nil {
			return nil, err
		}
		out = append(out, expandSpec{coll: c, sel: sel})
	}
	return out, nil
}

func splitTop(sv string) []string {
	var out []string
	depth, start := 0, 0
	for i := 0; i < len(sv); i++ {
		switch sv[i] {
		case '(':
			depth++
		case ')':
			depth--
		case ',':
			if depth == 0 {
				out = append(out, sv[start:i])
				start = i + 1
			}
		}
	}
	return append(out, sv[start:])
}

func (s *Server) expandInto(x *tx, q *apiReq, m map[string]any, t *table, r *row, exp []expandSpec) {
	for _, e := range exp {
		ct := s.sc.byLogical[e.coll.child]
		attr := ct.navs[e.coll.nav].attr
		var items []any
		for _, k := range x.referencing(ct.logical, attr, r.id) {
			items = append(items, s.entityJSON(q, ct, k, e.sel, false))
		}
		if items == nil {
			items = []any{}
		}
		m[e.coll.name] = items
	}
}

// ---- $filter ----

type evalFn func(*row) any

type token struct {
	kind string // ident, str, num, guid, lparen, rparen, comma
	text string
}

type filterParser struct {
	s        *Server
	t        *table
	toks     []token
	pos      int
	lastType string // Edm type of the last operand parsed ("" when unknown)
	// What the last parsed piece was, for keys: a column name, or a string/GUID literal.
	lastCol, lastLit string
	lastIsLit        bool
	// keys describes the expression just parsed (nil: any row may match).
	keys *keySet
	// conds counts the conditions parsed (comparisons and string functions).
	conds int
}

// keySet says which rows can possibly match an expression: those whose column col holds
// one of vals (lower-cased ASCII). A query uses it to skip evaluating the whole filter on
// every row, the way Dataverse's indexes answer "col eq a or col eq b ..." look-ups; the
// full filter still decides. Only string and GUID equality is covered.
type keySet struct {
	col  string
	vals map[string]bool
}

func asciiLower(v string) (string, bool) {
	for i := 0; i < len(v); i++ {
		if v[i] >= 0x80 {
			return "", false
		}
	}
	return strings.ToLower(v), true
}

// candidates returns the rows of t that may satisfy an expression with keys k: through
// the primary key or a value index when k names values, else every row.
func (x *tx) candidates(t *table, k *keySet) []*row {
	all := x.st.rows[t.logical]
	if k == nil {
		return slices.Collect(maps.Values(all))
	}
	if k.col == t.pk {
		out := make([]*row, 0, len(k.vals))
		for v := range k.vals {
			if r := all[v]; r != nil {
				out = append(out, r)
			}
		}
		return out
	}
	return x.st.withValue(t.logical, k.col, k.vals)
}

// mayMatch reports whether r can satisfy the expression k was built from.
func (k *keySet) mayMatch(r *row) bool {
	v, ok := r.vals[k.col].(string)
	if !ok {
		return false // only a string equals a string or GUID literal
	}
	l, ascii := asciiLower(v)
	return !ascii || k.vals[l] // non-ASCII: let the filter decide (EqualFold rules)
}

var dateRe = regexp.MustCompile(`^\d{4}-\d{2}-\d{2}(T\d{2}:\d{2}(:\d{2}(\.\d+)?)?(Z|[+-]\d{2}:\d{2}))?`)

func edmOf(t *table, name string) string {
	if name == t.pk {
		return "Edm.Guid"
	}
	if _, ok := t.isValueProp(name); ok {
		return "Edm.Guid"
	}
	switch t.cols[name].typ {
	case tString, tMemo, tImage:
		return "Edm.String"
	case tInt, tPicklist:
		return "Edm.Int32"
	case tDecimal:
		return "Edm.Decimal"
	case tMoney:
		return "Edm.Decimal"
	case tBool:
		return "Edm.Boolean"
	case tDateTime:
		return "Edm.DateTimeOffset"
	case tDateOnly:
		return "Edm.Date"
	}
	return ""
}

func edmFamily(t string) string {
	switch t {
	case "Edm.Int32", "Edm.Decimal":
		return "num"
	case "Edm.DateTimeOffset", "Edm.Date":
		return "date"
	}
	return t
}

var opKinds = map[string]string{"eq": "Equal", "ne": "NotEqual", "gt": "GreaterThan", "ge": "GreaterThanOrEqual", "lt": "LessThan", "le": "LessThanOrEqual"}

var guidRe = regexp.MustCompile(`^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}`)

func (p *filterParser) tokenize(f string) *apiError {
	i := 0
	for i < len(f) {
		c := f[i]
		switch {
		case c == ' ' || c == '\t':
			i++
		case c == '(':
			p.toks = append(p.toks, token{"lparen", "("})
			i++
		case c == ')':
			p.toks = append(p.toks, token{"rparen", ")"})
			i++
		case c == ',':
			p.toks = append(p.toks, token{"comma", ","})
			i++
		case c == '\'':
			var sb strings.Builder
			i++
			closed := false
			for i < len(f) {
				if f[i] == '\'' {
					if i+1 < len(f) && f[i+1] == '\'' {
						sb.WriteByte('\'')
						i += 2
						continue
					}
					closed = true
					i++
					break
				}
				sb.WriteByte(f[i])
				i++
			}
			if !closed {
				return errf(http.StatusBadRequest, codeZero, "There is an unterminated string literal in '%s'.", f)
			}
			p.toks = append(p.toks, token{"str", sb.String()})
		default:
			if d := dateRe.FindString(f[i:]); d != "" && (i+len(d) == len(f) || strings.ContainsRune(" \t()", rune(f[i+len(d)]))) {
				p.toks = append(p.toks, token{"date", d})
				i += len(d)
				continue
			}
			if g := guidRe.FindString(f[i:]); g != "" {
				p.toks = append(p.toks, token{"guid", strings.ToLower(g)})
				i += len(g)
				continue
			}
			j := i
			for j < len(f) && !strings.ContainsRune(" \t(),'", rune(f[j])) {
				j++
			}
			w := f[i:j]
			if _, err := strconv.ParseFloat(w, 64); err == nil {
				p.toks = append(p.toks, token{"num", w})
			} else {
				p.toks = append(p.toks, token{"ident", w})
			}
			i = j
		}
	}
	return nil
}

func (p *filterParser) peek() *token {
	if p.pos < len(p.toks) {
		return &p.toks[p.pos]
	}
	return nil
}

func (p *filterParser) syntax() *apiError {
	return errf(http.StatusBadRequest, codeZero, "Syntax error in $filter at token %d.", p.pos)
}

func (p *filterParser) parseExpr() (evalFn, *apiError) {
	l, err := p.parseAnd()
	if err != nil {
		return nil, err
	}
	keys := p.keys
	for t := p.peek(); t != nil && t.kind == "ident" && t.text == "or"; t = p.peek() {
		p.pos++
		r, err := p.parseAnd()
		if err != nil {
			return nil, err
		}
		a, b := l, r
		l = func(x *row) any { av, _ := a(x).(bool); bv, _ := b(x).(bool); return av || bv }
		keys = orKeys(keys, p.keys)
	}
	p.keys = keys
	return l, nil
}

// orKeys: a row matching a or b holds one of either's values, when both are on one column.
func orKeys(a, b *keySet) *keySet {
	if a == nil || b == nil || a.col != b.col {
		return nil
	}
	for v := range b.vals {
		a.vals[v] = true
	}
	return a
}

func (p *filterParser) parseAnd() (evalFn, *apiError) {
	l, err := p.parseUnary()
	if err != nil {
		return nil, err
	}
	keys := p.keys
	for t := p.peek(); t != nil && t.kind == "ident" && t.text == "and"; t = p.peek() {
		p.pos++
		r, err := p.parseUnary()
		if err != nil {
			return nil, err
		}
		a, b := l, r
		l = func(x *row) any { av, _ := a(x).(bool); bv, _ := b(x).(bool); return av && bv }
		// a row matching a and b matches each: either side's keys narrow the rows
		if keys == nil || (p.keys != nil && len(p.keys.vals) < len(keys.vals)) {
			keys = p.keys
		}
	}
	p.keys = keys
	return l, nil
}

func (p *filterParser) parseUnary() (evalFn, *apiError) {
	if t := p.peek(); t != nil && t.kind == "ident" && t.text == "not" {
		p.pos++
		e, err := p.parseUnary()
		if err != nil {
			return nil, err
		}
		p.keys = nil
		return func(x *row) any { v, _ := e(x).(bool); return !v }, nil
	}
	l, err := p.parseOperand()
	if err != nil {
		return nil, err
	}
	lt := p.lastType
	lcol, llit, lIsLit := p.lastCol, p.lastLit, p.lastIsLit
	t := p.peek()
	if t == nil || t.kind != "ident" {
		return l, nil // p.keys: the operand's (a parenthesised expression's)
	}
	op := t.text
	switch op {
	case "eq", "ne", "gt", "ge", "lt", "le":
	default:
		return l, nil
	}
	p.pos++
	p.conds++
	r, err := p.parseOperand()
	if err != nil {
		return nil, err
	}
	p.keys = nil
	if op == "eq" {
		col, lit, ok := lcol, p.lastLit, p.lastIsLit && lcol != ""
		if !ok {
			col, lit, ok = p.lastCol, llit, lIsLit && p.lastCol != ""
		}
		if v, ascii := asciiLower(lit); ok && ascii {
			p.keys = &keySet{col: col, vals: map[string]bool{v: true}}
		}
	}
	// Dataverse type-checks comparisons: a quoted GUID or number is an Edm.String.
	if rt := p.lastType; lt != "" && rt != "" && lt != "null" && rt != "null" && edmFamily(lt) != edmFamily(rt) {
		return nil, errf(http.StatusBadRequest, codeZero,
			"A binary operator with incompatible types was detected. Found operand types '%s' and '%s' for operator kind '%s'.", lt, rt, opKinds[op])
	}
	return func(x *row) any {
		a, b := l(x), r(x)
		switch op {
		case "eq":
			return valuesEqual(a, b)
		case "ne":
			return !valuesEqual(a, b)
		}
		if a == nil || b == nil {
			return false
		}
		c := compareValues(a, b)
		switch op {
		case "gt":
			return c > 0
		case "ge":
			return c >= 0
		case "lt":
			return c < 0
		}
		return c <= 0
	}, nil
}

func (p *filterParser) parseOperand() (evalFn, *apiError) {
	t := p.peek()
	if t == nil {
		return nil, p.syntax()
	}
	p.pos++
	p.lastType = ""
	p.lastCol, p.lastLit, p.lastIsLit, p.keys = "", "", false, nil
	switch t.kind {
	case "date":
		tm, err := time.Parse(time.RFC3339Nano, t.text)
		v := t.text
		if err == nil {
			v = tm.UTC().Format("2006-01-02T15:04:05Z")
		}
		p.lastType = "Edm.DateTimeOffset"
		return func(*row) any { return v }, nil
	case "lparen":
		e, err := p.parseExpr()
		if err != nil {
			return nil, err
		}
		if r := p.peek(); r == nil || r.kind != "rparen" {
			return nil, p.syntax()
		}
		p.pos++
		p.lastType = ""
		p.lastCol, p.lastLit, p.lastIsLit = "", "", false // p.keys: the inner expression's
		return e, nil
	case "str":
		v := t.text
		p.lastType = "Edm.String"
		p.lastLit, p.lastIsLit = v, true
		return func(*row) any { return v }, nil
	case "guid":
		v := t.text
		if _, err := uuid.Parse(v); err != nil {
			return nil, p.syntax()
		}
		p.lastType = "Edm.Guid"
		p.lastLit, p.lastIsLit = v, true
		return func(*row) any { return v }, nil
	case "num":
		f, _ := strconv.ParseFloat(t.text, 64)
		p.lastType = "Edm.Int32"
		if strings.ContainsAny(t.text, ".eE") {
			p.lastType = "Edm.Decimal"
		}
		return func(*row) any { return f }, nil
	case "ident":
		switch t.text {
		case "null":
			p.lastType = "null"
			return func(*row) any { return nil }, nil
		case "true", "false":
			v := t.text == "true"
			p.lastType = "Edm.Boolean"
			return func(*row) any { return v }, nil
		}
		if n := p.peek(); n != nil && n.kind == "lparen" {
			f, err := p.parseFunc(t.text)
			p.lastType = ""
			p.lastCol, p.lastLit, p.lastIsLit, p.keys = "", "", false, nil
			if err == nil && (t.text == "tolower" || t.text == "toupper") {
				p.lastType = "Edm.String"
			}
			return f, err
		}
		name := t.text
		if strings.Contains(name, "/") {
			return nil, errf(http.StatusBadRequest, codeZero, "The simulator does not support navigation paths in $filter ('%s').", name)
		}
		if !p.t.hasProperty(name) {
			return nil, noSuchProperty(p.t.logical, name)
		}
		p.lastType = edmOf(p.t, name)
		p.lastCol = name
		return func(x *row) any { return x.vals[name] }, nil
	}
	return nil, p.syntax()
}

// Dataverse documents contains, endswith and startswith as the supported OData string
// functions (Learn: webapi/query/filter-rows); tolower/toupper are accepted only with
// Options.AllowStringCaseFunctions. String comparisons are case-insensitive anyway.
func (p *filterParser) parseFunc(name string) (evalFn, *apiError) {
	p.pos++ // (
	var args []evalFn
	for {
		if t := p.peek(); t != nil && t.kind == "rparen" {
			p.pos++
			break
		}
		a, err := p.parseExpr()
		if err != nil {
			return nil, err
		}
		args = append(args, a)
		t := p.peek()
		if t == nil {
			return nil, p.syntax()
		}
		if t.kind == "comma" {
			p.pos++
		}
	}
	str := func(v any) (string, bool) { s, ok := v.(string); return strings.ToLower(s), ok }
	two := func(f func(a, b string) bool) (evalFn, *apiError) {
		if len(args) != 2 {
			return nil, errf(http.StatusBadRequest, codeZero, "The function '%s' takes 2 arguments.", name)
		}
		return func(x *row) any {
			a, ok1 := str(args[0](x))
			b, ok2 := str(args[1](x))
			return ok1 && ok2 && f(a, b)
		}, nil
	}
	switch name {
	case "contains", "startswith", "endswith":
		p.conds++
	}
	switch name {
	case "contains":
		return two(strings.Contains)
	case "startswith":
		return two(strings.HasPrefix)
	case "endswith":
		return two(strings.HasSuffix)
	case "tolower", "toupper":
		if !p.s.o.AllowStringCaseFunctions {
			return nil, errf(http.StatusBadRequest, codeZero, "The '%s' function is not supported. Dataverse compares strings case-insensitively; use eq directly.", name)
		}
		if len(args) != 1 {
			return nil, errf(http.StatusBadRequest, codeZero, "The function '%s' takes 1 argument.", name)
		}
		up := name == "toupper"
		return func(x *row) any {
			s, ok := args[0](x).(string)
			if !ok {
				return nil
			}
			if up {
				return strings.ToUpper(s)
			}
			return strings.ToLower(s)
		}, nil
	}
	return nil, errf(http.StatusBadRequest, codeZero, "An unknown function with name '%s' was found. This may also be a function import or a key lookup on a navigation property, which is not allowed.", name)
}
