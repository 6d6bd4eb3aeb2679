package s3

import (
	"fmt"
	"math/rand/v2"
	"net/url"
	"slices"
	"strings"
	"testing"

	"github.com/pgtrail/pgtrail/core/change"
	"github.com/pgtrail/pgtrail/plugins/sdk"
)

// at makes a change at key (commit, seq), identified by its key.
func at(commit uint64, seq uint32) *sdk.Change {
	return &sdk.Change{ID: change.MakeID("app", commit, "s", "t", seq), CommitLSN: commit, Seq: seq}
}

func show(runs [][]*sdk.Change) string {
	var parts []string
	for _, run := range runs {
		var keys []string
		for _, c := range run {
			keys = append(keys, fmt.Sprintf("%d.%d", c.CommitLSN, c.Seq))
		}
		parts = append(parts, "["+strings.Join(keys, " ")+"]")
	}
	return strings.Join(parts, " ")
}

func TestPlanUploadsOnlyWhatNoStoredRangeHolds(t *testing.T) {
	stored := []span{{key{30, 0}, key{40, 1}}, {key{10, 0}, key{20, 0}}} // unsorted, as listed
	buffered := []*sdk.Change{
		at(50, 0), at(5, 0), at(10, 0), at(20, 0), at(20, 1), at(25, 0), at(25, 0), // 25.0 delivered twice
		at(40, 1), at(40, 2), at(41, 0), at(5, 0),
	}
	got := show(plan(buffered, stored))
	want := "[5.0] [20.1 25.0] [40.2 41.0 50.0]"
	if got != want {
		t.Fatalf("plan = %s, want %s", got, want)
	}
}

func TestPlanOfAFreshPartitionIsOneSortedRun(t *testing.T) {
	got := show(plan([]*sdk.Change{at(3, 1), at(3, 0), at(1, 7), at(3, 0)}, nil))
	if want := "[1.7 3.0 3.1]"; got != want {
		t.Fatalf("plan = %s, want %s", got, want)
	}
}

func TestPlanKeepsDistinctChangesThatShareAKey(t *testing.T) {
	a, b := at(7, 0), at(7, 0)
	b.ID = change.MakeID("app", 99, "s", "t", 0)
	if got := plan([]*sdk.Change{a, b, a}, nil); len(got) != 1 || len(got[0]) != 2 {
		t.Fatalf("plan = %s, want one run of both changes", show(got))
	}
}

func TestPlanOfAFullReplayUploadsNothing(t *testing.T) {
	if got := plan([]*sdk.Change{at(10, 0), at(15, 3), at(20, 0)}, []span{{key{10, 0}, key{20, 0}}}); len(got) != 0 {
		t.Fatalf("plan = %s, want nothing", show(got))
	}
}

func TestSpanNamesRoundTrip(t *testing.T) {
	s := span{key{0x16b3a28, 0}, key{0xffffffffffffffff, 0xffffffff}}
	name := objectKey("p/public.orders/dt=2024-01-02", s, "parquet")
	if name != "p/public.orders/dt=2024-01-02/00000000016b3a2800000000-ffffffffffffffffffffffff.parquet" {
		t.Fatalf("objectKey = %s", name)
	}
	got, ok := parseSpan(name[len("p/public.orders/dt=2024-01-02/"):])
	if !ok || got != s {
		t.Fatalf("parseSpan = %v, %v; want %v", got, ok, s)
	}
	for _, bad := range []string{"notes.txt", "00000000016b3a2800000000-00000000016b3a2800000000.csv", "00000000016b3a2800000001-00000000016b3a2800000000.parquet"} {
		if _, ok := parseSpan(bad); ok {
			t.Errorf("parseSpan(%q) accepted a name the sink never gives", bad)
		}
	}
	if got := (partition{"my/schema", "or ders", "2024-01-02"}).dir("audit"); got != "audit/my%2Fschema.or%20ders/dt=2024-01-02" {
		t.Fatalf("dir = %s", got)
	}
}

// TestEveryTableHasItsOwnFolder checks, for pairs of names made of the
// characters that matter (the separator, slash, escapes, Hive's "=",
// non-ASCII, space; every name of up to three of them, and random longer
// ones), that the folder is one path segment, never "." or "..", and reads
// back as the (schema, table) pair it names, so that no two pairs share one.
func TestEveryTableHasItsOwnFolder(t *testing.T) {
	alphabet := []string{"a", ".", "/", "%", "=", "2", "E", "é", " "}
	short := []string{""} // every name of up to two characters
	for range 2 {
		for _, prefix := range short {
			for _, c := range alphabet {
				short = append(short, prefix+c)
			}
		}
		short = slices.Compact(slices.Sorted(slices.Values(short)))
	}
	long := []string{"public", "orders", "%2E", "%252E", "dt=2024-01-02", "..", "schéma.tâble", "a/b.c"}
	for _, prefix := range short {
		for _, c := range alphabet {
			long = append(long, prefix+c)
		}
	}
	rng := rand.New(rand.NewPCG(1, 2))
	for range 200 {
		var b strings.Builder
		for range 4 + rng.IntN(12) {
			b.WriteString(alphabet[rng.IntN(len(alphabet))])
		}
		long = append(long, b.String())
	}
	long = slices.Compact(slices.Sorted(slices.Values(append(long, short...))))
	seen := map[string][2]string{}
	check := func(schema, table string) {
		f := folder(schema, table)
		if strings.Count(f, ".") != 1 || strings.ContainsAny(f, "/=") || f == "." || f == ".." {
			t.Fatalf("folder(%q, %q) = %q: want one path segment with one \".\" and no \"=\"", schema, table, f)
		}
		if got, err := unfolder(f); err != nil || got != [2]string{schema, table} {
			t.Fatalf("folder(%q, %q) = %q reads back as %q (%v)", schema, table, f, got, err)
		}
		if other, ok := seen[f]; ok && other != [2]string{schema, table} {
			t.Fatalf("folder %q names both %q and (%q, %q)", f, other, schema, table)
		}
		seen[f] = [2]string{schema, table}
	}
	for _, a := range long {
		for _, b := range short {
			check(a, b)
			check(b, a)
		}
	}
	t.Logf("%d folders, all distinct", len(seen))
}

// unfolder reads a folder name back: "%" is the empty name, anything else
// is path-unescaped.
func unfolder(f string) ([2]string, error) {
	var out [2]string
	parts := strings.Split(f, ".")
	if len(parts) != 2 {
		return out, fmt.Errorf("folder %q: want one \".\"", f)
	}
	for i, part := range parts {
		if part == "%" {
			continue
		}
		name, err := url.PathUnescape(part)
		if err != nil {
			return out, fmt.Errorf("folder %q: %w", f, err)
		}
		out[i] = name
	}
	return out, nil
}

func TestOrdinaryNamesKeepTheirFolders(t *testing.T) {
	for _, c := range []struct{ schema, table, want string }{
		{"public", "orders", "public.orders"},
		{"Sales_2024", "line-items~v2", "Sales_2024.line-items~v2"},
		{"my/schema", "or ders", "my%2Fschema.or%20ders"}, // as before: path-escaped
		{"a.b", "c", "a%2Eb.c"},
		{"a", "b.c", "a.b%2Ec"},
		{"k=v", "t", "k%3Dv.t"},
		{"", "", "%.%"},
	} {
		if got := folder(c.schema, c.table); got != c.want {
			t.Errorf("folder(%q, %q) = %q, want %q", c.schema, c.table, got, c.want)
		}
	}
}
