package s3_test

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"path"
	"regexp"
	"slices"
	"sort"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	awss3 "github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/google/uuid"
	"github.com/parquet-go/parquet-go"

	"github.com/pgtrail/pgtrail/core/change"
	"github.com/pgtrail/pgtrail/plugins/sdk"
	"github.com/pgtrail/pgtrail/plugins/sdk/sdktest"
	"github.com/pgtrail/pgtrail/sinks/s3"
	"github.com/pgtrail/pgtrail/test/s3test"
)

var server *s3test.Server

func TestMain(m *testing.M) {
	s3test.Main(m, func(s *s3test.Server) { server = s })
}

var ctx = context.Background()

// config is a config block for the test server; extra keys override.
func config(t testing.TB, bucket string, extra map[string]any) json.RawMessage {
	t.Helper()
	cfg := map[string]any{
		"bucket": bucket, "prefix": "audit/app", "endpoint": server.URL(), "region": s3test.Region,
		"path_style": true, "access_key_id": s3test.AccessKey, "secret_access_key": s3test.SecretKey,
	}
	for k, v := range extra {
		cfg[k] = v
	}
	raw, err := json.Marshal(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return raw
}

func open(t testing.TB, raw json.RawMessage) *s3.Sink {
	t.Helper()
	s := s3.New()
	if err := s.Configure(ctx, raw); err != nil {
		t.Fatalf("Configure: %v", err)
	}
	if err := s.Open(ctx); err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() { s.Close(ctx) })
	return s
}

var bucketSeq atomic.Int64

// unmadeBucket names a bucket that does not exist yet, removed at cleanup
// if a test makes it.
func unmadeBucket(t testing.TB) string {
	name := fmt.Sprintf("pgtrail-sink-%d", bucketSeq.Add(1))
	t.Cleanup(func() { server.RemoveBucket(t, name) })
	return name
}

var layout = regexp.MustCompile(`^audit/app/([^/]+)/dt=(\d{4}-\d{2}-\d{2})/([0-9a-f]{16})([0-9a-f]{8})-([0-9a-f]{16})([0-9a-f]{8})\.(jsonl\.gz|parquet)$`)

// record is what the tests read back of a stored change.
type record struct {
	ID             uuid.UUID `json:"id"`
	CommitPosition uint64    `json:"commit_position"`
	Seq            uint32    `json:"seq"`
}

// decode reads the changes of one object.
func decode(t testing.TB, key string, body []byte) []record {
	t.Helper()
	var out []record
	if strings.HasSuffix(key, ".parquet") {
		rows, err := parquet.Read[s3.Row](bytes.NewReader(body), int64(len(body)))
		if err != nil {
			t.Fatalf("read parquet %s: %v", key, err)
		}
		for _, r := range rows {
			out = append(out, record{uuid.MustParse(r.ID), uint64(r.CommitPosition), uint32(r.Seq)})
		}
		return out
	}
	zr, err := gzip.NewReader(bytes.NewReader(body))
	if err != nil {
		t.Fatalf("gunzip %s: %v", key, err)
	}
	sc := bufio.NewScanner(zr)
	sc.Buffer(nil, 16<<20)
	for sc.Scan() {
		var r record
		if err := json.Unmarshal(sc.Bytes(), &r); err != nil {
			t.Fatalf("%s: line %q: %v", key, sc.Text(), err)
		}
		out = append(out, r)
	}
	if err := sc.Err(); err != nil {
		t.Fatalf("read %s: %v", key, err)
	}
	return out
}

