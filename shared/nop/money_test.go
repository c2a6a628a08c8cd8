package nop_test

import (
	"encoding/json"
	"testing"

	"github.com/nopsync/nopsync/shared/nop"
)

func TestParseMoney(t *testing.T) {
	valid := map[string]int64{
		"19.9900":             199900,
		"19.99":               199900,
		"0":                   0,
		"0.0001":              1,
		"-0.0001":             -1,
		"-12.5":               -125000,
		"007.10":              71000,
		"12345678901234.9999": 123456789012349999,
		"-0":                  0,
	}
	for s, units := range valid {
		m, err := nop.ParseMoney(s)
		if err != nil || m.Units() != units {
			t.Errorf("ParseMoney(%q) = %d, %v; want %d", s, m.Units(), err, units)
		}
	}
	for _, s := range []string{"", "-", ".", "1.", ".5", "+1", "1e3", "1E3", "1.00001", " 1", "1 ", "1,00", "0x10",
		"NaN", "Infinity", "--1", "1.2.3", "123456789012345", "١٢", "1_000"} {
		if m, err := nop.ParseMoney(s); err == nil {
			t.Errorf("ParseMoney(%q) = %v, want an error", s, m)
		}
	}
}

func TestMoneyArithmeticAndFormat(t *testing.T) {
	m := func(s string) nop.Money {
		v, err := nop.ParseMoney(s)
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
	// 0.1 + 0.2 is exact, unlike float64.
	if got := m("0.1").Add(m("0.2")); got.Cmp(m("0.3")) != 0 || got.String() != "0.30" {
		t.Errorf("0.1+0.2 = %v", got)
	}
	if got := m("10").Sub(m("10.0001")); got.Units() != -1 || got.Sign() != -1 || got.String() != "-0.0001" {
		t.Errorf("sub: %v", got)
	}
	if got := m("19.99").Mul(3); got.String() != "59.97" {
		t.Errorf("mul: %v", got)
	}
	if !m("0.0000").IsZero() || m("0.0001").IsZero() || nop.MoneyFromInt(2).Cmp(m("2")) != 0 || nop.MoneyFromUnits(5).Units() != 5 {
		t.Error("IsZero/constructors")
	}
	if m("1").Cmp(m("2")) != -1 || m("2").Cmp(m("1")) != 1 || m("-1").Neg().Cmp(m("1")) != 0 {
		t.Error("Cmp/Neg")
	}
	rounds := []struct {
		in   string
		dec  int
		want string
	}{
		{"1.2345", 2, "1.23"}, {"1.2350", 2, "1.24"}, {"-1.2350", 2, "-1.24"}, {"1.2349", 3, "1.235"},
		{"0.5", 0, "1"}, {"-0.5", 0, "-1"}, {"0.4999", 0, "0"}, {"9.9999", 2, "10.00"}, {"1.2345", 4, "1.2345"},
	}
	for _, r := range rounds {
		if got := m(r.in).Round(r.dec).StringFixed(r.dec); got != r.want {
			t.Errorf("Round(%s, %d) = %s, want %s", r.in, r.dec, got, r.want)
		}
	}
	strs := map[string]string{"19.9900": "19.99", "100": "100.00", "1.2345": "1.2345", "0.1": "0.10", "-3.1": "-3.10", "0": "0.00"}
	for in, want := range strs {
		if got := m(in).String(); got != want {
			t.Errorf("String(%s) = %s, want %s", in, got, want)
		}
	}
	if got := m("19.99").StringFixed(4); got != "19.9900" {
		t.Errorf("StringFixed(4) = %s", got)
	}
	if got := m("19.99").Float64(); got != 19.99 {
		t.Errorf("Float64 = %v", got)
	}
}

func TestMoneyJSON(t *testing.T) {
	var v struct{ P nop.Money }
	if err := json.Unmarshal([]byte(`{"P":"12.3400"}`), &v); err != nil || v.P.Units() != 123400 {
		t.Fatalf("unmarshal: %v %v", v.P, err)
	}
	out, err := json.Marshal(v)
	if err != nil || string(out) != `{"P":"12.3400"}` {
		t.Errorf("marshal: %s %v", out, err)
	}
	for _, bad := range []string{`{"P":12.34}`, `{"P":"12.34567"}`, `{"P":null}`, `{"P":"1e2"}`, `{"P":true}`} {
		v.P = nop.Money{}
		if err := json.Unmarshal([]byte(bad), &v); err == nil {
			t.Errorf("unmarshal %s: want an error, got %v", bad, v.P)
		}
	}
}
