package pglogrepl

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgtrail/pgtrail/core/config"
)

// OwnSchema holds pgtrail's own objects in the source database (its SQL
// helpers, and by default the audit table). It is never captured.
const OwnSchema = "pgtrail"

// connect opens a plain connection and turns the usual failures into advice.
func connect(ctx context.Context, url string) (*pgx.Conn, error) {
	cc, err := connConfig(url)
	if err != nil {
		return nil, fmt.Errorf("source.postgres.url: %w", err)
	}
	conn, err := pgx.ConnectConfig(ctx, cc)
	if err != nil {
		return nil, explain(err)
	}
	return conn, nil
}

// explain adds what to do to the errors a user can fix.
func explain(err error) error {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		switch pgErr.Code {
		case "28P01", "28000":
			return fmt.Errorf("connect to source database: %w (check the user and password in source.postgres.url)", err)
		case "3D000":
			return fmt.Errorf("connect to source database: %w (check the database name in source.postgres.url)", err)
		case "55006":
			return fmt.Errorf("%w (another pgtrail or client is reading this slot: stop it, or set source.postgres.slot to another name)", err)
		}
	}
	if strings.Contains(err.Error(), "connect") || strings.Contains(err.Error(), "dial") {
		return fmt.Errorf("connect to source database: %w (is PostgreSQL running, and is source.postgres.url right?)", err)
	}
	return err
}

// Preflight checks that the server and role can do logical replication.
func Preflight(ctx context.Context, conn *pgx.Conn) error {
	var level string
	if err := conn.QueryRow(ctx, "SHOW wal_level").Scan(&level); err != nil {
		return fmt.Errorf("read wal_level: %w", err)
	}
	if level != "logical" {
		return fmt.Errorf("wal_level is %q, but pgtrail needs logical decoding: run ALTER SYSTEM SET wal_level = logical; as a superuser, then restart PostgreSQL", level)
	}
	var role string
	var ok bool
	err := conn.QueryRow(ctx, "SELECT current_user, rolsuper OR rolreplication FROM pg_roles WHERE rolname = current_user").Scan(&role, &ok)
	if err != nil {
		return fmt.Errorf("read role attributes: %w", err)
	}
	if !ok {
		return fmt.Errorf("role %q may not use replication: run ALTER ROLE %s WITH REPLICATION; as a superuser", role, pgx.Identifier{role}.Sanitize())
	}
	return nil
}

