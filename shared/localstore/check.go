package localstore

import (
	"fmt"
	"math"
	"slices"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/nopsync/nopsync/shared/state"
)

// MaxKeyLen bounds ids, doc kinds and doc keys (bytes), the same as the Table Storage
// store, so a key that works locally works in Azure.
const MaxKeyLen = 160

func checkKey(what, k string) error {
	switch {
	case k == "":
		return fmt.Errorf("%s is empty", what)
	case len(k) > MaxKeyLen:
		return fmt.Errorf("%s is %d bytes long, at most %d allowed", what, len(k), MaxKeyLen)
	case !utf8.ValidString(k):
		return fmt.Errorf("%s %q is not valid UTF-8", what, k)
	}
	return nil
}

func checkRecord(r *state.Record) error {
	if r == nil {
		return fmt.Errorf("localstore: save: nil record")
	}
	if !slices.Contains(state.Entities, r.Entity) {
		return fmt.Errorf("localstore: save %q %q: unknown entity %q", r.Entity, r.ID, r.Entity)
	}
	if err := checkKey("id", r.ID); err != nil {
		return fmt.Errorf("localstore: save %s: %w", r.Entity, err)
	}
	if !slices.Contains(state.Statuses, r.Status) {
		return fmt.Errorf("localstore: save %s %q: unknown status %q", r.Entity, r.ID, r.Status)
	}
	// The Table Storage store's limits, so what works locally works in Azure.
	if len(r.Data) > MaxData {
		return fmt.Errorf("localstore: save %s %q: data is %d bytes, at most %d allowed", r.Entity, r.ID, len(r.Data), MaxData)
	}
	if r.Attempts < 0 || r.Attempts > math.MaxInt32 {
		return fmt.Errorf("localstore: save %s %q: attempts %d out of range", r.Entity, r.ID, r.Attempts)
	}
	n := 2
	for k, v := range r.Extra {
		n += len(k) + len(v) + 6
	}
	if n > MaxExtra {
		return fmt.Errorf("localstore: save %s %q: extra is about %d bytes, at most %d allowed", r.Entity, r.ID, n, MaxExtra)
	}
	for _, f := range []struct{ name, v string }{
		{"dataverse id", r.DataverseID}, {"order key", r.OrderKey}, {"last event id", r.LastEventID},
		{"data hash", r.DataHash}, {"lease owner", r.LeaseOwner},
	} {
		if len(f.v) > MaxString {
			return fmt.Errorf("localstore: save %s %q: %s is %d bytes, at most %d allowed", r.Entity, r.ID, f.name, len(f.v), MaxString)
		}
	}
	return nil
}

// Limits shared with the Table Storage store.
const (
	MaxData   = 640 << 10 // Data and doc values
	MaxExtra  = 30_000    // Extra, as JSON
	MaxString = 16 << 10  // string fields; a longer Reason is cut to this
)

func checkDoc(d *state.Doc) error {
	if d == nil {
		return fmt.Errorf("localstore: save doc: nil doc")
	}
	if err := checkKey("doc kind", d.Kind); err != nil {
		return fmt.Errorf("localstore: save doc: %w", err)
	}
	if err := checkKey("doc key", d.Key); err != nil {
		return fmt.Errorf("localstore: save doc %s: %w", d.Kind, err)
	}
	if len(d.Value) > MaxData {
		return fmt.Errorf("localstore: save doc %s %q: value is %d bytes, at most %d allowed", d.Kind, d.Key, len(d.Value), MaxData)
	}
	return nil
}

// isDecimal reports whether id is a canonical decimal (no sign, no leading zero) of at
// most 20 digits: such ids sort numerically, before every other key.
func isDecimal(id string) bool {
	if id == "" || len(id) > 20 || (id[0] == '0' && len(id) > 1) {
		return false
	}
	for i := 0; i < len(id); i++ {
		if id[i] < '0' || id[i] > '9' {
			return false
		}
	}
	return true
}

// compareIDs is the Scan order: decimal ids numerically, then other keys in byte order.
func compareIDs(a, b string) int {
	da, db := isDecimal(a), isDecimal(b)
	switch {
	case da && db:
		if len(a) != len(b) {
			return len(a) - len(b)
		}
		return strings.Compare(a, b)
	case da:
		return -1
	case db:
		return 1
	}
	return strings.Compare(a, b)
}

func utc(t time.Time) time.Time {
	if t.IsZero() {
		return time.Time{}
	}
	return t.UTC()
}
