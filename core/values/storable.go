package values

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"hash"
	"strconv"
	"unicode/utf8"

	"github.com/pgtrail/pgtrail/core/change"
)

// What PostgreSQL's jsonb holds. json takes any well-formed JSON text;
// jsonb refuses some of it, and a refused value fails every write of its
// batch, so the audit trail would stop there for good.
const (
	// MaxJSONBString is the longest string jsonb holds, in bytes of UTF-8
	// (JENTRY_OFFLENMASK): longer is "string too long to represent as
	// jsonb string". A container (a row image) is bounded by the same
	// size, so a string just under it can still fail with its siblings;
	// the sink refuses that change, and the pipeline replaces its images.
	MaxJSONBString = 1<<28 - 1
	// A jsonb number is a numeric: its first significant digit at most
	// 10^131071 (an int16 weight of base-10000 digits), at most 16383
	// digits after the decimal point (its display scale), and an exponent
	// below INT_MAX/2 even for zero ("value overflows numeric format").
	maxNumericWeight = 131071
	maxNumericScale  = 16383
	maxExponent      = 1<<30 - 1
)

// Reason is why Storable rewrote a value.
type Reason uint8

const (
	NumberOutOfRange Reason = iota // a number numeric cannot hold: kept as a string of its text
	NULEscape                      // \u0000: kept as the six characters \u0000
	LoneSurrogate                  // a \uD800-\uDFFF escape without its pair: kept as its six characters
	InvalidUTF8                    // a byte that is not UTF-8: U+FFFD
	StringTooLong                  // over MaxJSONBString: a marker with its size and SHA-256
	reasons
)

var reasonNames = [reasons]string{"number_out_of_range", "nul_escape", "lone_surrogate", "invalid_utf8", "string_too_long"}

// String is the reason's name, as in the metric's label.
func (r Reason) String() string { return reasonNames[r] }

// Rewrites counts the values Storable rewrote, by Reason.
type Rewrites [reasons]int

// Any says whether anything was rewritten.
func (r Rewrites) Any() bool { return r != Rewrites{} }

// String lists the counts, as "number_out_of_range=1 nul_escape=2".
func (r Rewrites) String() string {
	var b []byte
	for i, n := range r {
		if n > 0 {
			if len(b) > 0 {
				b = append(b, ' ')
			}
			b = append(b, reasonNames[i]...)
			b = append(b, '=')
			b = strconv.AppendInt(b, int64(n), 10)
		}
	}
	return string(b)
}

// Storable returns JSON text that jsonb can hold: text itself, without
// allocating, when it can already (the common case); else a copy in which
// each value jsonb refuses is in a safe form (see Reason), and the count of
// those. Strings longer than maxString bytes become Marker objects
// (MaxJSONBString in production; tests pass less). Text that is not valid
// JSON is returned as it is: whoever made it is at fault, not a value.
func Storable(text []byte, maxString int) ([]byte, Rewrites) {
	if storable(text, maxString) {
		return text, Rewrites{}
	}
	s := scanner{text: text, maxString: maxString}
	s.scan()
	if s.out == nil {
		return text, s.n
	}
	return append(s.out, text[s.from:]...), s.n
}

// storable says, from a fast look at text's bytes, that jsonb holds every
// value in it; false means the scanner must look closer. It does not track
// strings: escapes decide themselves (a backslash outside a string is not
// JSON), bytes above 0x7F can only be in strings, and a number can only be
// out of range with an exponent (a digit then e or E) or with more than
// maxNumericScale digits in a row.
func storable(t []byte, maxString int) bool {
	if len(t) > maxString || len(t) > maxNumericScale && longDigitRun(t) {
		return false // a string may be too long, or a number have too many digits
	}
	if !jsonbEscapes(t) {
		return false
	}
	utf8To := 0 // bytes before it are checked UTF-8
	closer := func(from, to int) bool {
		for i := from; i < to; i++ {
			c := t[i]
			switch {
			case c|0x20 == 'e' && i > 0 && t[i-1]-'0' <= 9:
				if !exponentInRange(t, i) {
					return false
				}
			case c >= utf8.RuneSelf && i >= utf8To:
				if utf8To = utf8Run(t, i); utf8To < 0 {
					return false
				}
			}
		}
		return true
	}
	i := 0
	for {
		i = quiet(t, i)
		if i+8 > len(t) {
			return closer(i, len(t))
		}
		if !closer(i, i+8) {
			return false
		}
		i += 8
	}
}

