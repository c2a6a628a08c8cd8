package nop

import (
	"bytes"
	"encoding/json"
)

// A body is checked once with json.Valid and utf8.Valid; after that, objects and arrays are split into
// sub-slices by this scanner instead of encoding/json, which would re-validate and copy
// every nested level again. The scanner never indexes out of range, even on input that
// is not valid JSON (it then reports failure).

type member struct {
	key   string
	value json.RawMessage
	at    int // where value starts in the object scanned
}

func skipWS(b []byte, i int) int {
	for i < len(b) && (b[i] == ' ' || b[i] == '\t' || b[i] == '\n' || b[i] == '\r') {
		i++
	}
	return i
}

// skipString returns the index after the string starting at b[i] == '"', or -1.
func skipString(b []byte, i int) int {
	for i++; i < len(b); i++ {
		switch b[i] {
		case '\\':
			i++
		case '"':
			return i + 1
		}
	}
	return -1
}

// skipValue returns the index after the value starting at b[i], or -1.
func skipValue(b []byte, i int) int {
	if i >= len(b) {
		return -1
	}
	switch b[i] {
	case '"':
		return skipString(b, i)
	case '{', '[':
		depth := 0
		for ; i < len(b); i++ {
			switch b[i] {
			case '"':
				j := skipString(b, i)
				if j < 0 {
					return -1
				}
				i = j - 1
			case '{', '[':
				depth++
			case '}', ']':
				depth--
				if depth == 0 {
					return i + 1
				}
			}
		}
		return -1
	default:
		j := i
		for j < len(b) && b[j] != ',' && b[j] != '}' && b[j] != ']' && b[j] != ' ' && b[j] != '\t' && b[j] != '\n' && b[j] != '\r' {
			j++
		}
		if j == i {
			return -1
		}
		return j
	}
}

// unquote returns the string value of a JSON string token.
func unquote(tok []byte) (string, bool) {
	if len(tok) < 2 || tok[0] != '"' || tok[len(tok)-1] != '"' {
		return "", false
	}
	inner := tok[1 : len(tok)-1]
	if bytes.IndexByte(inner, '\\') < 0 {
		return string(inner), true
	}
	var s string
	if err := json.Unmarshal(tok, &s); err != nil {
		return "", false
	}
	return s, true
}

// splitObject returns the members of the object b (already valid JSON).
func splitObject(b []byte) ([]member, bool) {
	_, obj, ok := appendMembers(nil, b)
	return obj, ok
}

// appendMembers appends the members of the object b to slab and returns the grown slab
// and the object's members (its tail, capped so appends never write into it). The
// objects of one event share one growing slab: earlier objects keep their view even
// when a later append moves the slab to a new array.
func appendMembers(slab []member, b []byte) (full, obj []member, ok bool) {
	i := skipWS(b, 0)
	if i >= len(b) || b[i] != '{' {
		return slab, nil, false
	}
	start := len(slab)
	members := slab
	i = skipWS(b, i+1)
	if i < len(b) && b[i] == '}' {
		return members, members[start:len(members):len(members)], true
	}
	for {
		if i >= len(b) || b[i] != '"' {
			return slab, nil, false
		}
		end := skipString(b, i)
		if end < 0 {
			return slab, nil, false
		}
		key, ok := unquote(b[i:end])
		if !ok {
			return slab, nil, false
		}
		i = skipWS(b, end)
		if i >= len(b) || b[i] != ':' {
			return slab, nil, false
		}
		i = skipWS(b, i+1)
		vend := skipValue(b, i)
		if vend < 0 {
			return slab, nil, false
		}
		members = append(members, member{key: key, value: b[i:vend:vend], at: i})
		i = skipWS(b, vend)
		if i >= len(b) {
			return slab, nil, false
		}
		switch b[i] {
		case ',':
			i = skipWS(b, i+1)
		case '}':
			return members, members[start:len(members):len(members)], true
		default:
			return slab, nil, false
		}
	}
}

// splitArray returns the elements of the array b (already valid JSON).
func splitArray(b []byte) ([]json.RawMessage, bool) {
	i := skipWS(b, 0)
	if i >= len(b) || b[i] != '[' {
		return nil, false
	}
	var elems []json.RawMessage
	i = skipWS(b, i+1)
	if i < len(b) && b[i] == ']' {
		return elems, true
	}
	for {
		end := skipValue(b, i)
		if end < 0 {
			return nil, false
		}
		elems = append(elems, b[i:end:end])
		i = skipWS(b, end)
		if i >= len(b) {
			return nil, false
		}
		switch b[i] {
		case ',':
			i = skipWS(b, i+1)
		case ']':
			return elems, true
		default:
			return nil, false
		}
	}
}
