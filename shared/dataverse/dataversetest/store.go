package dataversetest

import (
	"log"
	"maps"
	"net/http"
	"os"
	"slices"
	"sort"
	"strings"
	"time"
)

// row is one stored record. vals holds column values by logical name and lookups as
// "_<attr>_value" (GUID string); targets remembers which table a lookup points at
// (needed for the polymorphic customer lookups).
type row struct {
	id      string
	version int64
	seq     int64 // creation order, for stable paging
	vals    map[string]any
	targets map[string]string // lookup attr -> target logical name
}

func (r *row) clone() *row {
	c := &row{id: r.id, version: r.version, seq: r.seq, vals: make(map[string]any, len(r.vals)), targets: make(map[string]string, len(r.targets))}
	for k, v := range r.vals {
		c.vals[k] = v
	}
	for k, v := range r.targets {
		c.targets[k] = v
	}
	return c
}

func (r *row) str(k string) string {
	v, _ := r.vals[k].(string)
	return v
}

func (r *row) num(k string) float64 {
	switch v := r.vals[k].(type) {
	case float64:
		return v
	case int:
		return float64(v)
	}
	return 0
}

func (r *row) intv(k string) int {
	switch v := r.vals[k].(type) {
	case int:
		return v
	case float64:
		return int(v)
	}
	return 0
}

func (r *row) boolv(k string) bool {
	v, _ := r.vals[k].(bool)
	return v
}

// ref returns the GUID a lookup attr points at ("" when empty).
func (r *row) ref(attr string) string { return r.str("_" + attr + "_value") }

func (r *row) setRef(attr, target, id string) {
	if id == "" {
		r.vals["_"+attr+"_value"] = nil
		delete(r.targets, attr)
		return
	}
	r.vals["_"+attr+"_value"] = id
	r.targets[attr] = target
}

// store holds every table's rows; all access happens under Server.mu.
type store struct {
	rows    map[string]map[string]*row // logical -> id -> row
	version int64
	seq     int64
	// refs indexes lookups: logical -> attr -> referenced id -> referencing row ids.
	refs map[string]map[string]map[string]map[string]bool
	// byValue indexes string columns for equality look-ups, the way Dataverse's indexes
	// answer them without reading the whole table: logical -> column -> ASCII-lower-cased
	// value (nonASCIIKey for the others) -> row ids. A column is indexed from its first
	// look-up on (withValue); replace keeps it in step. It may name rows that no longer
	// hold the value: every caller checks the row itself.
	byValue map[string]map[string]map[string]map[string]bool
}

// nonASCIIKey is byValue's key for values that are not ASCII: strings.EqualFold may
// match them to an ASCII value (the Kelvin sign to "k"), so every look-up includes them.
const nonASCIIKey = "\x00non-ASCII"

func valueKey(v string) string {
	if l, ok := asciiLower(v); ok {
		return l
	}
	return nonASCIIKey
}

// indexValues adds r to (or removes it from) the value indexes of its table.
func (st *store) indexValues(logical string, r *row, add bool) {
	for col, idx := range st.byValue[logical] {
		v, ok := r.vals[col].(string)
		if !ok {
			continue
		}
		markID(idx, valueKey(v), r.id, add)
	}
}

// idSets returns the id sets an index (refs, byValue) keeps for a table's column, made
// (and reported so) when missing.
func idSets(index map[string]map[string]map[string]map[string]bool, logical, col string) (map[string]map[string]bool, bool) {
	byCol := index[logical]
	if byCol == nil {
		byCol = map[string]map[string]map[string]bool{}
		index[logical] = byCol
	}
	sets := byCol[col]
	if sets != nil {
		return sets, false
	}
	sets = map[string]map[string]bool{}
	byCol[col] = sets
	return sets, true
}

// markID adds id to (or removes it from) the set of ids under key in sets, dropping a
// set that becomes empty.
func markID(sets map[string]map[string]bool, key, id string, add bool) {
	set := sets[key]
	if add {
		if set == nil {
			set = map[string]bool{}
			sets[key] = set
		}
		set[id] = true
	} else if set != nil {
		delete(set, id)
		if len(set) == 0 {
			delete(sets, key)
		}
	}
}

// valueIndex returns the index that answers equality on column col of logical: for a
// lookup ("_<attr>_value", GUIDs) the lookup index refs, which every write keeps; for
// any other column byValue's, built at its first use.
func (st *store) valueIndex(logical, col string) map[string]map[string]bool {
	if attr, ok := lookupAttr(col); ok {
		return st.refs[logical][attr] // nil when nothing points anywhere yet: reads as empty
	}
	idx, made := idSets(st.byValue, logical, col)
	if made {
		for _, r := range st.rows[logical] {
			if v, ok := r.vals[col].(string); ok {
				markID(idx, valueKey(v), r.id, true)
			}
		}
	}
	return idx
}

// lookupAttr returns the lookup attribute a column "_<attr>_value" holds the id of.
func lookupAttr(col string) (string, bool) {
	if !strings.HasPrefix(col, "_") || !strings.HasSuffix(col, "_value") || len(col) <= len("__value") {
		return "", false
	}
	return col[1 : len(col)-len("_value")], true
}

