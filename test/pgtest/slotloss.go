package pgtest

import "testing"

// SmallSlotWAL are settings under which PostgreSQL invalidates a slot that
// falls more than 1MB behind, at the next checkpoint: pass them as
// Options.Settings of a private cluster.
var SmallSlotWAL = map[string]string{"max_slot_wal_keep_size": "1MB", "max_wal_size": "32MB", "min_wal_size": "32MB"}

// OutgrowSlots writes about 60MB of WAL into database url, switching WAL
// files, then checkpoints: on a cluster with SmallSlotWAL every slot not
// read meanwhile is then lost.
func (c *Cluster) OutgrowSlots(t testing.TB, url string) {
	t.Helper()
	c.Exec(t, url, `CREATE TABLE IF NOT EXISTS pgtest_wal_filler (id int PRIMARY KEY, pad text)`)
	for i := range 4 {
		c.Exec(t, url, `INSERT INTO pgtest_wal_filler SELECT g, repeat(md5(g::text), 20) FROM generate_series($1::int, $1::int + 19999) g`, i*20000)
		c.Exec(t, url, `SELECT pg_switch_wal()`)
	}
	c.Exec(t, url, `CHECKPOINT`)
}