// stored returns the ID of every change in the bucket, once per copy, after
// checking the layout and the replay rule: every object is named by the
// first and last key it holds, and the ranges of one folder do not overlap.
func stored(t testing.TB, bucket string) []uuid.UUID {
	t.Helper()
	type rng struct{ first, last string }
	ranges := map[string][]rng{}
	var ids []uuid.UUID
	for key, body := range server.Objects(t, bucket, "audit/app/") {
		m := layout.FindStringSubmatch(key)
		if m == nil {
			t.Fatalf("object %s does not follow the layout", key)
		}
		recs := decode(t, key, body)
		if len(recs) == 0 {
			t.Fatalf("object %s is empty", key)
		}
		first, last := recs[0], recs[len(recs)-1]
		if got, want := m[3]+m[4]+"-"+m[5]+m[6], fmt.Sprintf("%016x%08x-%016x%08x", first.CommitPosition, first.Seq, last.CommitPosition, last.Seq); got != want {
			t.Fatalf("object %s holds keys %s", key, want)
		}
		dir := path.Dir(key)
		ranges[dir] = append(ranges[dir], rng{m[3] + m[4], m[5] + m[6]})
		for _, r := range recs {
			ids = append(ids, r.ID)
		}
	}
	for dir, rs := range ranges {
		sort.Slice(rs, func(i, j int) bool { return rs[i].first < rs[j].first })
		for i := 1; i < len(rs); i++ {
			if rs[i].first <= rs[i-1].last {
				t.Fatalf("in %s, objects %s-%s and %s-%s overlap", dir, rs[i-1].first, rs[i-1].last, rs[i].first, rs[i].last)
			}
		}
	}
	return ids
}

func TestSinkPassesTheSDKTestKit(t *testing.T) {
	for _, format := range []string{"jsonl", "parquet"} {
		t.Run(format, func(t *testing.T) {
			bucket := unmadeBucket(t) // Setup makes it
			sdktest.Run(t, sdktest.Harness{
				New:    func() sdk.Sink { return s3.New() },
				Config: config(t, bucket, map[string]any{"format": format}),
				Stored: func(t testing.TB) []uuid.UUID { return stored(t, bucket) },
			})
		})
	}
}

// orderChange makes a change of public.orders committed at `at`, at key (commit, seq).
func orderChange(commit uint64, seq uint32, at time.Time) *sdk.Change {
	return &sdk.Change{
		ID:       change.MakeID("app", commit-16+uint64(seq), "public", "orders", 0),
		Database: "app", Schema: "public", Table: "orders", Operation: change.Update,
		PrimaryKey: "7", Before: json.RawMessage(`{"id": 7, "status": "new"}`), After: json.RawMessage(`{"id":7,"status":"paid"}`),
		Context: json.RawMessage(`{"user_id":42}`), UnchangedToast: []string{"body"},
		TransactionID: 900, CommittedAt: at, QueuedAt: at.Add(time.Millisecond),
		LSN: commit - 16 + uint64(seq), CommitLSN: commit, Seq: seq,
	}
}

func TestObjectsAreNamedByTableDayAndKeyRange(t *testing.T) {
	bucket := server.NewBucket(t)
	at := time.Date(2024, 1, 2, 3, 4, 5, 123456000, time.UTC)
	for _, format := range []string{"jsonl", "parquet"} {
		s := open(t, config(t, bucket, map[string]any{"format": format, "prefix": "/audit/app/" + format + "/"}))
		batch := []*sdk.Change{orderChange(0x1000, 0, at), orderChange(0x1000, 1, at), orderChange(0x2000, 0, at.Add(24*time.Hour))}
		if durable, err := s.Write(ctx, batch); err != nil || durable {
			t.Fatalf("Write = %v, %v; want buffered (false, nil)", durable, err)
		}
		if err := s.Flush(ctx); err != nil {
			t.Fatal(err)
		}
		ext := map[string]string{"jsonl": "jsonl.gz", "parquet": "parquet"}[format]
		var keys []string
		for k := range server.Objects(t, bucket, "audit/app/"+format+"/") {
			keys = append(keys, k)
		}
		slices.Sort(keys)
		want := []string{
			"audit/app/" + format + "/public.orders/dt=2024-01-02/000000000000100000000000-000000000000100000000001." + ext,
			"audit/app/" + format + "/public.orders/dt=2024-01-03/000000000000200000000000-000000000000200000000000." + ext,
		}
		if !slices.Equal(keys, want) {
			t.Fatalf("%s objects:\n%s\nwant:\n%s", format, strings.Join(keys, "\n"), strings.Join(want, "\n"))
		}
	}
}

