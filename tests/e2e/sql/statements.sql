-- DML with RETURNING, multi-statement Query messages, errors with every field.
SET search_path = pgwp_t, public;
CREATE TABLE items (id serial PRIMARY KEY, name text NOT NULL UNIQUE,
                    price numeric(10,2) DEFAULT 0 CHECK (price >= 0));
INSERT INTO items (name, price) VALUES ('apple', 1.5), ('pear', 12), ('fig', 3) RETURNING *;
UPDATE items SET price = price * 2 WHERE name = 'apple' RETURNING id, price;
DELETE FROM items WHERE name = 'pear' RETURNING name;
INSERT INTO items (name) VALUES ('kiwi');
UPDATE items SET price = 0 WHERE false;
WITH moved AS (DELETE FROM items WHERE name = 'kiwi' RETURNING *) SELECT count(*) FROM moved;
-- constraint violations: SQLSTATE, DETAIL, SCHEMA/TABLE/COLUMN/CONSTRAINT NAME fields
INSERT INTO items (name) VALUES ('apple');
INSERT INTO items (name, price) VALUES ('neg', -1);
INSERT INTO items (name) VALUES (NULL);
INSERT INTO items (id, name) VALUES ('x', 'bad');
-- several statements in one Query message (\;), with and without an error in the middle
SELECT 1 AS one \; SELECT 2 AS two \; SELECT 3 AS three;
INSERT INTO items (name) VALUES ('multi') \; SELECT count(*) AS n FROM items \; UPDATE items SET price = 1 WHERE name = 'multi';
SELECT 'before' AS a \; SELECT 1/0 \; SELECT 'never' AS c;
INSERT INTO items (name) VALUES ('rolled back') \; SELECT 1/0;
SELECT name FROM items ORDER BY id;
-- syntax and semantic errors with position, internal query and context
SELEC 1;
SELECT 1 +;
SELECT nonexistent_column FROM items;
SELECT * FROM no_such_table;
SELECT 'abc'::int;
SELECT repeat('x', 10)::varchar(3)::int;
DO $$ BEGIN EXECUTE 'SELECT * FROM nowhere'; END $$;
DO $$ BEGIN
  RAISE EXCEPTION 'custom failure %', 42 USING ERRCODE = 'P0001', DETAIL = 'the detail', HINT = 'the hint',
    COLUMN = 'col', CONSTRAINT = 'con', DATATYPE = 'typ', TABLE = 'tab', SCHEMA = 'sch';
END $$;
CREATE FUNCTION fails() RETURNS int LANGUAGE plpgsql AS $$ BEGIN RETURN 1/0; END $$;
SELECT fails();
\echo :LAST_ERROR_SQLSTATE :LAST_ERROR_MESSAGE
SELECT 1;
\echo :ERROR :SQLSTATE :ROW_COUNT
-- empty queries
;
\echo after empty
-- permission errors through SET ROLE
CREATE TABLE secret (x int);
GRANT USAGE ON SCHEMA pgwp_t TO pgwp_limited;
SET ROLE pgwp_limited;
SHOW is_superuser;
SELECT * FROM secret;
INSERT INTO secret VALUES (1);
CREATE TABLE pgwp_t.not_mine (x int);
SELECT pg_terminate_backend(1);
ALTER SYSTEM SET work_mem = '1MB';
RESET ROLE;
SHOW is_superuser;
SELECT count(*) FROM secret;
