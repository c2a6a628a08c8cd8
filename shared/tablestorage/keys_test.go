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

// A layout row's value reads back as the layout that wrote it; anything else is refused.
func TestLayoutRow(t *testing.T) {
	for _, l := range []layout{{shards: 16}, {shards: 1}, {shards: 16, block: 64}, {shards: 100, block: 1}} {
		got, err := parseLayout(l.String())
		if err != nil || got != l {
			t.Errorf("parseLayout(%q) = %v, %v; want %v", l.String(), got, err, l)
		}
	}
	for _, v := range []string{"", "0", "101", "x", "16 in blocks of", "16 in blocks of 0", "16 in blocks of -1", " in blocks of 64", "16 in blocks of 64 "} {
		if l, err := parseLayout(v); err == nil {
			t.Errorf("parseLayout(%q) = %v, want an error", v, l)
		}
	}
}

// By blocks, a chunk of consecutive ids lands in a few partitions, each read as one
// RowKey range; by hash, in every partition. Ids that are not decimal, or beyond
// uint64, go by hash in either layout.
func TestChunkOfConsecutiveIDs(t *testing.T) {
	for _, tc := range []struct {
		l          layout
		partitions int
	}{{layout{shards: 16, block: 64}, 5}, {layout{shards: 16}, 16}} {
		byShard := map[int][]string{}
		for i := 1; i <= 300; i++ {
			id := strconv.Itoa(i)
			byShard[tc.l.shardOf(id)] = append(byShard[tc.l.shardOf(id)], id)
		}
		if len(byShard) != tc.partitions {
			t.Errorf("layout %v: ids 1-300 in %d partitions, want %d", tc.l, len(byShard), tc.partitions)
		}
		for n, ids := range byShard {
			if f := rowKeyFilters(ids, tc.l.near(), maxFilterComps-1); len(f) != 1 || strings.Count(f[0], "RowKey") != 2 {
				t.Errorf("layout %v, shard %d: ids %v… read with %q, want one range", tc.l, n, ids[:1], f)
			}
		}
		// Two blocks of one partition, 1024 ids apart, make one range too.
		if tc.l.block > 0 {
			ids := []string{"1", "63", "1024", "1087"}
			if f := rowKeyFilters(ids, tc.l.near(), maxFilterComps-1); len(f) != 1 || strings.Count(f[0], "RowKey") != 2 {
				t.Errorf("blocks 0 and 16 read with %q, want one range", f)
			}
		}
	}
	blocks, hash := layout{shards: 16, block: 64}, layout{shards: 16}
	for _, id := range []string{"abc", "007", "-1", "18446744073709551616", "99999999999999999999"} {
		bs, bc := blocks.place(id)
		hs, hc := hash.place(id)
		if bs != hs || bc != hc {
			t.Errorf("%q placed at %d/%d by blocks, %d/%d by hash; want the same", id, bs, bc, hs, hc)
		}
	}
	if s, c := blocks.place("18446744073709551615"); s != int(18446744073709551615/64%16) || c != int(18446744073709551615/64/16%4) {
		t.Errorf("the largest uint64 placed at %d/%d", s, c)
	}
}