// verifyIndexes makes every withValue look-up also read the whole table and stop the
// process when the index missed a row (set by the package's tests, and by
// DATAVERSETEST_VERIFY_INDEXES=1 for tests elsewhere that use the simulator).
var verifyIndexes = os.Getenv("DATAVERSETEST_VERIFY_INDEXES") == "1"

// withValue returns the rows of logical whose string column col may equal one of vals
// (ASCII, lower-cased, as keySet holds them) case-insensitively: a superset, which the
// caller narrows with the exact comparison.
func (st *store) withValue(logical, col string, vals map[string]bool) []*row {
	idx := st.valueIndex(logical, col)
	ids := map[string]bool{}
	for v := range vals {
		for id := range idx[v] {
			ids[id] = true
		}
	}
	for id := range idx[nonASCIIKey] {
		ids[id] = true
	}
	out := make([]*row, 0, len(ids))
	for id := range ids {
		if r := st.rows[logical][id]; r != nil {
			out = append(out, r)
		}
	}
	if verifyIndexes {
		k := &keySet{col: col, vals: vals}
		for _, r := range st.rows[logical] {
			if k.mayMatch(r) && !ids[r.id] {
				log.Fatalf("dataversetest: the %s.%s index misses row %s (value %q)", logical, col, r.id, r.vals[col])
			}
		}
	}
	return out
}

func (st *store) index(logical string, r *row, add bool) {
	for k, v := range r.vals {
		id, ok := v.(string)
		attr, lookup := lookupAttr(k)
		if !ok || id == "" || !lookup {
			continue
		}
		byID, _ := idSets(st.refs, logical, attr)
		markID(byID, strings.ToLower(id), r.id, add)
	}
}

// replace swaps the stored version of a row, keeping the lookup index in step.
func (st *store) replace(logical, id string, r *row) {
	if cur := st.rows[logical][id]; cur != nil {
		st.index(logical, cur, false)
		st.indexValues(logical, cur, false)
	}
	if r == nil {
		delete(st.rows[logical], id)
		return
	}
	st.rows[logical][id] = r
	st.index(logical, r, true)
	st.indexValues(logical, r, true)
}

func newStore(sc *schema) *store {
	st := &store{rows: map[string]map[string]*row{}, version: 1000, refs: map[string]map[string]map[string]map[string]bool{},
		byValue: map[string]map[string]map[string]map[string]bool{}}
	for l := range sc.byLogical {
		st.rows[l] = map[string]*row{}
	}
	return st
}

// tx is an undo journal: every write records the row's previous state so a failed
// request, change set or bulk operation can be rolled back as a unit.
type tx struct {
	st   *store
	undo []undo
	rows int // rows written, for execution-time accounting

	deleting map[string]bool // ids whose delete is in progress (cascades skip their checks)

	publishes int  // products published by the current request (or batch part)
	system    bool // a test's direct write: no privilege checks
}

func (x *tx) markDeleting(id string) {
	if x.deleting == nil {
		x.deleting = map[string]bool{}
	}
	x.deleting[strings.ToLower(id)] = true
}

func (x *tx) isDeleting(id string) bool { return x.deleting[strings.ToLower(id)] }

type undo struct {
	logical, id string
	prev        *row // nil: the row did not exist
}

func (st *store) begin() *tx { return &tx{st: st} }

func (x *tx) get(logical, id string) *row { return x.st.rows[logical][strings.ToLower(id)] }

func (x *tx) put(logical string, r *row) {
	id := strings.ToLower(r.id)
	prev := x.st.rows[logical][id]
	x.undo = append(x.undo, undo{logical: logical, id: id, prev: prev})
	x.st.version++
	r.version = x.st.version
	if prev == nil && r.seq == 0 {
		x.st.seq++
		r.seq = x.st.seq
	}
	r.vals["versionnumber"] = int(r.version)
	r.id = id
	x.st.replace(logical, id, r)
	x.rows++
}

func (x *tx) del(logical, id string) {
	id = strings.ToLower(id)
	prev := x.st.rows[logical][id]
	if prev == nil {
		return
	}
	x.undo = append(x.undo, undo{logical: logical, id: id, prev: prev})
	x.st.replace(logical, id, nil)
	x.rows++
}

func (x *tx) rollback() {
	for i := len(x.undo) - 1; i >= 0; i-- {
		u := x.undo[i]
		x.st.replace(u.logical, u.id, u.prev)
	}
	x.undo = nil
	x.deleting = nil
}

// savepoint/rollbackTo let a change set or bulk request undo only its own writes.
func (x *tx) savepoint() int { return len(x.undo) }

func (x *tx) rollbackTo(sp int) {
	for i := len(x.undo) - 1; i >= sp; i-- {
		u := x.undo[i]
		x.st.replace(u.logical, u.id, u.prev)
	}
	x.undo = x.undo[:sp]
	x.deleting = nil
}

