package localstore

import (
	"slices"
	"sort"
)

// numIndex maps decimal record ids to their locs in 16 bytes per record: the ids in
// ascending order in one slice and their locs in another, looked up by binary search.
// A Go map takes about twice that per entry once its buckets and load factor are
// counted, and the index is what local mode's memory grows with. Ids mostly come in
// ascending order (nopCommerce's ids are identity columns and the store reader reads by
// id); the others wait in late, a small map merged into the slices once it has grown
// past a sixteenth of them, so each merge copies the slices once for many inserts.
type numIndex struct {
	keys []uint64
	locs []loc
	late map[uint64]loc
}

// minLate is how many out-of-order ids late holds at least before a merge.
const minLate = 1024

func (x *numIndex) find(n uint64) (int, bool) {
	i, ok := slices.BinarySearch(x.keys, n)
	return i, ok
}

func (x *numIndex) get(n uint64) (loc, bool) {
	if i, ok := x.find(n); ok {
		return x.locs[i], true
	}
	l, ok := x.late[n]
	return l, ok
}

func (x *numIndex) put(n uint64, l loc) {
	if i, ok := x.find(n); ok {
		x.locs[i] = l
		return
	}
	if k := len(x.keys); k == 0 || n > x.keys[k-1] {
		if _, ok := x.late[n]; !ok {
			x.keys = append(x.keys, n)
			x.locs = append(x.locs, l)
			return
		}
	}
	if x.late == nil {
		x.late = map[uint64]loc{}
	}
	x.late[n] = l
	if len(x.late) > max(minLate, len(x.keys)/16) {
		x.merge()
	}
}

// merge moves late into the slices, allocated at their exact new size.
func (x *numIndex) merge() {
	extra := make([]uint64, 0, len(x.late))
	for n := range x.late {
		extra = append(extra, n)
	}
	sort.Slice(extra, func(i, j int) bool { return extra[i] < extra[j] })
	keys := make([]uint64, 0, len(x.keys)+len(extra))
	locs := make([]loc, 0, len(x.keys)+len(extra))
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
	x.keys, x.locs, x.late = keys, locs, nil
}

func (x *numIndex) len() int { return len(x.keys) + len(x.late) }

func (x *numIndex) each(fn func(n uint64, l loc)) {
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

// trim merges late and gives back the slices' spare capacity (append's growth), after
// a replay has built the whole index.
func (x *numIndex) trim() {
	if len(x.late) > 0 || cap(x.keys) > len(x.keys)+len(x.keys)/16 {
		x.merge()
	}
}
