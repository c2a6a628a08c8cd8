package localstore

import (
	"slices"
	"sort"
)

// numIndex maps decimal record ids up to 2^32-1 to their locs: the entries in ascending
// id order, a loc (8 bytes) each, and the ids in blocks of blockSize entries. A block
// whose ids are consecutive (an identity column without gaps) keeps only its first id;
// any other keeps all of them, 4 bytes each. So a store of consecutive ids takes about
// 8 bytes per record, one with gaps about 12; a Go map takes about 35 per entry once
// its buckets and load factor are counted. nopCommerce's ids are int identity columns,
// so every id it makes fits; a larger id is kept by recIndex's string map.
//
// The index is what local mode's memory grows with, so its slices are also kept outside
// the Go heap (mapSlice): there they count once in resident memory, not twice.
//
// Ids mostly come in ascending order (identity columns, and the store reader reads by
// id) and are appended; the others wait in late, a small map merged into the blocks
// once it has grown past a sixteenth of them, so each merge rebuilds the index once for
// many inserts.
type numIndex struct {
	blocks []uint64 // per full block: its first id<<32 | where its ids start in sparse (dense: consecutive ids)
	sparse []uint32 // the ids of the blocks that are not consecutive, blockSize each
	tail   []uint32 // the ids of the last, partial block (on the heap: fewer than blockSize)
	locs   []loc    // entry i's loc
	late   map[uint32]loc
}

// offHeap is what a mapping may hold: plain numbers, no pointers.
type offHeap interface{ ~uint32 | ~uint64 }

const (
	blockSize = 64
	dense     = 1<<32 - 1 // a block's sparse offset when its ids are consecutive
	// minLate is how many out-of-order ids late holds at least before a merge.
	minLate = 1024
)

func mkBlock(first uint32, at uint32) uint64 { return uint64(first)<<32 | uint64(at) }

func blockFirst(b uint64) uint32 { return uint32(b >> 32) }

func blockAt(b uint64) uint32 { return uint32(b) }

// keyAt is entry i's id.
func (x *numIndex) keyAt(i int) uint32 {
	b := i / blockSize
	if b == len(x.blocks) {
		return x.tail[i%blockSize]
	}
	if at := blockAt(x.blocks[b]); at != dense {
		return x.sparse[int(at)+i%blockSize]
	}
	return blockFirst(x.blocks[b]) + uint32(i%blockSize)
}

// find returns n's entry.
func (x *numIndex) find(n uint32) (int, bool) {
	nb := len(x.blocks)
	if len(x.tail) > 0 && n >= x.tail[0] {
		j, ok := slices.BinarySearch(x.tail, n)
		return nb*blockSize + j, ok
	}
	// The last block whose first id is n or below.
	b := sort.Search(nb, func(j int) bool { return blockFirst(x.blocks[j]) > n }) - 1
	if b < 0 {
		return 0, false
	}
	first, at := blockFirst(x.blocks[b]), blockAt(x.blocks[b])
	if at == dense {
		return b*blockSize + int(n-first), n-first < blockSize
	}
	j, ok := slices.BinarySearch(x.sparse[at:at+blockSize], n)
	return b*blockSize + j, ok
}

func (x *numIndex) get(n uint32) (loc, bool) {
	if i, ok := x.find(n); ok {
		return x.locs[i], true
	}
	l, ok := x.late[n]
	return l, ok
}

func (x *numIndex) put(n uint32, l loc) {
	if i, ok := x.find(n); ok {
		x.locs[i] = l
		return
	}
	if k := len(x.locs); k == 0 || n > x.keyAt(k-1) {
		if _, ok := x.late[n]; !ok {
			x.push(n, l)
			return
		}
	}
	if x.late == nil {
		x.late = map[uint32]loc{}
	}
	x.late[n] = l
	if len(x.late) > max(minLate, len(x.locs)/16) {
		x.merge()
	}
}

// push appends an entry whose id is above every other.
func (x *numIndex) push(n uint32, l loc) {
	x.locs = grow(x.locs, 1)
	x.locs = append(x.locs, l)
	x.tail = append(x.tail, n)
	if len(x.tail) < blockSize {
		return
	}
	at := uint32(dense)
	if x.tail[blockSize-1]-x.tail[0] != blockSize-1 {
		at = uint32(len(x.sparse))
		x.sparse = grow(x.sparse, blockSize)
		x.sparse = append(x.sparse, x.tail...)
	}
	x.blocks = grow(x.blocks, 1)
	x.blocks = append(x.blocks, mkBlock(x.tail[0], at))
	x.tail = x.tail[:0]
}

// grow makes room for n more elements in s, doubling its capacity in a new mapping when
// it is full (append would move it to the heap).
func grow[T offHeap](s []T, n int) []T {
	if len(s)+n <= cap(s) {
		return s
	}
	ns := newSlice[T](max(2*cap(s), len(s)+n, 1024))
	ns = append(ns, s...)
	unmapSlice(s)
	return ns
}

// newSlice is an empty slice with room for n, in a mapping where one can be made.
func newSlice[T offHeap](n int) []T {
	if s := mapSlice[T](n); s != nil {
		return s
	}
	return make([]T, 0, n)
}

// merge rebuilds the index with late's entries in their places.
func (x *numIndex) merge() {
	extra := make([]uint32, 0, len(x.late))
	for n := range x.late {
		extra = append(extra, n)
	}
	sort.Slice(extra, func(i, j int) bool { return extra[i] < extra[j] })
	total := len(x.locs) + len(extra)
	y := numIndex{locs: newSlice[loc](total), blocks: newSlice[uint64](total/blockSize + 1)}
	i, j := 0, 0
	for i < len(x.locs) || j < len(extra) {
		if i < len(x.locs) {
			if k := x.keyAt(i); j == len(extra) || k < extra[j] {
				y.push(k, x.locs[i])
				i++
				continue
			}
		}
		y.push(extra[j], x.late[extra[j]])
		j++
	}
	x.free()
	*x = y
}

// free gives back the slices' mappings and empties the index.
func (x *numIndex) free() {
	unmapSlice(x.blocks)
	unmapSlice(x.sparse)
	unmapSlice(x.locs)
	*x = numIndex{}
}

func (x *numIndex) len() int { return len(x.locs) + len(x.late) }

// bytes is what the mapped slices hold: the resident part of their mappings.
func (x *numIndex) bytes() int { return 8*len(x.blocks) + 4*len(x.sparse) + 8*len(x.locs) }

func (x *numIndex) each(fn func(n uint32, l loc)) {
	for i, l := range x.locs {
		fn(x.keyAt(i), l)
	}
	for n, l := range x.late {
		fn(n, l)
	}
}

func (x *numIndex) update(fn func(loc) loc) {
	for i, l := range x.locs {
		x.locs[i] = fn(l)
	}
	for n, l := range x.late {
		x.late[n] = fn(l)
	}
}

// trim merges late and gives the slices their exact size, after a replay has built the
// whole index: growth by doubling leaves up to half unused, which costs nothing resident
// in a mapping until written, but all of it on the heap (where no mapping can be made).
func (x *numIndex) trim() {
	if len(x.late) > 0 || cap(x.locs) > len(x.locs)+len(x.locs)/16 {
		x.merge()
	}
}
