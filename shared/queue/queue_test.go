package queue_test

import (
	"strings"
	"testing"

	"github.com/nopsync/nopsync/shared/queue"
)

// Service Bus counts a MessageId's characters as .NET does (UTF-16 code units), so an
// id of 128 non-ASCII characters fits though it is up to 384 bytes in UTF-8; a
// character outside the Basic Multilingual Plane counts twice.
func TestMessageIDLength(t *testing.T) {
	for _, c := range []struct {
		id string
		ok bool
	}{
		{strings.Repeat("x", 128), true},
		{strings.Repeat("x", 129), false},
		{strings.Repeat("é", 128), true}, // 256 bytes
		{strings.Repeat("€", 128), true}, // 384 bytes
		{strings.Repeat("€", 129), false},
		{strings.Repeat("😀", 64), true}, // 128 code units
		{strings.Repeat("😀", 64) + "x", false},
		{"", false},
	} {
		m := queue.Message{MessageID: c.id, SessionID: "customer-1"}
		if err := m.Check(); (err == nil) != c.ok {
			t.Errorf("MessageID of %d bytes, %d code units: %v, want ok=%v", len(c.id), queue.IDLength(c.id), err, c.ok)
		}
		m = queue.Message{MessageID: "e1", SessionID: c.id}
		if err := m.Check(); (err == nil) != c.ok {
			t.Errorf("SessionID of %d bytes: %v, want ok=%v", len(c.id), err, c.ok)
		}
	}
}
