package s3

import (
	"bytes"
	"cmp"
	"fmt"
	"net/url"
	"path"
	"regexp"
	"slices"
	"strconv"
	"strings"

	"github.com/pgtrail/pgtrail/plugins/sdk"
)

// The replay rule. A change's place in the source is its key: the commit
// position of its transaction, then its place in the transaction (CommitLSN,
// Seq), the same on every re-delivery. Objects of one table and day are
// named by the first and last key they hold, and:
//
//  1. an object holds every change of its table and day whose key lies
//     between its first and last key;
//  2. the key ranges of one table and day never overlap.
//
// So a change is stored exactly when its key lies in the range of an object
// of its table and day. On flush the sink lists that table's day, drops the
// buffered changes that lie in an existing range (a replay: already stored),
// and uploads the rest as one object per gap between existing ranges. The
// source delivers changes in key order and a restart resumes at or before the
// first change not yet durable, so what is buffered, together with what is
// stored, leaves no change out between the first and last key of a gap; both
// rules hold for the new objects, and a replayed change can never land in a
// second object, however the batches were cut.

// key is a change's place in the source order.
type key struct {
	commit uint64
	seq    uint32
}

func keyOf(c *sdk.Change) key { return key{c.CommitLSN, c.Seq} }

func (k key) compare(o key) int {
	if c := cmp.Compare(k.commit, o.commit); c != 0 {
		return c
	}
	return cmp.Compare(k.seq, o.seq)
}

// String is the key as 24 hex digits, zero-padded, so that names sort as keys do.
func (k key) String() string { return fmt.Sprintf("%016x%08x", k.commit, k.seq) }

func parseKey(s string) (key, bool) {
	commit, err1 := strconv.ParseUint(s[:16], 16, 64)
	seq, err2 := strconv.ParseUint(s[16:], 16, 32)
	return key{commit, uint32(seq)}, err1 == nil && err2 == nil
}

// span is the key range of one stored object.
type span struct{ first, last key }

func (s span) holds(k key) bool { return s.first.compare(k) <= 0 && k.compare(s.last) <= 0 }

// partition is one table's changes of one day (UTC, by commit time).
type partition struct {
	schema, table, day string
}

func partitionOf(c *sdk.Change) partition {
	return partition{c.Schema, c.Table, c.CommittedAt.UTC().Format("2006-01-02")}
}

// dir is the partition's folder: <prefix>/<schema>.<table>/dt=<day>.
func (p partition) dir(prefix string) string {
	return path.Join(prefix, folder(p.schema, p.table), "dt="+p.day)
}

// folder names a table's folder, <schema>.<table>, each name escaped so that
// no two tables share a folder: escaped names hold no "." (the one "." is the
// separator), no "/" (no other folder), no "=" (a Hive partition to readers),
// and unescape to the name again. An empty name is "%", which no escaped name
// is, so that no folder is "." or "..".
func folder(schema, table string) string { return escapeName(schema) + "." + escapeName(table) }

var nameEscapes = strings.NewReplacer(".", "%2E", "=", "%3D")

// escapeName is url.PathEscape, which leaves a name of letters, digits and
// "-_~$&+:@" as it is, with "." and "=" escaped too.
func escapeName(name string) string {
	if name == "" {
		return "%"
	}
	return nameEscapes.Replace(url.PathEscape(name))
}

// objectName matches the names the sink gives, whatever the format: a range
// stored as JSON lines still counts after a switch to Parquet.
var objectName = regexp.MustCompile(`^([0-9a-f]{24})-([0-9a-f]{24})\.(jsonl\.gz|parquet)$`)

// objectKey names the object of a run of changes.
func objectKey(dir string, s span, ext string) string {
	return dir + "/" + s.first.String() + "-" + s.last.String() + "." + ext
}

// parseSpan reads the key range from an object's base name.
func parseSpan(base string) (span, bool) {
	m := objectName.FindStringSubmatch(base)
	if m == nil {
		return span{}, false
	}
	first, ok1 := parseKey(m[1])
	last, ok2 := parseKey(m[2])
	return span{first, last}, ok1 && ok2 && first.compare(last) <= 0
}

// plan splits one partition's buffered changes into the runs to upload: sorted
// by key, each change once, none that an existing object holds, and a new run
// wherever an existing range lies between two changes.
func plan(changes []*sdk.Change, stored []span) [][]*sdk.Change {
	slices.SortFunc(stored, func(a, b span) int { return a.first.compare(b.first) })
	sorted := slices.Clone(changes)
	slices.SortFunc(sorted, func(a, b *sdk.Change) int {
		if c := keyOf(a).compare(keyOf(b)); c != 0 {
			return c
		}
		return bytes.Compare(a.ID[:], b.ID[:])
	})
	var runs [][]*sdk.Change
	var run []*sdk.Change
	gap := -1
	for i, c := range sorted {
		k := keyOf(c)
		if i > 0 && c.ID == sorted[i-1].ID {
			continue // delivered twice since the last flush
		}
		// stored[:n] start at or before k: k is in gap n, unless stored[n-1] holds it.
		n, _ := slices.BinarySearchFunc(stored, k, func(s span, k key) int {
			if s.first.compare(k) <= 0 {
				return -1
			}
			return 1
		})
		if n > 0 && stored[n-1].holds(k) {
			continue // stored already
		}
		if n != gap && len(run) > 0 {
			runs = append(runs, run)
			run = nil
		}
		gap = n
		run = append(run, c)
	}
	if len(run) > 0 {
		runs = append(runs, run)
	}
	return runs
}
