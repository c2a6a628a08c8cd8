//go:build unix

package localqueue

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"syscall"
)

// lockDir takes an exclusive lock on dir so that a second process (or a second Open)
// can't interleave its writes with ours. The kernel drops the lock when the process
// dies, so a crash leaves nothing to clean up.
func lockDir(dir string) (unlock func(), err error) {
	f, err := os.OpenFile(filepath.Join(dir, "LOCK"), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("localqueue: lock directory: %w", err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return nil, fmt.Errorf("localqueue: directory %s is in use by another process (or another Open)", dir)
		}
		return nil, fmt.Errorf("localqueue: lock directory: %w", err)
	}
	return func() { f.Close() }, nil
}
