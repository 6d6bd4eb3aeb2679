package config

import (
	"errors"
	"fmt"
	"os"
	"reflect"
	"strings"

	"gopkg.in/yaml.v3"
)

var durationType = reflect.TypeFor[Duration]()

func reflectValue(cfg *Config) reflect.Value { return reflect.ValueOf(cfg).Elem() }

// expandNode replaces ${VAR}, ${VAR:-default} and $$ in every scalar value below n.
// It works on the parsed tree, not the raw text, so a value holding YAML syntax
// (a password with ": " or "#") cannot change the document's structure.
func expandNode(n *yaml.Node, path string, errs *[]error) {
	switch n.Kind {
	case yaml.DocumentNode:
		for _, c := range n.Content {
			expandNode(c, path, errs)
		}
	case yaml.MappingNode:
		for i := 0; i+1 < len(n.Content); i += 2 {
			expandNode(n.Content[i+1], join(path, n.Content[i].Value), errs)
		}
	case yaml.SequenceNode:
		for i, c := range n.Content {
			expandNode(c, fmt.Sprintf("%s[%d]", path, i), errs)
		}
	case yaml.ScalarNode:
		if !strings.Contains(n.Value, "$") {
			return
		}
		s, err := expand(n.Value, os.LookupEnv)
		if err != nil {
			*errs = append(*errs, fmt.Errorf("line %d: %s: %w", n.Line, keyName(path), err))
			return
		}
		n.Value = s
		// An expanded value is a string; typed fields parse it (see decodeLeaf).
		if n.Style&yaml.TaggedStyle == 0 {
			n.Tag = "!!str"
		}
	}
}

// expand resolves references in s. The default of ${VAR:-default} may itself
// hold references and is used when VAR is unset or empty, as in the shell.
func expand(s string, lookup func(string) (string, bool)) (string, error) {
	e := expander{s: s, lookup: lookup}
	return e.text(true, false)
}

type expander struct {
	s      string
	i      int
	lookup func(string) (string, bool)
}

// text reads to the end of s, or inside a default to its closing brace (left
// unread). With eval false it checks syntax only: an unused default must not
// fail on the variables it names.
func (e *expander) text(eval, inDefault bool) (string, error) {
	var b strings.Builder
	for e.i < len(e.s) {
		rest := e.s[e.i:]
		switch {
		case inDefault && rest[0] == '}':
			return b.String(), nil
		case strings.HasPrefix(rest, "$$"):
			b.WriteByte('$')
			e.i += 2
		case strings.HasPrefix(rest, "${"):
			v, err := e.ref(eval)
			if err != nil {
				return "", err
			}
			b.WriteString(v)
		default:
			b.WriteByte(rest[0])
			e.i++
		}
	}
	if inDefault {
		return "", errors.New("unterminated ${ (close it with })")
	}
	return b.String(), nil
}

// ref reads one ${...} reference starting at e.i.
func (e *expander) ref(eval bool) (string, error) {
	start := e.i
	e.i += 2
	for e.i < len(e.s) && isNameByte(e.s[e.i], e.i == start+2) {
		e.i++
	}
	name, rest := e.s[start+2:e.i], e.s[e.i:]
	switch {
	case !strings.Contains(rest, "}"):
		return "", errors.New("unterminated ${ (close it with })")
	case name == "" || (!strings.HasPrefix(rest, "}") && !strings.HasPrefix(rest, ":-")):
		return "", fmt.Errorf("invalid reference %q (use ${VAR} or ${VAR:-default}, or $$ for a literal $)", e.s[start:])
	}
	val, ok := e.lookup(name)
	if rest[0] == '}' {
		e.i++
		if !ok && eval {
			return "", fmt.Errorf("environment variable %s is not set (set it, or give a default: ${%s:-default})", name, name)
		}
		return val, nil
	}
	e.i += 2 // ":-"
	useDefault := !ok || val == ""
	def, err := e.text(eval && useDefault, true)
	if err != nil {
		return "", err
	}
	e.i++ // "}"
	if useDefault {
		return def, nil
	}
	return val, nil
}

