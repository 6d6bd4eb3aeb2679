package postgres

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"maps"
	"reflect"
	"slices"
	"strings"

	"github.com/jackc/pgx/v5"
)

// Tombstone replaces every erased value when no pseudonym is configured.
const Tombstone = "pgtrail:erased"

// Erasure says whose history to erase from the audit table.
type Erasure struct {
	Schema, Table, PrimaryKey string
	// Context, when set, also erases these keys' values from the context
	// of every change whose context holds them all (jsonb @>).
	Context map[string]any
	By      string // who asked, recorded beside current_user
	// Pseudonym, when set, gives the value an erased JSON value becomes
	// (the hmac pseudonym of rules.hmac_key); else it becomes Tombstone.
	Pseudonym func(value []byte) string
	// DigestKey keys the digest that records the filter in the log.
	DigestKey []byte
	BatchSize int // rows per transaction; 0: 1000
	DryRun    bool
}

// ErasureReport says what an erasure did (or, dry, would do).
type ErasureReport struct {
	ID      int64 // the row in <schema>.erasures; 0 when dry
	Resumed bool  // an interrupted erasure of the same filter was completed
	Rows    int64 // audit rows rewritten by this run (dry: that would be)
}

// Erase rewrites, in bounded batches, every stored value of one row's
// history (before, after, the key) and, with Context, the matching context
// values, keeping the changes themselves (who, when, which operation). A
// rewritten row no longer matches the filter, so running it again after an
// interruption completes it; the log row of <schema>.erasures records the
// filter as a digest, never the erased values.
func (s *Sink) Erase(ctx context.Context, e Erasure) (ErasureReport, error) {
	var rep ErasureReport
	if e.BatchSize <= 0 {
		e.BatchSize = 1000
	}
	if err := e.check(); err != nil {
		return rep, err
	}
	ctxFilter := []byte("null")
	if len(e.Context) > 0 {
		ctxFilter, _ = json.Marshal(e.Context)
	}
	if err := s.connect(ctx); err != nil {
		return rep, err
	}
	match := `(schema = $1 AND "table" = $2 AND primary_key = $3) OR ($4::jsonb IS NOT NULL AND context @> $4::jsonb)`
	var ctxArg any // SQL NULL without --where-context ('null'::jsonb is not NULL)
	if len(e.Context) > 0 {
		ctxArg = string(ctxFilter)
	}
	args := []any{e.Schema, e.Table, e.PrimaryKey, ctxArg}
	if e.DryRun {
		err := s.pool.QueryRow(ctx, `SELECT count(*) FROM `+s.target+` WHERE `+match, args...).Scan(&rep.Rows)
		return rep, wrap(err, "count rows to erase in %s", s.target)
	}
	log := pgx.Identifier{s.cfg.Schema, "erasures"}.Sanitize()
	if _, err := s.pool.Exec(ctx, `CREATE TABLE IF NOT EXISTS `+log+` (
		id bigserial PRIMARY KEY,
		started_at timestamptz NOT NULL DEFAULT now(),
		finished_at timestamptz,
		ran_by text NOT NULL DEFAULT current_user,
		requested_by text,
		audit_table text NOT NULL,
		filter jsonb NOT NULL,
		digest text NOT NULL,
		rows bigint NOT NULL DEFAULT 0)`); err != nil {
		return rep, fmt.Errorf("create %s: %w", log, err)
	}
	digest, audit := e.digest(ctxFilter), s.cfg.Schema+"."+s.cfg.Table
	err := s.pool.QueryRow(ctx, `SELECT id FROM `+log+` WHERE digest = $1 AND audit_table = $2 AND finished_at IS NULL ORDER BY id LIMIT 1`,
		digest, audit).Scan(&rep.ID)
	switch {
	case err == nil:
		rep.Resumed = true
	case err == pgx.ErrNoRows:
		filter, _ := json.Marshal(map[string]any{"schema": e.Schema, "table": e.Table, "context_keys": slices.Sorted(maps.Keys(e.Context))})
		err = s.pool.QueryRow(ctx, `INSERT INTO `+log+` (requested_by, audit_table, filter, digest) VALUES (nullif($1, ''), $2, $3, $4) RETURNING id`,
			e.By, audit, filter, digest).Scan(&rep.ID)
		if err != nil {
			return rep, fmt.Errorf("record erasure in %s: %w", log, err)
		}
	default:
		return rep, fmt.Errorf("look up erasures in %s: %w", log, err)
	}
	for {
		n, err := s.eraseBatch(ctx, e, match, args, log, rep.ID)
		if err != nil {
			return rep, err
		}
		rep.Rows += n
		if n == 0 {
			break
		}
	}
	_, err = s.pool.Exec(ctx, `UPDATE `+log+` SET finished_at = now() WHERE id = $1`, rep.ID)
	return rep, wrap(err, "finish erasure %d in %s", rep.ID, log)
}

