package metrics

import (
	"math"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// WALStatuses are the values of pg_replication_slots.wal_status, each a
// series of pgtrail_slot_wal_status.
var WALStatuses = []string{"reserved", "extended", "unreserved", "lost"}

// WAL are the metrics an operator alerts on to keep a replication slot
// from filling the source's disk or being invalidated.
type WAL struct {
	// LagSeconds is now minus the commit time (or the heartbeat's send
	// time) of the last transaction made durable in every sink (Durable),
	// computed when read: it keeps growing while capture is down or
	// restarting. NaN until the process made anything durable.
	LagSeconds prometheus.GaugeFunc
	// RetainedBytes is the WAL the slot holds back: current WAL position
	// minus restart_lsn.
	RetainedBytes prometheus.Gauge
	// SafeBytes is pg_replication_slots.safe_wal_size: WAL that may still
	// be written before the slot is invalidated. NaN when
	// max_slot_wal_keep_size is -1 (no limit: the slot is never
	// invalidated, the disk fills instead).
	SafeBytes prometheus.Gauge
	// Status is 1 for the slot's wal_status, 0 for the others.
	Status *prometheus.GaugeVec
	// Heartbeats counts heartbeat messages written into the source's WAL.
	Heartbeats prometheus.Counter

	durable *atomic.Int64 // Unix nanoseconds; 0: nothing yet
}

func newWAL(r *prometheus.Registry) WAL {
	durable := new(atomic.Int64)
	w := WAL{
		durable: durable,
		LagSeconds: prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "pgtrail_lag_seconds", Help: "Seconds between now and the commit (or heartbeat) time of the last transaction durable in every sink."},
			func() float64 {
				d := durable.Load()
				if d == 0 {
					return math.NaN()
				}
				return max(0, time.Since(time.Unix(0, d)).Seconds())
			}),
		RetainedBytes: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "pgtrail_slot_retained_wal_bytes", Help: "WAL bytes the replication slot holds back (current WAL position minus restart_lsn)."}),
		SafeBytes: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "pgtrail_slot_safe_wal_bytes", Help: "WAL bytes that can still be written before the slot is invalidated (safe_wal_size); NaN when max_slot_wal_keep_size is -1."}),
		Status: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "pgtrail_slot_wal_status", Help: "1 for the replication slot's wal_status (reserved, extended, unreserved, lost), 0 for the others."}, []string{"status"}),
		Heartbeats: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "pgtrail_heartbeats_total", Help: "Heartbeat messages written into the source's WAL."}),
	}
	r.MustRegister(w.LagSeconds, w.RetainedBytes, w.SafeBytes, w.Status, w.Heartbeats)
	return w
}

// Durable records that a transaction committed (or a heartbeat sent) at
// is durable in every sink; an earlier time than the last changes nothing.
func (w WAL) Durable(at time.Time) {
	n := at.UnixNano()
	for {
		old := w.durable.Load()
		if n <= old || w.durable.CompareAndSwap(old, n) {
			return
		}
	}
}

// SetWALStatus marks status as the slot's, and the others as not.
func (w WAL) SetWALStatus(status string) {
	for _, s := range WALStatuses {
		v := 0.0
		if s == status {
			v = 1
		}
		w.Status.WithLabelValues(s).Set(v)
	}
}

// Ops are the metrics of the work around the pipeline.
type Ops struct {
	// Changes counts row changes read, by schema, table and operation:
	// one series per captured table and operation, so its cardinality is
	// that of the captured tables times four.
	Changes *prometheus.CounterVec
	// PluginRestarts counts restarts of a sink's plugin process.
	PluginRestarts *prometheus.CounterVec
	// RetentionErrors counts failed retention passes.
	RetentionErrors prometheus.Counter
	// RetentionLastSuccess is the Unix time of the last retention pass
	// that succeeded.
	RetentionLastSuccess prometheus.Gauge
}

func newOps(r *prometheus.Registry) Ops {
	o := Ops{
		Changes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "pgtrail_changes_total", Help: "Row changes read, by schema, table and operation."}, []string{"schema", "table", "operation"}),
		PluginRestarts: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "pgtrail_plugin_restarts_total", Help: "Restarts of a sink's plugin process, by sink."}, []string{"sink"}),
		RetentionErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "pgtrail_retention_errors_total", Help: "Retention passes that failed."}),
		RetentionLastSuccess: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "pgtrail_retention_last_success_timestamp_seconds", Help: "Unix time of the last retention pass that succeeded."}),
	}
	r.MustRegister(o.Changes, o.PluginRestarts, o.RetentionErrors, o.RetentionLastSuccess)
	return o
}