func isNameByte(c byte, first bool) bool {
	return c == '_' || 'A' <= c && c <= 'Z' || 'a' <= c && c <= 'z' || !first && '0' <= c && c <= '9'
}

// decodeNode decodes n into v. Unlike yaml.v3's KnownFields, an unknown key is
// reported with its dotted path, and every problem is collected, not just the first.
func decodeNode(n *yaml.Node, v reflect.Value, path string, errs *[]error) {
	if n.Kind == yaml.AliasNode {
		n = n.Alias
	}
	if n.ShortTag() == "!!null" {
		return // a key with no value keeps its default
	}
	t := v.Type()
	switch {
	case t.Kind() == reflect.Struct && t != durationType:
		if n.Kind != yaml.MappingNode {
			*errs = append(*errs, fmt.Errorf("line %d: %s: expected a mapping of keys", n.Line, keyName(path)))
			return
		}
		seen := map[string]int{}
		for i := 0; i+1 < len(n.Content); i += 2 {
			k, val := n.Content[i], n.Content[i+1]
			p := join(path, k.Value)
			f, ok := fieldByKey(t, k.Value)
			if !ok {
				*errs = append(*errs, fmt.Errorf("line %d: unknown key %s", k.Line, p))
				continue
			}
			if first, dup := seen[k.Value]; dup {
				*errs = append(*errs, fmt.Errorf("line %d: duplicate key %s (first at line %d)", k.Line, p, first))
				continue
			}
			seen[k.Value] = k.Line
			decodeNode(val, v.Field(f), p, errs)
		}
	case t.Kind() == reflect.Slice && t.Elem().Kind() == reflect.Struct:
		if n.Kind != yaml.SequenceNode {
			*errs = append(*errs, fmt.Errorf("line %d: %s: expected a list", n.Line, keyName(path)))
			return
		}
		s := reflect.MakeSlice(t, len(n.Content), len(n.Content))
		for i, el := range n.Content {
			decodeNode(el, s.Index(i), fmt.Sprintf("%s[%d]", path, i), errs)
		}
		v.Set(s)
	default:
		decodeLeaf(n, v, path, errs)
	}
}

func decodeLeaf(n *yaml.Node, v reflect.Value, path string, errs *[]error) {
	if k := v.Kind(); n.Kind == yaml.ScalarNode && k != reflect.String && k != reflect.Interface {
		// Environment values are strings: let numbers, booleans and durations
		// parse them, so batch_size: "${BATCH_SIZE}" works.
		c := *n
		c.Tag, c.Style = "", 0
		n = &c
	}
	err := n.Decode(v.Addr().Interface())
	if err == nil {
		return
	}
	if _, ok := errors.AsType[*yaml.TypeError](err); ok {
		err = fmt.Errorf("expected %s", describe(v.Type()))
		if n.Kind == yaml.ScalarNode {
			err = fmt.Errorf("%w, got %q", err, n.Value)
		}
	}
	*errs = append(*errs, fmt.Errorf("line %d: %s: %w", n.Line, keyName(path), err))
}

func fieldByKey(t reflect.Type, key string) (int, bool) {
	for i := range t.NumField() {
		name, _, _ := strings.Cut(t.Field(i).Tag.Get("yaml"), ",")
		if name == key {
			return i, true
		}
	}
	return 0, false
}

func describe(t reflect.Type) string {
	switch {
	case t == durationType:
		return "a duration such as 10s"
	case t.Kind() == reflect.String:
		return "a string"
	case t.Kind() == reflect.Int:
		return "a whole number"
	case t.Kind() == reflect.Bool:
		return "true or false"
	case t.Kind() == reflect.Slice:
		return "a list of " + strings.TrimPrefix(describe(t.Elem()), "a ") + "s"
	case t.Kind() == reflect.Map:
		return "a mapping of keys"
	}
	return t.String()
}

func join(path, key string) string {
	if path == "" {
		return key
	}
	return path + "." + key
}

// keyName names the top level, whose path is empty.
func keyName(path string) string {
	if path == "" {
		return "top level"
	}
	return path
}
