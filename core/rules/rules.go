// Package rules applies the governance rules of the config's rules: section
// to each change before any sink sees it: updates whose only changed columns
// are ignored are not stored, and redacted columns and context keys are
// dropped, nulled, masked or replaced by a keyed pseudonym.
package rules

import (
	"bytes"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"hash"
	"strings"
	"unicode/utf8"

	"github.com/pgtrail/pgtrail/core/change"
	"github.com/pgtrail/pgtrail/core/config"
	"github.com/pgtrail/pgtrail/core/stitch"
	"github.com/pgtrail/pgtrail/core/values"
)

type mode uint8

const (
	keep mode = iota
	drop
	null
	mask
	pseudonym
)

var modes = map[string]mode{"drop": drop, "null": null, "mask": mask, "hmac": pseudonym}

// PseudonymPrefix starts every hmac pseudonym: "hmac:" and 64 hex digits.
const PseudonymPrefix = "hmac:"

type pattern struct {
	schema, table, column string
	mode                  mode
}

// Set is the compiled rules. A nil *Set does nothing and costs nothing.
// A Set keeps caches and is used by one goroutine (the pipeline's).
type Set struct {
	ignore  []pattern
	columns []pattern
	context []pattern // column holds the dotted key path
	key     []byte
	tables  map[tableName]*table
	// The context of a transaction is the same slice for each of its
	// changes: redacted once.
	lastIn, lastOut []byte
	// Scratch space, reused: a Set serves one goroutine.
	mac           hash.Hash
	before, after []member
	keys          []keyed
}

// keyed is a redacted value, to be redacted in the primary key too.
type keyed struct {
	old []byte
	m   mode
}

// table is what the rules say about one table's columns, found once.
type table struct {
	ignore, columns []pattern
	actions         map[string]action
}

type action struct {
	ignored bool
	mode    mode
}

// New compiles cfg; nil when it has no rule.
func New(cfg config.Rules) (*Set, error) {
	if cfg.Empty() {
		return nil, nil
	}
	r := &Set{key: []byte(cfg.HMACKey), tables: map[tableName]*table{}}
	r.mac = hmac.New(sha256.New, r.key)
	for i, p := range cfg.IgnoreColumns {
		s, t, c, ok := config.SplitColumnPattern(p)
		if !ok {
			return nil, fmt.Errorf("rules.ignore_columns[%d]: %q is not a schema.table.column pattern", i, p)
		}
		r.ignore = append(r.ignore, pattern{s, t, c, keep})
	}
	for i, rd := range cfg.Redact {
		m, ok := modes[rd.With]
		if !ok {
			return nil, fmt.Errorf("rules.redact[%d].with: %q is not one of %s", i, rd.With, strings.Join(config.RedactModes, ", "))
		}
		if m == pseudonym && len(r.key) == 0 {
			return nil, fmt.Errorf("rules.hmac_key: required by rules.redact[%d].with: hmac", i)
		}
		for j, p := range rd.Columns {
			s, t, c, ok := config.SplitColumnPattern(p)
			if !ok {
				return nil, fmt.Errorf("rules.redact[%d].columns[%d]: %q is not a schema.table.column pattern", i, j, p)
			}
			r.columns = append(r.columns, pattern{s, t, c, m})
		}
		for _, p := range rd.Context {
			r.context = append(r.context, pattern{column: p, mode: m})
		}
	}
	return r, nil
}

// Unmatched returns the column patterns (ignore and redact) that match
// none of columns, each given as schema.table.column: a typo to warn about.
func (r *Set) Unmatched(columns [][3]string) []string {
	if r == nil {
		return nil
	}
	var out []string
	for _, p := range append(append([]pattern(nil), r.ignore...), r.columns...) {
		hit := false
		for _, c := range columns {
			if config.Glob(p.schema, c[0]) && config.Glob(p.table, c[1]) && config.Glob(p.column, c[2]) {
				hit = true
				break
			}
		}
		if !hit {
			out = append(out, p.schema+"."+p.table+"."+p.column)
		}
	}
	return out
}

// tableName keys the table cache without building a string per change.
type tableName struct{ schema, table string }

func (r *Set) table(schema, name string) *table {
	k := tableName{schema, name}
	if t, ok := r.tables[k]; ok {
		return t
	}
	var t *table
	for _, set := range []struct {
		from []pattern
		to   func(*table) *[]pattern
	}{{r.ignore, func(t *table) *[]pattern { return &t.ignore }}, {r.columns, func(t *table) *[]pattern { return &t.columns }}} {
		for _, p := range set.from {
			if config.Glob(p.schema, schema) && config.Glob(p.table, name) {
				if t == nil {
					t = &table{actions: map[string]action{}}
				}
				*set.to(t) = append(*set.to(t), p)
			}
		}
	}
	r.tables[k] = t // nil: no rule touches the table
	return t
}

