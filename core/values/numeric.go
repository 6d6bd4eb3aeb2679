package values

import (
	"fmt"
	"math/big"
	"strconv"
)

// AppendNumeric appends the JSON value of a decimal written in plain text,
// [+-]digits[.digits], as PostgreSQL's numeric_out prints numeric.
//
// The rule: the value is a JSON number when a float64 holds it faithfully,
// that is when strconv.ParseFloat followed by strconv.FormatFloat(f, 'f', -1,
// 64) gives back the same decimal (the input with leading zeros and trailing
// fractional zeros dropped); a consumer that reads the number into a float64
// then gets the stored value back. Otherwise it is a JSON string of the digits,
// so no digit is lost (12345678901234567890.123456789 has more digits than a
// float64 keeps). Either way the digits are the input's own, scale included:
// 1.50 stays 1.50, not 1.5; only a '+' sign and redundant leading zeros are
// dropped. NaN, Infinity and -Infinity become the JSON strings "NaN",
// "Infinity" and "-Infinity". Text that is not a plain decimal is appended as a
// JSON string, unchanged.
func AppendNumeric(dst []byte, s string) []byte {
	switch s {
	case "NaN", "Infinity", "-Infinity":
		dst = append(dst, '"')
		dst = append(dst, s...)
		return append(dst, '"')
	}
	neg, ip, fp, ok := splitDecimal(s)
	if !ok {
		return AppendString(dst, s)
	}
	for len(ip) > 1 && ip[0] == '0' {
		ip = ip[1:]
	}
	exact := roundTrips(s, ip, fp)
	if !exact {
		dst = append(dst, '"')
	}
	if neg {
		dst = append(dst, '-')
	}
	if ip == "" {
		dst = append(dst, '0')
	} else {
		dst = append(dst, ip...)
	}
	if fp != "" {
		dst = append(dst, '.')
		dst = append(dst, fp...)
	}
	if !exact {
		dst = append(dst, '"')
	}
	return dst
}

// splitDecimal splits [+-]digits[.digits] into its sign, integer digits and
// fractional digits; ok is false for anything else.
func splitDecimal(s string) (neg bool, ip, fp string, ok bool) {
	i := 0
	if i < len(s) && (s[i] == '-' || s[i] == '+') {
		neg = s[i] == '-'
		i++
	}
	start := i
	for i < len(s) && isDigit(s[i]) {
		i++
	}
	ip = s[start:i]
	if i < len(s) && s[i] == '.' {
		i++
		start = i
		for i < len(s) && isDigit(s[i]) {
			i++
		}
		fp = s[start:i]
	}
	return neg, ip, fp, i == len(s) && (ip != "" || fp != "")
}

func isDigit(b byte) bool { return '0' <= b && b <= '9' }

// roundTrips reports whether the decimal s, split into its integer digits ip
// (no redundant leading zeros) and fractional digits fp, comes back unchanged
// from float64's shortest formatting.
func roundTrips(s, ip, fp string) bool {
	// The significant digits sig and the decimal exponent exp of the first of
	// them: s = sig[0].sig[1:] × 10^exp.
	var buf [17]byte
	sig := buf[:0]
	var exp int
	n := 0 // number of significant digits, may exceed len(buf)
	if ip != "" && ip != "0" {
		exp = len(ip) - 1
		fpt := trimZeros(fp)
		if fpt == "" {
			ip = trimZeros(ip)
		}
		n = len(ip) + len(fpt)
		if n > len(buf) {
			return false // float64 never needs more than 17 digits
		}
		sig = append(append(sig, ip...), fpt...)
	} else {
		z := 0
		for z < len(fp) && fp[z] == '0' {
			z++
		}
		if z == len(fp) {
			return true // zero
		}
		exp = -(z + 1)
		fpt := trimZeros(fp[z:])
		n = len(fpt)
		if n > len(buf) {
			return false
		}
		sig = append(sig, fpt...)
	}
	// Any decimal of at most 15 significant digits in the normal range of
	// float64 survives the trip (DBL_DIG is 15).
	if n <= 15 && -307 <= exp && exp <= 307 {
		return true
	}
	f, err := strconv.ParseFloat(s, 64)
	if err != nil {
		return false
	}
	var fbuf [32]byte
	e := strconv.AppendFloat(fbuf[:0], f, 'e', -1, 64) // [-]d[.ddd]e±dd
	if e[0] == '-' {
		e = e[1:]
	}
	i := 0
	for i < len(e) && e[i] != 'e' {
		i++
	}
	mant, ex := e[:i], e[i+1:]
	var rest []byte // the mantissa's digits after the point
	if len(mant) > 1 {
		rest = mant[2:]
	}
	if len(sig) != 1+len(rest) || sig[0] != mant[0] || string(sig[1:]) != string(rest) {
		return false
	}
	got := 0
	for _, c := range ex[1:] {
		got = got*10 + int(c-'0')
	}
	if ex[0] == '-' {
		got = -got
	}
	return got == exp
}

