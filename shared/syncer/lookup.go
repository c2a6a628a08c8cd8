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

// maxConditions is the most conditions Dataverse takes in one query: "You can include no
// more than 500 total conditions in a query" (TooManyConditionsInQuery; learn.microsoft.com
// power-apps/developer/data-platform/webapi/query/filter-rows, "Condition limits").
const maxConditions = 500

// orFilters joins conds with " or " into as few filters as keep each one, URL-encoded,
// within budget bytes; every filter is wrap(joined) (wrap may be nil). A condition that
// alone exceeds the budget still goes, alone: Dataverse says so if it is too long.
func orFilters(conds []string, budget int, wrap func(string) string) []string {
	if wrap == nil {
		wrap = func(s string) string { return s }
	}
	var out []string
	for _, n := range orGroupsMax(conds, budget-len(url.QueryEscape(wrap(""))), maxConditions-conditionCount(wrap(""))) {
		out = append(out, wrap(strings.Join(conds[:n], " or ")))
		conds = conds[n:]
	}
	return out
}

// orGroups splits conds, in order, into runs whose " or "-joined, URL-encoded length stays
// within budget and that hold at most maxConditions conditions (a run holds at least one
// condition); it returns the runs' lengths.
func orGroups(conds []string, budget int) []int { return orGroupsMax(conds, budget, maxConditions) }

func orGroupsMax(conds []string, budget, maxConds int) []int {
	sepLen := len(url.QueryEscape(" or "))
	var runs []int
	n, size, count := 0, 0, 0
	for _, c := range conds {
		l, k := len(url.QueryEscape(c)), conditionCount(c)
		if n > 0 && (size+sepLen+l > budget || count+k > maxConds) {
			runs = append(runs, n)
			n, size, count = 0, 0, 0
		}
		if n > 0 {
			size += sepLen
		}
		n++
		size += l
		count += k
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

// conditionCount counts the conditions of an OData filter the way Dataverse does: each
// comparison (eq, ne, gt, ge, lt, le) and each string function is one. Comparisons inside
// quoted literals are not counted; a function name inside one is (counting high is safe).
func conditionCount(filter string) int {
	n := 0
	inQuote := false
	for i := 0; i < len(filter); i++ {
		c := filter[i]
		if c == '\'' {
			inQuote = !inQuote // '' inside a literal toggles twice
			continue
		}
		if inQuote || c != ' ' {
			continue
		}
		rest := filter[i+1:]
		if len(rest) >= 3 && rest[2] == ' ' {
			switch rest[:2] {
			case "eq", "ne", "gt", "ge", "lt", "le":
				n++
			}
		}
	}
	for _, f := range []string{"contains(", "startswith(", "endswith("} {
		n += strings.Count(filter, f)
	}
	return n
}
