package nop

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"unicode/utf8"

	"github.com/nopsync/nopsync/shared/queue"
)

// MaxChunkBodyBytes bounds a chunk message's body: Service Bus Standard takes messages
// up to 256 KiB including headers and properties, so 16 KiB are left for those.
const MaxChunkBodyBytes = 240 << 10

// chunkAlign: a chunk message cut short by MaxChunkBodyBytes holds a multiple of this
// many events when it holds more, so its rows fill whole bulk requests at the Dataverse
// client's default of 100 rows per request (DATAVERSE_BULK_SIZE): 301 events would take
// four requests, one of them for a single row, where 300 take three. Dataverse counts
// every request against the per-user limit of 6,000 per 5 minutes
// (https://learn.microsoft.com/power-apps/developer/data-platform/api-limits).
const chunkAlign = 100

// ChunkSubject is the Subject of chunk messages.
const ChunkSubject = "chunk"

// Envelope is the body of a queue message: exactly one of Event (a single event, as
// received) and Chunk (several events of one entity, from an import array). Wrapping
// keeps the event's fields away from the trigger metadata the Functions host adds at the
// top level.
type Envelope struct {
	Event json.RawMessage `json:"evt,omitempty"`
	Chunk *Chunk          `json:"chunk,omitempty"`
}

// Chunk is several events of one entity travelling in one message.
type Chunk struct {
	ID string `json:"id"` // the message id: ChunkID of its events' ids, or a sync run's id
	// Resync marks a chunk that re-sends stored events (a sync run, scope "all" or
	// "failed"): its events are written again even when state says they were applied
	// with the same data, which is how rows changed or deleted in Dynamics 365 get
	// repaired. Older events are still skipped as stale.
	Resync bool              `json:"resync,omitempty"`
	Events []json.RawMessage `json:"events"`
}

// ResyncChunk builds the message of a chunk that re-sends stored events (Resync set).
// id must be new for every run (for example "resync-<run>-<entity>-<n>"): an id derived
// from the events' ids would be dropped by duplicate detection. events are stored
// events, sent verbatim; the caller keeps the body under MaxChunkBodyBytes and the
// events at most MaxEvents.
func ResyncChunk(id string, events []json.RawMessage) (queue.Message, error) {
	if id == "" || len(events) == 0 {
		return queue.Message{}, errors.New("nop: a resync chunk needs an id and events")
	}
	body, err := json.Marshal(Envelope{Chunk: &Chunk{ID: id, Resync: true, Events: events}})
	if err != nil {
		return queue.Message{}, fmt.Errorf("nop: resync chunk %s: %w", id, err)
	}
	return queue.Message{
		MessageID:   id,
		SessionID:   id,
		Subject:     ChunkSubject,
		ContentType: "application/json",
		Body:        body,
	}, nil
}

// ChunkID returns "chunk-" and the first 32 hex digits of the SHA-256 of the ids joined
// by "\n". Event ids can't hold control characters, so distinct id lists can't collide
// by joining. The same events give the same id, so a re-sent import chunk is dropped by
// duplicate detection.
func ChunkID(ids []string) string {
	h := sha256.Sum256([]byte(strings.Join(ids, "\n")))
	return "chunk-" + hex.EncodeToString(h[:16])
}

// Messages builds the queue messages for a request's validated events (all of entity).
// One event: MessageID = event id, SessionID = "<entity>-<data.id>", Subject = event
// type, body {"evt": <event as received>}. More than one: chunk messages of consecutive
// events in request order, each body under MaxChunkBodyBytes, MessageID = ChunkID,
// SessionID = "<entity>-chunk-<first 12 hex of the chunk hash>", Subject "chunk",
// body {"chunk": {"id": ..., "events": [<events as received>]}}. Event bytes are copied
// verbatim, never re-encoded.
func Messages(entity Entity, events []*Event) ([]queue.Message, error) {
	if len(events) == 0 {
		return nil, errors.New("nop: no events to send")
	}
	for i, ev := range events {
		if ev.Entity() != entity {
			return nil, fmt.Errorf("nop: event %d (%s) is not a %s event", i, ev.Type, entity)
		}
		if len(ev.Raw) == 0 || len(ev.Raw) > MaxEventBytes {
			return nil, fmt.Errorf("nop: event %d: raw event of %d bytes can't be sent", i, len(ev.Raw))
		}
	}
	if len(events) == 1 {
		ev := events[0]
		body := make([]byte, 0, len(ev.Raw)+8)
		body = append(body, `{"evt":`...)
		body = append(body, ev.Raw...)
		body = append(body, '}')
		return []queue.Message{{
			MessageID:   ev.ID,
			SessionID:   string(entity) + "-" + ev.EntityID(),
			Subject:     ev.Type,
			ContentType: "application/json",
			Body:        body,
		}}, nil
	}

	// Chunk body: {"chunk":{"id":"chunk-<32 hex>","events":[e1,e2,...]}}
	const overhead = len(`{"chunk":{"id":"chunk-00000000000000000000000000000000","events":[]}}`)
	var msgs []queue.Message
	for start := 0; start < len(events); {
		end, size := start, overhead
		for end < len(events) {
			add := len(events[end].Raw)
			if end > start {
				add++ // comma
			}
			if end > start && size+add > MaxChunkBodyBytes {
				break
			}
			size += add
			end++
		}
		if n := end - start; end < len(events) && n > chunkAlign {
			end = start + n/chunkAlign*chunkAlign
		}
		msgs = append(msgs, chunkMessage(entity, events[start:end]))
		start = end
	}
	return msgs, nil
}

