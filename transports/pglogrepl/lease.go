package pglogrepl

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"golang.org/x/sys/unix"

	"github.com/pgtrail/pgtrail/core/config"
)

// High availability: any number of `pgtrail run` share one slot; the one
// that holds the slot's lease captures, the others stand by.
//
// The lease is a row of pgtrail.leases in the source database with an
// expiry by the database's clock. The holder renews it every LeaseRenew.
// It counts its lease valid until the moment it sent its last successful
// renewal plus LeaseTTL minus LeaseMargin, by its own monotonic clock: the
// database set the expiry later than that send, so the holder stops
// believing it holds the lease (and stops confirming and writing, see
// core/lease) before the database lets anyone else take it, however long
// the holder was stopped or cut off. A standby takes the lease only once
// it expired by the database's clock, then ends the old walsender if it is
// still attached (a stopped or cut-off holder keeps it until
// wal_sender_timeout).
//
// Why nothing is lost or doubled across a takeover: the slot is confirmed
// only up to positions durable in every sink, by whichever instance; the
// new holder starts from the slot's confirmed position, so it re-reads what
// the old one had not confirmed. The sinks write idempotently (a change's
// identity is its position), so a re-read change, or a late write of the
// old holder that was already on its way when it fenced itself, stores
// each change once.
const (
	LeaseTTL    = 8 * time.Second
	LeaseRenew  = 2 * time.Second
	LeaseMargin = 2 * time.Second
	leasePoll   = time.Second // how often a standby tries to take the lease
	leaseQuery  = 2 * time.Second
)

const leasesTable = OwnSchema + ".leases"

// leaseApp is the application_name prefix of lease connections: every
// instance keeps one open, so pg_stat_activity lists them all.
const leaseApp = "pgtrail lease "

// Lease is this instance's claim on a slot.
type Lease struct {
	cfg    config.Postgres
	log    *slog.Logger
	holder string
	conn   *pgx.Conn // used by one goroutine at a time
	// released is closed once the last Release is done with conn.
	released chan struct{}
}

// NewLease names this instance: host, machine (see machine), process, and a
// random part.
func NewLease(cfg config.Postgres, log *slog.Logger) *Lease {
	host, _ := os.Hostname()
	id := fmt.Sprintf("%s/%s/%d/%s", host, machine(), os.Getpid(), uuid.NewString()[:8])
	if n := 63 - len(leaseApp); len(id) > n { // application_name holds 63 bytes
		id = id[len(id)-n:]
	}
	return &Lease{cfg: cfg, log: log, holder: id}
}

// machine names this boot of this machine and this process id namespace,
// where a process id means one process: "-" when it cannot be told.
func machine() string {
	boot, err1 := os.ReadFile("/proc/sys/kernel/random/boot_id")
	ns, err2 := os.Readlink("/proc/self/ns/pid")
	if err1 != nil || err2 != nil {
		return "-"
	}
	sum := sha256.Sum256([]byte(strings.TrimSpace(string(boot)) + ns))
	return hex.EncodeToString(sum[:4])
}

// gone tells that holder was a process of this machine (same boot, same
// process id namespace) that no longer exists: a crashed or killed instance
// restarted where it ran. Such a holder writes and confirms nothing any more,
// so its lease need not run out. Any doubt (another machine, a process id
// taken again) means waiting for the expiry.
func gone(holder string) bool {
	parts := strings.Split(holder, "/")
	if len(parts) < 3 {
		return false
	}
	m, pid := parts[len(parts)-3], parts[len(parts)-2]
	if m == "-" || m != machine() {
		return false
	}
	n, err := strconv.Atoi(pid)
	if err != nil || n <= 0 || n == os.Getpid() {
		return false
	}
	return errors.Is(unix.Kill(n, 0), unix.ESRCH)
}

// Holder is this instance's name in pgtrail.leases.
func (l *Lease) Holder() string { return l.holder }

