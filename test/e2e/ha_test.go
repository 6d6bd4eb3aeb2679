package e2e

import (
	"fmt"
	"io"
	"net/http"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgtrail/pgtrail/test/faultproxy"
)

// haInstance is one `pgtrail run` of several sharing a config, behind its
// own fault proxy (source and audit connections both), with its metrics on
// its own port.
type haInstance struct {
	p       *proc
	proxy   *faultproxy.Proxy
	cfg     string
	metrics string
}

func startInstance(t *testing.T, url string, marker string) *haInstance {
	t.Helper()
	proxy, via := proxied(t, url)
	port := freePort(t)
	extra := fmt.Sprintf("sinks:\n  - {name: audit, plugin: postgres, config: {url: %q}}\npipeline:\n  batch_size: 200\nhttp:\n  listen: \"127.0.0.1:%d\"\n", via, port)
	cfg := writeConfig(t, via, extra, "    receive_timeout: 2s\n")
	in := &haInstance{proxy: proxy, cfg: cfg, metrics: fmt.Sprintf("http://127.0.0.1:%d/metrics", port)}
	in.p = launchUntil(t, exec.Command(binary, "run", "--config", cfg), marker)
	return in
}

// active reads the instance's pgtrail_active gauge; false when it does not
// answer (stopped).
func (in *haInstance) active() (bool, bool) {
	c := http.Client{Timeout: 300 * time.Millisecond}
	resp, err := c.Get(in.metrics)
	if err != nil {
		return false, false
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return strings.Contains(string(body), "\npgtrail_active 1\n"), true
}

// walsender is the pid of the process reading the slot, 0 when none.
func walsender(t *testing.T, conn *pgx.Conn) int {
	return count(t, conn, `SELECT coalesce(active_pid, 0) FROM pg_replication_slots WHERE slot_name = 'pgtrail'`)
}

// TestStandbysTakeOverWithinSecondsAndTheTrailStaysExact runs three
// `pgtrail run` with one config under a write load. Exactly one captures.
// The active one is killed (-9), stopped (SIGSTOP, resumed later) and cut
// off by a partition without reset, each twice: every time another instance
// captures within 15 s, a stopped or cut-off one is fenced (its
// pgtrail_active reads 0 before anyone takes over when it can still be
// asked, and once resumed it confirms nothing more and stands by), and in
// the end the audit table equals the writers' record, row by row. Last,
// SIGTERM hands over within seconds: the lease is released.
func TestStandbysTakeOverWithinSecondsAndTheTrailStaysExact(t *testing.T) {
	url := cluster.NewDatabase(t)
	conn := connect(t, url)
	exec1(t, conn, `CREATE TABLE items (id int PRIMARY KEY, n int NOT NULL)`)
	sinks := fmt.Sprintf("sinks:\n  - {name: audit, plugin: postgres, config: {url: %q}}\n", url)
	if out, err := pgtrail(t, writeConfig(t, url, sinks, ""), "setup"); err != nil {
		t.Fatalf("setup: %v\n%s", err, out)
	}
	insts := []*haInstance{startInstance(t, url, "capturing")}
	for range 2 {
		insts = append(insts, startInstance(t, url, "standing by"))
	}
	stop := itemsLoad(t, conn, url)
	defer stop()

	whoIsActive := func(not *haInstance) *haInstance {
		var found *haInstance
		for _, in := range insts {
			if on, _ := in.active(); on && in != not {
				if found != nil {
					t.Fatalf("two instances report pgtrail_active 1")
				}
				found = in
			}
		}
		return found
	}
	var took []time.Duration
	for round, fault := range []string{"kill -9", "SIGSTOP", "partition", "kill -9", "SIGSTOP", "partition"} {
		var old *haInstance
		waitFor(t, 20*time.Second, "one active instance", func() bool { old = whoIsActive(nil); return old != nil })
		oldPID := walsender(t, conn)
		time.Sleep(time.Second) // let changes flow under this one
		before := len(old.p.out.String())
		began := time.Now()
		switch fault {
		case "kill -9":
			old.p.kill()
		case "SIGSTOP":
			_ = old.p.cmd.Process.Signal(syscall.SIGSTOP)
		case "partition":
			old.proxy.Partition()
		}
		var next *haInstance
		waitFor(t, 20*time.Second, "a standby to take over", func() bool {
			next = whoIsActive(old)
			pid := walsender(t, conn)
			return next != nil && pid != 0 && pid != oldPID
		})
		d := time.Since(began)
		took = append(took, d)
		t.Logf("round %d, %s: another instance captures %s after the fault", round+1, fault, d.Round(time.Millisecond))
		if d > 15*time.Second {
			t.Errorf("takeover after %s took %s, more than 15s", fault, d)
		}
		switch fault {
		case "kill -9":
			insts[indexOf(insts, old)] = startInstance(t, url, "standing by")
		case "partition":
			// Fenced before the lease expired for the others.
			if on, answered := old.active(); !answered || on {
				t.Errorf("the cut-off instance reports pgtrail_active 1 (answered: %v) after another took over", answered)
			}
			old.proxy.Heal()
			fencedAndStandingBy(t, old, before)
		case "SIGSTOP":
			_ = old.p.cmd.Process.Signal(syscall.SIGCONT)
			fencedAndStandingBy(t, old, before)
		}
	}
	truth := stopAndCompare(t, conn, stop)
	if t.Failed() {
		return
	}
	t.Logf("takeovers: %v; the audit table equals the writers' record (%d changes)", took, truth)

	out, err := pgtrail(t, insts[0].cfg, "status")
	if err != nil {
		t.Fatalf("status: %v\n%s", err, out)
	}
	if a, s := countRoles(out); a != 1 || s != 2 {
		t.Errorf("status shows %d active and %d standby instances, want 1 and 2:\n%s", a, s, out)
	}

	// SIGTERM drains, confirms and releases the lease: no waiting for it
	// to run out.
	old := whoIsActive(nil)
	oldPID := walsender(t, conn)
	began := time.Now()
	if err := old.p.stop(); err != nil {
		t.Fatalf("exit after SIGTERM: %v", err)
	}
	waitFor(t, 5*time.Second, "a standby to take over after SIGTERM", func() bool {
		pid := walsender(t, conn)
		return whoIsActive(old) != nil && pid != 0 && pid != oldPID
	})
	t.Logf("after SIGTERM another instance captures %s after the signal", time.Since(began).Round(time.Millisecond))
}

// stopAndCompare stops itemsLoad a second later, waits for the trail to
// hold every change written and fails t unless it equals the writers'
// record; it returns how many changes that is.
func stopAndCompare(t *testing.T, conn *pgx.Conn, stop func()) int {
	t.Helper()
	time.Sleep(time.Second)
	stop()
	if t.Failed() {
		return 0
	}
	truth := count(t, conn, `SELECT count(*) FROM bookkeeping.truth`)
	waitForChanges(t, conn, truth, 60*time.Second)
	sameAsTruth(t, conn)
	return truth
}

func countRoles(out string) (active, standby int) {
	for _, l := range strings.Split(out, "\n") {
		if !strings.HasPrefix(l, "instance ") {
			continue
		}
		switch {
		case strings.HasSuffix(l, " active"):
			active++
		case strings.HasSuffix(l, " standby"):
			standby++
		}
	}
	return active, standby
}

func indexOf(insts []*haInstance, in *haInstance) int {
	for i, x := range insts {
		if x == in {
			return i
		}
	}
	return -1
}

// fencedAndStandingBy waits until an instance that was stopped or cut off
// (when its output was from bytes long) says it lost the lease and stands by, reporting pgtrail_active 0, and
// checks it confirmed nothing once standing by. (A status update between the
// fence and the end of its pipeline may still carry a position confirmed
// before the fence: that position is durable in every sink.)
func fencedAndStandingBy(t *testing.T, in *haInstance, from int) {
	t.Helper()
	var since string // the output from the lost lease on
	waitFor(t, 15*time.Second, "the old instance to stand by, fenced", func() bool {
		out := in.p.out.String()[from:]
		i := strings.Index(out, "lost the lease")
		if i < 0 {
			return false
		}
		since = out[i:]
		on, answered := in.active()
		return strings.Contains(since, "standing by: another instance holds the lease") && answered && !on
	})
	standby := since[strings.Index(since, "standing by: another instance holds the lease"):]
	if strings.Contains(standby, "msg=confirmed") {
		t.Errorf("the fenced instance confirmed a position while standing by:\n%s", tail(standby, 20))
	}
}
