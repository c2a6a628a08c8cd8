package syncer

import (
	"fmt"
	"net/url"
	"strings"
	"testing"
)

func TestOrFiltersPackWithinTheURLBudget(t *testing.T) {
	var conds []string
	for i := range 1000 {
		conds = append(conds, "emailaddress1 eq "+odataString(fmt.Sprintf("customer.number.%d+tag@example.com", i)))
	}
	wrap := func(s string) string { return "statecode eq 0 and (" + s + ")" }
	filters := orFilters(conds, maxFilterBytes, wrap)
	if len(filters) < 2 {
		t.Fatalf("%d filters for 1000 emails", len(filters))
	}
	var got []string
	for k, f := range filters {
		if n := len(url.QueryEscape(f)); n > maxFilterBytes {
			t.Errorf("filter of %d encoded bytes, budget %d", n, maxFilterBytes)
		}
		inner, ok := strings.CutPrefix(f, "statecode eq 0 and (")
		if !ok || !strings.HasSuffix(inner, ")") {
			t.Fatalf("filter not wrapped: %.80s", f)
		}
		got = append(got, strings.Split(strings.TrimSuffix(inner, ")"), " or ")...)
		// Packed full: the next condition would not have fitted.
		if k < len(filters)-1 {
			if n := len(url.QueryEscape(wrap(strings.TrimSuffix(inner, ")") + " or " + conds[len(got)]))); n <= maxFilterBytes {
				t.Errorf("filter %d stops at %d encoded bytes though the next condition fits", k, n)
			}
		}
	}
	if strings.Join(got, "\n") != strings.Join(conds, "\n") {
		t.Fatalf("conditions lost, repeated or reordered: %d of %d", len(got), len(conds))
	}

	// A condition above the budget goes alone; the others keep packing.
	long := "productnumber eq " + odataString(strings.Repeat("x", 200))
	runs := orGroups([]string{"a eq 1", long, "b eq 2", "c eq 3"}, 100)
	if fmt.Sprint(runs) != "[1 1 2]" {
		t.Fatalf("runs %v, want [1 1 2]", runs)
	}
	if orGroups(nil, 100) != nil {
		t.Fatal("runs for no conditions")
	}
}

// Dataverse takes at most 500 conditions per query, whatever the URL length: short
// conditions are split by count, the wrapper's own conditions included.
func TestOrFiltersAtMost500Conditions(t *testing.T) {
	var conds []string
	for i := range 1200 {
		conds = append(conds, "productnumber eq "+odataString(fmt.Sprintf("S%d", i)))
	}
	wrap := func(s string) string { return "statecode eq 0 and (" + s + ")" }
	filters := orFilters(conds, maxFilterBytes, wrap)
	total := 0
	for _, f := range filters {
		n := conditionCount(f)
		if n > maxConditions {
			t.Errorf("filter with %d conditions", n)
		}
		total += n - 1
	}
	if total != len(conds) || len(filters) != 3 {
		t.Fatalf("%d filters holding %d conditions, want 3 holding %d", len(filters), total, len(conds))
	}
	for f, want := range map[string]int{
		"a eq 'x eq y' or b ne 2":                  2,
		"a eq 'it''s le x' and contains(name,'q')": 2,
		"statecode eq 0":                           1,
		"":                                         0,
	} {
		if got := conditionCount(f); got != want {
			t.Errorf("conditionCount(%q) = %d, want %d", f, got, want)
		}
	}
}
