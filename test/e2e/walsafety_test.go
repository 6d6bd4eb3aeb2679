package e2e

import (
	"strings"
	"testing"
	"time"

	"github.com/pgtrail/pgtrail/test/pgtest"
)

// TestStatusWarnsWhenTheSlotRetainsMoreWALThanAllowed: with
// max_retained_wal at one byte, `pgtrail status` prints the retained and
// safe WAL and a warning naming the key.
func TestStatusWarnsWhenTheSlotRetainsMoreWALThanAllowed(t *testing.T) {
	url := cluster.NewDatabase(t)
	conn := connect(t, url)
	exec1(t, conn, `CREATE TABLE t (id int PRIMARY KEY)`)
	cfg := writeConfig(t, url, "", "    max_retained_wal: 1\n")
	if out, err := pgtrail(t, cfg, "setup"); err != nil {
		t.Fatalf("setup: %v\n%s", err, out)
	}
	exec1(t, conn, `INSERT INTO t SELECT generate_series(1, 1000)`)
	out, err := pgtrail(t, cfg, "status")
	if err != nil {
		t.Fatalf("status: %v\n%s", err, out)
	}
	for _, want := range []string{"wal status  reserved", "retained wal", "safe wal  unlimited (max_slot_wal_keep_size is -1)",
		"warning", "more than source.postgres.max_retained_wal (1)"} {
		if !strings.Contains(strings.Join(strings.Fields(out), " "), strings.Join(strings.Fields(want), " ")) {
			t.Errorf("status lacks %q:\n%s", want, out)
		}
	}
}

// TestRunAndStatusOnAnInvalidatedSlotFailClearlyAndMakeNoNewSlot: a slot
// invalidated while pgtrail was stopped stops `pgtrail run`, `pgtrail
// status` and `pgtrail setup` with what was lost and how to recover, and the slot stays as it
// was until teardown and setup make a new one.
func TestRunAndStatusOnAnInvalidatedSlotFailClearlyAndMakeNoNewSlot(t *testing.T) {
	c, err := pgtest.Start(pgtest.Options{Settings: pgtest.SmallSlotWAL})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Stop)
	url := c.NewDatabase(t)
	conn := connect(t, url)
	cfg := writeConfig(t, url, "", "")
	if out, err := pgtrail(t, cfg, "setup"); err != nil {
		t.Fatalf("setup: %v\n%s", err, out)
	}
	var confirmed string
	if err := conn.QueryRow(t.Context(), `SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = 'pgtrail'`).Scan(&confirmed); err != nil {
		t.Fatal(err)
	}
	c.OutgrowSlots(t, url)

	for _, cmd := range []string{"run", "status", "setup"} {
		out, err := pgtrail(t, cfg, cmd)
		if err == nil {
			t.Fatalf("%s on a lost slot succeeded:\n%s", cmd, out)
		}
		for _, want := range []string{"replication slot invalidated", confirmed, "are gone from the trail", "`pgtrail teardown` then `pgtrail setup`"} {
			if !strings.Contains(out, want) {
				t.Errorf("%s on a lost slot does not say %q:\n%s", cmd, want, tail(out, 10))
			}
		}
	}
	if n := count(t, conn, `SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'pgtrail' AND wal_status = 'lost' AND confirmed_flush_lsn = $1::pg_lsn`, confirmed); n != 1 {
		t.Fatalf("the lost slot was replaced or moved: %d lost slots at %s", n, confirmed)
	}

	if out, err := pgtrail(t, cfg, "teardown"); err != nil {
		t.Fatalf("teardown: %v\n%s", err, out)
	}
	if out, err := pgtrail(t, cfg, "setup"); err != nil {
		t.Fatalf("setup after teardown: %v\n%s", err, out)
	}
	if out, err := pgtrail(t, cfg, "status"); err != nil || !strings.Contains(out, "reserved") {
		t.Fatalf("status of the new slot: %v\n%s", err, out)
	}
}

// TestRunStopsWhenItsSlotIsInvalidatedWhileCapturing: a running pgtrail
// whose sink is stuck (its table locked) falls behind past
// max_slot_wal_keep_size; the checkpoint ends its stream and invalidates
// the slot. pgtrail does not retry for ever: it exits with the lost-slot
// error.
func TestRunStopsWhenItsSlotIsInvalidatedWhileCapturing(t *testing.T) {
	c, err := pgtest.Start(pgtest.Options{Settings: pgtest.SmallSlotWAL})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Stop)
	url := c.NewDatabase(t)
	conn := connect(t, url)
	exec1(t, conn, `CREATE TABLE t (id int PRIMARY KEY)`)
	_, _, p := setupAndStart(t, url, "", "")

	locker := connect(t, url)
	exec1(t, locker, `BEGIN`)
	exec1(t, locker, `LOCK TABLE pgtrail.changes IN ACCESS EXCLUSIVE MODE`)
	c.OutgrowSlots(t, url)
	if n := count(t, conn, `SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'pgtrail' AND wal_status = 'lost'`); n != 1 {
		t.Fatalf("the slot was not invalidated behind a stuck sink (lost slots: %d)", n)
	}
	exec1(t, locker, `ROLLBACK`)

	select {
	case <-p.done:
	case <-time.After(60 * time.Second):
		t.Fatalf("pgtrail still running 60s after its slot was lost:\n%s", tail(p.out.String(), 20))
	}
	if p.err == nil || !strings.Contains(p.out.String(), "replication slot invalidated") || !strings.Contains(p.out.String(), "are gone from the trail") {
		t.Fatalf("pgtrail ended with %v, want the lost-slot error:\n%s", p.err, tail(p.out.String(), 20))
	}
}
