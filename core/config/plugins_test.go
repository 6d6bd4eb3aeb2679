package config

import (
	"slices"
	"strings"
	"testing"
)

func TestPluginSHA256AndEnvAreChecked(t *testing.T) {
	t.Setenv("DATABASE_URL", "postgres://src")
	sum := strings.Repeat("ab", 32)
	for _, tc := range []struct{ body, want string }{
		{"sinks: [{name: a, plugin: ./sink, sha256: abc}]", "sinks[0].sha256: \"abc\" is not a SHA-256 sum: give the 64 hex digits that `sha256sum ./sink` prints"},
		{"sinks: [{name: a, plugin: ./sink, sha256: " + strings.Repeat("x", 64) + "}]", "sinks[0].sha256: \"" + strings.Repeat("x", 64) + "\" is not a SHA-256 sum"},
		{"sinks: [{name: a, plugin: s3, sha256: " + sum + "}]", `sinks[0].sha256: is for a plugin binary given by path; "s3" is built into pgtrail: leave sha256 out`},
		{"sinks: [{name: a, plugin: ./sink, env: [AWS_PROFILE, \"AWS SECRET\", \"*\", \"A*B\"]}]",
			"sinks[0].env: entry 1, \"AWS SECRET\", is not a variable name or a prefix like AWS_*\nsinks[0].env: entry 2, \"*\", is not a variable name or a prefix like AWS_*\nsinks[0].env: entry 3, \"A*B\""},
	} {
		wantContains(t, loadErr(t, tc.body), tc.want)
	}
	cfg, err := parse([]byte("sinks: [{name: a, plugin: ./sink, sha256: "+sum+", env: [AWS_PROFILE, PGTRAIL_*]}]"), (*Config).validate)
	if err != nil {
		t.Fatal(err)
	}
	if s := cfg.Sinks[0]; s.SHA256 != sum || !slices.Equal(s.Env, []string{"AWS_PROFILE", "PGTRAIL_*"}) {
		t.Fatalf("sink = %+v", s)
	}
}
