// Package values formats column values as canonical JSON (design §6). Every
// ingress (native pgoutput capture, Debezium events) decodes its own encoding
// and then calls these functions, so the same row gives the same JSON whatever
// the path it took.
//
// All functions append to dst and return the extended slice, like strconv's
// Append functions; none of them allocates beyond growing dst.
package values

import (
	"encoding/base64"

	"github.com/pgtrail/pgtrail/core/change"
)

// AppendString appends s as a JSON string (see change.AppendJSONString).
func AppendString(dst []byte, s string) []byte { return change.AppendJSONString(dst, s) }

// AppendBytes appends b as a JSON string holding its standard base64 encoding
// (with padding), the form of bytea.
func AppendBytes(dst, b []byte) []byte {
	dst = append(dst, '"')
	dst = base64.StdEncoding.AppendEncode(dst, b)
	return append(dst, '"')
}
