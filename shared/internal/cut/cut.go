// Package cut shortens strings without splitting a UTF-8 character: to a byte budget
// (what a store or a queue keeps) or to a number of characters (a Dataverse column's
// MaxLength counts characters).
package cut

import "unicode/utf8"

// Bytes returns s cut to at most n bytes, never inside a UTF-8 character: the cut moves
// back to the start of the character it would split. mark (often "" or "…") is
// appended when s was cut, so the result then holds up to n+len(mark) bytes.
func Bytes(s string, n int, mark string) string {
	if len(s) <= n {
		return s
	}
	if n < 0 {
		n = 0
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n] + mark
}

// Runes returns s cut to at most n characters (runes).
func Runes(s string, n int) string {
	if len(s) <= n { // n bytes hold at most n runes
		return s
	}
	if n < 0 {
		n = 0
	}
	i := 0
	for j := range s {
		if i == n {
			return s[:j]
		}
		i++
	}
	return s
}
