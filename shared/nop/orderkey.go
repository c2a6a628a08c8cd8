package nop

import (
	"cmp"
	"strconv"
	"strings"
	"time"
)

// Order keys say which of two events for the same entity is newer (docs/events.md: when both
// carry a sequence, the higher one; otherwise the later occurredOnUtc). A key is a string
// so sync state can store it:
//
//	with a sequence:    "s00000000001732529702113|t2026-11-25T10:15:02.113000000Z"
//	without a sequence: "t2026-11-25T10:15:02.113000000Z"
//
// The sequence is 20 digits and the time is UTC with 9 fractional digits, so two keys of
// the same form compare correctly with strings.Compare. Mixed forms (one with a sequence,
// one without) must compare by time, which plain string order can't do: always compare
// with CompareOrderKeys.
const orderKeyTime = "2006-01-02T15:04:05.000000000Z"

// OrderKey returns the event's order key.
func (e *Event) OrderKey() string { return MakeOrderKey(e.Sequence, e.OccurredOnUtc) }

// MakeOrderKey builds an order key from an optional sequence and a time.
func MakeOrderKey(seq *int64, t time.Time) string {
	ts := "t" + t.UTC().Format(orderKeyTime)
	if seq == nil || *seq < 0 {
		return ts
	}
	s := strconv.FormatInt(*seq, 10)
	return "s" + strings.Repeat("0", 20-len(s)) + s + "|" + ts
}

// ClockSkew is how far ahead of the app's clock an event's time may be before the app
// says so (the signature's own time may be 300 s off, intake.MaxSkew).
const ClockSkew = 5 * time.Minute

// OrderKeyTime returns the time in the order key k.
func OrderKeyTime(k string) (time.Time, bool) {
	p, ok := parseOrderKey(k)
	return p.t, ok
}

type parsedKey struct {
	hasSeq bool
	seq    int64
	t      time.Time
}

func parseOrderKey(k string) (parsedKey, bool) {
	var p parsedKey
	if strings.HasPrefix(k, "s") {
		s, rest, ok := strings.Cut(k[1:], "|")
		if !ok || len(s) != 20 {
			return p, false
		}
		n, err := strconv.ParseInt(s, 10, 64)
		if err != nil || n < 0 {
			return p, false
		}
		p.hasSeq, p.seq, k = true, n, rest
	}
	if !strings.HasPrefix(k, "t") {
		return p, false
	}
	t, err := time.Parse(time.RFC3339Nano, k[1:])
	if err != nil {
		return p, false
	}
	p.t = t
	return p, true
}

// CompareOrderKeys returns -1 when a is older than b, +1 when newer, 0 when neither is
// newer (an equal event is applied again). Sequences decide when both keys carry one,
// else times. An empty or malformed key (no state yet) is older than any valid key; two
// of them compare as strings.
func CompareOrderKeys(a, b string) int {
	pa, oka := parseOrderKey(a)
	pb, okb := parseOrderKey(b)
	switch {
	case !oka && !okb:
		return strings.Compare(a, b)
	case !oka:
		return -1
	case !okb:
		return 1
	case pa.hasSeq && pb.hasSeq:
		return cmp.Compare(pa.seq, pb.seq)
	default:
		return pa.t.Compare(pb.t)
	}
}
