package rules

import (
	"bytes"
	"encoding/json"
	"errors"
)

// member is one key: value of a JSON object, as bytes of the original text.
type member struct {
	key   []byte // decoded (the text between the quotes, unless escaped)
	rawK  []byte // the quoted key as written
	value []byte
}

var errNotObject = errors.New("not a JSON object")

// members splits a JSON object into its members, appended to out[:0],
// without decoding values. Images come from pgtrail's own decoders, so the
// text is valid JSON; what is not an object is an error.
func members(out []member, obj []byte) ([]member, error) {
	out = out[:0]
	i := space(obj, 0)
	if i >= len(obj) || obj[i] != '{' {
		return nil, errNotObject
	}
	i = space(obj, i+1)
	if i < len(obj) && obj[i] == '}' {
		return out, nil
	}
	for i < len(obj) {
		if obj[i] != '"' {
			return nil, errNotObject
		}
		ke, err := skip(obj, i)
		if err != nil {
			return nil, err
		}
		m := member{rawK: obj[i:ke]}
		if m.key, err = decodeKey(m.rawK); err != nil {
			return nil, err
		}
		i = space(obj, ke)
		if i >= len(obj) || obj[i] != ':' {
			return nil, errNotObject
		}
		vs := space(obj, i+1)
		ve, err := skip(obj, vs)
		if err != nil {
			return nil, err
		}
		m.value = obj[vs:ve]
		out = append(out, m)
		i = space(obj, ve)
		if i < len(obj) && obj[i] == ',' {
			i = space(obj, i+1)
			continue
		}
		if i < len(obj) && obj[i] == '}' {
			return out, nil
		}
		return nil, errNotObject
	}
	return nil, errNotObject
}

func decodeKey(raw []byte) ([]byte, error) {
	if bytes.IndexByte(raw, '\\') < 0 {
		return raw[1 : len(raw)-1], nil
	}
	var s string
	err := json.Unmarshal(raw, &s)
	return []byte(s), err
}

// appendObject writes members back as one JSON object.
func appendObject(dst []byte, ms []member) []byte {
	dst = append(dst, '{')
	for n, m := range ms {
		if n > 0 {
			dst = append(dst, ',')
		}
		dst = append(dst, m.rawK...)
		dst = append(dst, ':')
		dst = append(dst, m.value...)
	}
	return append(dst, '}')
}

func space(b []byte, i int) int {
	for i < len(b) && (b[i] == ' ' || b[i] == '\t' || b[i] == '\n' || b[i] == '\r') {
		i++
	}
	return i
}

// skip returns the end of the JSON value starting at i.
func skip(b []byte, i int) (int, error) {
	if i >= len(b) {
		return 0, errNotObject
	}
	switch b[i] {
	case '"':
		for j := i + 1; j < len(b); j++ {
			switch b[j] {
			case '\\':
				j++
			case '"':
				return j + 1, nil
			}
		}
		return 0, errNotObject
	case '{', '[':
		depth := 0
		for j := i; j < len(b); j++ {
			switch b[j] {
			case '"':
				e, err := skip(b, j)
				if err != nil {
					return 0, err
				}
				j = e - 1
			case '{', '[':
				depth++
			case '}', ']':
				if depth--; depth == 0 {
					return j + 1, nil
				}
			}
		}
		return 0, errNotObject
	default:
		j := i
		for j < len(b) && b[j] != ',' && b[j] != '}' && b[j] != ']' && b[j] != ' ' && b[j] != '\n' && b[j] != '\t' && b[j] != '\r' {
			j++
		}
		if j == i {
			return 0, errNotObject
		}
		return j, nil
	}
}
