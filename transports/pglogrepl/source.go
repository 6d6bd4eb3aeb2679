// Package pglogrepl is pgtrail's native capture: it reads a PostgreSQL
// database's logical replication stream (pgoutput, protocol 2, with logical
// decoding messages) and emits pipeline events.
package pglogrepl

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync/atomic"
	"time"

	repl "github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgtrail/pgtrail/core/config"
	"github.com/pgtrail/pgtrail/core/metrics"
	"github.com/pgtrail/pgtrail/core/pipeline"
	"github.com/pgtrail/pgtrail/core/values"
)

// Source reads one replication slot.
type Source struct {
	cfg     config.Postgres
	log     *slog.Logger
	metrics *metrics.Metrics

	repl *pgconn.PgConn // the replication stream; used by Run's goroutine only
	side *pgx.Conn      // catalog look-ups and lag; likewise
	dec  *decoder
	// timeout is how long the server may stay silent before the stream is
	// taken for stalled, and bounds every query and write (receiveTimeout).
	timeout time.Duration

	start      repl.LSN
	confirmed  atomic.Uint64 // highest LSN durable in every sink
	reported   repl.LSN      // last flush position sent to the server
	received   repl.LSN      // highest position seen from the server
	nextStatus time.Time

	clock    clock     // commit times of positions not yet confirmed
	lastBeat time.Time // last heartbeat sent
	beatOff  bool      // a heartbeat failed: send no more
	warned   string    // the slot's last warning state logged
}

// sessionSettings make the server's text output of values canonical, so that
// decoding needs no guessing.
var sessionSettings = map[string]string{
	"DateStyle":          "ISO, YMD",
	"IntervalStyle":      "iso_8601",
	"TimeZone":           "UTC",
	"extra_float_digits": "3",
	"lc_monetary":        "C",
	"application_name":   "pgtrail",
}

// openTimeout bounds Open: a few connections and queries.
const openTimeout = 30 * time.Second

// Open connects to the slot that Setup made, without starting to read.
// audit lists the tables pgtrail's sinks write, wherever they are: those in
// the source database are never stored.
func Open(ctx context.Context, cfg config.Postgres, audit []AuditTable, log *slog.Logger, m *metrics.Metrics) (*Source, error) {
	ctx, cancel := context.WithTimeout(ctx, openTimeout)
	defer cancel()
	side, err := connect(ctx, cfg.URL)
	if err != nil {
		return nil, err
	}
	s := &Source{cfg: cfg, log: log, metrics: m, side: side}
	fail := func(err error) (*Source, error) {
		s.closeConns(context.WithoutCancel(ctx))
		return nil, err
	}
	if err := Preflight(ctx, side); err != nil {
		return fail(err)
	}
	var confirmed *string
	err = side.QueryRow(ctx, "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = $1", cfg.Slot).Scan(&confirmed)
	if errors.Is(err, pgx.ErrNoRows) {
		return fail(fmt.Errorf("replication slot %q does not exist: run `pgtrail setup`", cfg.Slot))
	}
	if err != nil {
		return fail(fmt.Errorf("read replication slot %q: %w", cfg.Slot, err))
	}
	if confirmed != nil {
		if s.start, err = repl.ParseLSN(*confirmed); err != nil {
			return fail(fmt.Errorf("parse confirmed position of slot %q: %w", cfg.Slot, err))
		}
	}
	s.confirmed.Store(uint64(s.start))
	s.reported = s.start
	st, err := readSlot(ctx, side, cfg.Slot)
	if err != nil {
		return fail(err)
	}
	observe(m, st)
	if err := st.Lost(); err != nil {
		return fail(err)
	}

	if s.timeout, err = receiveTimeout(ctx, side, cfg); err != nil {
		return fail(err)
	}
	own, err := ownTables(ctx, side, cfg.URL, audit)
	if err != nil {
		return fail(err)
	}

	pc, err := pgconn.ParseConfig(cfg.URL)
	if err != nil {
		return fail(fmt.Errorf("source.postgres.url: %w", err))
	}
	harden(pc)
	for k, v := range sessionSettings {
		pc.RuntimeParams[k] = v
	}
	pc.RuntimeParams["replication"] = "database"
	if s.repl, err = pgconn.ConnectConfig(ctx, pc); err != nil {
		return fail(explain(err))
	}
	s.dec = newDecoder(side.Config().Database, cfg, side, s.timeout, own, log)
	s.dec.clock = &s.clock
	return s, nil
}