func TestJSONLinesHoldTheAuditColumns(t *testing.T) {
	bucket := server.NewBucket(t)
	s := open(t, config(t, bucket, nil))
	at := time.Date(2024, 1, 2, 3, 4, 5, 123456000, time.UTC)
	c := orderChange(0x1000, 3, at)
	if _, err := s.Write(ctx, []*sdk.Change{c}); err != nil {
		t.Fatal(err)
	}
	before := time.Now().UTC().Truncate(time.Microsecond)
	if err := s.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	objs := server.Objects(t, bucket, "")
	body := objs["audit/app/public.orders/dt=2024-01-02/000000000000100000000003-000000000000100000000003.jsonl.gz"]
	zr, err := gzip.NewReader(bytes.NewReader(body))
	if err != nil {
		t.Fatalf("objects %v: %v", objs, err)
	}
	var line bytes.Buffer
	line.ReadFrom(zr)
	var got map[string]any
	if err := json.Unmarshal(line.Bytes(), &got); err != nil {
		t.Fatal(err)
	}
	created, _ := time.Parse(time.RFC3339Nano, got["created_at"].(string))
	if created.Before(before.Add(-time.Second)) {
		t.Fatalf("created_at %v is before the flush at %v", created, before)
	}
	delete(got, "created_at")
	want := fmt.Sprintf(`{"id":%q,"primary_key":"7","before":{"id":7,"status":"new"},"after":{"id":7,"status":"paid"},"context":{"user_id":42},`+
		`"database":"app","schema":"public","table":"orders","operation":"UPDATE","committed_at":"2024-01-02T03:04:05.123456Z",`+
		`"queued_at":"2024-01-02T03:04:05.124456Z","transaction_id":900,"position":4083,"commit_position":4096,"seq":3,"unchanged_toast":["body"]}`, c.ID)
	var wantMap map[string]any
	json.Unmarshal([]byte(want), &wantMap)
	gotJSON, _ := json.Marshal(got)
	wantJSON, _ := json.Marshal(wantMap)
	if string(gotJSON) != string(wantJSON) {
		t.Fatalf("line:\n%s\nwant:\n%s", gotJSON, wantJSON)
	}
	if strings.Count(line.String(), "\n") != 1 || !strings.HasSuffix(line.String(), "}\n") {
		t.Fatalf("want exactly one line, got %q", line.String())
	}
}

func TestParquetRowsHoldTheAuditColumns(t *testing.T) {
	bucket := server.NewBucket(t)
	s := open(t, config(t, bucket, map[string]any{"format": "parquet"}))
	at := time.Date(2024, 1, 2, 3, 4, 5, 123456000, time.UTC)
	c, noKey := orderChange(0x1000, 3, at), orderChange(0x1000, 4, at)
	noKey.PrimaryKey, noKey.UnchangedToast, noKey.Operation = "", nil, change.Truncate
	if _, err := s.Write(ctx, []*sdk.Change{c, noKey}); err != nil {
		t.Fatal(err)
	}
	if err := s.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	body := server.Objects(t, bucket, "")["audit/app/public.orders/dt=2024-01-02/000000000000100000000003-000000000000100000000004.parquet"]
	rows, err := parquet.Read[s3.Row](bytes.NewReader(body), int64(len(body)))
	if err != nil {
		t.Fatal(err)
	}
	if len(rows) != 2 {
		t.Fatalf("%d rows, want 2", len(rows))
	}
	r := rows[0]
	r.CreatedAt = time.Time{}
	key := "7"
	want := s3.Row{
		ID: c.ID.String(), PrimaryKey: &key, Before: `{"id": 7, "status": "new"}`, After: `{"id":7,"status":"paid"}`, Context: `{"user_id":42}`,
		Database: "app", Schema: "public", Table: "orders", Operation: "UPDATE",
		CommittedAt: at, QueuedAt: at.Add(time.Millisecond), TransactionID: 900, Position: 4083, CommitPosition: 4096, Seq: 3,
		UnchangedToast: []string{"body"},
	}
	if r.PrimaryKey == nil || *r.PrimaryKey != key {
		t.Fatalf("primary_key = %v, want %q", r.PrimaryKey, key)
	}
	r.PrimaryKey, want.PrimaryKey = nil, nil
	if fmt.Sprintf("%+v", r) != fmt.Sprintf("%+v", want) {
		t.Fatalf("row:\n%+v\nwant:\n%+v", r, want)
	}
	if rows[1].PrimaryKey != nil || rows[1].Operation != "TRUNCATE" || len(rows[1].UnchangedToast) != 0 {
		t.Fatalf("keyless row: primary_key %v, operation %s, unchanged_toast %v; want nil, TRUNCATE, []", rows[1].PrimaryKey, rows[1].Operation, rows[1].UnchangedToast)
	}
}

