package localstore

import "testing"

func TestLocPacking(t *testing.T) {
	for _, c := range []struct {
		off int64
		n   int
		st  uint8
	}{
		{0, 0, 0}, {1, 1, 1}, {maxJournal, maxLine, 15}, {5 << 30, 700, 3}, {maxJournal - 1, 1, 2},
	} {
		l := mkLoc(c.off, c.n, c.st)
		if l.off() != c.off || l.n() != c.n || l.st() != c.st {
			t.Errorf("mkLoc(%d, %d, %d) reads back %d, %d, %d", c.off, c.n, c.st, l.off(), l.n(), l.st())
		}
		m := l.withOff(c.off / 3)
		if m.off() != c.off/3 || m.n() != c.n || m.st() != c.st {
			t.Errorf("withOff(%d) of (%d, %d, %d) reads back %d, %d, %d", c.off/3, c.off, c.n, c.st, m.off(), m.n(), m.st())
		}
	}
}
