// Package metrics defines pgtrail's Prometheus metrics and serves them with a
// health check. Every package records into the one registry made here.
package metrics

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Metrics are the collectors of one pipeline.
type Metrics struct {
	Registry       *prometheus.Registry
	ChangesRead    prometheus.Counter
	ChangesWritten *prometheus.CounterVec
	BatchSeconds   *prometheus.HistogramVec
	WriteErrors    *prometheus.CounterVec
	BadContext     *prometheus.CounterVec
	DeadLetters    *prometheus.CounterVec
	SlotLagBytes   prometheus.Gauge
	ConfirmedLSN   prometheus.Gauge

	// ValuesRewritten counts values jsonb cannot hold, stored in a safe
	// form, by values.Reason.
	ValuesRewritten *prometheus.CounterVec
	// UnstorableChanges counts changes a sink refused for their data,
	// stored with their images replaced by markers, by sink.
	UnstorableChanges *prometheus.CounterVec
	// ChangesIgnored counts updates not stored by rules.ignore_columns.
	ChangesIgnored prometheus.Counter

	WAL // slot health and lag in seconds (native capture)
	Ops // changes by table, plugin restarts, retention

	// Active is 1 on the instance that holds the slot's lease and captures,
	// 0 on a standby.
	Active prometheus.Gauge

	mu     sync.Mutex
	health map[string]error
	pprof  bool
	mounts map[string]http.Handler
}

// New registers pgtrail's metrics and the Go runtime's in a fresh registry.
func New() *Metrics {
	m := &Metrics{
		Registry: prometheus.NewRegistry(),
		ChangesRead: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "pgtrail_changes_read_total", Help: "Row changes read from the source."}),
		ChangesIgnored: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "pgtrail_changes_ignored_total", Help: "Updates not stored because only columns of rules.ignore_columns changed."}),
		ChangesWritten: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "pgtrail_changes_written_total", Help: "Row changes durably written, by sink."}, []string{"sink"}),
		BatchSeconds: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "pgtrail_batch_write_seconds", Help: "Time to write one batch durably, by sink.",
			Buckets: prometheus.ExponentialBuckets(0.001, 2, 15)}, []string{"sink"}),
		WriteErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "pgtrail_write_errors_total", Help: "Failed batch writes (each is retried), by sink."}, []string{"sink"}),
		BadContext: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "pgtrail_bad_context_total", Help: "Context messages that were not a JSON object, by prefix."}, []string{"prefix"}),
		DeadLetters: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "pgtrail_dead_letters_total", Help: "Malformed broker messages sent to the dead-letter subject or topic, by reason."}, []string{"reason"}),
		SlotLagBytes: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "pgtrail_slot_lag_bytes", Help: "WAL bytes between the server's current position and the slot's confirmed position."}),
		ConfirmedLSN: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "pgtrail_confirmed_lsn", Help: "Last source position confirmed after every sink made it durable."}),
		ValuesRewritten: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "pgtrail_values_rewritten_total", Help: "Values jsonb cannot hold (in row images and context), stored in a safe form, by reason."}, []string{"reason"}),
		UnstorableChanges: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "pgtrail_unstorable_changes_total", Help: "Changes a sink refused for their data, stored with their images replaced by markers, by sink."}, []string{"sink"}),
		health: map[string]error{},
	}
	m.Registry.MustRegister(m.ChangesRead, m.ChangesWritten, m.BatchSeconds, m.WriteErrors,
		m.BadContext, m.DeadLetters, m.SlotLagBytes, m.ConfirmedLSN,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	m.Registry.MustRegister(m.ValuesRewritten, m.UnstorableChanges, m.ChangesIgnored)
	m.WAL = newWAL(m.Registry)
	m.Ops = newOps(m.Registry)

	m.Active = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "pgtrail_active", Help: "1 on the instance that holds the slot's lease and captures, 0 on a standby."})
	m.Registry.MustRegister(m.Active)
	return m
}

// SetHealth records the state of one component; nil means healthy.
func (m *Metrics) SetHealth(component string, err error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.health[component] = err
}

// Health returns nil, or one line for each failing component, sorted: its
// name and the kind of failure, "sink audit: failing, connection refused
// (see the log)". Never the error's text: it may quote a URL or a query with
// a secret, and the log has it, redacted.
func (m *Metrics) Health() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	var lines []string
	for name, err := range m.health {
		if err != nil {
			lines = append(lines, name+": failing, "+class(err)+" (see the log)")
		}
	}
	if len(lines) == 0 {
		return nil
	}
	slices.Sort(lines)
	return errors.New(strings.Join(lines, "\n"))
}

// class names the kind of failure err is, from its type: timeout, connection
// refused, connection lost, host not found, TLS, network, permission denied,
// not found, canceled, or error for any other.
func class(err error) string {
	var (
		netErr net.Error
		dnsErr *net.DNSError
		opErr  *net.OpError
		record tls.RecordHeaderError
		verify *tls.CertificateVerificationError
	)
	switch {
	case errors.Is(err, context.DeadlineExceeded), errors.As(err, &netErr) && netErr.Timeout():
		return "timeout"
	case errors.Is(err, context.Canceled):
		return "canceled"
	case errors.Is(err, syscall.ECONNREFUSED):
		return "connection refused"
	case errors.As(err, &dnsErr):
		return "host not found"
	case errors.As(err, &verify), errors.As(err, &record), errors.As(err, &opErr) && opErr.Op == "remote error":
		return "TLS"
	case errors.Is(err, syscall.ECONNRESET), errors.Is(err, syscall.EPIPE), errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return "connection lost"
	case errors.As(err, &opErr):
		return "network"
	case errors.Is(err, fs.ErrPermission):
		return "permission denied"
	case errors.Is(err, fs.ErrNotExist):
		return "not found"
	}
	return "error"
}

// ServeProfiles makes Start also serve net/http/pprof under /debug/pprof/,
// for profiling a running pgtrail.
func (m *Metrics) ServeProfiles() { m.pprof = true }

// Mount makes Start also serve h at pattern (the activity log's API and UI
// under "/"). Call it before Start.
func (m *Metrics) Mount(pattern string, h http.Handler) {
	if m.mounts == nil {
		m.mounts = map[string]http.Handler{}
	}
	m.mounts[pattern] = h
}

// Start listens on addr now, so a busy port is reported at start-up, and
// answers /metrics and /healthz until ctx ends.
func (m *Metrics) Start(ctx context.Context, addr string, log *slog.Logger) error {
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(m.Registry, promhttp.HandlerOpts{}))
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) {
		if err := m.Health(); err != nil {
			http.Error(w, err.Error(), http.StatusServiceUnavailable)
			return
		}
		_, _ = w.Write([]byte("ok\n"))
	})
	if m.pprof {
		mux.HandleFunc("/debug/pprof/", pprof.Index)
		mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
		mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
		mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
		mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	}
	for pattern, h := range m.mounts {
		mux.Handle(pattern, h)
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("listen on %s (http.listen): %w", addr, err)
	}
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() {
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		_ = srv.Shutdown(sctx)
	}()
	go func() {
		if err := srv.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
			log.Error("http server stopped", "err", err)
		}
	}()
	log.Info("serving /metrics and /healthz", "addr", ln.Addr().String(), "pprof", m.pprof)
	return nil
}