func chunkMessage(entity Entity, evs []*Event) queue.Message {
	ids := make([]string, len(evs))
	n := 0
	for i, ev := range evs {
		ids[i] = ev.ID
		n += len(ev.Raw) + 1
	}
	id := ChunkID(ids)
	var b bytes.Buffer
	b.Grow(n + 80)
	b.WriteString(`{"chunk":{"id":"`)
	b.WriteString(id)
	b.WriteString(`","events":[`)
	for i, ev := range evs {
		if i > 0 {
			b.WriteByte(',')
		}
		b.Write(ev.Raw)
	}
	b.WriteString("]}}")
	return queue.Message{
		MessageID:   id,
		SessionID:   string(entity) + "-chunk-" + strings.TrimPrefix(id, "chunk-")[:12],
		Subject:     ChunkSubject,
		ContentType: "application/json",
		Body:        b.Bytes(),
	}
}

// DecodeEnvelope reads a queue message body back into validated events, applying every
// rule DecodeRequest applies (a message replayed by hand could hold anything), and says
// whether they re-send stored events (Chunk.Resync). A chunk's events must all be of
// one entity. Problems are returned as *ValidationError (Index -1
// with Field "evt", "chunk", "chunk.id" or "chunk.events" for the envelope itself, else
// the event's index in the chunk, 0 for a single event) or *TooLargeError; callers treat
// any error as permanent: the message will never become valid.
func DecodeEnvelope(body []byte) (events []*Event, resync bool, err error) {
	trimmed := bytes.TrimSpace(body)
	if len(trimmed) == 0 || trimmed[0] != '{' {
		return nil, false, &ValidationError{Index: -1, Message: "envelope must be a JSON object with \"evt\" or \"chunk\", got " + jsonKind(trimmed)}
	}
	if !utf8.Valid(trimmed) {
		return nil, false, &ValidationError{Index: -1, Message: "malformed JSON: envelope is not valid UTF-8"}
	}
	if err := checkSyntax(trimmed); err != nil {
		return nil, false, err
	}
	trimmed = bytes.Clone(trimmed) // events must not alias the caller's buffer
	d := &decoder{index: -1}
	env := d.asObject("", trimmed)
	if env == nil {
		return nil, false, d.err
	}
	evt, hasEvt := env.get("evt")
	chunk, hasChunk := env.get("chunk")
	switch {
	case hasEvt && hasChunk:
		return nil, false, &ValidationError{Index: -1, Message: "envelope holds both \"evt\" and \"chunk\""}
	case hasEvt:
		if evt[0] != '{' {
			return nil, false, &ValidationError{Index: -1, Field: "evt", Message: "must be an event object, got " + jsonKind(evt)}
		}
		evs, err := decodeEvents("", []json.RawMessage{evt})
		return evs, false, err
	case hasChunk:
		c := d.asObject("chunk", chunk)
		if c == nil {
			return nil, false, d.err
		}
		id := c.str("id")
		if d.err == nil && id == "" {
			d.fail("chunk.id", "must not be empty")
		}
		raws := c.array("events", true)
		if _, ok := c.get("resync"); ok {
			resync = c.boolean("resync")
		}
		if d.err != nil {
			return nil, false, d.err
		}
		if len(raws) == 0 || len(raws) > MaxEvents {
			return nil, false, &ValidationError{Index: -1, Field: "chunk.events", Message: fmt.Sprintf("must hold 1 to %d events, got %d", MaxEvents, len(raws))}
		}
		for i, r := range raws {
			if r[0] != '{' {
				return nil, false, &ValidationError{Index: i, Message: "must be an event object, got " + jsonKind(r)}
			}
		}
		evs, err := decodeEvents("", raws)
		return evs, resync, err
	default:
		return nil, false, &ValidationError{Index: -1, Message: "envelope must hold \"evt\" or \"chunk\""}
	}
}

// CountEvents returns how many events a queue message body carries (1 for a single
// event, the chunk's length for a chunk, 0 when the body is no envelope), without
// validating them: for views of dead-lettered messages.
func CountEvents(body []byte) int {
	var env Envelope
	if json.Unmarshal(body, &env) != nil {
		return 0
	}
	if env.Chunk != nil {
		return len(env.Chunk.Events)
	}
	if len(env.Event) > 0 {
		return 1
	}
	return 0
}

// DecodeStored decodes one event as kept in sync state (the event as received), applying
// the rules DecodeEnvelope applies to a single event's message.
func DecodeStored(data []byte) (*Event, error) {
	body := make([]byte, 0, len(data)+8)
	body = append(body, `{"evt":`...)
	body = append(body, data...)
	body = append(body, '}')
	evs, _, err := DecodeEnvelope(body)
	if err != nil {
		return nil, err
	}
	if len(evs) != 1 {
		return nil, errors.New("nop: stored data is not one event")
	}
	return evs[0], nil
}
