package dataversetest

import "testing"

// TestStatsByOperation: Stats.Operations counts each kind of request with its rows and
// execution time, keys left out of the kind.
func TestStatsByOperation(t *testing.T) {
	c := newTC(t, Options{})
	before := c.s.Stats().Operations
	id := entityID(c.must(204, c.do("POST", "contacts", map[string]any{"lastname": "A"})))
	c.must(204, c.do("PATCH", "contacts("+id+")", map[string]any{"lastname": "B"}, "If-Match", "*"))
	c.must(204, c.do("PATCH", "contacts("+id+")", map[string]any{"lastname": "C"}, "If-Match", "*"))
	c.must(200, c.do("GET", "contacts?$select=lastname", nil))
	ops := c.s.Stats().Operations
	for kind, want := range map[string]OpStats{
		"POST contacts":    {Requests: 1, RowsWritten: 1},
		"PATCH contacts()": {Requests: 2, RowsWritten: 2},
		"GET contacts":     {Requests: 1, RowsRead: 1},
	} {
		got := ops[kind]
		got.Requests -= before[kind].Requests
		got.RowsWritten -= before[kind].RowsWritten
		got.RowsRead -= before[kind].RowsRead
		if got.Requests != want.Requests || got.RowsWritten != want.RowsWritten || got.RowsRead != want.RowsRead || got.Execution <= 0 {
			t.Errorf("%s: %+v, want %+v with some execution time", kind, got, want)
		}
	}
	// The map handed out is a copy.
	ops["GET contacts"] = OpStats{}
	if c.s.Stats().Operations["GET contacts"].Requests == 0 {
		t.Fatal("changing Stats().Operations changed the server's counts")
	}
}
