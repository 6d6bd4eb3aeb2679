package s3

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"time"

	awss3 "github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/google/uuid"
	"github.com/parquet-go/parquet-go"
)

// Stored returns the ids of the changes of schema.table committed on day
// (UTC) that the bucket holds, read from the objects of that table and day:
// what pgtrail's retention checks before it removes changes it archived
// here. The sink interface has no way to ask a sink what it holds, so
// retention runs this sink in its own process for it (see README).
func (s *Sink) Stored(ctx context.Context, schema, table string, day time.Time) ([]uuid.UUID, error) {
	if err := s.credentials(ctx); err != nil {
		return nil, err
	}
	dir := partition{schema, table, day.UTC().Format(time.DateOnly)}.dir(s.cfg.Prefix)
	var ids []uuid.UUID
	err := s.eachObject(ctx, dir, func(key string, _ span) error {
		var err error
		ids, err = s.readIDs(ctx, key, ids)
		return err
	})
	return ids, err
}

// readIDs appends the ids of the changes in one object.
func (s *Sink) readIDs(ctx context.Context, key string, ids []uuid.UUID) ([]uuid.UUID, error) {
	out, err := s.client.GetObject(ctx, &awss3.GetObjectInput{Bucket: &s.cfg.Bucket, Key: &key})
	if err != nil {
		return nil, s.explain("get", "s3://"+s.cfg.Bucket+"/"+key, err)
	}
	defer out.Body.Close()
	body, err := io.ReadAll(out.Body)
	if err != nil {
		return nil, s.explain("get", "s3://"+s.cfg.Bucket+"/"+key, err)
	}
	bad := func(err error) ([]uuid.UUID, error) {
		return nil, fmt.Errorf("read s3://%s/%s: %w", s.cfg.Bucket, key, err)
	}
	if strings.HasSuffix(key, ".parquet") {
		rows, err := parquet.Read[struct {
			ID string `parquet:"id"`
		}](bytes.NewReader(body), int64(len(body)))
		if err != nil {
			return bad(err)
		}
		for _, r := range rows {
			id, err := uuid.Parse(r.ID)
			if err != nil {
				return bad(err)
			}
			ids = append(ids, id)
		}
		return ids, nil
	}
	zr, err := gzip.NewReader(bytes.NewReader(body))
	if err != nil {
		return bad(err)
	}
	sc := bufio.NewScanner(zr)
	sc.Buffer(nil, 1<<30)
	for sc.Scan() {
		var line struct {
			ID uuid.UUID `json:"id"`
		}
		if err := json.Unmarshal(sc.Bytes(), &line); err != nil {
			return bad(err)
		}
		ids = append(ids, line.ID)
	}
	if err := sc.Err(); err != nil {
		return bad(err)
	}
	return ids, nil
}