func TestFlushBytesUploadsWithoutWaitingForFlush(t *testing.T) {
	bucket := server.NewBucket(t)
	s := open(t, config(t, bucket, map[string]any{"flush_bytes": "8KiB", "flush_interval": "250ms"}))
	if got := s.Describe().FlushInterval; got != 250*time.Millisecond {
		t.Fatalf("Describe().FlushInterval = %s, want 250ms", got)
	}
	changes := sdktest.Changes(60, time.Now()) // about 600 bytes each
	if durable, err := s.Write(ctx, changes[:10]); err != nil || durable {
		t.Fatalf("first Write = %v, %v; want buffered", durable, err)
	}
	if n := len(stored(t, bucket)); n != 0 {
		t.Fatalf("%d changes uploaded before flush_bytes was reached", n)
	}
	if durable, err := s.Write(ctx, changes[10:]); err != nil || !durable {
		t.Fatalf("Write past flush_bytes = %v, %v; want durable", durable, err)
	}
	if n := len(stored(t, bucket)); n != 60 {
		t.Fatalf("%d changes uploaded, want 60", n)
	}
}

func TestBufferNeverHoldsMoreThanFlushBytes(t *testing.T) {
	bucket := server.NewBucket(t)
	changes := sdktest.Changes(40, time.Now())
	limit := s3.SizeOf(changes[:7])
	s := open(t, config(t, bucket, map[string]any{"flush_bytes": limit}))
	var buffered, uploaded int
	var size int64
	for i := 0; i < len(changes); i += 3 {
		batch := changes[i:min(i+3, len(changes))]
		// The rule: upload what is buffered before the batch would pass the
		// limit; upload with the batch when it reaches it.
		if buffered > 0 && size+s3.SizeOf(batch) > limit {
			uploaded, buffered, size = uploaded+buffered, 0, 0
		}
		buffered, size = buffered+len(batch), size+s3.SizeOf(batch)
		wantDurable := size >= limit
		if wantDurable {
			uploaded, buffered, size = uploaded+buffered, 0, 0
		}
		durable, err := s.Write(ctx, batch)
		if err != nil || durable != wantDurable {
			t.Fatalf("Write of changes %d..%d = %v, %v; want %v", i, i+len(batch), durable, err, wantDurable)
		}
		gotBuffered, gotSize := s.Buffered()
		if gotSize > limit || gotBuffered != buffered || gotSize != size {
			t.Fatalf("after changes %d..%d: %d changes (%d bytes) buffered, want %d (%d bytes), at most %d bytes", i, i+len(batch), gotBuffered, gotSize, buffered, size, limit)
		}
		if n := len(stored(t, bucket)); n != uploaded {
			t.Fatalf("after changes %d..%d: %d changes uploaded, want %d", i, i+len(batch), n, uploaded)
		}
	}
	if uploaded == 0 {
		t.Fatal("nothing uploaded by size: the test proves nothing")
	}
}

func TestFailedFlushKeepsEveryChangeUntilItIsWritten(t *testing.T) {
	bucket := server.NewBucket(t)
	s := open(t, config(t, bucket, nil))
	changes := sdktest.Changes(100, time.Now())
	if _, err := s.Write(ctx, changes); err != nil {
		t.Fatal(err)
	}
	server.RemoveBucket(t, bucket) // the bucket goes away under the sink
	err := s.Flush(ctx)
	t.Logf("Flush: %v", err)
	if err == nil || !strings.Contains(err.Error(), fmt.Sprintf("bucket %q does not exist", bucket)) || !strings.Contains(err.Error(), "pgtrail setup") {
		t.Fatalf("Flush into a removed bucket: %v; want it to say the bucket does not exist and to run pgtrail setup", err)
	}
	if durable, err := s.Write(ctx, nil); durable || err != nil {
		t.Fatalf("after a failed flush Write(nil) = %v, %v; want not durable", durable, err)
	}
	if _, err := server.Client().CreateBucket(ctx, &awss3.CreateBucketInput{Bucket: aws.String(bucket)}); err != nil {
		t.Fatal(err)
	}
	if err := s.Flush(ctx); err != nil {
		t.Fatalf("Flush after the bucket is back: %v", err)
	}
	expectOnce(t, stored(t, bucket), changes)
}

