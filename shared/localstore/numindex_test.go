package localstore

import (
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
			if _, ok := x.get(1<<32 - 1); ok {
				t.Fatal("an id never put was found")
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
			for i := 1; i < len(x.keys); i++ {
				if x.keys[i-1] >= x.keys[i] {
					t.Fatalf("keys out of order at %d", i)
				}
			}
			if b := x.bytes(); b != 12*len(x.keys) {
				t.Fatalf("bytes %d for %d ids, want 12 each", b, len(x.keys))
			}
			x.free()
			for n := range want {
				if _, ok := x.get(n); ok || x.len() != 0 {
					t.Fatal("a freed index still answers")
				}
				break
			}
		})
	}
}
