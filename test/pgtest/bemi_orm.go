package pgtest

import "strings"

// BemiORMMigration is the whole migration that the Bemi ORM packages
// generate (Prisma, TypeORM, MikroORM, Rails, SQLAlchemy, Django), written
// anew from what they install: the row trigger function of BemiMigration,
// a procedure that puts it on every table of schema public that lacks it
// (as _bemi_row_trigger_<table>), a call of that procedure, and an event
// trigger that calls it again at the end of every CREATE TABLE, so that
// tables created later get it too. The procedure runs inside whatever
// transaction created the table, pgtrail's included.
var BemiORMMigration = bemiORM(`s.nspname = 'public'`)

// BemiORMMigrationEverySchema is BemiORMMigration with the procedure widened
// to every table of every schema, as users who keep tables outside public
// adapt it: then pgtrail's own schema gets the trigger too.
var BemiORMMigrationEverySchema = bemiORM(`s.nspname NOT IN ('pg_catalog', 'information_schema') AND s.nspname NOT LIKE 'pg\_%'`)

func bemiORM(schemas string) string {
	return BemiMigration + strings.ReplaceAll(`
CREATE OR REPLACE PROCEDURE _bemi_create_triggers() AS $body$
DECLARE
  target RECORD;
BEGIN
  FOR target IN
    SELECT s.nspname AS schema_name, c.relname AS table_name
    FROM pg_class c JOIN pg_namespace s ON s.oid = c.relnamespace
    WHERE c.relkind IN ('r', 'p') AND {{SCHEMAS}}
      AND NOT EXISTS (SELECT 1 FROM pg_trigger t WHERE t.tgrelid = c.oid AND t.tgname = '_bemi_row_trigger_' || c.relname)
  LOOP
    EXECUTE format('CREATE OR REPLACE TRIGGER %I BEFORE INSERT OR UPDATE OR DELETE ON %I.%I FOR EACH ROW EXECUTE FUNCTION _bemi_row_trigger_func()',
      '_bemi_row_trigger_' || target.table_name, target.schema_name, target.table_name);
  END LOOP;
END;
$body$ LANGUAGE plpgsql;

CALL _bemi_create_triggers();

CREATE OR REPLACE FUNCTION _bemi_create_table_trigger_func() RETURNS event_trigger AS $body$
BEGIN
  CALL _bemi_create_triggers();
END;
$body$ LANGUAGE plpgsql;

DROP EVENT TRIGGER IF EXISTS _bemi_create_table_trigger;
CREATE EVENT TRIGGER _bemi_create_table_trigger ON ddl_command_end
  WHEN TAG IN ('CREATE TABLE') EXECUTE FUNCTION _bemi_create_table_trigger_func();
`, "{{SCHEMAS}}", schemas)
}

// BemiChangesTable is the changes table that Bemi's worker writes and its
// ORM query helpers read, as Bemi's own schema defines it (written anew):
// unpartitioned, a uuid key, and MESSAGE among the operations.
const BemiChangesTable = `
CREATE TABLE changes (
  id uuid NOT NULL DEFAULT gen_random_uuid(),
  created_at timestamptz(0) NOT NULL,
  primary_key varchar(255),
  before jsonb NOT NULL DEFAULT '{}',
  after jsonb NOT NULL DEFAULT '{}',
  context jsonb NOT NULL DEFAULT '{}',
  database varchar(255) NOT NULL,
  schema varchar(255) NOT NULL,
  "table" varchar(255) NOT NULL,
  operation text NOT NULL CHECK (operation IN ('CREATE', 'UPDATE', 'DELETE', 'TRUNCATE', 'MESSAGE')),
  committed_at timestamptz(0) NOT NULL,
  queued_at timestamptz(0) NOT NULL,
  transaction_id bigint NOT NULL,
  position bigint NOT NULL,
  CONSTRAINT changes_pkey PRIMARY KEY (id),
  CONSTRAINT changes_position_table_schema_database_operation_unique UNIQUE (position, "table", schema, database, operation)
);
CREATE INDEX changes_committed_at_index ON changes (committed_at);
CREATE INDEX changes_table_index ON changes ("table");
CREATE INDEX changes_primary_key_index ON changes (primary_key);
CREATE INDEX changes_operation_index ON changes (operation);
CREATE INDEX changes_context_index ON changes USING gin (context);
CREATE INDEX changes_before_index ON changes USING gin (before);
CREATE INDEX changes_after_index ON changes USING gin (after);
`
