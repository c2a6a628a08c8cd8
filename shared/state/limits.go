package state

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"math"
	"slices"
	"unicode/utf8"
)

// The limits every Store enforces, in bytes. They are the Table Storage store's, so what
// a store accepts locally it accepts in Azure (Table Storage: keys up to 1 KiB, string
// properties up to 64 KiB, binary properties up to 64 KiB, entities up to 1 MiB; Microsoft
// Learn: "Understanding the Table service data model").
const (
	// MaxKeyLen bounds record ids, doc kinds and doc keys: escaped (up to 3 characters a
	// byte) and prefixed, a key stays under Table Storage's 1 KiB.
	MaxKeyLen = 160
	// MaxData bounds a record's Data and a doc's Value: ten 64 KiB binary properties.
	MaxData = 640 << 10
	// MaxExtra bounds a record's Extra, as JSON.
	MaxExtra = 30_000
	// MaxString bounds the other string fields; a longer Reason is cut to it, not refused.
	MaxString = 16 << 10
)

// FitKey returns k when it is a valid doc key, else one made from it that is: "~sha256-"
// and the hex SHA-256 of k. A doc named by something that may be longer than MaxKeyLen
// bytes (an event id of 128 non-ASCII characters is up to 384 bytes in UTF-8; a product
// number of 100) then still has a key of its own; the doc should keep k in its value.
func FitKey(k string) string {
	if CheckKey("", k) == nil {
		return k
	}
	sum := sha256.Sum256([]byte(k))
	return "~sha256-" + hex.EncodeToString(sum[:])
}

// CheckKey checks a record id, doc kind or doc key: not empty, at most MaxKeyLen bytes,
// valid UTF-8. what names it in the error ("id", "doc kind", "doc key").
func CheckKey(what, k string) error {
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

// ValidateRecord checks a record before a store saves it: a known entity and status, a
// valid id, and every field within the limits above. Stores call it first and refuse the
// record (saving nothing) when it fails; the error names the record and the field.
func ValidateRecord(r *Record) error {
	if r == nil {
		return fmt.Errorf("nil record")
	}
	if !slices.Contains(Entities, r.Entity) {
		return fmt.Errorf("%q %q: unknown entity %q", r.Entity, r.ID, r.Entity)
	}
	if err := CheckKey("id", r.ID); err != nil {
		return fmt.Errorf("%s: %w", r.Entity, err)
	}
	if !slices.Contains(Statuses, r.Status) {
		return fmt.Errorf("%s %q: unknown status %q", r.Entity, r.ID, r.Status)
	}
	if len(r.Data) > MaxData {
		return fmt.Errorf("%s %q: data is %d bytes, at most %d allowed", r.Entity, r.ID, len(r.Data), MaxData)
	}
	if r.Attempts < 0 || r.Attempts > math.MaxInt32 {
		return fmt.Errorf("%s %q: attempts %d out of range", r.Entity, r.ID, r.Attempts)
	}
	if len(r.Extra) > 0 {
		b, err := json.Marshal(r.Extra)
		if err != nil {
			return fmt.Errorf("%s %q: extra: %w", r.Entity, r.ID, err)
		}
		if len(b) > MaxExtra {
			return fmt.Errorf("%s %q: extra is %d bytes as JSON, at most %d allowed", r.Entity, r.ID, len(b), MaxExtra)
		}
	}
	for _, f := range []struct{ name, v string }{
		{"dataverse id", r.DataverseID}, {"order key", r.OrderKey}, {"last event id", r.LastEventID},
		{"data hash", r.DataHash}, {"lease owner", r.LeaseOwner},
	} {
		if len(f.v) > MaxString {
			return fmt.Errorf("%s %q: %s is %d bytes, at most %d allowed", r.Entity, r.ID, f.name, len(f.v), MaxString)
		}
	}
	return nil
}

// ValidateDoc checks a doc before a store saves it: valid kind and key, a Value within
// MaxData.
func ValidateDoc(d *Doc) error {
	if d == nil {
		return fmt.Errorf("nil doc")
	}
	if err := CheckKey("doc kind", d.Kind); err != nil {
		return err
	}
	if err := CheckKey("doc key", d.Key); err != nil {
		return fmt.Errorf("%s: %w", d.Kind, err)
	}
	if len(d.Value) > MaxData {
		return fmt.Errorf("%s %q: value is %d bytes, at most %d allowed", d.Kind, d.Key, len(d.Value), MaxData)
	}
	return nil
}
