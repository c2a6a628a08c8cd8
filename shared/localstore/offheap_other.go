//go:build !unix

package localstore

import "sync/atomic"

// Elsewhere the index's slices stay on the heap.

const indexOffHeap = false

var mappedBytes atomic.Int64 // always 0 here

// mapSlice makes no mapping here: newSlice then makes a heap slice.
func mapSlice[T offHeap](n int) []T { return nil }

func unmapSlice[T offHeap](s []T) {}
