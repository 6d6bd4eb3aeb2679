package change

// UnstorableError is a sink's refusal of a batch for the data of one of its
// changes, which the sink can never store as it is however often it tries
// (a PostgreSQL data exception, say: SQLSTATE class 22 or 54). It must never
// be returned for the sink's own state (a lost connection, a full disk, a
// read-only database), which passes and must be waited out: the pipeline
// splits a refused batch until it finds the change at fault, and stores that
// change with its images replaced by markers.
type UnstorableError struct {
	Err error
	// Earlier is set by the plugin host, whose sinks take batches ahead of
	// storing them: the refused batch is then not the one just handed over
	// but the Earlier-th before it of those not yet durable, and it and every
	// batch after it are given back, not taken. Zero for the batch just
	// handed over.
	Earlier int
}

// Unstorable marks err as a refusal of the change's data (see
// UnstorableError).
func Unstorable(err error) error { return &UnstorableError{Err: err} }

func (e *UnstorableError) Error() string { return "unstorable: " + e.Err.Error() }

func (e *UnstorableError) Unwrap() error { return e.Err }