// quiet returns the index of the first 8 bytes from i on that may need a
// closer look (a byte above 0x7F, an e or E after a digit), or where fewer
// than 8 are left. It is the whole cost of a change that needs nothing, so
// it tests 8 bytes at once and calls nothing.
func quiet(t []byte, i int) int {
	var prevDigit uint64 // 0x80 when the byte before the word is a digit
	if i > 0 && t[i-1]-'0' <= 9 {
		prevDigit = 0x80
	}
	for p := t[i:]; len(p) >= 8; p = p[8:] {
		v := binary.LittleEndian.Uint64(p)
		y := (v | ones*0x20) ^ (ones * 'e') // zero where e or E
		e := (y - ones) &^ y                // high bit there (and maybe at a 'd' above one)
		w := v &^ highs
		digit := (w + ones*(0x80-'0')) &^ (w + ones*(0x80-'9'-1))
		if (v|e&(digit<<8|prevDigit))&highs != 0 {
			return len(t) - len(p)
		}
		prevDigit = digit >> 56 & 0x80
	}
	return len(t) - len(t[i:])%8
}

// utf8Run checks the bytes above 0x7F from k on and returns the index after
// them, or -1 at one that is not UTF-8.
func utf8Run(t []byte, k int) int {
	for k < len(t) && t[k] >= utf8.RuneSelf {
		r, size := utf8.DecodeRune(t[k:])
		if r == utf8.RuneError && size == 1 {
			return -1
		}
		k += size
	}
	return k
}

// exponentInRange checks the number that the e or E at k, after a digit,
// would be the exponent of, had it been in a number: when false, the
// scanner, which knows what is inside a string, looks closer.
func exponentInRange(t []byte, k int) bool {
	start := k - 1
	for start > 0 && (t[start-1]-'0' <= 9 || t[start-1] == '.' || t[start-1] == '-') {
		start--
	}
	probe := scanner{text: t, maxString: len(t)}
	probe.number(start)
	return !probe.n.Any()
}

// longDigitRun says whether t holds more than maxNumericScale digits in a
// row, which a number may not have after its decimal point.
func longDigitRun(t []byte) bool {
	run := 0 // words of 8 digits in a row
	for p := t; len(p) >= 8; p = p[8:] {
		w := binary.LittleEndian.Uint64(p)
		if (w+ones*(0x80-'0'))&^(w+ones*(0x80-'9'-1))&^w&highs != highs {
			run = 0
		} else if run++; run >= (maxNumericScale+1)/8-1 {
			return true
		}
	}
	return false
}

type scanner struct {
	text      []byte
	maxString int
	out       []byte // nil until the first rewrite
	from      int    // text[from:] is not yet in out
	n         Rewrites
}

// scan reads the whole text, rewriting what jsonb refuses.
func (s *scanner) scan() {
	for i := 0; i < len(s.text); {
		switch c := s.text[i]; {
		case c == '"':
			i = s.str(i)
		case c == '-' || c-'0' <= 9:
			i = s.number(i)
		default:
			i++
		}
	}
}

// replace puts with in place of text[start:end].
func (s *scanner) replace(start, end int, with ...string) {
	if s.out == nil {
		s.out = make([]byte, 0, len(s.text)+16)
	}
	s.out = append(s.out, s.text[s.from:start]...)
	for _, w := range with {
		s.out = append(s.out, w...)
	}
	s.from = end
}

// For testing 8 bytes at once (as change.AppendJSONString does): a byte of
// a word minus ones has its high bit set, under a byte whose own high bit is
// clear, only where the byte was zero.
const ones, highs = 0x0101010101010101, 0x8080808080808080

