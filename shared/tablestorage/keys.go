package tablestorage

import (
	"fmt"
	"hash/fnv"
	"slices"
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/nopsync/nopsync/shared/state"
)

// Row keys inside an entity's partition:
//
//	00000000000000001001   record of a decimal id (zero-padded to 20 digits: RowKey order = numeric order)
//	k<escaped key>         record of any other key (after every decimal id)
//	~count-07              counter shard 7 (after every record: '~' sorts after '0'-'9' and 'k')
const (
	decimalWidth  = 20
	keyPrefix     = "k"
	counterPrefix = "~count-"
	recordsEnd    = "~" // every record RowKey is below this
	docPartition  = "doc-"
	escapeChar    = '!'
)

func checkEntity(e state.Entity) error {
	if !slices.Contains(state.Entities, e) {
		return fmt.Errorf("unknown entity %q", e)
	}
	return nil
}

// isDecimal: a canonical decimal (no sign, no leading zero) of at most 20 digits.
func isDecimal(id string) bool {
	if id == "" || len(id) > decimalWidth || (id[0] == '0' && len(id) > 1) {
		return false
	}
	for i := 0; i < len(id); i++ {
		if id[i] < '0' || id[i] > '9' {
			return false
		}
	}
	return true
}

func rowKeyOf(id string) string {
	if isDecimal(id) {
		return strings.Repeat("0", decimalWidth-len(id)) + id
	}
	return keyPrefix + escape(id)
}

func idOf(rowKey string) (string, error) {
	if strings.HasPrefix(rowKey, keyPrefix) {
		return unescape(rowKey[len(keyPrefix):])
	}
	if len(rowKey) == decimalWidth {
		id := strings.TrimLeft(rowKey, "0")
		if id == "" {
			id = "0"
		}
		if isDecimal(id) {
			return id, nil
		}
	}
	return "", fmt.Errorf("row key %q is not a record key", rowKey)
}

func docPartitionOf(kind string) string { return docPartition + escape(kind) }

// escape makes s usable as (part of) a PartitionKey or RowKey. Table Storage forbids
// / \ # ? and control characters (U+0000-U+001F, U+007F-U+009F) in keys. % and + are
// allowed but break the operations that put keys in the URL path (the service decodes
// the path twice: a key with %25 or + is read back as another key); ' needs quoting in
// URLs and OData filters (and aztables doubles it inside entity bodies). ! is the escape
// character: each UTF-8 byte of those characters becomes !XX.
func escape(s string) string {
	var b strings.Builder
	for _, r := range s {
		if mustEscape(r) {
			var buf [utf8.UTFMax]byte
			n := utf8.EncodeRune(buf[:], r)
			for _, c := range buf[:n] {
				fmt.Fprintf(&b, "%c%02X", escapeChar, c)
			}
			continue
		}
		b.WriteRune(r)
	}
	return b.String()
}

func mustEscape(r rune) bool {
	switch r {
	case '/', '\\', '#', '?', '%', '+', '\'', escapeChar:
		return true
	}
	return r < 0x20 || (r >= 0x7f && r <= 0x9f)
}

func unescape(s string) (string, error) {
	if !strings.ContainsRune(s, escapeChar) {
		return s, nil
	}
	b := make([]byte, 0, len(s))
	for i := 0; i < len(s); i++ {
		if s[i] != escapeChar {
			b = append(b, s[i])
			continue
		}
		if i+2 >= len(s) {
			return "", fmt.Errorf("bad escape in key %q", s)
		}
		c, err := strconv.ParseUint(s[i+1:i+3], 16, 8)
		if err != nil {
			return "", fmt.Errorf("bad escape in key %q", s)
		}
		b = append(b, byte(c))
		i += 2
	}
	return string(b), nil
}

// countersPerShard is the number of counter rows in each shard's partition. Writers of
// different records in one partition meet on a counter row less often with several
// (an import keeps hundreds of state writes in flight); Counts sums whatever rows exist,
// so the number may change freely.
const countersPerShard = 4

