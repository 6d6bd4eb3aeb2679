package s3

import (
	"fmt"
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
