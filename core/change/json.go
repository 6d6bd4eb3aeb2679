package change

import "unicode/utf8"

// The record's text travels as JSON, and sinks write much of it by hand:
// this is the one JSON string encoder, for ingress (core/values) and sinks
// (plugins/sdk) alike.

const hex = "0123456789abcdef"

// For testing 8 bytes at once: a byte of a word minus ones has its high bit
// set, under a byte whose own high bit is clear, only where the byte was zero.
const ones, highs = 0x0101010101010101, 0x8080808080808080

// safe marks the ASCII bytes that stand for themselves in a JSON string.
var safe = func() (t [utf8.RuneSelf]bool) {
	for b := 0x20; b < utf8.RuneSelf; b++ {
		t[b] = b != '"' && b != '\\'
	}
	return t
}()

// AppendJSONString appends s as a JSON string, escaped as encoding/json escapes it
// with HTML escaping off: quote, backslash and control characters are escaped,
// U+2028 and U+2029 too, and each byte of invalid UTF-8 becomes U+FFFD, so the
// result is always valid UTF-8 JSON.
func AppendJSONString(dst []byte, s string) []byte {
	dst = append(dst, '"')
	start := 0
	for i := 0; i < len(s); {
		// Skip safe ASCII a word at a time: no byte with the high bit set,
		// below 0x20, '"' or '\\'.
		for ; i+8 <= len(s); i += 8 {
			w := s[i : i+8]
			v := uint64(w[0]) | uint64(w[1])<<8 | uint64(w[2])<<16 | uint64(w[3])<<24 |
				uint64(w[4])<<32 | uint64(w[5])<<40 | uint64(w[6])<<48 | uint64(w[7])<<56
			q, bs := v^(ones*'"'), v^(ones*'\\')
			if (v|(v-ones*0x20)&^v|(q-ones)&^q|(bs-ones)&^bs)&highs != 0 {
				break
			}
		}
		if i == len(s) {
			break
		}
		b := s[i]
		if b < utf8.RuneSelf {
			if safe[b] {
				i++
				continue
			}
			dst = append(dst, s[start:i]...)
			switch b {
			case '"', '\\':
				dst = append(dst, '\\', b)
			case '\b':
				dst = append(dst, '\\', 'b')
			case '\f':
				dst = append(dst, '\\', 'f')
			case '\n':
				dst = append(dst, '\\', 'n')
			case '\r':
				dst = append(dst, '\\', 'r')
			case '\t':
				dst = append(dst, '\\', 't')
			default:
				dst = append(dst, '\\', 'u', '0', '0', hex[b>>4], hex[b&0xF])
			}
			i++
			start = i
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		switch {
		case r == utf8.RuneError && size == 1:
			dst = append(dst, s[start:i]...)
			dst = append(dst, `\ufffd`...)
		case r == '\u2028' || r == '\u2029':
			dst = append(dst, s[start:i]...)
			dst = append(dst, '\\', 'u', '2', '0', '2', hex[r&0xF])
		default:
			i += size
			continue
		}
		i += size
		start = i
	}
	dst = append(dst, s[start:]...)
	return append(dst, '"')
}
