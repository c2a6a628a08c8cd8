package nop_test

import (
	"math"
	"strings"
	"testing"
	"time"

	"github.com/nopsync/nopsync/shared/nop"
)

func seq(n int64) *int64 { return &n }

func TestCompareOrderKeys(t *testing.T) {
	t0 := time.Date(2026, 11, 25, 10, 15, 2, 113e6, time.UTC)
	t1 := t0.Add(time.Nanosecond)
	key := nop.MakeOrderKey
	cases := []struct {
		name string
		a, b string
		want int
	}{
		{"higher sequence wins over earlier time", key(seq(2), t0), key(seq(1), t1), 1},
		{"lower sequence loses", key(seq(1), t1), key(seq(2), t0), -1},
		{"equal sequence is equal whatever the time", key(seq(5), t0), key(seq(5), t1), 0},
		{"sequence 9 vs 10 (numeric, not lexical)", key(seq(9), t0), key(seq(10), t0), -1},
		{"max sequence", key(seq(math.MaxInt64), t0), key(seq(math.MaxInt64-1), t0), 1},
		{"no sequences: later time wins", key(nil, t1), key(nil, t0), 1},
		{"no sequences: equal times", key(nil, t0), key(nil, t0), 0},
		{"mixed: time decides (a has sequence)", key(seq(100), t0), key(nil, t1), -1},
		{"mixed: time decides (b has sequence)", key(nil, t1), key(seq(100), t0), 1},
		{"mixed: equal time", key(seq(3), t0), key(nil, t0), 0},
		{"empty is older than anything", "", key(nil, t0), -1},
		{"anything is newer than empty", key(seq(0), time.Time{}), "", 1},
		{"two empty", "", "", 0},
		{"malformed is older", "garbage", key(nil, t0), -1},
		{"non-UTC input normalised", key(nil, t0.In(time.FixedZone("x", 3600))), key(nil, t0), 0},
	}
	for _, c := range cases {
		if got := nop.CompareOrderKeys(c.a, c.b); got != c.want {
			t.Errorf("%s: CompareOrderKeys(%q, %q) = %d, want %d", c.name, c.a, c.b, got, c.want)
		}
	}
}

func TestOrderKeyStringOrderWithinOneForm(t *testing.T) {
	base := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	keys := []string{
		nop.MakeOrderKey(seq(1), base), nop.MakeOrderKey(seq(2), base), nop.MakeOrderKey(seq(10), base),
		nop.MakeOrderKey(seq(1732529702113), base),
	}
	for i := 1; i < len(keys); i++ {
		if strings.Compare(keys[i-1], keys[i]) != -1 || nop.CompareOrderKeys(keys[i-1], keys[i]) != -1 {
			t.Errorf("%q should sort before %q", keys[i-1], keys[i])
		}
	}
	times := []time.Time{base, base.Add(time.Nanosecond), base.Add(time.Millisecond), base.Add(time.Second), base.AddDate(1, 0, 0)}
	for i := 1; i < len(times); i++ {
		a, b := nop.MakeOrderKey(nil, times[i-1]), nop.MakeOrderKey(nil, times[i])
		if strings.Compare(a, b) != -1 || nop.CompareOrderKeys(a, b) != -1 || len(a) != len(b) {
			t.Errorf("%q should sort before %q with equal length", a, b)
		}
	}
	if got := nop.MakeOrderKey(seq(1732529702113), time.Date(2026, 11, 25, 10, 15, 2, 113e6, time.UTC)); got != "s00000001732529702113|t2026-11-25T10:15:02.113000000Z" {
		t.Errorf("key format %q", got)
	}
}

func TestEventOrderKey(t *testing.T) {
	evs, err := nop.DecodeRequest("customer", readTestdata(t, "customer.json"))
	if err != nil {
		t.Fatal(err)
	}
	if got := evs[0].OrderKey(); got != "s00000000000000000010|t2026-01-02T03:04:05.678000000Z" {
		t.Errorf("OrderKey %q", got)
	}
}
