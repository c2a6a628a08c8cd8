package dataversetest

import (
	"strings"
	"testing"

	"github.com/google/uuid"
)

// With Options.History the simulator keeps each committed write of a row, with the
// request that made it; a refused write leaves no entry. Without it, none is kept.
func TestHistoryKeepsCommittedWrites(t *testing.T) {
	c := newTC(t, Options{History: true})
	id := uuid.NewString()
	c.must(204, c.do("PATCH", "contacts("+id+")", map[string]any{"lastname": "A"}))
	c.must(204, c.do("PATCH", "contacts("+id+")", map[string]any{"lastname": "B"}))
	c.must(400, c.do("PATCH", "contacts("+id+")", map[string]any{"nosuchcolumn": "C"}))
	h := c.s.History("contacts", id)
	if len(h) != 2 {
		t.Fatalf("%d writes kept, want 2: %+v", len(h), h)
	}
	for i, want := range []string{"A", "B"} {
		if h[i].Row["lastname"] != want || !strings.HasPrefix(h[i].Request, "PATCH contacts(") {
			t.Fatalf("write %d: %s %v, want lastname %s", i, h[i].Request, h[i].Row["lastname"], want)
		}
	}
	if !h[1].At.After(h[0].At) && !h[1].At.Equal(h[0].At) {
		t.Fatalf("writes out of order: %v then %v", h[0].At, h[1].At)
	}

	plain := newTC(t, Options{})
	plain.must(204, plain.do("PATCH", "contacts("+id+")", map[string]any{"lastname": "A"}))
	if h := plain.s.History("contacts", id); h != nil {
		t.Fatalf("history kept without Options.History: %+v", h)
	}
}
