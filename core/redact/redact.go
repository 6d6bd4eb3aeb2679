// Package redact hides credentials in text pgtrail prints: the password of
// every URL's user:password@, a NATS URL's token@, and the value of every
// secret key=value pair (URL query parameters, PostgreSQL keyword/value
// connection strings). It works on any text, not only on a lone URL, so that
// an error message quoting a URL (url.Parse does) is cleaned as well.
//
// It imports only the standard library, so that every layer may use it:
// core, transports, cmd and, like core/change, the sinks.
package redact

import (
	"fmt"
	"log/slog"
	"regexp"
	"strings"
)

// Mask replaces what is hidden.
const Mask = "xxxxx"

// String returns s with every credential replaced by Mask.
func String(s string) string {
	if strings.Contains(s, "://") {
		s = userinfo(s)
	}
	if strings.ContainsAny(s, "=:") {
		s = secretParam.ReplaceAllStringFunc(s, maskParam)
	}
	return s
}

// Error is String of err's text; "" for nil.
func Error(err error) string {
	if err == nil {
		return ""
	}
	return String(err.Error())
}

// tokenSchemes are the schemes whose user part alone, without a password, is
// a secret: nats.go sends nats://TOKEN@host as an auth token.
var tokenSchemes = map[string]bool{"nats": true, "tls": true, "ws": true, "wss": true}

// userinfo masks the user info of every URL in s. For each "://" it finds,
// the user info runs to the last @ of the authority: that is how url.Parse
// reads it, and it keeps a password holding a raw @ whole. A password holding
// a raw /, ? or # ends the authority early (the URL is then malformed, and
// libraries quote it in their parse errors): the user info then runs to the
// last @ before the next space, quote or URL (or before the closing quote
// of a quoted URL: a password may hold a space).
func userinfo(s string) string {
	var b strings.Builder
	done := 0
	for i := 0; ; {
		j := strings.Index(s[i:], "://")
		if j < 0 {
			break
		}
		sep := i + j
		start := sep + 3
		rest := s[start:]
		stop := " \t\r\n\"'`<>"
		if sch := sep - len(scheme(s[:sep])); sch > 0 && strings.IndexByte("\"'`", s[sch-1]) >= 0 {
			stop = s[sch-1 : sch] // a quoted URL may hold spaces
		}
		region := rest[:end(rest, stop)]
		if k := strings.Index(region, "://"); k >= 0 {
			region = region[:k]
		}
		at := strings.LastIndexByte(region[:end(region, "/?#")], '@')
		if at < 0 {
			at = strings.LastIndexByte(region, '@')
		}
		i = start
		if at < 0 {
			continue
		}
		user, pass, hasPass := strings.Cut(region[:at], ":")
		switch {
		case hasPass && pass != Mask:
			b.WriteString(s[done:start])
			b.WriteString(user + ":" + Mask)
		case !hasPass && tokenSchemes[strings.ToLower(scheme(s[:sep]))] && user != Mask:
			b.WriteString(s[done:start])
			b.WriteString(Mask)
		default:
			continue
		}
		done = start + at
		i = done
	}
	if done == 0 {
		return s
	}
	b.WriteString(s[done:])
	return b.String()
}

// end is the index of the first byte of s in stop, or len(s).
func end(s, stop string) int {
	if i := strings.IndexAny(s, stop); i >= 0 {
		return i
	}
	return len(s)
}

// scheme is the URL scheme that ends s.
func scheme(s string) string {
	i := len(s)
	for i > 0 {
		c := s[i-1]
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '+' || c == '-' || c == '.') {
			break
		}
		i--
	}
	return s[i:]
}

// secretKey names a secret: password, sslpassword, token, secret,
// secret_access_key, api_key and their kin.
const secretKey = `(?:[A-Za-z0-9_.-]*(?:password|passwd|passphrase|token|secret|secret_key|secret_access_key|signature|credential|api_?key)|pwd)`

// secretParam is a secret key=value pair, or "key": "value" in JSON. A bare
// value is single- or double-quoted (a PostgreSQL connection string quotes
// values with spaces), or runs to the next &, space, comma, semicolon or
// closing bracket.
var secretParam = regexp.MustCompile(`(?i)(^|[^A-Za-z0-9_.-])(` + secretKey + `=|"` + secretKey + `"\s*:\s*)('(?:[^'\\]|\\.)*'?|"(?:[^"\\]|\\.)*"?|[^&\s,;)\]}'"]*)`)

func maskParam(m string) string {
	sub := secretParam.FindStringSubmatch(m)
	value := sub[3]
	if value == "" || value == Mask || value == "'"+Mask+"'" || value == `"`+Mask+`"` {
		return m
	}
	masked := Mask
	if q := value[0]; q == '\'' || q == '"' {
		masked = string(q) + Mask + string(q)
	}
	return sub[1] + sub[2] + masked
}

// secretName matches a key that names a secret as a whole.
var secretName = regexp.MustCompile(`(?i)^` + secretKey + `$`)

// Attr is a slog ReplaceAttr function: it masks the credentials in every
// logged string, error and value (the message included), and the whole value
// of a key that names a secret (password=...), so that no log line shows a
// secret whichever package logged it.
func Attr(_ []string, a slog.Attr) slog.Attr {
	if a.Value.Kind() != slog.KindGroup && secretName.MatchString(a.Key) {
		a.Value = slog.StringValue(Mask)
		return a
	}
	switch a.Value.Kind() {
	case slog.KindString:
		if s := a.Value.String(); String(s) != s {
			a.Value = slog.StringValue(String(s))
		}
	case slog.KindAny:
		var s string
		if err, ok := a.Value.Any().(error); ok {
			s = err.Error()
		} else {
			s = fmt.Sprint(a.Value.Any())
		}
		if r := String(s); r != s {
			a.Value = slog.StringValue(r)
		}
	}
	return a
}