// sorted returns a table's rows in creation order.
func (x *tx) sorted(logical string) []*row {
	m := x.st.rows[logical]
	out := make([]*row, 0, len(m))
	for _, r := range m {
		out = append(out, r)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].seq < out[j].seq })
	return out
}

// referencing returns rows of child whose lookup attr points at id.
func (x *tx) referencing(child, attr, id string) []*row {
	var out []*row
	for rid := range x.st.refs[child][attr][strings.ToLower(id)] {
		if r := x.st.rows[child][rid]; r != nil {
			out = append(out, r)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].seq < out[j].seq })
	return out
}

// relationship delete behaviours (Learn: webapi/update-delete-entities-using-web-api, "Delete";
// the cascade settings of each table reference page).
type relBehavior int

const (
	restrict relBehavior = iota
	cascade
	removeLink
)

type relationship struct {
	parent, child, attr string
	behavior            relBehavior
}

var relationships = []relationship{
	{"contact", "salesorder", "customerid", restrict},
	{"account", "salesorder", "customerid", restrict},
	{"contact", "invoice", "customerid", restrict},
	{"account", "invoice", "customerid", restrict},
	{"account", "contact", "parentcustomerid", removeLink},
	{"contact", "contact", "parentcustomerid", removeLink},
	{"contact", "account", "primarycontactid", removeLink},
	{"account", "account", "parentaccountid", removeLink},
	{"product", "salesorderdetail", "productid", restrict},
	{"product", "invoicedetail", "productid", restrict},
	{"product", "productpricelevel", "productid", cascade},
	{"product", "product", "parentproductid", cascade}, // product_parent_product: deleting a family deletes its products
	{"pricelevel", "salesorder", "pricelevelid", restrict},
	{"pricelevel", "invoice", "pricelevelid", restrict},
	{"pricelevel", "product", "pricelevelid", restrict},
	{"pricelevel", "productpricelevel", "pricelevelid", cascade},
	{"pricelevel", "contact", "defaultpricelevelid", removeLink},
	{"pricelevel", "account", "defaultpricelevelid", removeLink},
	{"uom", "product", "defaultuomid", restrict},
	{"uom", "salesorderdetail", "uomid", restrict},
	{"uom", "invoicedetail", "uomid", restrict},
	{"uom", "productpricelevel", "uomid", restrict},
	{"uomschedule", "product", "defaultuomscheduleid", restrict},
	{"uomschedule", "uom", "uomscheduleid", cascade},
	{"salesorder", "salesorderdetail", "salesorderid", cascade},
	{"salesorder", "orderclose", "salesorderid", cascade},
	{"salesorder", "invoice", "salesorderid", restrict},
	{"salesorderdetail", "invoicedetail", "salesorderdetailid", removeLink},
	{"invoice", "invoicedetail", "invoiceid", cascade},
}

func init() {
	// Every table's transactioncurrencyid is Restrict (transactioncurrency table reference).
	for _, c := range []string{"contact", "account", "pricelevel", "product", "productpricelevel", "salesorder",
		"salesorderdetail", "invoice", "invoicedetail"} {
		relationships = append(relationships, relationship{"transactioncurrency", c, "transactioncurrencyid", restrict})
	}
}

// deleteRow deletes a row applying the relationship behaviours; Restrict fails with
// 405 CannotDeleteDueToAssociation (compose-http-requests doc lists it under 405).
func (s *Server) deleteRow(x *tx, t *table, r *row) *apiError {
	if err := s.beforeDelete(x, t, r); err != nil {
		return err
	}
	for _, rel := range relationships {
		if rel.parent != t.logical {
			continue
		}
		kids := x.referencing(rel.child, rel.attr, r.id)
		var match []*row
		for _, k := range kids {
			if k.targets[rel.attr] == t.logical {
				match = append(match, k)
			}
		}
		if len(match) == 0 {
			continue
		}
		ct := s.sc.byLogical[rel.child]
		switch rel.behavior {
		case restrict:
			return errf(http.StatusMethodNotAllowed, codeCascadeDeleteNotAllowed,
				"The record cannot be deleted because it is associated with another record: %d %s record(s) reference this %s (%s).",
				len(match), rel.child, t.logical, rel.attr)
		case cascade:
			for _, k := range match {
				if x.get(ct.logical, k.id) == nil {
					continue
				}
				if err := s.deleteRow(x, ct, k); err != nil {
					return err
				}
			}
		case removeLink:
			for _, k := range match {
				c := k.clone()
				c.setRef(rel.attr, "", "")
				c.vals["modifiedon"] = s.nowString()
				x.put(ct.logical, c)
			}
		}
	}
	x.del(t.logical, r.id)
	return s.afterDelete(x, t, r)
}

func (s *Server) nowString() string { return time.Now().UTC().Format("2006-01-02T15:04:05Z") }

// sameText returns the rows of logical whose string column col may equal v
// case-insensitively (a superset: the caller compares).
func (x *tx) sameText(logical, col, v string) []*row {
	if l, ok := asciiLower(v); ok {
		return x.st.withValue(logical, col, map[string]bool{l: true})
	}
	return slices.Collect(maps.Values(x.st.rows[logical]))
}
