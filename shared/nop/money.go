package nop

import (
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"
)

// moneyScale is 10^4: nopCommerce stores every amount as decimal(18,4).
const moneyScale = 10000

// Money is an exact amount with 4 fractional digits (nopCommerce's decimal(18,4)),
// held as an integer number of ten-thousandths so sums and comparisons are exact.
// The zero value is 0. In JSON it is a string such as "19.9900"; JSON numbers are
// rejected because a float would already have lost the exact value.
type Money struct {
	units int64 // ten-thousandths
}

// MoneyFromUnits returns the amount units/10000 (units are ten-thousandths).
func MoneyFromUnits(units int64) Money { return Money{units: units} }

// MoneyFromInt returns a whole amount.
func MoneyFromInt(n int64) Money { return Money{units: n * moneyScale} }

// Units returns the amount in ten-thousandths.
func (m Money) Units() int64 { return m.units }

var errMoneySyntax = errors.New(`must be a decimal string with at most 4 fractional digits, such as "19.9900"`)

// ParseMoney parses a decimal string: an optional "-", digits, and optionally "." and
// 1 to 4 digits. No exponent, no "+", no spaces, at most 14 integer digits.
func ParseMoney(s string) (Money, error) {
	neg := false
	rest := s
	if strings.HasPrefix(rest, "-") {
		neg = true
		rest = rest[1:]
	}
	intPart, frac, hasDot := strings.Cut(rest, ".")
	if intPart == "" || len(intPart) > 14 || !allDigits(intPart) {
		return Money{}, errMoneySyntax
	}
	if hasDot && (frac == "" || len(frac) > 4 || !allDigits(frac)) {
		return Money{}, errMoneySyntax
	}
	ip, err := strconv.ParseInt(intPart, 10, 64)
	if err != nil {
		return Money{}, errMoneySyntax
	}
	var fp int64
	if frac != "" {
		f, err := strconv.ParseInt(frac+strings.Repeat("0", 4-len(frac)), 10, 64)
		if err != nil {
			return Money{}, errMoneySyntax
		}
		fp = f
	}
	u := ip*moneyScale + fp
	if neg {
		u = -u
	}
	return Money{units: u}, nil
}

func allDigits(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return true
}

// Add returns m + o.
func (m Money) Add(o Money) Money { return Money{units: m.units + o.units} }

// Sub returns m - o.
func (m Money) Sub(o Money) Money { return Money{units: m.units - o.units} }

// Mul returns m × n (a quantity). int64 ten-thousandths hold ±922 trillion, so any real
// line (price × quantity) fits; overflow is not checked.
func (m Money) Mul(n int) Money { return Money{units: m.units * int64(n)} }

// Neg returns -m.
func (m Money) Neg() Money { return Money{units: -m.units} }

// Round rounds to the given number of fractional digits (0 to 4), half away from zero.
func (m Money) Round(decimals int) Money {
	if decimals >= 4 {
		return m
	}
	if decimals < 0 {
		decimals = 0
	}
	step := int64(1)
	for i := decimals; i < 4; i++ {
		step *= 10
	}
	u := m.units
	neg := u < 0
	if neg {
		u = -u
	}
	r := u % step
	u -= r
	if r*2 >= step {
		u += step
	}
	if neg {
		u = -u
	}
	return Money{units: u}
}

// IsZero reports whether m is 0.
func (m Money) IsZero() bool { return m.units == 0 }

// Sign returns -1, 0 or +1.
func (m Money) Sign() int {
	switch {
	case m.units < 0:
		return -1
	case m.units > 0:
		return 1
	}
	return 0
}

// Cmp returns -1, 0 or +1 as m is less than, equal to or greater than o.
func (m Money) Cmp(o Money) int {
	switch {
	case m.units < o.units:
		return -1
	case m.units > o.units:
		return 1
	}
	return 0
}

// StringFixed formats m with exactly decimals fractional digits (0 to 4), rounding half
// away from zero: StringFixed(4) is the wire form "19.9900".
func (m Money) StringFixed(decimals int) string {
	if decimals > 4 {
		decimals = 4
	}
	if decimals < 0 {
		decimals = 0
	}
	r := m.Round(decimals)
	u := r.units
	sign := ""
	if u < 0 {
		sign = "-"
		u = -u
	}
	ip, fp := u/moneyScale, u%moneyScale
	if decimals == 0 {
		return sign + strconv.FormatInt(ip, 10)
	}
	f := fmt.Sprintf("%04d", fp)[:decimals]
	return sign + strconv.FormatInt(ip, 10) + "." + f
}

// String formats m with its significant fractional digits, at least 2:
// "19.99" for 19.9900, "100.00" for 100, "1.2345" for 1.2345.
func (m Money) String() string {
	s := m.StringFixed(4)
	for strings.HasSuffix(s, "0") && len(s)-strings.IndexByte(s, '.') > 3 {
		s = s[:len(s)-1]
	}
	return s
}

// Float64 returns the nearest float64 (for Dataverse money columns, which JSON carries
// as numbers).
func (m Money) Float64() float64 {
	f, err := strconv.ParseFloat(m.StringFixed(4), 64)
	if err != nil { // cannot happen: StringFixed always yields a valid number
		return math.NaN()
	}
	return f
}

// MarshalJSON writes the wire form, a string with 4 fractional digits.
func (m Money) MarshalJSON() ([]byte, error) {
	return []byte(`"` + m.StringFixed(4) + `"`), nil
}

// UnmarshalJSON accepts only a JSON string holding a decimal (see ParseMoney).
func (m *Money) UnmarshalJSON(b []byte) error {
	if len(b) < 2 || b[0] != '"' || b[len(b)-1] != '"' {
		return errMoneySyntax
	}
	v, err := ParseMoney(string(b[1 : len(b)-1]))
	if err != nil {
		return err
	}
	*m = v
	return nil
}
