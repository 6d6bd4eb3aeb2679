// Command jsonl is an example third-party sink plugin: it appends every
// change as one JSON line to a file. It imports only pgtrail's plugin SDK,
// exactly as a sink written outside pgtrail would.
//
// Build it, then name the binary in pgtrail.yaml:
//
//	go build -o pgtrail-sink-jsonl ./plugins/examples/jsonl
//
//	sinks:
//	  - name: lines
//	    plugin: ./pgtrail-sink-jsonl
//	    config: {path: /var/lib/pgtrail/changes.jsonl}
package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/google/uuid"

	"github.com/pgtrail/pgtrail/plugins/sdk"
)

func main() { sdk.Serve(&sink{}) }

// sink appends changes to a file. It is idempotent because it remembers the
// ID of every change in the file (read back at Open) and skips those it
// already holds: a replay after a crash writes nothing twice. Keeping every
// ID in memory suits an example, not a file of a billion changes.
//
// With flush_interval set it shows how a sink buffers: Write keeps batches in
// memory and reports them not yet durable; the host calls Flush once the
// oldest has waited that long, and re-delivers them if the plugin dies first.
type sink struct {
	path     string
	interval time.Duration
	f        *os.File
	seen     map[uuid.UUID]bool
	buffered []*sdk.Change
}

func (s *sink) Describe() sdk.Description {
	return sdk.Description{Name: "jsonl", Version: "1.0.0", Summary: "example: one JSON line per change, appended to a file",
		FlushInterval: s.interval}
}

func (s *sink) Configure(_ context.Context, raw json.RawMessage) error {
	var cfg struct {
		Path          string `json:"path"`
		FlushInterval string `json:"flush_interval"`
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&cfg); err != nil {
		return fmt.Errorf("config: %w (known keys: path, flush_interval)", err)
	}
	if cfg.Path == "" {
		return errors.New("config.path: required: the file to append changes to")
	}
	if cfg.FlushInterval != "" {
		d, err := time.ParseDuration(cfg.FlushInterval)
		if err != nil || d <= 0 {
			return fmt.Errorf("config.flush_interval: %q is not a positive duration such as 1s", cfg.FlushInterval)
		}
		s.interval = d
	}
	s.path = cfg.Path
	return nil
}

func (s *sink) Setup(context.Context) error {
	f, err := os.OpenFile(s.path, os.O_CREATE|os.O_WRONLY, 0o644)
	if err != nil {
		return fmt.Errorf("create %s: %w", s.path, err)
	}
	return f.Close()
}

func (s *sink) Teardown(context.Context) error {
	if err := os.Remove(s.path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove %s: %w", s.path, err)
	}
	return nil
}

// Open reads back the IDs already in the file and drops a last line that a
// crash cut short.
func (s *sink) Open(context.Context) error {
	f, err := os.OpenFile(s.path, os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return fmt.Errorf("open %s: %w", s.path, err)
	}
	s.seen = map[uuid.UUID]bool{}
	var good int64
	r := bufio.NewReader(f)
	for {
		line, err := r.ReadBytes('\n')
		if errors.Is(err, io.EOF) {
			break // a line without its newline is incomplete
		}
		if err != nil {
			f.Close()
			return fmt.Errorf("read %s: %w", s.path, err)
		}
		var c struct {
			ID uuid.UUID `json:"id"`
		}
		if json.Unmarshal(line, &c) != nil {
			break
		}
		s.seen[c.ID] = true
		good += int64(len(line))
	}
	if err := f.Truncate(good); err != nil {
		f.Close()
		return fmt.Errorf("truncate %s: %w", s.path, err)
	}
	if _, err := f.Seek(good, io.SeekStart); err != nil {
		f.Close()
		return err
	}
	s.f = f
	sdk.Logger().Info("jsonl sink open", "path", s.path, "changes", len(s.seen))
	return nil
}

// Write appends the changes it does not hold yet and syncs the file: the
// batch is durable when Write returns. A buffering sink only keeps it.
func (s *sink) Write(_ context.Context, batch []*sdk.Change) (bool, error) {
	if s.interval > 0 {
		s.buffered = append(s.buffered, batch...)
		return false, nil
	}
	return true, s.append(batch)
}

// Flush writes what is buffered.
func (s *sink) Flush(context.Context) error {
	if err := s.append(s.buffered); err != nil {
		return err
	}
	s.buffered = nil
	return nil
}

func (s *sink) append(batch []*sdk.Change) error {
	var buf bytes.Buffer
	var added []uuid.UUID
	for _, c := range batch {
		if s.seen[c.ID] {
			continue
		}
		line, err := json.Marshal(c)
		if err != nil {
			return fmt.Errorf("encode change %s: %w", c.ID, err)
		}
		buf.Write(line)
		buf.WriteByte('\n')
		added = append(added, c.ID)
	}
	end, err := s.f.Seek(0, io.SeekCurrent)
	if err != nil {
		return err
	}
	_, err = s.f.Write(buf.Bytes())
	if err == nil {
		err = s.f.Sync()
	}
	if err != nil {
		// Leave the file as if the batch had not come: it will come again.
		_ = s.f.Truncate(end)
		_, _ = s.f.Seek(end, io.SeekStart)
		return fmt.Errorf("append to %s: %w", s.path, err)
	}
	for _, id := range added {
		s.seen[id] = true
	}
	return nil
}

func (s *sink) Check(context.Context) error {
	if s.f == nil {
		return errors.New("not open")
	}
	_, err := s.f.Stat()
	return err
}

func (s *sink) Close(context.Context) error {
	if s.f == nil {
		return nil
	}
	err := s.f.Close()
	s.f = nil
	return err
}
