package change

import (
	"encoding/binary"
	"strconv"
	"strings"
	"testing"

	"github.com/google/uuid"
)

// TestMakeIDIsTheNameBasedUUIDOfTheChange proves that MakeID is
// uuid.NewSHA1 of the namespace and the change's name, byte for byte, so
// that IDs stored before stay the same.
func TestMakeIDIsTheNameBasedUUIDOfTheChange(t *testing.T) {
	long := strings.Repeat("x", 200) // longer than MakeID's stack buffer
	for _, c := range []struct {
		db, schema, table string
		lsn               uint64
		occ               uint32
	}{
		{"app", "public", "orders", 0x16B3748, 0},
		{"app", "public", "orders", 0x16B3748, 2},
		{"", "", "", 0, 0},
		{"bänk", "Schema", "t\x00able", 1<<64 - 1, 1<<32 - 1},
		{long, long, long, 42, 7},
	} {
		name := []byte(c.db + "\x00")
		name = binary.BigEndian.AppendUint64(name, c.lsn)
		name = append(name, c.schema+"\x00"+c.table+"\x00"...)
		name = strconv.AppendUint(name, uint64(c.occ), 10)
		want := uuid.NewSHA1(namespace, name)
		if got := MakeID(c.db, c.lsn, c.schema, c.table, c.occ); got != want {
			t.Errorf("MakeID(%.20q, %d, %.20q, %.20q, %d) = %s, want %s", c.db, c.lsn, c.schema, c.table, c.occ, got, want)
		}
	}
}

func BenchmarkMakeID(b *testing.B) {
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		MakeID("app", uint64(i), "public", "orders", 0)
	}
}