// PrepareLeases creates pgtrail.leases. Instances start together, so the
// creation is serialised by a transaction lock.
func PrepareLeases(ctx context.Context, cfg config.Postgres) error {
	conn, err := connect(ctx, cfg.URL)
	if err != nil {
		return err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	return pgx.BeginFunc(ctx, conn, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, "SELECT pg_advisory_xact_lock(hashtext($1))", leasesTable); err != nil {
			return fmt.Errorf("lock to create %s: %w", leasesTable, err)
		}
		_, err := tx.Exec(ctx, `CREATE TABLE IF NOT EXISTS `+leasesTable+` (
			slot text PRIMARY KEY, holder text NOT NULL, epoch bigint NOT NULL,
			since timestamptz NOT NULL, expires_at timestamptz NOT NULL)`)
		if err != nil {
			return fmt.Errorf("create %s: %w (pgtrail run keeps the lease of its slot there)", leasesTable, err)
		}
		return nil
	})
}

// dial (re)opens the lease connection.
func (l *Lease) dial(ctx context.Context) error {
	if l.conn != nil && !l.conn.IsClosed() {
		return nil
	}
	cc, err := connConfig(l.cfg.URL)
	if err != nil {
		return fmt.Errorf("source.postgres.url: %w", err)
	}
	cc.RuntimeParams["application_name"] = leaseApp + l.holder
	cctx, cancel := context.WithTimeout(ctx, leaseQuery)
	defer cancel()
	if l.conn, err = pgx.ConnectConfig(cctx, cc); err != nil {
		l.conn = nil
		return explain(err)
	}
	return nil
}

// Close closes the lease connection.
func (l *Lease) Close(ctx context.Context) {
	l.waitReleased()
	if l.conn != nil {
		_ = l.conn.Close(context.WithoutCancel(ctx))
	}
}

// query runs one bounded statement on the lease connection; a failed
// statement drops the connection, which is dialled again next time.
func (l *Lease) query(ctx context.Context, sql string, args ...any) (pgx.Rows, context.CancelFunc, error) {
	if err := l.dial(ctx); err != nil {
		return nil, func() {}, err
	}
	qctx, cancel := context.WithTimeout(ctx, leaseQuery)
	rows, err := l.conn.Query(qctx, sql, args...)
	if err != nil {
		cancel()
		_ = l.conn.Close(context.WithoutCancel(ctx))
		return nil, func() {}, err
	}
	return rows, cancel, nil
}

// exec runs one bounded statement and says whether it touched a row.
func (l *Lease) exec(ctx context.Context, sql string, args ...any) (bool, error) {
	rows, cancel, err := l.query(ctx, sql, args...)
	if err != nil {
		return false, err
	}
	defer cancel()
	n := 0
	for rows.Next() {
		n++
	}
	if err := rows.Err(); err != nil {
		_ = l.conn.Close(context.WithoutCancel(ctx))
		return false, err
	}
	return n > 0, nil
}

func interval(d time.Duration) string { return fmt.Sprintf("%d milliseconds", d.Milliseconds()) }

// Hold waits, standing by, until this instance holds the lease (standby is
// called once if it has to wait), then takes the slot over from a previous
// holder and renews the lease in the background until Release.
func (l *Lease) Hold(ctx context.Context, standby func()) (*Hold, error) {
	l.waitReleased()
	waited := false
	dead := "" // a holder known to be gone (see gone)
	for {
		sent := time.Now()
		ok, err := l.exec(ctx, `INSERT INTO `+leasesTable+` AS l (slot, holder, epoch, since, expires_at)
			VALUES ($1, $2, 1, clock_timestamp(), clock_timestamp() + $3::interval)
			ON CONFLICT (slot) DO UPDATE SET holder = excluded.holder, epoch = l.epoch + 1,
				since = excluded.since, expires_at = excluded.expires_at
			WHERE l.expires_at < clock_timestamp() OR l.holder = $4 RETURNING epoch`, l.cfg.Slot, l.holder, interval(LeaseTTL), dead)
		if err == nil && !ok && dead == "" {
			if holder, herr := l.holderNow(ctx); herr == nil && gone(holder) {
				l.log.Info("the holder of the slot's lease ran on this machine and is gone: taking over without waiting for its lease to run out",
					"slot", l.cfg.Slot, "holder", holder)
				dead = holder
				continue
			}
		}
		dead = ""
		switch {
		case ctx.Err() != nil:
			return nil, ctx.Err()
		case err != nil:
			l.log.Warn("cannot reach the lease of the slot; trying again", "slot", l.cfg.Slot, "err", err)
		case ok:
			h := newHold(ctx, l, sent)
			err := l.takeOver(ctx)
			if err == nil {
				l.log.Info("active: holding the lease of the slot", "slot", l.cfg.Slot, "instance", l.holder)
				return h, nil
			}
			h.Release(ctx)
			if ctx.Err() != nil {
				return nil, ctx.Err()
			}
			l.log.Warn("could not take the slot over; trying again", "slot", l.cfg.Slot, "err", err)
		case !waited:
			waited = true
			l.log.Info("standing by: another instance holds the lease of the slot", "slot", l.cfg.Slot, "instance", l.holder)
			if standby != nil {
				standby()
			}
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(leasePoll):
		}
	}
}

