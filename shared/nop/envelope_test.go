package nop_test

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/nopsync/nopsync/shared/nop"
)

func TestMessagesSingleEvent(t *testing.T) {
	body := readTestdata(t, "order.json") // pretty-printed: whitespace must survive
	evs, err := nop.DecodeRequest("order", body)
	if err != nil {
		t.Fatal(err)
	}
	msgs, err := nop.Messages("order", evs)
	if err != nil {
		t.Fatal(err)
	}
	if len(msgs) != 1 {
		t.Fatalf("%d messages", len(msgs))
	}
	m := msgs[0]
	if m.MessageID != "evt-order-0001" || m.SessionID != "order-900" || m.Subject != "order.paid" || m.ContentType != "application/json" {
		t.Errorf("message headers: %+v", m)
	}
	want := append(append([]byte(`{"evt":`), bytes.TrimSpace(body)...), '}')
	if !bytes.Equal(m.Body, want) {
		t.Errorf("body is not {\"evt\": <event as received>}:\n%s", m.Body)
	}
	var env nop.Envelope
	if err := json.Unmarshal(m.Body, &env); err != nil || env.Chunk != nil || len(env.Event) == 0 {
		t.Errorf("body does not decode as an Envelope: %v", err)
	}
	back, _, err := nop.DecodeEnvelope(m.Body)
	if err != nil || len(back) != 1 || back[0].ID != evs[0].ID || !bytes.Equal(back[0].Raw, evs[0].Raw) || back[0].Order.OrderTotal != evs[0].Order.OrderTotal {
		t.Errorf("round trip: %v", err)
	}

	// An array of one event travels like a single event.
	arr := append(append([]byte("[ "), body...), ']')
	evs, err = nop.DecodeRequest("order", arr)
	if err != nil {
		t.Fatal(err)
	}
	msgs2, err := nop.Messages("order", evs)
	if err != nil || len(msgs2) != 1 || msgs2[0].MessageID != m.MessageID || !bytes.Equal(msgs2[0].Body, m.Body) {
		t.Errorf("array of one: %v %+v", err, msgs2)
	}
}

func chunkIDOf(ids []string) string {
	h := sha256.Sum256([]byte(strings.Join(ids, "\n")))
	return "chunk-" + hex.EncodeToString(h[:])[:32]
}

