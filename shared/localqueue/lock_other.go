//go:build !unix

package localqueue

// lockDir is a no-op where flock is unavailable: one process per directory is then
// up to the user.
func lockDir(dir string) (unlock func(), err error) { return func() {}, nil }
