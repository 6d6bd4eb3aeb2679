// Package s3 is the S3 sink: changes are buffered and uploaded as objects of
// gzip-compressed JSON lines or Parquet, one folder per table and day, to AWS
// S3 or any S3-compatible server. Objects are named by the key range of the
// changes they hold, so that replays never store a change twice (see plan).
package s3

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"net"
	"net/http"
	"regexp"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	awshttp "github.com/aws/aws-sdk-go-v2/aws/transport/http"
	"github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/credentials"
	awss3 "github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/aws-sdk-go-v2/service/s3/types"
	"github.com/aws/smithy-go"
	smithyhttp "github.com/aws/smithy-go/transport/http"

	"github.com/pgtrail/pgtrail/plugins/sdk"
)

// Version is the sink's version, reported by `pgtrail plugins`.
const Version = "0.1.0"

// Sink buffers changes and uploads them to S3.
type Sink struct {
	cfg    Config
	enc    encoder
	client *awss3.Client
	creds  aws.CredentialsProvider
	region string

	mu   sync.Mutex
	buf  []*sdk.Change // handed over, not yet uploaded, in arrival order
	size int64         // approximate bytes in buf
}

// New returns an unconfigured sink.
func New() *Sink { return &Sink{cfg: defaults()} }

// Describe names the sink; FlushInterval tells the host when to call Flush.
func (s *Sink) Describe() sdk.Description {
	return sdk.Description{
		Name: "s3", Version: Version,
		Summary:       "objects of JSON lines (gzip) or Parquet in S3 or an S3-compatible server",
		FlushInterval: time.Duration(s.cfg.FlushInterval),
	}
}

// Configure reads the config block and prepares the client; it does not
// connect.
func (s *Sink) Configure(ctx context.Context, raw json.RawMessage) error {
	cfg, err := parseConfig(raw)
	if err != nil {
		return err
	}
	opts := []func(*config.LoadOptions) error{
		// One attempt per call: the pipeline retries failed writes with its own backoff.
		config.WithRetryer(func() aws.Retryer { return aws.NopRetryer{} }),
		config.WithHTTPClient(awshttp.NewBuildableClient().
			WithDialerOptions(func(d *net.Dialer) { d.Timeout = 10 * time.Second }).
			WithTransportOptions(func(t *http.Transport) { t.ResponseHeaderTimeout = 2 * time.Minute })),
		// S3-compatible servers do not all know the newer default checksums.
		config.WithRequestChecksumCalculation(aws.RequestChecksumCalculationWhenRequired),
		config.WithResponseChecksumValidation(aws.ResponseChecksumValidationWhenRequired),
	}
	if cfg.Region != "" {
		opts = append(opts, config.WithRegion(cfg.Region))
	}
	if cfg.AccessKeyID != "" {
		opts = append(opts, config.WithCredentialsProvider(
			credentials.NewStaticCredentialsProvider(cfg.AccessKeyID, cfg.SecretAccessKey, cfg.SessionToken)))
	}
	awsCfg, err := config.LoadDefaultConfig(ctx, opts...)
	if err != nil {
		return fmt.Errorf("load the AWS configuration (environment and shared files): %w", err)
	}
	if awsCfg.Region == "" {
		awsCfg.Region = "us-east-1"
	}
	s.cfg, s.enc, s.creds, s.region = cfg, encoderFor(cfg.Format), awsCfg.Credentials, awsCfg.Region
	s.client = awss3.NewFromConfig(awsCfg, func(o *awss3.Options) {
		if cfg.Endpoint != "" {
			o.BaseEndpoint = aws.String(cfg.Endpoint)
		}
		o.UsePathStyle = bool(cfg.PathStyle)
	})
	return nil
}

// where names the server in messages.
func (s *Sink) where() string {
	if s.cfg.Endpoint != "" {
		return s.cfg.Endpoint
	}
	return "AWS S3 in " + s.region
}

// credentials fails early, and clearly, when the AWS chain finds none.
func (s *Sink) credentials(ctx context.Context) error {
	if _, err := s.creds.Retrieve(ctx); err != nil {
		return fmt.Errorf("no AWS credentials: %w (set config.access_key_id and config.secret_access_key, or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE)", err)
	}
	return nil
}

func (s *Sink) headBucket(ctx context.Context) error {
	if err := s.credentials(ctx); err != nil {
		return err
	}
	_, err := s.client.HeadBucket(ctx, &awss3.HeadBucketInput{Bucket: &s.cfg.Bucket})
	if err != nil {
		return s.explain("check bucket", s.cfg.Bucket, err)
	}
	return nil
}