func TestMessagesChunks(t *testing.T) {
	order := readTestdata(t, "order.json")
	// 1000 events of 4 000 bytes: a 4 MB body, so several chunks.
	const n, size = 1000, 4000
	// One padded template; ids and data.id are swapped in with fixed-width text.
	tmpl := string(padded(t, mutate(t, order, "data.id", 1000), "import-XXXX", size))
	parts := make([]string, n)
	for i := range parts {
		p := strings.Replace(tmpl, "import-XXXX", fmt.Sprintf("import-%04d", i), 1)
		parts[i] = strings.Replace(p, `"id":1000,`, fmt.Sprintf(`"id":%d,`, 1000+i), 1)
	}
	body := []byte("[" + strings.Join(parts, ",") + "]")
	if len(body) > nop.MaxBodyBytes {
		t.Fatalf("test body %d over the limit", len(body))
	}
	evs, err := nop.DecodeRequest("order", body)
	if err != nil {
		t.Fatal(err)
	}
	msgs, err := nop.Messages("order", evs)
	if err != nil {
		t.Fatal(err)
	}
	// Greedy packing: each chunk holds as many whole events as fit in 240 KiB.
	perChunk := (nop.MaxChunkBodyBytes - len(`{"chunk":{"id":"chunk-00000000000000000000000000000000","events":[]}}`) + 1) / (size + 1)
	if want := (n + perChunk - 1) / perChunk; len(msgs) != want {
		t.Errorf("%d chunks, want %d", len(msgs), want)
	}
	next := 0
	for ci, m := range msgs {
		if len(m.Body) > nop.MaxChunkBodyBytes || len(m.Body) >= 256<<10 {
			t.Errorf("chunk %d body %d bytes", ci, len(m.Body))
		}
		var env struct {
			Chunk struct {
				ID     string            `json:"id"`
				Events []json.RawMessage `json:"events"`
			} `json:"chunk"`
		}
		if err := json.Unmarshal(m.Body, &env); err != nil {
			t.Fatalf("chunk %d: %v", ci, err)
		}
		var ids []string
		for _, r := range env.Chunk.Events {
			if string(r) != parts[next] {
				t.Fatalf("chunk %d: event %d not byte-identical or out of order", ci, next)
			}
			ids = append(ids, fmt.Sprintf("import-%04d", next))
			next++
		}
		id := chunkIDOf(ids)
		if m.MessageID != id || env.Chunk.ID != id || m.SessionID != "order-chunk-"+id[6:18] || m.Subject != "chunk" || m.ContentType != "application/json" {
			t.Errorf("chunk %d headers: %s %s %s (want %s)", ci, m.MessageID, m.SessionID, m.Subject, id)
		}
		if id != nop.ChunkID(ids) {
			t.Errorf("ChunkID differs")
		}
		back, _, err := nop.DecodeEnvelope(m.Body)
		if err != nil || len(back) != len(ids) || back[0].ID != ids[0] {
			t.Errorf("chunk %d round trip: %v", ci, err)
		}
	}
	if next != n {
		t.Errorf("%d events in chunks, want %d", next, n)
	}

	// Largest events (200 KiB) travel one per chunk, still under the limit.
	cust := readTestdata(t, "customer.json")
	big := []byte("[" + string(padded(t, cust, "a", nop.MaxEventBytes)) + "," + string(padded(t, cust, "b", nop.MaxEventBytes)) + "]")
	evs, err = nop.DecodeRequest("customer", big)
	if err != nil {
		t.Fatal(err)
	}
	msgs, err = nop.Messages("customer", evs)
	if err != nil || len(msgs) != 2 {
		t.Fatalf("two 200 KiB events: %d messages, %v", len(msgs), err)
	}
	for _, m := range msgs {
		if len(m.Body) > nop.MaxChunkBodyBytes {
			t.Errorf("body %d", len(m.Body))
		}
	}
	// Same events, same chunk ids (duplicate detection drops a re-sent import).
	again, _ := nop.Messages("customer", evs)
	if again[0].MessageID != msgs[0].MessageID || again[1].MessageID == msgs[0].MessageID {
		t.Error("chunk ids must be deterministic and distinct")
	}
}