// str checks the string whose opening quote is at i and returns the index
// after its closing quote.
func (s *scanner) str(i int) int {
	t := s.text
	var (
		outMark, fromMark int
		counts            Rewrites
	)
	long := len(t)-i > s.maxString // only then can it be too long
	if long {
		outMark, fromMark, counts = len(s.out), s.from, s.n
	}
	j := i + 1
	for j < len(t) {
		// Skip a word at a time while no byte is '"', '\\' or above 0x7F.
		for ; j+8 <= len(t); j += 8 {
			w := t[j : j+8]
			v := uint64(w[0]) | uint64(w[1])<<8 | uint64(w[2])<<16 | uint64(w[3])<<24 |
				uint64(w[4])<<32 | uint64(w[5])<<40 | uint64(w[6])<<48 | uint64(w[7])<<56
			q, bs := v^(ones*'"'), v^(ones*'\\')
			if (v|(q-ones)&^q|(bs-ones)&^bs)&highs != 0 {
				break
			}
		}
		if j >= len(t) {
			break
		}
		switch c := t[j]; {
		case c == '"':
			if long && j-i-1 > s.maxString {
				s.tooLong(i, j, outMark, fromMark, counts)
			}
			return j + 1
		case c == '\\':
			j = s.escape(j)
		case c < utf8.RuneSelf:
			j++
		default:
			r, size := utf8.DecodeRune(t[j:])
			if r == utf8.RuneError && size == 1 {
				s.replace(j, j+1, `\ufffd`)
				s.n[InvalidUTF8]++
			}
			j += size
		}
	}
	return len(t) // unterminated: not JSON
}

// escape checks the escape at j and returns the index after it.
func (s *scanner) escape(j int) int {
	t := s.text
	if j+1 >= len(t) || t[j+1] != 'u' {
		return j + 2 // \" \\ \n ...
	}
	next, bad := unicodeEscape(t, j)
	if bad != fine {
		s.replace(j, j+1, `\\`) // the escape's backslash, escaped: its six characters stay as text
		s.n[bad]++
	}
	return next
}

// fine is unicodeEscape's verdict on an escape jsonb takes.
const fine = reasons

// unicodeEscape reads the \u escape at j and returns the index after it
// (after both halves of a surrogate pair) and, when jsonb refuses it, why;
// else fine. A malformed escape is fine here: it is not JSON, which is
// for json.Valid to say.
func unicodeEscape(t []byte, j int) (next int, bad Reason) {
	r, ok := hex4(t, j+2)
	switch {
	case !ok:
		return j + 2, fine
	case r == 0:
		return j + 6, NULEscape
	case r >= 0xDC00 && r <= 0xDFFF:
		return j + 6, LoneSurrogate
	case r >= 0xD800 && r <= 0xDBFF:
		if j+8 <= len(t) && t[j+6] == '\\' && t[j+7] == 'u' {
			if lo, ok := hex4(t, j+8); ok && lo >= 0xDC00 && lo <= 0xDFFF {
				return j + 12, fine
			}
		}
		return j + 6, LoneSurrogate
	}
	return j + 6, fine
}

// tooLong replaces the string text[i:j+1] by a marker when it decodes to
// more than maxString bytes, undoing what was rewritten inside it.
func (s *scanner) tooLong(i, j, outMark, fromMark int, counts Rewrites) {
	h := sha256.New()
	size := unescape(h, s.text[i+1:j])
	if size <= s.maxString {
		return
	}
	if s.out != nil {
		s.out = s.out[:outMark]
	}
	s.from, s.n = fromMark, counts
	marker := Marker(StringTooLong.String(), size, h, "")
	if s.out == nil {
		// Room for the text without the string: replace's default, the
		// whole text, would cost as much memory again as the string.
		s.out = make([]byte, 0, len(s.text)-(j+1-i)+len(marker)+16)
	}
	s.replace(i, j+1, string(marker))
	s.n[StringTooLong]++
}