func TestFailedWriteLeavesTheSinkAsBefore(t *testing.T) {
	bucket := server.NewBucket(t)
	s := open(t, config(t, bucket, map[string]any{"flush_bytes": "16KiB"}))
	changes := sdktest.Changes(80, time.Now())
	first, second := changes[:10], changes[10:] // the second passes flush_bytes
	if _, err := s.Write(ctx, first); err != nil {
		t.Fatal(err)
	}
	server.RemoveBucket(t, bucket)
	if durable, err := s.Write(ctx, second); err == nil || durable {
		t.Fatalf("Write into a removed bucket = %v, %v; want an error", durable, err)
	}
	if _, err := server.Client().CreateBucket(ctx, &awss3.CreateBucketInput{Bucket: aws.String(bucket)}); err != nil {
		t.Fatal(err)
	}
	if err := s.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	expectOnce(t, stored(t, bucket), first) // the failed batch was not kept
	if durable, err := s.Write(ctx, second); err != nil || !durable {
		t.Fatalf("retried Write = %v, %v; want durable", durable, err)
	}
	expectOnce(t, stored(t, bucket), changes)
}

func TestReplayIntoExistingRangesUploadsOnlyTheGaps(t *testing.T) {
	bucket := server.NewBucket(t)
	changes := sdktest.Changes(90, time.Date(2024, 5, 1, 12, 0, 0, 0, time.UTC))
	s := open(t, config(t, bucket, nil))
	// Two objects with a gap between them, as two runs of an earlier process.
	for _, part := range [][]*sdk.Change{changes[20:40], changes[60:70]} {
		if _, err := s.Write(ctx, part); err != nil {
			t.Fatal(err)
		}
		if err := s.Flush(ctx); err != nil {
			t.Fatal(err)
		}
	}
	// A replay of everything, shuffled into odd batches.
	s = open(t, config(t, bucket, nil))
	for _, part := range [][]*sdk.Change{changes[:25], changes[10:90], changes[65:]} {
		if _, err := s.Write(ctx, part); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	expectOnce(t, stored(t, bucket), changes)
	if n := len(server.Objects(t, bucket, "")); n != 5 {
		t.Fatalf("%d objects, want 5: the two stored and the three gaps around them", n)
	}
}

func expectOnce(t testing.TB, ids []uuid.UUID, want []*sdk.Change) {
	t.Helper()
	seen := map[uuid.UUID]int{}
	for _, id := range ids {
		seen[id]++
	}
	for _, c := range want {
		if seen[c.ID] != 1 {
			t.Fatalf("change %s stored %d times, want once (%d stored, %d wanted)", c.ID, seen[c.ID], len(ids), len(want))
		}
	}
	if len(ids) != len(want) {
		t.Fatalf("%d changes stored, want %d", len(ids), len(want))
	}
}

func TestMissingBucketSaysRunSetupAndSetupMakesIt(t *testing.T) {
	bucket := unmadeBucket(t)
	s := s3.New()
	if err := s.Configure(ctx, config(t, bucket, nil)); err != nil {
		t.Fatal(err)
	}
	err := s.Open(ctx)
	t.Logf("Open: %v", err)
	if err == nil || !strings.Contains(err.Error(), fmt.Sprintf(`bucket %q does not exist at %s: create it, or run `+"`pgtrail setup`", bucket, server.URL())) {
		t.Fatalf("Open with a missing bucket: %v", err)
	}
	if err := s.Setup(ctx); err != nil {
		t.Fatalf("Setup: %v", err)
	}
	if err := s.Open(ctx); err != nil {
		t.Fatalf("Open after Setup: %v", err)
	}
}

func TestWrongCredentialsAreNamed(t *testing.T) {
	bucket := server.NewBucket(t)
	s := s3.New()
	if err := s.Configure(ctx, config(t, bucket, map[string]any{"secret_access_key": "wrong"})); err != nil {
		t.Fatal(err)
	}
	err := s.Open(ctx)
	t.Logf("Open: %v", err)
	if err == nil || !strings.Contains(err.Error(), "check the credentials") {
		t.Fatalf("Open with a wrong secret: %v; want it to say check the credentials", err)
	}
	if _, err := s.Write(ctx, sdktest.Changes(3, time.Now())); err != nil {
		t.Fatal(err) // buffered only
	}
	err = s.Flush(ctx)
	t.Logf("Flush: %v", err)
	if err == nil || !strings.Contains(err.Error(), "refused the credentials: check config.access_key_id and config.secret_access_key") {
		t.Fatalf("Flush with a wrong secret: %v", err)
	}
	if n := len(server.Objects(t, bucket, "")); n != 0 {
		t.Fatalf("%d objects written with wrong credentials", n)
	}
}

func TestUnreachableEndpointSaysCheckTheEndpoint(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	endpoint := "http://" + l.Addr().String()
	l.Close() // nothing listens there now
	s := s3.New()
	if err := s.Configure(ctx, config(t, "b", map[string]any{"endpoint": endpoint})); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	err = s.Open(ctx)
	t.Logf("Open: %v", err)
	if err == nil || !strings.Contains(err.Error(), "connection refused") ||
		!strings.Contains(err.Error(), "cannot reach "+endpoint+": check config.endpoint, config.region and config.path_style") {
		t.Fatalf("Open with nothing at the endpoint: %v", err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Fatalf("Open took %s to fail: the sink must not retry by itself", d)
	}
}

func TestCredentialsFromTheAWSEnvironment(t *testing.T) {
	bucket := server.NewBucket(t)
	t.Setenv("AWS_ACCESS_KEY_ID", s3test.AccessKey)
	t.Setenv("AWS_SECRET_ACCESS_KEY", s3test.SecretKey)
	t.Setenv("AWS_REGION", s3test.Region)
	t.Setenv("AWS_EC2_METADATA_DISABLED", "true")
	t.Setenv("AWS_CONFIG_FILE", "/nonexistent")
	t.Setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
	raw, _ := json.Marshal(map[string]any{"bucket": bucket, "endpoint": server.URL(), "path_style": true, "prefix": "audit/app"})
	s := open(t, raw)
	changes := sdktest.Changes(5, time.Now())
	if _, err := s.Write(ctx, changes); err != nil {
		t.Fatal(err)
	}
	if err := s.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	expectOnce(t, stored(t, bucket), changes)
}

func TestTeardownDeletesOnlyTheSinksObjects(t *testing.T) {
	bucket := server.NewBucket(t)
	server.Put(t, bucket, "audit/app/README.txt", []byte("not ours"))
	server.Put(t, bucket, "elsewhere/public.orders/dt=2024-01-01/000000000000000100000000-000000000000000100000000.jsonl.gz", []byte("x"))
	raw := config(t, bucket, nil)
	s := open(t, raw)
	if _, err := s.Write(ctx, sdktest.Changes(10, time.Now())); err != nil {
		t.Fatal(err)
	}
	if err := s.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	if err := s.Teardown(ctx); err != nil {
		t.Fatal(err)
	}
	var keys []string
	for k := range server.Objects(t, bucket, "") {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	want := []string{"audit/app/README.txt", "elsewhere/public.orders/dt=2024-01-01/000000000000000100000000-000000000000000100000000.jsonl.gz"}
	if !slices.Equal(keys, want) {
		t.Fatalf("after Teardown: %v, want %v", keys, want)
	}
}

func TestConfigErrorsNameTheKey(t *testing.T) {
	for raw, want := range map[string]string{
		`{}`:                                     "config.bucket: required",
		`{"bucket":"b","buket":1}`:               `unknown field "buket"`,
		`{"bucket":"b","format":"csv"}`:          `config.format: "csv" is not a format: use jsonl or parquet`,
		`{"bucket":"b","endpoint":"localhost"}`:  "config.endpoint",
		`{"bucket":"b","access_key_id":"k"}`:     "config.access_key_id: access_key_id and secret_access_key go together",
		`{"bucket":"b","flush_bytes":"lots"}`:    `"lots" is not a size`,
		`{"bucket":"b","flush_bytes":0}`:         "config.flush_bytes: must be positive",
		`{"bucket":"b","flush_interval":"soon"}`: `"soon" is not a duration`,
		`{"bucket":"b","path_style":"yes"}`:      "path_style: want true or false",
	} {
		err := s3.New().Configure(ctx, json.RawMessage(raw))
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("Configure(%s) = %v, want an error containing %q", raw, err, want)
		}
	}
}

// TestTablesWhoseNamesJoinAlikeKeepEveryChange writes tables whose names
// join to the same "<schema>.<table>" ("a.b"."c" and "a"."b.c", and others
// with "/", "%", "=", non-ASCII and empty names), their changes interleaved
// in one commit, so that a shared folder would make the planner take one
// table's objects for the other's: every change of each must be stored once,
// in its own table's folder, also after a replay of them all.
func TestTablesWhoseNamesJoinAlikeKeepEveryChange(t *testing.T) {
	bucket := server.NewBucket(t)
	tables := [][2]string{{"a.b", "c"}, {"a", "b.c"}, {"a.b.c", ""}, {"", "a.b.c"}, {"a%2Eb", "c"}, {"x=1", "y"}, {"x", "=1.y"}, {"s/é", "t"}, {"s", "é.t"}}
	at := time.Date(2024, 1, 2, 3, 4, 5, 0, time.UTC)
	var changes []*sdk.Change
	for seq := range uint32(6 * len(tables)) {
		c := orderChange(0x5000, seq, at)
		c.Schema, c.Table = tables[int(seq)%len(tables)][0], tables[int(seq)%len(tables)][1]
		c.ID = change.MakeID("app", 0x5000, c.Schema, c.Table, seq)
		changes = append(changes, c)
	}
	for round := range 2 { // the second is a replay of everything
		s := open(t, config(t, bucket, nil))
		if _, err := s.Write(ctx, changes); err != nil {
			t.Fatal(err)
		}
		if err := s.Flush(ctx); err != nil {
			t.Fatalf("round %d: Flush: %v", round, err)
		}
		expectOnce(t, stored(t, bucket), changes)
	}
	folders := map[string]bool{}
	for key, body := range server.Objects(t, bucket, "audit/app/") {
		folder := strings.Split(key, "/")[2]
		folders[folder] = true
		zr, err := gzip.NewReader(bytes.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		for dec := json.NewDecoder(zr); dec.More(); {
			var line struct{ Schema, Table string }
			if err := dec.Decode(&line); err != nil {
				t.Fatal(err)
			}
			if got, err := s3.ReadFolder(folder); err != nil || got != [2]string{line.Schema, line.Table} {
				t.Fatalf("a change of (%q, %q) is in folder %q, which names %q (%v)", line.Schema, line.Table, folder, got, err)
			}
		}
	}
	if len(folders) != len(tables) {
		t.Fatalf("%d folders for %d tables: %v", len(folders), len(tables), folders)
	}
}

// TestConfigErrorsNeverEchoTheSecret gives endpoints that hold a secret:
// the errors name config.endpoint and say what to do, without the secret.
func TestConfigErrorsNeverEchoTheSecret(t *testing.T) {
	for raw, want := range map[string]string{
		`{"bucket":"b","endpoint":"https://AKID:s3cr3t-key@s3.example.com"}`: "config.endpoint: holds a user, password or query: give the credentials in config.access_key_id",
		`{"bucket":"b","endpoint":"s3.example.com?secret=s3cr3t-key"}`:       "config.endpoint: not an http:// or https:// URL",
		`{"bucket":"b","endpoint":"http://AKID:s3cr3t-key@host:port"}`:       "config.endpoint: not a valid URL",
		`{"bucket":"b","endpoint":"AKID:s3cr3t-key@s3.example.com"}`:         "config.endpoint: not an http:// or https:// URL",
	} {
		err := s3.New().Configure(ctx, json.RawMessage(raw))
		if err == nil || !strings.Contains(err.Error(), want) || strings.Contains(err.Error(), "s3cr3t") {
			t.Errorf("Configure(%s) = %v; want an error containing %q and not the secret", raw, err, want)
		}
	}
}
