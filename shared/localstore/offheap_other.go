//go:build !unix

package localstore

// Elsewhere the index's slices stay on the heap.

const indexOffHeap = false

func mapSlice[T offHeap](n int) []T { return make([]T, 0, n) }

func unmapSlice[T offHeap](s []T) {}