// eraseBatch rewrites up to BatchSize matching rows and counts them in the
// log, in one transaction.
func (s *Sink) eraseBatch(ctx context.Context, e Erasure, match string, args []any, log string, id int64) (int64, error) {
	tx, err := s.pool.Begin(ctx)
	if err != nil {
		return 0, fmt.Errorf("erase from %s: %w", s.target, err)
	}
	defer tx.Rollback(context.WithoutCancel(ctx))
	rows, err := tx.Query(ctx, `SELECT id, committed_at, schema = $1 AND "table" = $2 AND primary_key = $3, before, after, context, primary_key
		FROM `+s.target+` WHERE `+match+fmt.Sprintf(` LIMIT %d FOR UPDATE`, e.BatchSize), args...)
	if err != nil {
		return 0, fmt.Errorf("select rows to erase from %s: %w", s.target, err)
	}
	type row struct {
		id, at                 any
		history                bool
		before, after, context []byte
		key                    *string
	}
	var batch []row
	for rows.Next() {
		var r row
		if err := rows.Scan(&r.id, &r.at, &r.history, &r.before, &r.after, &r.context, &r.key); err != nil {
			rows.Close()
			return 0, fmt.Errorf("read rows to erase from %s: %w", s.target, err)
		}
		batch = append(batch, r)
	}
	if err := rows.Err(); err != nil {
		return 0, fmt.Errorf("read rows to erase from %s: %w", s.target, err)
	}
	b := &pgx.Batch{}
	for _, r := range batch {
		if r.history {
			if r.before, err = e.eraseObject(r.before, nil); err == nil {
				r.after, err = e.eraseObject(r.after, nil)
			}
			k := e.eraseKey(*r.key)
			r.key = &k
		}
		if err == nil && len(e.Context) > 0 {
			r.context, err = e.eraseObject(r.context, e.Context)
		}
		if err != nil {
			return 0, fmt.Errorf("erase row %v of %s: %w", r.id, s.target, err)
		}
		b.Queue(`UPDATE `+s.target+` SET before = $3, after = $4, context = $5, primary_key = $6 WHERE id = $1 AND committed_at = $2`,
			r.id, r.at, r.before, r.after, r.context, r.key)
	}
	b.Queue(`UPDATE `+log+` SET rows = rows + $2 WHERE id = $1`, id, len(batch))
	if err := tx.SendBatch(ctx, b).Close(); err != nil {
		return 0, fmt.Errorf("erase from %s: %w", s.target, err)
	}
	return int64(len(batch)), wrap(tx.Commit(ctx), "commit erasure in %s", s.target)
}

// eraseObject replaces the values of obj's keys that are not null: all of
// them, or with only those whose value is only's (the --where-context
// values, and not another user's id in the same key).
func (e Erasure) eraseObject(obj []byte, only map[string]any) ([]byte, error) {
	var m map[string]json.RawMessage
	if err := json.Unmarshal(obj, &m); err != nil {
		return nil, err
	}
	for k, v := range m {
		if string(v) == "null" {
			continue
		}
		if only != nil {
			want, ok := only[k]
			var got any
			if !ok || json.Unmarshal(v, &got) != nil || !reflect.DeepEqual(got, want) {
				continue
			}
		}
		m[k] = e.erased(v)
	}
	return json.Marshal(m)
}

func (e Erasure) erased(v []byte) json.RawMessage {
	s := Tombstone
	if e.Pseudonym != nil {
		s = e.Pseudonym(v)
	}
	b, _ := json.Marshal(s)
	return b
}

// eraseKey erases the primary key text: its value is taken as JSON when it
// reads as JSON (a number, a composite key's array), else as a string, as
// redaction of a key column makes it.
func (e Erasure) eraseKey(key string) string {
	v := []byte(key)
	if !json.Valid(v) || (len(v) > 0 && (v[0] == '"' || v[0] == '{')) {
		v, _ = json.Marshal(key)
	}
	var s string
	_ = json.Unmarshal(e.erased(v), &s)
	return s
}

// check refuses a filter that an erased row would still match: the
// erasure would never end.
func (e Erasure) check() error {
	erased := func(s string) bool { return s == Tombstone || strings.HasPrefix(s, "hmac:") }
	if e.Schema == "" || e.Table == "" || e.PrimaryKey == "" {
		return fmt.Errorf("erase: the table (schema.table) and the primary key are required")
	}
	if erased(e.PrimaryKey) {
		return fmt.Errorf("erase: primary key %q is already erased", e.PrimaryKey)
	}
	for k, v := range e.Context {
		if s, ok := v.(string); v == nil || (ok && erased(s)) {
			return fmt.Errorf("erase: context value of %q is null or already erased; give the value to erase", k)
		}
	}
	return nil
}

// digest identifies the filter in the log without holding its values.
func (e Erasure) digest(ctxFilter []byte) string {
	key := e.DigestKey
	if len(key) == 0 {
		key = []byte("pgtrail erasure")
	}
	m := hmac.New(sha256.New, key)
	for _, p := range []string{e.Schema, e.Table, e.PrimaryKey, string(ctxFilter)} {
		m.Write([]byte(p))
		m.Write([]byte{0})
	}
	return hex.EncodeToString(m.Sum(nil))
}

func wrap(err error, format string, args ...any) error {
	if err == nil {
		return nil
	}
	return fmt.Errorf(format+": %w", append(args, err)...)
}
