package nop_test

import (
	"errors"
	"testing"

	"github.com/nopsync/nopsync/shared/nop"
)

var fuzzEntities = []nop.Entity{"customer", "product", "order"}

// checkErr fails unless err is one of the two documented error types.
func checkErr(t *testing.T, err error) {
	var ve *nop.ValidationError
	var tl *nop.TooLargeError
	if !errors.As(err, &ve) && !errors.As(err, &tl) {
		t.Fatalf("undocumented error type %T: %v", err, err)
	}
	if ve != nil && ve.Message == "" {
		t.Fatalf("validation error without a message: %+v", ve)
	}
}

// FuzzDecodeRequest: no panics; errors are typed; whatever is accepted can be sent and
// comes back from the queue as the same events.
func FuzzDecodeRequest(f *testing.F) {
	for i, name := range []string{"customer.json", "product.json", "order.json"} {
		f.Add(uint8(i), readTestdata(f, name))
	}
	f.Add(uint8(0), []byte(`[{"id":"a","type":"customer.created"}]`))
	f.Fuzz(func(t *testing.T, which uint8, body []byte) {
		entity := fuzzEntities[int(which)%len(fuzzEntities)]
		evs, err := nop.DecodeRequest(entity, body)
		if err != nil {
			checkErr(t, err)
			if evs != nil {
				t.Fatal("events returned with an error")
			}
			return
		}
		if len(evs) < 1 || len(evs) > nop.MaxEvents {
			t.Fatalf("%d events accepted", len(evs))
		}
		seen := map[string]bool{}
		for _, ev := range evs {
			if ev.Entity() != entity || ev.ID == "" || ev.EntityID() == "" || seen[ev.ID] {
				t.Fatalf("bad event accepted: %q %q %q", ev.Type, ev.ID, ev.EntityID())
			}
			seen[ev.ID] = true
		}
		msgs, err := nop.Messages(entity, evs)
		if err != nil {
			t.Fatalf("Messages: %v", err)
		}
		var back []*nop.Event
		for _, m := range msgs {
			if len(evs) > 1 && len(m.Body) > nop.MaxChunkBodyBytes {
				t.Fatalf("chunk of %d bytes", len(m.Body))
			}
			got, _, err := nop.DecodeEnvelope(m.Body)
			if err != nil {
				t.Fatalf("DecodeEnvelope of our own message: %v", err)
			}
			back = append(back, got...)
		}
		if len(back) != len(evs) {
			t.Fatalf("%d events back, sent %d", len(back), len(evs))
		}
		for i := range evs {
			if back[i].ID != evs[i].ID || string(back[i].Raw) != string(evs[i].Raw) || back[i].OrderKey() != evs[i].OrderKey() {
				t.Fatalf("event %d changed on the way through the queue", i)
			}
		}
	})
}

// FuzzDecodeEnvelope: no panics; errors are typed; every accepted event is one intake
// would accept too.
func FuzzDecodeEnvelope(f *testing.F) {
	for _, name := range []string{"customer.json", "product.json", "order.json"} {
		ev := readTestdata(f, name)
		f.Add(append(append([]byte(`{"evt":`), ev...), '}'))
		f.Add(append(append([]byte(`{"chunk":{"id":"chunk-1","events":[`), ev...), []byte(`]}}`)...))
	}
	f.Add([]byte(`{"chunk":{"id":"x","events":[]}}`))
	f.Fuzz(func(t *testing.T, body []byte) {
		evs, _, err := nop.DecodeEnvelope(body)
		if err != nil {
			checkErr(t, err)
			return
		}
		if len(evs) < 1 || len(evs) > nop.MaxEvents {
			t.Fatalf("%d events", len(evs))
		}
		entity := evs[0].Entity()
		for i, ev := range evs {
			if ev.Entity() != entity {
				t.Fatalf("mixed entities in one envelope")
			}
			if _, err := nop.DecodeRequest(entity, ev.Raw); err != nil {
				t.Fatalf("event %d accepted from the queue but refused at intake: %v", i, err)
			}
		}
	})
}