// unescape writes the UTF-8 text that JSON string content stands for to h
// (a lone surrogate as U+FFFD, as encoding/json decodes it) and returns its
// length.
func unescape(h hash.Hash, content []byte) int {
	size, start := 0, 0
	put := func(b []byte) { h.Write(b); size += len(b) }
	var buf [utf8.UTFMax]byte
	for k := 0; k < len(content); {
		if content[k] != '\\' || k+1 >= len(content) {
			k++
			continue
		}
		put(content[start:k])
		esc := content[k+1]
		k += 2
		switch esc {
		case 'b':
			put([]byte{'\b'})
		case 'f':
			put([]byte{'\f'})
		case 'n':
			put([]byte{'\n'})
		case 'r':
			put([]byte{'\r'})
		case 't':
			put([]byte{'\t'})
		case 'u':
			r, _ := hex4(content, k)
			k += 4
			if r >= 0xD800 && r <= 0xDBFF && k+6 <= len(content) && content[k] == '\\' && content[k+1] == 'u' {
				if lo, ok := hex4(content, k+2); ok && lo >= 0xDC00 && lo <= 0xDFFF {
					r = 0x10000 + (r-0xD800)<<10 + (lo - 0xDC00)
					k += 6
				}
			}
			put(buf[:utf8.EncodeRune(buf[:], r)]) // a surrogate left alone encodes as U+FFFD
		default: // \" \\ \/
			put([]byte{esc})
		}
		start = k
	}
	put(content[start:])
	return size
}

// number checks the number that starts at i and returns the index after it.
func (s *scanner) number(i int) int {
	t := s.text
	j := i
	if t[j] == '-' {
		j++
	}
	intStart := j
	for j < len(t) && t[j]-'0' <= 9 {
		j++
	}
	intEnd, fracStart, fracEnd := j, j, j
	if intEnd == intStart {
		return j // a lone '-': not JSON
	}
	if j < len(t) && t[j] == '.' {
		j++
		fracStart = j
		for j < len(t) && t[j]-'0' <= 9 {
			j++
		}
		fracEnd = j
	}
	if j >= len(t) || t[j]|0x20 != 'e' {
		// Without an exponent the digits alone decide: JSON has no leading
		// zeros, so n integer digits put the first at 10^(n-1).
		if intEnd-intStart <= maxNumericWeight+1 && fracEnd-fracStart <= maxNumericScale {
			return j
		}
		s.badNumber(i, j)
		return j
	}
	j++
	neg := j < len(t) && t[j] == '-'
	if j < len(t) && (t[j] == '-' || t[j] == '+') {
		j++
	}
	exp := 0
	for ; j < len(t) && t[j]-'0' <= 9; j++ {
		exp = min(exp*10+int(t[j]-'0'), maxExponent+1) // saturates, as strtol does
	}
	if neg {
		exp = -exp
	}
	if exp >= maxExponent || exp <= -maxExponent || fracEnd-fracStart-exp > maxNumericScale {
		s.badNumber(i, j)
		return j
	}
	// The first significant digit's power of ten; zero has none.
	weight, zero := intEnd-intStart-1, false
	if t[intStart] == '0' {
		k := fracStart
		for k < fracEnd && t[k] == '0' {
			k++
		}
		weight, zero = fracStart-k-1, k == fracEnd
	}
	if !zero && weight+exp > maxNumericWeight {
		s.badNumber(i, j)
	}
	return j
}

// badNumber keeps the number text[i:j] as a string of its exact text.
func (s *scanner) badNumber(i, j int) {
	s.replace(i, i, `"`)
	s.replace(j, j, `"`)
	s.n[NumberOutOfRange]++
}

// Marker is the JSON object that stands for a value or a row image that
// cannot be stored: {"pgtrail_replaced": reason, "bytes": size, "sha256":
// hex of h's sum, "error": err} ("error" only when err is not empty).
func Marker(reason string, size int, h hash.Hash, err string) []byte {
	b := append([]byte(`{"pgtrail_replaced":`), AppendString(nil, reason)...)
	b = append(b, `,"bytes":`...)
	b = strconv.AppendInt(b, int64(size), 10)
	b = append(b, `,"sha256":"`...)
	b = hex.AppendEncode(b, h.Sum(nil))
	b = append(b, '"')
	if err != "" {
		b = append(b, `,"error":`...)
		b = change.AppendJSONString(b, err)
	}
	return append(b, '}')
}
