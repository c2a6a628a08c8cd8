//go:build unix

package localstore

import (
	"os"
	"sync/atomic"
	"syscall"
	"unsafe"
)

// mappedBytes is how much the index holds in mappings, in this process.
var mappedBytes atomic.Int64

// The index's slices live outside the Go heap, in anonymous mappings. The garbage
// collector sets its next target at twice the live heap (GOGC=100,
// https://go.dev/doc/gc-guide#GOGC), so an index on the heap costs about twice its size
// in resident memory; a mapping costs its touched pages once, and the capacity a slice
// grows into costs nothing until written. The elements hold no pointers (offHeap's
// constraint), so nothing in a mapping keeps a heap object alive. The race detector
// does not watch memory outside the Go heap: the index relies on the store's mu alone.

// indexOffHeap says the index's slices are kept in mappings.
const indexOffHeap = true

// mapSlice returns a slice of length 0 and capacity at least n, zeroed, in a mapping of
// its own; nil if the mapping fails (the caller then falls back to the heap).
func mapSlice[T offHeap](n int) []T {
	size := int(unsafe.Sizeof(T(0)))
	page := os.Getpagesize()
	bytes := (n*size + page - 1) / page * page
	if bytes == 0 {
		bytes = page
	}
	b, err := syscall.Mmap(-1, 0, bytes, syscall.PROT_READ|syscall.PROT_WRITE, syscall.MAP_ANON|syscall.MAP_PRIVATE)
	if err != nil {
		return nil
	}
	mappedBytes.Add(int64(bytes))
	return unsafe.Slice((*T)(unsafe.Pointer(unsafe.SliceData(b))), bytes/size)[:0]
}

// unmapSlice gives back s's mapping. s must come from mapSlice (its whole capacity) or
// be a heap slice, which is left to the garbage collector; nothing may use s afterwards.
func unmapSlice[T offHeap](s []T) {
	if cap(s) == 0 {
		return
	}
	size := int(unsafe.Sizeof(T(0)))
	b := unsafe.Slice((*byte)(unsafe.Pointer(unsafe.SliceData(s[:1]))), cap(s)*size)
	// syscall.Munmap knows its own mappings by their last byte and refuses others with
	// EINVAL: a heap slice (the fallback) is not unmapped. mappedBytes shows a mapping
	// that was not given back (a test checks it returns to where it was).
	if syscall.Munmap(b) == nil {
		mappedBytes.Add(-int64(len(b)))
	}
}
