package syncer

import (
	"fmt"
	"strings"
	"testing"

	"github.com/nopsync/nopsync/shared/nop"
	"github.com/nopsync/nopsync/shared/state"
)

// oneChunk hands evs to the engine as one chunk message, the way a queue delivers an
// import chunk (bodies of this size come from smaller events than these test events).
func (e *env) oneChunk(entity state.Entity, evs []*nop.Event) {
	e.t.Helper()
	ids := make([]string, len(evs))
	raws := make([]string, len(evs))
	for i, ev := range evs {
		ids[i], raws[i] = ev.ID, string(ev.Raw)
	}
	body := `{"chunk":{"id":"` + nop.ChunkID(ids) + `","events":[` + strings.Join(raws, ",") + `]}}`
	if err := e.eng.HandleMessage(e.ctx, string(entity)+"s", []byte(body)); err != nil {
		e.t.Fatalf("chunk: %v", err)
	}
}

// A query holds at most 500 conditions (filter-rows, "Condition limits"): the look-ups of
// a 1000-event chunk with short product numbers or short emails fit the URL budget with
// far more than 500 conditions, and must be split by count too.
func TestChunkLookupsStayUnder500Conditions(t *testing.T) {
	e := newEnv(t, envOptions{})
	const n = 1000
	var prods []*nop.Event
	for i := 1; i <= n; i++ {
		prods = append(prods, mkEvent(t, example(t, "product-simple.json")[0], fmt.Sprintf("p%d", i), 1, func(d map[string]any) {
			d["id"], d["sku"], d["name"] = i, fmt.Sprintf("S%d", i), "P"
			d["shortDescription"], d["pictureUrls"] = nil, []any{}
		}))
	}
	e.oneChunk(state.Product, prods)
	var custs []*nop.Event
	for i := 1; i <= n; i++ {
		custs = append(custs, mkEvent(t, example(t, "customer-created.json")[0], fmt.Sprintf("c%d", i), 1, func(d map[string]any) {
			d["id"], d["email"], d["username"] = i, fmt.Sprintf("c%d@x.io", i), fmt.Sprintf("c%d", i)
			d["company"], d["phone"], d["address"], d["firstName"] = nil, nil, nil, nil
		}))
	}
	e.oneChunk(state.Customer, custs)
	for _, ent := range []state.Entity{state.Product, state.Customer} {
		failed := 0
		var reason string
		for i := 1; i <= n; i++ {
			if r := e.rec(ent, i); r.Status != state.Synced {
				failed++
				reason = r.Reason
			}
		}
		if failed > 0 {
			t.Errorf("%d of %d %ss not synced, e.g. %s", failed, n, ent, reason)
		}
	}
}
