package host

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"syscall"
)

// baseEnv is the environment every plugin process gets from pgtrail's: what
// a program needs to run (search path, home, temp dir, time zone, locale,
// TLS trust roots, the Go runtime's limits), none of it a secret. A sink's
// config adds more by name (sinks[].env), and a built-in sink what it reads
// (Options.BuiltinEnv).
var baseEnv = []string{"PATH", "HOME", "USER", "LOGNAME", "TMPDIR", "TZ", "LANG", "LANGUAGE", "LC_*",
	"SSL_CERT_FILE", "SSL_CERT_DIR", "GOMAXPROCS", "GOMEMLIMIT", "GOGC", "GODEBUG"}

// pluginEnv returns the variables of environ that base or allow name: a name,
// or a prefix ending in "*" (AWS_* for every AWS_ variable).
func pluginEnv(environ, allow []string) []string {
	var out []string
	for _, kv := range environ {
		name, _, _ := strings.Cut(kv, "=")
		for _, pattern := range append(baseEnv[:len(baseEnv):len(baseEnv)], allow...) {
			if prefix, ok := strings.CutSuffix(pattern, "*"); ok && strings.HasPrefix(name, prefix) || name == pattern {
				out = append(out, kv)
				break
			}
		}
	}
	return out
}

// parseSHA256 reads a binary's expected sum, 64 hex digits.
func parseSHA256(s string) ([]byte, error) {
	sum, err := hex.DecodeString(strings.TrimSpace(s))
	if err != nil || len(sum) != sha256.Size {
		return nil, fmt.Errorf("sha256 %q is not a SHA-256 sum (64 hex digits, as `sha256sum PLUGIN` prints)", s)
	}
	return sum, nil
}

// fileSHA256 is the hex sum of a file, for the message that a sum does not match.
func fileSHA256(path string) string {
	f, err := os.Open(path)
	if err != nil {
		return "unknown (" + err.Error() + ")"
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "unknown (" + err.Error() + ")"
	}
	return hex.EncodeToString(h.Sum(nil))
}

// checkOwnership refuses a plugin binary that a user other than pgtrail's
// (or root) could replace: the binary and its directory (that of a symlink
// too) must belong to pgtrail's user or root and not be writable by group
// or others. A directory with the sticky bit (like /tmp) may be, as there
// only a file's owner can replace it.
func checkOwnership(path string) error {
	target, err := filepath.EvalSymlinks(path)
	if err != nil {
		return err
	}
	paths := []string{target, filepath.Dir(target)}
	if dir := filepath.Dir(path); dir != filepath.Dir(target) {
		paths = append(paths, dir)
	}
	uid := uint32(os.Geteuid())
	for i, p := range paths {
		fi, err := os.Stat(p)
		if err != nil {
			return err
		}
		what := "directory " + p
		if i == 0 {
			if !fi.Mode().IsRegular() {
				return fmt.Errorf("%s is not a regular file", p)
			}
			what = p
		}
		if st, ok := fi.Sys().(*syscall.Stat_t); ok && st.Uid != uid && st.Uid != 0 {
			return fmt.Errorf("%s is owned by uid %d, not by pgtrail's user (uid %d) or root, so that user could replace the plugin: chown %d %s (or install the plugin where only pgtrail's user or root can write)",
				what, st.Uid, uid, uid, p)
		}
		if perm := fi.Mode(); perm&0o022 != 0 && !(fi.IsDir() && perm&os.ModeSticky != 0) {
			return fmt.Errorf("%s is writable by its group or others (mode %04o), so they could replace the plugin: chmod go-w %s",
				what, perm.Perm(), p)
		}
	}
	return nil
}
