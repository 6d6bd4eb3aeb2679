package config

import (
	"encoding/hex"
	"regexp"
	"strings"
)

// envPattern is a variable name, or a prefix ending in "*".
var envPattern = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*\*?$`)

// validatePlugin checks how a sink's plugin process is started: its
// binary's sha256 and the environment it gets.
func (s Sink) validatePlugin(key string, bad func(key, format string, args ...any)) {
	if s.SHA256 != "" {
		sum, err := hex.DecodeString(s.SHA256)
		switch {
		case err != nil || len(sum) != 32:
			bad(key+".sha256", "%q is not a SHA-256 sum: give the 64 hex digits that `sha256sum %s` prints", s.SHA256, s.Plugin)
		case !strings.ContainsRune(s.Plugin, '/'):
			bad(key+".sha256", "is for a plugin binary given by path; %q is built into pgtrail: leave sha256 out", s.Plugin)
		}
	}
	for i, name := range s.Env {
		if !envPattern.MatchString(name) {
			bad(key+".env", "entry %d, %q, is not a variable name or a prefix like AWS_*", i, name)
		}
	}
}
