package s3

// Buffered reports how many changes, and about how many bytes, the sink holds
// and has not uploaded.
func (s *Sink) Buffered() (changes int, bytes int64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.buf), s.size
}

// SizeOf is what a batch counts against flush_bytes.
var SizeOf = sizeOf

// ReadFolder reads a table folder's name back as (schema, table).
var ReadFolder = unfolder