// LimitValues caps text values at max bytes (pipeline.max_value_bytes): a
// longer one is stored as the marker values.Storable makes for a string too
// long, {"pgtrail_replaced":"string_too_long","bytes":N,"sha256":...},
// counted in pgtrail_values_rewritten_total. Decoding caps it so that the
// value is never escaped into an image in memory. Call it before Run.
func (s *Source) LimitValues(max int) {
	s.dec.maxValue = max
	s.dec.capped = func() {
		s.metrics.ValuesRewritten.WithLabelValues(values.StringTooLong.String()).Inc()
	}
}

// receiveTimeout is source.postgres.receive_timeout, or else the server's
// wal_sender_timeout: the silence after which the server itself gives up on
// capture, as PostgreSQL's own standbys use wal_receiver_timeout. It is at
// least two status intervals, since capture asks for a message once each.
func receiveTimeout(ctx context.Context, side *pgx.Conn, cfg config.Postgres) (time.Duration, error) {
	if cfg.ReceiveTimeout > 0 {
		return time.Duration(cfg.ReceiveTimeout), nil
	}
	var ms int64
	if err := side.QueryRow(ctx, "SELECT setting::bigint FROM pg_settings WHERE name = 'wal_sender_timeout'").Scan(&ms); err != nil {
		return 0, fmt.Errorf("read wal_sender_timeout: %w", err)
	}
	d := time.Duration(ms) * time.Millisecond
	if d <= 0 { // the server never times out: PostgreSQL's default
		d = time.Minute
	}
	return max(d, 2*time.Duration(cfg.StatusInterval)), nil
}

// waitedRead tells a read that waited for the server from one served from
// what was already received.
const waitedRead = 100 * time.Microsecond

// chunkSize bounds the events of an open transaction held before they go
// out together.
const chunkSize = 256