func (t *table) action(col []byte) action {
	if a, ok := t.actions[string(col)]; ok {
		return a
	}
	column := string(col)
	var a action
	for _, p := range t.ignore {
		if config.Glob(p.column, column) {
			a.ignored = true
			break
		}
	}
	for _, p := range t.columns {
		if config.Glob(p.column, column) {
			a.mode = p.mode // the first rule that names the column wins
			break
		}
	}
	t.actions[column] = a
	return a
}

// Apply applies the rules to a row change in place; false means the change
// is not to be stored (an update of ignored columns only).
func (r *Set) Apply(c *change.Change) bool {
	if r == nil {
		return true
	}
	if t := r.table(c.Schema, c.Table); t != nil {
		if len(t.ignore) > 0 && c.Operation == change.Update && r.onlyIgnored(t, c) {
			return false
		}
		if len(t.columns) > 0 {
			r.redactRow(t, c)
		}
	}
	if len(r.context) > 0 && len(c.Context) > 2 {
		c.Context = r.Context(c.Context)
	}
	return true
}

// onlyIgnored reports whether the update changed at least one column and
// only ignored ones. Without the whole before image (REPLICA IDENTITY
// FULL) what changed is unknown, and the change is stored.
func (r *Set) onlyIgnored(t *table, c *change.Change) bool {
	before, err := members(r.before, c.Before)
	if err != nil || len(before) == 0 {
		return false
	}
	r.before = before
	after, err := members(r.after, c.After)
	if err != nil {
		return false
	}
	r.after = after
	changed := false
	for _, a := range after {
		i := 0
		for i < len(before) && !bytes.Equal(before[i].key, a.key) {
			i++
		}
		if i == len(before) {
			return false // not a full before image
		}
		if !bytes.Equal(before[i].value, a.value) {
			if !t.action(a.key).ignored {
				return false
			}
			changed = true
		}
	}
	return changed
}

// redactRow redacts the images, the unchanged-TOAST names and the key.
func (r *Set) redactRow(t *table, c *change.Change) {
	keys := r.keys[:0]
	for _, img := range []*json.RawMessage{&c.After, &c.Before} {
		ms, err := members(r.after, *img)
		if err != nil {
			*img = change.Empty // fail closed: nothing unredacted passes
			continue
		}
		r.after = ms
		touched := false
		out := ms[:0]
		for _, m := range ms {
			a := t.action(m.key)
			if a.mode == keep {
				out = append(out, m)
				continue
			}
			touched = true
			keys = append(keys, keyed{m.value, a.mode})
			r.keys = keys
			if a.mode == drop {
				continue
			}
			m.value = r.redact(a.mode, m.value)
			out = append(out, m)
		}
		if touched {
			*img = appendObject(make([]byte, 0, len(*img)), out)
		}
	}
	if len(c.UnchangedToast) > 0 {
		kept := c.UnchangedToast[:0:0]
		for _, col := range c.UnchangedToast {
			if t.action([]byte(col)).mode != drop {
				kept = append(kept, col)
			}
		}
		c.UnchangedToast = kept
	}
	for _, k := range keys {
		c.PrimaryKey = r.redactKey(c.PrimaryKey, k.old, k.m)
	}
}

// redactKey redacts the primary key text where it is, or for a composite
// key holds, the value of a redacted column: a redacted key column must not
// show through the key.
func (r *Set) redactKey(key string, value []byte, m mode) string {
	if key == "" {
		return key
	}
	if keyIs(key, value) {
		if m == drop || m == null {
			return ""
		}
		return keyText(r.redact(m, value))
	}
	if key[0] != '[' {
		return key
	}
	var parts []json.RawMessage
	if json.Unmarshal([]byte(key), &parts) != nil {
		return key
	}
	hit := false
	for i, p := range parts {
		if bytes.Equal(p, value) {
			hit = true
			if m == drop {
				parts[i] = json.RawMessage("null")
			} else {
				parts[i] = r.redact(m, value)
			}
		}
	}
	if !hit {
		return key
	}
	b, _ := json.Marshal(parts)
	return string(b)
}

// keyIs reports whether key is value's keyText, without allocating.
func keyIs(key string, v []byte) bool {
	if len(v) >= 2 && v[0] == '"' && bytes.IndexByte(v, '\\') < 0 {
		return key == string(v[1:len(v)-1])
	}
	return key == keyText(v)
}

// keyText is a one-column key's text for a JSON value: a string unquoted,
// anything else as written (how the decoders form primary_key).
func keyText(v []byte) string {
	if len(v) > 0 && v[0] == '"' {
		var s string
		if json.Unmarshal(v, &s) == nil {
			return s
		}
	}
	return string(v)
}