func trimZeros(s string) string {
	for len(s) > 0 && s[len(s)-1] == '0' {
		s = s[:len(s)-1]
	}
	return s
}

// PostgreSQL's limits of numeric (utils/numeric.h): what a value or a
// column's declared scale can be.
const (
	// MaxNumericScale is the most digits a numeric value has after the
	// decimal point (NUMERIC_DSCALE_MAX).
	MaxNumericScale = 16383
	// MinNumericScale is the least scale a column declares: numeric(p,-1000)
	// (PostgreSQL 15+) rounds to 10^1000.
	MinNumericScale = -1000
	// MaxNumericIntegerDigits is the most digits a numeric value has before
	// the decimal point ((NUMERIC_WEIGHT_MAX+1) × DEC_DIGITS).
	MaxNumericIntegerDigits = 131072
	// maxNumericBits is the bit length of 10^(131072+16383)-1, the longest
	// unscaled value of a numeric: checked before the costly conversion to
	// decimal digits.
	maxNumericBits = 489835
)

// AppendDecimal appends the JSON value of unscaled × 10^-scale by the rule of
// AppendNumeric, written with scale fractional digits the way numeric_out
// writes it. Debezium's Decimal and VariableScaleDecimal carry numeric and
// money this way; formatting them here gives the native path's digits. A
// scale or a number of digits no numeric has is an error, so that neither
// can make the output larger than PostgreSQL's own text of a numeric.
func AppendDecimal(dst []byte, unscaled *big.Int, scale int) ([]byte, error) {
	if scale < MinNumericScale || scale > MaxNumericScale {
		return dst, fmt.Errorf("scale %d is outside PostgreSQL's numeric range (%d to %d)", scale, MinNumericScale, MaxNumericScale)
	}
	if unscaled.BitLen() > maxNumericBits {
		return dst, tooManyDigits(scale)
	}
	var buf [64]byte
	d := unscaled.Append(buf[:0], 10)
	txt := make([]byte, 0, len(d)+max(scale, -scale)+3)
	if d[0] == '-' {
		txt = append(txt, '-')
		d = d[1:]
	}
	if d[0] != '0' && len(d)-scale > MaxNumericIntegerDigits {
		return dst, tooManyDigits(scale)
	}
	switch {
	case scale <= 0:
		txt = append(txt, d...)
		if d[0] != '0' {
			for range -scale {
				txt = append(txt, '0')
			}
		}
	case len(d) > scale:
		txt = append(txt, d[:len(d)-scale]...)
		txt = append(txt, '.')
		txt = append(txt, d[len(d)-scale:]...)
	default:
		txt = append(txt, '0', '.')
		for range scale - len(d) {
			txt = append(txt, '0')
		}
		txt = append(txt, d...)
	}
	return AppendNumeric(dst, string(txt)), nil
}

func tooManyDigits(scale int) error {
	return fmt.Errorf("decimal with scale %d has more than the %d digits numeric holds before the decimal point", scale, MaxNumericIntegerDigits)
}
