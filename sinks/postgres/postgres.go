// Package postgres is the PostgreSQL audit-table sink. Its table is the
// `changes` table that Bemi's ORM query helpers read, range-partitioned by
// committed_at so that retention is a matter of dropping partitions.
package postgres

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"golang.org/x/sync/errgroup"

	"github.com/pgtrail/pgtrail/plugins/sdk"
)

// Version is the sink's version, reported by `pgtrail plugins`.
const Version = "0.1.0"

// Config is the sink's `config` block.
type Config struct {
	URL    string `json:"url"`
	Schema string `json:"schema"`
	Table  string `json:"table"`
	// Writers is how many connections COPY one batch side by side. One
	// backend inserting into three GIN indexes is the slowest step of the
	// whole trail; two use a second core where there is one.
	Writers int `json:"writers"`
	// Partitioning says how long one partition spans and how many are made
	// ahead (partitions.go).
	Partitioning Partitioning `json:"partitioning"`
}

// minPerWriter keeps small batches (a quiet database's) on one connection,
// where splitting would cost more round trips than it saves.
const minPerWriter = 1000

// Sink writes changes to the audit table.
type Sink struct {
	cfg    Config
	target string // quoted schema.table
	pool   *pgxpool.Pool
	gin    cleaner

	log *slog.Logger

	mu    sync.Mutex
	spans []span // partitions known to exist, sorted
	// upkeep serialises partition creation; stopUpkeep ends the background
	// upkeep that Open starts.
	upkeep     sync.Mutex
	stopUpkeep context.CancelFunc
	upkeepDone sync.WaitGroup
	// replaying is true until a batch goes in without a single conflict: after
	// a restart the first batches overlap what is stored, so they go through
	// a staging table; then plain COPY, the fast path.
	replaying bool
}

// New returns an unconfigured sink.
func New() *Sink { return &Sink{log: sdk.Logger(), replaying: true} }

// SetLogger replaces the plugin logger, for a sink used inside pgtrail's
// own process (retention, migration).
func (s *Sink) SetLogger(log *slog.Logger) { s.log = log }

// Describe names the sink.
func (s *Sink) Describe() sdk.Description {
	return sdk.Description{Name: "postgres", Version: Version, Summary: "audit table in PostgreSQL (Bemi-compatible changes table)"}
}

// Configure reads the config block.
func (s *Sink) Configure(_ context.Context, raw json.RawMessage) error {
	cfg, err := ParseConfig(raw)
	if err != nil {
		return err
	}
	s.cfg = cfg
	s.target = pgx.Identifier{cfg.Schema, cfg.Table}.Sanitize()
	return nil
}

// ParseConfig reads and checks a config block, with the defaults applied.
// pgtrail reads it too: native capture must know the audit tables, so as
// never to store its own writes.
func ParseConfig(raw json.RawMessage) (Config, error) {
	cfg := Config{Schema: "pgtrail", Table: "changes", Writers: 2, Partitioning: defaultPartitioning()}
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields()
	if len(raw) > 0 {
		if err := dec.Decode(&cfg); err != nil {
			return cfg, fmt.Errorf("config: %w (known keys: url, schema, table, writers, partitioning)", err)
		}
	}
	if cfg.URL == "" {
		return cfg, errors.New("config.url: required: the PostgreSQL URL of the database that holds the audit table")
	}
	if _, err := pgxpool.ParseConfig(cfg.URL); err != nil {
		return cfg, fmt.Errorf("config.url: %w", err)
	}
	if cfg.Writers < 1 || cfg.Writers > 16 {
		return cfg, fmt.Errorf("config.writers: %d is out of range: give 1 to 16 connections (default 2)", cfg.Writers)
	}
	if !validIdent(cfg.Schema) {
		return cfg, fmt.Errorf("config.schema: %q is not a simple identifier (lowercase letters, digits, _)", cfg.Schema)
	}
	if !validIdent(cfg.Table) {
		return cfg, fmt.Errorf("config.table: %q is not a simple identifier (lowercase letters, digits, _)", cfg.Table)
	}
	if err := cfg.Partitioning.validate(cfg.Table); err != nil {
		return cfg, err
	}
	return cfg, nil
}

func validIdent(s string) bool {
	if s == "" || len(s) > 63 || (s[0] >= '0' && s[0] <= '9') {
		return false
	}
	for _, r := range s {
		if !(r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == '_') {
			return false
		}
	}
	return true
}

