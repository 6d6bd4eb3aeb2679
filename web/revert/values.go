package revert

import (
	"bytes"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"strings"
)

// literal turns a value of the trail (design §6) back into SQL that gives
// the column that value: its input text, quoted, cast to the column's type,
// or NULL.
func literal(v json.RawMessage, c *column) (string, error) {
	text, null, err := inputText(v, c.t)
	if err != nil {
		return "", fmt.Errorf("column %s (%s): %w", c.name, c.typ, err)
	}
	if null {
		return "NULL", nil
	}
	return quote(text) + "::" + c.typ, nil
}

// quote makes a standard SQL string literal (standard_conforming_strings is
// on, as Open checks).
func quote(s string) string { return "'" + strings.ReplaceAll(s, "'", "''") + "'" }

// inputText is the text PostgreSQL's input function of type t reads as the
// value v; null reports SQL NULL.
func inputText(v json.RawMessage, t *pgType) (text string, null bool, err error) {
	v = bytes.TrimSpace(v)
	if len(v) == 0 || string(v) == "null" {
		return "", true, nil
	}
	switch t.kind {
	case jsonKind:
		// As the trail holds it: jsonb's text, which a json column had
		// lost anyway when the audit table stored it.
		if !json.Valid(v) {
			return "", false, fmt.Errorf("not JSON: %s", v)
		}
		return string(v), false, nil
	case arrayKind:
		if v[0] == '"' {
			break // int2vector and oidvector are arrays stored as their text
		}
		s, err := arrayText(v, t.elem)
		return s, false, err
	}
	var x any
	dec := json.NewDecoder(bytes.NewReader(v))
	dec.UseNumber()
	if err := dec.Decode(&x); err != nil {
		return "", false, err
	}
	switch x := x.(type) {
	case string:
		switch t.kind {
		case byteaKind:
			b, err := base64.StdEncoding.DecodeString(x)
			if err != nil {
				return "", false, fmt.Errorf("bytea value is not base64: %w", err)
			}
			return `\x` + hex.EncodeToString(b), false, nil
		case dateKind:
			return bcYear(x), false, nil
		}
		return x, false, nil
	case json.Number:
		return x.String(), false, nil
	case bool:
		if x {
			return "true", false, nil
		}
		return "false", false, nil
	}
	return "", false, fmt.Errorf("the trail holds %s, which is not a value of this type", v)
}

// arrayText writes a JSON array as an array literal, "{1,NULL,\"a b\"}",
// nested per dimension.
func arrayText(v json.RawMessage, elem *pgType) (string, error) {
	var items []json.RawMessage
	if err := json.Unmarshal(v, &items); err != nil {
		return "", fmt.Errorf("array value is not a JSON array: %s", v)
	}
	var b strings.Builder
	b.WriteByte('{')
	for i, it := range items {
		if i > 0 {
			b.WriteByte(',')
		}
		it = bytes.TrimSpace(it)
		if len(it) > 0 && it[0] == '[' && elem.kind != jsonKind {
			s, err := arrayText(it, elem)
			if err != nil {
				return "", err
			}
			b.WriteString(s)
			continue
		}
		s, null, err := inputText(it, elem)
		if err != nil {
			return "", err
		}
		if null {
			b.WriteString("NULL")
			continue
		}
		b.WriteByte('"')
		b.WriteString(strings.NewReplacer(`\`, `\\`, `"`, `\"`).Replace(s))
		b.WriteByte('"')
	}
	b.WriteByte('}')
	return b.String(), nil
}

// bcYear writes an ISO 8601 astronomical year as PostgreSQL reads it: the
// trail's "-0043-03-15" (year 0 is 1 BC) is "0044-03-15 BC".
func bcYear(s string) string {
	neg := strings.HasPrefix(s, "-")
	digits := strings.TrimPrefix(s, "-")
	end := strings.IndexByte(digits, '-')
	if end < 4 || strings.Trim(digits[:end], "0123456789") != "" {
		return s // infinity, -infinity, or not a date
	}
	year := 0
	for _, c := range digits[:end] {
		year = year*10 + int(c-'0')
	}
	if neg {
		year = -year
	}
	if year > 0 {
		return s
	}
	return fmt.Sprintf("%04d%s BC", 1-year, digits[end:])
}
