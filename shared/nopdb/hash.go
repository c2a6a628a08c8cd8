package nopdb

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"strconv"
)

// DataHash is the hash of an event's data object used for change detection:
// "sha256:" and the hex SHA-256 of the data with insignificant white space removed
// (json.Compact), so the same state read twice gives the same hash. The reader writes
// data in one fixed layout (nop's types, fields in docs/events.md order); data an emitter
// sent with its fields in another order hashes differently, which costs one repeated
// event for that entity, never a missed change. Input that is not JSON is hashed as is.
func DataHash(data []byte) string {
	var buf bytes.Buffer
	buf.Grow(len(data))
	in := data
	if json.Compact(&buf, data) == nil {
		in = buf.Bytes()
	}
	return compactHash(in)
}

// compactHash is DataHash of JSON that has no insignificant white space.
func compactHash(data []byte) string {
	sum := sha256.Sum256(data)
	return "sha256:" + hex.EncodeToString(sum[:])
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
