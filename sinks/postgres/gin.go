package postgres

import (
	"context"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// The GIN indexes on context, before and after take new entries into a
// pending list, which PostgreSQL merges into the index inside whichever
// insert finds the list full (gin_pending_list_limit, 4 MB by default): that
// insert stalls, and every change behind it. The sink merges the lists
// itself, beside its writes, once enough changes have come, so that at
// moderate rates no write finds a list full. At high rates it leaves them to
// PostgreSQL: the lists fill between two merges anyway, PostgreSQL's merge in
// bulk is the cheaper one, and a merge beside the writes would take CPU they
// need (measured: at 10,000 changes a second it put end-to-end behind).
const (
	cleanAfterRows = 1000
	cleanAtMost    = 500 * time.Millisecond
	cleanUpToRate  = 4000 // changes a second
)

// cleaner merges the pending lists of the audit table's GIN indexes.
type cleaner struct {
	mu      sync.Mutex
	rows    int
	last    time.Time
	running bool
	wg      sync.WaitGroup
}

// wrote counts stored changes and starts a merge when one is due.
func (c *cleaner) wrote(n int, pool *pgxpool.Pool, target string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.due(n, time.Now()) {
		return
	}
	c.running = true
	c.wg.Add(1)
	go func() {
		defer c.wg.Done()
		// Best effort: a merge that fails leaves the work to PostgreSQL.
		_ = cleanPendingLists(pool, target)
		c.mu.Lock()
		c.running = false
		c.mu.Unlock()
	}()
}

// due counts n more stored changes at now and says whether a merge should
// start: enough changes since the last, not too soon, not too fast, and
// none running.
func (c *cleaner) due(n int, now time.Time) bool {
	c.rows += n
	since := now.Sub(c.last)
	if c.running || c.rows < cleanAfterRows || since < cleanAtMost {
		return false
	}
	rate := float64(c.rows) / since.Seconds()
	c.rows, c.last = 0, now
	return rate <= cleanUpToRate
}

// wait returns once no merge runs.
func (c *cleaner) wait() { c.wg.Wait() }

// cleanPendingLists merges the pending list of every GIN index of the audit
// table's partitions.
func cleanPendingLists(pool *pgxpool.Pool, target string) error {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	rows, err := pool.Query(ctx, `SELECT i.indexrelid::regclass::text
		FROM pg_inherits h JOIN pg_index i ON i.indrelid = h.inhrelid
		JOIN pg_class c ON c.oid = i.indexrelid JOIN pg_am a ON a.oid = c.relam
		WHERE h.inhparent = $1::regclass AND a.amname = 'gin'`, target)
	if err != nil {
		return err
	}
	indexes, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return err
	}
	for _, idx := range indexes {
		if _, err := pool.Exec(ctx, "SELECT gin_clean_pending_list($1::regclass)", idx); err != nil {
			return err
		}
	}
	return nil
}
