// Package s3test starts a private S3-compatible server (versitygw with its
// posix backend) on a free loopback port, so tests run against a real S3 API.
// The server is built once with `go install` into the user's cache dir.
package s3test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/aws-sdk-go-v2/service/s3/types"

	"github.com/pgtrail/pgtrail/test/testbed"
)

// The server's root credentials and region.
const (
	AccessKey = "pgtrail-test"
	SecretKey = "pgtrail-test-secret"
	Region    = "us-east-1"
)

const (
	module         = "github.com/versity/versitygw/cmd/versitygw"
	moduleVersion  = "v1.8.0"
	installTimeout = 10 * time.Minute
	startTimeout   = 30 * time.Second
	stopTimeout    = 10 * time.Second
)

// Server is a running versitygw. Stop it to remove everything it stored.
type Server struct {
	proc testbed.Process // versitygw; its Dir is the temp root: data dir and log
	port int
}

var bucketSeq atomic.Int64

// Binary returns the path of the versitygw binary, building it with
// `go install` into the cache dir first if it is not there yet.
func Binary() (string, error) {
	cache, err := os.UserCacheDir()
	if err != nil {
		return "", fmt.Errorf("find cache dir: %w", err)
	}
	dir := filepath.Join(cache, "pgtrail", "versitygw-"+moduleVersion)
	bin := filepath.Join(dir, "versitygw")
	if _, err := os.Stat(bin); err == nil {
		return bin, nil
	}
	// Test binaries of several packages may start at once: one builds.
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", fmt.Errorf("create %s: %w", dir, err)
	}
	lock, err := os.Create(filepath.Join(dir, ".lock"))
	if err != nil {
		return "", fmt.Errorf("create install lock: %w", err)
	}
	defer lock.Close()
	if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_EX); err != nil {
		return "", fmt.Errorf("lock %s: %w", lock.Name(), err)
	}
	if _, err := os.Stat(bin); err == nil {
		return bin, nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), installTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, "go", "install", module+"@"+moduleVersion)
	// Outside our module, so its own go.mod decides its dependencies.
	cmd.Dir = os.TempDir()
	cmd.Env = append(os.Environ(), "GOBIN="+dir, "GOFLAGS=-mod=mod", "GOWORK=off")
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go install %s@%s: %w\n%s", module, moduleVersion, err, out)
	}
	return bin, nil
}

// Start starts a server on a free loopback port with an empty data dir. It
// returns once the server answers S3 requests, or an error with the log tail.
func Start() (*Server, error) {
	bin, err := Binary()
	if err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp("", "s3test-")
	if err != nil {
		return nil, fmt.Errorf("create temp dir: %w", err)
	}
	s := &Server{proc: testbed.Process{Dir: dir}}
	if err := os.Mkdir(s.dataDir(), 0o700); err != nil {
		s.Stop()
		return nil, fmt.Errorf("create data dir: %w", err)
	}
	if err := testbed.StartRetrying(s, "address already in use", func() error { return s.start(bin) }); err != nil {
		return nil, err
	}
	return s, nil
}

func (s *Server) dataDir() string { return filepath.Join(s.proc.Dir, "data") }
func (s *Server) logFile() string { return filepath.Join(s.proc.Dir, "server.log") }

func (s *Server) start(bin string) error {
	port, err := testbed.FreePort()
	if err != nil {
		return err
	}
	s.port = port
	logf, err := os.Create(s.logFile())
	if err != nil {
		return fmt.Errorf("create %s: %w", s.logFile(), err)
	}
	defer logf.Close() // the server holds its own copy
	cmd := exec.Command(bin, "--access", AccessKey, "--secret", SecretKey, "--region", Region,
		"--port", fmt.Sprintf("127.0.0.1:%d", port), "--quiet", "posix", s.dataDir())
	cmd.Dir = s.proc.Dir
	cmd.Stdout, cmd.Stderr = logf, logf
	// Pdeathsig kills the server if the test binary dies, so no orphan keeps the port.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := s.proc.Start(cmd); err != nil {
		return fmt.Errorf("start versitygw: %w", err)
	}
	return s.waitReady()
}

// waitReady polls with real S3 requests (ListBuckets) rather than sleeping.
func (s *Server) waitReady() error {
	client := s.Client()
	return s.proc.WaitReady(fmt.Sprintf("versitygw on port %d", s.port), startTimeout, 50*time.Millisecond, func() error {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		_, err := client.ListBuckets(ctx, &s3.ListBucketsInput{})
		return err
	})
}