// Setup creates the bucket when it does not exist. Idempotent.
func (s *Sink) Setup(ctx context.Context) error {
	err := s.headBucket(ctx)
	if err == nil || !isNoBucket(err) {
		return err
	}
	in := &awss3.CreateBucketInput{Bucket: &s.cfg.Bucket}
	if s.region != "us-east-1" && s.cfg.Endpoint == "" {
		in.CreateBucketConfiguration = &types.CreateBucketConfiguration{LocationConstraint: types.BucketLocationConstraint(s.region)}
	}
	_, err = s.client.CreateBucket(ctx, in)
	var owned *types.BucketAlreadyOwnedByYou
	if err != nil && !errors.As(err, &owned) {
		return fmt.Errorf("%w (create the bucket yourself, or let these credentials create buckets)", s.explain("create bucket", s.cfg.Bucket, err))
	}
	return nil
}

// Open checks that the bucket is there and the credentials may use it.
func (s *Sink) Open(ctx context.Context) error { return s.headBucket(ctx) }

// Check reports whether the bucket can be reached.
func (s *Sink) Check(ctx context.Context) error { return s.headBucket(ctx) }

// Close drops what is buffered: it was never reported durable, so the source
// delivers it again.
func (s *Sink) Close(context.Context) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.buf, s.size = nil, 0
	return nil
}

// Teardown deletes the objects this sink wrote under its prefix (only names
// of its own layout); the bucket stays.
func (s *Sink) Teardown(ctx context.Context) error {
	if err := s.headBucket(ctx); err != nil {
		if isNoBucket(err) {
			return nil
		}
		return err
	}
	prefix := s.cfg.Prefix
	if prefix != "" {
		prefix += "/"
	}
	var batch []types.ObjectIdentifier
	remove := func() error {
		if len(batch) == 0 {
			return nil
		}
		out, err := s.client.DeleteObjects(ctx, &awss3.DeleteObjectsInput{
			Bucket: &s.cfg.Bucket, Delete: &types.Delete{Objects: batch, Quiet: aws.Bool(true)},
		})
		if err != nil {
			return s.explain("delete objects in", s.cfg.Bucket+"/"+prefix, err)
		}
		if len(out.Errors) > 0 {
			e := out.Errors[0]
			return fmt.Errorf("delete s3://%s/%s: %s: %s", s.cfg.Bucket, aws.ToString(e.Key), aws.ToString(e.Code), aws.ToString(e.Message))
		}
		batch = batch[:0]
		return nil
	}
	pages := awss3.NewListObjectsV2Paginator(s.client, &awss3.ListObjectsV2Input{Bucket: &s.cfg.Bucket, Prefix: &prefix})
	for pages.HasMorePages() {
		page, err := pages.NextPage(ctx)
		if err != nil {
			return s.explain("list", "s3://"+s.cfg.Bucket+"/"+prefix, err)
		}
		for _, o := range page.Contents {
			if ownLayout.MatchString(strings.TrimPrefix(aws.ToString(o.Key), prefix)) {
				batch = append(batch, types.ObjectIdentifier{Key: o.Key})
			}
		}
		// Delete after each page: a listing continues by key, not by position.
		if err := remove(); err != nil {
			return err
		}
	}
	return nil
}

// ownLayout matches a key below the prefix that this sink wrote.
var ownLayout = regexp.MustCompile(`^[^/]+/dt=\d{4}-\d{2}-\d{2}/` + strings.TrimPrefix(objectName.String(), "^"))

// sizeOf estimates what a batch holds in memory.
func sizeOf(batch []*sdk.Change) int64 {
	var n int
	for _, c := range batch {
		n += len(c.Before) + len(c.After) + len(c.Context) + len(c.PrimaryKey) +
			len(c.Database) + len(c.Schema) + len(c.Table) + 16*len(c.UnchangedToast) + 256
	}
	return int64(n)
}

// Write buffers the batch, uploading first when the buffer would pass
// flush_bytes. It reports durable only when nothing is left buffered. A
// failed Write leaves the buffer as it was.
func (s *Sink) Write(ctx context.Context, batch []*sdk.Change) (bool, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(batch) == 0 {
		return len(s.buf) == 0, nil
	}
	n, limit := sizeOf(batch), int64(s.cfg.FlushBytes)
	if len(s.buf) > 0 && s.size+n > limit {
		if err := s.flush(ctx); err != nil {
			return false, err
		}
	}
	mark := len(s.buf)
	s.buf = append(s.buf, batch...)
	s.size += n
	if s.size < limit {
		return false, nil
	}
	if err := s.flush(ctx); err != nil {
		// As if the batch had not been handed over. Objects already uploaded
		// are found by the next flush and not written again.
		clear(s.buf[mark:])
		s.buf, s.size = s.buf[:mark], s.size-n
		return false, err
	}
	return true, nil
}

// Flush uploads everything buffered.
func (s *Sink) Flush(ctx context.Context) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.flush(ctx)
}