func (r *Set) redact(m mode, v []byte) []byte {
	switch m {
	case null:
		return []byte("null")
	case mask:
		return Mask(v)
	case pseudonym:
		r.mac.Reset()
		r.mac.Write(canonical(v))
		out := append(make([]byte, 0, 2+len(PseudonymPrefix)+64), '"')
		out = append(out, PseudonymPrefix...)
		out = hex.AppendEncode(out, r.mac.Sum(nil))
		return append(out, '"')
	}
	return v
}

// Mask keeps a value's shape and hides its content: a string becomes as many
// '*' as it has characters, keeping its last 4 when it has at least 8; a
// number or boolean becomes a string of '*' as long as its text; an object
// or array becomes "****"; null stays null.
func Mask(v []byte) []byte {
	switch {
	case len(v) == 0 || string(v) == "null":
		return v
	case v[0] == '"':
		var s string
		if json.Unmarshal(v, &s) != nil {
			return []byte(`"****"`)
		}
		n := utf8.RuneCountInString(s)
		if n < 8 {
			return values.AppendString(nil, strings.Repeat("*", n))
		}
		rs := []rune(s)
		return values.AppendString(nil, strings.Repeat("*", n-4)+string(rs[n-4:]))
	case v[0] == '{' || v[0] == '[':
		return []byte(`"****"`)
	default:
		return values.AppendString(nil, strings.Repeat("*", len(v)))
	}
}

// Pseudonym is "hmac:" and the hex HMAC-SHA-256, under key, of the value's
// canonical JSON text (compact, object keys sorted, no HTML escaping), so
// that the same value gives the same pseudonym whatever the ingress.
func Pseudonym(key, v []byte) string {
	mac := hmac.New(sha256.New, key)
	mac.Write(canonical(v))
	return PseudonymPrefix + hex.EncodeToString(mac.Sum(nil))
}

// canonical is v's canonical JSON text; v as is when it is not JSON. A
// number, and a string without escapes, is its own.
func canonical(v []byte) []byte {
	// (encoding/json escapes U+2028 and U+2029 even without HTML escaping.)
	if len(v) > 0 && v[0] != '{' && v[0] != '[' && bytes.IndexByte(v, '\\') < 0 &&
		!bytes.Contains(v, []byte("\u2028")) && !bytes.Contains(v, []byte("\u2029")) {
		return v
	}
	d := json.NewDecoder(bytes.NewReader(v))
	d.UseNumber()
	var x any
	if d.Decode(&x) != nil {
		return v
	}
	var b bytes.Buffer
	e := json.NewEncoder(&b)
	e.SetEscapeHTML(false)
	if e.Encode(x) != nil {
		return v
	}
	return bytes.TrimSuffix(b.Bytes(), []byte("\n"))
}

// Context returns the context object with its redacted keys replaced.
func (r *Set) Context(ctx []byte) []byte {
	if r == nil || len(r.context) == 0 {
		return ctx
	}
	if bytes.Equal(ctx, r.lastIn) && r.lastIn != nil {
		return r.lastOut
	}
	out, ok := r.object(ctx, "")
	if !ok {
		out = change.Empty // fail closed
	}
	r.lastIn, r.lastOut = ctx, out
	return out
}

func (r *Set) object(obj []byte, prefix string) ([]byte, bool) {
	ms, err := members(nil, obj) // nested: its own slice
	if err != nil {
		return nil, false
	}
	out := ms[:0]
	touched := false
	for _, m := range ms {
		path := prefix + string(m.key)
		md := keep
		for _, p := range r.context {
			if config.Glob(p.column, path) {
				md = p.mode
				break
			}
		}
		switch {
		case md == drop:
			touched = true
			continue
		case md != keep:
			touched = true
			m.value = r.redact(md, m.value)
		case len(m.value) > 0 && m.value[0] == '{':
			if v, ok := r.object(m.value, path+"."); ok && !bytes.Equal(v, m.value) {
				touched = true
				m.value = v
			}
		}
		out = append(out, m)
	}
	if !touched {
		return obj, true
	}
	return appendObject(nil, out), true
}

// Message redacts the context a logical decoding message carries (prefixes
// pgtrail and _bemi), for the items `pgtrail capture` republishes.
func (r *Set) Message(prefix string, content []byte) []byte {
	if r == nil || len(r.context) == 0 || (prefix != stitch.PrefixPgtrail && prefix != stitch.PrefixBemi) {
		return content
	}
	out, ok := r.object(content, "")
	if !ok {
		return content // not an object: stitching takes it for a bad context and stores {}
	}
	return out
}
