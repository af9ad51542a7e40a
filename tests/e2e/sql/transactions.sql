-- Transactions, savepoints and cursors: psql acts on the ReadyForQuery status the proxy relays.
SET search_path = pgwp_t, public;
CREATE TABLE t (id serial PRIMARY KEY, v text);
BEGIN;
INSERT INTO t (v) VALUES ('t1');
SAVEPOINT a;
SELECT 1/0;
\echo :LAST_ERROR_SQLSTATE
SELECT 'ignored';
ROLLBACK TO SAVEPOINT a;
INSERT INTO t (v) VALUES ('t2');
RELEASE SAVEPOINT a;
COMMIT;
SELECT v FROM t ORDER BY id;
BEGIN;
SELECT 1/0;
COMMIT;
BEGIN;
INSERT INTO t (v) VALUES ('gone');
ROLLBACK;
COMMIT;
ROLLBACK;
SAVEPOINT outside;
-- psql sends its own SAVEPOINT before each statement only when ReadyForQuery said 'T'
\set ON_ERROR_ROLLBACK on
BEGIN;
INSERT INTO t (v) VALUES ('t3');
SELECT 1/0;
INSERT INTO t (v) VALUES ('t4');
COMMIT;
\set ON_ERROR_ROLLBACK off
SELECT v FROM t ORDER BY id;
START TRANSACTION ISOLATION LEVEL SERIALIZABLE READ ONLY;
SHOW transaction_isolation;
INSERT INTO t (v) VALUES ('ro');
END;
BEGIN; SELECT 1 \; SELECT 1/0 \; SELECT 3;
ROLLBACK;
-- SQL-level cursors
BEGIN;
DECLARE c SCROLL CURSOR FOR SELECT g FROM generate_series(1, 10) g;
FETCH 3 FROM c;
FETCH NEXT FROM c;
MOVE 2 IN c;
FETCH ALL FROM c;
FETCH PRIOR FROM c;
FETCH ABSOLUTE 1 FROM c;
CLOSE c;
FETCH c;
ROLLBACK;
DECLARE h CURSOR WITH HOLD FOR SELECT 'held' AS v;
FETCH h;
CLOSE h;
DECLARE nope CURSOR FOR SELECT 1;
-- psql's own cursor (FETCH_COUNT) depends on the transaction status too
\set FETCH_COUNT 3
SELECT g FROM generate_series(1, 10) g;
BEGIN;
SELECT g FROM generate_series(1, 5) g;
COMMIT;
\unset FETCH_COUNT
-- SQL-level PREPARE/EXECUTE
PREPARE q(int) AS SELECT $1 * 2 AS doubled;
EXECUTE q(21);
EXECUTE q('x');
SELECT name, statement, parameter_types FROM pg_prepared_statements;
DEALLOCATE q;
EXECUTE q(1);
PREPARE ins(text) AS INSERT INTO t (v) VALUES ($1) RETURNING id, v;
EXECUTE ins('prepared');
DEALLOCATE ALL;