// flush uploads the buffer, one table and day at a time, and empties it only
// when all is uploaded; on failure the next flush starts over, and skips what
// this one managed to store.
func (s *Sink) flush(ctx context.Context) error {
	if len(s.buf) == 0 {
		return nil
	}
	groups := map[partition][]*sdk.Change{}
	for _, c := range s.buf {
		p := partitionOf(c)
		groups[p] = append(groups[p], c)
	}
	createdAt := time.Now().UTC()
	for _, p := range slices.SortedFunc(maps.Keys(groups), func(a, b partition) int {
		return strings.Compare(a.dir(""), b.dir(""))
	}) {
		dir := p.dir(s.cfg.Prefix)
		stored, err := s.list(ctx, dir)
		if err != nil {
			return err
		}
		for _, run := range plan(groups[p], stored) {
			if err := s.put(ctx, dir, run, createdAt); err != nil {
				return err
			}
		}
	}
	s.buf, s.size = nil, 0
	return nil
}

// list returns the key ranges of the objects stored in a partition's folder.
func (s *Sink) list(ctx context.Context, dir string) ([]span, error) {
	var spans []span
	err := s.eachObject(ctx, dir, func(_ string, sp span) error {
		spans = append(spans, sp)
		return nil
	})
	return spans, err
}

// eachObject calls fn with the key and key range of each object of this
// sink's layout in a partition's folder.
func (s *Sink) eachObject(ctx context.Context, dir string, fn func(key string, sp span) error) error {
	pages := awss3.NewListObjectsV2Paginator(s.client, &awss3.ListObjectsV2Input{Bucket: &s.cfg.Bucket, Prefix: aws.String(dir + "/")})
	for pages.HasMorePages() {
		page, err := pages.NextPage(ctx)
		if err != nil {
			return s.explain("list", "s3://"+s.cfg.Bucket+"/"+dir+"/", err)
		}
		for _, o := range page.Contents {
			key := aws.ToString(o.Key)
			if sp, ok := parseSpan(strings.TrimPrefix(key, dir+"/")); ok {
				if err := fn(key, sp); err != nil {
					return err
				}
			}
		}
	}
	return nil
}

// put uploads one run as one object, in one request: an object is there
// whole or not at all.
func (s *Sink) put(ctx context.Context, dir string, run []*sdk.Change, createdAt time.Time) error {
	key := objectKey(dir, span{keyOf(run[0]), keyOf(run[len(run)-1])}, s.enc.ext())
	body, err := s.enc.encode(run, createdAt)
	if err != nil {
		return fmt.Errorf("encode %d changes for s3://%s/%s: %w", len(run), s.cfg.Bucket, key, err)
	}
	_, err = s.client.PutObject(ctx, &awss3.PutObjectInput{
		Bucket: &s.cfg.Bucket, Key: &key, Body: bytes.NewReader(body),
		ContentLength: aws.Int64(int64(len(body))), ContentType: aws.String(s.enc.contentType()),
	})
	if err != nil {
		return s.explain(fmt.Sprintf("put %d changes into", len(run)), "s3://"+s.cfg.Bucket+"/"+key, err)
	}
	return nil
}

// isNoBucket tells whether err says the bucket does not exist.
func isNoBucket(err error) bool {
	var nb *types.NoSuchBucket
	var nf *types.NotFound
	var ae smithy.APIError
	return errors.As(err, &nb) || errors.As(err, &nf) || errors.As(err, &ae) && ae.ErrorCode() == "NoSuchBucket"
}

// explain wraps err with the operation and object, and says what to do.
func (s *Sink) explain(op, object string, err error) error {
	var re *smithyhttp.ResponseError
	var ae smithy.APIError
	var ne net.Error
	code := ""
	if errors.As(err, &ae) {
		code = ae.ErrorCode()
	}
	var hint string
	switch {
	case isNoBucket(err):
		hint = fmt.Sprintf("bucket %q does not exist at %s: create it, or run `pgtrail setup`, which creates it", s.cfg.Bucket, s.where())
	case code == "InvalidAccessKeyId" || code == "SignatureDoesNotMatch" || code == "InvalidToken" || code == "ExpiredToken":
		hint = fmt.Sprintf("%s refused the credentials: check config.access_key_id and config.secret_access_key, or the AWS environment (AWS_ACCESS_KEY_ID, AWS_PROFILE)", s.where())
	case code == "AccessDenied" || errors.As(err, &re) && re.HTTPStatusCode() == http.StatusForbidden:
		hint = fmt.Sprintf("access denied by %s: check the credentials, and that they may list, read and write bucket %q", s.where(), s.cfg.Bucket)
	case errors.As(err, &ne):
		hint = fmt.Sprintf("cannot reach %s: check config.endpoint, config.region and config.path_style, and that the server is up", s.where())
	}
	if hint != "" {
		return fmt.Errorf("%s %s: %w (%s)", op, object, err, hint)
	}
	return fmt.Errorf("%s %s: %w", op, object, err)
}
