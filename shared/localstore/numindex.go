package localstore

import (
	"slices"
	"sort"
)

// numIndex maps decimal record ids up to 2^32-1 to their locs in 12 bytes per record:
// the ids in ascending order in one slice and their locs in another, looked up by
// binary search. nopCommerce's ids are int identity columns, so every id it makes fits;
// a larger id is kept by recIndex's string map. A Go map takes about three times that
// per entry once its buckets and load factor are counted, and the index is what local
// mode's memory grows with; the slices are also kept outside the Go heap (mapSlice), so
// they count once in resident memory rather than twice.
//
// Ids mostly come in ascending order (identity columns, and the store reader reads by
// id); the others wait in late, a small map merged into the slices once it has grown
// past a sixteenth of them, so each merge copies the slices once for many inserts.
type numIndex struct {
	keys []uint32
	locs []loc
	late map[uint32]loc
}

// offHeap is what a mapping may hold: plain numbers, no pointers.
type offHeap interface{ ~uint32 | ~uint64 }

// minLate is how many out-of-order ids late holds at least before a merge.
const minLate = 1024

func (x *numIndex) find(n uint32) (int, bool) {
	return slices.BinarySearch(x.keys, n)
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
	if k := len(x.keys); k == 0 || n > x.keys[k-1] {
		if _, ok := x.late[n]; !ok {
			x.keys = grow(x.keys, 1)
			x.locs = grow(x.locs, 1)
			x.keys = append(x.keys, n)
			x.locs = append(x.locs, l)
			return
		}
	}
	if x.late == nil {
		x.late = map[uint32]loc{}
	}
	x.late[n] = l
	if len(x.late) > max(minLate, len(x.keys)/16) {
		x.merge()
	}
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

// merge moves late into the slices, made at their exact new size.
func (x *numIndex) merge() {
	extra := make([]uint32, 0, len(x.late))
	for n := range x.late {
		extra = append(extra, n)
	}
	sort.Slice(extra, func(i, j int) bool { return extra[i] < extra[j] })
	keys := newSlice[uint32](len(x.keys) + len(extra))
	locs := newSlice[loc](len(x.keys) + len(extra))
	i, j := 0, 0
	for i < len(x.keys) || j < len(extra) {
		if j == len(extra) || (i < len(x.keys) && x.keys[i] < extra[j]) {
			keys, locs = append(keys, x.keys[i]), append(locs, x.locs[i])
			i++
			continue
		}
		keys, locs = append(keys, extra[j]), append(locs, x.late[extra[j]])
		j++
	}
	x.free()
	x.keys, x.locs = keys, locs
}

// free gives back the slices' mappings and empties the index.
func (x *numIndex) free() {
	unmapSlice(x.keys)
	unmapSlice(x.locs)
	x.keys, x.locs, x.late = nil, nil, nil
}

func (x *numIndex) len() int { return len(x.keys) + len(x.late) }

// bytes is what the slices hold: the resident part of their mappings.
func (x *numIndex) bytes() int { return 4*len(x.keys) + 8*len(x.locs) }

func (x *numIndex) each(fn func(n uint32, l loc)) {
	for i, n := range x.keys {
		fn(n, x.locs[i])
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

// trim merges late after a replay has built the whole index. The slices' spare
// capacity costs nothing resident until it is written.
func (x *numIndex) trim() {
	if len(x.late) > 0 {
		x.merge()
	}
}
