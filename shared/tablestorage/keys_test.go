package tablestorage

import (
	"math/rand/v2"
	"strconv"
	"strings"
	"testing"
	"unicode/utf16"
	"unicode/utf8"

	"github.com/nopsync/nopsync/shared/state"
	"github.com/nopsync/nopsync/shared/state/statetest"
)

func checkRowKey(t *testing.T, id, rk string) {
	t.Helper()
	for _, r := range rk {
		if strings.ContainsRune(`/\#?%+'`, r) || r < 0x20 || (r >= 0x7f && r <= 0x9f) {
			t.Fatalf("row key %q of %q holds %q", rk, id, r)
		}
	}
	if rk >= recordsEnd {
		t.Fatalf("row key %q of %q does not sort before the counter rows", rk, id)
	}
	if n := 2 * len(utf16.Encode([]rune(rk))); n > 1024 {
		t.Fatalf("row key of %q is %d bytes in UTF-16, over the service's 1 KiB", id, n)
	}
	back, err := idOf(rk)
	if err != nil || back != id {
		t.Fatalf("idOf(rowKeyOf(%q)) = %q, %v", id, back, err)
	}
}

func TestRowKeys(t *testing.T) {
	for _, id := range append(statetest.OddIDs, "0", "1", "42", "18446744073709551615", "99999999999999999999") {
		checkRowKey(t, id, rowKeyOf(id))
	}
	// Random strings, including every escaped character and long ones.
	rnd := rand.New(rand.NewPCG(1, 2))
	alphabet := []rune("ab09/\\#?%+'!~ \t\x00\x7f\u0085é日🙂-_.:")
	for range 2000 {
		n := 1 + rnd.IntN(state.MaxKeyLen/4)
		var b strings.Builder
		for b.Len() < n {
			b.WriteRune(alphabet[rnd.IntN(len(alphabet))])
		}
		id := b.String()
		if len(id) > state.MaxKeyLen || !utf8.ValidString(id) {
			continue
		}
		checkRowKey(t, id, rowKeyOf(id))
	}
	// Worst case: state.MaxKeyLen bytes that all need escaping still fit a key.
	checkRowKey(t, strings.Repeat("\u0085", state.MaxKeyLen/2), rowKeyOf(strings.Repeat("\u0085", state.MaxKeyLen/2)))
	// Decimal ids: row key order is numeric order, and they come before other keys.
	prev := ""
	for _, n := range []uint64{0, 1, 2, 9, 10, 99, 100, 1001, 1 << 31, 1<<64 - 1} {
		rk := rowKeyOf(strconv.FormatUint(n, 10))
		if rk <= prev {
			t.Fatalf("row key of %d (%q) does not sort after %q", n, rk, prev)
		}
		prev = rk
	}
	if rowKeyOf("chunk-abc") <= prev {
		t.Fatal("a non-decimal key sorts before a decimal id")
	}
	if _, err := idOf("~count-00"); err == nil {
		t.Fatal("a counter row decoded as a record id")
	}
}

func TestUnescapeRejectsGarbage(t *testing.T) {
	for _, s := range []string{"a!", "a!2", "a!zz"} {
		if _, err := unescape(s); err == nil {
			t.Errorf("unescape(%q) succeeded", s)
		}
	}
}
