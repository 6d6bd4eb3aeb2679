package values

import (
	"bytes"
	"encoding/json"
)

// Embeddable says whether JSON text can go into the audit trail as a JSON
// value: it is valid, and jsonb can hold it. A `json` column (or a context
// payload) may hold escapes that jsonb refuses, \u0000 and a surrogate
// without its pair; embedded, such a value would fail every write of its
// batch, and the audit trail would stop there. Callers store what is not
// embeddable as a string of its text instead.
func Embeddable(text []byte) bool {
	return json.Valid(text) && jsonbEscapes(text)
}

// AppendJSON appends JSON text as the JSON value it is, or, where it is not
// Embeddable, as a string of the text: the mapping of json and jsonb values
// on every ingress.
func AppendJSON(dst, text []byte) []byte {
	if Embeddable(text) {
		return append(dst, text...)
	}
	return AppendString(dst, string(text))
}

// jsonbEscapes reports whether every \u escape of valid JSON text is one
// jsonb accepts.
func jsonbEscapes(text []byte) bool {
	for i := bytes.IndexByte(text, '\\'); i >= 0; {
		if i+1 >= len(text) {
			return true
		}
		if text[i+1] != 'u' {
			i = next(text, i+2) // \" \\ \n ...: the escaped character is not a \ that starts one
			continue
		}
		k, bad := unicodeEscape(text, i)
		if bad != fine {
			return false
		}
		i = next(text, k)
	}
	return true
}

func next(text []byte, from int) int {
	if from >= len(text) {
		return -1
	}
	j := bytes.IndexByte(text[from:], '\\')
	if j < 0 {
		return -1
	}
	return from + j
}

func hex4(text []byte, at int) (rune, bool) {
	if at+4 > len(text) {
		return 0, false
	}
	var r rune
	for _, c := range text[at : at+4] {
		switch {
		case c >= '0' && c <= '9':
			r = r<<4 | rune(c-'0')
		case c >= 'a' && c <= 'f':
			r = r<<4 | rune(c-'a'+10)
		case c >= 'A' && c <= 'F':
			r = r<<4 | rune(c-'A'+10)
		default:
			return 0, false
		}
	}
	return r, true
}
