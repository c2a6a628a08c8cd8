package localstore

import (
	"math"
	"math/rand/v2"
	"testing"
)

// TestNumIndexAgreesWithAMap: whatever order ids come in (ascending, shuffled, runs of
// both, repeats), numIndex answers as a map would, through merges.
func TestNumIndexAgreesWithAMap(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	orders := map[string]func(n int) []uint32{
		"ascending": func(n int) []uint32 {
			out := make([]uint32, n)
			for i := range out {
				out[i] = uint32(i*3 + 1)
			}
			return out
		},
		"shuffled": func(n int) []uint32 {
			out := make([]uint32, n)
			for i, p := range rng.Perm(n) {
				out[i] = uint32(p * 7)
			}
			return out
		},
		"chunks interleaved": func(n int) []uint32 { // four workers on ascending pages
			var out []uint32
			for base := 0; base < n; base += 400 {
				for i := range 100 {
					for w := range 4 {
						out = append(out, uint32(base+w*100+i))
					}
				}
			}
			return out
		},
		"consecutive": func(n int) []uint32 {
			out := make([]uint32, n)
			for i := range out {
				out[i] = uint32(i + 1)
			}
			return out
		},
		"registered among guests": func(n int) []uint32 { // runs of consecutive ids, gaps of 1–3 now and then
			out := make([]uint32, n)
			id := uint32(0)
			for i := range out {
				id++
				if rng.IntN(50) == 0 {
					id += uint32(1 + rng.IntN(3))
				}
				out[i] = id
			}
			return out
		},
		"top of the range": func(n int) []uint32 {
			out := make([]uint32, n)
			for i := range out {
				out[i] = math.MaxUint32 - uint32(n-1) + uint32(i) // up to 2^32-1
			}
			return out
		},
		"repeats": func(n int) []uint32 {
			out := make([]uint32, n)
			for i := range out {
				out[i] = uint32(rng.IntN(n / 4))
			}
			return out
		},
	}
	for name, gen := range orders {
		t.Run(name, func(t *testing.T) {
			var x numIndex
			want := map[uint32]loc{}
			for i, n := range gen(20_000) {
				l := mkLoc(int64(i), i%100, uint8(i%4))
				x.put(n, l)
				want[n] = l
				if i%997 == 0 { // look up along the way, across merges
					if got, ok := x.get(n); !ok || got != l {
						t.Fatalf("after put %d: get = %v, %v", n, got, ok)
					}
				}
			}
			if x.len() != len(want) {
				t.Fatalf("len %d, want %d", x.len(), len(want))
			}
			for n, l := range want {
				if got, ok := x.get(n); !ok || got != l {
					t.Fatalf("get(%d) = %v, %v; want %v", n, got, ok, l)
				}
			}
			if _, ok := x.get(1 << 31); ok { // no case puts it
				t.Fatal("an id never put was found")
			}
			for n := range want { // the gaps: ids next to those put
				for _, m := range []uint32{n - 1, n + 1} {
					if _, put := want[m]; !put {
						if _, ok := x.get(m); ok {
							t.Fatalf("id %d, never put, was found", m)
						}
					}
				}
			}
			seen := 0
			x.each(func(n uint32, l loc) {
				if want[n] != l {
					t.Fatalf("each: %d → %v, want %v", n, l, want[n])
				}
				seen++
			})
			if seen != len(want) {
				t.Fatalf("each visited %d, want %d", seen, len(want))
			}
			x.update(func(l loc) loc { return l.withOff(l.off() + 1) })
			for n, l := range want {
				if got, _ := x.get(n); got.off() != l.off()+1 || got.st() != l.st() {
					t.Fatalf("update: %d → %v", n, got)
				}
			}
			for i := 1; i < len(x.locs); i++ {
				if x.keyAt(i-1) >= x.keyAt(i) {
					t.Fatalf("keys out of order at %d", i)
				}
			}
			// 8 bytes per loc; 4 per id in blocks of ids with gaps, none in blocks of
			// consecutive ids; 8 per block.
			most := 12*len(x.locs) + 8*(len(x.locs)/blockSize)
			if name == "consecutive" {
				most = 8*len(x.locs) + 8*(len(x.locs)/blockSize)
			}
			if b := x.bytes(); b > most {
				t.Fatalf("bytes %d for %d ids, want at most %d", b, len(x.locs), most)
			}
		})
	}
}

// TestNumIndexGivesBackItsMappings: what the index holds in mappings is exactly its
// slices' capacity, through growth and merges (each gives back the mapping it leaves),
// and free gives back the rest.
func TestNumIndexGivesBackItsMappings(t *testing.T) {
	if !indexOffHeap {
		t.Skip("the index stays on the heap on this system")
	}
	rng := rand.New(rand.NewPCG(3, 4))
	before := mappedBytes.Load()
	var x numIndex
	for i := range 100_000 {
		n := uint32(i * 2)
		if rng.IntN(20) == 0 {
			n = uint32(rng.IntN(i*2+1)) | 1 // odd: out of order, into late, merged later
		}
		x.put(n, mkLoc(int64(i), 1, 0))
	}
	x.trim()
	held := int64(cap(x.blocks)*8 + cap(x.sparse)*4 + cap(x.locs)*8)
	if got := mappedBytes.Load() - before; got != held || held == 0 {
		t.Fatalf("%d bytes mapped, the index's slices hold %d: a mapping was not given back", got, held)
	}
	x.free()
	if got := mappedBytes.Load() - before; got != 0 {
		t.Fatalf("%d bytes still mapped after free", got)
	}
	if _, ok := x.get(0); ok || x.len() != 0 {
		t.Fatal("a freed index still answers")
	}
}

// TestNumIndexTrimGivesExactSize: after a replay's worth of ascending puts (the slices
// grown by doubling), trim leaves them at their length, give or take a page, so the
// heap fallback keeps no unused half; a heap slice handed to unmapSlice is left alone.
func TestNumIndexTrimGivesExactSize(t *testing.T) {
	var x numIndex
	for i := range 100_000 {
		x.put(uint32(i*3), mkLoc(int64(i), 1, 0))
	}
	if cap(x.locs) <= len(x.locs)+len(x.locs)/16 {
		t.Fatalf("growth left cap %d for %d entries; the test needs spare capacity to trim", cap(x.locs), len(x.locs))
	}
	x.trim()
	if n := len(x.locs); n != 100_000 || cap(x.locs) > n+n/16 {
		t.Fatalf("after trim: %d entries, capacity %d", n, cap(x.locs))
	}
	for i := range 100_000 {
		if l, ok := x.get(uint32(i * 3)); !ok || l.off() != int64(i) {
			t.Fatalf("after trim: get(%d) = %v, %v", i*3, l, ok)
		}
	}
	x.free()

	before := mappedBytes.Load()
	heap := make([]loc, 10, 20)
	unmapSlice(heap)
	heap[9] = 1 // still ours: nothing was unmapped
	if mappedBytes.Load() != before {
		t.Fatal("unmapping a heap slice changed the mapped bytes")
	}
}
