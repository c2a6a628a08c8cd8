package cut

import (
	"strings"
	"testing"
	"unicode/utf8"
)

// Cutting by bytes never leaves half a character: s[:n] would, whenever byte n falls
// inside a multi-byte character.
func TestBytesNeverSplitsACharacter(t *testing.T) {
	for _, tc := range []struct {
		s    string
		n    int
		mark string
		want string
	}{
		{"héllo", 2, "", "h"},   // é is 2 bytes: s[:2] would be "h\xc3"
		{"héllo", 3, "", "hé"},  // whole é
		{"a€", 3, "…", "a…"},    // € is 3 bytes
		{"a€", 4, "…", "a€"},    // fits: no mark
		{"😀😀", 5, "", "😀"},      // 4-byte characters
		{"😀", 0, "", ""},        // nothing fits
		{"plain", 3, "", "pla"}, // ASCII cuts where asked
		{"", 3, "…", ""},
	} {
		if got := Bytes(tc.s, tc.n, tc.mark); got != tc.want {
			t.Errorf("Bytes(%q, %d, %q) = %q, want %q", tc.s, tc.n, tc.mark, got, tc.want)
		}
	}
	s := strings.Repeat("añ€😀", 50)
	for n := 0; n <= len(s)+1; n++ {
		got := Bytes(s, n, "")
		if !utf8.ValidString(got) || len(got) > n || !strings.HasPrefix(s, got) || (n < len(s) && len(got) < n-3) {
			t.Fatalf("Bytes(s, %d) = %q (%d bytes)", n, got, len(got))
		}
	}
}

// Runes counts characters, as a Dataverse column's MaxLength does.
func TestRunes(t *testing.T) {
	for _, tc := range []struct {
		s    string
		n    int
		want string
	}{
		{"héllo", 2, "hé"},
		{"😀😀😀", 2, "😀😀"},
		{"abc", 3, "abc"},
		{"abc", 5, "abc"},
		{"abc", 0, ""},
	} {
		if got := Runes(tc.s, tc.n); got != tc.want {
			t.Errorf("Runes(%q, %d) = %q, want %q", tc.s, tc.n, got, tc.want)
		}
	}
}
