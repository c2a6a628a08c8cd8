//go:build !unix

package localstore

import "sync/atomic"

// Elsewhere the index's slices stay on the heap.

const indexOffHeap = false

var mappedBytes atomic.Int64 // always 0 here

func mapSlice[T offHeap](n int) []T { return make([]T, 0, n) }

func unmapSlice[T offHeap](s []T) {}
