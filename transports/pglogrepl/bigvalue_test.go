package pglogrepl

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"log/slog"
	"runtime"
	"strings"
	"testing"

	repl "github.com/jackc/pglogrepl"

	"github.com/pgtrail/pgtrail/core/change"
	"github.com/pgtrail/pgtrail/core/pipeline"
	"github.com/pgtrail/pgtrail/core/values"
)

// bigDecoder decodes public.docs (id integer, body text), with text values
// capped at maxValue bytes; capped counts the values it capped.
func bigDecoder(maxValue int, capped *int) *decoder {
	r := &relation{schema: "public", table: "docs", store: true, columns: []string{"id", "body"}, oids: []uint32{23, 25}, key: []int{0}}
	for _, n := range r.columns {
		r.names = append(r.names, append(values.AppendString(nil, n), ':'))
	}
	return &decoder{database: "app", rels: map[uint32]*relation{16384: r}, types: NewTypes(nil), inTxn: true, xid: 7,
		log: slog.New(slog.DiscardHandler), maxValue: maxValue, capped: func() { *capped++ }}
}

// decodeInsert decodes an insert of (1, body) and makes its images
// storable with the pipeline's limit, as native capture and the pipeline
// do, and returns the change and the bytes allocated meanwhile.
func decodeInsert(t *testing.T, d *decoder, body string, maxString int) (*change.Change, uint64) {
	t.Helper()
	xld := repl.XLogData{WALStart: 0x1000, WALData: rowMsg('I', 16384, byte('N'), tupleData("1", body))}
	var got *change.Change
	emit := func(ev pipeline.Event) error { got = ev.Change; return nil }
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	if err := d.decode(context.Background(), xld, emit); err != nil {
		t.Fatal(err)
	}
	got.After, _ = values.Storable(got.After, maxString)
	runtime.ReadMemStats(&after)
	runtime.KeepAlive(xld.WALData)
	return got, after.TotalAlloc - before.TotalAlloc
}

// TestValueOverTheCapIsStoredAsItsMarker: a text value longer than
// pipeline.max_value_bytes becomes the string_too_long marker with the size
// and SHA-256 of its text, counted once; one at the cap is kept verbatim.
func TestValueOverTheCapIsStoredAsItsMarker(t *testing.T) {
	const max = 1000
	capped := 0
	d := bigDecoder(max, &capped)

	body := strings.Repeat("é\"x\n", max/5) // 1000 bytes of UTF-8, with characters to escape
	got, _ := decodeInsert(t, d, body, max)
	var image map[string]any
	if err := json.Unmarshal(got.After, &image); err != nil {
		t.Fatalf("after %s: %v", got.After, err)
	}
	if image["body"] != body || capped != 0 {
		t.Errorf("a value at the cap: body %.40q..., capped %d; want it verbatim, none capped", image["body"], capped)
	}

	long := body + "!"
	got, _ = decodeInsert(t, d, long, max)
	sum := sha256.Sum256([]byte(long))
	want := fmt.Sprintf(`{"id":1,"body":{"pgtrail_replaced":"string_too_long","bytes":1001,"sha256":"%s"}}`, hex.EncodeToString(sum[:]))
	if string(got.After) != want || capped != 1 {
		t.Errorf("a value over the cap: after %s, capped %d; want %s, 1", got.After, capped, want)
	}
	// The pipeline would have made the same marker.
	if full, _ := decodeInsert(t, bigDecoder(0, &capped), long, max); string(full.After) != want {
		t.Errorf("values.Storable made %s; decoding made %s", full.After, want)
	}
}

// TestHundredMegabyteValueCostsLittleMoreThanItsSize measures the bytes
// allocated, per byte of value, to decode a 100 MB text value into its row
// image and make it storable: the image is sized once from the tuple (an
// eighth more for escapes), and Storable copies nothing it does not change.
// Over the cap, the value is never copied at all.
func TestHundredMegabyteValueCostsLittleMoreThanItsSize(t *testing.T) {
	if testing.Short() {
		t.Skip("allocates 300 MB")
	}
	const size = 100 << 20
	line := strings.Repeat("x", 79) + "\n" // text with a newline to escape in every 80 bytes
	for _, tc := range []struct {
		name     string
		body     string
		maxValue int
		bound    float64
	}{
		// 1.125 for the image (its bytes and an eighth of room for
		// escapes), plus the key and the change.
		{"plain text under the cap", strings.Repeat("x", size), values.MaxJSONBString, 1.13},
		{"text with newlines under the cap", strings.Repeat(line, size/len(line)), values.MaxJSONBString, 1.13},
		// Only the marker, the change and SHA-256's state.
		{"over the 64 MiB default cap", strings.Repeat("x", size), 64 << 20, 0.001},
	} {
		capped := 0
		got, alloc := decodeInsert(t, bigDecoder(tc.maxValue, &capped), tc.body, tc.maxValue)
		ratio := float64(alloc) / float64(len(tc.body))
		t.Logf("%s: %d bytes allocated for a value of %d: %.4f a byte (image %d bytes)", tc.name, alloc, len(tc.body), ratio, len(got.After))
		if ratio > tc.bound {
			t.Errorf("%s: %.4f bytes allocated a byte of value, want at most %.3f", tc.name, ratio, tc.bound)
		}
		if (capped == 1) != (len(tc.body) > tc.maxValue) {
			t.Errorf("%s: capped %d", tc.name, capped)
		}
	}
}
