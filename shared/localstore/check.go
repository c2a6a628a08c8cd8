package localstore

import (
	"strings"
	"time"
)

// isDecimal reports whether id is a canonical decimal (no sign, no leading zero) of at
// most 20 digits: such ids sort numerically, before every other key.
func isDecimal(id string) bool {
	if id == "" || len(id) > 20 || (id[0] == '0' && len(id) > 1) {
		return false
	}
	for i := 0; i < len(id); i++ {
		if id[i] < '0' || id[i] > '9' {
			return false
		}
	}
	return true
}

// compareIDs is the Scan order: decimal ids numerically, then other keys in byte order.
func compareIDs(a, b string) int {
	da, db := isDecimal(a), isDecimal(b)
	switch {
	case da && db:
		if len(a) != len(b) {
			return len(a) - len(b)
		}
		return strings.Compare(a, b)
	case da:
		return -1
	case db:
		return 1
	}
	return strings.Compare(a, b)
}

func utc(t time.Time) time.Time {
	if t.IsZero() {
		return time.Time{}
	}
	return t.UTC()
}
