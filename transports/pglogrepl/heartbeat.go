package pglogrepl

import (
	"context"
	"sync"
	"time"

	repl "github.com/jackc/pglogrepl"

	"github.com/pgtrail/pgtrail/core/pipeline"
)

// HeartbeatPrefix marks capture's heartbeat: a non-transactional logical
// message whose content is the time it was sent (RFC 3339). It is never
// stored; it gives a position to confirm on an idle database and a time to
// measure lag by.
const HeartbeatPrefix = "pgtrail_heartbeat"

// beat writes a heartbeat into the source's WAL on the side connection
// when one is due. A heartbeat that fails (a standby, a role that may not
// emit messages) is logged once and capture goes on without it: it only
// measures, it carries no change.
func (s *Source) beat(ctx context.Context) {
	every := time.Duration(s.cfg.Heartbeat)
	if every <= 0 || s.beatOff || time.Since(s.lastBeat) < every {
		return
	}
	qctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	now := time.Now()
	if _, err := s.side.Exec(qctx, "SELECT pg_logical_emit_message(false, $1, $2)", HeartbeatPrefix, now.UTC().Format(time.RFC3339Nano)); err != nil {
		if ctx.Err() == nil {
			s.log.Warn("heartbeat failed; capture goes on without heartbeats (lag in seconds is then known only while changes flow)",
				"slot", s.cfg.Slot, "err", err)
			s.beatOff = true
		}
		return
	}
	s.lastBeat = now
	s.metrics.Heartbeats.Inc()
}

// heartbeat turns a heartbeat read from the stream into a position to
// confirm, and notes its send time for the lag in seconds. Every pgtrail
// reading this database sees every heartbeat; each one's time is true.
func (d *decoder) heartbeat(lsn repl.LSN, transactional bool, content []byte, emit func(pipeline.Event) error) error {
	if transactional || d.inTxn {
		return nil
	}
	sent, err := time.Parse(time.RFC3339Nano, string(content))
	if err != nil {
		return nil // not ours: a heartbeat is only a measurement
	}
	d.clock.mark(lsn, sent)
	return emit(pipeline.Event{Kind: pipeline.Progress, Position: lsn})
}

// clock knows the commit time of each position capture emitted, until the
// position is confirmed: the lag in seconds is measured from the time of
// the last position every sink made durable.
type clock struct {
	mu    sync.Mutex
	marks []mark // in position order
}

type mark struct {
	lsn repl.LSN
	at  time.Time
}

// maxMarks bounds the positions held: past it the newest replaces the
// last, which only makes the lag read a little high until it is confirmed.
const maxMarks = 4096

func (c *clock) mark(lsn repl.LSN, at time.Time) {
	if c == nil { // a decoder outside capture (fuzzing) keeps no times
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if n := len(c.marks); n >= maxMarks {
		c.marks[n-1] = mark{lsn, at}
		return
	}
	c.marks = append(c.marks, mark{lsn, at})
}

// confirm forgets the positions up to lsn and returns the latest time among
// them, if any.
func (c *clock) confirm(lsn repl.LSN) (time.Time, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	var latest time.Time
	i := 0
	for ; i < len(c.marks) && c.marks[i].lsn <= lsn; i++ {
		if c.marks[i].at.After(latest) {
			latest = c.marks[i].at
		}
	}
	c.marks = c.marks[i:]
	return latest, i > 0
}
