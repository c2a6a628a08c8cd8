package syncer

import (
	"net/url"
	"strings"
)

// maxFilterBytes bounds one look-up's $filter, URL-encoded. Dataverse takes GET URLs of
// up to 32 KB (32,768 characters); 24 KiB leaves room for the rest of the URL and answers
// an import chunk's look-up (hundreds of ids or emails) in one request: the per-user
// request limit counts requests, not rows (Microsoft Learn: Dataverse api-limits).
const maxFilterBytes = 24 << 10

// orFilters joins conds with " or " into as few filters as keep each one, URL-encoded,
// within budget bytes; every filter is wrap(joined) (wrap may be nil). A condition that
// alone exceeds the budget still goes, alone: Dataverse says so if it is too long.
func orFilters(conds []string, budget int, wrap func(string) string) []string {
	if wrap == nil {
		wrap = func(s string) string { return s }
	}
	var out []string
	for _, n := range orGroups(conds, budget-len(url.QueryEscape(wrap("")))) {
		out = append(out, wrap(strings.Join(conds[:n], " or ")))
		conds = conds[n:]
	}
	return out
}

// orGroups splits conds, in order, into runs whose " or "-joined, URL-encoded length stays
// within budget (a run holds at least one condition); it returns the runs' lengths.
func orGroups(conds []string, budget int) []int {
	sepLen := len(url.QueryEscape(" or "))
	var runs []int
	n, size := 0, 0
	for _, c := range conds {
		l := len(url.QueryEscape(c))
		if n > 0 && size+sepLen+l > budget {
			runs = append(runs, n)
			n, size = 0, 0
		}
		if n > 0 {
			size += sepLen
		}
		n++
		size += l
	}
	if n > 0 {
		runs = append(runs, n)
	}
	return runs
}

// eqConds returns "col eq v" for every value (values already OData literals).
func eqConds(col string, values []string) []string {
	out := make([]string, len(values))
	for i, v := range values {
		out[i] = col + " eq " + v
	}
	return out
}