func (s *Sink) connect(ctx context.Context) error {
	if s.pool != nil {
		return nil
	}
	pc, err := pgxpool.ParseConfig(s.cfg.URL)
	if err != nil {
		return fmt.Errorf("config.url: %w", err)
	}
	pc.MaxConns = int32(s.cfg.Writers) + 1 // and one for partitions and GIN merges
	pc.ConnConfig.RuntimeParams["application_name"] = "pgtrail-sink"
	pc.AfterConnect = durableCommits
	pool, err := pgxpool.NewWithConfig(ctx, pc)
	if err != nil {
		return fmt.Errorf("connect to audit database: %w", err)
	}
	s.pool = pool
	return nil
}

// durableCommits turns synchronous_commit on for a connection where it is
// off: the sink reports a batch durable once its commit returns, and the
// source is then confirmed past it, so an asynchronous commit lost in a
// server crash would be lost from the trail for good. Every other setting
// (local, remote_write, on, remote_apply) flushes locally, and is kept.
func durableCommits(ctx context.Context, conn *pgx.Conn) error {
	_, err := conn.Exec(ctx, "SELECT set_config('synchronous_commit', 'on', false) WHERE current_setting('synchronous_commit') = 'off'")
	if err != nil {
		return fmt.Errorf("turn synchronous_commit on: %w", err)
	}
	return nil
}

// Open connects and checks that the audit table exists.
func (s *Sink) Open(ctx context.Context) error {
	if err := s.connect(ctx); err != nil {
		return err
	}
	if err := s.checkEncoding(ctx); err != nil {
		return err
	}
	var exists bool
	err := s.pool.QueryRow(ctx, "SELECT to_regclass($1) IS NOT NULL", s.target).Scan(&exists)
	if err != nil {
		return fmt.Errorf("look up audit table %s: %w", s.target, err)
	}
	if !exists {
		return fmt.Errorf("audit table %s does not exist: run `pgtrail setup`", s.target)
	}
	s.startUpkeep()
	return nil
}

// checkEncoding refuses an audit database whose encoding is not UTF8: jsonb
// there rejects the \u escapes of characters it cannot hold, so the first
// change carrying one would stop the trail at that batch for good.
func (s *Sink) checkEncoding(ctx context.Context) error {
	var enc string
	if err := s.pool.QueryRow(ctx, "SELECT current_setting('server_encoding')").Scan(&enc); err != nil {
		return fmt.Errorf("look up the audit database's encoding: %w", err)
	}
	if enc != "UTF8" {
		return fmt.Errorf("the audit database's encoding is %s: the audit table holds JSON of any Unicode text and needs a UTF8 database; "+
			"create one (CREATE DATABASE ... ENCODING 'UTF8' TEMPLATE template0) and point config.url at it", enc)
	}
	return nil
}

// Check pings the audit database.
func (s *Sink) Check(ctx context.Context) error {
	if err := s.connect(ctx); err != nil {
		return err
	}
	return s.pool.Ping(ctx)
}

// Close releases the connections.
func (s *Sink) Close(context.Context) error {
	if s.stopUpkeep != nil {
		s.stopUpkeep()
		s.upkeepDone.Wait()
	}
	s.gin.wait()
	if s.pool != nil {
		s.pool.Close()
		s.pool = nil
	}
	return nil
}

