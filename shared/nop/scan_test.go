package nop

import (
	"bytes"
	"encoding/json"
	"testing"
	"unicode/utf8"
)

// FuzzScan: the scanner never panics, and on valid JSON it agrees with encoding/json.
func FuzzScan(f *testing.F) {
	for _, s := range []string{`{}`, `[]`, `{"a":1,"b":[1,{"c":"}"}],"a":"x\"y"}`, `[1, "two", {"3": [4]}, null]`,
		`{"k\u00e9y" : true }`, `{"a":`, `["\\"]`, ` [ ] `, `{"a":{"b":{"c":[[[]]]}}}`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		members, okObj := splitObject(b)
		elems, okArr := splitArray(b)
		if !json.Valid(b) || !utf8.Valid(b) {
			return // agreement is only promised for what callers pass: valid UTF-8 JSON
		}
		trimmed := bytes.TrimSpace(b)
		switch trimmed[0] {
		case '{':
			var want map[string]json.RawMessage
			if err := json.Unmarshal(b, &want); err != nil || !okObj {
				t.Fatalf("splitObject failed on valid object %q", b)
			}
			got := map[string]json.RawMessage{}
			for _, m := range members {
				got[m.key] = m.value
			}
			if len(got) != len(want) {
				t.Fatalf("%d keys, want %d", len(got), len(want))
			}
			for k, v := range want {
				if !bytes.Equal(got[k], v) {
					t.Fatalf("key %q: %s, want %s", k, got[k], v)
				}
			}
		case '[':
			var want []json.RawMessage
			if err := json.Unmarshal(b, &want); err != nil || !okArr {
				t.Fatalf("splitArray failed on valid array %q", b)
			}
			if len(elems) != len(want) {
				t.Fatalf("%d elements, want %d", len(elems), len(want))
			}
			for i := range want {
				if !bytes.Equal(elems[i], want[i]) {
					t.Fatalf("element %d: %s, want %s", i, elems[i], want[i])
				}
			}
		}
	})
}