func TestMessagesRefusesMismatch(t *testing.T) {
	evs, err := nop.DecodeRequest("customer", readTestdata(t, "customer.json"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := nop.Messages("order", evs); err == nil {
		t.Error("customer events accepted as orders")
	}
	if _, err := nop.Messages("order", nil); err == nil {
		t.Error("no events accepted")
	}
}

func TestDecodeEnvelopeErrors(t *testing.T) {
	cust := string(readTestdata(t, "customer.json"))
	prod := string(readTestdata(t, "product.json"))
	badCust := string(mutate(t, []byte(cust), "data.customerGuid", "x"))
	cases := []struct {
		name, body string
		index      int
		field, msg string
	}{
		{"not JSON", `{"evt":`, -1, "", "malformed JSON"},
		{"array", `[]`, -1, "", "JSON object"},
		{"invalid UTF-8", `{"evt":` + strings.Replace(cust, "Grace", "Gr\xffce", 1) + `}`, -1, "", "UTF-8"},
		{"empty object", `{}`, -1, "", `"evt" or "chunk"`},
		{"nulls", `{"evt":null,"chunk":null}`, -1, "", `"evt" or "chunk"`},
		{"both", `{"evt":` + cust + `,"chunk":{"id":"c","events":[` + cust + `]}}`, -1, "", "both"},
		{"evt not object", `{"evt":"hi"}`, -1, "evt", "must be an event object"},
		{"evt invalid", `{"evt":` + badCust + `}`, 0, "data.customerGuid", "UUID"},
		{"evt unknown entity", `{"evt":` + strings.Replace(cust, "customer.updated", "invoice.created", 1) + `}`, 0, "type", "<entity>.<action>"},
		{"chunk not object", `{"chunk":[]}`, -1, "chunk", "must be an object"},
		{"chunk without id", `{"chunk":{"events":[` + cust + `]}}`, -1, "chunk.id", "is required"},
		{"chunk empty id", `{"chunk":{"id":"","events":[` + cust + `]}}`, -1, "chunk.id", "must not be empty"},
		{"chunk without events", `{"chunk":{"id":"c"}}`, -1, "chunk.events", "is required"},
		{"chunk no events", `{"chunk":{"id":"c","events":[]}}`, -1, "chunk.events", "1 to 1000"},
		{"chunk event not object", `{"chunk":{"id":"c","events":[` + cust + `,7]}}`, 1, "", "must be an event object"},
		{"chunk mixed entities", `{"chunk":{"id":"c","events":[` + cust + `,` + prod + `]}}`, 1, "type", "does not match"},
		{"chunk duplicate event", `{"chunk":{"id":"c","events":[` + prod + `,` + prod + `]}}`, 1, "id", "duplicate"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			evs, _, err := nop.DecodeEnvelope([]byte(tc.body))
			var ve *nop.ValidationError
			if !errors.As(err, &ve) {
				t.Fatalf("want *ValidationError, got %T %v", err, err)
			}
			if evs != nil || ve.Index != tc.index || ve.Field != tc.field || !strings.Contains(ve.Message, tc.msg) {
				t.Errorf("got index %d field %q message %q; want %d %q %q", ve.Index, ve.Field, ve.Message, tc.index, tc.field, tc.msg)
			}
		})
	}
	// An invalid field in the second event of a chunk names that event and field.
	second := strings.Replace(strings.Replace(prod, `"productType": 10`, `"productType": 11`, 1), "evt-product-0001", "evt-product-0002", 1)
	_, _, err := nop.DecodeEnvelope([]byte(`{"chunk":{"id":"c","events":[` + prod + `,` + second + `]}}`))
	var ve *nop.ValidationError
	if !errors.As(err, &ve) || ve.Index != 1 || ve.Field != "data.productType" {
		t.Errorf("chunk invalid field: %v", err)
	}
	// A too large event in a replayed message.
	_, _, err = nop.DecodeEnvelope([]byte(`{"evt":` + string(padded(t, []byte(cust), "x", nop.MaxEventBytes+1)) + `}`))
	if !errors.Is(err, nop.ErrTooLarge) {
		t.Errorf("too large event in envelope: %v", err)
	}
}

// A sync run's chunk says it re-sends stored events in its own field; DecodeEnvelope
// reports it, and ordinary messages (single events, import chunks, whatever their id)
// are never re-syncs.
func TestResyncChunkFlag(t *testing.T) {
	body := readTestdata(t, "order.json")
	evs, err := nop.DecodeRequest("order", body)
	if err != nil {
		t.Fatal(err)
	}
	m, err := nop.ResyncChunk("resync-run1-order-1", []json.RawMessage{evs[0].Raw})
	if err != nil {
		t.Fatal(err)
	}
	if m.MessageID != "resync-run1-order-1" || m.Subject != nop.ChunkSubject {
		t.Errorf("headers: %+v", m)
	}
	back, resync, err := nop.DecodeEnvelope(m.Body)
	if err != nil || !resync || len(back) != 1 || back[0].ID != evs[0].ID {
		t.Fatalf("resync chunk decoded as %d events, resync %v, %v", len(back), resync, err)
	}
	if n := nop.CountEvents(m.Body); n != 1 {
		t.Errorf("CountEvents = %d", n)
	}
	plain, err := nop.Messages("order", evs)
	if err != nil {
		t.Fatal(err)
	}
	ev := string(evs[0].Raw)
	for name, b := range map[string]string{
		"single event":            string(plain[0].Body),
		"chunk with a resync- id": `{"chunk":{"id":"resync-run1-order-1","events":[` + ev + `]}}`,
		"chunk with resync false": `{"chunk":{"id":"c1","resync":false,"events":[` + ev + `]}}`,
	} {
		if _, resync, err := nop.DecodeEnvelope([]byte(b)); err != nil || resync {
			t.Errorf("%s: resync %v, %v", name, resync, err)
		}
	}
	_, _, err = nop.DecodeEnvelope([]byte(`{"chunk":{"id":"c1","resync":"yes","events":[` + ev + `]}}`))
	var ve *nop.ValidationError
	if !errors.As(err, &ve) || ve.Field != "chunk.resync" {
		t.Errorf("a non-boolean resync: %v", err)
	}
}

func TestQueues(t *testing.T) {
	for _, e := range []nop.Entity{"customer", "product", "order"} {
		q, ok := nop.Queue(e)
		if !ok || q != string(e)+"s" {
			t.Errorf("Queue(%s) = %q, %v", e, q, ok)
		}
		if back, ok := nop.QueueEntity(q); !ok || back != e {
			t.Errorf("QueueEntity(%s) = %q, %v", q, back, ok)
		}
		b, ok := nop.BulkQueue(e)
		if !ok || b != string(e)+"s-bulk" || !nop.IsBulkQueue(b) || nop.IsBulkQueue(q) {
			t.Errorf("BulkQueue(%s) = %q, %v", e, b, ok)
		}
		if back, ok := nop.QueueEntity(b); !ok || back != e {
			t.Errorf("QueueEntity(%s) = %q, %v", b, back, ok)
		}
		if got := strings.Join(nop.EntityQueues(e), ","); got != q+","+b {
			t.Errorf("EntityQueues(%s) = %s", e, got)
		}
	}
	if _, ok := nop.QueueEntity("customer"); ok {
		t.Error(`QueueEntity("customer"): an entity name is not a queue`)
	}
	if got := strings.Join(nop.Queues(), ","); got != "customers,products,orders,customers-bulk,products-bulk,orders-bulk" {
		t.Errorf("Queues() = %s", got)
	}
}

// DecodeStored reads an event as sync state keeps it, with the rules of a queue message.
func TestDecodeStored(t *testing.T) {
	evs, err := nop.DecodeRequest("order", readTestdata(t, "order.json"))
	if err != nil {
		t.Fatal(err)
	}
	ev, err := nop.DecodeStored(evs[0].Raw)
	if err != nil || ev.ID != evs[0].ID || !bytes.Equal(ev.Raw, evs[0].Raw) {
		t.Fatalf("DecodeStored = %+v, %v", ev, err)
	}
	for _, bad := range []string{``, `[]`, `{"id":"x"}`, `{}`} {
		if _, err := nop.DecodeStored([]byte(bad)); err == nil {
			t.Errorf("DecodeStored(%q) accepted it", bad)
		}
	}
}

// A chunk cut short by the body limit holds whole hundreds of events (whole bulk
// requests at the default DATAVERSE_BULK_SIZE), the last chunk the rest.
func TestMessagesChunksWholeHundreds(t *testing.T) {
	cust := readTestdata(t, "customer.json")
	// 1000 events of 800 bytes: about 307 fit in 240 KiB.
	const n, size = 1000, 800
	tmpl := string(padded(t, mutate(t, cust, "data.id", 1000), "import-XXXX", size))
	parts := make([]string, n)
	for i := range parts {
		p := strings.Replace(tmpl, "import-XXXX", fmt.Sprintf("import-%04d", i), 1)
		parts[i] = strings.Replace(p, `"id":1000,`, fmt.Sprintf(`"id":%d,`, 1000+i), 1)
	}
	evs, err := nop.DecodeRequest("customer", []byte("["+strings.Join(parts, ",")+"]"))
	if err != nil {
		t.Fatal(err)
	}
	msgs, err := nop.Messages("customer", evs)
	if err != nil {
		t.Fatal(err)
	}
	var got []int
	next := 0
	for ci, m := range msgs {
		if len(m.Body) > nop.MaxChunkBodyBytes {
			t.Errorf("chunk %d body %d bytes", ci, len(m.Body))
		}
		back, _, err := nop.DecodeEnvelope(m.Body)
		if err != nil {
			t.Fatalf("chunk %d: %v", ci, err)
		}
		for _, ev := range back {
			if want := fmt.Sprintf("import-%04d", next); ev.ID != want {
				t.Fatalf("chunk %d: event %s, want %s", ci, ev.ID, want)
			}
			next++
		}
		got = append(got, len(back))
	}
	if want := []int{300, 300, 300, 100}; !slices.Equal(got, want) {
		t.Errorf("events per chunk %v, want %v", got, want)
	}
}
