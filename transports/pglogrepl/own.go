package pglogrepl

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/jackc/pgx/v5"
)

// AuditTable is a table that one of pgtrail's sinks writes (a postgres
// sink's audit table). Capture never stores its changes: they are pgtrail's
// own writes, and storing them would loop for ever.
type AuditTable struct {
	URL           string // the database the sink writes to
	Schema, Table string
}

// tableName is a table's schema and name, as pgoutput and the catalog give them.
type tableName struct{ schema, table string }

// ownTables picks the audit tables that live in the source database: only
// those can show up in its stream. Which tables are pgtrail's is known from
// its own config, never from anything a table owner can set (a comment, a
// name in a schema anyone may create in).
func ownTables(ctx context.Context, side *pgx.Conn, sourceURL string, tables []AuditTable) (map[tableName]bool, error) {
	own := map[tableName]bool{}
	var source string
	for _, t := range tables {
		if t.Schema == OwnSchema {
			continue // never stored anyway, with its partitions, which the sink makes there too
		}
		if t.URL != sourceURL {
			var err error
			if source == "" {
				if source, err = databaseIdentity(ctx, side); err != nil {
					return nil, fmt.Errorf("identify the source database: %w", err)
				}
			}
			dest, err := identityAt(ctx, t.URL)
			if err != nil {
				return nil, fmt.Errorf("tell whether audit table %s.%s is in the source database: %w", t.Schema, t.Table, err)
			}
			if dest != source {
				continue
			}
		}
		own[tableName{t.Schema, t.Table}] = true
	}
	return own, nil
}

// databaseIdentity names a database across connections however they are
// written (host names, ports, proxies): the cluster's system identifier and
// the database's OID. A physical standby shares both with its primary, and
// rightly: an audit table written on the primary is decoded on the standby.
func databaseIdentity(ctx context.Context, conn *pgx.Conn) (string, error) {
	var id string
	err := conn.QueryRow(ctx, `SELECT s.system_identifier::text || '/' || d.oid::text
		FROM pg_control_system() s, pg_database d WHERE d.datname = current_database()`).Scan(&id)
	if err != nil {
		return "", fmt.Errorf("read the system identifier: %w (pgtrail compares it to tell its own tables; a superuser can run GRANT EXECUTE ON FUNCTION pg_control_system() TO its role)", err)
	}
	return id, nil
}

// identityAt connects to url just to read its databaseIdentity.
func identityAt(ctx context.Context, url string) (string, error) {
	cc, err := connConfig(url)
	if err != nil {
		return "", fmt.Errorf("parse its url: %w", err)
	}
	conn, err := pgx.ConnectConfig(ctx, cc)
	if err != nil {
		return "", fmt.Errorf("connect to its database: %w", err)
	}
	defer conn.Close(context.WithoutCancel(ctx))
	return databaseIdentity(ctx, conn)
}

// isAuditTable reports whether relation relid, named schema.table in the
// stream, is one of own or a partition of one.
func isAuditTable(ctx context.Context, side *pgx.Conn, own map[tableName]bool, relid uint32, schema, table string) (bool, error) {
	if len(own) == 0 {
		return false, nil
	}
	// Only the partitioned table's owner can attach a partition to it.
	err := side.QueryRow(ctx, `SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
		WHERE c.oid = coalesce(pg_partition_root($1::oid), $1::oid)`, relid).Scan(&schema, &table)
	if err != nil && !errors.Is(err, pgx.ErrNoRows) { // dropped since: its own name is all there is
		return false, fmt.Errorf("look up relation %d: %w", relid, err)
	}
	return own[tableName{schema, table}], nil
}

// checkOwnSchema refuses a pgtrail schema that another role controls:
// capture never stores the tables in it, so whoever may create tables there
// could keep their writes out of the trail.
func checkOwnSchema(ctx context.Context, conn *pgx.Conn) error {
	var owner, user string
	var trusted bool
	var creators []string
	err := conn.QueryRow(ctx, `SELECT pg_get_userbyid(n.nspowner), current_user::text,
			n.nspowner = o.oid OR (SELECT rolsuper FROM pg_roles WHERE oid = n.nspowner),
			ARRAY(SELECT CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE pg_get_userbyid(a.grantee) END
				FROM aclexplode(n.nspacl) a
				WHERE a.privilege_type = 'CREATE' AND a.grantee NOT IN (n.nspowner, o.oid) ORDER BY 1)
		FROM pg_namespace n, pg_roles o WHERE n.nspname = $1 AND o.rolname = current_user`, OwnSchema).Scan(&owner, &user, &trusted, &creators)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil // setup makes it, owned by pgtrail's role
	}
	if err != nil {
		return fmt.Errorf("look up the owner of schema %s: %w", OwnSchema, err)
	}
	schema := pgx.Identifier{OwnSchema}.Sanitize()
	if !trusted {
		return fmt.Errorf("schema %s exists and is owned by role %q, not by %q that pgtrail connects as: capture never stores the tables in it, so its owner could hide writes from the audit trail there. "+
			"Check what it holds, then have a superuser run ALTER SCHEMA %s OWNER TO %s (or DROP SCHEMA %s CASCADE), and run pgtrail setup again",
			OwnSchema, owner, user, schema, pgx.Identifier{user}.Sanitize(), schema)
	}
	if len(creators) > 0 {
		quoted := make([]string, len(creators))
		for i, c := range creators {
			quoted[i] = c
			if c != "PUBLIC" {
				quoted[i] = pgx.Identifier{c}.Sanitize()
			}
		}
		return fmt.Errorf("roles %s may create tables in schema %s, whose tables capture never stores, so they could hide writes from the audit trail there: run REVOKE CREATE ON SCHEMA %s FROM %s; then run pgtrail setup again",
			strings.Join(creators, ", "), OwnSchema, schema, strings.Join(quoted, ", "))
	}
	return nil
}
