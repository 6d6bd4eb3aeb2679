package s3

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/pgtrail/pgtrail/plugins/sdk"
)

// Config is the sink's `config` block.
type Config struct {
	Bucket string `json:"bucket"`
	// Prefix is the folder under which objects are written ("" for the
	// bucket's root). Give each source database its own: keys order changes
	// within one database only.
	Prefix string `json:"prefix"`
	Format string `json:"format"` // jsonl (gzip) | parquet
	// Endpoint is the URL of an S3-compatible server; empty for AWS S3.
	Endpoint string `json:"endpoint"`
	// Region defaults to the AWS environment's (AWS_REGION, profile), else us-east-1.
	Region    string `json:"region"`
	PathStyle Bool   `json:"path_style"` // bucket in the path, not the host name
	// Credentials; without them, the standard AWS chain (environment,
	// shared files, SSO, web identity, instance role) is used.
	AccessKeyID     string `json:"access_key_id"`
	SecretAccessKey string `json:"secret_access_key"`
	SessionToken    string `json:"session_token"`
	// FlushBytes caps the buffer: changes (their JSON, uncompressed) are
	// uploaded once this many bytes are buffered. A number, or "64MiB".
	FlushBytes ByteSize `json:"flush_bytes"`
	// FlushInterval is the longest a change waits in the buffer.
	FlushInterval Duration `json:"flush_interval"`
}

const knownKeys = "bucket, prefix, format, endpoint, region, path_style, access_key_id, secret_access_key, session_token, flush_bytes, flush_interval"

func defaults() Config {
	return Config{Format: "jsonl", FlushBytes: 32 << 20, FlushInterval: Duration(time.Minute)}
}

func parseConfig(raw json.RawMessage) (Config, error) {
	cfg := defaults()
	if len(raw) > 0 {
		dec := json.NewDecoder(bytes.NewReader(raw))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&cfg); err != nil {
			return cfg, fmt.Errorf("config: %w (known keys: %s)", err, knownKeys)
		}
	}
	var errs []error
	bad := func(key, format string, args ...any) {
		errs = append(errs, fmt.Errorf("config.%s: %s", key, fmt.Sprintf(format, args...)))
	}
	if cfg.Bucket == "" {
		bad("bucket", "required: the bucket that receives the objects")
	}
	cfg.Prefix = strings.Trim(cfg.Prefix, "/")
	if cfg.Format != "jsonl" && cfg.Format != "parquet" {
		bad("format", "%q is not a format: use jsonl or parquet", cfg.Format)
	}
	if cfg.Endpoint != "" {
		u, err := sdk.ParseHTTPURL("endpoint", cfg.Endpoint)
		switch {
		case err != nil:
			errs = append(errs, err)
		case u.User != nil || u.RawQuery != "":
			bad("endpoint", "holds a user, password or query: give the credentials in config.access_key_id and config.secret_access_key (or the AWS environment), and the endpoint as scheme://host:port only")
		}
	}
	if (cfg.AccessKeyID == "") != (cfg.SecretAccessKey == "") {
		bad("access_key_id", "access_key_id and secret_access_key go together: set both, or neither to use the AWS environment")
	}
	if cfg.FlushBytes <= 0 {
		bad("flush_bytes", "must be positive, got %d", cfg.FlushBytes)
	}
	if cfg.FlushInterval <= 0 {
		bad("flush_interval", "must be positive, got %s", time.Duration(cfg.FlushInterval))
	}
	return cfg, errors.Join(errs...)
}

// ByteSize is a size in bytes, written as a number or as "512KiB", "64MiB", "1GiB".
type ByteSize int64

func (b *ByteSize) UnmarshalJSON(data []byte) error {
	var n int64
	if err := json.Unmarshal(data, &n); err == nil {
		*b = ByteSize(n)
		return nil
	}
	var s string
	if err := json.Unmarshal(data, &s); err != nil {
		return fmt.Errorf("flush_bytes: want a number of bytes or a size like \"64MiB\", got %s", data)
	}
	num, mult := strings.TrimSpace(s), int64(1)
	for _, u := range []struct {
		suffix string
		mult   int64
	}{{"KiB", 1 << 10}, {"MiB", 1 << 20}, {"GiB", 1 << 30}, {"KB", 1e3}, {"MB", 1e6}, {"GB", 1e9}, {"B", 1}} {
		if strings.HasSuffix(num, u.suffix) {
			num, mult = strings.TrimSpace(strings.TrimSuffix(num, u.suffix)), u.mult
			break
		}
	}
	n, err := strconv.ParseInt(num, 10, 64)
	if err != nil {
		return fmt.Errorf("flush_bytes: %q is not a size like \"64MiB\"", s)
	}
	*b = ByteSize(n * mult)
	return nil
}

// Bool is true or false, also written as a string ("true"), as a value
// expanded from the environment is.
type Bool bool

func (b *Bool) UnmarshalJSON(data []byte) error {
	var s string
	if json.Unmarshal(data, &s) == nil {
		data = []byte(s)
	}
	v, err := strconv.ParseBool(string(data))
	if err != nil {
		return fmt.Errorf("path_style: want true or false, got %s", data)
	}
	*b = Bool(v)
	return nil
}

// Duration is a time.Duration written as "30s" or "5m".
type Duration time.Duration

func (d *Duration) UnmarshalJSON(data []byte) error {
	var s string
	if err := json.Unmarshal(data, &s); err != nil {
		return fmt.Errorf("flush_interval: want a duration like \"1m\", got %s", data)
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		return fmt.Errorf("flush_interval: %q is not a duration like \"1m\"", s)
	}
	*d = Duration(v)
	return nil
}
