package config

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"unicode/utf8"
)

// FuzzParse parses any file as pgtrail's config: a config or an error, never
// both, never a panic; a config is a valid one (parse validates it, so it
// validates again), and an error is text a terminal and a log take, no
// longer than what the file can explain. Seeds: the example configs, and
// files that are hostile to YAML parsers and to ${VAR} expansion.
func FuzzParse(f *testing.F) {
	f.Setenv("DATABASE_URL", "postgres://u:p@127.0.0.1:5432/app")
	f.Setenv("FUZZ_SET", "x")
	examples, _ := filepath.Glob(filepath.Join("..", "..", "configs", "*.yaml"))
	for _, name := range examples {
		b, err := os.ReadFile(name)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	if len(examples) == 0 {
		f.Fatal("no example configs")
	}
	laughs := "a: &a [x, x, x, x, x, x, x, x, x]\n"
	for i, prev := 0, "a"; i < 8; i++ {
		name := string(rune('b' + i))
		laughs += name + ": &" + name + " [" + strings.Repeat("*"+prev+", ", 8) + "*" + prev + "]\n"
		prev = name
	}
	for _, s := range []string{
		"", "---\n", "null", "[]", "\x00", "\xff\xfe", "source: {type: postgres}\n\tsinks: []",
		"sinks:\n  - name: a\n    plugin: postgres\n    config:\n" + indent(laughs, 6),
		"sinks:\n  - &s {name: a, plugin: postgres, config: {url: x}}\n  - *s\n  - *s\n",
		"source: &r {postgres: *r}\n", "a: *undefined\n", "<<: {source: {type: kafka}}\n",
		"pipeline: {batch_size: 1e1000000, max_in_flight: -9223372036854775808, flush_interval: 9999999999h}\n",
		"pipeline: {batch_size: \"${FUZZ_SET}\", flush_interval: \"${FUZZ_UNSET:-${FUZZ_UNSET:-${FUZZ_SET:-1s}}}\"}\n",
		"http: {listen: \"${\"}\n", "http: {listen: \"${FUZZ_UNSET\"}\n", "http: {listen: \"$${A}${:-}\"}\n",
		"source: {type: postgres, postgres: {url: \"" + strings.Repeat("${FUZZ_SET:-", 5000) + strings.Repeat("}", 5000) + "\"}}\n",
		strings.Repeat("[", 10000) + strings.Repeat("]", 10000),
		strings.Repeat("a:\n ", 5000) + "b",
		"source:\n  type: postgres\n  type: kafka\n",
		"log: {level: \"debug\\0\", format: \"\\xff\"}\n",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		cfg, err := parse(data, (*Config).validate)
		if (cfg == nil) == (err == nil) {
			t.Fatalf("config %v and error %v", cfg, err)
		}
		if err != nil {
			msg := err.Error()
			if !utf8.ValidString(msg) || len(msg) > 64*len(data)+4096 {
				t.Fatalf("error of %d bytes for %d bytes of file: %.300q", len(msg), len(data), msg)
			}
			return
		}
		if err := cfg.validate(); err != nil {
			t.Fatalf("parse returned a config that does not validate: %v", err)
		}
	})
}

func indent(s string, n int) string {
	pad := strings.Repeat(" ", n)
	return pad + strings.ReplaceAll(strings.TrimSuffix(s, "\n"), "\n", "\n"+pad) + "\n"
}