// URL is the server's endpoint, http://127.0.0.1:PORT.
func (s *Server) URL() string { return fmt.Sprintf("http://127.0.0.1:%d", s.port) }

// Port is the server's TCP port on 127.0.0.1.
func (s *Server) Port() int { return s.port }

// Client returns an S3 client for the server with the root credentials,
// path-style addressing.
func (s *Server) Client() *s3.Client {
	return s3.New(s3.Options{
		BaseEndpoint: aws.String(s.URL()), Region: Region, UsePathStyle: true,
		Credentials:                credentials.NewStaticCredentialsProvider(AccessKey, SecretKey, ""),
		HTTPClient:                 &http.Client{Timeout: 30 * time.Second},
		RequestChecksumCalculation: aws.RequestChecksumCalculationWhenRequired,
		ResponseChecksumValidation: aws.ResponseChecksumValidationWhenRequired,
	})
}

// NewBucket creates an empty bucket with a unique name and returns the name.
// It is emptied and removed at cleanup.
func (s *Server) NewBucket(t testing.TB) string {
	t.Helper()
	name := fmt.Sprintf("pgtrail-test-%d", bucketSeq.Add(1))
	ctx, cancel := context.WithTimeout(context.Background(), startTimeout)
	defer cancel()
	if _, err := s.Client().CreateBucket(ctx, &s3.CreateBucketInput{Bucket: &name}); err != nil {
		t.Fatalf("create bucket %s: %v", name, err)
	}
	t.Cleanup(func() { s.RemoveBucket(t, name) })
	return name
}

// RemoveBucket deletes a bucket with everything in it; a missing bucket is fine.
func (s *Server) RemoveBucket(t testing.TB, name string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), startTimeout)
	defer cancel()
	client := s.Client()
	for key := range s.Objects(t, name, "") {
		if _, err := client.DeleteObject(ctx, &s3.DeleteObjectInput{Bucket: &name, Key: &key}); err != nil {
			t.Fatalf("delete s3://%s/%s: %v", name, key, err)
		}
	}
	_, err := client.DeleteBucket(ctx, &s3.DeleteBucketInput{Bucket: &name})
	var nb *types.NoSuchBucket
	if err != nil && !errors.As(err, &nb) && !strings.Contains(err.Error(), "NoSuchBucket") {
		t.Fatalf("delete bucket %s: %v", name, err)
	}
}

// Objects returns the body of every object in the bucket under prefix, by
// key. A missing bucket holds nothing.
func (s *Server) Objects(t testing.TB, bucket, prefix string) map[string][]byte {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), startTimeout)
	defer cancel()
	client := s.Client()
	out := map[string][]byte{}
	pages := s3.NewListObjectsV2Paginator(client, &s3.ListObjectsV2Input{Bucket: &bucket, Prefix: &prefix})
	for pages.HasMorePages() {
		page, err := pages.NextPage(ctx)
		var nb *types.NoSuchBucket
		if errors.As(err, &nb) {
			return out
		}
		if err != nil {
			t.Fatalf("list s3://%s/%s: %v", bucket, prefix, err)
		}
		for _, o := range page.Contents {
			obj, err := client.GetObject(ctx, &s3.GetObjectInput{Bucket: &bucket, Key: o.Key})
			if err != nil {
				t.Fatalf("get s3://%s/%s: %v", bucket, *o.Key, err)
			}
			body, err := io.ReadAll(obj.Body)
			obj.Body.Close()
			if err != nil {
				t.Fatalf("read s3://%s/%s: %v", bucket, *o.Key, err)
			}
			out[*o.Key] = body
		}
	}
	return out
}

// Put stores an object, for tests that arrange what a bucket holds.
func (s *Server) Put(t testing.TB, bucket, key string, body []byte) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), startTimeout)
	defer cancel()
	_, err := s.Client().PutObject(ctx, &s3.PutObjectInput{Bucket: &bucket, Key: &key, Body: bytes.NewReader(body)})
	if err != nil {
		t.Fatalf("put s3://%s/%s: %v", bucket, key, err)
	}
}

// Stop ends the server (SIGTERM, then SIGKILL after a grace period) and
// removes its data. It is safe to call more than once.
func (s *Server) Stop() { s.proc.Stop(syscall.SIGTERM, stopTimeout) }

// LogTail returns the last n lines of the server log, for failure messages.
func (s *Server) LogTail(n int) string { return testbed.Tail(n, s.logFile()) }

// Main is for TestMain: one server per test binary, stopped before exit.
// set receives the server before any test runs.
func Main(m *testing.M, set func(*Server)) {
	testbed.Main(m, "s3test", Start, set)
}