// Run streams changes from the slot's confirmed position until ctx ends.
func (s *Source) Run(ctx context.Context, out chan<- []pipeline.Event) error {
	sctx, cancel := context.WithTimeout(ctx, s.timeout)
	err := repl.StartReplication(sctx, s.repl, s.cfg.Slot, s.start, repl.StartReplicationOptions{
		PluginArgs: []string{"proto_version '2'", fmt.Sprintf("publication_names '%s'", s.cfg.Publication), "messages 'true'"},
	})
	cancel()
	if err != nil && isLostSlot(err) {
		return fmt.Errorf("start replication from slot %q: %w: %w (run `pgtrail teardown` then `pgtrail setup` to capture again with a new slot; the changes since the slot's last confirmed position %s are missing from the trail)",
			s.cfg.Slot, ErrSlotLost, err, s.start)
	}
	if err != nil {
		return fmt.Errorf("start replication from slot %q: %w", s.cfg.Slot, explain(err))
	}
	s.log.Info("capturing", "slot", s.cfg.Slot, "publication", s.cfg.Publication, "from", s.start.String())
	s.nextStatus = time.Now()
	held := time.NewTimer(time.Hour)
	held.Stop()
	defer held.Stop()
	// Events go out in chunks: a transaction's, or chunkSize of a large one,
	// and every position on its own, so that nothing waits for more WAL.
	var chunk []pipeline.Event
	emit := func(ev pipeline.Event) error {
		chunk = append(chunk, ev)
		if ev.Kind != pipeline.Commit && ev.Kind != pipeline.Progress && len(chunk) < chunkSize {
			return nil
		}
		evs := chunk
		chunk = nil
		select {
		case out <- evs:
			return nil
		default:
		}
		for {
			held.Reset(time.Until(s.nextStatus))
			select {
			case out <- evs:
				held.Stop()
				return nil
			case <-ctx.Done():
				return ctx.Err()
			case <-held.C:
				// Held back by a slow sink: keep the server from timing us out.
				if err := s.status(ctx, false); err != nil {
					return err
				}
			}
		}
	}
	// A read waits at most until the next status update is due. The deadline
	// is set on the connection once per status interval, not with a context
	// per message: a context, a timer and a cancel registration for every WAL
	// message were the largest part of what capture allocated. Ending ctx cuts
	// a read short the same way.
	conn := s.repl.Conn()
	stopCut := context.AfterFunc(ctx, func() { _ = conn.SetReadDeadline(time.Now()) })
	defer stopCut()
	var deadline time.Time
	q := newQuiet(conn)
	heldBytes := 0 // bytes still to decode of what came in during a hold
	// silentSince is when capture began waiting for a message that has not
	// come: a cut that sends no reset leaves a read waiting for ever
	// otherwise, and the server answers every status update at once.
	var silentSince time.Time
	for {
		if time.Now().After(s.nextStatus) {
			if err := s.status(ctx, false); err != nil {
				return err
			}
		}
		if !deadline.Equal(s.nextStatus) {
			deadline = s.nextStatus
			if err := conn.SetReadDeadline(deadline); err != nil {
				return fmt.Errorf("receive from slot %q: %w", s.cfg.Slot, err)
			}
			if ctx.Err() != nil { // ended before the deadline was set: the cut is undone
				return ctx.Err()
			}
		}
		asked := time.Now()
		raw, err := s.repl.ReceiveMessage(context.Background())
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			if pgconn.Timeout(err) {
				if silentSince.IsZero() {
					silentSince = asked
				}
				if silent := time.Since(silentSince); silent > s.timeout {
					return fmt.Errorf("receive from slot %q: no message from the server for %s although capture asks for one every %s: "+
						"the connection is stalled (a network cut?); reconnecting (the bound is source.postgres.receive_timeout, by default the server's wal_sender_timeout)",
						s.cfg.Slot, silent.Round(time.Millisecond), time.Duration(s.cfg.StatusInterval))
				}
				continue
			}
			return fmt.Errorf("receive from slot %q: %w", s.cfg.Slot, err)
		}
		silentSince = time.Time{}
		if time.Since(asked) > waitedRead && s.cfg.Coalesce > 0 {
			// The first message after a quiet spell: let the rest of the
			// burst arrive, so that it is read in a few large reads rather
			// than one wake-up per message (capture 1.6x as fast, a third
			// less CPU per transaction at a steady rate). What came in
			// meanwhile is marked as held, so that the pipeline's
			// flush_interval counts the hold.
			q.hush()
			time.Sleep(time.Duration(s.cfg.Coalesce))
			s.dec.held = time.Duration(s.cfg.Coalesce)
			// What waits in the socket, and what the first read took
			// (at most pgconn's 8 KB read buffer).
			heldBytes = q.speak() + 8192
		}
		switch msg := raw.(type) {
		case *pgproto3.CopyData:
			err := s.handle(ctx, msg.Data, emit)
			if heldBytes > 0 {
				if heldBytes -= len(msg.Data) + 5; heldBytes <= 0 { // 5: the message's type and length
					s.dec.held = 0
				}
			}
			if err != nil {
				return err
			}
		case *pgproto3.ErrorResponse:
			return fmt.Errorf("replication from slot %q: %w", s.cfg.Slot, explain(pgconn.ErrorResponseToPgError(msg)))
		default:
			return fmt.Errorf("replication from slot %q: unexpected message %T", s.cfg.Slot, raw)
		}
	}
}

