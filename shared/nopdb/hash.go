package nopdb

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"strconv"
)

// DataHash is the hash of an event's data object used for change detection:
// "sha256:" and the hex SHA-256 of the data in a canonical JSON form (object keys
// sorted, no insignificant white space, numbers and strings as written), so the same
// state gives the same hash however its JSON was laid out: by this reader or by an
// emitter that sends its fields in another order. Input that is not JSON is hashed as is.
func DataHash(data []byte) string {
	canon := canonical(data)
	sum := sha256.Sum256(canon)
	return "sha256:" + hex.EncodeToString(sum[:])
}

func canonical(data []byte) []byte {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		return data
	}
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil { // maps encode with sorted keys
		return data
	}
	return bytes.TrimSuffix(buf.Bytes(), []byte("\n"))
}

// EventID is the id of the reader's event for one state of one entity:
// "nopdb-<entity>-<nopCommerce id>-<first 24 hex digits of the data hash>". Reading the
// same state again gives the same id, so Service Bus duplicate detection drops the
// repeat; a changed state gives a new one.
func EventID(entity Entity, id int64, hash string) string {
	h := hash
	if len(h) > 7 && h[:7] == "sha256:" {
		h = h[7:]
	}
	if len(h) > 24 {
		h = h[:24]
	}
	return "nopdb-" + string(entity) + "-" + strconv.FormatInt(id, 10) + "-" + h
}
