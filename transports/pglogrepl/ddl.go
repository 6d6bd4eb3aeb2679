package pglogrepl

import (
	"context"
	"fmt"
	"log/slog"
	"strings"

	"github.com/jackc/pgx/v5"
)

// DDLPrefix is the prefix of the logical decoding messages pgtrail's event
// triggers emit for each DDL statement (core/pipeline stores them as DDL
// rows).
const DDLPrefix = "pgtrail_ddl"

// ddlSQL installs event triggers that emit, in the statement's transaction,
// one message per DDL statement: the command tag, the table it concerns (the
// first table among its objects), its objects and the statement. pgtrail's
// own schema and temporary objects are left out; a DROP's ddl_command_end
// has no objects (its sql_drop told it). No SQL comments: the SQL is also
// logged on one line.
func ddlSQL() string {
	// OwnSchema is a plain lowercase name: neither it nor anything else
	// here needs quotes or backslashes, which a log would escape.
	own, lit := OwnSchema, "'"+OwnSchema+"'"
	return `CREATE OR REPLACE FUNCTION ` + own + `.ddl_trail() RETURNS event_trigger LANGUAGE plpgsql AS $fn$
DECLARE objs jsonb; sch text; tbl text;
BEGIN
  IF TG_EVENT = 'sql_drop' THEN
    SELECT jsonb_agg(jsonb_build_object('object_type', object_type, 'object_identity', object_identity)),
           (array_agg(schema_name) FILTER (WHERE object_type = 'table'))[1],
           (array_agg(object_name) FILTER (WHERE object_type = 'table'))[1]
      INTO objs, sch, tbl
      FROM pg_event_trigger_dropped_objects()
     WHERE original AND NOT is_temporary AND coalesce(schema_name, '') <> ` + lit + `;
  ELSE
    SELECT jsonb_agg(jsonb_build_object('object_type', d.object_type, 'object_identity', d.object_identity)),
           (array_agg(d.schema_name) FILTER (WHERE d.object_type = 'table'))[1],
           (array_agg(c.relname::text) FILTER (WHERE d.object_type = 'table'))[1]
      INTO objs, sch, tbl
      FROM pg_event_trigger_ddl_commands() d
      LEFT JOIN pg_class c ON d.classid = 'pg_class'::regclass AND c.oid = d.objid
     WHERE NOT d.in_extension AND coalesce(d.schema_name, '') <> ` + lit + `
       AND NOT starts_with(coalesce(d.schema_name, ''), 'pg_temp_');
  END IF;
  IF objs IS NULL THEN
    RETURN;
  END IF;
  PERFORM pg_logical_emit_message(true, '` + DDLPrefix + `', jsonb_build_object('command_tag', TG_TAG,
    'schema', sch, 'table', tbl, 'objects', objs, 'statement', current_query())::text);
END $fn$;
DROP EVENT TRIGGER IF EXISTS pgtrail_ddl_command_end;
CREATE EVENT TRIGGER pgtrail_ddl_command_end ON ddl_command_end EXECUTE FUNCTION ` + own + `.ddl_trail();
DROP EVENT TRIGGER IF EXISTS pgtrail_sql_drop;
CREATE EVENT TRIGGER pgtrail_sql_drop ON sql_drop EXECUTE FUNCTION ` + own + `.ddl_trail();`
}

// setupDDL installs the DDL event triggers. Event triggers need a
// superuser: without one, setup logs the SQL for one to run, and goes on.
func setupDDL(ctx context.Context, conn *pgx.Conn, log *slog.Logger) error {
	var super bool
	if err := conn.QueryRow(ctx, `SELECT rolsuper FROM pg_roles WHERE rolname = current_user`).Scan(&super); err != nil {
		return fmt.Errorf("check superuser for DDL capture: %w", err)
	}
	if !super {
		// One line, so that a text log keeps it copyable.
		log.Warn("source.postgres.ddl: event triggers need a superuser; have one run this SQL in the source database, then DDL is in the trail",
			"sql", strings.Join(strings.Fields(ddlSQL()), " "))
		return nil
	}
	if _, err := conn.Exec(ctx, ddlSQL()); err != nil {
		return fmt.Errorf("install DDL event triggers (source.postgres.ddl): %w", err)
	}
	return nil
}
