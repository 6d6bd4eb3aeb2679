package postgres

import "github.com/jackc/pgx/v5"

// operations are the values the operation column takes: DDL rows come from
// source.postgres.ddl.
const operations = `'CREATE', 'UPDATE', 'DELETE', 'TRUNCATE', 'DDL'`

// allowOperations replaces the operation check of a table made before DDL
// rows existed (PostgreSQL named it <table>_operation_check), once: it
// checks every row again.
func allowOperations(target, table string) string {
	name := pgx.Identifier{table + "_operation_check"}.Sanitize()
	return `DO $$ BEGIN
		IF EXISTS (SELECT 1 FROM pg_constraint WHERE conrelid = '` + target + `'::regclass AND contype = 'c'
		           AND pg_get_constraintdef(oid) LIKE '%operation%' AND pg_get_constraintdef(oid) NOT LIKE '%DDL%') THEN
			ALTER TABLE ` + target + ` DROP CONSTRAINT IF EXISTS ` + name + `,
				ADD CONSTRAINT ` + name + ` CHECK (operation IN (` + operations + `));
		END IF;
	END $$`
}