// Check connects and runs Preflight: the first thing every command does, so
// that the user hears about the source before anything else is attempted.
// It also refuses a pgtrail schema that another role controls, before any
// sink sets up its audit table there.
func Check(ctx context.Context, cfg config.Postgres) error {
	conn, err := connect(ctx, cfg.URL)
	if err != nil {
		return err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	if err := Preflight(ctx, conn); err != nil {
		return err
	}
	return checkOwnSchema(ctx, conn)
}

// Setup creates or updates the publication, creates the replication slot if
// it is missing, and installs the SQL helpers. It is idempotent, and it never
// drops a slot: a slot holds the position pgtrail resumes from.
func Setup(ctx context.Context, cfg config.Postgres, log *slog.Logger) error {
	return setup(ctx, cfg, log, true)
}

// Prepare is Setup as `pgtrail run` does it on every start: it creates the
// slot only if pgtrail never made it before (pgtrail.slots records the slots
// it made). A slot that vanished after that means changes were lost; pgtrail
// says so and stops rather than quietly starting a new slot from now.
func Prepare(ctx context.Context, cfg config.Postgres, log *slog.Logger) error {
	return setup(ctx, cfg, log, false)
}

func setup(ctx context.Context, cfg config.Postgres, log *slog.Logger, explicit bool) error {
	conn, err := connect(ctx, cfg.URL)
	if err != nil {
		return err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	if err := Preflight(ctx, conn); err != nil {
		return err
	}
	if err := setupPublication(ctx, conn, cfg, log); err != nil {
		return err
	}
	if err := setupHelpers(ctx, conn, log); err != nil {
		return err
	}
	if cfg.DDL {
		if err := setupDDL(ctx, conn, log); err != nil {
			return err
		}
	}
	if err := replicaIdentity(ctx, conn, cfg, log); err != nil {
		return err
	}
	return setupSlot(ctx, conn, cfg, log, explicit)
}

// publicationTargets lists what the publication must cover. Whole schemas
// are published (TABLES IN SCHEMA) so that tables created later are captured
// from their first row; include and exclude patterns are then applied inside
// pgtrail. Tables outside those schemas that carry the Bemi trigger are
// published too: their changes are decoded only to consume the _bemi message
// that precedes them, so that it cannot attach to a later captured change.
func publicationTargets(ctx context.Context, conn *pgx.Conn, cfg config.Postgres) (schemas, tables []string, err error) {
	rows, err := conn.Query(ctx, `SELECT nspname FROM pg_namespace
		WHERE nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast', $1)
		  AND nspname NOT LIKE 'pg_temp_%' AND nspname NOT LIKE 'pg_toast_temp_%' ORDER BY 1`, OwnSchema)
	if err != nil {
		return nil, nil, fmt.Errorf("list schemas: %w", err)
	}
	all, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return nil, nil, fmt.Errorf("list schemas: %w", err)
	}
	for _, s := range all {
		if includesSchema(cfg.Tables, s) {
			schemas = append(schemas, s)
		}
	}
	rows, err = conn.Query(ctx, `SELECT DISTINCT n.nspname, c.relname FROM pg_trigger t
		JOIN pg_class c ON c.oid = t.tgrelid JOIN pg_namespace n ON n.oid = c.relnamespace
		JOIN pg_proc p ON p.oid = t.tgfoid
		WHERE p.proname = '_bemi_row_trigger_func' AND n.nspname <> $1 ORDER BY 1, 2`, OwnSchema)
	if err != nil {
		return nil, nil, fmt.Errorf("list tables with the Bemi trigger: %w", err)
	}
	type qualified struct{ Schema, Table string }
	bemi, err := pgx.CollectRows(rows, pgx.RowToStructByPos[qualified])
	if err != nil {
		return nil, nil, fmt.Errorf("list tables with the Bemi trigger: %w", err)
	}
	for _, t := range bemi {
		if !slices.Contains(schemas, t.Schema) {
			tables = append(tables, pgx.Identifier{t.Schema, t.Table}.Sanitize())
		}
	}
	return schemas, tables, nil
}

// includesSchema reports whether some include pattern can match a table of schema s.
func includesSchema(patterns []string, s string) bool {
	for _, p := range patterns {
		sp, _, _ := strings.Cut(p, ".")
		if globMatch(sp, s) {
			return true
		}
	}
	return false
}

// globMatch matches * wildcards.
func globMatch(pattern, s string) bool {
	if pattern == "*" {
		return true
	}
	star := strings.IndexByte(pattern, '*')
	if star < 0 {
		return pattern == s
	}
	if !strings.HasPrefix(s, pattern[:star]) {
		return false
	}
	rest := pattern[star+1:]
	for i := star; i <= len(s); i++ {
		if globMatch(rest, s[i:]) {
			return true
		}
	}
	return false
}

// setupPublication creates or updates the publication.
func setupPublication(ctx context.Context, conn *pgx.Conn, cfg config.Postgres, log *slog.Logger) error {
	schemas, tables, err := publicationTargets(ctx, conn, cfg)
	if err != nil {
		return err
	}
	if len(schemas) == 0 && len(tables) == 0 {
		return fmt.Errorf("source.postgres.tables: %v matches no schema of the database: create the tables first, or fix the patterns", cfg.Tables)
	}
	var members []string
	if len(schemas) > 0 {
		quoted := make([]string, len(schemas))
		for i, s := range schemas {
			quoted[i] = pgx.Identifier{s}.Sanitize()
		}
		members = append(members, "TABLES IN SCHEMA "+strings.Join(quoted, ", "))
	}
	if len(tables) > 0 {
		members = append(members, "TABLE "+strings.Join(tables, ", "))
	}
	name := pgx.Identifier{cfg.Publication}.Sanitize()
	var exists bool
	if err := conn.QueryRow(ctx, "SELECT EXISTS (SELECT 1 FROM pg_publication WHERE pubname = $1)", cfg.Publication).Scan(&exists); err != nil {
		return fmt.Errorf("look up publication %q: %w", cfg.Publication, err)
	}
	q := "CREATE PUBLICATION " + name + " FOR " + strings.Join(members, ", ") +
		" WITH (publish = 'insert, update, delete, truncate')"
	if exists {
		q = "ALTER PUBLICATION " + name + " SET " + strings.Join(members, ", ")
	}
	if _, err := conn.Exec(ctx, q); err != nil {
		var pgErr *pgconn.PgError
		if errors.As(err, &pgErr) && pgErr.Code == "42501" {
			if exists {
				log.Warn("cannot update the publication; using it as it is", "publication", cfg.Publication, "err", err)
				return nil
			}
			return fmt.Errorf("create publication %q: %w (publishing whole schemas needs a superuser: run `%s;` as one, then run pgtrail setup again)", cfg.Publication, err, q)
		}
		return fmt.Errorf("create publication %q: %w", cfg.Publication, err)
	}
	log.Info("publication ready", "publication", cfg.Publication, "schemas", schemas, "bemi_tables_outside", tables)
	return nil
}

// setupSlot creates the slot if it is missing: always when explicit, else
// only if pgtrail never made it (see Prepare).
func setupSlot(ctx context.Context, conn *pgx.Conn, cfg config.Postgres, log *slog.Logger, explicit bool) error {
	var plugin, db string
	err := conn.QueryRow(ctx, "SELECT plugin, database FROM pg_replication_slots WHERE slot_name = $1", cfg.Slot).Scan(&plugin, &db)
	switch {
	case err == nil:
		var cur string
		if err := conn.QueryRow(ctx, "SELECT current_database()").Scan(&cur); err != nil {
			return fmt.Errorf("read database name: %w", err)
		}
		if plugin != "pgoutput" || db != cur {
			return fmt.Errorf("replication slot %q exists for plugin %q in database %q, but pgtrail needs pgoutput in %q: set source.postgres.slot to another name", cfg.Slot, plugin, db, cur)
		}
		st, err := readSlot(ctx, conn, cfg.Slot)
		if err != nil {
			return err
		}
		return st.Lost() // setup never replaces a slot on its own: teardown first
	case !errors.Is(err, pgx.ErrNoRows):
		return fmt.Errorf("look up replication slot %q: %w", cfg.Slot, err)
	}
	if !explicit {
		var made bool
		if err := conn.QueryRow(ctx, "SELECT EXISTS (SELECT 1 FROM "+slotsTable+" WHERE slot = $1)", cfg.Slot).Scan(&made); err != nil {
			return fmt.Errorf("look up %s: %w", slotsTable, err)
		}
		if made {
			return fmt.Errorf("replication slot %q is missing although pgtrail made it before: it was dropped, and the changes made since then were not captured. "+
				"Run `pgtrail setup` to create a new slot and capture from now on", cfg.Slot)
		}
	}
	var lsn string
	if err := conn.QueryRow(ctx, "SELECT lsn::text FROM pg_create_logical_replication_slot($1, 'pgoutput')", cfg.Slot).Scan(&lsn); err != nil {
		return fmt.Errorf("create replication slot %q: %w", cfg.Slot, explain(err))
	}
	if _, err := conn.Exec(ctx, "INSERT INTO "+slotsTable+" (slot, lsn) VALUES ($1, $2) ON CONFLICT (slot) DO UPDATE SET lsn = $2, created_at = now()", cfg.Slot, lsn); err != nil {
		return fmt.Errorf("record slot %q in %s: %w", cfg.Slot, slotsTable, err)
	}
	log.Info("replication slot created; changes are captured from here on", "slot", cfg.Slot, "lsn", lsn)
	return nil
}

// slotsTable records the slots pgtrail made, so that a start can tell a
// first run from a slot that was lost.
const slotsTable = OwnSchema + ".slots"

// setupHelpers installs pgtrail.set_context(jsonb), the SQL way for any
// language to set the context of the current transaction.
func setupHelpers(ctx context.Context, conn *pgx.Conn, log *slog.Logger) error {
	schema := pgx.Identifier{OwnSchema}.Sanitize()
	if _, err := conn.Exec(ctx, "CREATE SCHEMA IF NOT EXISTS "+schema); err != nil {
		return fmt.Errorf("create schema %s for pgtrail's own objects: %w (grant the role CREATE on the database, or have a superuser create the schema for it: CREATE SCHEMA %s AUTHORIZATION <role>)", OwnSchema, err, schema)
	}
	if err := checkOwnSchema(ctx, conn); err != nil {
		return err
	}
	if _, err := conn.Exec(ctx, `CREATE TABLE IF NOT EXISTS `+slotsTable+` (
		slot text PRIMARY KEY, lsn pg_lsn NOT NULL, created_at timestamptz NOT NULL DEFAULT now())`); err != nil {
		return fmt.Errorf("create %s: %w", slotsTable, err)
	}
	_, err := conn.Exec(ctx, `CREATE OR REPLACE FUNCTION `+schema+`.set_context(context jsonb) RETURNS void
		LANGUAGE sql VOLATILE AS $$ SELECT pg_logical_emit_message(true, 'pgtrail', context::text) $$`)
	if err != nil {
		log.Warn("could not install the SQL helper pgtrail.set_context; applications can still call pg_logical_emit_message(true, 'pgtrail', ...)", "err", err)
	}
	return nil
}

// Teardown drops the slot and the publication, and the SQL helpers. It
// refuses while the slot is in use.
func Teardown(ctx context.Context, cfg config.Postgres, log *slog.Logger) error {
	conn, err := connect(ctx, cfg.URL)
	if err != nil {
		return err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	var active bool
	err = conn.QueryRow(ctx, "SELECT active FROM pg_replication_slots WHERE slot_name = $1", cfg.Slot).Scan(&active)
	switch {
	case err == nil && active:
		return fmt.Errorf("replication slot %q is in use: stop pgtrail run first", cfg.Slot)
	case err == nil:
		if _, err := conn.Exec(ctx, "SELECT pg_drop_replication_slot($1)", cfg.Slot); err != nil {
			return fmt.Errorf("drop replication slot %q: %w", cfg.Slot, err)
		}
		if _, err := conn.Exec(ctx, "DELETE FROM "+slotsTable+" WHERE slot = $1", cfg.Slot); err != nil {
			return fmt.Errorf("forget replication slot %q: %w", cfg.Slot, err)
		}
		log.Info("replication slot dropped", "slot", cfg.Slot)
	case !errors.Is(err, pgx.ErrNoRows):
		return fmt.Errorf("look up replication slot %q: %w", cfg.Slot, err)
	}
	if _, err := conn.Exec(ctx, "DROP PUBLICATION IF EXISTS "+pgx.Identifier{cfg.Publication}.Sanitize()); err != nil {
		return fmt.Errorf("drop publication %q: %w", cfg.Publication, err)
	}
	if _, err := conn.Exec(ctx, "DROP FUNCTION IF EXISTS "+pgx.Identifier{OwnSchema}.Sanitize()+".set_context(jsonb)"); err != nil {
		return fmt.Errorf("drop pgtrail.set_context: %w", err)
	}
	log.Info("publication dropped", "publication", cfg.Publication)
	return nil
}

// SlotStatus is what `pgtrail status` reports about the slot.
// Status reads the slot's position and lag.
func Status(ctx context.Context, cfg config.Postgres) (SlotStatus, error) {
	conn, err := connect(ctx, cfg.URL)
	if err != nil {
		return SlotStatus{}, err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	return readSlot(ctx, conn, cfg.Slot)
}