// Setup creates the schema, the partitioned audit table, its indexes and the
// partitions for now and ahead (see Partitioning), and takes the Bemi
// trigger off them. Idempotent.
func (s *Sink) Setup(ctx context.Context) error {
	if err := s.connect(ctx); err != nil {
		return err
	}
	if err := s.checkEncoding(ctx); err != nil {
		return err
	}
	t := s.cfg.Table
	idx := func(suffix string) string { return pgx.Identifier{t + "_" + suffix}.Sanitize() }
	create := []string{
		"CREATE SCHEMA IF NOT EXISTS " + pgx.Identifier{s.cfg.Schema}.Sanitize(),
		`CREATE TABLE IF NOT EXISTS ` + s.target + ` (
			id uuid NOT NULL,
			primary_key varchar(255),
			before jsonb NOT NULL DEFAULT '{}',
			after jsonb NOT NULL DEFAULT '{}',
			context jsonb NOT NULL DEFAULT '{}',
			database varchar(255) NOT NULL,
			schema varchar(255) NOT NULL,
			"table" varchar(255) NOT NULL,
			operation text NOT NULL CONSTRAINT ` + pgx.Identifier{t + "_operation_check"}.Sanitize() + ` CHECK (operation IN (` + operations + `)),
			committed_at timestamptz NOT NULL,
			queued_at timestamptz NOT NULL,
			created_at timestamptz NOT NULL DEFAULT now(),
			transaction_id bigint NOT NULL,
			position bigint NOT NULL,
			seq integer NOT NULL,
			unchanged_toast text[],
			-- Time first: the audit table is appended to in commit order, so new
			-- keys land at the right edge of the index, and the key serves
			-- questions by time without an index of its own.
			PRIMARY KEY (committed_at, id)
		) PARTITION BY RANGE (committed_at)`,
	}
	// Once the table is known to be pgtrail's own:
	more := []string{
		allowOperations(s.target, t),
		`COMMENT ON TABLE ` + s.target + ` IS 'pgtrail audit table: every row change, with its context'`,
		`CREATE INDEX IF NOT EXISTS ` + idx("context_idx") + ` ON ` + s.target + ` USING gin (context jsonb_path_ops)`,
		`CREATE INDEX IF NOT EXISTS ` + idx("before_idx") + ` ON ` + s.target + ` USING gin (before jsonb_path_ops)`,
		`CREATE INDEX IF NOT EXISTS ` + idx("after_idx") + ` ON ` + s.target + ` USING gin (after jsonb_path_ops)`,
	}
	exec := func(stmts []string) error {
		for _, q := range stmts {
			if _, err := s.pool.Exec(ctx, q); err != nil {
				return fmt.Errorf("set up audit table %s: %w", s.target, err)
			}
		}
		return nil
	}
	if err := exec(create); err != nil {
		return err
	}
	if err := s.checkOwner(ctx); err != nil {
		return err
	}
	// Was the table there already, and unpartitioned (Bemi's)?
	if err := s.checkPartitioned(ctx); err != nil {
		return err
	}
	if err := exec(more); err != nil {
		return err
	}
	// By ("table", primary_key) too: the history index (readindexes.go).
	if err := s.addReadIndexes(ctx); err != nil {
		return err
	}
	return s.premake(ctx, time.Now())
}

// checkOwner refuses to adopt an audit table that another role made: its
// owner could read, change or empty the trail, and a table of the same name
// made before setup would be taken for pgtrail's own.
func (s *Sink) checkOwner(ctx context.Context) error {
	var owner, user string
	err := s.pool.QueryRow(ctx, `SELECT pg_get_userbyid(relowner), current_user::text FROM pg_class WHERE oid = $1::regclass`, s.target).Scan(&owner, &user)
	if err != nil {
		return fmt.Errorf("look up the owner of audit table %s: %w", s.target, err)
	}
	if owner != user {
		return fmt.Errorf("audit table %s exists and is owned by role %q, not by %q that pgtrail connects as: pgtrail will not keep its trail in a table another role controls. "+
			"Check what it holds, then drop it or have a superuser run ALTER TABLE %s OWNER TO %s, or set config.table to another name; then run pgtrail setup again",
			s.target, owner, user, s.target, pgx.Identifier{user}.Sanitize())
	}
	return nil
}

// Teardown drops the audit table with all its partitions.
func (s *Sink) Teardown(ctx context.Context) error {
	if err := s.connect(ctx); err != nil {
		return err
	}
	if _, err := s.pool.Exec(ctx, "DROP TABLE IF EXISTS "+s.target); err != nil {
		return fmt.Errorf("drop audit table %s: %w", s.target, err)
	}
	return nil
}

var columns = []string{"id", "primary_key", "before", "after", "context", "database", "schema", "table",
	"operation", "committed_at", "queued_at", "transaction_id", "position", "seq", "unchanged_toast"}

// Flush has nothing to do: every Write is durable when it returns.
func (s *Sink) Flush(context.Context) error { return nil }

// Write stores a batch in one transaction, so it is all there or not at all.
func (s *Sink) Write(ctx context.Context, batch []*sdk.Change) (bool, error) {
	err := s.write(ctx, batch)
	if s.partitionGone(err) {
		err = s.write(ctx, batch)
	}
	if err != nil {
		return false, err
	}
	s.gin.wrote(len(batch), s.pool, s.target)
	return true, nil
}

