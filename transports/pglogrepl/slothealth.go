package pglogrepl

import (
	"context"
	"errors"
	"fmt"
	"math"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgtrail/pgtrail/core/config"
	"github.com/pgtrail/pgtrail/core/metrics"
)

// ErrSlotLost is the error of a slot PostgreSQL invalidated: it can no
// longer stream, and pgtrail never replaces it on its own.
var ErrSlotLost = errors.New("replication slot invalidated")

// SlotStatus is where a replication slot stands.
type SlotStatus struct {
	Slot         string
	Active       bool
	ConfirmedLSN string // "" before the slot confirmed anything
	CurrentLSN   string // the server's WAL position
	LagBytes     int64  // current WAL position minus the confirmed one
	// RetainedBytes is the WAL the slot holds back (current position minus
	// restart_lsn), SafeBytes what may still be written before PostgreSQL
	// invalidates the slot: nil when max_slot_wal_keep_size is -1.
	RetainedBytes int64
	SafeBytes     *int64
	WALStatus     string // reserved, extended, unreserved or lost
}

// readSlot reads the slot's row of pg_replication_slots.
func readSlot(ctx context.Context, conn *pgx.Conn, slot string) (SlotStatus, error) {
	st := SlotStatus{Slot: slot}
	err := conn.QueryRow(ctx, `SELECT active, coalesce(confirmed_flush_lsn::text, ''), pg_current_wal_lsn()::text,
		coalesce((pg_current_wal_lsn() - confirmed_flush_lsn)::bigint, 0),
		coalesce((pg_current_wal_lsn() - restart_lsn)::bigint, 0), safe_wal_size, coalesce(wal_status, '')
		FROM pg_replication_slots WHERE slot_name = $1`, slot).
		Scan(&st.Active, &st.ConfirmedLSN, &st.CurrentLSN, &st.LagBytes, &st.RetainedBytes, &st.SafeBytes, &st.WALStatus)
	if errors.Is(err, pgx.ErrNoRows) {
		return st, fmt.Errorf("replication slot %q does not exist: run `pgtrail setup`", slot)
	}
	if err != nil {
		return st, fmt.Errorf("read replication slot %q: %w", slot, err)
	}
	return st, nil
}

// Lost returns ErrSlotLost, explained, when PostgreSQL invalidated the slot.
func (st SlotStatus) Lost() error {
	if st.WALStatus != "lost" {
		return nil
	}
	from := st.ConfirmedLSN
	if from == "" {
		from = "its creation"
	}
	return fmt.Errorf("%w: PostgreSQL removed WAL that slot %q still needed (wal_status lost: it held back more than max_slot_wal_keep_size), so it can no longer stream changes. "+
		"The changes committed between the slot's last confirmed position %s and the server's position %s are gone from the trail. "+
		"To capture again run `pgtrail teardown` then `pgtrail setup`: a new slot captures from then on, and that gap stays missing from the trail",
		ErrSlotLost, st.Slot, from, st.CurrentLSN)
}

// Warnings says what endangers the slot short of its loss: WAL held back
// past max (0: no limit), or a wal_status past reserved.
func (st SlotStatus) Warnings(max config.Size) []string {
	var w []string
	if max > 0 && st.RetainedBytes > int64(max) {
		w = append(w, fmt.Sprintf("slot %q holds back %d bytes of WAL, more than source.postgres.max_retained_wal (%d): capture is behind or stopped, and the source keeps that WAL on disk until it catches up",
			st.Slot, st.RetainedBytes, int64(max)))
	}
	switch st.WALStatus {
	case "extended":
		w = append(w, fmt.Sprintf("slot %q has wal_status extended: it holds WAL beyond max_wal_size; if it falls further behind than max_slot_wal_keep_size allows, PostgreSQL invalidates it", st.Slot))
	case "unreserved":
		w = append(w, fmt.Sprintf("slot %q has wal_status unreserved: the WAL it needs is removed at the next checkpoint, which invalidates the slot and loses changes from the trail; let capture catch up now", st.Slot))
	}
	return w
}

// isLostSlot tells the server's refusal to stream from an invalidated slot.
// The reason is in the message (PostgreSQL 16 on) or the detail (13 to 15).
func isLostSlot(err error) bool {
	msg := err.Error()
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		msg += " " + pgErr.Detail
	}
	return strings.Contains(msg, "can no longer get changes from replication slot") || strings.Contains(msg, "This slot has been invalidated")
}

// observe publishes the slot's health as metrics.
func observe(m *metrics.Metrics, st SlotStatus) {
	m.SlotLagBytes.Set(float64(st.LagBytes))
	m.RetainedBytes.Set(float64(st.RetainedBytes))
	if st.SafeBytes != nil {
		m.SafeBytes.Set(float64(*st.SafeBytes))
	} else {
		m.SafeBytes.Set(math.NaN())
	}
	m.SetWALStatus(st.WALStatus)
}

// checkSlot reads the slot's health into the metrics, logs a warning when
// one appears or changes, and fails when the slot is lost.
func (s *Source) checkSlot(ctx context.Context) (SlotStatus, error) {
	st, err := readSlot(ctx, s.side, s.cfg.Slot)
	if err != nil {
		return st, err
	}
	observe(s.metrics, st)
	if err := st.Lost(); err != nil {
		return st, err
	}
	warnings := st.Warnings(s.cfg.MaxRetainedWAL)
	over := s.cfg.MaxRetainedWAL > 0 && st.RetainedBytes > int64(s.cfg.MaxRetainedWAL)
	kind := fmt.Sprint(over, st.WALStatus) // log on a change of state, not every status interval
	if kind != s.warned {
		for _, w := range warnings {
			s.log.Warn(w, "slot", s.cfg.Slot, "retained_wal_bytes", st.RetainedBytes, "wal_status", st.WALStatus)
		}
		if len(warnings) == 0 && s.warned != "" {
			s.log.Info("replication slot healthy again", "slot", s.cfg.Slot, "retained_wal_bytes", st.RetainedBytes, "wal_status", st.WALStatus)
		}
		s.warned = kind
	}
	return st, nil
}