// blockSize is how many consecutive decimal ids share a partition in tables created
// with blocks: an import chunk's ids (consecutive, a few hundred) then fall in a few
// partitions, so its reads take a query per partition and its writes a transaction per
// 64 records, instead of one each in every shard. Successive blocks go to successive
// shards, so an import still spreads evenly over all of them.
const blockSize = 64

// layout is how a table places its records: shards partitions per entity and, in tables
// created with blocks, decimal ids by blocks of block consecutive ids (0: every id by
// hash, as in tables created before blocks). A table keeps its layout for life (its
// layout row): records are found by it.
type layout struct {
	shards int
	block  int
}

// place picks a record's shard (its partition) and its counter row there; one record
// always lives and counts in the same ones. Ids that are not decimal, or beyond uint64,
// go by hash.
func (l layout) place(id string) (shard, counter int) {
	if l.block > 0 && isDecimal(id) {
		if n, err := strconv.ParseUint(id, 10, 64); err == nil {
			b := n / uint64(l.block)
			return int(b % uint64(l.shards)), int(b / uint64(l.shards) % countersPerShard)
		}
	}
	h := idHash(id)
	return int(h % uint32(l.shards)), int(h / uint32(l.shards) % countersPerShard)
}

// shardOf is the shard of place.
func (l layout) shardOf(id string) int {
	n, _ := l.place(id)
	return n
}

// near is how far apart two decimal ids of one partition may be for a read to take both
// and all between them as one RowKey range. By hash, a partition holds about one id in
// shards, so neighbours are a few rows apart; by blocks, the next block of a partition
// starts block*(shards-1)+1 after the last id of the one before.
func (l layout) near() uint64 {
	if l.block > 0 {
		return uint64(l.block*(l.shards-1) + 4)
	}
	return uint64(4 * l.shards)
}

// layoutByBlocks is the layout row's value for a table placed by blocks. Builds before
// blocks read the value as a number and refuse the table, rather than look for its
// records in the wrong partitions.
const layoutByBlocks = " in blocks of "

// String is the layout row's value: "16" (by hash) or "16 in blocks of 64".
func (l layout) String() string {
	if l.block > 0 {
		return strconv.Itoa(l.shards) + layoutByBlocks + strconv.Itoa(l.block)
	}
	return strconv.Itoa(l.shards)
}

// parseLayout reads a layout row's value (String).
func parseLayout(v string) (layout, error) {
	shards, block, byBlocks := strings.Cut(v, layoutByBlocks)
	var l layout
	var err error
	if l.shards, err = strconv.Atoi(shards); err != nil || l.shards < 1 || l.shards > 100 {
		return layout{}, fmt.Errorf("%q is not a layout (shards 1-100, optionally %q and a block size)", v, layoutByBlocks)
	}
	if byBlocks {
		if l.block, err = strconv.Atoi(block); err != nil || l.block < 1 {
			return layout{}, fmt.Errorf("%q is not a layout (shards 1-100, optionally %q and a block size)", v, layoutByBlocks)
		}
	}
	return l, nil
}

func idHash(id string) uint32 {
	h := fnv.New32a()
	h.Write([]byte(id))
	return h.Sum32()
}

func counterRowKey(shard, counter int) string {
	return fmt.Sprintf("%s%02d-%d", counterPrefix, shard, counter)
}

// recordPartition is the partition of an entity's records of one shard, with that shard's
// counter row: "customer-07". Spreading an entity over shards partitions keeps an import
// under Table Storage's target of about 2,000 entities/s per partition (the account's is
// 20,000), and a record's counter stays in its partition for the shared transaction.
func recordPartition(e state.Entity, shard int) string { return fmt.Sprintf("%s-%02d", e, shard) }

// entityOfPartition is the entity a record partition belongs to.
func entityOfPartition(pk string) state.Entity {
	if i := strings.LastIndexByte(pk, '-'); i > 0 {
		return state.Entity(pk[:i])
	}
	return state.Entity(pk)
}

// odataString quotes s for an OData filter.
func odataString(s string) string { return "'" + strings.ReplaceAll(s, "'", "''") + "'" }