func (s *Source) handle(ctx context.Context, data []byte, emit func(pipeline.Event) error) error {
	if len(data) == 0 {
		return nil
	}
	switch data[0] {
	case repl.PrimaryKeepaliveMessageByteID:
		ka, err := repl.ParsePrimaryKeepaliveMessage(data[1:])
		if err != nil {
			return fmt.Errorf("parse keepalive: %w", err)
		}
		if ka.ServerWALEnd > s.received {
			s.received = ka.ServerWALEnd
			// Between transactions everything before the server's WAL end has
			// been sent: once that is durable the slot may move past it.
			if !s.dec.inTxn {
				if err := emit(pipeline.Event{Kind: pipeline.Progress, Position: ka.ServerWALEnd}); err != nil {
					return err
				}
			}
		}
		if ka.ReplyRequested {
			return s.status(ctx, false)
		}
	case repl.XLogDataByteID:
		xld, err := repl.ParseXLogData(data[1:])
		if err != nil {
			return fmt.Errorf("parse WAL data: %w", err)
		}
		return s.dec.decode(ctx, xld, emit)
	}
	return nil
}

// Confirm records that every change up to pos is durable in every sink.
func (s *Source) Confirm(pos any) {
	lsn := uint64(pos.(repl.LSN))
	if lsn > s.confirmed.Load() {
		s.confirmed.Store(lsn)
		s.metrics.ConfirmedLSN.Set(float64(lsn))
		if at, ok := s.clock.confirm(repl.LSN(lsn)); ok {
			s.metrics.Durable(at)
		}
	}
}

// status reports the confirmed position as written, flushed and applied: the
// server may recycle WAL only up to what is durable in every sink, never what
// is merely received.
func (s *Source) status(ctx context.Context, final bool) error {
	lsn := repl.LSN(s.confirmed.Load())
	sctx, cancel := context.WithTimeout(ctx, s.timeout)
	// The reply asked for is how Run tells a quiet server from a cut.
	err := repl.SendStandbyStatusUpdate(sctx, s.repl, repl.StandbyStatusUpdate{
		WALWritePosition: lsn, WALFlushPosition: lsn, WALApplyPosition: lsn, ReplyRequested: !final,
	})
	cancel()
	if err != nil {
		return fmt.Errorf("send status to slot %q: %w", s.cfg.Slot, err)
	}
	if lsn != s.reported {
		s.log.Debug("confirmed", "lsn", lsn.String(), "final", final)
		s.reported = lsn
	}
	s.nextStatus = time.Now().Add(time.Duration(s.cfg.StatusInterval))
	if !final {
		s.beat(ctx)
		return s.updateLag(ctx)
	}
	return nil
}

// updateLag reads the slot's lag over the side connection. That connection
// is also how capture learns that the server is shutting down: a fast
// shutdown ends ordinary connections first, and then holds the walsender
// until capture confirms everything sent, which it cannot while its sinks'
// writes to that server fail. Capture disconnects instead, so the shutdown
// goes on, and it resumes from the confirmed position once the server is back.
func (s *Source) updateLag(ctx context.Context) error {
	// A query that outlives the timeout is cancelled, and the connection
	// with it: a network cut then ends capture like a shutdown.
	qctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	_, err := s.checkSlot(qctx)
	switch {
	case err == nil:
	case errors.Is(err, ErrSlotLost):
		return err
	case errors.Is(err, context.DeadlineExceeded) && ctx.Err() == nil:
		return fmt.Errorf("read the slot's lag: the source database did not answer within %s (a network cut?); reconnecting: %w", s.timeout, err)
	case s.side.IsClosed() && ctx.Err() == nil:
		return fmt.Errorf("lost the connection to the source database (shutting down?): %w", explain(err))
	}
	return nil
}

// Close reports the final confirmed position and disconnects. It runs after
// Run has returned, once the pipeline has drained.
func (s *Source) Close(ctx context.Context) error {
	var err error
	if s.repl != nil && !s.repl.IsClosed() {
		err = s.status(ctx, true)
	}
	s.closeConns(ctx)
	return err
}

func (s *Source) closeConns(ctx context.Context) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	if s.repl != nil {
		_ = s.repl.Close(ctx)
	}
	if s.side != nil {
		_ = s.side.Close(ctx)
	}
}