func (s *Sink) write(ctx context.Context, batch []*sdk.Change) error {
	if len(batch) == 0 {
		return nil
	}
	if err := s.connect(ctx); err != nil {
		return err
	}
	if err := s.ensurePartitions(ctx, commitTimes(batch)); err != nil {
		return err
	}
	if !s.replaying {
		err := s.copyDirect(ctx, batch)
		var pgErr *pgconn.PgError
		if err == nil || !errors.As(err, &pgErr) || pgErr.Code != "23505" {
			return classify(err)
		}
		// Some changes are stored already: a replay. Merge instead.
		s.replaying = true
	}
	inserted, err := s.merge(ctx, batch)
	if err != nil {
		return classify(err)
	}
	if inserted == int64(len(batch)) {
		s.replaying = false
	}
	return nil
}

// classify marks an error of COPY or of the merge as unstorable when
// PostgreSQL refused a value of the batch (SQLSTATE class 22, data
// exception: a number numeric cannot hold, an escape or a byte jsonb
// refuses; class 54, program limit exceeded: a jsonb too large or too
// deep). Every other error, a lost connection, a read-only database
// (25006), a full disk (53100), is the database's state, which passes: the
// batch is written again as it is.
func classify(err error) error {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) && (strings.HasPrefix(pgErr.Code, "22") || strings.HasPrefix(pgErr.Code, "54")) {
		return sdk.Unstorable(err)
	}
	return err
}

// copyDirect is the fast path: COPY straight into the audit table, a large
// batch split across the writers' connections. The parts commit on their
// own, so a failure can leave some of them stored: the batch comes again and
// merge skips what is there, as after any crash.
func (s *Sink) copyDirect(ctx context.Context, batch []*sdk.Change) error {
	n := min(s.cfg.Writers, len(batch)/minPerWriter)
	if n <= 1 {
		return s.copyPart(ctx, batch)
	}
	g, gctx := errgroup.WithContext(ctx)
	per := (len(batch) + n - 1) / n
	for part := range slices.Chunk(batch, per) {
		g.Go(func() error { return s.copyPart(gctx, part) })
	}
	return g.Wait() // the first error: a conflict, not the others' cancellation
}

func (s *Sink) copyPart(ctx context.Context, part []*sdk.Change) error {
	_, err := s.pool.CopyFrom(ctx, pgx.Identifier{s.cfg.Schema, s.cfg.Table}, columns, rows(part))
	if err != nil {
		return fmt.Errorf("copy %d changes into %s: %w", len(part), s.target, err)
	}
	return nil
}

// merge copies the batch into a staging table and inserts only the changes
// that are not stored yet.
func (s *Sink) merge(ctx context.Context, batch []*sdk.Change) (int64, error) {
	var inserted int64
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		if err := s.createStaging(ctx, tx); err != nil {
			return err
		}
		if _, err := tx.CopyFrom(ctx, pgx.Identifier{"pgtrail_stage"}, columns, rows(batch)); err != nil {
			return fmt.Errorf("copy %d changes into staging table: %w", len(batch), err)
		}
		tag, err := tx.Exec(ctx, `INSERT INTO `+s.target+` SELECT * FROM pgtrail_stage ON CONFLICT DO NOTHING`)
		if err != nil {
			return fmt.Errorf("merge %d changes into %s: %w", len(batch), s.target, err)
		}
		inserted = tag.RowsAffected()
		return nil
	})
	return inserted, err
}

func rows(batch []*sdk.Change) pgx.CopyFromSource {
	return pgx.CopyFromSlice(len(batch), func(i int) ([]any, error) {
		c := batch[i]
		var key any
		if c.PrimaryKey != "" {
			key = truncate(c.PrimaryKey, 255)
		}
		var toast any
		if len(c.UnchangedToast) > 0 {
			toast = c.UnchangedToast
		}
		return []any{[16]byte(c.ID), key, jsonb(c.Before), jsonb(c.After), jsonb(c.Context),
			c.Database, c.Schema, c.Table, string(c.Operation), c.CommittedAt, c.QueuedAt,
			int64(c.TransactionID), int64(c.LSN), int32(c.Seq), toast}, nil
	})
}

// jsonb passes raw JSON through pgx's jsonb codec without re-encoding it.
func jsonb(raw json.RawMessage) any {
	if len(raw) == 0 {
		return []byte("{}")
	}
	return []byte(raw)
}

// truncate keeps the first n characters: primary_key is varchar(255) for
// compatibility with Bemi's table, and a longer key must not stop the pipeline.
func truncate(s string, n int) string {
	if utf8.RuneCountInString(s) <= n {
		return s
	}
	r := []rune(s)
	return string(r[:n])
}
