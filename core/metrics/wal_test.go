package metrics

import (
	"math"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
)

func lag(t *testing.T, m *Metrics) float64 {
	t.Helper()
	var d dto.Metric
	if err := m.LagSeconds.Write(&d); err != nil {
		t.Fatal(err)
	}
	return d.GetGauge().GetValue()
}

// TestLagSecondsGrowsFromTheLastDurableTimeUntilAnotherIsDurable: unknown
// (NaN) at first; then measured when read, so it keeps growing while
// nothing new is durable (capture down or restarting); an older time never
// lowers it.
func TestLagSecondsGrowsFromTheLastDurableTimeUntilAnotherIsDurable(t *testing.T) {
	m := New()
	if v := lag(t, m); !math.IsNaN(v) {
		t.Fatalf("lag before anything was durable: got %v, want NaN", v)
	}
	m.Durable(time.Now().Add(-5 * time.Second))
	m.Durable(time.Now().Add(-time.Hour)) // confirmed out of order: ignored
	if v := lag(t, m); v < 5 || v > 6 {
		t.Fatalf("lag 5s after the last durable commit: got %v", v)
	}
	time.Sleep(300 * time.Millisecond)
	if v := lag(t, m); v < 5.3 {
		t.Fatalf("lag 5.3s after the last durable commit: got %v, want it to grow while nothing is durable", v)
	}
	m.Durable(time.Now())
	if v := lag(t, m); v > 0.5 {
		t.Fatalf("lag just after a durable commit: got %v", v)
	}
}

func TestWALStatusMarksOneStatus(t *testing.T) {
	m := New()
	m.SetWALStatus("unreserved")
	for _, s := range WALStatuses {
		var d dto.Metric
		if err := m.Status.WithLabelValues(s).Write(&d); err != nil {
			t.Fatal(err)
		}
		if want := map[bool]float64{true: 1, false: 0}[s == "unreserved"]; d.GetGauge().GetValue() != want {
			t.Errorf("pgtrail_slot_wal_status{status=%q}: got %v, want %v", s, d.GetGauge().GetValue(), want)
		}
	}
}
