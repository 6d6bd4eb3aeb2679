package s3test_test

import (
	"bytes"
	"context"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"

	"github.com/pgtrail/pgtrail/test/s3test"
)

var server *s3test.Server

func TestMain(m *testing.M) {
	s3test.Main(m, func(s *s3test.Server) { server = s })
}

func TestBucketStoresObjectsAndIsRemovedAtCleanup(t *testing.T) {
	var name string
	t.Run("use", func(t *testing.T) {
		name = server.NewBucket(t)
		server.Put(t, name, "a/one.txt", []byte("1"))
		server.Put(t, name, "b/two.txt", []byte("22"))
		got := server.Objects(t, name, "a/")
		if len(got) != 1 || !bytes.Equal(got["a/one.txt"], []byte("1")) {
			t.Fatalf("objects under a/: %q, want a/one.txt = 1", got)
		}
		if n := len(server.Objects(t, name, "")); n != 2 {
			t.Fatalf("%d objects in the bucket, want 2", n)
		}
	})
	_, err := server.Client().HeadBucket(context.Background(), &s3.HeadBucketInput{Bucket: aws.String(name)})
	if err == nil {
		t.Fatalf("bucket %s still exists after cleanup", name)
	}
}

func TestSecondServerRunsBesideAndStopsTwice(t *testing.T) {
	s, err := s3test.Start()
	if err != nil {
		t.Fatal(err)
	}
	defer s.Stop()
	if s.Port() == server.Port() {
		t.Fatalf("second server shares port %d", s.Port())
	}
	if _, err := s.Client().ListBuckets(context.Background(), &s3.ListBucketsInput{}); err != nil {
		t.Fatalf("second server: %v", err)
	}
	s.Stop()
	s.Stop()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := s.Client().ListBuckets(ctx, &s3.ListBucketsInput{}); err == nil {
		t.Fatal("stopped server still answers")
	}
}
