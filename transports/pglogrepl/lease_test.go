package pglogrepl

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"testing"
	"time"
)

// TestGoneOnlyForAProcessOfThisMachineThatExitedOrNothing: a holder is
// taken for gone only when it names this machine and a process that no
// longer exists.
func TestGoneOnlyForAProcessOfThisMachineThatExitedOrNothing(t *testing.T) {
	cmd := exec.Command("true")
	if err := cmd.Run(); err != nil {
		t.Fatal(err)
	}
	exited := cmd.Process.Pid
	for holder, want := range map[string]bool{
		fmt.Sprintf("host/%s/%d/abcd1234", machine(), exited):       true,
		fmt.Sprintf("st/%s/%d/abcd1234", machine(), exited):         true, // host cut short to fit
		fmt.Sprintf("host/%s/%d/abcd1234", machine(), os.Getpid()):  false,
		fmt.Sprintf("host/%s/%d/abcd1234", machine(), os.Getppid()): false,
		fmt.Sprintf("host/%s/%d/abcd1234", "0badcafe", exited):      false,
		fmt.Sprintf("host/-/%d/abcd1234", exited):                   false,
		"somewhere-else": false,
	} {
		if got := gone(holder); got != want {
			t.Errorf("gone(%q) = %v, want %v", holder, got, want)
		}
	}
}

// TestLeaseHolderFencesItselfBeforeAStandbyTakesOver: while the holder
// renews, a standby waits longer than the lease time without taking it;
// once the holder is cut off (no reset), it counts itself fenced before the
// standby takes the lease, and the standby takes it within the lease time
// and a poll of the cut.
func TestLeaseHolderFencesItselfBeforeAStandbyTakesOver(t *testing.T) {
	c := startCluster(t)
	url := c.NewDatabase(t)
	c.Exec(t, url, `CREATE SCHEMA pgtrail`)
	proxy, viaProxy := through(t, c, url)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if err := PrepareLeases(ctx, testConfig(url)); err != nil {
		t.Fatal(err)
	}
	log := slog.New(slog.DiscardHandler)
	a, b := NewLease(testConfig(viaProxy), log), NewLease(testConfig(url), log)
	defer a.Close(ctx)
	defer b.Close(ctx)
	ha, err := a.Hold(ctx, func() { t.Error("the first instance stood by") })
	if err != nil {
		t.Fatal(err)
	}
	defer ha.Release(ctx)
	standby := make(chan struct{})
	took := make(chan *Hold, 1)
	go func() {
		hb, err := b.Hold(ctx, func() { close(standby) })
		if err != nil {
			t.Error(err)
		}
		took <- hb
	}()
	<-standby
	select {
	case <-took:
		t.Fatal("the standby took the lease while its holder renewed it")
	case <-time.After(LeaseTTL + 2*time.Second):
	}
	if !ha.Valid() {
		t.Fatal("the holder lost a lease it renewed")
	}

	proxy.Partition()
	cut := time.Now()
	<-ha.Context().Done()
	fenced := time.Since(cut)
	if ha.Valid() {
		t.Fatal("the holder's lease ended but it still counts it valid")
	}
	hb := <-took
	taken := time.Since(cut)
	defer hb.Release(ctx)
	t.Logf("cut at 0: holder fenced at %s, standby took over at %s", fenced.Round(time.Millisecond), taken.Round(time.Millisecond))
	if fenced >= taken {
		t.Errorf("the standby took the lease (%s) before the holder fenced itself (%s)", taken, fenced)
	}
	if fenced > LeaseTTL-LeaseMargin {
		t.Errorf("the holder fenced itself %s after the cut, later than the lease time minus the margin", fenced)
	}
	if taken > LeaseTTL+leasePoll+time.Second {
		t.Errorf("the standby took over %s after the cut, later than the lease time and a poll", taken)
	}
	if !hb.Valid() {
		t.Error("the new holder's lease is not valid")
	}
	proxy.Heal()
	time.Sleep(LeaseRenew + time.Second)
	if ha.Valid() || !hb.Valid() {
		t.Errorf("after the heal: old holder valid %v, new holder valid %v; want false, true", ha.Valid(), hb.Valid())
	}
}
