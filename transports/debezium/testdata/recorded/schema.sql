-- The interop bed's tables (test/interop), which the recorded events come
-- from. The bed's toast scenario sets docs to REPLICA IDENTITY FULL midway.
CREATE TABLE todos (id int PRIMARY KEY, task text, done boolean NOT NULL DEFAULT false);
CREATE TABLE users (id int PRIMARY KEY, name text);
CREATE TABLE comments (id int PRIMARY KEY, todo_id int REFERENCES todos ON DELETE CASCADE, body text);
CREATE TABLE docs (id int PRIMARY KEY, body text, n int);
CREATE TABLE typed (id int PRIMARY KEY, price numeric(10,2), amount numeric, due timestamptz, day date,
	at timestamp, tm time, meta jsonb, tags text[], blob bytea, f8 float8, r4 real, iv interval, u uuid, big bigint, m money, tz timetz, ts3 timestamp(3));
CREATE TABLE composite (a int, b text, v int, PRIMARY KEY (a, b));
CREATE TABLE bulk_nokey (v int);
-- REPLICA IDENTITY USING INDEX: the old image and the key are the index's
-- columns, not the primary key.
CREATE TABLE ident (id int PRIMARY KEY, code text NOT NULL UNIQUE, v int);
ALTER TABLE ident REPLICA IDENTITY USING INDEX ident_code_key;
-- Types whose encoding depends on the declared precision or scale.
CREATE TABLE precise (id int PRIMARY KEY, born date, at0 timestamp(0), t0 time(0), tz2 timestamptz(2),
	nums numeric[], days date[]);