// holderNow reads who holds the lease.
func (l *Lease) holderNow(ctx context.Context) (string, error) {
	rows, cancel, err := l.query(ctx, "SELECT holder FROM "+leasesTable+" WHERE slot = $1", l.cfg.Slot)
	if err != nil {
		return "", err
	}
	defer cancel()
	holder, err := pgx.CollectExactlyOneRow(rows, pgx.RowTo[string])
	if err != nil {
		_ = l.conn.Close(context.WithoutCancel(ctx))
	}
	return holder, err
}

// takeOver ends the walsender still attached to the slot (the previous
// holder's, stopped or cut off, whose lease has expired) and waits until the
// slot is free. It has its own connection: the lease's is the renewal's now.
func (l *Lease) takeOver(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, LeaseTTL)
	defer cancel()
	conn, err := connect(ctx, l.cfg.URL)
	if err != nil {
		return fmt.Errorf("take over slot %q: %w", l.cfg.Slot, err)
	}
	defer conn.Close(context.WithoutCancel(ctx))
	for {
		var pid *int32
		err := conn.QueryRow(ctx, "SELECT active_pid FROM pg_replication_slots WHERE slot_name = $1", l.cfg.Slot).Scan(&pid)
		if errors.Is(err, pgx.ErrNoRows) {
			return nil // Open says what to do
		}
		if err != nil {
			return fmt.Errorf("take over slot %q: %w", l.cfg.Slot, err)
		}
		if pid == nil {
			return nil
		}
		l.log.Warn("ending the previous holder's walsender, still attached to the slot", "slot", l.cfg.Slot, "pid", *pid)
		if _, err := conn.Exec(ctx, "SELECT pg_terminate_backend($1)", *pid); err != nil {
			return fmt.Errorf("take over slot %q: end walsender %d: %w (the role needs pg_signal_backend or to own it)", l.cfg.Slot, *pid, err)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("take over slot %q: its walsender (pid %d) did not end: %w", l.cfg.Slot, *pid, ctx.Err())
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// Hold is a lease held, renewed in the background. It implements
// core/lease.Held.
type Hold struct {
	l      *Lease
	base   time.Time    // monotonic origin of validUntil
	until  atomic.Int64 // nanoseconds after base until which the lease is ours
	ctx    context.Context
	cancel context.CancelCauseFunc
	done   chan struct{}
}

func newHold(ctx context.Context, l *Lease, sent time.Time) *Hold {
	h := &Hold{l: l, base: sent, done: make(chan struct{})}
	h.ctx, h.cancel = context.WithCancelCause(context.WithoutCancel(ctx))
	h.extend(sent)
	go h.renew(ctx)
	go h.watch()
	return h
}

// extend records a renewal sent at sent.
func (h *Hold) extend(sent time.Time) {
	h.until.Store(int64(sent.Sub(h.base) + LeaseTTL - LeaseMargin))
}

// left is how long the lease is still this instance's.
func (h *Hold) left() time.Duration { return time.Duration(h.until.Load()) - time.Since(h.base) }

// watch ends ctx when the lease runs out, even while a renewal hangs.
func (h *Hold) watch() {
	for {
		left := h.left()
		if left <= 0 {
			h.lose(errors.New("could not renew the lease in time"))
			return
		}
		select {
		case <-h.ctx.Done():
			return
		case <-time.After(left):
		}
	}
}

// Valid tells whether the lease is still this instance's by its monotonic
// clock: checked at each use, so that a process resumed after a stop acts
// on the time that passed, before any timer of its fires.
func (h *Hold) Valid() bool {
	return h.ctx.Err() == nil && h.left() > 0
}

// Context ends when the lease is lost or released.
func (h *Hold) Context() context.Context { return h.ctx }

func (h *Hold) renew(ctx context.Context) {
	defer close(h.done)
	t := time.NewTicker(LeaseRenew)
	defer t.Stop()
	for {
		select {
		case <-h.ctx.Done():
			return
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if !h.Valid() {
			return // expire ends it
		}
		sent := time.Now()
		ok, err := h.l.exec(h.ctx, `UPDATE `+leasesTable+` SET expires_at = clock_timestamp() + $3::interval
			WHERE slot = $1 AND holder = $2 AND expires_at > clock_timestamp() RETURNING epoch`,
			h.l.cfg.Slot, h.l.holder, interval(LeaseTTL))
		switch {
		case err != nil:
			if h.ctx.Err() == nil {
				h.l.log.Warn("could not renew the lease of the slot; trying again until it runs out", "slot", h.l.cfg.Slot, "err", err)
			}
		case !ok:
			h.lose(errors.New("the lease expired or another instance took it"))
			return
		default:
			h.extend(sent)
		}
	}
}

func (h *Hold) lose(why error) {
	if h.ctx.Err() != nil {
		return
	}
	h.l.log.Error("lost the lease of the slot: fenced, standing by", "slot", h.l.cfg.Slot, "why", why)
	h.cancel(why)
}

// Release stops renewing and, when the lease is still this instance's,
// ends it at once so that a standby need not wait for it to expire. Call it
// once the pipeline has stopped; the Lease's next Hold or Close waits for it.
func (h *Hold) Release(ctx context.Context) {
	valid := h.Valid()
	if !valid {
		h.lose(errors.New("could not renew the lease in time"))
	}
	h.cancel(errors.New("released"))
	// In the background: a renewal or the release may wait out a cut, and
	// the pipeline's error is reported, and its restart begins, meanwhile.
	done := make(chan struct{})
	h.l.released = done
	go func() {
		defer close(done)
		<-h.done
		if !valid {
			return
		}
		_, err := h.l.exec(context.WithoutCancel(ctx), `UPDATE `+leasesTable+` SET expires_at = clock_timestamp()
			WHERE slot = $1 AND holder = $2`, h.l.cfg.Slot, h.l.holder)
		if err != nil {
			h.l.log.Warn("could not release the lease; a standby takes over once it expires", "slot", h.l.cfg.Slot, "in", LeaseTTL, "err", err)
		}
	}()
}

// waitReleased waits until the last Release is done with the connection.
func (l *Lease) waitReleased() {
	if l.released != nil {
		<-l.released
	}
}

// LeaseStatus is who holds a slot's lease and which instances are running.
type LeaseStatus struct {
	Holder    string    // "" when no instance ever held it
	Since     time.Time // when the holder took it
	Expired   bool      // the holder stopped renewing
	Instances []string  // every instance with a lease connection open to the database
}

// Leases reads the lease of cfg's slot and lists the running instances.
func Leases(ctx context.Context, cfg config.Postgres) (LeaseStatus, error) {
	conn, err := connect(ctx, cfg.URL)
	if err != nil {
		return LeaseStatus{}, err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	var st LeaseStatus
	var exists bool
	if err := conn.QueryRow(ctx, "SELECT to_regclass($1) IS NOT NULL", leasesTable).Scan(&exists); err != nil {
		return st, fmt.Errorf("look for %s: %w", leasesTable, err)
	}
	if exists {
		err := conn.QueryRow(ctx, "SELECT holder, since, expires_at < clock_timestamp() FROM "+leasesTable+" WHERE slot = $1",
			cfg.Slot).Scan(&st.Holder, &st.Since, &st.Expired)
		if err != nil && !errors.Is(err, pgx.ErrNoRows) {
			return st, fmt.Errorf("read the lease of slot %q: %w", cfg.Slot, err)
		}
	}
	rows, err := conn.Query(ctx, "SELECT application_name FROM pg_stat_activity WHERE datname = current_database() AND application_name LIKE $1 ORDER BY backend_start",
		leaseApp+"%")
	if err != nil {
		return st, fmt.Errorf("list pgtrail instances: %w", err)
	}
	names, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return st, fmt.Errorf("list pgtrail instances: %w", err)
	}
	for _, n := range names {
		st.Instances = append(st.Instances, strings.TrimPrefix(n, leaseApp))
	}
	return st, nil
}
