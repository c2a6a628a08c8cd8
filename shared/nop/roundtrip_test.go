package nop_test

import (
	"encoding/json"
	"reflect"
	"testing"

	"github.com/nopsync/nopsync/shared/nop"
)

// The typed structs marshal (json tags, Money as strings) into data that decodes back to
// the same value: tests elsewhere build events from structs.
func TestTypedStructsRoundTrip(t *testing.T) {
	for _, name := range []string{"customer", "product", "order"} {
		evs, err := nop.DecodeRequest(nop.Entity(name), readTestdata(t, name+".json"))
		if err != nil {
			t.Fatal(err)
		}
		ev := evs[0]
		var data any
		switch {
		case ev.Customer != nil:
			data = ev.Customer
		case ev.Product != nil:
			data = ev.Product
		default:
			data = ev.Order
		}
		b, err := json.Marshal(map[string]any{"id": "rt", "type": ev.Type, "occurredOnUtc": ev.OccurredOnUtc, "data": data})
		if err != nil {
			t.Fatal(err)
		}
		back, err := nop.DecodeRequest(nop.Entity(name), b)
		if err != nil {
			t.Fatalf("%s: marshalled struct refused: %v", name, err)
		}
		got := []any{back[0].Customer, back[0].Product, back[0].Order}
		want := []any{ev.Customer, ev.Product, ev.Order}
		if !reflect.DeepEqual(got, want) {
			t.Errorf("%s: round trip differs", name)
		}
	}
}
